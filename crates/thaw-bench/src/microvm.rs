//! The microVM driver's mechanism: a VM booted from scratch to its first
//! answer against a VM restored from the runtime's template to its first
//! answer, and the memory (PSS) of idle restored VMs.
//!
//! thaw never boots a VM on a request's path (docs/microvm.md), so a boot
//! cannot be timed through `thaw up`: this section drives thaw-microvm's
//! public API directly, as the driver does. The guest image is built the
//! same way (the agent beside `thaw` or in `THAW_AGENT`, the shim built
//! into thaw, Node), with the hello function added at [`GUEST_HELLO_DIR`]
//! because a booted VM has no code drive; the accelerator is the driver's
//! probe's (cached beside the image); a restored VM gets the function's
//! code attached as an EROFS image after the restore, as `attach` does.

use crate::error::{failed, BenchError, Context as _, Result};
use crate::procs::Scratch;
use crate::results::Microvm;
use crate::stats::Summary;
use crate::thaw::Style;
use crate::{progress, wire};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use thaw_microvm::{
    build_code_image, build_image, probe_accel, Accel, GuestKernel, ImageInfo, ImageOptions,
    MicrovmError, Template, Vm, VmJail, VmOptions, CODE_FSTYPE,
};
use thaw_sandbox::JailSettings;
use tokio::net::UnixStream;

/// Where the hello function sits in the bench's guest image, for the
/// boots. Real functions never live in the image.
pub const GUEST_HELLO_DIR: &str = "/opt/thaw-bench";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// VMs booted from scratch (~8 s each under TCG).
    pub boots: usize,
    /// VMs restored from the template, one after another.
    pub restores: usize,
    /// Restored VMs left idle together, whose PSS is measured.
    pub idle_vms: usize,
    /// Where the guest image is built and cached, with the accelerator
    /// probe's answer (`accel.json`), as in a `thaw up` data directory's
    /// `images`.
    pub cache: PathBuf,
    /// The guest kernel of the image (thaw's own unless told).
    pub kernel: GuestKernel,
}

impl Default for Plan {
    /// Few boots: one takes ~8 s under TCG. The cache outlives the run, so
    /// the image is built once.
    fn default() -> Plan {
        Plan {
            boots: 3,
            restores: 7,
            idle_vms: 4,
            cache: std::env::temp_dir().join("thaw-bench-microvm"),
            kernel: GuestKernel::default(),
        }
    }
}

fn microvm_error(what: &str) -> impl FnOnce(MicrovmError) -> BenchError + '_ {
    move |e| failed(format!("{what}: {e}"))
}

pub fn measure(plan: &Plan, thaw_exe: &Path, node: &Path) -> Result<Microvm> {
    let agent = thaw_microvm::find_agent(thaw_exe).map_err(|e| {
        failed(format!(
            "{e} (or leave the microVM section out with --skip microvm)"
        ))
    })?;
    let node = thaw_sandbox::which(node).ok_or_else(|| {
        failed(format!(
            "{} not found: the guest image copies Node from the host",
            node.display()
        ))
    })?;
    let scratch = Scratch::new("thaw-bench-microvm")?;
    let shim = thaw_sandbox::write_builtin_shim(scratch.path()).context(|| {
        format!(
            "could not write the shim under {}",
            scratch.path().display()
        )
    })?;
    let hello = scratch.write("hello/index.mjs", &Style::Lambda.source("microvm"))?;
    let mut image_opts = ImageOptions::new(&plan.cache, agent, shim);
    image_opts.node = node;
    image_opts.kernel = plan.kernel.clone();
    image_opts
        .extra_files
        .push((hello, format!("{GUEST_HELLO_DIR}/index.mjs")));
    progress(&format!(
        "microVM: the guest image, in {} (the first time: Debian's kernel package is downloaded, \
         ~27 MB, and a ~104 MiB image written; later runs only hash the inputs)",
        plan.cache.display()
    ));
    let image = build_image(&image_opts, &mut |p| {
        progress(&format!("microVM: image: {p}"))
    })
    .map_err(microvm_error("could not build the guest image"))?;
    let code_image = scratch.path().join("hello.erofs");
    build_code_image(&scratch.path().join("hello"), &code_image).map_err(microvm_error(
        "could not build the hello function's code image",
    ))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "could not start an async runtime".into())?;
    // QEMU gets SIGKILL when the thread that started it ends: this one,
    // which lives as long as the bench.
    let measured = rt.block_on(measure_vms(
        plan,
        &image,
        &code_image,
        scratch.path(),
        thaw_exe,
    ));
    // Every VM is gone; their jails must be too before the scratch
    // directory is removed.
    let _ = thaw_jail::cleanup_stale(&scratch.path().join("jails"));
    measured
}

/// uids of the bench's VM jails: apart from those of a `thaw up` that may
/// run beside it.
const BENCH_JAIL_UID: u32 = 1_200_000;

/// QEMU in thaw's jail where the host can jail, as `thaw up` runs it;
/// otherwise why not.
fn vm_jail(thaw_exe: &Path, dir: &Path, qemu: &Path) -> std::result::Result<VmJail, String> {
    thaw_jail::prepare_host().map_err(|e| e.to_string())?;
    let settings = JailSettings {
        exe: thaw_exe.to_path_buf(),
        state_dir: dir.join("jails"),
        first_uid: BENCH_JAIL_UID,
        uids: 1000,
        limits: thaw_jail::Limits {
            pids: 256,
            ..thaw_jail::Limits::default()
        },
    };
    VmJail::new(settings, qemu).map_err(|e| e.to_string())
}

async fn measure_vms(
    plan: &Plan,
    image: &ImageInfo,
    code_image: &Path,
    dir: &Path,
    thaw_exe: &Path,
) -> Result<Microvm> {
    let mut opts = VmOptions::new(Accel::Tcg, dir.join("vms"));
    let jail = match vm_jail(thaw_exe, dir, &opts.qemu) {
        Ok(jail) => {
            opts.jail = Some(jail);
            "ran in thaw's jail".to_string()
        }
        Err(why) => format!("ran unjailed ({why})"),
    };
    progress(&format!("microVM: QEMU {jail}"));
    progress("microVM: checking whether KVM runs a guest here (cached after the first time)");
    let probe = probe_accel(image, &opts, &plan.cache.join("accel.json")).await;
    opts.accel = probe.accel;
    let accel = match probe.accel {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG",
    };
    progress(&format!("microVM: {accel}: {}", probe.reason));
    let limit = opts.timeout;

    let (mut boot_ready, mut boot_answer) = (Vec::new(), Vec::new());
    for i in 1..=plan.boots {
        let t = Instant::now();
        let mut vm = Vm::boot(image, &opts)
            .await
            .map_err(microvm_error("could not boot a VM"))?;
        let mut ch = channel(&mut vm)?;
        step(&vm, "a booted VM's ready", limit, wire::ready(&mut ch)).await?;
        let ready = t.elapsed();
        first_answer(&vm, &mut ch, GUEST_HELLO_DIR, limit).await?;
        let answer = t.elapsed();
        progress(&format!(
            "microVM: boot {i}/{}: ready in {}, first answer in {}",
            plan.boots,
            crate::report::human(ready),
            crate::report::human(answer)
        ));
        boot_ready.push(ready);
        boot_answer.push(answer);
    }

    progress(&format!(
        "microVM: making the template (one boot, then a snapshot; ~10 s under TCG) in {}",
        dir.display()
    ));
    let t = Instant::now();
    let template = Template::create(image, &opts, &dir.join("template"))
        .await
        .map_err(microvm_error("could not make the template"))?;
    let template_made = t.elapsed();

    let (mut running, mut attached, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=plan.restores {
        let r = restore_to_answer(&template, &opts, code_image).await?;
        progress(&format!(
            "microVM: restore {i}/{}: running in {}, code attached in {}, first answer in {}",
            plan.restores,
            crate::report::human(r.running),
            crate::report::human(r.attached),
            crate::report::human(r.answered)
        ));
        running.push(r.running);
        attached.push(r.attached);
        answered.push(r.answered);
    }

    // Idle as thaw leaves a bound instance after --pause-idle-after-ms:
    // answered once, then paused.
    let mut idle = Vec::new();
    for _ in 0..plan.idle_vms {
        let mut r = restore_to_answer(&template, &opts, code_image).await?;
        r.vm.pause()
            .await
            .map_err(microvm_error("could not pause a VM"))?;
        idle.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_pss = idle
        .iter()
        .map(|r| r.vm.pss_bytes())
        .collect::<std::result::Result<Vec<u64>, _>>()
        .map_err(microvm_error("could not read a VM's PSS"))?;
    progress(&format!(
        "microVM: {} idle restored VMs: PSS {} MiB in all",
        idle_pss.len(),
        idle_pss.iter().sum::<u64>() >> 20
    ));
    drop(idle);

    let summary = |samples: &[Duration]| {
        Summary::of(samples).ok_or_else(|| failed("the microVM section needs at least one sample"))
    };
    Ok(Microvm {
        accel: accel.into(),
        accel_reason: probe.reason,
        jail,
        qemu: crate::machine::first_line(Command::new(&opts.qemu).arg("--version"))
            .unwrap_or_else(|| "unknown".into()),
        image_id: image.id.clone(),
        kernel_release: image.kernel_release.clone(),
        initramfs_bytes: image.initramfs_bytes,
        guest_memory_mib: opts.memory_mib,
        boot_ready: summary(&boot_ready)?,
        boot_answer: summary(&boot_answer)?,
        template_made,
        template_state_bytes: template.state_bytes,
        restore_running: summary(&running)?,
        restore_attached: summary(&attached)?,
        restore_answer: summary(&answered)?,
        idle_pss,
    })
}

/// A restored VM that has answered its first call, and how long each step
/// took from the start of the restore.
struct Restored {
    vm: Vm,
    /// Kept open, as thaw keeps an instance's stream.
    _channel: UnixStream,
    running: Duration,
    attached: Duration,
    answered: Duration,
}

async fn restore_to_answer(
    template: &Template,
    opts: &VmOptions,
    code_image: &Path,
) -> Result<Restored> {
    let t = Instant::now();
    let mut vm = template
        .restore(opts)
        .await
        .map_err(microvm_error("could not restore a VM"))?;
    let running = t.elapsed();
    let code_dir = vm
        .attach_code(code_image, CODE_FSTYPE)
        .await
        .map_err(microvm_error("could not attach the code to a restored VM"))?;
    let attached = t.elapsed();
    let mut ch = channel(&mut vm)?;
    step(
        &vm,
        "a restored VM's ready",
        opts.timeout,
        wire::ready(&mut ch),
    )
    .await?;
    first_answer(&vm, &mut ch, &code_dir, opts.timeout).await?;
    Ok(Restored {
        answered: t.elapsed(),
        vm,
        _channel: ch,
        running,
        attached,
    })
}

fn channel(vm: &mut Vm) -> Result<UnixStream> {
    vm.take_channel()
        .ok_or_else(|| failed("the VM has no protocol port"))
}

/// `init` of the hello function in `code_dir`, then one call.
async fn first_answer(vm: &Vm, ch: &mut UnixStream, code_dir: &str, limit: Duration) -> Result<()> {
    step(vm, "init", limit, wire::init(ch, "hello", code_dir, limit)).await?;
    step(vm, "the first call", limit, wire::call(ch, limit)).await
}

/// One protocol step with a deadline; a failure says what the guest's
/// console and QEMU said last.
async fn step(
    vm: &Vm,
    what: &str,
    limit: Duration,
    done: impl Future<Output = std::result::Result<(), String>>,
) -> Result<()> {
    let why = match tokio::time::timeout(limit, done).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {limit:?}"),
    };
    Err(failed(format!("{what}: {why}; {}", vm.diagnostics())))
}
