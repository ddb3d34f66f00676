//! The systems thaw is measured against, each doing the same work (answer
//! `GET /` with the text "hello world"): a bare Node `http` server (the
//! floor), a fresh `node` process per request (the naive way), Cloudflare's
//! workerd and Deno (both from the npm packages in `bench/`).

use crate::error::{failed, Context as _, Result};
use crate::load::{self, start_to_first_answer, Warm, WarmPlan, HELLO};
use crate::procs::{connect_when_listening, free_port, minimal_env, pss_bytes, Guarded, Scratch};
use crate::results::{Cold, Figure, Memory, Role, SystemResult};
use crate::stats::Summary;
use crate::{progress, progress_n};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workerd compatibility date of the bench's worker: any date the
/// binary supports works for hello world; a fixed one keeps runs alike.
const WORKERD_COMPAT_DATE: &str = "2024-09-23";

/// A system served by a long-running process the bench starts itself.
pub struct Server {
    pub name: &'static str,
    pub short: &'static str,
    pub role: Role,
    pub binary: PathBuf,
    /// The process that serves function `tag` on `port`, with its code
    /// written into `dir`.
    pub command: fn(&Path, &Path, &str, u16) -> Result<Command>,
}

pub fn node_server(node: &Path) -> Server {
    Server {
        name: "bare Node http server",
        short: "bare Node http",
        role: Role::Floor,
        binary: node.to_path_buf(),
        command: |node, dir, tag, port| {
            let file = write(
                dir,
                &format!("node-{tag}.cjs"),
                &format!(
                    "// function {tag}\nrequire(\"node:http\")\n  .createServer((req, res) => {{\n    \
                     res.writeHead(200, {{ \"content-type\": \"text/plain\" }});\n    res.end(\"hello world\");\n  }})\n  \
                     .listen({port}, \"127.0.0.1\");\n"
                ),
            )?;
            let mut cmd = Command::new(node);
            minimal_env(&mut cmd).arg(file);
            Ok(cmd)
        },
    }
}

pub fn deno_server(deno: PathBuf) -> Server {
    Server {
        name: "Deno (Deno.serve)",
        short: "Deno",
        role: Role::Peer,
        binary: deno,
        command: |deno, dir, tag, port| {
            let file = write(
                dir,
                &format!("deno-{tag}.js"),
                &format!(
                    "// function {tag}\nDeno.serve({{ hostname: \"127.0.0.1\", port: {port}, onListen() {{}} }}, \
                     () => new Response(\"hello world\"));\n"
                ),
            )?;
            let mut cmd = Command::new(deno);
            minimal_env(&mut cmd)
                .args([
                    "run",
                    "--quiet",
                    "--no-prompt",
                    "--no-config",
                    "--allow-net=127.0.0.1",
                ])
                .arg(file)
                .env("DENO_DIR", dir.join("deno-dir"))
                .env("DENO_NO_UPDATE_CHECK", "1")
                .env("NO_COLOR", "1");
            Ok(cmd)
        },
    }
}

pub fn workerd_server(workerd: PathBuf) -> Server {
    Server {
        name: "Cloudflare workerd",
        short: "workerd",
        role: Role::Peer,
        binary: workerd,
        command: |workerd, dir, tag, port| {
            let folder = format!("workerd-{tag}");
            write(
                dir,
                &format!("{folder}/worker.js"),
                &format!(
                    "// function {tag}\nexport default {{ fetch: () => new Response(\"hello world\") }};\n"
                ),
            )?;
            let config = write(
                dir,
                &format!("{folder}/config.capnp"),
                &format!(
                    "using Workerd = import \"/workerd/workerd.capnp\";\n\
                     const config :Workerd.Config = (\n  \
                       services = [ (name = \"main\", worker = .hello) ],\n  \
                       sockets = [ (name = \"http\", address = \"127.0.0.1:{port}\", http = (), service = \"main\") ],\n\
                     );\n\
                     const hello :Workerd.Worker = (\n  \
                       modules = [ (name = \"worker\", esModule = embed \"worker.js\") ],\n  \
                       compatibilityDate = \"{WORKERD_COMPAT_DATE}\",\n\
                     );\n"
                ),
            )?;
            let mut cmd = Command::new(workerd);
            minimal_env(&mut cmd)
                .arg("serve")
                .arg(config)
                .current_dir(dir.join(folder));
            Ok(cmd)
        },
    }
}

fn write(dir: &Path, relative: &str, content: &str) -> Result<PathBuf> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .context(|| format!("could not create {}", parent.display()))?;
    }
    std::fs::write(&path, content).context(|| format!("could not write {}", path.display()))?;
    Ok(path)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Cold: `functions` new processes, each serving a function of its own,
/// timed from spawn to the end of the first answer. Warm: one process.
pub fn measure_server(
    s: &Server,
    functions: usize,
    plan: &WarmPlan,
) -> (SystemResult, Option<Memory>) {
    let mut memory = None;
    let outcome = Scratch::new("thaw-bench-peer").map(|dir| {
        let cold = Figure::from_result(server_cold(s, dir.path(), functions));
        let warm = Figure::from_result(server_warm(s, dir.path(), plan, &mut memory));
        (cold, warm)
    });
    let (cold, warm) = match outcome {
        Ok(cw) => cw,
        Err(e) => {
            let why = crate::results::error_chain(&e);
            (Figure::Failed(why.clone()), Figure::Failed(why))
        }
    };
    let result = SystemResult {
        name: s.name.into(),
        short: s.short.into(),
        role: s.role,
        cold_means: "process start to first answer: a new process per function, started, listening, answering \
                     its first request"
            .into(),
        cold,
        warm,
        warm_is_cold: false,
        notes: Vec::new(),
    };
    (result, memory)
}

fn server_cold(s: &Server, dir: &Path, n: usize) -> Result<Cold> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let port = free_port()?;
        let mut cmd = (s.command)(&s.binary, dir, &i.to_string(), port)?;
        let log = dir.join(format!("cold-{i}.log"));
        samples.push(start_to_first_answer(&mut cmd, s.name, addr(port), &log)?);
        progress_n(&format!("{} cold", s.name), "process start", i + 1, n);
    }
    Ok(Cold {
        summary: Summary::of(&samples).ok_or_else(|| failed("no cold sample"))?,
        attempted: n,
        confirmed: None,
        pool_takes: None,
    })
}

fn server_warm(
    s: &Server,
    dir: &Path,
    plan: &WarmPlan,
    memory: &mut Option<Memory>,
) -> Result<Warm> {
    let port = free_port()?;
    let mut cmd = (s.command)(&s.binary, dir, "warm", port)?;
    let mut child = Guarded::spawn_logged(&mut cmd, s.name, &dir.join("warm.log"))?;
    connect_when_listening(addr(port), &mut child, load::START_LIMIT)?;
    let warm = load::warm(s.name, addr(port), "/", plan);
    if let Some(pss) = pss_bytes(child.pid()) {
        *memory = Some(Memory {
            what: format!("{}, idle after the warm phase (one process)", s.name),
            pss: vec![pss],
            idle_instances: false,
        });
    }
    child.stop(libc::SIGTERM, Duration::from_secs(2));
    warm.map_err(|e| failed(format!("{e} {}", child.log_tail())))
}

/// A fresh `node handler.js` per request; it prints the answer and exits.
pub fn measure_naive(node: &Path, functions: usize, plan: &WarmPlan) -> SystemResult {
    let mut notes = vec![
        "every call starts a process, so every call is cold: the warm latency is the same measurement \
         repeated for the warm phase's duration"
            .to_string(),
    ];
    let result = Scratch::new("thaw-bench-naive").map(|dir| {
        let cold = Figure::from_result(naive_cold(node, dir.path(), functions));
        let warm = Figure::from_result(naive_warm(node, dir.path(), plan));
        (cold, warm)
    });
    let (cold, warm) = match result {
        Ok(cw) => cw,
        Err(e) => {
            let why = crate::results::error_chain(&e);
            (Figure::Failed(why.clone()), Figure::Failed(why))
        }
    };
    if let Some(w) = warm.measured() {
        notes.push(format!(
            "requests per second: {} clients each starting `node handler.js` back to back",
            w.connections
        ));
    }
    SystemResult {
        name: "fresh node per request".into(),
        short: "node per request".into(),
        role: Role::Peer,
        cold_means:
            "spawn `node handler.js` (calls a Lambda-style handler, prints its body) until it exits"
                .into(),
        cold,
        warm,
        warm_is_cold: true,
        notes,
    }
}

fn naive_script(dir: &Path, tag: &str) -> Result<PathBuf> {
    write(
        dir,
        &format!("handler-{tag}.cjs"),
        &format!(
            "// function {tag}\nconst handler = async () => ({{ statusCode: 200, body: \"hello world\" }});\n\
             handler().then((r) => process.stdout.write(r.body));\n"
        ),
    )
}

/// One request the naive way: spawn, read the answer, wait for the exit.
fn naive_call(node: &Path, script: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut cmd = Command::new(node);
    minimal_env(&mut cmd)
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Guarded::spawn(&mut cmd, "node handler.js")?;
    let mut out = Vec::new();
    if let Some(mut stdout) = child.child().stdout.take() {
        stdout
            .read_to_end(&mut out)
            .context(|| "could not read node's output".into())?;
    }
    let status = child.wait_for_exit(load::START_LIMIT)?;
    let elapsed = start.elapsed();
    if !status.success() || out != HELLO {
        return Err(failed(format!(
            "node {} exited ({status}) printing {:?} instead of \"hello world\"",
            script.display(),
            String::from_utf8_lossy(&out[..out.len().min(200)])
        )));
    }
    Ok(elapsed)
}

fn naive_cold(node: &Path, dir: &Path, n: usize) -> Result<Cold> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        samples.push(naive_call(node, &naive_script(dir, &i.to_string())?)?);
        progress_n("fresh node per request cold", "process", i + 1, n);
    }
    Ok(Cold {
        summary: Summary::of(&samples).ok_or_else(|| failed("no cold sample"))?,
        attempted: n,
        confirmed: None,
        pool_takes: None,
    })
}

fn naive_warm(node: &Path, dir: &Path, plan: &WarmPlan) -> Result<Warm> {
    let script = naive_script(dir, "warm")?;
    progress(&format!(
        "fresh node per request: sequential, {:.1} s",
        plan.duration.as_secs_f64()
    ));
    let mut samples = Vec::new();
    let deadline = Instant::now() + plan.duration;
    while Instant::now() < deadline {
        samples.push(naive_call(node, &script)?);
    }
    progress(&format!(
        "fresh node per request: {} concurrent clients, {:.1} s",
        plan.connections,
        plan.duration.as_secs_f64()
    ));
    let done = AtomicU64::new(0);
    let first_error = Mutex::new(None);
    let start = Instant::now();
    let deadline = start + plan.duration;
    std::thread::scope(|s| {
        for _ in 0..plan.connections {
            // Each worker waits for every child it spawns before it ends,
            // so PR_SET_PDEATHSIG (tied to the spawning thread) never fires
            // early.
            s.spawn(|| {
                while Instant::now() < deadline {
                    match naive_call(node, &script) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(Warm {
        latency: Summary::of(&samples).ok_or_else(|| failed("no naive sample"))?,
        rps: done.load(Ordering::Relaxed) as f64 / elapsed,
        connections: plan.connections,
        errors: 0,
    })
}

/// Where a peer's binary is: the npm package's native binary under a
/// `bench/node_modules` (from `--peers`, or found above the current folder
/// or above the thaw binary), else the name on PATH.
pub fn find_binary(name: &str, candidates: &[&str], peers: &[PathBuf]) -> Option<PathBuf> {
    for dir in peers {
        for c in candidates {
            let p = dir.join(c);
            if is_elf(&p) {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| is_elf(p))
    })
}

/// The npm wrappers may be scripts that download on first use; only a
/// native binary is timed.
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

pub const WORKERD_PATHS: &[&str] = &[
    "node_modules/@cloudflare/workerd-linux-64/bin/workerd",
    "node_modules/@cloudflare/workerd-linux-arm64/bin/workerd",
    "node_modules/workerd/bin/workerd",
];

pub const DENO_PATHS: &[&str] = &[
    "node_modules/@deno/linux-x64-glibc/deno",
    "node_modules/@deno/linux-arm64-glibc/deno",
    "node_modules/deno/deno",
];

/// Folders that may hold the peers' npm packages.
pub fn peer_dirs(explicit: Option<&Path>, thaw_exe: &Path) -> Vec<PathBuf> {
    if let Some(d) = explicit {
        return vec![d.to_path_buf()];
    }
    let mut dirs = Vec::new();
    let starts = [std::env::current_dir().ok(), thaw_exe.canonicalize().ok()];
    for start in starts.into_iter().flatten() {
        for a in start.ancestors() {
            let bench = a.join("bench");
            if bench.join("package.json").is_file() && !dirs.contains(&bench) {
                dirs.push(bench);
            }
        }
    }
    dirs
}

/// A skipped peer's row.
pub fn skipped(name: &str, short: &str, role: Role, why: String) -> SystemResult {
    SystemResult {
        name: name.into(),
        short: short.into(),
        role,
        cold_means: String::new(),
        cold: Figure::Skipped(why.clone()),
        warm: Figure::Skipped(why),
        warm_is_cold: false,
        notes: Vec::new(),
    }
}
