//! The jail's walls, tested for real: every test starts `thaw-jail` (this
//! crate's binary, the same entry point `thaw __jail` is) around the real
//! /usr/bin/node or the probe binary, with real namespaces and cgroups.
//! Needs root, like thaw itself.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use thaw_jail::{
    attach, attach_image, cleanup_instance, command_args, detach, program_binds, Cgroup, Image,
    JailConfig, JailError, Limits,
};

const NODE: &str = "/usr/bin/node";
const JAIL: &str = env!("CARGO_BIN_EXE_thaw-jail");
/// The probe binary on the host, wherever the build put it (perhaps under
/// /tmp, which a jail does not take from the host), and where jails see it.
const PROBE_ON_HOST: &str = env!("CARGO_BIN_EXE_thaw-jail-probe");
const PROBE: &str = "/probe/thaw-jail-probe";

/// A jail config for one test: its own id, uid and state dir; node, its
/// libraries and the probe bound in; code attached at /code.
struct Setup {
    config: JailConfig,
    state: Option<tempfile::TempDir>,
}

fn setup(name: &str, n: u32, limits: Limits) -> Setup {
    let state = tempfile::Builder::new()
        .prefix("thaw-jail-test-")
        .tempdir()
        .unwrap();
    let ro_binds = program_binds(Path::new(NODE)).unwrap();
    let config = JailConfig {
        id: format!("t-{name}-{}", std::process::id()),
        state_dir: state.path().join("jails"),
        ro_binds,
        binds: vec![(PROBE_ON_HOST.into(), PROBE.into())],
        writable_binds: vec![],
        images: Vec::new(),
        devices: vec![],
        own_seccomp: false,
        own_cgroup: true,
        attach_point: "/code".into(),
        uid: 150_000 + n,
        gid: 150_000 + n,
        limits,
    };
    Setup {
        config,
        state: Some(state),
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Err(e) = cleanup_instance(&self.config) {
            // Keep the state dir: deleting it recursively could reach
            // through a mount that cleanup failed to remove.
            let kept = self.state.take().map(|s| s.keep());
            eprintln!("cleanup of {} failed: {e}; left {kept:?}", self.config.id);
            if !std::thread::panicking() {
                panic!("cleanup failed: {e}");
            }
        }
    }
}

fn jail_command(config: &JailConfig, program: &str, args: &[&str]) -> Command {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = Command::new(JAIL);
    cmd.args(command_args(config, Path::new(program), &args).unwrap())
        .env_clear()
        .env("HOME", "/tmp")
        .env("MARKER_ENV", "passed-through")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A started jail: stdout arrives line by line, stderr is collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines,
            stderr,
        }
    }

    fn line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("no output from the jail within {timeout:?}"))
    }

    /// Waits for the jail to exit: its status, all remaining stdout, stderr.
    fn finish(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("jail still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout: Vec<String> = self.lines.iter().collect();
        (status, stdout.join("\n"), self.stderr.join().unwrap())
    }
}

fn run(config: &JailConfig, program: &str, args: &[&str]) -> (ExitStatus, String, String) {
    Running::start(jail_command(config, program, args)).finish(Duration::from_secs(20))
}

/// Runs `script` in node in the jail, expecting success and one JSON line.
fn node_json(config: &JailConfig, script: &str) -> serde_json::Value {
    let (status, out, err) = run(config, NODE, &["-e", script]);
    assert!(
        status.success(),
        "node failed: {status:?}\nstdout: {out}\nstderr: {err}"
    );
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}\nstderr: {err}"))
}

#[test]
fn node_runs_as_pid_2_under_init_unprivileged_and_reaches_fd_3() {
    let s = setup("ident", 1, Limits::default());
    let (host_end, jail_end) = UnixStream::pair().unwrap();
    let jail_fd = std::os::fd::AsRawFd::as_raw_fd(&jail_end);
    let mut cmd = jail_command(
        &s.config,
        NODE,
        &[
            "-e",
            r#"
        const fs = require('fs');
        fs.writeSync(3, 'hello over fd 3');
        fs.closeSync(3);
        const status = fs.readFileSync('/proc/self/status', 'utf8');
        const field = (k) => status.match(new RegExp('^' + k + ':\\s*(.*)$', 'm'))[1];
        console.log(JSON.stringify({
            pid: process.pid,
            pids: fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).sort(),
            init: fs.readFileSync('/proc/1/comm', 'utf8').trim(),
            uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(),
            caps: ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'].map(field),
            noNewPrivs: field('NoNewPrivs'), seccomp: field('Seccomp'),
            hostname: require('os').hostname(),
            user: require('os').userInfo().username,
            env: process.env,
            cgroup: fs.readFileSync('/proc/self/cgroup', 'utf8'),
        }));
        setInterval(() => {}, 1000); // still running when the host reads
        "#,
        ],
    );
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(jail_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let running = Running::start(cmd);
    drop(jail_end);
    let out = running.line(Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pid"], 2);
    assert_eq!(v["pids"], serde_json::json!([1, 2]));
    assert_eq!(v["init"], "thaw-init");
    assert_eq!(v["uid"], 150_001);
    assert_eq!(v["gid"], 150_001);
    assert_eq!(v["groups"], serde_json::json!([150_001]));
    for cap in v["caps"].as_array().unwrap() {
        assert_eq!(cap, "0000000000000000", "{v}");
    }
    assert_eq!(v["noNewPrivs"], "1");
    assert_eq!(v["seccomp"], "2");
    assert_eq!(v["hostname"], "thaw");
    assert_eq!(v["user"], "thaw");
    assert_eq!(
        v["env"],
        serde_json::json!({"HOME": "/tmp", "MARKER_ENV": "passed-through"})
    );
    assert!(
        v["cgroup"]
            .as_str()
            .unwrap()
            .lines()
            .all(|l| l.ends_with(":/")),
        "{v}"
    );

    // End of stream while the program still runs: neither init nor the
    // outer process keeps a copy of the host's descriptor.
    let mut got = String::new();
    let mut host_end = host_end;
    host_end
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    host_end.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello over fd 3");
    cleanup_instance(&s.config).unwrap();
    running.finish(Duration::from_secs(5));
}

#[test]
fn init_reaps_orphans() {
    let s = setup("reap", 17, Limits::default());
    let v = node_json(
        &s.config,
        &format!(
            r#"
        const {{ spawnSync }} = require('child_process');
        const fs = require('fs');
        // A child that starts a grandchild and exits at once: the grandchild
        // is re-parented to init and must be reaped by it when it ends.
        spawnSync(process.execPath, ['-e', `
            require('child_process').spawn({PROBE:?}, ['sleep', '0'], {{ detached: true, stdio: 'ignore' }}).unref();
        `]);
        setTimeout(() => {{
            const states = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))
                .map((p) => fs.readFileSync(`/proc/${{p}}/stat`, 'utf8').split(') ')[1][0]);
            console.log(JSON.stringify({{ states }}));
        }}, 1500);
        "#
        ),
    );
    let states: Vec<String> = serde_json::from_value(v["states"].clone()).unwrap();
    assert!(!states.iter().any(|s| s == "Z"), "zombies left: {states:?}");
    assert_eq!(states.len(), 2, "only init and node: {states:?}");
}

#[test]
fn only_loopback_exists_and_host_ports_are_unreachable() {
    let s = setup("net", 2, Limits::default());
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let v = node_json(
        &s.config,
        &format!(
            r#"
        const net = require('net');
        const devs = require('fs').readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)
            .map((l) => l.split(':')[0].trim()).filter(Boolean);
        const connect = (port) => new Promise((res) => {{
            const c = net.connect(port, '127.0.0.1', () => {{ c.end(); res('connected'); }});
            c.on('error', (e) => res(e.code));
        }});
        (async () => {{
            const server = net.createServer((c) => c.end()).listen(0, '127.0.0.1');
            await new Promise((r) => server.on('listening', r));
            const loopback = await connect(server.address().port);
            server.close();
            const outside = await new Promise((res) => {{
                const c = net.connect(80, '1.1.1.1', () => res('connected'));
                c.on('error', (e) => res(e.code));
            }});
            console.log(JSON.stringify({{ devs, ifaces: Object.keys(require('os').networkInterfaces()),
                loopback, hostPort: await connect({port}), outside }}));
        }})();
        "#
        ),
    );
    assert_eq!(v["devs"], serde_json::json!(["lo"]));
    assert_eq!(v["ifaces"], serde_json::json!(["lo"]));
    assert_eq!(v["loopback"], "connected");
    assert_eq!(
        v["hostPort"], "ECONNREFUSED",
        "the host's 127.0.0.1:{port} must not be reachable"
    );
    assert_eq!(v["outside"], "ENETUNREACH");
    drop(host);
}

#[test]
fn host_files_are_invisible_and_the_root_is_read_only() {
    let s = setup("fs", 3, Limits::default());
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("marker");
    std::fs::write(&marker, "secret").unwrap();
    let state = s.config.state_dir.display().to_string();
    let v = node_json(
        &s.config,
        &format!(
            r#"
        const fs = require('fs');
        const tryIt = (f) => {{ try {{ f(); return 'ok'; }} catch (e) {{ return e.code; }} }};
        const seen = {{}};
        for (const p of ['/etc/shadow', '/etc/passwd', '/root', '/home', '/sys/kernel', '/sys/class', '/sys/devices',
                         '/run', '/var', '/usr/bin/sh', '/bin',
                         {marker:?}, {state:?}, '/dev/sda', '/dev/mem', '/dev/shm']) seen[p] = fs.existsSync(p);
        console.log(JSON.stringify({{
            seen,
            root: fs.readdirSync('/').sort(),
            sys: fs.readdirSync('/sys'),
            sysFs: fs.readdirSync('/sys/fs'),
            dev: fs.readdirSync('/dev').sort(),
            code: fs.readdirSync('/code'),
            mkdirRoot: tryIt(() => fs.mkdirSync('/new')),
            writeRoot: tryIt(() => fs.writeFileSync('/new-file', 'x')),
            writeCode: tryIt(() => fs.writeFileSync('/code/x', 'x')),
            writeNode: tryIt(() => fs.writeFileSync('/usr/bin/node', 'x')),
            writeEtc: tryIt(() => fs.writeFileSync('/etc/new', 'x')),
            writeProcSys: tryIt(() => fs.writeFileSync('/proc/sys/kernel/hostname', 'x')),
            devNull: tryIt(() => fs.writeFileSync('/dev/null', 'x')),
            urandom: fs.readSync(fs.openSync('/dev/urandom', 'r'), Buffer.alloc(8)) === 8,
            tmp: tryIt(() => fs.writeFileSync('/tmp/ok', 'x')),
            execTmp: tryIt(() => {{ fs.copyFileSync({probe:?}, '/tmp/p'); fs.chmodSync('/tmp/p', 0o755);
                                     require('child_process').execFileSync('/tmp/p', ['fds']); }}),
        }}));
        "#,
            marker = marker.display().to_string(),
            probe = PROBE,
        ),
    );
    for (path, seen) in v["seen"].as_object().unwrap() {
        let expected = path == "/etc/passwd"; // the jail's own, two lines
        assert_eq!(seen, expected, "{path} visible: {seen}");
    }
    // /sys holds the instance's own cgroup alone (read-only, for Node's
    // process.constrainedMemory()), nothing of the host's sysfs.
    assert_eq!(v["sys"], serde_json::json!(["fs"]), "{}", v["sys"]);
    assert_eq!(v["sysFs"], serde_json::json!(["cgroup"]), "{}", v["sysFs"]);
    let root: Vec<String> = serde_json::from_value(v["root"].clone()).unwrap();
    for entry in &root {
        assert!(
            ["code", "dev", "etc", "lib", "lib64", "probe", "proc", "sys", "tmp", "usr"]
                .contains(&entry.as_str()),
            "unexpected /{entry} in {root:?}"
        );
    }
    assert_eq!(
        v["dev"],
        serde_json::json!([
            "fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"
        ])
    );
    assert_eq!(v["code"], serde_json::json!([]));
    assert_eq!(v["mkdirRoot"], "EROFS");
    assert_eq!(v["writeRoot"], "EROFS");
    assert_eq!(v["writeCode"], "EROFS");
    assert!(
        ["EROFS", "EACCES"].contains(&v["writeNode"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(v["writeEtc"], "EROFS");
    assert!(
        ["EROFS", "EACCES"].contains(&v["writeProcSys"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(v["devNull"], "ok");
    assert_eq!(v["urandom"], true);
    assert_eq!(v["tmp"], "ok");
    assert_eq!(v["execTmp"], "EACCES", "/tmp must be noexec");
}

#[test]
fn tmp_fills_up_at_tmp_bytes_and_files_stop_at_fsize() {
    let limits = Limits {
        tmp_bytes: 1 << 20,
        fsize_bytes: 768 << 10,
        ..Limits::default()
    };
    let s = setup("tmp", 4, limits);
    let v = node_json(
        &s.config,
        r#"
        const fs = require('fs');
        const fill = (path) => {
            const fd = fs.openSync(path, 'w');
            const chunk = Buffer.alloc(64 << 10, 1);
            let written = 0;
            try { for (;;) { written += fs.writeSync(fd, chunk); } }
            catch (e) { return { written, code: e.code }; }
            finally { fs.closeSync(fd); }
        };
        console.log(JSON.stringify({ big: fill('/tmp/a'), rest: fill('/tmp/b') }));
        "#,
    );
    assert_eq!(v["big"]["code"], "EFBIG", "{v}");
    assert_eq!(v["big"]["written"], 768 << 10);
    assert_eq!(v["rest"]["code"], "ENOSPC", "{v}");
    let total = v["big"]["written"].as_u64().unwrap() + v["rest"]["written"].as_u64().unwrap();
    assert!(total <= 1 << 20, "{total} bytes fit in a 1 MiB /tmp");
}

#[test]
fn forbidden_syscalls_fail_with_eperm() {
    let s = setup("sys", 5, Limits::default());
    let (status, out, err) = run(&s.config, PROBE, &["syscalls"]);
    assert!(status.success(), "{status:?} {err}");
    let results: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    assert!(results.len() > 40, "{out}");
    for (name, result) in &results {
        let expected = match *name {
            "clone3" => "ENOSYS",
            "getpid" | "socket_inet" | "socket_netlink_route" => "ok",
            _ => "EPERM",
        };
        assert_eq!(result, &expected, "{name}\n{out}");
    }
}

#[test]
fn only_fds_0_to_3_reach_the_program() {
    let s = setup("fds", 6, Limits::default());
    let (a, b) = UnixStream::pair().unwrap();
    let (fa, fb) = (
        std::os::fd::AsRawFd::as_raw_fd(&a),
        std::os::fd::AsRawFd::as_raw_fd(&b),
    );
    let mut cmd = jail_command(&s.config, PROBE, &["fds"]);
    // SAFETY: dup2 only, between fork and exec; 50 is left inheritable on
    // purpose, as a leaky host would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fa, 3) < 0 || libc::dup2(fb, 50) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, out, err) = Running::start(cmd).finish(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let fds: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    // 0-3, and perhaps the directory the probe is reading.
    assert!([0, 1, 2, 3].iter().all(|fd| fds.contains(fd)), "{fds:?}");
    assert!(fds.iter().all(|fd| *fd <= 4), "{fds:?}");
}

#[test]
fn passing_the_memory_limit_gets_the_program_oom_killed() {
    let limits = Limits {
        memory_bytes: 128 << 20,
        ..Limits::default()
    };
    let s = setup("oom", 7, limits);
    let (status, out, err) = run(
        &s.config,
        NODE,
        &[
            "-e",
            "const a = []; for (;;) a.push(Buffer.alloc(8 << 20, 1));",
        ],
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{status:?} {out} {err}"
    );
    let cgroup = Cgroup::for_instance(&s.config.id).unwrap();
    assert!(cgroup.oom_killed());
}

#[test]
fn a_fork_bomb_stops_at_pids_max_and_the_host_is_fine() {
    let limits = Limits {
        pids: 40,
        ..Limits::default()
    };
    let s = setup("pids", 8, limits);
    let v = node_json(
        &s.config,
        &format!(
            r#"
        const {{ spawn }} = require('child_process');
        require('fs').readFileSync('/proc/self/status'); // start the thread pool first
        (async () => {{
            let started = 0, error = null;
            for (let i = 0; i < 1000 && !error; i++) {{
                const c = spawn({PROBE:?}, ['sleep', '30'], {{ stdio: 'ignore' }});
                if (c.pid === undefined) error = await new Promise((r) => c.on('error', (e) => r(e.code)));
                else started++;
            }}
            console.log(JSON.stringify({{ started, error }}));
            process.exit(0);
        }})();
        "#
        ),
    );
    assert_eq!(v["error"], "EAGAIN", "{v}");
    let started = v["started"].as_u64().unwrap();
    assert!(started > 0 && started < 40, "{v}");
    assert!(Command::new("true").status().unwrap().success());
}

#[test]
fn cpu_quota_limits_cpu_time() {
    let limits = Limits {
        cpu_millis: 200,
        ..Limits::default()
    };
    let s = setup("cpu", 9, limits);
    let v = node_json(
        &s.config,
        r#"
        const start = Date.now(), cpu0 = process.cpuUsage();
        while (Date.now() - start < 600) {}
        const used = process.cpuUsage(cpu0);
        console.log(JSON.stringify({ cpuMs: (used.user + used.system) / 1000, wallMs: Date.now() - start }));
        "#,
    );
    let (cpu, wall) = (v["cpuMs"].as_f64().unwrap(), v["wallMs"].as_f64().unwrap());
    // 20% of a core over 600 ms is 120 ms; unthrottled it would be ~600.
    assert!(
        cpu < 0.45 * wall,
        "used {cpu} ms of CPU in {wall} ms at a 20% quota"
    );
}

#[test]
fn attach_makes_code_appear_read_only_in_a_running_jail() {
    let s = setup("attach", 10, Limits::default());
    let running = Running::start(jail_command(
        &s.config,
        NODE,
        &[
            "-e",
            r#"
        const fs = require('fs');
        const tryIt = (f) => { try { f(); return 'ok'; } catch (e) { return e.code; } };
        console.log('waiting ' + JSON.stringify(fs.readdirSync('/code')));
        const poll = setInterval(() => {
            if (!fs.existsSync('/code/hello.txt')) return;
            clearInterval(poll);
            console.log(JSON.stringify({
                text: fs.readFileSync('/code/hello.txt', 'utf8'),
                write: tryIt(() => fs.writeFileSync('/code/hello.txt', 'x')),
                create: tryIt(() => fs.writeFileSync('/code/new.txt', 'x')),
            }));
            const gone = setInterval(() => {
                if (fs.existsSync('/code/hello.txt')) return;
                clearInterval(gone);
                console.log('detached');
            }, 2);
        }, 2);
        "#,
        ],
    ));
    assert_eq!(running.line(Duration::from_secs(10)), "waiting []");

    // World-writable on the host, so only the read-only mount can refuse.
    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("hello.txt"), "hello from the host").unwrap();
    std::fs::set_permissions(
        code.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(
        code.path().join("hello.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let started = Instant::now();
    attach(&s.config, code.path()).unwrap();
    let took = started.elapsed();
    eprintln!("attach took {took:?}");
    assert!(took < Duration::from_millis(50), "attach took {took:?}");
    assert!(matches!(
        attach(&s.config, code.path()),
        Err(JailError::AlreadyAttached(_))
    ));

    let v: serde_json::Value =
        serde_json::from_str(&running.line(Duration::from_secs(10))).unwrap();
    assert_eq!(v["text"], "hello from the host");
    assert_eq!(v["write"], "EROFS");
    assert_eq!(v["create"], "EROFS");
    assert_eq!(
        std::fs::read_to_string(code.path().join("hello.txt")).unwrap(),
        "hello from the host"
    );

    detach(&s.config).unwrap();
    detach(&s.config).unwrap();
    assert_eq!(running.line(Duration::from_secs(10)), "detached");
    attach(&s.config, code.path()).unwrap();
    cleanup_instance(&s.config).unwrap();
    running.finish(Duration::from_secs(5));
}

/// An EROFS image of a tree holding `files`, built with `mkfs.erofs`
/// (erofs-utils), as thaw builds them.
fn erofs_image(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(name);
    std::fs::create_dir(&tree).unwrap();
    for (file, text) in files {
        std::fs::write(tree.join(file), text).unwrap();
    }
    let image = dir.join(format!("{name}.erofs"));
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "--all-root", "-T0"])
        .arg(&image)
        .arg(&tree)
        .output()
        .expect("mkfs.erofs runs (install erofs-utils)");
    assert!(out.status.success(), "{out:?}");
    image
}

/// The loop device `/dev/loopN` is bound to a file.
fn loop_bound(device: &Path) -> bool {
    let name = device.file_name().unwrap().to_string_lossy();
    Path::new("/sys/block")
        .join(&*name)
        .join("loop/backing_file")
        .exists()
}

#[test]
fn images_mounted_and_attached_show_no_host_path_and_let_their_loop_devices_go() {
    let mut s = setup("image", 18, Limits::default());
    let images = tempfile::Builder::new()
        .prefix("thaw-jail-images-")
        .tempdir()
        .unwrap();
    let runtime = erofs_image(images.path(), "runtime", &[("shim.txt", "the shim")]);
    let code = erofs_image(
        images.path(),
        "code",
        &[("hello.txt", "hello from an image")],
    );
    let runtime = Image::open(&runtime, "erofs").unwrap();
    let code = Image::open(&code, "erofs").unwrap();
    let devices = [runtime.device().to_path_buf(), code.device().to_path_buf()];
    assert!(devices.iter().all(|d| loop_bound(d)), "{devices:?}");
    s.config.images = vec![runtime.mount_at("/runtime")];
    let running = Running::start(jail_command(
        &s.config,
        NODE,
        &[
            "-e",
            r#"
        const fs = require('fs');
        const tryIt = (f) => { try { f(); return 'ok'; } catch (e) { return e.code; } };
        console.log('waiting ' + JSON.stringify(fs.readdirSync('/code')));
        const poll = setInterval(() => {
            if (!fs.existsSync('/code/hello.txt')) return;
            clearInterval(poll);
            console.log(JSON.stringify({
                shim: fs.readFileSync('/runtime/shim.txt', 'utf8'),
                code: fs.readFileSync('/code/hello.txt', 'utf8'),
                writeCode: tryIt(() => fs.writeFileSync('/code/hello.txt', 'x')),
                writeRuntime: tryIt(() => fs.writeFileSync('/runtime/new', 'x')),
                mountinfo: fs.readFileSync('/proc/self/mountinfo', 'utf8'),
                mounts: fs.readFileSync('/proc/self/mounts', 'utf8'),
            }));
            const gone = setInterval(() => {
                if (fs.existsSync('/code/hello.txt')) return;
                clearInterval(gone);
                console.log('detached');
            }, 2);
        }, 2);
        "#,
        ],
    ));
    assert_eq!(running.line(Duration::from_secs(10)), "waiting []");
    let started = Instant::now();
    attach_image(&s.config, &code).unwrap();
    eprintln!("attach_image took {:?}", started.elapsed());
    assert!(matches!(
        attach_image(&s.config, &code),
        Err(JailError::AlreadyAttached(_))
    ));

    let v: serde_json::Value =
        serde_json::from_str(&running.line(Duration::from_secs(10))).unwrap();
    assert_eq!(v["shim"], "the shim");
    assert_eq!(v["code"], "hello from an image");
    assert_eq!(v["writeCode"], "EROFS");
    assert_eq!(v["writeRuntime"], "EROFS");
    let mountinfo = v["mountinfo"].as_str().unwrap();
    eprintln!("{mountinfo}");
    for hidden in [
        s.config.state_dir.display().to_string(),
        images.path().display().to_string(),
    ] {
        for table in ["mountinfo", "mounts"] {
            let text = v[table].as_str().unwrap();
            assert!(!text.contains(&hidden), "{table} shows {hidden}: {text}");
        }
    }
    // Each tree is the root of its own filesystem: `/`, on its loop device.
    for (at, device) in [("/runtime", &devices[0]), ("/code", &devices[1])] {
        let line = mountinfo
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(at))
            .unwrap_or_else(|| panic!("no mount at {at}: {mountinfo}"));
        assert_eq!(line.split(' ').nth(3), Some("/"), "{line}");
        let source = line.split(" - ").nth(1).unwrap();
        assert_eq!(
            source.split(' ').nth(1),
            Some(device.to_str().unwrap()),
            "{line}"
        );
    }

    detach(&s.config).unwrap();
    detach(&s.config).unwrap();
    assert_eq!(running.line(Duration::from_secs(10)), "detached");
    attach_image(&s.config, &code).unwrap();
    cleanup_instance(&s.config).unwrap();
    running.finish(Duration::from_secs(5));

    // Nothing of the instance is left mounted on the host, and once thaw
    // lets go of the images their loop devices are free again.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = s.config.state_dir.display().to_string();
    assert!(!host.contains(&state), "{host}");
    drop((runtime, code));
    let deadline = Instant::now() + Duration::from_secs(5);
    while devices.iter().any(|d| loop_bound(d)) {
        assert!(Instant::now() < deadline, "still bound: {devices:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killing_the_outer_process_kills_everything_inside() {
    let s = setup("kill", 11, Limits::default());
    let mut running = Running::start(jail_command(
        &s.config,
        NODE,
        &[
            "-e",
            &format!(
                r#"
            const c = require('child_process').spawn({PROBE:?}, ['sleep', '60'], {{ stdio: 'ignore', detached: true }});
            c.unref();
            console.log('ready');
            setInterval(() => {{}}, 1000);
            "#
            ),
        ],
    ));
    assert_eq!(running.line(Duration::from_secs(10)), "ready");
    let cgroup = Cgroup::for_instance(&s.config.id).unwrap();
    assert_eq!(cgroup.procs().unwrap().len(), 3, "init, node and the probe");

    running.child.kill().unwrap();
    running.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cgroup.procs().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            cgroup.procs().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn freeze_stops_the_program_and_thaw_resumes_it() {
    let s = setup("freeze", 12, Limits::default());
    let running = Running::start(jail_command(
        &s.config,
        NODE,
        &["-e", "let n = 0; setInterval(() => console.log(n++), 5);"],
    ));
    running.line(Duration::from_secs(10));
    let cgroup = Cgroup::for_instance(&s.config.id).unwrap();
    assert!(cgroup.memory_current().unwrap() > 1 << 20);

    cgroup.freeze().unwrap();
    cgroup.freeze().unwrap();
    // Lines written just before the freeze may still be in the pipe.
    std::thread::sleep(Duration::from_millis(50));
    while running.lines.try_recv().is_ok() {}
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        running.lines.try_recv().is_err(),
        "a frozen program printed"
    );

    cgroup.thaw().unwrap();
    running.line(Duration::from_secs(2));
    cgroup.kill_all().unwrap();
    let (status, _, _) = running.finish(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn cleanup_is_idempotent_and_leaves_nothing() {
    let s = setup("clean", 13, Limits::default());
    let running = Running::start(jail_command(
        &s.config,
        NODE,
        &["-e", "console.log('up'); setInterval(() => {}, 1000)"],
    ));
    running.line(Duration::from_secs(10));
    let code = tempfile::tempdir().unwrap();
    attach(&s.config, code.path()).unwrap();
    let cgroup = Cgroup::for_instance(&s.config.id).unwrap();
    let dirs = cgroup.dirs();
    assert!(dirs.iter().all(|d| d.exists()));

    cleanup_instance(&s.config).unwrap();
    cleanup_instance(&s.config).unwrap();
    let (status, _, _) = running.finish(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    assert!(!s.config.state_dir.join(&s.config.id).exists());
    // The code the instance had attached is untouched.
    assert!(code.path().exists());
    // Never started at all: fine too.
    let never = JailConfig {
        id: "t-never-started".into(),
        ..s.config.clone()
    };
    cleanup_instance(&never).unwrap();
    detach(&never).unwrap();
}

#[test]
fn setup_failures_are_one_line_and_exit_125() {
    let s = setup("fail", 14, Limits::default());
    let (status, _, err) = run(&s.config, "/not/bound", &[]);
    assert_eq!(status.code(), Some(thaw_jail::SETUP_FAILED), "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("thaw-jail: run /not/bound"), "{err}");

    let out = Command::new(JAIL)
        .args(["__jail", "--config", "{}", "--", "/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(thaw_jail::SETUP_FAILED));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("thaw-jail: invalid jail config"));
}

#[test]
fn a_live_instance_id_is_refused() {
    let s = setup("inuse", 15, Limits::default());
    let running = Running::start(jail_command(
        &s.config,
        NODE,
        &["-e", "console.log('up'); setInterval(() => {}, 1000)"],
    ));
    running.line(Duration::from_secs(10));
    let (status, _, err) = run(&s.config, NODE, &["-e", "0"]);
    assert_eq!(status.code(), Some(thaw_jail::SETUP_FAILED));
    assert!(err.contains("still has running processes"), "{err}");
    // The first instance is unharmed.
    assert_eq!(
        Cgroup::for_instance(&s.config.id)
            .unwrap()
            .procs()
            .unwrap()
            .len(),
        2
    );
    drop(running);
}

/// Node 20 doing what functions do, under the seccomp allowlist: threads,
/// files, sockets, child processes, crypto, compression.
#[test]
fn node_works_under_the_allowlist() {
    let limits = Limits {
        memory_bytes: 512 << 20,
        ..Limits::default()
    };
    let mut s = setup("node", 16, limits);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("work.js"), WORKLOAD).unwrap();
    s.config
        .binds
        .push((dir.path().to_path_buf(), PathBuf::from("/app")));
    let (status, out, err) = run(&s.config, NODE, &["--enable-source-maps", "/app/work.js"]);
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    assert_eq!(out.lines().last(), Some("ALL OK"), "{out}\n{err}");
}

const WORKLOAD: &str = r#"
const { Worker } = require('worker_threads');
const fs = require('fs'), net = require('net'), http = require('http'), cp = require('child_process');
const crypto = require('crypto'), zlib = require('zlib'), os = require('os'), dns = require('dns');
(async () => {
  const fromWorker = await new Promise((res, rej) => {
    const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
    w.on('message', res); w.on('error', rej);
  });
  if (fromWorker !== 42) throw new Error('worker');
  const d = fs.mkdtempSync('/tmp/w-');
  fs.writeFileSync(`${d}/x`, 'hi'); await fs.promises.readFile(`${d}/x`); fs.renameSync(`${d}/x`, `${d}/y`);
  fs.symlinkSync(`${d}/y`, `${d}/l`); fs.realpathSync(`${d}/l`); fs.copyFileSync(`${d}/y`, `${d}/z`);
  const fd = fs.openSync(`${d}/t`, 'w+'); fs.writeSync(fd, 'abc'); fs.fsyncSync(fd); fs.ftruncateSync(fd, 1); fs.closeSync(fd);
  fs.watch(d).close(); fs.rmSync(d, { recursive: true });
  const srv = http.createServer((q, r) => r.end('ok'));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const body = await (await fetch(`http://localhost:${srv.address().port}/`)).text();
  if (body !== 'ok') throw new Error('http');
  srv.close();
  await new Promise((r) => net.createServer().listen(0, '::1', function () { this.close(r); }));
  if ((await dns.promises.lookup('localhost')).address === undefined) throw new Error('dns');
  const u = require('dgram').createSocket('udp4'); await new Promise((r) => u.bind(0, '127.0.0.1', r)); u.close();
  const r = cp.spawnSync(process.execPath, ['-e', 'console.log(1 + 1)']);
  if (String(r.stdout).trim() !== '2') throw new Error('spawn: ' + r.stderr);
  crypto.randomBytes(32); crypto.createHash('sha256').update('x').digest('hex');
  crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }); crypto.scryptSync('a', 'b', 32);
  await crypto.webcrypto.subtle.digest('SHA-256', new Uint8Array(4));
  zlib.gunzipSync(zlib.gzipSync(Buffer.alloc(100000)));
  os.cpus(); os.totalmem(); os.networkInterfaces(); os.userInfo(); os.loadavg();
  process.memoryUsage(); process.resourceUsage();
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  await new Promise((r) => setTimeout(r, 5));
  console.log('ALL OK');
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn an_extra_device_is_a_node_of_the_instances_own() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm on this host: nothing to test");
        return;
    }
    let mut s = setup("device", 15, Limits::default());
    s.config.devices = vec!["kvm".into()];
    let v = node_json(
        &s.config,
        r#"const fs = require("fs");
           const st = fs.statSync("/dev/kvm");
           const fd = fs.openSync("/dev/kvm", "r+");
           fs.closeSync(fd);
           console.log(JSON.stringify({ uid: st.uid, mode: st.mode, rdev: st.rdev, opened: true }));"#,
    );
    assert_eq!(v["uid"], s.config.uid);
    assert_eq!(v["mode"], libc::S_IFCHR | 0o600);
    let host = std::fs::metadata("/dev/kvm").unwrap();
    assert_eq!(v["rdev"], std::os::unix::fs::MetadataExt::rdev(&host));
    assert_eq!(v["opened"], true);
    // The host's own node is untouched.
    let host_after = std::fs::metadata("/dev/kvm").unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&host_after),
        std::os::unix::fs::MetadataExt::uid(&host)
    );
    cleanup_instance(&s.config).unwrap();
    let node = s.config.state_dir.join(&s.config.id).join("dev-kvm");
    assert!(!node.exists());
}
