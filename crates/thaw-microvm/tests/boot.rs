//! Boots the real guest image under QEMU (TCG here, KVM where the probe
//! allows) and runs a function in it. Slow under TCG: select with
//! `cargo test -p thaw-microvm --test boot`.

mod support;

use serde_json::json;
use support::*;
use thaw_microvm::{Accel, GuestKernel, ImageInfo, Vm, VmOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_vm_runs_a_function_over_virtio_serial() {
    boot_run_and_power_off(&image()).await;
}

/// Debian's cloud kernel (modules loaded by the agent, ACPI) stays an
/// option beside thaw's own (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_kernel_boots_and_runs_a_function() {
    let image = image_with(GuestKernel::Cloud);
    assert!(image.acpi && !image.modules.is_empty(), "{image:?}");
    boot_run_and_power_off(&image).await;
}

async fn boot_run_and_power_off(image: &ImageInfo) {
    let run = run_dir();
    let mut opts = VmOptions::new(Accel::Tcg, run.path());
    opts.timeout = TIMEOUT;
    let started = std::time::Instant::now();
    let mut vm = Vm::boot(image, &opts).await.expect("booting");
    let mut ch = vm.take_channel().unwrap();
    let runtime = expect_ready(&mut ch).await;
    let ready = started.elapsed();
    let answer = init_and_invoke(&mut ch, BUILTIN_CODE_DIR, json!({"n": 1})).await;
    eprintln!(
        "boot: ready after {ready:?}, first answer after {:?} ({runtime})",
        started.elapsed()
    );
    assert_eq!(answer["echo"], json!({"n": 1}));
    // The agent set the guest clock from the host's.
    let guest_now = answer["now"].as_u64().unwrap();
    assert!(
        guest_now.abs_diff(now_ms()) < 120_000,
        "guest clock {guest_now} vs host {}",
        now_ms()
    );

    // The runtime exiting powers the guest off. (The host closing its end
    // does not end the runtime: the agent waits for the host to come back.)
    invoke(&mut ch, 2, json!({"exit": true})).await;
    let status = tokio::time::timeout(TIMEOUT, vm.wait())
        .await
        .expect("QEMU exits after the runtime")
        .unwrap();
    eprintln!("QEMU exited: {status}");
    assert_eq!(
        vm.ended().as_deref(),
        Some("the guest powered off (its runtime exited)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accelerator_probe_decides_once_and_caches() {
    let image = image();
    let run = run_dir();
    let cache = run.path().join("accel.json");
    let opts = VmOptions::new(Accel::Tcg, run.path());
    let first = thaw_microvm::probe_accel(&image, &opts, &cache).await;
    eprintln!("probe: {:?} ({})", first.accel, first.reason);
    assert!(!first.cached);
    let second = thaw_microvm::probe_accel(&image, &opts, &cache).await;
    assert!(second.cached);
    assert_eq!(second.accel, first.accel);
}
