//! The host's end of one runtime's byte stream, whatever the driver.

use crate::{BoxFuture, SandboxError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_protocol::{read_frame, write_frame, FromRuntime, Init, Invoke, LogStream, Payload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// How long a runtime may take between start and its `ready` frame.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of raw process output kept to explain a crash.
const OUTPUT_TAIL: usize = 20;
/// Console lines returned with one call (`thaw invoke` shows them).
const LINES_RETURNED: usize = 1000;

/// One line of console output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The invocation that wrote it, if any.
    pub invocation: Option<u64>,
    pub stream: LogStream,
    pub line: String,
    pub ts_ms: u64,
}

/// Which function version a runtime was bound to.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub function: String,
    pub version: i64,
}

/// Where console output goes to be kept (the registry, in thaw).
pub trait LogSink: Send + Sync {
    fn log(&self, binding: Option<&Binding>, line: LogLine);
}

/// The process (or VM) behind an instance, as far as the instance cares.
pub trait RuntimeProcess: Send + Sync {
    fn pid(&self) -> Option<u32>;
    /// Kills the runtime and everything it started. Idempotent.
    fn kill(&self);
    /// Waits for the runtime to end and says how it ended.
    fn wait_exit(&self) -> BoxFuture<'_, String>;
    /// Takes the runtime off the CPU entirely (timers and all) until
    /// [`RuntimeProcess::resume`].
    fn pause(&self);
    fn resume(&self);
    /// For the driver that made it, to reach its own state.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Memory the runtime uses (PSS), all its processes together.
    fn memory_pss(&self) -> Option<u64> {
        self.pid().and_then(crate::pss_bytes)
    }
}

/// An HTTP-shaped answer from the runtime.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How one invocation ended, when the runtime survived it.
#[derive(Debug)]
pub enum InvokeOutcome {
    Reply(Reply),
    /// The handler threw; the runtime is still usable.
    HandlerError {
        name: Option<String>,
        message: String,
        stack: Option<String>,
    },
}

type Done = (Result<InvokeOutcome, SandboxError>, Vec<LogLine>);

struct Pending {
    done: oneshot::Sender<Done>,
    logs: Vec<LogLine>,
}

struct Shared {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Mutex<HashMap<u64, Pending>>,
    init_waiter: Mutex<Option<oneshot::Sender<Result<String, SandboxError>>>>,
    binding: OnceLock<Binding>,
    style: OnceLock<String>,
    dead: AtomicBool,
    death: Mutex<Option<String>>,
    process: Box<dyn RuntimeProcess>,
    sink: Arc<dyn LogSink>,
    output_tail: Mutex<VecDeque<String>>,
    runtime: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.process.kill();
    }
}

/// A started runtime. Dropping the last handle kills it.
#[derive(Clone)]
pub struct Instance {
    shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Instance {
    /// Takes over a runtime's byte stream, waits for its `ready` frame and
    /// starts reading. `output` carries raw process output (not console
    /// lines, which come as frames): fatal errors of Node itself, say.
    pub async fn connect<R, W>(
        mut reader: R,
        writer: W,
        process: Box<dyn RuntimeProcess>,
        output: Option<mpsc::UnboundedReceiver<(LogStream, String)>>,
        sink: Arc<dyn LogSink>,
    ) -> Result<Instance, SandboxError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let ready = tokio::time::timeout(READY_TIMEOUT, read_frame::<_, FromRuntime>(&mut reader));
        let runtime = match ready.await {
            Err(_) => {
                process.kill();
                return Err(SandboxError::NotReady(format!(
                    "no ready message within {}s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => {
                process.kill();
                let how = process.wait_exit().await;
                return Err(SandboxError::NotReady(format!("{e}; {how}")));
            }
            Ok(Ok(FromRuntime::Ready {
                protocol, runtime, ..
            })) => {
                if protocol != thaw_protocol::PROTOCOL_VERSION {
                    process.kill();
                    return Err(SandboxError::NotReady(format!(
                        "runtime {runtime} speaks protocol {protocol}, this host speaks {}",
                        thaw_protocol::PROTOCOL_VERSION
                    )));
                }
                runtime
            }
            Ok(Ok(other)) => {
                process.kill();
                return Err(SandboxError::NotReady(format!(
                    "expected a ready message, got {other:?}"
                )));
            }
        };
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Box::new(writer)),
            pending: Mutex::new(HashMap::new()),
            init_waiter: Mutex::new(None),
            binding: OnceLock::new(),
            style: OnceLock::new(),
            dead: AtomicBool::new(false),
            death: Mutex::new(None),
            process,
            sink,
            output_tail: Mutex::new(VecDeque::new()),
            runtime,
        });
        tokio::spawn(read_loop(reader, Arc::downgrade(&shared)));
        if let Some(output) = output {
            tokio::spawn(output_loop(output, Arc::downgrade(&shared)));
        }
        Ok(Instance { shared })
    }

    pub fn pid(&self) -> Option<u32> {
        self.shared.process.pid()
    }

    /// The process (or VM) behind this instance.
    pub fn process(&self) -> &dyn RuntimeProcess {
        &*self.shared.process
    }

    /// The runtime's name and version, as it announced itself.
    pub fn runtime(&self) -> &str {
        &self.shared.runtime
    }

    pub fn binding(&self) -> Option<&Binding> {
        self.shared.binding.get()
    }

    /// The handler style the runtime found, once bound.
    pub fn style(&self) -> Option<&str> {
        self.shared.style.get().map(String::as_str)
    }

    pub fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Kills the runtime now. Calls still running on it fail as crashed.
    pub fn kill(&self) {
        self.shared.dead.store(true, Ordering::Release);
        self.shared
            .death
            .lock()
            .unwrap()
            .get_or_insert_with(|| "killed by thaw".into());
        self.shared.process.kill();
    }

    /// Stops the runtime between calls; see [`RuntimeProcess::pause`].
    pub fn pause(&self) {
        self.shared.process.pause();
    }

    pub fn resume(&self) {
        self.shared.process.resume();
    }

    /// Whether two handles are the same runtime.
    pub fn ptr_eq(&self, other: &Instance) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Binds the runtime to one function version: imports its code and
    /// detects the handler style. A runtime is bound once, for life.
    pub async fn init(&self, init: Init, timeout: Duration) -> Result<String, SandboxError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiter = self.shared.init_waiter.lock().unwrap();
            // Bound from the moment `init` is sent, so that what the
            // module prints while it loads is the function's output.
            let binding = Binding {
                function: init.function.clone(),
                version: init.version,
            };
            if waiter.is_some() || self.shared.binding.set(binding).is_err() {
                return Err(SandboxError::Init {
                    message: "this runtime is already bound to a function".into(),
                    stack: None,
                });
            }
            *waiter = Some(tx);
        }
        self.send(&thaw_protocol::ToRuntime::Init(init)).await?;
        let style = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.kill();
                return Err(SandboxError::Init {
                    message: format!("loading the code took longer than {}s", timeout.as_secs()),
                    stack: None,
                });
            }
            Ok(Err(_)) => return Err(SandboxError::Crashed(self.death_reason())),
            Ok(Ok(result)) => result?,
        };
        let _ = self.shared.style.set(style.clone());
        Ok(style)
    }

    /// Runs one invocation. `id` must be unique among this instance's
    /// invocations; its console lines are returned with the outcome and
    /// also passed to the log sink. The caller enforces the deadline.
    pub async fn invoke(
        &self,
        id: u64,
        deadline_ms: u64,
        payload: Payload,
    ) -> (Result<InvokeOutcome, SandboxError>, Vec<LogLine>) {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().unwrap();
            if self.shared.dead.load(Ordering::Acquire) {
                return (Err(SandboxError::Crashed(self.death_reason())), Vec::new());
            }
            pending.insert(
                id,
                Pending {
                    done: tx,
                    logs: Vec::new(),
                },
            );
        }
        let msg = thaw_protocol::ToRuntime::Invoke(Invoke {
            id,
            deadline_ms,
            payload,
        });
        if let Err(e) = self.send(&msg).await {
            let logs = self.take_pending(id).map(|p| p.logs).unwrap_or_default();
            return (Err(e), logs);
        }
        let _guard = ForgetOnDrop { instance: self, id };
        match rx.await {
            Ok((outcome, logs)) => (outcome, logs),
            Err(_) => (Err(SandboxError::Crashed(self.death_reason())), Vec::new()),
        }
    }

    /// Lines collected so far for an invocation that will not finish
    /// normally (it is being timed out, say).
    pub fn abandon(&self, id: u64) -> Vec<LogLine> {
        self.take_pending(id).map(|p| p.logs).unwrap_or_default()
    }

    fn take_pending(&self, id: u64) -> Option<Pending> {
        self.shared.pending.lock().unwrap().remove(&id)
    }

    async fn send(&self, msg: &thaw_protocol::ToRuntime) -> Result<(), SandboxError> {
        let mut writer = self.shared.writer.lock().await;
        write_frame(&mut *writer, msg).await.map_err(|e| match e {
            thaw_protocol::ProtocolError::Io(_) => SandboxError::Crashed(self.death_reason()),
            other => other.into(),
        })
    }

    fn death_reason(&self) -> String {
        self.shared
            .death
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "the runtime stopped answering".into())
    }
}

/// Removes an invocation's pending entry if its caller stops waiting (a
/// dropped request, a timeout), so its log lines go to the sink only.
struct ForgetOnDrop<'a> {
    instance: &'a Instance,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.instance.take_pending(self.id);
    }
}

impl Shared {
    fn finish(&self, id: u64, outcome: Result<InvokeOutcome, SandboxError>) {
        if let Some(p) = self.pending.lock().unwrap().remove(&id) {
            let _ = p.done.send((outcome, p.logs));
        }
    }

    fn log(&self, line: LogLine) {
        if let Some(id) = line.invocation {
            if let Some(p) = self.pending.lock().unwrap().get_mut(&id) {
                // The copy returned with the call is bounded; the sink
                // still gets every line.
                if p.logs.len() < LINES_RETURNED {
                    p.logs.push(line.clone());
                }
            }
        }
        self.sink.log(self.binding.get(), line);
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, shared: Weak<Shared>) {
    let end = loop {
        let frame = read_frame::<_, FromRuntime>(&mut reader).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match frame {
            Ok(FromRuntime::Log { id, stream, line }) => shared.log(LogLine {
                invocation: id,
                stream,
                line,
                ts_ms: now_ms(),
            }),
            Ok(FromRuntime::Result {
                id,
                status,
                headers,
                body,
            }) => {
                use base64::Engine as _;
                let outcome = match base64::engine::general_purpose::STANDARD.decode(&body) {
                    Ok(body) => Ok(InvokeOutcome::Reply(Reply {
                        status,
                        headers,
                        body,
                    })),
                    Err(e) => Err(SandboxError::Crashed(format!(
                        "the runtime sent a body that is not base64: {e}"
                    ))),
                };
                shared.finish(id, outcome);
            }
            Ok(FromRuntime::Error {
                id,
                message,
                name,
                stack,
            }) => {
                // The function's log shows its errors, as Lambda's does.
                let text = stack.clone().unwrap_or_else(|| {
                    format!("{}: {message}", name.as_deref().unwrap_or("Error"))
                });
                for line in text.lines() {
                    shared.log(LogLine {
                        invocation: Some(id),
                        stream: LogStream::Stderr,
                        line: line.to_string(),
                        ts_ms: now_ms(),
                    });
                }
                shared.finish(
                    id,
                    Ok(InvokeOutcome::HandlerError {
                        name,
                        message,
                        stack,
                    }),
                )
            }
            Ok(FromRuntime::InitOk { style, .. }) => {
                if let Some(w) = shared.init_waiter.lock().unwrap().take() {
                    let _ = w.send(Ok(style));
                }
            }
            Ok(FromRuntime::InitError { message, stack }) => {
                if let Some(w) = shared.init_waiter.lock().unwrap().take() {
                    let _ = w.send(Err(SandboxError::Init { message, stack }));
                }
            }
            Ok(FromRuntime::Ready { .. }) => {
                tracing::warn!("runtime sent a second ready message; ignored");
            }
            Err(e) => break (e, shared),
        }
    };
    let (error, shared) = end;
    shared.dead.store(true, Ordering::Release);
    // The runtime may have closed the stream just before exiting: give the
    // process a moment so the reason names the exit code or signal.
    let exit = tokio::time::timeout(Duration::from_secs(2), shared.process.wait_exit())
        .await
        .unwrap_or_else(|_| {
            shared.process.kill();
            format!("stream ended: {error}")
        });
    let tail: Vec<String> = shared.output_tail.lock().unwrap().iter().cloned().collect();
    let reason = if tail.is_empty() {
        exit
    } else {
        format!("{exit}; last output: {}", tail.join(" | "))
    };
    let reason = {
        let mut death = shared.death.lock().unwrap();
        match death.as_ref() {
            // Killed on purpose (a timeout, a retired version): say so.
            Some(why) => format!("{why} ({reason})"),
            None => {
                *death = Some(reason.clone());
                reason
            }
        }
    };
    let pending: Vec<(u64, Pending)> = shared.pending.lock().unwrap().drain().collect();
    for (_, p) in pending {
        let _ = p
            .done
            .send((Err(SandboxError::Crashed(reason.clone())), p.logs));
    }
    let init_waiter = shared.init_waiter.lock().unwrap().take();
    if let Some(w) = init_waiter {
        let _ = w.send(Err(SandboxError::Crashed(reason)));
    }
}

async fn output_loop(
    mut output: mpsc::UnboundedReceiver<(LogStream, String)>,
    shared: Weak<Shared>,
) {
    while let Some((stream, line)) = output.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let mut tail = shared.output_tail.lock().unwrap();
            if tail.len() == OUTPUT_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        shared.log(LogLine {
            invocation: None,
            stream,
            line,
            ts_ms: now_ms(),
        });
    }
}
