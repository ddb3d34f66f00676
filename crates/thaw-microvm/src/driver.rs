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
//! Where the host can jail (root), QEMU runs in thaw's jail
//! ([`crate::VmJail`]): a cgroup per VM whose memory limit is, once bound,
//! the function's `memory` plus what QEMU itself needs; a VM that goes past
//! it is killed and the instance's end says so. The template's RAM (512
//! MiB) caps what any function can use in any case.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thaw_sandbox::{
    BoxFuture, Driver, Instance, JailSettings, LogSink, LogStream, RuntimeChange, RuntimeProcess,
    SandboxError,
};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::code::pad_code_image;
use crate::{
    build_code_image, build_image, probe_accel, Accel, AccelProbe, BuildProgress, GuestKernel,
    ImageOptions, MicrovmError, Template, Vm, VmJail, VmOptions, CODE_DRIVE_BYTES, CODE_FSTYPE,
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
    /// Run every QEMU in a jail (its state directory, uids and limits);
    /// `None` runs QEMU as a plain process under its own `-sandbox` only.
    pub jail: Option<JailSettings>,
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
    config: std::sync::Mutex<MicrovmConfig>,
    progress: Arc<dyn Fn(&SetupProgress) + Send + Sync>,
    /// The template VMs are restored from; replaced by `upgrade_runtime`.
    template: std::sync::RwLock<Arc<Template>>,
    probe: AccelProbe,
    opts: VmOptions,
    /// Held while a code image is built, so one tree is built once.
    building: Mutex<()>,
    /// Held while the runtime is upgraded: one upgrade at a time.
    upgrading: Mutex<()>,
}

impl MicrovmDriver {
    /// Builds (or finds) the image, picks the accelerator and makes (or
    /// loads) the template. Takes seconds when everything is cached; the
    /// first time, a kernel download, an image build and one boot.
    pub async fn open(
        config: &MicrovmConfig,
        progress: Arc<dyn Fn(&SetupProgress) + Send + Sync>,
    ) -> Result<MicrovmDriver, MicrovmError> {
        let mut opts = VmOptions::new(Accel::Tcg, &config.run_dir);
        if let Some(settings) = &config.jail {
            opts.jail = Some(VmJail::new(settings.clone(), &opts.qemu)?);
        }
        let (template, probe) = prepare_runtime(config, &mut opts, &progress, true).await?;
        Ok(MicrovmDriver {
            config: std::sync::Mutex::new(config.clone()),
            progress,
            template: std::sync::RwLock::new(Arc::new(template)),
            probe,
            opts,
            building: Mutex::new(()),
            upgrading: Mutex::new(()),
        })
    }

    /// The accelerator VMs run under, and why it was chosen.
    pub fn accel(&self) -> &AccelProbe {
        &self.probe
    }

    /// The template new VMs are restored from.
    pub fn template(&self) -> Arc<Template> {
        self.template
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the image from what is on the host now, with `shim` and
    /// `node`, and restores new VMs from its template; VMs already running
    /// keep the memory they were restored from (their own descriptor of it).
    async fn upgrade(&self, shim: &Path, node: &Path) -> Result<RuntimeChange, MicrovmError> {
        let _one_at_a_time = self.upgrading.lock().await;
        let before = self.template().image.id.clone();
        let config = {
            let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
            config.shim = shim.to_path_buf();
            config.node = node.to_path_buf();
            config.clone()
        };
        let mut opts = self.opts.clone();
        // The old template stays on disk: restores may be under way from
        // it. The next start-up removes it.
        let (template, _) = prepare_runtime(&config, &mut opts, &self.progress, false).await?;
        let after = template.image.id.clone();
        if after != before {
            *self.template.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(template);
        }
        Ok(RuntimeChange { before, after })
    }

    /// Whether QEMU runs in thaw's jail.
    pub fn is_jailed(&self) -> bool {
        self.opts.jail.is_some()
    }

    async fn start_vm(&self, sink: Arc<dyn LogSink>) -> Result<Instance, SandboxError> {
        let mut opts = self.opts.clone();
        opts.nice = STARTING_NICENESS;
        let template = self.template();
        mark_image_used(&template.image.dir);
        let mut vm = template
            .restore(&opts)
            .await
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let channel = vm
            .take_channel()
            .ok_or_else(|| SandboxError::Start("the VM has no protocol port".into()))?;
        let (reader, writer) = channel.into_split();
        // The console reaches the function's log as its stderr, as a Node
        // process's own stderr does under the process driver.
        let output = vm.take_console().map(|mut console| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(line) = console.recv().await {
                    if tx.send((LogStream::Stderr, line)).is_err() {
                        return;
                    }
                }
            });
            rx
        });
        let process = VmProcess::new(vm, self.opts.accel);
        // Left running while it waits in the pool: an idle restored guest
        // used ~0.7 % of a core under TCG with the cloud kernel (~0.1 %
        // with thaw's), and pausing it made the cold start (attach + init)
        // ~810 ms instead of ~310 ms (docs/microvm.md).
        Instance::connect(reader, writer, Box::new(process), output, sink).await
    }

    /// The EROFS image of `tree`, built once and kept beside it
    /// (`thaw_sandbox::image_path`, shared with the process driver), padded
    /// to the code drive.
    async fn code_image(&self, tree: &Path) -> Result<PathBuf, SandboxError> {
        let image = thaw_sandbox::image_path(tree);
        let _building = self.building.lock().await;
        let ready = std::fs::metadata(&image).is_ok_and(|m| m.len() == CODE_DRIVE_BYTES);
        if !ready {
            let (tree, out) = (tree.to_path_buf(), image.clone());
            tokio::task::spawn_blocking(move || {
                if out.exists() {
                    pad_code_image(&out)
                } else {
                    build_code_image(&tree, &out)
                }
            })
            .await
            .map_err(|e| SandboxError::Start(format!("building the code image: {e}")))?
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        }
        Ok(image)
    }
}

/// Builds (or finds) the image of `config`, probes the accelerator (into
/// `opts.accel`) and makes (or loads) the template; removes the templates
/// of other runtimes and images unused for long.
async fn prepare_runtime(
    config: &MicrovmConfig,
    opts: &mut VmOptions,
    progress: &Arc<dyn Fn(&SetupProgress) + Send + Sync>,
    remove_other_templates: bool,
) -> Result<(Template, AccelProbe), MicrovmError> {
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

    let pruned = prune_images(&config.images_dir, &image.id, UNUSED_IMAGE_LIFETIME);
    if pruned > 0 {
        tracing::info!("removed {pruned} guest images unused for a week");
    }

    progress(&SetupProgress::ProbingAccel);
    let probe = probe_accel(&image, opts, &config.images_dir.join("accel.json")).await;
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
            let t = Template::create(&image, opts, &dir).await?;
            progress(&SetupProgress::TemplateReady {
                dir: &dir,
                made: true,
            });
            t
        }
    };
    // Templates of other runtime versions serve no one after a restart.
    let others = if remove_other_templates {
        std::fs::read_dir(&templates).ok()
    } else {
        None
    };
    if let Some(entries) = others {
        for entry in entries.flatten() {
            if entry.file_name() != name.as_str() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok((template, probe))
}

/// How long an image no thaw has started with stays in the image cache.
/// Not removed at once: the cache may be shared by thaws of other runtime
/// versions (and a downgrade then finds its image still there).
const UNUSED_IMAGE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Marks the image in `image_dir` used now (its `image.json`'s mtime): at
/// start-up and at every restore, so that a thaw serving from an image for
/// weeks keeps it from being pruned by another sharing the cache.
fn mark_image_used(image_dir: &Path) {
    let record = image_dir.join("image.json");
    if let Ok(f) = std::fs::File::options().append(true).open(record) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Marks image `keep` used now (its `image.json`'s mtime) and removes the
/// other images in `images_dir` unused for longer than `lifetime`.
/// Downloaded kernel packages (`cache/`) stay. Returns how many went.
fn prune_images(images_dir: &Path, keep: &str, lifetime: Duration) -> usize {
    let now = std::time::SystemTime::now();
    let record = |id: &std::ffi::OsStr| images_dir.join(id).join("image.json");
    mark_image_used(&images_dir.join(keep));
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let id = entry.file_name();
        if id == keep {
            continue;
        }
        // Only what is an image: a directory with its record.
        let Ok(used) = std::fs::metadata(record(&id)).and_then(|m| m.modified()) else {
            continue;
        };
        let unused_for = now.duration_since(used).unwrap_or_default();
        if unused_for > lifetime && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
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

    fn upgrade_runtime<'a>(
        &'a self,
        shim: &'a Path,
        node: &'a Path,
    ) -> BoxFuture<'a, Result<RuntimeChange, SandboxError>> {
        Box::pin(async move {
            self.upgrade(shim, node)
                .await
                .map_err(|e| SandboxError::Start(format!("could not upgrade the runtime: {e}")))
        })
    }

    /// With a jail, `memory_mb` plus QEMU's own needs becomes the VM's
    /// cgroup limit; the guest's RAM (the template's) caps it in any case.
    fn attach<'a>(
        &'a self,
        instance: &'a Instance,
        host_dir: &'a Path,
        memory_mb: u32,
    ) -> BoxFuture<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            let process = instance
                .process()
                .as_any()
                .downcast_ref::<VmProcess>()
                .ok_or_else(|| SandboxError::Start("not an instance of this driver".into()))?;
            let image = self.code_image(host_dir).await?;
            if let Some(jail) = &process.jail {
                let limit = u64::from(memory_mb + process.overhead_mib) << 20;
                thaw_jail::Cgroup::for_instance(&jail.id)
                    .and_then(|c| c.set_memory_limit(limit))
                    .map_err(|e| {
                        SandboxError::Start(format!("could not set the VM's memory limit: {e}"))
                    })?;
                process.memory_mb.store(memory_mb, Ordering::Relaxed);
            }
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
    /// The VM's jail, if QEMU runs in one.
    jail: Option<thaw_jail::JailConfig>,
    /// The function's memory once bound, and what QEMU gets on top.
    memory_mb: AtomicU32,
    overhead_mib: u32,
    /// Every host process of the VM: QEMU, and its jail's outer process
    /// and init.
    pids: Vec<u32>,
}

impl VmProcess {
    fn new(vm: Vm, accel: Accel) -> VmProcess {
        let pid = vm.pid();
        let jail = vm.jail().cloned();
        let pids = vm.process_ids();
        let vm = Arc::new(Mutex::new(vm));
        let (commands, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_commands(vm.clone(), queue));
        VmProcess {
            pid,
            vm,
            commands,
            ended: AtomicBool::new(false),
            jail,
            memory_mb: AtomicU32::new(0),
            overhead_mib: accel.vmm_overhead_mib(),
            pids,
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
                    let oom = self.jail.as_ref().is_some_and(|j| {
                        thaw_jail::Cgroup::for_instance(&j.id).is_ok_and(|c| c.oom_killed())
                    });
                    if oom {
                        return format!(
                            "the instance went past its memory limit of {} MiB (plus {} MiB for QEMU) and was killed",
                            self.memory_mb.load(Ordering::Relaxed),
                            self.overhead_mib
                        );
                    }
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

    /// QEMU, and the jail's two small processes when it has one.
    fn memory_pss(&self) -> Option<u64> {
        let sum: u64 = self
            .pids
            .iter()
            .filter_map(|p| thaw_sandbox::pss_bytes(*p))
            .sum();
        (sum > 0).then_some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_unused_for_long_are_pruned_and_the_one_in_use_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 24 * 3600);
        let long_ago = std::time::SystemTime::now() - 2 * week;
        for id in ["current", "old", "recent"] {
            std::fs::create_dir_all(dir.path().join(id)).unwrap();
            let record = std::fs::File::create(dir.path().join(id).join("image.json")).unwrap();
            if id != "recent" {
                record.set_modified(long_ago).unwrap();
            }
        }
        // Not images: left alone however old.
        std::fs::create_dir_all(dir.path().join("cache/debs")).unwrap();
        std::fs::write(dir.path().join("accel.json"), "{}").unwrap();

        assert_eq!(prune_images(dir.path(), "current", week), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["accel.json", "cache", "current", "recent"]);
        // The image in use was marked used now: kept next time too.
        assert_eq!(prune_images(dir.path(), "recent", week), 0);
    }
}
