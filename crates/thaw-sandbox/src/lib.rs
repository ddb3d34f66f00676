//! Sandbox drivers: where a runtime instance runs.
//!
//! A [`Driver`] starts runtimes (Node with the thaw shim, bound to no
//! function yet) and hands back an [`Instance`]: the driver-independent end
//! of the wire protocol, which binds the runtime to one function version
//! with `init`, runs invocations by id, collects their console output and
//! notices when the runtime dies. The `process` driver runs each instance as
//! its own Node process talking over a socketpair; the `microvm` driver
//! (in thaw-microvm, which builds on this crate) runs each in a QEMU
//! microVM restored from a snapshot. [`JailedBuild`] runs the TypeScript
//! build (esbuild) in the same jail, seeing only the bundle. Both drivers
//! turn code trees into EROFS images ([`build_erofs_image`]).
//!
//! This crate must not know about HTTP, the registry or scheduling policy:
//! it starts, talks to and kills sandboxed programs, nothing more.

mod build_jail;
mod image;
mod instance;
mod process;
mod shim;

pub use build_jail::JailedBuild;
pub use image::{build_erofs_image, image_path, ImageError, IMAGE_FSTYPE};
pub use instance::{
    Binding, BodyAborted, BodyChunks, BodyOccupancy, CollectError, Instance, InvokeOutcome,
    LogLine, LogSink, Reply, RequestBody, ResponseBody, RuntimeProcess, CALL_LOG_BYTES,
    CALL_LOG_LINES, INSTANCE_LOG_BYTES_PER_SEC, INSTANCE_LOG_LINES_PER_SEC, MAX_LINE_BYTES,
};
pub use process::{set_niceness, which, JailSettings, ProcessDriver, ProcessDriverConfig};
pub use shim::{write_builtin_shim, write_shim, SHIM_SOURCE};
/// Which of a runtime's output streams a line came from (the `output` of
/// [`Instance::connect`]).
pub use thaw_protocol::LogStream;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not start the runtime: {0}")]
    Start(String),
    #[error("the runtime did not become ready: {0}")]
    NotReady(String),
    #[error("the function failed to initialise: {message}")]
    Init {
        message: String,
        stack: Option<String>,
    },
    #[error("the runtime exited ({0})")]
    Crashed(String),
    #[error("wire protocol error: {0}")]
    Protocol(#[from] thaw_protocol::ProtocolError),
}

/// What varies between the places a runtime can run.
pub trait Driver: Send + Sync + 'static {
    /// Short name shown in logs, metrics and `thaw ls`.
    fn name(&self) -> &'static str;

    /// Starts a runtime and waits until it has announced itself ready.
    /// Output that belongs to no invocation goes to `sink`.
    fn start(&self, sink: Arc<dyn LogSink>) -> BoxFuture<'_, Result<Instance, SandboxError>>;

    /// Attaches a code tree that the host keeps at `host_dir` to a started
    /// runtime, read-only, just before it is bound to a function; returns
    /// the path under which the runtime sees the tree. Also gives the
    /// runtime its full share of the CPU: runtimes start in the background.
    /// `memory_mb` is the function's memory limit.
    fn attach<'a>(
        &'a self,
        instance: &'a Instance,
        host_dir: &'a Path,
        memory_mb: u32,
    ) -> BoxFuture<'a, Result<String, SandboxError>>;

    /// Makes the runtimes started from now on run the runtime that is on
    /// the host now: the shim at `shim`, the `node` binary at `node` (a
    /// program on `PATH` or a path: the platform finds the newest release
    /// of the pool's line), and for VMs the image and template made from
    /// them. Runtimes already started keep theirs (the platform lets bound
    /// ones drain and replaces waiting ones). May take long (a VM template
    /// boots once).
    fn upgrade_runtime<'a>(
        &'a self,
        shim: &'a Path,
        node: &'a Path,
    ) -> BoxFuture<'a, Result<RuntimeChange, SandboxError>>;

    /// Gets ready what attaching the code tree at `host_dir` needs, ahead
    /// of its first attach (the process driver holds its image). Never
    /// fails: a problem shows when the tree is attached.
    fn prepare_code<'a>(&'a self, host_dir: &'a Path) -> BoxFuture<'a, ()> {
        let _ = host_dir;
        Box::pin(async {})
    }

    /// The code tree at `host_dir` is gone (no version uses it any more):
    /// lets go of what the driver holds for it (the process driver's
    /// mounted image). Instances that still have it keep it until they
    /// end. A tree stored again at the same path has the same content: its
    /// path names it.
    fn forget_code(&self, host_dir: &Path) {
        let _ = host_dir;
    }
}

/// What [`Driver::upgrade_runtime`] did: the runtime's identity before and
/// after (the same when nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeChange {
    pub before: String,
    pub after: String,
}

impl RuntimeChange {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// Proportional set size of a process: its fair share of the memory it
/// maps, pages shared with other processes divided among them.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}
