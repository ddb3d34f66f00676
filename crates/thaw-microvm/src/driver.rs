//! The `microvm` driver: every instance is a QEMU microVM restored from the
//! runtime's template, its code attached as an EROFS image when it is bound.
//!
//! [`MicrovmDriver::open`] gets everything ready once, at `thaw up`: the
//! guest image (built or found in the cache), the accelerator (KVM only
//! where a probe VM booted under it), and the template for that image and
//! accelerator under `<data>/templates/<image id>-<accel>`. The image id
//! hashes the kernel, the agent, Node and the shim, so a thaw with another
//! shim makes a new template at start-up and every function, deployed or
//! not, is served from it: that is the runtime upgrade, with no redeploy.
//!
//! `start` restores a VM (in the background, for the pool: at a low CPU
//! priority), leaves it running, and connects an [`Instance`] over its protocol port; `attach`
//! builds the code tree's image once (`<tree>.erofs`, beside the tree),
//! puts it behind the VM's code drive and mounts it at `/code`. Pausing an
//! instance stops the guest's CPU (QMP `stop`); resuming continues it and
//! resyncs the guest's clock.
//!
//! A function's `memory` is not enforced per VM yet: every VM has the
//! template's RAM (512 MiB), which caps what any function can use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thaw_sandbox::{BoxFuture, Driver, Instance, LogSink, RuntimeProcess, SandboxError};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::{
    build_code_image, build_image, probe_accel, Accel, AccelProbe, BuildProgress, GuestKernel,
    ImageOptions, MicrovmError, Template, Vm, VmOptions, CODE_FSTYPE,
};

/// Niceness of a VM being restored for the pool; `attach` sets 0, so that
/// refilling the pool never takes the CPU from calls being served.
const STARTING_NICENESS: i32 = 10;

/// What the driver is made from.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// thaw's data directory: templates go to `<data>/templates`.
    pub data_dir: PathBuf,
    /// Where guest images are built and cached (`<data>/images` by default).
    pub images_dir: PathBuf,
    /// The `thaw-agent` binary, the guest's PID 1.
    pub agent: PathBuf,
    /// The runtime shim the guest runs.
    pub shim: PathBuf,
    /// The Node binary copied into the guest.
    pub node: PathBuf,
    /// The guest's kernel.
    pub kernel: GuestKernel,
    /// Each VM's sockets and logs go in a directory under this one (keep
    /// it short: Unix socket paths are limited to 107 bytes).
    pub run_dir: PathBuf,
}

/// What [`MicrovmDriver::open`] is doing, for `thaw up` to show.
#[derive(Debug)]
pub enum SetupProgress<'a> {
    Image(&'a BuildProgress),
    ProbingAccel,
    MakingTemplate { dir: &'a Path },
    TemplateReady { dir: &'a Path, made: bool },
}

/// Steps of [`MicrovmDriver::open`], for "3/7".
const SETUP_STEPS: u32 = 7;

impl SetupProgress<'_> {
    fn step(&self) -> u32 {
        match self {
            SetupProgress::Image(BuildProgress::Downloading { .. }) => 1,
            SetupProgress::Image(
                BuildProgress::Extracting { .. }
                | BuildProgress::KernelUnpacking { .. }
                | BuildProgress::KernelConfiguring
                | BuildProgress::KernelCompiling { .. }
                | BuildProgress::KernelBuilt { .. },
            ) => 2,
            SetupProgress::Image(BuildProgress::Collecting) => 3,
            SetupProgress::Image(BuildProgress::Hashing { .. }) => 4,
            SetupProgress::Image(_) => 5,
            SetupProgress::ProbingAccel => 6,
            SetupProgress::MakingTemplate { .. } | SetupProgress::TemplateReady { .. } => 7,
        }
    }
}

impl fmt::Display for SetupProgress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}/{SETUP_STEPS}] ", self.step())?;
        match self {
            SetupProgress::Image(p) => write!(f, "building the microVM image: {p}"),
            SetupProgress::ProbingAccel => write!(f, "checking whether KVM runs a guest here"),
            SetupProgress::MakingTemplate { dir } => write!(
                f,
                "making the runtime template {} (boots one VM, once per runtime version)",
                dir.display()
            ),
            SetupProgress::TemplateReady { dir, made } => write!(
                f,
                "{} the runtime template {}",
                if *made { "made" } else { "using" },
                dir.display()
            ),
        }
    }
}

pub struct MicrovmDriver {
    template: Template,
    probe: AccelProbe,
    opts: VmOptions,
    /// Held while a code image is built, so one tree is built once.
    building: Mutex<()>,
}

impl MicrovmDriver {
    /// Builds (or finds) the image, picks the accelerator and makes (or
    /// loads) the template. Takes seconds when everything is cached; the
    /// first time, a kernel download, an image build and one boot.
    pub async fn open(
        config: &MicrovmConfig,
        progress: Arc<dyn Fn(&SetupProgress) + Send + Sync>,
    ) -> Result<MicrovmDriver, MicrovmError> {
        let mut image_opts = ImageOptions::new(&config.images_dir, &config.agent, &config.shim);
        image_opts.node = config.node.clone();
        image_opts.kernel = config.kernel.clone();
        let image = {
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                build_image(&image_opts, &mut |p| progress(&SetupProgress::Image(p)))
            })
            .await
            .map_err(|e| MicrovmError::Image(format!("the image build panicked: {e}")))??
        };

        progress(&SetupProgress::ProbingAccel);
        let mut opts = VmOptions::new(Accel::Tcg, &config.run_dir);
        let probe = probe_accel(&image, &opts, &config.images_dir.join("accel.json")).await;
        opts.accel = probe.accel;

        let templates = config.data_dir.join("templates");
        let name = format!("{}-{}", image.id, accel_name(probe.accel));
        let dir = templates.join(&name);
        let template = match Template::load(&dir) {
            Ok(t) if t.image == image && t.accel == probe.accel => {
                progress(&SetupProgress::TemplateReady {
                    dir: &dir,
                    made: false,
                });
                t
            }
            _ => {
                progress(&SetupProgress::MakingTemplate { dir: &dir });
                let t = Template::create(&image, &opts, &dir).await?;
                progress(&SetupProgress::TemplateReady {
                    dir: &dir,
                    made: true,
                });
                t
            }
        };
        // Templates of other runtime versions serve no one after a restart.
        if let Ok(entries) = std::fs::read_dir(&templates) {
            for entry in entries.flatten() {
                if entry.file_name() != name.as_str() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(MicrovmDriver {
            template,
            probe,
            opts,
            building: Mutex::new(()),
        })
    }

    /// The accelerator VMs run under, and why it was chosen.
    pub fn accel(&self) -> &AccelProbe {
        &self.probe
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    async fn start_vm(&self, sink: Arc<dyn LogSink>) -> Result<Instance, SandboxError> {
        let mut opts = self.opts.clone();
        opts.nice = STARTING_NICENESS;
        let mut vm = self
            .template
            .restore(&opts)
            .await
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let channel = vm
            .take_channel()
            .ok_or_else(|| SandboxError::Start("the VM has no protocol port".into()))?;
        let (reader, writer) = channel.into_split();
        let process = VmProcess::new(vm);
        // Left running while it waits in the pool: an idle restored guest
        // used ~0.7 % of a core under TCG with the cloud kernel (~0.1 %
        // with thaw's), and pausing it made the cold start (attach + init)
        // ~810 ms instead of ~310 ms (docs/microvm.md).
        Instance::connect(reader, writer, Box::new(process), None, sink).await
    }

    /// The EROFS image of `tree`, built once and kept beside it as
    /// `<tree>.erofs` (written under a temporary name, then renamed).
    async fn code_image(&self, tree: &Path) -> Result<PathBuf, SandboxError> {
        let mut name = tree.as_os_str().to_owned();
        name.push(".erofs");
        let image = PathBuf::from(name);
        let _building = self.building.lock().await;
        if !image.exists() {
            let (tree, out) = (tree.to_path_buf(), image.clone());
            tokio::task::spawn_blocking(move || build_code_image(&tree, &out))
                .await
                .map_err(|e| SandboxError::Start(format!("building the code image: {e}")))?
                .map_err(|e| SandboxError::Start(e.to_string()))?;
        }
        Ok(image)
    }
}

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

impl Driver for MicrovmDriver {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn start(&self, sink: Arc<dyn LogSink>) -> BoxFuture<'_, Result<Instance, SandboxError>> {
        Box::pin(self.start_vm(sink))
    }

    /// `memory_mb` is not enforced: the guest's RAM (the template's) caps it.
    fn attach<'a>(
        &'a self,
        instance: &'a Instance,
        host_dir: &'a Path,
        _memory_mb: u32,
    ) -> BoxFuture<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            let process = instance
                .process()
                .as_any()
                .downcast_ref::<VmProcess>()
                .ok_or_else(|| SandboxError::Start("not an instance of this driver".into()))?;
            let image = self.code_image(host_dir).await?;
            thaw_sandbox::set_niceness(process.pid, 0);
            let (reply, answer) = oneshot::channel();
            process.send(VmCommand::Attach { image, reply });
            answer
                .await
                .map_err(|_| {
                    SandboxError::Start("the VM ended while its code was attached".into())
                })?
                .map_err(|e| SandboxError::Start(format!("attaching the code: {e}")))
        })
    }
}

/// What the VM's command task does, in the order asked.
enum VmCommand {
    Pause,
    Resume,
    Attach {
        image: PathBuf,
        reply: oneshot::Sender<Result<String, MicrovmError>>,
    },
}

/// A VM as the instance sees it. Pausing and resuming are asked from
/// synchronous code but need QMP: they go to one task per VM, which also
/// attaches code, so that every command runs in the order it was asked.
struct VmProcess {
    pid: u32,
    vm: Arc<Mutex<Vm>>,
    commands: mpsc::UnboundedSender<VmCommand>,
    ended: AtomicBool,
}

impl VmProcess {
    fn new(vm: Vm) -> VmProcess {
        let pid = vm.pid();
        let vm = Arc::new(Mutex::new(vm));
        let (commands, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_commands(vm.clone(), queue));
        VmProcess {
            pid,
            vm,
            commands,
            ended: AtomicBool::new(false),
        }
    }

    fn send(&self, command: VmCommand) {
        // The task ends only with this process: a send cannot fail first.
        let _ = self.commands.send(command);
    }
}

/// Runs one VM's commands until its `VmProcess` is dropped; the VM (and
/// QEMU with it) goes when this task ends.
async fn run_commands(vm: Arc<Mutex<Vm>>, mut queue: mpsc::UnboundedReceiver<VmCommand>) {
    let mut paused = false;
    while let Some(command) = queue.recv().await {
        let mut vm = vm.lock().await;
        let result = match command {
            VmCommand::Pause if !paused => vm.pause().await.map(|_| paused = true),
            VmCommand::Resume if paused => vm.resume().await.map(|_| paused = false),
            VmCommand::Pause | VmCommand::Resume => Ok(()),
            VmCommand::Attach { image, reply } => {
                let attached = async {
                    if paused {
                        vm.resume().await?;
                        paused = false;
                    }
                    vm.attach_code(&image, CODE_FSTYPE).await
                }
                .await;
                let _ = reply.send(attached);
                Ok(())
            }
        };
        if let Err(e) = result {
            // The instance notices a dead VM by its stream ending.
            tracing::debug!("microVM {}: {e}", vm.pid());
        }
    }
}

impl RuntimeProcess for VmProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn kill(&self) {
        // Once QEMU is reaped its pid may belong to someone else.
        if !self.ended.load(Ordering::Acquire) {
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
    }

    fn wait_exit(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            loop {
                if let Some(how) = self.vm.lock().await.ended() {
                    self.ended.store(true, Ordering::Release);
                    return how;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn pause(&self) {
        self.send(VmCommand::Pause);
    }

    fn resume(&self) {
        self.send(VmCommand::Resume);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
