//! One QEMU `microvm` process: launch (boot or restore), its QMP socket, the
//! agent's control port and the protocol port, and cleanup.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::image::ImageInfo;
use crate::memory::GuestMemory;
use crate::qmp::Qmp;
use crate::MicrovmError;
use thaw_sandbox::JailSettings;

/// Name of the virtio-serial port that carries docs/protocol.md.
pub const PROTOCOL_PORT: &str = "thaw";
/// Name of the virtio-serial port that carries the agent's control lines.
pub const CONTROL_PORT: &str = "thaw.ctl";
/// Where the agent mounts the function's code (`Init::code_dir`).
pub const GUEST_CODE_DIR: &str = "/code";
/// The guest's code device: the one virtio-blk drive.
pub const GUEST_CODE_DEVICE: &str = "/dev/vda";
/// Capacity of the code drive as the guest sees it. Every code image is
/// padded (sparsely) to this size, so swapping images never changes the
/// capacity and the guest needs no resize notification.
pub const CODE_DRIVE_BYTES: u64 = 1 << 30;

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation; only where [`crate::probe_accel`] saw a
    /// standard guest boot under it.
    Kvm,
    /// QEMU's software emulation: works everywhere, several times slower.
    Tcg,
}

impl Accel {
    /// Memory QEMU itself needs beyond the guest RAM it touched: its
    /// binary, heap and device state, and under TCG the translation cache
    /// (`tb-size`). A VM's cgroup allows guest RAM plus this.
    pub fn vmm_overhead_mib(self) -> u32 {
        match self {
            Accel::Kvm => 128,
            Accel::Tcg => 192,
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // TCG's translation cache is 1 GiB of address space by default
            // and grows as the guest runs new code; 64 MiB bounds it at no
            // measured cost (docs/microvm.md: 16 MiB saved 24 MiB PSS per VM
            // but made the first answer after a restore 1.7x slower).
            Accel::Tcg => ["-accel", "tcg,tb-size=64", "-cpu", "max"],
        }
    }
}

/// How to launch VMs.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub accel: Accel,
    /// Guest RAM in MiB (a template and its restores must agree).
    pub memory_mib: u32,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Each VM gets a directory of its own under this one (sockets, logs).
    /// Unix socket paths are limited to 107 bytes: keep it short.
    pub run_dir: PathBuf,
    /// How long to wait for QEMU, the agent and migrations.
    pub timeout: Duration,
    /// Niceness QEMU starts with: a pool restores VMs in the background at
    /// a low priority, and raises it when one is bound to a function.
    pub nice: i32,
    /// Run QEMU inside thaw's jail; `None` runs it as a plain process
    /// (still under its own `-sandbox`).
    pub jail: Option<VmJail>,
}

impl VmOptions {
    pub fn new(accel: Accel, run_dir: impl Into<PathBuf>) -> Self {
        VmOptions {
            accel,
            memory_mib: 512,
            qemu: PathBuf::from("qemu-system-x86_64"),
            run_dir: run_dir.into(),
            timeout: Duration::from_secs(120),
            nice: 0,
            jail: None,
        }
    }
}

/// Where QEMU finds the guest image, and keeps its sockets, inside a jail.
const JAIL_IMAGE_DIR: &str = "/image";
const JAIL_RUN_DIR: &str = "/run/vm";
/// The descriptor on which QEMU finds guest RAM (`mem-path=/proc/self/fd/3`).
const MEMORY_FD: i32 = 3;
/// Name the jail's init gives itself; the other process of a VM's jail is
/// QEMU.
const JAIL_INIT_NAME: &str = "thaw-init";

/// QEMU inside thaw's jail, as Firecracker runs under its jailer: its own
/// PID, mount, network, IPC, UTS and cgroup namespaces, a read-only root
/// holding only QEMU, its libraries and firmware and the guest image, the
/// VM's run directory as the one writable place (its sockets), a cgroup
/// with memory, CPU and pids limits, an unprivileged uid of its own, and
/// QEMU's own seccomp filter (`-sandbox`). Guest RAM, the saved state and
/// code images are handed over as file descriptors, so no template and no
/// other function's code is ever in its view. See docs/microvm.md.
#[derive(Debug, Clone)]
pub struct VmJail {
    pub settings: JailSettings,
    /// QEMU's binary, symlinks resolved (bound at this path inside).
    qemu: PathBuf,
    /// Host files bound read-only at their own paths: QEMU, its libraries,
    /// its firmware and its TCG module with that module's libraries.
    binds: Vec<PathBuf>,
}

impl VmJail {
    /// Finds everything `qemu` needs inside a jail.
    pub fn new(settings: JailSettings, qemu: &Path) -> Result<VmJail, MicrovmError> {
        let qemu = thaw_sandbox::which(qemu).ok_or_else(|| {
            MicrovmError::Qemu(format!(
                "{} not found (install the qemu-system-x86 package)",
                qemu.display()
            ))
        })?;
        let jail_err = |e: thaw_jail::JailError| MicrovmError::Qemu(e.to_string());
        let mut binds = thaw_jail::program_binds(&qemu).map_err(jail_err)?;
        // QEMU looks for these beside its own binary (/proc/self/exe):
        // <bin>/../share/qemu and <bin>/../lib/<triplet>/qemu.
        let prefix = qemu
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/usr"));
        // The microvm machine's firmware (qboot: `bios-microvm.bin`, which
        // Debian links to `qboot.rom`, the name QEMU asks for without
        // ACPI) and the option ROMs that load `-kernel`; symlinks are bound
        // at both their name and their target.
        for firmware in [
            "bios-microvm.bin",
            "qboot.rom",
            "linuxboot.bin",
            "linuxboot_dma.bin",
        ] {
            let path = prefix.join("share/qemu").join(firmware);
            for p in [Some(path.clone()), path.canonicalize().ok()]
                .into_iter()
                .flatten()
            {
                if p.exists() && !binds.contains(&p) {
                    binds.push(p);
                }
            }
        }
        let module = prefix
            .join("lib")
            .join(format!("{}-linux-gnu", std::env::consts::ARCH))
            .join("qemu/accel-tcg-x86_64.so");
        if module.exists() {
            for path in thaw_jail::program_binds(&module).map_err(jail_err)? {
                if !binds.contains(&path) {
                    binds.push(path);
                }
            }
        }
        Ok(VmJail {
            settings,
            qemu,
            binds,
        })
    }

    /// The jail of one VM: `dir` is its run directory on the host.
    fn config(
        &self,
        n: u64,
        image: &ImageInfo,
        dir: &Path,
        accel: Accel,
        memory_mib: u32,
    ) -> thaw_jail::JailConfig {
        let uid = self.settings.uid_for(n);
        let mut limits = self.settings.limits.clone();
        limits.memory_bytes = u64::from(memory_mib + accel.vmm_overhead_mib()) << 20;
        thaw_jail::JailConfig {
            id: format!("vm{}-{n}", std::process::id()),
            state_dir: self.settings.state_dir.clone(),
            ro_binds: self.binds.clone(),
            binds: vec![(image.dir.clone(), PathBuf::from(JAIL_IMAGE_DIR))],
            writable_binds: vec![(dir.to_path_buf(), PathBuf::from(JAIL_RUN_DIR))],
            images: Vec::new(),
            devices: match accel {
                Accel::Kvm => vec!["kvm".into()],
                Accel::Tcg => Vec::new(),
            },
            own_seccomp: true,
            own_cgroup: false,
            attach_point: PathBuf::from("/code"),
            uid,
            gid: uid,
            limits,
        }
    }
}

/// Guest RAM in a memfd (see `memory.rs`): a template boots with it
/// `shared` (the guest writes into it); restores map it privately.
pub(crate) struct MemoryFile<'a> {
    pub(crate) memory: &'a GuestMemory,
    pub(crate) shared: bool,
}

/// Everything that decides QEMU's command line. A template and the VMs
/// restored from it must build the same machine, so both go through here.
pub(crate) struct Launch<'a> {
    pub(crate) image: &'a ImageInfo,
    pub(crate) opts: &'a VmOptions,
    pub(crate) memory: Option<MemoryFile<'a>>,
    /// Give the VM the code drive: an empty placeholder of
    /// [`CODE_DRIVE_BYTES`] until [`Vm::attach_code`].
    pub(crate) code_drive: bool,
    /// Wait for an incoming migration (`-incoming defer`).
    pub(crate) incoming: bool,
}

/// Paths on QEMU's command line: the host's, or the jail's view of them.
struct QemuPaths {
    kernel: PathBuf,
    initramfs: PathBuf,
    run: PathBuf,
}

static NEXT_VM: AtomicU64 = AtomicU64::new(0);

/// A running (or paused) QEMU process. Dropping it kills QEMU and removes
/// its run directory.
pub struct Vm {
    child: Child,
    pid: u32,
    dir: PathBuf,
    qmp: Qmp,
    control: BufReader<UnixStream>,
    channel: Option<UnixStream>,
    has_code_drive: bool,
    next_code_node: u32,
    /// The VM's jail, when QEMU runs in one; `child` is then the jail's
    /// outer process and `pid` QEMU inside it.
    jail: Option<thaw_jail::JailConfig>,
    /// Lines of the guest's console, until taken.
    console: Option<mpsc::Receiver<String>>,
}

/// Console lines kept for whoever takes them; more are dropped (they are
/// still in `console.log`).
const CONSOLE_LINES: usize = 1024;
/// A console line longer than this is cut into pieces: what a guest
/// writes without a newline must not grow thaw's memory.
const CONSOLE_LINE_BYTES: usize = 16 << 10;
/// The part of a VM's run directory QEMU may write in (its sockets).
const SOCKET_DIR: &str = "sock";
/// `console.log` stops growing here.
const CONSOLE_LOG_BYTES: u64 = 4 << 20;

impl Vm {
    /// Boots `image` from scratch and returns once the agent answers on its
    /// control port (with the guest clock set). The runtime's `ready` frame
    /// is the first thing [`Vm::take_channel`]'s stream yields.
    pub async fn boot(image: &ImageInfo, opts: &VmOptions) -> Result<Vm, MicrovmError> {
        let launch = Launch {
            image,
            opts,
            memory: None,
            code_drive: false,
            incoming: false,
        };
        let mut vm = Vm::launch(&launch, true).await?;
        vm.sync_clock().await?;
        Ok(vm)
    }

    /// Starts QEMU and connects QMP, the control port and (if
    /// `connect_channel`) the protocol port.
    pub(crate) async fn launch(
        launch: &Launch<'_>,
        connect_channel: bool,
    ) -> Result<Vm, MicrovmError> {
        let opts = launch.opts;
        let n = NEXT_VM.fetch_add(1, Ordering::Relaxed);
        let dir = opts.run_dir.join(format!("vm-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // The run directory is thaw's (the logs); QEMU gets `sock/` alone,
        // so that nothing it can write is a path thaw later reads.
        let sockets = dir.join(SOCKET_DIR);
        fs::create_dir_all(&sockets)
            .map_err(|e| MicrovmError::io(format!("creating {}", sockets.display()), e))?;
        let sock = |name: &str| sockets.join(name);
        if sock("proto.sock").as_os_str().len() > 100 {
            return Err(MicrovmError::Qemu(format!(
                "the run directory {} is too long for Unix socket paths; use a shorter one",
                dir.display()
            )));
        }
        let jail = opts
            .jail
            .as_ref()
            .map(|j| j.config(n, launch.image, &sockets, opts.accel, opts.memory_mib));
        let paths = match &jail {
            Some(_) => QemuPaths {
                kernel: Path::new(JAIL_IMAGE_DIR).join(file_name(&launch.image.kernel)),
                initramfs: Path::new(JAIL_IMAGE_DIR).join(file_name(&launch.image.initramfs)),
                run: PathBuf::from(JAIL_RUN_DIR),
            },
            None => QemuPaths {
                kernel: launch.image.kernel.clone(),
                initramfs: launch.image.initramfs.clone(),
                run: sockets.clone(),
            },
        };
        let args = qemu_args(launch, &paths);
        let log = |name: &str| {
            fs::File::create(dir.join(name))
                .map_err(|e| MicrovmError::io(format!("creating {name}"), e))
        };
        let (qemu_log, console_log) = match (log("qemu.log"), log("console.log")) {
            (Ok(q), Ok(c)) => (q, c),
            (Err(e), _) | (_, Err(e)) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut cmd = match (&jail, &opts.jail) {
            (Some(config), Some(vm_jail)) => {
                // QEMU, as the jail's uid, creates its sockets in here.
                let prepared =
                    std::os::unix::fs::chown(&sockets, Some(config.uid), Some(config.gid))
                        .map_err(|e| MicrovmError::io(format!("chown {}", sockets.display()), e))
                        .and_then(|()| {
                            thaw_jail::command_args(config, &vm_jail.qemu, &args)
                                .map_err(|e| MicrovmError::Qemu(e.to_string()))
                        });
                let argv = match prepared {
                    Ok(argv) => argv,
                    Err(e) => {
                        let _ = fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                };
                let mut cmd = Command::new(&vm_jail.settings.exe);
                cmd.args(argv).env_clear();
                cmd
            }
            _ => {
                let mut cmd = Command::new(&opts.qemu);
                cmd.args(&args);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(qemu_log)
            .kill_on_drop(true);
        let nice = opts.nice;
        let memory_fd = launch.memory.as_ref().map(|m| m.memory.fd().as_raw_fd());
        // SAFETY: only async-signal-safe calls between fork and exec. QEMU
        // must not outlive thaw (nor a test that panicked).
        unsafe {
            cmd.pre_exec(move || {
                if nice != 0 {
                    libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let moved = match memory_fd {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    Some(MEMORY_FD) => libc::fcntl(MEMORY_FD, libc::F_SETFD, 0),
                    Some(fd) => libc::dup2(fd, MEMORY_FD),
                    None => 0,
                };
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(MicrovmError::io(
                    format!(
                        "running {} (install the qemu-system-x86 package)",
                        opts.qemu.display()
                    ),
                    e,
                ));
            }
        };
        let mut pid = child.id().unwrap_or(0);
        let (console_tx, console) = mpsc::channel(CONSOLE_LINES);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(read_console(stdout, console_log, console_tx));
        }
        let mut guard = KillOnError {
            child: Some(child),
            dir: dir.clone(),
            jail: jail.clone(),
        };

        // QEMU creates its sockets early; a QEMU (or jail) that fails to
        // start exits instead, and says why in qemu.log.
        let deadline = tokio::time::Instant::now() + opts.timeout;
        while !sock("qmp.sock").exists() {
            let exited = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(guard.explain(MicrovmError::Qemu(format!(
                    "QEMU ended before it was ready ({status})"
                ))));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(guard.explain(MicrovmError::Timeout(format!(
                    "waiting {:?} for QEMU's QMP socket",
                    opts.timeout
                ))));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let qmp = match Qmp::connect(&sock("qmp.sock"), opts.timeout).await {
            Ok(q) => q,
            Err(e) => return Err(guard.explain(e)),
        };
        let control = match connect_unix(&sock("ctl.sock"), opts.timeout).await {
            Ok(c) => c,
            Err(e) => return Err(guard.explain(e)),
        };
        let channel = if connect_channel {
            match connect_unix(&sock("proto.sock"), opts.timeout).await {
                Ok(c) => Some(c),
                Err(e) => return Err(guard.explain(e)),
            }
        } else {
            None
        };
        if let Some(config) = &jail {
            // QMP answered: QEMU runs, inside the jail's cgroup.
            match jailed_program(config) {
                Some(p) => pid = p,
                None => {
                    return Err(guard.explain(MicrovmError::Qemu(
                        "QEMU is not in its jail's cgroup".into(),
                    )))
                }
            }
        }
        guard.jail = None;
        Ok(Vm {
            child: guard.child.take().expect("the child is still there"),
            pid,
            dir,
            qmp,
            control: BufReader::new(control),
            channel,
            has_code_drive: launch.code_drive,
            next_code_node: 0,
            jail,
            console: Some(console),
        })
    }

    /// QEMU's process id (for PSS, niceness, ...), on the host, also when
    /// it runs in a jail.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every host process the VM is made of: QEMU, and when jailed the
    /// jail's outer process and init.
    pub fn process_ids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        if let Some(config) = &self.jail {
            pids.extend(self.child.id());
            let inside = thaw_jail::Cgroup::for_instance(&config.id).and_then(|c| c.procs());
            for p in inside.unwrap_or_default() {
                if !pids.contains(&(p as u32)) {
                    pids.push(p as u32);
                }
            }
        }
        pids
    }

    /// The jail QEMU runs in, if it does (its id names the VM's cgroup).
    pub fn jail(&self) -> Option<&thaw_jail::JailConfig> {
        self.jail.as_ref()
    }

    /// Kills QEMU and waits until it is gone (its jail torn down too),
    /// so that nothing maps the VM's memory any more.
    pub async fn shut_down(mut self) {
        // Jailed, the cgroup reaches QEMU whatever became of its pid, and
        // cleaning up waits until every process of the jail is gone.
        if let Some(config) = self.jail.take() {
            let _ = tokio::task::spawn_blocking(move || thaw_jail::cleanup_instance(&config)).await;
        }
        // Our own child (QEMU, or the jail's outer process): alive or a
        // zombie until the wait below.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The guest's console from now on, line by line, once: Node's own
    /// output outside frames, and what the guest kernel and agent say
    /// (little after a restore: the kernel runs `quiet`). Lines nobody
    /// takes in time are dropped; `console.log` in the run directory keeps
    /// the first 4 MiB of them all.
    pub fn take_console(&mut self) -> Option<mpsc::Receiver<String>> {
        self.console.take()
    }

    /// The host end of the protocol port, once. The agent keeps the
    /// runtime's side open across host reconnects.
    pub fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    /// Sends one line to the agent and returns the text after `ok`.
    pub async fn control(&mut self, line: &str) -> Result<String, MicrovmError> {
        let msg = format!("{line}\n");
        self.control
            .get_mut()
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| self.guest_error(format!("sending {line:?} to the agent: {e}")))?;
        let mut reply = String::new();
        let n =
            self.control.read_line(&mut reply).await.map_err(|e| {
                self.guest_error(format!("reading the agent's reply to {line:?}: {e}"))
            })?;
        if n == 0 {
            return Err(self.guest_error(format!(
                "the control port closed while waiting for {line:?}"
            )));
        }
        let reply = reply.trim_end();
        if let Some(rest) = reply.strip_prefix("ok") {
            return Ok(rest.trim_start().to_string());
        }
        let why = reply.strip_prefix("err ").unwrap_or(reply);
        Err(MicrovmError::Guest(format!("{line:?}: {why}")))
    }

    /// Sets the guest's wall clock to the host's (it is as old as the
    /// snapshot after a restore). Also proves the agent is running.
    pub async fn sync_clock(&mut self) -> Result<(), MicrovmError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        self.control(&format!("clock {now}")).await.map(|_| ())
    }

    /// Stops the guest's CPU (it keeps its memory; no CPU time is used).
    pub async fn pause(&mut self) -> Result<(), MicrovmError> {
        self.qmp.execute("stop", json!({})).await.map(|_| ())
    }

    /// Lets a paused guest run again and resyncs its clock.
    pub async fn resume(&mut self) -> Result<(), MicrovmError> {
        self.qmp.execute("cont", json!({})).await?;
        self.sync_clock().await
    }

    /// Puts the code image at `image` (an EROFS or squashfs image from
    /// [`crate::build_code_image`]) behind the guest's code drive and
    /// mounts it read-only at [`GUEST_CODE_DIR`]. The VM must have been
    /// launched with a code drive (every restored VM is).
    pub async fn attach_code(
        &mut self,
        image: &Path,
        fstype: &str,
    ) -> Result<String, MicrovmError> {
        if !self.has_code_drive {
            return Err(MicrovmError::Qemu(
                "this VM has no code drive (boot a template or restore one)".into(),
            ));
        }
        self.next_code_node += 1;
        let node = format!("code-file{}", self.next_code_node);
        // QEMU sees none of the host's files: the image travels as a
        // descriptor, opened read-only here, into a QMP fd set.
        let file = fs::File::open(image)
            .map_err(|e| MicrovmError::io(format!("opening {}", image.display()), e))?;
        let added = self
            .qmp
            .execute_with_fd(
                "add-fd",
                json!({ "fdset-id": self.next_code_node }),
                file.as_fd(),
            )
            .await?;
        let set = added
            .get("fdset-id")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::from(self.next_code_node));
        self.qmp
            .execute(
                "blockdev-add",
                json!({ "driver": "file", "node-name": node, "filename": format!("/dev/fdset/{set}"), "read-only": true }),
            )
            .await?;
        self.qmp
            .execute(
                "blockdev-reopen",
                json!({ "options": [{ "driver": "raw", "node-name": "code", "file": node, "read-only": true }] }),
            )
            .await?;
        self.control(&format!(
            "mount {GUEST_CODE_DEVICE} {GUEST_CODE_DIR} {fstype}"
        ))
        .await?;
        Ok(GUEST_CODE_DIR.to_string())
    }

    /// Proportional set size of QEMU (guest RAM shared with other VMs is
    /// divided among them), from `/proc/<pid>/smaps_rollup`.
    pub fn pss_bytes(&self) -> Result<u64, MicrovmError> {
        pss_bytes(self.pid)
    }

    /// The tail of the guest console and of QEMU's own messages, to explain
    /// a failure.
    pub fn diagnostics(&self) -> String {
        diagnostics(&self.dir)
    }

    /// Has QEMU exited?
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How QEMU ended, in words, once it has; `None` while it runs.
    pub fn ended(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.exit_status()?;
        let last_message = || {
            fs::read_to_string(self.dir.join("qemu.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default()
        };
        Some(match (status.code(), status.signal()) {
            (Some(0), _) => "the guest powered off (its runtime exited)".to_string(),
            (Some(code), _) => format!("QEMU exited with code {code}{}", last_message()),
            (None, Some(libc::SIGKILL)) => "QEMU was killed (SIGKILL)".to_string(),
            (None, Some(sig)) => format!("QEMU was killed by signal {sig}{}", last_message()),
            (None, None) => "QEMU ended".to_string(),
        })
    }

    /// Waits for QEMU to exit (the guest powers off when the runtime exits).
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus, MicrovmError> {
        self.child
            .wait()
            .await
            .map_err(|e| MicrovmError::io("waiting for QEMU", e))
    }

    pub(crate) fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    fn guest_error(&self, what: String) -> MicrovmError {
        MicrovmError::Guest(format!("{what}\n{}", self.diagnostics()))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(config) = self.jail.take() {
            clean_up_jail_later(config);
        }
    }
}

/// Copies the guest console (QEMU's stdout) into `console.log`, up to
/// [`CONSOLE_LOG_BYTES`], and to `lines` while there is room.
async fn read_console(
    stdout: tokio::process::ChildStdout,
    file: fs::File,
    lines: mpsc::Sender<String>,
) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut file = std::io::BufWriter::new(file);
    let mut written = 0u64;
    let mut stdout = stdout;
    let mut buf = vec![0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = CONSOLE_LOG_BYTES.saturating_sub(written) as usize;
        let keep = n.min(room);
        if keep > 0 {
            let _ = file.write_all(&buf[..keep]).and_then(|()| file.flush());
            written += keep as u64;
        }
        for &b in &buf[..n] {
            if b == b'\n' || line.len() >= CONSOLE_LINE_BYTES {
                let text = String::from_utf8_lossy(&line);
                let _ = lines.try_send(text.trim_end_matches('\r').to_string());
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        let _ = lines.try_send(String::from_utf8_lossy(&line).into_owned());
    }
}

/// Tears a VM's jail down (kills what is left in its cgroup and waits for
/// it): not on the async runtime's threads.
fn clean_up_jail_later(config: thaw_jail::JailConfig) {
    std::thread::spawn(move || {
        if let Err(e) = thaw_jail::cleanup_instance(&config) {
            tracing::warn!("could not clean up the jail of VM {}: {e}", config.id);
        }
    });
}

/// The host pid of the program a jail runs (QEMU): the process of its
/// cgroup that is not the jail's init.
fn jailed_program(config: &thaw_jail::JailConfig) -> Option<u32> {
    let procs = thaw_jail::Cgroup::for_instance(&config.id)
        .and_then(|c| c.procs())
        .ok()?;
    procs.into_iter().map(|p| p as u32).find(|p| {
        fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != JAIL_INIT_NAME)
    })
}

fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// Kills QEMU if the launch fails half way, with its messages in the error.
struct KillOnError {
    child: Option<Child>,
    dir: PathBuf,
    jail: Option<thaw_jail::JailConfig>,
}

impl KillOnError {
    fn explain(&mut self, err: MicrovmError) -> MicrovmError {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        MicrovmError::Qemu(format!("{err}\n{}", diagnostics(&self.dir)))
    }
}

impl Drop for KillOnError {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let Some(config) = self.jail.take() {
            clean_up_jail_later(config);
        }
    }
}

fn diagnostics(dir: &Path) -> String {
    let tail = |name: &str| {
        let text = fs::read_to_string(dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    format!(
        "--- qemu.log\n{}\n--- guest console\n{}",
        tail("qemu.log"),
        tail("console.log")
    )
}

pub(crate) fn pss_bytes(pid: u32) -> Result<u64, MicrovmError> {
    thaw_sandbox::pss_bytes(pid)
        .ok_or_else(|| MicrovmError::Qemu(format!("no memory figures for process {pid}")))
}

/// Connects to a Unix socket QEMU is about to create, retrying until it is
/// there or `timeout` passes.
pub(crate) async fn connect_unix(
    path: &Path,
    timeout: Duration,
) -> Result<UnixStream, MicrovmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(MicrovmError::io(
                    format!("connecting to {}", path.display()),
                    e,
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// The host's TSC rate in kHz, for `tsc_early_khz=`: under TCG the guest's
/// TSC is the host's, and without it about one boot in four hung in delay
/// calibration.
pub(crate) fn host_tsc_khz() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The kernel command line: thaw's own words, then what the image's kernel
/// needs. (Without ACPI, QEMU's microvm appends the virtio-mmio devices.)
pub(crate) fn kernel_cmdline(image: &ImageInfo) -> String {
    let mut cmdline = String::from("console=ttyS0 quiet panic=-1");
    if let Some(khz) = host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    if !image.kernel_args.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&image.kernel_args);
    }
    cmdline
}

fn qemu_args(launch: &Launch<'_>, paths: &QemuPaths) -> Vec<String> {
    let opts = launch.opts;
    let mut args: Vec<String> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(|p| p.to_string()));
    // The image says whether its kernel finds devices through ACPI.
    let acpi = if launch.image.acpi { "on" } else { "off" };
    let mut machine = format!("microvm,acpi={acpi}");
    if launch.memory.is_some() {
        machine.push_str(",memory-backend=mem");
    }
    push(&["-M", &machine]);
    push(&opts.accel.qemu_args());
    let mem = format!("{}M", opts.memory_mib);
    push(&["-m", &mem, "-smp", "1"]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    // QEMU's own seccomp filter: no obsolete system calls, no setuid, no
    // scheduler or NUMA changes, and no spawning (migrations and code images
    // come as descriptors, never through `exec:`).
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // QEMU's key=value options split on commas; a comma in a path is doubled.
    let opt = |p: &Path| p.to_string_lossy().replace(',', ",,");
    push(&[
        "-kernel",
        &path(&paths.kernel),
        "-initrd",
        &path(&paths.initramfs),
    ]);
    push(&["-append", &kernel_cmdline(launch.image)]);
    // The console goes to QEMU's stdout, a pipe thaw reads (read_console).
    push(&["-chardev", "stdio,id=console,signal=off"]);
    push(&["-serial", "chardev:console"]);
    for id in ["proto", "ctl"] {
        let sock = opt(&paths.run.join(format!("{id}.sock")));
        push(&[
            "-chardev",
            &format!("socket,id={id},path={sock},server=on,wait=off"),
        ]);
    }
    push(&["-device", "virtio-serial-device"]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=proto,name={PROTOCOL_PORT}"),
    ]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=ctl,name={CONTROL_PORT}"),
    ]);
    if launch.code_drive {
        // An empty placeholder (reads as zeros) until a code image is
        // attached; same capacity as every code image.
        push(&[
            "-blockdev",
            &format!(
                "driver=null-co,node-name=code-file0,size={CODE_DRIVE_BYTES},read-zeroes=on,read-only=on"
            ),
        ]);
        push(&[
            "-blockdev",
            "driver=raw,node-name=code,file=code-file0,read-only=on",
        ]);
        push(&["-device", "virtio-blk-device,drive=code"]);
    }
    if let Some(memory) = &launch.memory {
        let share = if memory.shared { "on" } else { "off" };
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem,size={},mem-path=/proc/self/fd/{MEMORY_FD},share={share}",
                memory.memory.bytes()
            ),
        ]);
    }
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt(&paths.run.join("qmp.sock"))
        ),
    ]);
    if launch.incoming {
        push(&["-incoming", "defer"]);
    }
    args
}
