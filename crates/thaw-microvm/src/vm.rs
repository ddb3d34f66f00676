//! One QEMU `microvm` process: launch (boot or restore), its QMP socket, the
//! agent's control port and the protocol port, and cleanup.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::image::ImageInfo;
use crate::qmp::Qmp;
use crate::MicrovmError;

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
        }
    }
}

/// Guest RAM kept in a file, for templates (`share=on`, written by the
/// guest) and restores (`share=off`: mapped copy-on-write).
pub(crate) struct MemoryFile<'a> {
    pub(crate) path: &'a Path,
    pub(crate) shared: bool,
}

/// Everything that decides QEMU's command line. A template and the VMs
/// restored from it must build the same machine, so both go through here.
pub(crate) struct Launch<'a> {
    pub(crate) image: &'a ImageInfo,
    pub(crate) opts: &'a VmOptions,
    pub(crate) memory: Option<MemoryFile<'a>>,
    /// The file behind the code drive, if the VM has one.
    pub(crate) code_drive: Option<&'a Path>,
    /// Wait for an incoming migration (`-incoming defer`).
    pub(crate) incoming: bool,
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
}

impl Vm {
    /// Boots `image` from scratch and returns once the agent answers on its
    /// control port (with the guest clock set). The runtime's `ready` frame
    /// is the first thing [`Vm::take_channel`]'s stream yields.
    pub async fn boot(image: &ImageInfo, opts: &VmOptions) -> Result<Vm, MicrovmError> {
        let launch = Launch {
            image,
            opts,
            memory: None,
            code_drive: None,
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
        fs::create_dir_all(&dir)
            .map_err(|e| MicrovmError::io(format!("creating {}", dir.display()), e))?;
        let sock = |name: &str| dir.join(name);
        if sock("proto.sock").as_os_str().len() > 100 {
            return Err(MicrovmError::Qemu(format!(
                "the run directory {} is too long for Unix socket paths; use a shorter one",
                dir.display()
            )));
        }
        let args = qemu_args(launch, &dir);
        let stderr = fs::File::create(dir.join("qemu.log"))
            .map_err(|e| MicrovmError::io("creating qemu.log", e))?;
        let mut cmd = Command::new(&opts.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let nice = opts.nice;
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
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            MicrovmError::io(
                format!(
                    "running {} (install the qemu-system-x86 package)",
                    opts.qemu.display()
                ),
                e,
            )
        })?;
        let pid = child.id().unwrap_or(0);
        let mut guard = KillOnError {
            child: Some(child),
            dir: dir.clone(),
        };

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
        Ok(Vm {
            child: guard.child.take().expect("the child is still there"),
            pid,
            dir,
            qmp,
            control: BufReader::new(control),
            channel,
            has_code_drive: launch.code_drive.is_some(),
            next_code_node: 0,
        })
    }

    /// QEMU's process id (for PSS, cgroups, ...).
    pub fn pid(&self) -> u32 {
        self.pid
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
        self.qmp
            .execute(
                "blockdev-add",
                json!({ "driver": "file", "node-name": node, "filename": image, "read-only": true }),
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
    }
}

/// Kills QEMU if the launch fails half way, with its messages in the error.
struct KillOnError {
    child: Option<Child>,
    dir: PathBuf,
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

fn qemu_args(launch: &Launch<'_>, dir: &Path) -> Vec<OsString> {
    let opts = launch.opts;
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
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
    // scheduler or NUMA changes. Spawning stays allowed: the `exec:`
    // migration URIs of templates and restores run `cat` (QEMU 7.2 has no
    // `file:` URI).
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny",
    ]);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // QEMU's key=value options split on commas; a comma in a path is doubled.
    let opt = |p: &Path| p.to_string_lossy().replace(',', ",,");
    push(&[
        "-kernel",
        &path(&launch.image.kernel),
        "-initrd",
        &path(&launch.image.initramfs),
    ]);
    push(&["-append", &kernel_cmdline(launch.image)]);
    push(&[
        "-serial",
        &format!("file:{}", path(&dir.join("console.log"))),
    ]);
    for id in ["proto", "ctl"] {
        let sock = opt(&dir.join(format!("{id}.sock")));
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
    if let Some(code) = launch.code_drive {
        push(&[
            "-blockdev",
            &format!(
                "driver=file,node-name=code-file0,filename={},read-only=on",
                opt(code)
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
                "memory-backend-file,id=mem,size={mem},mem-path={},share={share}",
                opt(memory.path)
            ),
        ]);
    }
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt(&dir.join("qmp.sock"))),
    ]);
    if launch.incoming {
        push(&["-incoming", "defer"]);
    }
    args
}
