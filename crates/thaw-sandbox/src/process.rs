//! The `process` driver: every instance is its own Node process, in its own
//! jail (`thaw-jail`) when the host allows it.
//!
//! The runtime gets one end of a `socketpair(2)` as file descriptor 3 and
//! nothing of the host's environment: thaw's own variables (the API token
//! among them) never reach user code. Each runtime leads its own process
//! group, so killing an instance kills whatever its code started, and it
//! receives SIGKILL if thaw itself dies. Jailed, it also has its own
//! namespaces, a read-only root holding only Node and the shim, its own
//! uid and cgroup; the function's code is attached at `/code` when the
//! runtime is bound, and its memory limit is set then.
//!
//! Jailed, the shim's directory and each code tree are mounted from EROFS
//! images on loop devices (`image.rs`), so that `/proc/self/mountinfo`
//! inside names no path of the data directory; where the host cannot make
//! images (no `mkfs.erofs`, no loop devices) they are bound from the data
//! directory instead, and [`ProcessDriver::without_images`] says why.

use crate::image::{hold_image, CodeImages, ImageError};
use crate::instance::{cut_line, mark_cut, RawLine, RuntimeProcess, MAX_LINE_BYTES};
use crate::{BoxFuture, Driver, Instance, LogSink, RuntimeChange, SandboxError};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use thaw_protocol::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// File descriptor number on which the shim finds its stream.
const RUNTIME_FD: i32 = 3;
/// Niceness of a runtime until it is bound.
const STARTING_NICENESS: i32 = 10;
/// Raw stdout/stderr is read this many bytes at a time.
const OUTPUT_CHUNK: usize = 8 * 1024;
/// Lines of raw output read but not yet taken by the instance; the reader
/// waits (and the runtime's writes block) beyond that.
const OUTPUT_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct ProcessDriverConfig {
    /// The `node` binary: a program on `PATH` or a path.
    pub node: PathBuf,
    /// Where `node` appears inside a jail: a fixed path for a binary kept
    /// under thaw's data directory, so that no mount names it; `None`: at
    /// its own path, beside the libraries it loads.
    pub node_in_jail: Option<PathBuf>,
    /// Numbers the runtimes it starts (their jail ids and uids): drivers
    /// that share jail settings must share it, so that no two live
    /// runtimes share a jail or a uid.
    pub numbering: Arc<AtomicU64>,
    /// The runtime shim, `shim.mjs`, in a directory of its own (thaw
    /// writes it to `DATA_DIR/runtime/<hash>/`): jails see that directory,
    /// made an image beside it (`<hash>.erofs`) where the host can.
    pub shim: PathBuf,
    /// Extra flags for `node`, before the shim's path.
    pub node_args: Vec<String>,
    /// Run each runtime in a jail; `None` runs it as a plain process.
    pub jail: Option<JailSettings>,
}

#[derive(Debug, Clone)]
pub struct JailSettings {
    /// The `thaw` executable, which runs a jail as `thaw __jail`.
    pub exe: PathBuf,
    /// Where per-instance jail directories go.
    pub state_dir: PathBuf,
    /// Instances get uids (and gids) `first_uid .. first_uid + uids`, each
    /// its own while it lives.
    pub first_uid: u32,
    pub uids: u32,
    /// Limits of a runtime; the memory limit is replaced by the function's
    /// when it is bound.
    pub limits: thaw_jail::Limits,
}

impl JailSettings {
    /// The uid (and gid) of the `n`th instance: each its own while it
    /// lives, cycling through the range.
    pub fn uid_for(&self, n: u64) -> u32 {
        self.first_uid + (n % u64::from(self.uids.max(1))) as u32
    }
}

/// Where the shim and the code appear inside a jail.
const JAIL_RUNTIME_DIR: &str = "/runtime";
const JAIL_CODE_DIR: &str = "/code";
/// Where an installed Node line's directory appears inside a jail.
const JAIL_NODE_DIR: &str = "/opt/node";

pub struct ProcessDriver {
    config: ProcessDriverConfig,
    /// What runtimes start from now; replaced by `upgrade_runtime`.
    files: std::sync::RwLock<Arc<RuntimeFiles>>,
    /// How jails get the shim and the code; `None` unjailed.
    trees: Option<Trees>,
}

/// How a jailed runtime gets its trees: the shim's directory and the
/// function's code.
enum Trees {
    /// Mounted from images on loop devices: no host path shows inside.
    Images(CodeImages),
    /// Bound from the data directory, because this host cannot make
    /// images (why).
    Bound(String),
}

/// The files one runtime is started from.
struct RuntimeFiles {
    /// `node`, resolved on PATH when jailed (it is bound at that path).
    node: PathBuf,
    shim: PathBuf,
    /// Host paths Node needs inside a jail (itself, its loader, libraries),
    /// each at its own path.
    node_binds: Vec<PathBuf>,
    /// `node` bound at another path inside a jail (`node_in_jail`).
    moved_node: Option<(PathBuf, PathBuf)>,
    /// The shim's directory as an image, when jails mount it from one.
    shim_image: Option<Arc<thaw_jail::Image>>,
    /// A moved `node`'s directory (an installed Node line, kept under the
    /// data directory) as an image, mounted at [`JAIL_NODE_DIR`] instead
    /// of binding the binary, so that no mount names the data directory.
    node_image: Option<Arc<thaw_jail::Image>>,
}

impl RuntimeFiles {
    fn find(
        node: &Path,
        shim: &Path,
        jailed: bool,
        node_in_jail: Option<&Path>,
    ) -> Result<RuntimeFiles, SandboxError> {
        if !jailed {
            return Ok(RuntimeFiles {
                node: node.to_path_buf(),
                shim: shim.to_path_buf(),
                node_binds: Vec::new(),
                moved_node: None,
                shim_image: None,
                node_image: None,
            });
        }
        let node = which(node).ok_or_else(|| {
            SandboxError::Start(format!(
                "{} not found on PATH (set THAW_NODE to Node.js 20's path)",
                node.display()
            ))
        })?;
        let mut node_binds =
            thaw_jail::program_binds(&node).map_err(|e| SandboxError::Start(e.to_string()))?;
        // The binary comes first; its loader and libraries stay where
        // they are looked for.
        let moved_node = node_in_jail.map(|inside| (node_binds.remove(0), inside.to_path_buf()));
        Ok(RuntimeFiles {
            node,
            shim: shim.to_path_buf(),
            node_binds,
            moved_node,
            shim_image: None,
            node_image: None,
        })
    }

    /// The path a jailed runtime runs `node` from.
    fn node_inside(&self) -> PathBuf {
        if self.node_image.is_some() {
            if let Some(name) = self.node.file_name() {
                return Path::new(JAIL_NODE_DIR).join("bin").join(name);
            }
        }
        self.moved_node
            .as_ref()
            .map_or(self.node.clone(), |(_, inside)| inside.clone())
    }

    /// The directory of a moved `node` (`<line>/bin/node` → `<line>`).
    fn moved_node_dir(&self) -> Option<PathBuf> {
        let (host, _) = self.moved_node.as_ref()?;
        Some(host.parent()?.parent()?.to_path_buf())
    }

    /// Holds the images of the shim's directory and of a moved `node`'s,
    /// reusing those of `current` that did not change.
    fn hold_images(&mut self, current: Option<&RuntimeFiles>) -> Result<(), ImageError> {
        self.shim_image = match current.filter(|c| c.shim_dir() == self.shim_dir()) {
            Some(c) if c.shim_image.is_some() => c.shim_image.clone(),
            _ => Some(Arc::new(hold_image(self.shim_dir())?)),
        };
        self.node_image = match self.moved_node_dir() {
            None => None,
            Some(dir) => match current.filter(|c| c.moved_node_dir().as_ref() == Some(&dir)) {
                Some(c) if c.node_image.is_some() => c.node_image.clone(),
                _ => Some(Arc::new(hold_image(&dir)?)),
            },
        };
        Ok(())
    }

    /// The directory the shim is in, which jails see at `/runtime`.
    fn shim_dir(&self) -> &Path {
        self.shim.parent().unwrap_or(Path::new("/"))
    }

    /// Names this runtime: the shim's path (thaw writes each shim under a
    /// directory named by its hash) and Node's binary with its mtime, which
    /// a package upgrade changes.
    fn identity(&self) -> String {
        let node = which(&self.node).unwrap_or_else(|| self.node.clone());
        let mtime = std::fs::metadata(&node)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!(
            "shim {} node {} ({mtime})",
            self.shim.display(),
            node.display()
        )
    }
}

impl ProcessDriver {
    /// Jailed, it first tries to make the shim directory's image: if that
    /// fails, this host cannot make images, and every tree is bound.
    pub fn new(config: ProcessDriverConfig) -> Result<Self, SandboxError> {
        let mut files = RuntimeFiles::find(
            &config.node,
            &config.shim,
            config.jail.is_some(),
            config.node_in_jail.as_deref(),
        )?;
        let trees = config.jail.as_ref().map(|_| match files.hold_images(None) {
            Ok(()) => Trees::Images(CodeImages::default()),
            Err(e) => Trees::Bound(e.to_string()),
        });
        Ok(ProcessDriver {
            files: std::sync::RwLock::new(Arc::new(files)),
            config,
            trees,
        })
    }

    /// Why jails bind the shim and the code from the data directory (and
    /// so see its paths in `/proc/self/mountinfo`) rather than mount them
    /// from images; `None` when they mount images, or run unjailed.
    pub fn without_images(&self) -> Option<&str> {
        match &self.trees {
            Some(Trees::Bound(why)) => Some(why),
            _ => None,
        }
    }

    fn files(&self) -> Arc<RuntimeFiles> {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_jailed(&self) -> bool {
        self.config.jail.is_some()
    }

    /// The command that starts one runtime, its jail if it has one, and
    /// the files it starts from.
    fn runtime_command(&self) -> Result<RuntimeCommand, SandboxError> {
        let files = self.files();
        let Some(jail) = &self.config.jail else {
            let mut cmd = Command::new(&files.node);
            cmd.args(&self.config.node_args).arg(&files.shim);
            return Ok(RuntimeCommand {
                cmd,
                jail: None,
                files,
            });
        };
        let n = self.config.numbering.fetch_add(1, Ordering::Relaxed);
        let shim_name = files.shim.file_name().unwrap_or_default();
        let (mut binds, mut images) = match &files.shim_image {
            Some(image) => (Vec::new(), vec![image.mount_at(JAIL_RUNTIME_DIR)]),
            None => (
                vec![(
                    files.shim_dir().to_path_buf(),
                    PathBuf::from(JAIL_RUNTIME_DIR),
                )],
                Vec::new(),
            ),
        };
        match &files.node_image {
            Some(image) => images.push(image.mount_at(JAIL_NODE_DIR)),
            None => binds.extend(files.moved_node.clone()),
        }
        let config = thaw_jail::JailConfig {
            id: format!("i{}-{n}", std::process::id()),
            state_dir: jail.state_dir.clone(),
            ro_binds: files.node_binds.clone(),
            binds,
            writable_binds: Vec::new(),
            images,
            devices: Vec::new(),
            own_seccomp: false,
            own_cgroup: true,
            attach_point: PathBuf::from(JAIL_CODE_DIR),
            uid: jail.uid_for(n),
            gid: jail.uid_for(n),
            limits: jail.limits.clone(),
        };
        let mut args = self.config.node_args.clone();
        args.push(
            Path::new(JAIL_RUNTIME_DIR)
                .join(shim_name)
                .to_string_lossy()
                .into_owned(),
        );
        let argv = thaw_jail::command_args(&config, &files.node_inside(), &args)
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let mut cmd = Command::new(&jail.exe);
        cmd.args(argv);
        Ok(RuntimeCommand {
            cmd,
            jail: Some(config),
            files,
        })
    }

    async fn start_process(&self, sink: Arc<dyn LogSink>) -> Result<Instance, SandboxError> {
        let (host_end, runtime_end) =
            StdUnixStream::pair().map_err(|e| SandboxError::Start(format!("socketpair: {e}")))?;
        let runtime_fd: OwnedFd = runtime_end.into();
        let raw = runtime_fd.as_raw_fd();

        let RuntimeCommand {
            mut cmd,
            jail,
            files,
        } = self.runtime_command()?;
        cmd.env_clear()
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
                self.files().node.display()
            ))
        })?;
        drop(runtime_fd);

        let (out_tx, out_rx) = mpsc::channel(OUTPUT_QUEUE);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_output(stdout, LogStream::Stdout, out_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_output(stderr, LogStream::Stderr, out_tx));
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
            jail,
            _files: files,
            memory_mb: AtomicU32::new(0),
            cleaned: AtomicBool::new(false),
        });
        Instance::connect_raw(reader, writer, process, out_rx, sink).await
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start(&self, sink: Arc<dyn LogSink>) -> BoxFuture<'_, Result<Instance, SandboxError>> {
        Box::pin(self.start_process(sink))
    }

    fn upgrade_runtime<'a>(
        &'a self,
        shim: &'a Path,
        node: &'a Path,
    ) -> BoxFuture<'a, Result<RuntimeChange, SandboxError>> {
        Box::pin(async move {
            let current = self.files();
            let before = current.identity();
            let mut files = RuntimeFiles::find(
                node,
                shim,
                self.config.jail.is_some(),
                self.config.node_in_jail.as_deref(),
            )?;
            if let Some(Trees::Images(_)) = &self.trees {
                files = tokio::task::spawn_blocking(move || {
                    files.hold_images(Some(&current)).map(|()| files)
                })
                .await
                .map_err(|e| SandboxError::Start(format!("making the runtime's images: {e}")))?
                .map_err(|e| SandboxError::Start(format!("the runtime's images: {e}")))?;
            }
            let after = files.identity();
            *self.files.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(files);
            Ok(RuntimeChange { before, after })
        })
    }

    fn attach<'a>(
        &'a self,
        instance: &'a Instance,
        host_dir: &'a Path,
        memory_mb: u32,
    ) -> BoxFuture<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            let jailed = instance
                .process()
                .as_any()
                .downcast_ref::<NodeProcess>()
                .and_then(|p| p.jail.as_ref().map(|j| (p, j)));
            let Some((process, jail)) = jailed else {
                if let Some(pid) = instance.pid() {
                    set_niceness(pid, 0);
                }
                // Without a jail the runtime sees the host's file system:
                // the tree is read-only on disk and shared; nothing to mount.
                return Ok(host_dir.to_string_lossy().into_owned());
            };
            let failed = |what: &str, e: thaw_jail::JailError| {
                SandboxError::Start(format!("could not {what}: {e}"))
            };
            let image = match &self.trees {
                Some(Trees::Images(images)) => images.get(host_dir).await,
                _ => None,
            };
            match &image {
                Some(image) => thaw_jail::attach_image(jail, image),
                None => thaw_jail::attach(jail, host_dir),
            }
            .map_err(|e| failed("attach the code", e))?;
            let cgroup = thaw_jail::Cgroup::for_instance(&jail.id)
                .map_err(|e| failed("find the cgroup", e))?;
            cgroup
                .set_memory_limit(u64::from(memory_mb) * 1024 * 1024)
                .map_err(|e| failed("set the memory limit", e))?;
            process.memory_mb.store(memory_mb, Ordering::Relaxed);
            for pid in cgroup.procs().unwrap_or_default() {
                set_niceness(pid as u32, 0);
            }
            Ok(JAIL_CODE_DIR.to_string())
        })
    }

    fn prepare_code<'a>(&'a self, host_dir: &'a Path) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(Trees::Images(images)) = &self.trees {
                images.get(host_dir).await;
            }
        })
    }

    fn forget_code(&self, host_dir: &Path) {
        if let Some(Trees::Images(images)) = &self.trees {
            images.forget(host_dir);
        }
    }
}

/// What [`ProcessDriver::runtime_command`] makes.
struct RuntimeCommand {
    cmd: Command,
    jail: Option<thaw_jail::JailConfig>,
    files: Arc<RuntimeFiles>,
}

/// Finds a program the way a shell would (for binding it into a jail, or
/// copying it into a VM image), with its symlinks resolved.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.canonicalize().ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// Sets the niceness of every thread of `pid`. Linux keeps niceness per
/// thread, and Node (or QEMU) starts its threads before it is bound.
pub fn set_niceness(pid: u32, nice: i32) {
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

/// Passes a runtime's raw output on as lines, read in bounded chunks: at
/// most [`MAX_LINE_BYTES`] of a line is ever held, the rest of a longer one
/// is counted and skipped, and the line is passed on cut (and marked so).
/// Bytes that are not UTF-8 are replaced, not a reason to stop reading.
async fn forward_output<R: AsyncRead + Unpin>(
    mut r: R,
    stream: LogStream,
    tx: mpsc::Sender<RawLine>,
) {
    let mut chunk = vec![0u8; OUTPUT_CHUNK];
    let mut line = LineCutter::default();
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &chunk[..n];
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            line.push(&rest[..newline]);
            let (text, bytes) = line.take();
            if tx
                .send(RawLine {
                    stream,
                    line: text,
                    bytes,
                })
                .await
                .is_err()
            {
                return;
            }
            rest = &rest[newline + 1..];
        }
        line.push(rest);
    }
    if !line.is_empty() {
        let (text, bytes) = line.take();
        let _ = tx
            .send(RawLine {
                stream,
                line: text,
                bytes,
            })
            .await;
    }
}

/// The line being read: its first [`MAX_LINE_BYTES`] and its full length.
#[derive(Default)]
struct LineCutter {
    kept: Vec<u8>,
    total: usize,
}

impl LineCutter {
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.total += bytes.len();
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The line as text (at most [`MAX_LINE_BYTES`]) and its length as
    /// written; starts the next one.
    fn take(&mut self) -> (String, usize) {
        let cut = self.total > self.kept.len();
        if !cut && self.kept.last() == Some(&b'\r') {
            self.kept.pop();
            self.total -= 1;
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if cut {
            mark_cut(&mut text, self.total);
        } else {
            cut_line(&mut text);
        }
        let total = std::mem::take(&mut self.total);
        self.kept.clear();
        (text, total)
    }
}

struct NodeProcess {
    pid: u32,
    child: tokio::sync::Mutex<Child>,
    reaped: AtomicBool,
    jail: Option<thaw_jail::JailConfig>,
    /// What it was started from. Holds the shim's image: the jail mounts
    /// it by device name, which must not name another image meanwhile.
    _files: Arc<RuntimeFiles>,
    /// The memory limit set when bound, for explaining an OOM kill.
    memory_mb: AtomicU32,
    cleaned: AtomicBool,
}

impl NodeProcess {
    /// Removes the jail's cgroup, mounts and directories, once. Says
    /// whether the kernel's OOM killer had struck, which must be read
    /// before the cgroup goes.
    fn clean_up_jail(&self) -> bool {
        let Some(jail) = &self.jail else {
            return false;
        };
        if self.cleaned.swap(true, Ordering::AcqRel) {
            return false;
        }
        let oom = thaw_jail::Cgroup::for_instance(&jail.id)
            .map(|c| c.oom_killed())
            .unwrap_or(false);
        if let Err(e) = thaw_jail::cleanup_instance(jail) {
            tracing::warn!("could not clean up jail {}: {e}", jail.id);
        }
        oom
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.jail.is_some() && !self.cleaned.load(Ordering::Acquire) {
            self.signal_group(libc::SIGKILL);
            let jail = self.jail.take();
            // Cleaning up kills what is left and waits for it: not on the
            // async runtime's threads.
            std::thread::spawn(move || {
                if let Some(jail) = jail {
                    let _ = thaw_jail::cleanup_instance(&jail);
                }
            });
        }
    }
}

impl NodeProcess {
    /// Stops (or continues) the whole runtime. A jail's processes are in
    /// another PID namespace and session, out of reach of a group signal:
    /// its cgroup's freezer reaches all of them.
    fn freeze_or_signal(&self, stop: bool) {
        let cgroup = self
            .jail
            .as_ref()
            .and_then(|j| thaw_jail::Cgroup::for_instance(&j.id).ok());
        match (cgroup, stop) {
            (Some(c), true) => drop(c.freeze()),
            (Some(c), false) => drop(c.thaw()),
            (None, true) => self.signal_group(libc::SIGSTOP),
            (None, false) => self.signal_group(libc::SIGCONT),
        }
    }

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
        // A frozen jail takes no signal until thawed: a paused instance
        // that is killed must be let go to die.
        if let Some(Ok(cgroup)) = self
            .jail
            .as_ref()
            .map(|j| thaw_jail::Cgroup::for_instance(&j.id))
        {
            if let Ok(procs) = cgroup.procs() {
                for pid in procs {
                    // SAFETY: plain syscall on processes of our own jail.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let _ = cgroup.thaw();
        }
    }

    fn pause(&self) {
        self.freeze_or_signal(true);
    }

    fn resume(&self) {
        self.freeze_or_signal(false);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// A jailed runtime is several processes (the jail's outer process, its
    /// init, Node and what Node started): all of them count.
    fn memory_pss(&self) -> Option<u64> {
        let outer = crate::pss_bytes(self.pid)?;
        let Some(jail) = &self.jail else {
            return Some(outer);
        };
        let inside: u64 = thaw_jail::Cgroup::for_instance(&jail.id)
            .and_then(|c| c.procs())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| crate::pss_bytes(pid as u32))
            .sum();
        Some(outer + inside)
    }

    fn wait_exit(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let mut child = self.child.lock().await;
            let status = child.wait().await;
            self.reaped.store(true, Ordering::Release);
            let oom = self.clean_up_jail();
            match status {
                Ok(_) if oom => format!(
                    "the instance went past its memory limit of {} MiB and was killed",
                    self.memory_mb.load(Ordering::Relaxed)
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(output: Vec<u8>) -> Vec<RawLine> {
        let (tx, mut rx) = mpsc::channel(OUTPUT_QUEUE);
        let reader = tokio::spawn(forward_output(
            std::io::Cursor::new(output),
            LogStream::Stdout,
            tx,
        ));
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        reader.await.unwrap();
        lines
    }

    #[tokio::test]
    async fn a_ten_megabyte_line_of_raw_output_comes_out_cut() {
        let mut output = vec![b'a'; 10 * 1024 * 1024];
        output.extend_from_slice(b"\nnext\r\n\xff\xfenot utf-8\n\nlast");
        let lines = lines_of(output).await;
        let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(texts.len(), 5, "{:?}", &texts[1..]);
        let cut = &lines[0];
        assert!(cut.line.len() <= MAX_LINE_BYTES, "{}", cut.line.len());
        assert!(cut.line.starts_with("aaaa"));
        assert!(
            cut.line
                .ends_with(" …[thaw: line cut, 10485760 bytes in all]"),
            "{}",
            &cut.line[cut.line.len() - 60..]
        );
        assert_eq!(cut.bytes, 10 * 1024 * 1024);
        assert_eq!(
            texts[1..],
            ["next", "\u{fffd}\u{fffd}not utf-8", "", "last"]
        );
        assert_eq!(lines[1].bytes, 4);
    }

    #[tokio::test]
    async fn a_line_just_at_the_limit_is_whole_and_one_byte_more_is_cut() {
        let mut output = vec![b'b'; MAX_LINE_BYTES];
        output.push(b'\n');
        output.extend(vec![b'c'; MAX_LINE_BYTES + 1]);
        let lines = lines_of(output).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].line, "b".repeat(MAX_LINE_BYTES));
        assert!(lines[1].line.ends_with(&format!(
            "[thaw: line cut, {} bytes in all]",
            MAX_LINE_BYTES + 1
        )));
        assert!(lines[1].line.len() <= MAX_LINE_BYTES);
    }
}
