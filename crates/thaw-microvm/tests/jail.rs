//! QEMU inside thaw's jail (TCG here): a template made by a jailed QEMU, a
//! jailed VM restored from it running code attached after restore, and
//! what that QEMU can see and do. Select with
//! `cargo test -p thaw-microvm --test jail`. Needs root, like the jail.

mod support;

use std::path::Path;

use serde_json::json;
use support::*;
use thaw_microvm::{build_code_image, Accel, Template, VmJail, VmOptions, CODE_FSTYPE};
use thaw_sandbox::JailSettings;

const FIRST_UID: u32 = 170_000;

fn jailed_opts(run: &Path, state: &Path) -> VmOptions {
    let mut opts = VmOptions::new(Accel::Tcg, run);
    opts.timeout = TIMEOUT;
    let settings = JailSettings {
        exe: jail_binary(),
        state_dir: state.to_path_buf(),
        first_uid: FIRST_UID,
        uids: 1000,
        limits: thaw_jail::Limits {
            pids: 64,
            ..thaw_jail::Limits::default()
        },
    };
    opts.jail = Some(VmJail::new(settings, &opts.qemu).expect("finding what QEMU needs"));
    opts
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_qemu_makes_a_template_and_runs_a_restored_vm() {
    thaw_jail::prepare_host().expect("this test needs root and a host that can jail");
    let image = image();
    let run = run_dir();
    let state = tempfile::tempdir().unwrap();
    let opts = jailed_opts(run.path(), state.path());
    let dir = data_dir()
        .join("templates")
        .join(format!("test-jail-{}", image.id));
    let template = Template::create(&image, &opts, &dir)
        .await
        .expect("a jailed QEMU makes the template");

    let code = tempfile::tempdir().unwrap();
    std::fs::write(
        code.path().join("index.mjs"),
        "export const handler = async (e) => ({ jailed: true, got: e });\n",
    )
    .unwrap();
    let code_image = code.path().join("code.erofs");
    build_code_image(code.path(), &code_image).expect("mkfs.erofs");

    let mut vm = template.restore(&opts).await.expect("restoring, jailed");
    let code_dir = vm
        .attach_code(&code_image, CODE_FSTYPE)
        .await
        .expect("attaching the code as a descriptor");
    let mut ch = vm.take_channel().unwrap();
    expect_ready(&mut ch).await;
    let answer = init_and_invoke(&mut ch, &code_dir, json!({"k": 1})).await;
    assert_eq!(answer["jailed"], json!(true));
    assert_eq!(answer["got"], json!({"k": 1}));

    let jail = vm.jail().expect("the VM has a jail").clone();
    let pid = vm.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().contains("qemu-system"),
        "pid {pid} is {exe:?}"
    );
    // An unprivileged uid of its own, no way back to privileges, a seccomp
    // filter (QEMU's -sandbox), no capabilities.
    let uid = status_field(pid, "Uid:");
    assert!(
        uid.split_whitespace().all(|u| u == jail.uid.to_string()),
        "Uid: {uid}"
    );
    assert!(jail.uid >= FIRST_UID);
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    // Namespaces of its own.
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "QEMU shares our {ns} namespace");
    }
    // Its root holds QEMU and the image, nothing of thaw's data: not the
    // template, not the code image, not Node.
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    assert!(root.join("usr/bin/qemu-system-x86_64").exists());
    assert!(root.join("image/initramfs.cpio").exists());
    assert!(!root.join(dir.strip_prefix("/").unwrap()).exists());
    assert!(!root.join(code_image.strip_prefix("/").unwrap()).exists());
    assert!(!root.join("usr/bin/node").exists());
    assert!(!root.join("root").exists());
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    eprintln!("QEMU's root: {top:?}");
    for name in &top {
        assert!(
            ["code", "dev", "etc", "image", "lib", "lib64", "proc", "run", "tmp", "usr"]
                .contains(&name.as_str()),
            "unexpected /{name} in QEMU's root: {top:?}"
        );
    }
    // Guest RAM is the sealed template memory: not writable, even by root
    // through QEMU's own descriptor.
    let fd3 = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/3"))
        .unwrap();
    let err = std::os::unix::fs::FileExt::write_at(&fd3, b"x", 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // Its cgroup caps guest RAM plus QEMU's own needs.
    let cgroup = thaw_jail::Cgroup::for_instance(&jail.id).unwrap();
    let procs = cgroup.procs().unwrap();
    assert!(procs.contains(&(pid as i32)), "{procs:?}");
    assert_eq!(
        jail.limits.memory_bytes,
        u64::from(template.memory_mib + Accel::Tcg.vmm_overhead_mib()) << 20
    );
    let pss = vm.pss_bytes().unwrap();
    eprintln!("jailed restored VM: PSS {} MiB", pss >> 20);

    // Gone without a trace when the VM is shut down.
    let jail_dir = state.path().join(&jail.id);
    assert!(jail_dir.exists());
    vm.shut_down().await;
    assert!(!jail_dir.exists(), "{} is left", jail_dir.display());
    assert!(cgroup.procs().unwrap().is_empty());
}
