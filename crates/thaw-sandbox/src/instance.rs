//! The host's end of one runtime's byte stream, whatever the driver.
//!
//! One task reads the runtime's frames and acts on each at once, never
//! waiting on a consumer (bodies are bounded by flow control, not by
//! blocking the stream: one slow client never holds up another call's
//! frames); one task writes what the calls queue for the runtime, several
//! frames per write when they pile up.

mod body;

pub use body::{BodyAborted, BodyChunks, BodyOccupancy, CollectError, RequestBody, ResponseBody};

use crate::{BoxFuture, SandboxError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thaw_protocol::frame::{self, Frame, FrameReader, Stream};
use thaw_protocol::{FromRuntime, Init, Invoke, LogStream, Payload, ToRuntime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// How long a runtime may take between start and its `ready` frame.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the host waits for a `background_done` after an answer that
/// left work running: the runtime's own bound and a margin.
const BACKGROUND_WAIT: Duration = Duration::from_millis(thaw_protocol::BACKGROUND_LIMIT_MS + 5_000);
/// Lines of raw process output kept to explain a crash.
const OUTPUT_TAIL: usize = 20;
/// Bytes of one line of raw output kept in a crash's reason.
const OUTPUT_TAIL_LINE_BYTES: usize = 1024;
/// Console lines returned with one call (`thaw invoke` shows them).
const LINES_RETURNED: usize = 1000;

/// Longest console line kept, in bytes of UTF-8, its cut mark included. A
/// longer line keeps its start, cut at a character boundary, followed by
/// ` …[thaw: line cut, N bytes in all]`.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Room kept at the end of a cut line for its mark.
const CUT_MARK_ROOM: usize = 64;
/// Console output one call may leave, counted as stored (lines cut first).
/// Past either figure the rest of the call's lines are dropped, counted,
/// and said in one line when the call ends.
pub const CALL_LOG_BYTES: u64 = 1024 * 1024;
pub const CALL_LOG_LINES: u64 = 10_000;
/// Console output one instance may leave in one second, its calls, the
/// output of no call and its raw stdout/stderr together. Past either figure
/// lines are dropped until the second is over, counted, and said in one
/// line (the call's, when it ends; otherwise once the second is over).
pub const INSTANCE_LOG_BYTES_PER_SEC: u64 = 256 * 1024;
pub const INSTANCE_LOG_LINES_PER_SEC: u64 = 2_000;
/// Most bytes of queued frames gathered into one write to the runtime.
const WRITE_BATCH: usize = 256 * 1024;
/// Warnings in thaw's own log about runtimes breaking the protocol: at most
/// one in this long, all runtimes together (the next says how many were
/// held back).
const VIOLATION_WARNING_EVERY: Duration = Duration::from_secs(1);

/// Makes `line` fit in [`MAX_LINE_BYTES`]: a longer one keeps its start
/// and is marked cut. A line that fits (one already cut, say) is left alone.
pub(crate) fn cut_line(line: &mut String) {
    if line.len() > MAX_LINE_BYTES {
        let total = line.len();
        mark_cut(line, total);
    }
}

/// Cuts `line`, the start of a line of `total` bytes as written, to leave
/// room for the mark, and marks it cut.
pub(crate) fn mark_cut(line: &mut String, total: usize) {
    let end = prefix(line, MAX_LINE_BYTES - CUT_MARK_ROOM).len();
    line.truncate(end);
    line.push_str(&format!(" …[thaw: line cut, {total} bytes in all]"));
}

use thaw_bundle::text_prefix as prefix;

/// Lines (and their bytes, as written) that did not reach the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    lines: u64,
    bytes: u64,
}

impl Dropped {
    fn add(&mut self, bytes: usize) {
        self.lines += 1;
        self.bytes += bytes as u64;
    }

    fn any(&self) -> bool {
        self.lines > 0
    }

    /// The line that says so, in the function's log.
    fn said(self, why: &str) -> String {
        format!(
            "[thaw] {} lines ({} bytes) dropped: {why}",
            self.lines, self.bytes
        )
    }
}

fn over_call_limit() -> String {
    format!(
        "this call reached the log limit of {} or {CALL_LOG_LINES} lines per call",
        size(CALL_LOG_BYTES)
    )
}

fn over_rate_limit() -> String {
    format!(
        "this instance reached the log limit of {} or {INSTANCE_LOG_LINES_PER_SEC} lines per second",
        size(INSTANCE_LOG_BYTES_PER_SEC)
    )
}

fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// One call's share of the log.
#[derive(Debug, Default)]
struct CallLog {
    lines: u64,
    bytes: u64,
    /// Dropped past the call's own limit (from then on, every line is).
    over_call: Dropped,
    /// Dropped past the instance's limit per second.
    over_rate: Dropped,
}

/// One instance's log in the current one-second window.
#[derive(Debug)]
struct RateWindow {
    start: Instant,
    lines: u64,
    bytes: u64,
    /// Dropped lines of no running call, not said yet.
    unattributed: Dropped,
}

impl RateWindow {
    fn new(now: Instant) -> RateWindow {
        RateWindow {
            start: now,
            lines: 0,
            bytes: 0,
            unattributed: Dropped::default(),
        }
    }

    /// Starts a new window if this one is over; returns the drops of no
    /// call that the old window left to be said.
    fn roll(&mut self, now: Instant) -> Option<Dropped> {
        if now.saturating_duration_since(self.start) < Duration::from_secs(1) {
            return None;
        }
        self.start = now;
        self.lines = 0;
        self.bytes = 0;
        self.take_unattributed()
    }

    fn take_unattributed(&mut self) -> Option<Dropped> {
        Some(std::mem::take(&mut self.unattributed)).filter(Dropped::any)
    }

    /// Whether a line that is `stored` bytes once cut (`written` as the
    /// runtime wrote it) is kept, charging it to the window and its call.
    fn admit(
        &mut self,
        mut call: Option<&mut CallLog>,
        stored: usize,
        written: usize,
        now: Instant,
    ) -> (bool, Option<Dropped>) {
        let unsaid = self.roll(now);
        let stored = stored as u64;
        if let Some(c) = call.as_deref_mut().filter(|c| {
            c.over_call.any() || c.lines >= CALL_LOG_LINES || c.bytes + stored > CALL_LOG_BYTES
        }) {
            c.over_call.add(written);
            return (false, unsaid);
        }
        if self.lines >= INSTANCE_LOG_LINES_PER_SEC
            || self.bytes + stored > INSTANCE_LOG_BYTES_PER_SEC
        {
            // Nothing more in this window, however short.
            self.lines = INSTANCE_LOG_LINES_PER_SEC;
            match call {
                Some(c) => c.over_rate.add(written),
                None => self.unattributed.add(written),
            }
            return (false, unsaid);
        }
        self.lines += 1;
        self.bytes += stored;
        if let Some(c) = call {
            c.lines += 1;
            c.bytes += stored;
        }
        (true, unsaid)
    }
}

/// Lets one warning through per [`VIOLATION_WARNING_EVERY`].
#[derive(Debug, Default)]
struct WarningGate {
    last: Option<Instant>,
    held_back: u64,
}

impl WarningGate {
    /// `Some(held back since the last one)` if a warning may go out now.
    fn pass(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < VIOLATION_WARNING_EVERY)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

static VIOLATION_WARNINGS: Mutex<WarningGate> = Mutex::new(WarningGate {
    last: None,
    held_back: 0,
});

fn warn_violation(runtime: &Shared, reason: &str) {
    let held_back = VIOLATION_WARNINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pass(Instant::now());
    let Some(held_back) = held_back else {
        return;
    };
    let who = match runtime.binding.get() {
        Some(b) => format!("{} version {}", b.function, b.version),
        None => "an unbound runtime".into(),
    };
    let pid = runtime
        .process
        .pid()
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    if held_back > 0 {
        tracing::warn!(
            "runtime of {who}{pid}: {reason} ({held_back} more such warnings held back)"
        );
    } else {
        tracing::warn!("runtime of {who}{pid}: {reason}");
    }
}

/// A line of a runtime's raw output, as a driver read it.
#[derive(Debug)]
pub(crate) struct RawLine {
    pub stream: LogStream,
    /// At most [`MAX_LINE_BYTES`], marked if cut.
    pub line: String,
    /// Its length as the runtime wrote it.
    pub bytes: usize,
}

/// Where raw output comes from: a driver's channel of whole lines
/// ([`Instance::connect`]), or the bounded one of lines read in bounded
/// chunks (the `process` driver).
enum Output {
    Lines(mpsc::UnboundedReceiver<(LogStream, String)>),
    Raw(mpsc::Receiver<RawLine>),
}

impl Output {
    async fn recv(&mut self) -> Option<RawLine> {
        match self {
            Output::Lines(rx) => rx.recv().await.map(|(stream, line)| RawLine {
                stream,
                bytes: line.len(),
                line,
            }),
            Output::Raw(rx) => rx.recv().await,
        }
    }
}

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

/// An HTTP-shaped answer from the runtime: its head, and its body as it
/// streams ([`ResponseBody`]) or, for a caller that waited for all of it,
/// as bytes.
#[derive(Debug)]
pub struct Reply<B = ResponseBody> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: B,
}

/// How one invocation ended, when the runtime survived it.
#[derive(Debug)]
pub enum InvokeOutcome<B = ResponseBody> {
    Reply(Reply<B>),
    /// The handler threw; the runtime is still usable.
    HandlerError {
        name: Option<String>,
        message: String,
        stack: Option<String>,
        /// The handler asked not to be retried.
        no_retry: bool,
    },
}

type Done = (Result<InvokeOutcome, SandboxError>, Vec<LogLine>);

struct Pending {
    done: oneshot::Sender<Done>,
    logs: Vec<LogLine>,
    log: CallLog,
}

struct Shared {
    /// Itself, for the response bodies it hands out.
    me: Weak<Shared>,
    /// Frames for the writer task, in the order they must go.
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    /// Calls waiting for their answer's head.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Response bodies the runtime is sending.
    downloads: Mutex<HashMap<u64, body::Download>>,
    /// Request bodies being sent to the runtime.
    uploads: Mutex<HashMap<u64, Arc<body::Upload>>>,
    init_waiter: Mutex<Option<oneshot::Sender<Result<String, SandboxError>>>>,
    binding: OnceLock<Binding>,
    style: OnceLock<String>,
    dead: AtomicBool,
    death: Mutex<Option<String>>,
    process: Box<dyn RuntimeProcess>,
    sink: Arc<dyn LogSink>,
    output_tail: Mutex<VecDeque<String>>,
    runtime: String,
    /// Console output of the current second (locked after `pending`).
    rate: Mutex<RateWindow>,
    /// One more than the highest invocation id sent (0: none yet); a
    /// runtime naming a higher one is lying.
    issued: AtomicU64,
    /// Calls answered with work still running (`background`), since when.
    background: Mutex<HashMap<u64, Instant>>,
    /// Told when such work ends.
    background_ended: tokio::sync::Notify,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.process.kill();
        // The last handle went (a runtime killed and let go) before the
        // read loop saw the stream end: bodies still open say why.
        let why = self
            .death
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "the instance was stopped".into());
        self.abort_downloads(&why);
        self.say_unattributed_drops();
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
    ///
    /// Raw lines longer than [`MAX_LINE_BYTES`] are cut here; a driver
    /// reading untrusted output should rather not hold whole lines at all
    /// (the `process` driver reads in bounded chunks).
    pub async fn connect<R, W>(
        reader: R,
        writer: W,
        process: Box<dyn RuntimeProcess>,
        output: Option<mpsc::UnboundedReceiver<(LogStream, String)>>,
        sink: Arc<dyn LogSink>,
    ) -> Result<Instance, SandboxError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self::connect_output(reader, writer, process, output.map(Output::Lines), sink).await
    }

    /// [`Instance::connect`] with raw output already cut into bounded
    /// lines, through a bounded channel.
    pub(crate) async fn connect_raw<R, W>(
        reader: R,
        writer: W,
        process: Box<dyn RuntimeProcess>,
        output: mpsc::Receiver<RawLine>,
        sink: Arc<dyn LogSink>,
    ) -> Result<Instance, SandboxError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self::connect_output(reader, writer, process, Some(Output::Raw(output)), sink).await
    }

    async fn connect_output<R, W>(
        reader: R,
        writer: W,
        process: Box<dyn RuntimeProcess>,
        output: Option<Output>,
        sink: Arc<dyn LogSink>,
    ) -> Result<Instance, SandboxError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let mut reader = FrameReader::new(reader);
        let ready = tokio::time::timeout(READY_TIMEOUT, reader.next::<FromRuntime>());
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
            Ok(Ok(Frame::Message(FromRuntime::Ready {
                protocol, runtime, ..
            }))) => {
                if protocol != thaw_protocol::PROTOCOL_VERSION {
                    process.kill();
                    let refused = thaw_protocol::ProtocolError::OldProtocol {
                        protocol: protocol.into(),
                        runtime,
                    };
                    return Err(SandboxError::NotReady(refused.to_string()));
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
        let (outbox, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, queued));
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            outbox,
            pending: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            init_waiter: Mutex::new(None),
            binding: OnceLock::new(),
            style: OnceLock::new(),
            dead: AtomicBool::new(false),
            death: Mutex::new(None),
            process,
            sink,
            output_tail: Mutex::new(VecDeque::new()),
            runtime,
            rate: Mutex::new(RateWindow::new(Instant::now())),
            issued: AtomicU64::new(0),
            background: Mutex::new(HashMap::new()),
            background_ended: tokio::sync::Notify::new(),
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
        self.kill_because("killed by thaw");
    }

    /// Kills the runtime now; calls still running on it, and response
    /// bodies it was sending, fail with `why`.
    pub fn kill_because(&self, why: &str) {
        self.shared.dead.store(true, Ordering::Release);
        self.shared
            .death
            .lock()
            .unwrap()
            .get_or_insert_with(|| why.into());
        self.shared.process.kill();
    }

    /// Stops the runtime between calls; see [`RuntimeProcess::pause`].
    pub fn pause(&self) {
        self.shared.process.pause();
    }

    /// Whether a call's work goes on after its answer (`waitUntil`), for
    /// at most the runtime's bound and a margin. Such an instance is not
    /// idle: it must not be paused or reclaimed.
    pub fn background_pending(&self) -> bool {
        let mut running = self.shared.background.lock().unwrap();
        running.retain(|_, since| since.elapsed() < BACKGROUND_WAIT);
        !running.is_empty()
    }

    /// Waits until no call's work runs after its answer, or the bound.
    pub async fn background_settled(&self) {
        loop {
            let ended = self.shared.background_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.background_pending() || !self.is_alive() {
                return;
            }
            // Entries also age out without a notification: look again.
            let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
        }
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
        self.send(&ToRuntime::Init(init))?;
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

    /// Runs one invocation, until the head of its answer. `id` must be
    /// unique among this instance's invocations; its console lines so far
    /// are returned with the outcome and also passed to the log sink (later
    /// ones, printed while a body streams, go to the sink alone). `body` is
    /// the request's body when `payload` is an HTTP request, and ignored
    /// otherwise. The caller enforces the deadline, the body's included.
    pub async fn invoke(
        &self,
        id: u64,
        deadline_ms: u64,
        payload: Payload,
        body: RequestBody,
    ) -> (Result<InvokeOutcome, SandboxError>, Vec<LogLine>) {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().unwrap();
            if self.shared.dead.load(Ordering::Acquire) {
                return (Err(SandboxError::Crashed(self.death_reason())), Vec::new());
            }
            self.shared
                .issued
                .fetch_max(id.saturating_add(1), Ordering::AcqRel);
            pending.insert(
                id,
                Pending {
                    done: tx,
                    logs: Vec::new(),
                    log: CallLog::default(),
                },
            );
        }
        let is_request = matches!(payload, Payload::Request(_));
        let msg = ToRuntime::Invoke(Invoke {
            id,
            deadline_ms,
            payload,
        });
        let mut out = Vec::new();
        let sent = frame::encode_message(&mut out, &msg)
            .map_err(SandboxError::from)
            .and_then(|()| {
                let rest = if is_request {
                    self.body_frames(id, body, &mut out)
                } else {
                    None
                };
                self.shared.send_frames_checked(out)?;
                if let Some((chunks, up)) = rest {
                    tokio::spawn(body::pump(Arc::downgrade(&self.shared), id, chunks, up));
                }
                Ok(())
            });
        if let Err(e) = sent {
            let logs = self.shared.end_call(id).map(|(_, l)| l).unwrap_or_default();
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
        self.shared
            .end_call(id)
            .map(|(_, logs)| logs)
            .unwrap_or_default()
    }

    /// Puts a request's body after its `invoke` in `out` when it is whole
    /// and fits the window; otherwise returns what a pump task must send
    /// as the runtime's credit allows.
    fn body_frames(
        &self,
        id: u64,
        body: RequestBody,
        out: &mut Vec<u8>,
    ) -> Option<(BodyChunks, Arc<body::Upload>)> {
        let chunks: BodyChunks = match body {
            RequestBody::Empty => {
                frame::encode_end(out, id, Stream::Request);
                return None;
            }
            RequestBody::Full(bytes) if bytes.len() <= frame::WINDOW as usize => {
                frame::encode_data(out, id, Stream::Request, &bytes);
                frame::encode_end(out, id, Stream::Request);
                return None;
            }
            RequestBody::Full(bytes) => Box::pin(futures_util::stream::once(async { Ok(bytes) })),
            RequestBody::Stream(chunks) => chunks,
        };
        // Registered before the invoke leaves, so that no credit for it
        // arrives unknown.
        let up = body::Upload::new();
        self.shared.uploads.lock().unwrap().insert(id, up.clone());
        Some((chunks, up))
    }

    fn send(&self, msg: &ToRuntime) -> Result<(), SandboxError> {
        let mut out = Vec::new();
        frame::encode_message(&mut out, msg)?;
        self.shared.send_frames_checked(out)
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
        self.instance.shared.end_call(self.id);
    }
}

impl Shared {
    /// Queues frames for the runtime. A runtime whose stream broke is
    /// noticed by the read loop; what was queued for it is dropped.
    fn send_frames(&self, frames: Vec<u8>) {
        let _ = self.outbox.send(frames);
    }

    fn send_frames_checked(&self, frames: Vec<u8>) -> Result<(), SandboxError> {
        if self.dead.load(Ordering::Acquire) || self.outbox.send(frames).is_err() {
            let reason = self.death.lock().unwrap().clone();
            return Err(SandboxError::Crashed(
                reason.unwrap_or_else(|| "the runtime stopped answering".into()),
            ));
        }
        Ok(())
    }

    /// The response body of call `id`, no longer the read loop's. Taken out
    /// of the map before it is dropped: what runs when a body is done
    /// ([`ResponseBody::when_done`]) never runs under the map's lock.
    fn take_download(&self, id: u64) -> Option<body::Download> {
        self.downloads.lock().unwrap().remove(&id)
    }

    /// Ends every response body still coming, with `why`.
    fn abort_downloads(&self, why: &str) {
        let downloads: Vec<body::Download> = self
            .downloads
            .lock()
            .unwrap()
            .drain()
            .map(|(_, d)| d)
            .collect();
        for download in downloads {
            download.finish(body::Chunk::Abort(why.to_string()));
        }
    }

    /// Gives up on a call's bodies: the runtime is told to stop sending
    /// the response (`why`), and thaw stops sending the request.
    fn cancel_call(&self, id: u64, why: &str) {
        let streaming = self.take_download(id).is_some();
        if let Some(up) = self.uploads.lock().unwrap().remove(&id) {
            up.stop();
        }
        if streaming {
            let mut out = Vec::new();
            frame::encode_abort(&mut out, id, Stream::Response, why);
            self.send_frames(out);
        }
    }

    fn finish(&self, id: u64, outcome: Result<InvokeOutcome, SandboxError>) {
        if let Some((done, logs)) = self.end_call(id) {
            let _ = done.send((outcome, logs));
        }
    }

    /// Forgets a call: says what its log lost, in its log and in the lines
    /// returned with it.
    fn end_call(&self, id: u64) -> Option<(oneshot::Sender<Done>, Vec<LogLine>)> {
        let p = self.pending.lock().unwrap().remove(&id)?;
        Some(self.close_call(id, p))
    }

    fn close_call(&self, id: u64, p: Pending) -> (oneshot::Sender<Done>, Vec<LogLine>) {
        let Pending {
            done,
            mut logs,
            log,
        } = p;
        for (dropped, why) in [
            (log.over_call, over_call_limit()),
            (log.over_rate, over_rate_limit()),
        ] {
            if dropped.any() {
                let line = LogLine {
                    invocation: Some(id),
                    stream: LogStream::Stderr,
                    line: dropped.said(&why),
                    ts_ms: now_ms(),
                };
                logs.push(line.clone());
                self.sink.log(self.binding.get(), line);
            }
        }
        self.say_unattributed_drops();
        (done, logs)
    }

    /// Says what was dropped of output that belonged to no running call.
    fn say_unattributed_drops(&self) {
        let unsaid = self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_unattributed();
        if let Some(dropped) = unsaid {
            self.say_dropped(dropped);
        }
    }

    fn say_dropped(&self, dropped: Dropped) {
        let line = LogLine {
            invocation: None,
            stream: LogStream::Stderr,
            line: dropped.said(&over_rate_limit()),
            ts_ms: now_ms(),
        };
        self.sink.log(self.binding.get(), line);
    }

    /// Takes one console line: cut to [`MAX_LINE_BYTES`], then kept if the
    /// call's and the instance's budgets allow it. `written` is its length
    /// as the runtime wrote it, when it was already cut.
    fn log(&self, invocation: Option<u64>, stream: LogStream, mut text: String, written: usize) {
        let written = written.max(text.len());
        cut_line(&mut text);
        let line = LogLine {
            invocation,
            stream,
            line: text,
            ts_ms: now_ms(),
        };
        let (kept, unsaid) = {
            let mut pending = self.pending.lock().unwrap();
            let mut call = invocation.and_then(|id| pending.get_mut(&id));
            let (kept, unsaid) = self.rate.lock().unwrap().admit(
                call.as_mut().map(|p| &mut p.log),
                line.line.len(),
                written,
                Instant::now(),
            );
            // The copy returned with the call is bounded; the sink gets
            // every line kept.
            if let Some(p) = call.filter(|_| kept) {
                if p.logs.len() < LINES_RETURNED {
                    p.logs.push(line.clone());
                }
            }
            (kept, unsaid)
        };
        if let Some(dropped) = unsaid {
            self.say_dropped(dropped);
        }
        if kept {
            self.sink.log(self.binding.get(), line);
        }
    }

    /// Fails unless `id` is a call thaw sent to this runtime.
    fn check_id(&self, id: u64, what: &str) -> Result<(), String> {
        if id < self.issued.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(format!("{what} for call {id}, which thaw never sent"))
        }
    }

    /// Acts on one message; `Err` says how the runtime broke the protocol.
    fn handle(&self, msg: FromRuntime) -> Result<(), String> {
        match msg {
            FromRuntime::Log { id, stream, line } => {
                if let Some(id) = id {
                    self.check_id(id, "a log line")?;
                }
                let written = line.len();
                self.log(id, stream, line, written);
            }
            FromRuntime::Result {
                id,
                status,
                headers,
                background,
            } => {
                self.check_id(id, "a result")?;
                self.note_background(id, background);
                if !self.pending.lock().unwrap().contains_key(&id) {
                    // Nobody waits for this answer any more (a timeout, a
                    // second result): its body must not wait for credit.
                    let mut out = Vec::new();
                    frame::encode_abort(
                        &mut out,
                        id,
                        Stream::Response,
                        "no one waits for this answer",
                    );
                    self.send_frames(out);
                    return Ok(());
                }
                let (download, body) = ResponseBody::open(id, self.me.clone());
                self.downloads.lock().unwrap().insert(id, download);
                self.finish(
                    id,
                    Ok(InvokeOutcome::Reply(Reply {
                        status,
                        headers,
                        body,
                    })),
                );
            }
            FromRuntime::Error {
                id,
                message,
                name,
                stack,
                background,
                no_retry,
            } => {
                self.check_id(id, "an error")?;
                self.note_background(id, background);
                // A failure after the head cuts the body short.
                if let Some(d) = self.take_download(id) {
                    d.finish(body::Chunk::Abort(format!(
                        "{}: {message}",
                        name.as_deref().unwrap_or("Error")
                    )));
                }
                // The function's log shows its errors, as Lambda's does.
                let text = stack.clone().unwrap_or_else(|| {
                    format!("{}: {message}", name.as_deref().unwrap_or("Error"))
                });
                for line in text.lines() {
                    self.log(Some(id), LogStream::Stderr, line.to_string(), line.len());
                }
                self.finish(
                    id,
                    Ok(InvokeOutcome::HandlerError {
                        name,
                        message,
                        stack,
                        no_retry,
                    }),
                )
            }
            FromRuntime::InitOk { style, .. } => {
                let waiter = self.init_waiter.lock().unwrap().take();
                let w = waiter.ok_or("an init_ok message, but no init was waiting for one")?;
                let _ = w.send(Ok(style));
            }
            FromRuntime::InitError { message, stack } => {
                let waiter = self.init_waiter.lock().unwrap().take();
                let w = waiter.ok_or("an init_error message, but no init was waiting for one")?;
                let _ = w.send(Err(SandboxError::Init { message, stack }));
            }
            FromRuntime::BackgroundDone { id, .. } => {
                self.check_id(id, "background_done")?;
                self.background.lock().unwrap().remove(&id);
                self.background_ended.notify_waiters();
            }
            FromRuntime::Ready { .. } => return Err("a second ready message".into()),
        }
        Ok(())
    }

    /// Acts on one frame; `Err` says how the runtime broke the protocol.
    fn handle_frame(&self, frame: Frame<FromRuntime>) -> Result<(), String> {
        match frame {
            Frame::Message(msg) => self.handle(msg),
            Frame::Data {
                call,
                stream: Stream::Response,
                bytes,
            } => match self.downloads.lock().unwrap().get_mut(&call) {
                Some(download) => download.take(call, bytes),
                None => self.late_body_frame(call, "response body data"),
            },
            Frame::End {
                call,
                stream: Stream::Response,
            } => match self.take_download(call) {
                Some(download) => {
                    download.finish(body::Chunk::End);
                    Ok(())
                }
                None => self.late_body_frame(call, "the end of a response body"),
            },
            Frame::Abort {
                call,
                stream: Stream::Response,
                reason,
            } => {
                if let Some(download) = self.take_download(call) {
                    download.finish(body::Chunk::Abort(reason));
                    return Ok(());
                }
                self.late_body_frame(call, "the abort of a response body")
            }
            Frame::Credit {
                call,
                stream: Stream::Request,
                bytes,
            } => {
                self.check_id(call, "credit")?;
                let up = self.uploads.lock().unwrap().get(&call).cloned();
                match up {
                    Some(up) => up.grant(call, bytes),
                    None => Ok(()),
                }
            }
            Frame::Abort {
                call,
                stream: Stream::Request,
                ..
            } => {
                // The function wants no more of its request body.
                self.check_id(call, "the abort of a request body")?;
                if let Some(up) = self.uploads.lock().unwrap().remove(&call) {
                    up.stop();
                }
                Ok(())
            }
            Frame::Data { call, stream, .. } | Frame::End { call, stream } => Err(format!(
                "a body frame for the {stream:?} stream of call {call}, which only thaw sends"
            )),
            Frame::Credit { call, stream, .. } => Err(format!(
                "credit for the {stream:?} stream of call {call}, which only thaw grants"
            )),
        }
    }

    /// A body frame for a call with no open response body: fine for a call
    /// thaw gave up on (it sent the abort, and what crossed it is
    /// dropped); a violation before the call's head or for a call never
    /// sent.
    fn late_body_frame(&self, call: u64, what: &str) -> Result<(), String> {
        self.check_id(call, what)?;
        if self.pending.lock().unwrap().contains_key(&call) {
            return Err(format!("{what} of call {call} before its result"));
        }
        Ok(())
    }

    fn note_background(&self, id: u64, background: bool) {
        if background {
            self.background.lock().unwrap().insert(id, Instant::now());
        }
    }
}

/// Writes queued frames to the runtime, gathering what piled up into one
/// write. Ends when the stream fails (the read loop notices the runtime's
/// death) or when the instance is gone.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(mut out) = queued.recv().await {
        while out.len() < WRITE_BATCH {
            match queued.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: FrameReader<R>, shared: Weak<Shared>) {
    let end = loop {
        let frame = reader.next::<FromRuntime>().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let broken = match frame {
            Ok(frame) => shared.handle_frame(frame),
            Err(e) if e.is_violation() => Err(e.to_string()),
            Err(e) => break (format!("stream ended: {e}"), shared),
        };
        if let Err(how) = broken {
            // Nothing it sends from now on can be trusted, or is read.
            let why = format!("the runtime broke the wire protocol ({how}) and thaw killed it");
            shared.dead.store(true, Ordering::Release);
            shared
                .death
                .lock()
                .unwrap()
                .get_or_insert_with(|| why.clone());
            warn_violation(&shared, &why);
            shared.process.kill();
            break (
                "it was still running 2s after thaw killed it".to_string(),
                shared,
            );
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
            error
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
            // Killed on purpose (a timeout, a retired version, a broken
            // protocol): say so.
            Some(why) => format!("{why} ({reason})"),
            None => {
                *death = Some(reason.clone());
                reason
            }
        }
    };
    let pending: Vec<(u64, Pending)> = shared.pending.lock().unwrap().drain().collect();
    for (id, p) in pending {
        let (done, logs) = shared.close_call(id, p);
        let _ = done.send((Err(SandboxError::Crashed(reason.clone())), logs));
    }
    shared.abort_downloads(&format!("the runtime exited ({reason})"));
    for (_, up) in shared.uploads.lock().unwrap().drain() {
        up.stop();
    }
    shared.say_unattributed_drops();
    let init_waiter = shared.init_waiter.lock().unwrap().take();
    if let Some(w) = init_waiter {
        let _ = w.send(Err(SandboxError::Crashed(reason)));
    }
}

async fn output_loop(mut output: Output, shared: Weak<Shared>) {
    while let Some(RawLine {
        stream,
        line,
        bytes,
    }) = output.recv().await
    {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            // Enough of it to explain a crash, not to swell its reason.
            let mut kept = prefix(&line, OUTPUT_TAIL_LINE_BYTES).to_string();
            if kept.len() < line.len() {
                kept.push('…');
            }
            let mut tail = shared.output_tail.lock().unwrap();
            if tail.len() == OUTPUT_TAIL {
                tail.pop_front();
            }
            tail.push_back(kept);
        }
        shared.log(None, stream, line, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary_and_marked() {
        let mut short = "é".repeat(100);
        cut_line(&mut short);
        assert_eq!(short, "é".repeat(100));

        let mut long = "é".repeat(10_000_000);
        cut_line(&mut long);
        assert!(long.len() <= MAX_LINE_BYTES, "{}", long.len());
        assert!(long.starts_with("éé"));
        assert!(
            long.ends_with(" …[thaw: line cut, 20000000 bytes in all]"),
            "{}",
            &long[long.len() - 60..]
        );
        // Cutting again leaves it alone.
        let once = long.clone();
        cut_line(&mut long);
        assert_eq!(long, once);
    }

    #[test]
    fn a_call_past_its_budget_drops_the_rest_and_counts_it() {
        let t0 = Instant::now();
        let mut window = RateWindow::new(t0);
        let mut call = CallLog::default();
        let line = 1000;
        let mut kept = 0;
        // One line per second keeps clear of the limit per second.
        for i in 0..2000u64 {
            let (ok, _) = window.admit(
                Some(&mut call),
                line,
                line * 10,
                t0 + Duration::from_secs(i),
            );
            kept += u64::from(ok);
        }
        assert_eq!(kept, CALL_LOG_BYTES / line as u64);
        assert_eq!(call.bytes, kept * line as u64);
        assert_eq!(
            call.over_call,
            Dropped {
                lines: 2000 - kept,
                bytes: (2000 - kept) * line as u64 * 10
            }
        );
        assert!(!call.over_rate.any());
        // Once over, even an empty line is dropped.
        let (ok, _) = window.admit(Some(&mut call), 0, 0, t0 + Duration::from_secs(5000));
        assert!(!ok);

        // Lines count as well as bytes.
        let mut call = CallLog::default();
        let mut kept = 0;
        for i in 0..(CALL_LOG_LINES + 5) {
            let (ok, _) = window.admit(Some(&mut call), 0, 0, t0 + Duration::from_secs(10_000 + i));
            kept += u64::from(ok);
        }
        assert_eq!(kept, CALL_LOG_LINES);
        assert_eq!(call.over_call.lines, 5);
    }

    #[test]
    fn an_instance_past_its_budget_per_second_drops_until_the_second_is_over() {
        let t0 = Instant::now();
        let mut window = RateWindow::new(t0);
        let mut call = CallLog::default();
        let line = 4096;
        let mut kept = 0;
        for _ in 0..100 {
            kept += u64::from(window.admit(Some(&mut call), line, line, t0).0);
        }
        assert_eq!(kept, INSTANCE_LOG_BYTES_PER_SEC / line as u64);
        assert_eq!(call.over_rate.lines, 100 - kept);
        assert_eq!(call.over_rate.bytes, (100 - kept) * line as u64);
        // Output of no call, in the same second: dropped and kept to be said.
        let (ok, unsaid) = window.admit(None, 10, 10, t0 + Duration::from_millis(999));
        assert!(!ok && unsaid.is_none());
        let (ok, _) = window.admit(None, 0, 0, t0 + Duration::from_millis(999));
        assert!(!ok, "an empty line is dropped too once the second is full");
        // The next second takes lines again, and says what the last one
        // dropped of no call.
        let (ok, unsaid) = window.admit(None, 10, 10, t0 + Duration::from_secs(1));
        assert!(ok);
        assert_eq!(
            unsaid,
            Some(Dropped {
                lines: 2,
                bytes: 10
            })
        );
        assert_eq!(window.take_unattributed(), None);

        // Lines per second count too.
        let t1 = t0 + Duration::from_secs(2);
        let mut kept = 0;
        for _ in 0..(INSTANCE_LOG_LINES_PER_SEC + 7) {
            kept += u64::from(window.admit(None, 1, 1, t1).0);
        }
        assert_eq!(kept, INSTANCE_LOG_LINES_PER_SEC);
        assert_eq!(
            window.take_unattributed(),
            Some(Dropped { lines: 7, bytes: 7 })
        );
    }

    #[test]
    fn the_line_saying_what_was_dropped_names_the_figures() {
        let d = Dropped {
            lines: 3,
            bytes: 3_000_000,
        };
        assert_eq!(
            d.said(&over_call_limit()),
            "[thaw] 3 lines (3000000 bytes) dropped: this call reached the log limit of 1 MiB or 10000 lines per call"
        );
        assert_eq!(
            d.said(&over_rate_limit()),
            "[thaw] 3 lines (3000000 bytes) dropped: this instance reached the log limit of 256 KiB or 2000 lines per second"
        );
    }

    #[test]
    fn protocol_warnings_pass_at_most_once_a_second_and_count_the_rest() {
        let t0 = Instant::now();
        let mut gate = WarningGate::default();
        assert_eq!(gate.pass(t0), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(gate.pass(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(gate.pass(t0 + Duration::from_millis(1000)), Some(4));
        assert_eq!(gate.pass(t0 + Duration::from_millis(1001)), None);
        assert_eq!(gate.pass(t0 + Duration::from_millis(2500)), Some(1));
    }
}
