//! A real `thaw up` on a free loopback port with its own data directory,
//! and the real `thaw` CLI pointed at it.
//!
//! With `THAW_TEST_DATABASE=postgres` in the environment, every `thaw up`
//! keeps its registry in a database of its own in a real PostgreSQL server
//! ([`thaw_testpg::shared`]) instead of its SQLite file: the same tests
//! then check the same behaviour on the engine a cluster uses. A restart on
//! the same data directory finds the same database again.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const THAW: &str = env!("CARGO_BIN_EXE_thaw");

pub struct Platform {
    child: Child,
    pub server: String,
    /// `thaw up`'s "thaw is up on ..." line.
    pub up_line: String,
    /// What `thaw up` wrote to stderr before that line (its warnings).
    pub startup: Vec<String>,
    pub data_dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
}

/// The secrets key of platforms whose registry is in PostgreSQL, which
/// needs one given.
pub const TEST_SECRETS_KEY: &str =
    "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";

/// The tests run with their registries in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("THAW_TEST_DATABASE").ok().as_deref() == Some("postgres")
}

/// The PostgreSQL database of the platform on `data_dir` when the tests
/// run on PostgreSQL (`THAW_TEST_DATABASE=postgres`): made at its first
/// start, named in a file of the data directory for the next.
pub fn test_database(data_dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let note = data_dir.join(".test-database-url");
    if let Ok(url) = std::fs::read_to_string(&note) {
        return Some(url);
    }
    let url = thaw_testpg::shared().new_database_url();
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&note, &url).unwrap();
    Some(url)
}

impl Platform {
    pub fn start() -> Platform {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Platform::start_in(dir.path(), &[]);
        p._owned_dir = Some(dir);
        p
    }

    /// Starts `thaw up` with extra flags.
    pub fn start_with(args: &[&str]) -> Platform {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Platform::launch(dir.path(), &[], args);
        p._owned_dir = Some(dir);
        p
    }

    /// Starts `thaw up` on `data_dir` with extra environment variables.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Platform {
        Platform::launch(data_dir, env, &[])
    }

    /// Starts `thaw up` on `data_dir` with extra environment variables and flags.
    pub fn launch(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Platform {
        Platform::launch_in_netns(None, data_dir, env, &["--listen", "127.0.0.1:0"], args)
    }

    /// Starts `thaw up` inside network namespace `netns` (when given), on
    /// the `listen` flags, with extra environment variables and flags.
    pub fn launch_in_netns(
        netns: Option<&str>,
        data_dir: &Path,
        env: &[(&str, &str)],
        listen: &[&str],
        args: &[&str],
    ) -> Platform {
        let mut cmd = Command::new(THAW);
        if let Some(ns) = netns {
            in_netns(&mut cmd, ns);
        }
        cmd.arg("up")
            .args(listen)
            .args(args)
            .env("THAW_DATA_DIR", data_dir)
            .env_remove("THAW_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let given_database = env.iter().any(|(k, _)| *k == "THAW_DATABASE_URL");
        if let Some(url) = test_database(data_dir).filter(|_| !given_database) {
            cmd.env("THAW_DATABASE_URL", url);
            if !env.iter().any(|(k, _)| *k == "THAW_SECRETS_KEY") {
                cmd.env("THAW_SECRETS_KEY", TEST_SECRETS_KEY);
            }
        }
        let mut child = cmd.spawn().expect("thaw up starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut startup = Some(Vec::new());
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("thaw is up on ") {
                    if let Some(before) = startup.take() {
                        let _ = tx.send((line, before));
                        continue;
                    }
                }
                eprintln!("[thaw up] {line}");
                if let Some(before) = startup.as_mut() {
                    before.push(line);
                }
            }
        });
        // Long enough for the microvm driver's first start from an empty
        // cache (the guest kernel compiled from source, the image, the
        // template): a guard against a hang, not a timing assertion. A thaw
        // that exits ends the wait at once.
        let (up_line, startup) = rx
            .recv_timeout(Duration::from_secs(3600))
            .expect("thaw up announces its address");
        let server = up_line["thaw is up on ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        Platform {
            child,
            server,
            up_line,
            startup,
            data_dir: data_dir.to_path_buf(),
            _owned_dir: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Stops the platform as a crash or `kill -9` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(THAW);
        cmd.env("THAW_SERVER", &self.server)
            .env("THAW_DATA_DIR", &self.data_dir)
            .env_remove("THAW_TOKEN");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the CLI and returns its output, whatever the exit status.
    pub fn thaw(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().unwrap()
    }

    /// Runs the CLI and insists that it succeeds; returns stdout.
    pub fn thaw_ok(&self, args: &[&str]) -> String {
        let out = self.thaw(args);
        assert!(
            out.status.success(),
            "thaw {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A new key of `namespace` named `name` with `role`, as `thaw key
    /// create` prints it.
    pub fn new_key(&self, namespace: &str, name: &str, role: &str) -> String {
        self.thaw_ok(&[
            "key",
            "create",
            "--namespace",
            namespace,
            name,
            "--role",
            role,
        ])
        .trim()
        .to_string()
    }

    pub fn deploy(&self, dir: &Path, name: &str) -> String {
        self.thaw_ok(&["deploy", dir.to_str().unwrap(), "--name", name])
            .trim()
            .to_string()
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("{}/fn/{name}{path}", self.server)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        http()
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(self.token())
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `thaw_pool_takes_total{result="hit"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self
            .api(reqwest::Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Polls `check` until it holds, for at most `secs` seconds.
    pub fn eventually(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "never happened: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Console lines the registry holds for `name`.
    pub fn log_lines(&self, name: &str) -> Vec<Value> {
        let v: Value = self
            .api(
                reqwest::Method::GET,
                &format!("/v1/functions/{name}/logs?limit=1000"),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["logs"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until a log line containing `needle` is stored (writes are
    /// batched off the request path).
    pub fn wait_for_log(&self, name: &str, needle: &str) -> Value {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .log_lines(name)
                .into_iter()
                .find(|l| l["line"].as_str().unwrap_or("").contains(needle))
            {
                return l;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no log line containing {needle:?} for {name}: {:?}",
                self.log_lines(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // Stop as an operator would, so that thaw removes its jails.
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// How long until `check` holds (polled every 10 ms), failing past `secs`:
/// for measuring how soon something happens, not for asserting speed.
pub fn until(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Makes `cmd` run in network namespace `ns` (made by `ip netns add`),
/// and only that: unlike `ip netns exec`, its mounts (`/sys` and the
/// cgroup file systems under it) stay the host's.
pub fn in_netns(cmd: &mut Command, ns: &str) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let handle = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
    // SAFETY: setns is async-signal-safe and only touches the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A folder holding the given files.
pub fn function_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A live runtime upgrade on `p`, whichever its driver, started with
/// `--shim shim`: the shim file gains a line marking the new runtime, `thaw
/// runtime upgrade` switches to it, an instance bound before keeps serving
/// from the old runtime (it drains), the instance that follows an idle one
/// and a function deployed afterwards run the new one, and a second upgrade
/// finds nothing to change.
pub fn upgrade_runtime_while_serving(p: &Platform, shim: &Path, driver: &str) {
    const MARKED: &str = r#"export const handler = async () =>
        ({ statusCode: 200, body: globalThis.THAW_TEST_RUNTIME ?? "v1" });"#;
    let warm = function_dir(&[("index.mjs", MARKED), ("thaw.toml", "keep_alive = 600\n")]);
    let brief = function_dir(&[("index.mjs", MARKED), ("thaw.toml", "keep_alive = 1\n")]);
    p.deploy(warm.path(), "rt-warm");
    p.deploy(brief.path(), "rt-brief");
    let body = |name: &str| http().get(p.url(name, "/")).send().unwrap().text().unwrap();
    assert_eq!(body("rt-warm"), "v1");
    assert_eq!(body("rt-brief"), "v1");

    let mut source = std::fs::read_to_string(shim).unwrap();
    source.push_str("\nglobalThis.THAW_TEST_RUNTIME = \"v2\";\n");
    std::fs::write(shim, source).unwrap();
    let out = p.thaw_ok(&["runtime", "upgrade"]);
    assert!(
        out.contains(&format!("{driver} node")) && out.contains(" -> "),
        "{out}"
    );

    // Bound before the upgrade: still there, still the old runtime.
    assert_eq!(body("rt-warm"), "v1");
    // Idle past its keep_alive, it goes; the next instance is new.
    p.eventually(120, "rt-brief served by the new runtime", || {
        std::thread::sleep(Duration::from_millis(2500));
        body("rt-brief") == "v2"
    });
    let fresh = function_dir(&[("index.mjs", MARKED)]);
    p.deploy(fresh.path(), "rt-fresh");
    assert_eq!(body("rt-fresh"), "v2");

    let again = p.thaw_ok(&["runtime", "upgrade"]);
    assert!(
        again.starts_with(&format!("{driver} node")) && again.contains(": unchanged"),
        "{again}"
    );
}

/// Calls `name` at `path`, which goes past its memory limit of `mb` MiB:
/// the answer is a 502 `crashed` naming the limit, and `bystander` (a
/// function answering `{"fine": true}`) keeps serving.
pub fn assert_killed_past_memory_limit(
    p: &Platform,
    name: &str,
    path: &str,
    mb: u32,
    bystander: &str,
) {
    let r = http().get(p.url(name, path)).send().unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "crashed", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("memory limit of {mb} MiB")),
        "{v}"
    );
    let ok: Value = http()
        .get(p.url(bystander, "/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ok["fine"], true);
}

/// The `thaw up` process serving `p`: the one whose environment names its
/// data directory.
pub fn thaw_pid(p: &Platform) -> u32 {
    let needle = format!("THAW_DATA_DIR={}", p.data_dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(environ)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read(entry.path().join("environ")),
        ) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_up = args.len() > 1 && args[0].ends_with(b"thaw") && args[1] == b"up".as_slice();
        if is_up && environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "thaw up for {needle}: {found:?}");
    found[0]
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}
