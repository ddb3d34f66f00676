//! `thaw up --driver microvm` end to end, under real QEMU (TCG here): every
//! handler style served from VMs restored from the runtime template, a
//! function's own `driver` in thaw.toml either way, and a runtime upgrade
//! (another shim, so another image and template) that serves a function
//! deployed before it without a redeploy.
//!
//! The guest image is cached beside thaw-microvm's own tests
//! (`target/tmp/thaw-microvm-data/images`, `--image-cache`), so the kernel
//! is downloaded and each image built once across runs; each platform
//! makes its template (one boot) at start-up.

mod common;
#[path = "../../thaw-microvm/tests/support/agent.rs"]
mod microvm_support;

use common::{function_dir, http, repo_root, Platform};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `thaw up --driver microvm` on `data_dir`, with the shared image cache.
fn start_microvm(data_dir: &Path, extra: &[&str]) -> Platform {
    let mut args = vec!["--driver", "microvm"];
    args.extend_from_slice(extra);
    let p = start_with_vm_support(data_dir, &args);
    assert!(
        p.up_line.contains("driver: microvm, tcg") || p.up_line.contains("driver: microvm, kvm"),
        "{}",
        p.up_line
    );
    p
}

/// `thaw up` able to run microVMs: `thaw-agent` and the shared image cache.
fn start_with_vm_support(data_dir: &Path, args: &[&str]) -> Platform {
    let agent = microvm_support::agent_binary();
    let images = microvm_support::data_dir().join("images");
    let mut all = vec!["--image-cache", images.to_str().unwrap()];
    all.extend_from_slice(args);
    Platform::launch(data_dir, &[("THAW_AGENT", agent.to_str().unwrap())], &all)
}

/// A function answering with the kernel it runs on: the host's under the
/// process driver, the guest's in a VM.
const KERNEL_RELEASE: &str = r#"import os from "node:os";
export const handler = async () => ({ release: os.release() });"#;

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn release_of(p: &Platform, name: &str) -> String {
    let v: Value = http().get(p.url(name, "/")).send().unwrap().json().unwrap();
    v["release"].as_str().unwrap().to_string()
}

/// The one template under `<data>/templates` (older ones are removed at
/// start-up): `<image id>-<accel>`.
fn template_name(data_dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(data_dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

#[test]
fn every_handler_style_answers_from_a_restored_vm() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_microvm(dir.path(), &[]);
    assert!(dir
        .path()
        .join("templates")
        .join(template_name(dir.path()))
        .join("template.json")
        .is_file());

    // Lambda, with its console line reaching the registry.
    let lambda = function_dir(&[(
        "index.mjs",
        r#"export const handler = async (event) => {
             console.log("lambda in a vm");
             return { statusCode: 200, headers: { "x-style": "lambda" },
                      body: JSON.stringify({ path: event.rawPath, q: event.queryStringParameters, now: Date.now() }) };
           };"#,
    )]);
    p.deploy(lambda.path(), "vm-lambda");
    let resp = http().get(p.url("vm-lambda", "/a/b?x=1")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-style"], "lambda");
    let v: Value = resp.json().unwrap();
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["q"], json!({"x": "1"}));
    // The guest's clock was resynced after the restore.
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let skew = (v["now"].as_i64().unwrap() - host_now).abs();
    assert!(skew < 60_000, "guest clock is {skew} ms off");
    p.wait_for_log("vm-lambda", "lambda in a vm");

    // Class services over JSON-RPC: the README's example (TypeScript).
    let example = repo_root().join("examples/hello-world");
    p.deploy(&example, "vm-class");
    let resp = http()
        .post(p.url("vm-class", ""))
        .body(r#"{"jsonrpc":"2.0","method":"HelloWorldService.helloWorld","params":[],"id":1}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v, json!({"jsonrpc":"2.0","result":"Hello world!","id":1}));

    // Fetch.
    let fetch = function_dir(&[(
        "index.mjs",
        r#"export default { async fetch(request) {
             const url = new URL(request.url);
             return new Response(`${request.method} ${url.pathname} ${await request.text()}`,
               { status: 202, headers: { "x-style": "fetch" } });
           } };"#,
    )]);
    p.deploy(fetch.path(), "vm-fetch");
    let resp = http()
        .post(p.url("vm-fetch", "/items"))
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-style"], "fetch");
    assert_eq!(resp.text().unwrap(), "POST /items payload");

    // OpenWhisk.
    let openwhisk = function_dir(&[(
        "index.js",
        r#"function main(params) { return { greeting: `hello ${params.name}`, method: params.__ow_method }; }
           module.exports.main = main;"#,
    )]);
    p.deploy(openwhisk.path(), "vm-openwhisk");
    let v: Value = http()
        .get(p.url("vm-openwhisk", "/?name=vm"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v, json!({"greeting": "hello vm", "method": "get"}));

    // `thaw invoke` goes the same way.
    let out = p.thaw_ok(&["invoke", "vm-openwhisk", "--data", r#"{"name":"event"}"#]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["greeting"], "hello event");

    // A function may ask for the other driver in its thaw.toml.
    let in_vm = function_dir(&[("index.mjs", KERNEL_RELEASE)]);
    p.deploy(in_vm.path(), "vm-kernel");
    let as_process = function_dir(&[
        ("index.mjs", KERNEL_RELEASE),
        ("thaw.toml", "driver = \"process\"\n"),
    ]);
    p.deploy(as_process.path(), "process-kernel");
    assert_ne!(release_of(&p, "vm-kernel"), host_release());
    assert_eq!(release_of(&p, "process-kernel"), host_release());
}

#[test]
fn a_function_asks_for_microvms_on_a_process_platform() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_with_vm_support(dir.path(), &[]);
    assert!(p.up_line.contains("driver: process"), "{}", p.up_line);
    let plain = function_dir(&[("index.mjs", KERNEL_RELEASE)]);
    p.deploy(plain.path(), "plain");
    // The first deploy asking for microVMs makes the template (once).
    let in_vm = function_dir(&[
        ("index.mjs", KERNEL_RELEASE),
        ("thaw.toml", "driver = \"microvm\"\n"),
    ]);
    p.deploy(in_vm.path(), "in-vm");
    assert_eq!(release_of(&p, "plain"), host_release());
    assert_ne!(release_of(&p, "in-vm"), host_release());
    template_name(dir.path());
}

#[test]
fn a_new_runtime_gets_a_new_template_and_serves_functions_deployed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let function = function_dir(&[(
        "index.mjs",
        "export const handler = async (event) => ({ answer: 42, event });",
    )]);
    let before = {
        let p = start_microvm(dir.path(), &[]);
        p.deploy(function.path(), "upgraded");
        let v: Value = p
            .api(reqwest::Method::POST, "/v1/functions/upgraded/invoke")
            .body(r#"{"run":1}"#)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["status"], 200, "{v}");
        template_name(dir.path())
    };

    // A new runtime: the built-in shim plus a line, so another image id.
    let shim = upgraded_shim(dir.path());
    let p = start_microvm(dir.path(), &["--shim", shim.to_str().unwrap()]);
    let after = template_name(dir.path());
    assert_ne!(before, after, "the new runtime must make a new template");
    let image_of = |t: &str| t.rsplit_once('-').unwrap().0.to_string();
    assert_ne!(image_of(&before), image_of(&after));

    let resp = http().get(p.url("upgraded", "/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v["answer"], 42);
}

fn upgraded_shim(dir: &Path) -> PathBuf {
    let source = std::fs::read_to_string(repo_root().join("runtime/shim/shim.mjs")).unwrap();
    let path = dir.join("shim-upgraded.mjs");
    std::fs::write(&path, format!("{source}\n// runtime upgrade test\n")).unwrap();
    path
}

#[test]
fn thaw_image_build_makes_the_image_and_template_and_then_finds_them_cached() {
    let data = tempfile::tempdir().unwrap();
    let agent = microvm_support::agent_binary();
    let images = microvm_support::data_dir().join("images");
    let build = || {
        std::process::Command::new(common::THAW)
            .args(["image", "build", "--data-dir"])
            .arg(data.path())
            .arg("--image-cache")
            .arg(&images)
            .env("THAW_AGENT", &agent)
            .output()
            .unwrap()
    };
    let first = build();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    let summary = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(summary.starts_with("image "), "{summary}");
    assert!(err.contains("[7/7] made the runtime template"), "{err}");
    let templates: Vec<_> = std::fs::read_dir(data.path().join("templates"))
        .unwrap()
        .collect();
    assert_eq!(templates.len(), 1);
    // The same inputs again: nothing is built or booted, the same image.
    let second = build();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("[7/7] using the runtime template"));
    assert_eq!(String::from_utf8_lossy(&second.stdout), summary);
}

/// uids the platform gives VMs' jails (after the process runtimes' range).
const VM_UIDS: std::ops::Range<u32> = 1_065_536..1_131_072;

/// Host pids of the QEMU processes running as a VM jail's uid.
fn jailed_qemus() -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("qemu-system") {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid: Option<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        if uid.is_some_and(|u| VM_UIDS.contains(&u)) {
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            assert!(status.contains("Seccomp:\t2"), "{status}");
            found.push(pid);
        }
    }
    found
}

#[test]
fn vms_run_jailed_and_one_past_its_memory_is_killed_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_microvm(dir.path(), &[]);
    assert!(p.up_line.contains("jailed"), "{}", p.up_line);
    let hog = function_dir(&[
        (
            "index.mjs",
            r#"import fs from "node:fs";
               const kept = [];
               // Straight to fd 2, past the shim's capture: the guest console.
               fs.writeSync(2, "hog loaded, raw on fd 2\n");
               export const handler = async (event) => {
                 const mb = Number(event.queryStringParameters?.mb ?? 0);
                 for (let i = 0; i < mb; i += 8) { const b = Buffer.alloc(8 << 20); b.fill(1); kept.push(b); }
                 return { statusCode: 200, body: JSON.stringify({ held: kept.length * 8 }) };
               };"#,
        ),
        ("thaw.toml", "memory = 64\ntimeout = 120\n"),
    ]);
    p.deploy(hog.path(), "vm-hog");
    let bystander = function_dir(&[("index.mjs", "export const main = () => ({ fine: true });")]);
    p.deploy(bystander.path(), "vm-bystander");

    // Within its memory: served, from a QEMU that runs jailed.
    let r = http().get(p.url("vm-hog", "/?mb=16")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !jailed_qemus().is_empty(),
        "no QEMU runs as a VM jail's uid"
    );
    // What Node writes outside frames reaches the function's log.
    let line = p.wait_for_log("vm-hog", "hog loaded, raw on fd 2");
    assert_eq!(line["stream"], "stderr", "{line}");

    // Far past it: the VM is killed and the error names the limit.
    common::assert_killed_past_memory_limit(&p, "vm-hog", "/?mb=480", 64, "vm-bystander");
}

#[test]
fn a_live_runtime_upgrade_makes_a_new_template_and_drains_warm_vms() {
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("shim.mjs");
    std::fs::copy(repo_root().join("runtime/shim/shim.mjs"), &shim).unwrap();
    let p = start_microvm(dir.path(), &["--shim", shim.to_str().unwrap()]);
    let before = template_name(dir.path());
    common::upgrade_runtime_while_serving(&p, &shim, "microvm");
    // The new runtime's template beside the old one (restores may still
    // be under way from it; the next start-up removes it).
    let names: Vec<String> = std::fs::read_dir(dir.path().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&before), "{names:?}");
}
