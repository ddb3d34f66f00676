//! The `process` driver: every instance is its own Node process.
//!
//! The runtime gets one end of a `socketpair(2)` as file descriptor 3 and
//! nothing of the host's environment: thaw's own variables (the API token
//! among them) never reach user code. Each runtime leads its own process
//! group, so killing an instance kills whatever its code started, and it
//! receives SIGKILL if thaw itself dies.

use crate::instance::RuntimeProcess;
use crate::{BoxFuture, Driver, Instance, LogSink, SandboxError};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thaw_protocol::LogStream;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// File descriptor number on which the shim finds its stream.
const RUNTIME_FD: i32 = 3;
/// Niceness of a runtime until it is bound.
const STARTING_NICENESS: i32 = 10;

#[derive(Debug, Clone)]
pub struct ProcessDriverConfig {
    /// The `node` binary.
    pub node: PathBuf,
    /// The runtime shim, `shim.mjs`.
    pub shim: PathBuf,
    /// Extra flags for `node`, before the shim's path.
    pub node_args: Vec<String>,
}

pub struct ProcessDriver {
    config: ProcessDriverConfig,
}

impl ProcessDriver {
    pub fn new(config: ProcessDriverConfig) -> Self {
        ProcessDriver { config }
    }

    async fn start_process(&self, sink: Arc<dyn LogSink>) -> Result<Instance, SandboxError> {
        let (host_end, runtime_end) =
            StdUnixStream::pair().map_err(|e| SandboxError::Start(format!("socketpair: {e}")))?;
        let runtime_fd: OwnedFd = runtime_end.into();
        let raw = runtime_fd.as_raw_fd();

        let mut cmd = Command::new(&self.config.node);
        cmd.args(&self.config.node_args)
            .arg(&self.config.shim)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("THAW_FD", RUNTIME_FD.to_string())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Runtimes start in the background, at low priority, so
                // that refilling the pool does not take the CPU from calls
                // being served; `attach` restores normal priority.
                libc::setpriority(libc::PRIO_PROCESS, 0, STARTING_NICENESS);
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if raw == RUNTIME_FD {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, RUNTIME_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            SandboxError::Start(format!(
                "could not run {}: {e} (is Node.js 20 installed? set THAW_NODE to its path)",
                self.config.node.display()
            ))
        })?;
        drop(runtime_fd);

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, LogStream::Stdout, out_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, LogStream::Stderr, out_tx));
        }
        let pid = child.id().unwrap_or(0);
        host_end
            .set_nonblocking(true)
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let stream = tokio::net::UnixStream::from_std(host_end)
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let (reader, writer) = stream.into_split();
        let process = Box::new(NodeProcess {
            pid,
            child: tokio::sync::Mutex::new(child),
            reaped: AtomicBool::new(false),
        });
        Instance::connect(reader, writer, process, Some(out_rx), sink).await
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start(&self, sink: Arc<dyn LogSink>) -> BoxFuture<'_, Result<Instance, SandboxError>> {
        Box::pin(self.start_process(sink))
    }

    fn attach<'a>(
        &'a self,
        instance: &'a Instance,
        host_dir: &'a Path,
    ) -> BoxFuture<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            if let Some(pid) = instance.pid() {
                set_niceness(pid, 0);
            }
            // Without a jail the runtime sees the host's file system: the
            // tree is read-only on disk and shared, nothing to mount.
            Ok(host_dir.to_string_lossy().into_owned())
        })
    }
}

/// Sets the niceness of every thread of `pid`. Linux keeps niceness per
/// thread, and Node starts its worker threads before it is bound.
fn set_niceness(pid: u32, nice: i32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        if let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() {
            // SAFETY: plain syscall on a thread id of our own child.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
        }
    }
}

async fn forward_lines<R: AsyncRead + Unpin>(
    r: R,
    stream: LogStream,
    tx: mpsc::UnboundedSender<(LogStream, String)>,
) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send((stream, line)).is_err() {
            return;
        }
    }
}

struct NodeProcess {
    pid: u32,
    child: tokio::sync::Mutex<Child>,
    reaped: AtomicBool,
}

impl NodeProcess {
    fn signal_group(&self, signal: i32) {
        // Once reaped, the group id may belong to someone else.
        if self.pid != 0 && !self.reaped.load(Ordering::Acquire) {
            // SAFETY: plain syscall; a negative pid names the process group.
            unsafe {
                libc::kill(-(self.pid as i32), signal);
            }
        }
    }
}

impl RuntimeProcess for NodeProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn kill(&self) {
        self.signal_group(libc::SIGKILL);
    }

    fn pause(&self) {
        self.signal_group(libc::SIGSTOP);
    }

    fn resume(&self) {
        self.signal_group(libc::SIGCONT);
    }

    fn wait_exit(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let mut child = self.child.lock().await;
            let status = child.wait().await;
            self.reaped.store(true, Ordering::Release);
            match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("could not wait for the runtime: {e}"),
            }
        })
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGTERM => "SIGTERM",
            _ => "",
        };
        format!("killed by signal {sig} {name}")
            .trim_end()
            .to_string()
    } else {
        "ended".to_string()
    }
}
