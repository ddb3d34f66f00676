//! Runtime snapshots under QEMU (TCG here): a template made once per test
//! process, VMs restored from it answering init + invoke, code attached
//! after restore, and guest memory shared between restored VMs. Select with
//! `cargo test -p thaw-microvm --test snapshot`.

mod support;

use serde_json::json;
use support::*;
use thaw_microvm::{build_code_image, Accel, Template, VmOptions, CODE_FSTYPE};
use tokio::sync::OnceCell;

fn opts(run: &std::path::Path) -> VmOptions {
    let mut opts = VmOptions::new(Accel::Tcg, run);
    opts.timeout = TIMEOUT;
    opts
}

async fn template() -> &'static Template {
    static TEMPLATE: OnceCell<Template> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let image = image();
            let run = run_dir();
            let dir = data_dir()
                .join("templates")
                .join(format!("test-{}", image.id));
            let started = std::time::Instant::now();
            let t = Template::create(&image, &opts(run.path()), &dir)
                .await
                .expect("making the template");
            eprintln!(
                "template made in {:?}; device state {} KiB",
                started.elapsed(),
                t.state_bytes >> 10
            );
            t
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_vm_runs_code_attached_after_restore() {
    let template = template().await;
    let code = tempfile::tempdir().unwrap();
    std::fs::write(
        code.path().join("index.mjs"),
        "export const handler = async (e) => ({ attached: true, got: e, now: Date.now() });\n",
    )
    .unwrap();
    let code_image = code.path().join("code.erofs");
    build_code_image(code.path(), &code_image).expect("mkfs.erofs");

    let run = run_dir();
    let started = std::time::Instant::now();
    let mut vm = template
        .restore(&opts(run.path()))
        .await
        .expect("restoring");
    let restored = started.elapsed();
    let code_dir = vm
        .attach_code(&code_image, CODE_FSTYPE)
        .await
        .expect("attaching the code");
    let mut ch = vm.take_channel().unwrap();
    expect_ready(&mut ch).await;
    let answer = init_and_invoke(&mut ch, &code_dir, json!({"k": "v"})).await;
    eprintln!(
        "restore: running after {restored:?}, first answer after {:?}",
        started.elapsed()
    );
    assert_eq!(answer["attached"], json!(true));
    assert_eq!(answer["got"], json!({"k": "v"}));
    let guest_now = answer["now"].as_u64().unwrap();
    assert!(
        guest_now.abs_diff(now_ms()) < 120_000,
        "guest clock {guest_now} vs host {}",
        now_ms()
    );
    // A second invocation on the same instance.
    let again = invoke(&mut ch, 2, json!(2)).await;
    assert_eq!(again["got"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_vms_share_the_template_memory() {
    let template = template().await;
    let run = run_dir();
    let mut vms = Vec::new();
    for i in 0..3u64 {
        let mut vm = template
            .restore(&opts(run.path()))
            .await
            .expect("restoring");
        let mut ch = vm.take_channel().unwrap();
        expect_ready(&mut ch).await;
        let answer = init_and_invoke(&mut ch, BUILTIN_CODE_DIR, json!(i)).await;
        assert_eq!(answer["echo"], json!(i));
        vm.pause().await.unwrap();
        vms.push((vm, ch));
    }
    let guest_ram = u64::from(template.memory_mib) << 20;
    for (vm, _) in &vms {
        let pss = vm.pss_bytes().unwrap();
        eprintln!(
            "idle restored VM: PSS {} MiB (guest RAM {} MiB)",
            pss >> 20,
            guest_ram >> 20
        );
        // Copy-on-write from the template's memory file: a VM that has
        // answered once owns only a fraction of its guest RAM.
        assert!(
            pss < guest_ram / 2,
            "PSS {pss} is not below half of the guest RAM"
        );
    }
}
