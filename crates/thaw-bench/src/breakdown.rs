//! Where a cold start spends its time, step by step: the bench starts Node
//! with the shim exactly as the running `thaw up` does (its command line
//! and environment, read from `/proc` of one of its runtimes), then speaks
//! the wire protocol itself and times each step: start to `ready`, `init`
//! to `init_ok`, `invoke` to `result`. Between `ready` and `init` it waits
//! a quarter of a second, as a runtime taken from a pool has waited.

use crate::error::{failed, Context as _, Result};
use crate::procs::{cmdline, environ, Guarded, Scratch};
use crate::progress_n;
use crate::results::Breakdown;
use crate::stats::Summary;
use crate::thaw::{Platform, Style};
use crate::wire;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Pause between `ready` and `init`, as a runtime waiting in a pool has:
/// right after start Node is still busy (compilation, GC) on other threads.
const POOLED_PAUSE: Duration = Duration::from_millis(250);

/// `trials` runtimes with the Lambda hello world; as many again with the
/// fetch one when `with_fetch`.
pub fn measure(p: &Platform, trials: usize, with_fetch: bool) -> Result<Breakdown> {
    let runtimes = p.runtimes();
    let runtime = runtimes
        .iter()
        .find(|r| !p.is_bound(r))
        .or_else(|| runtimes.first())
        .copied()
        .ok_or_else(|| failed("thaw up has no runtime process to copy the command of"))?;
    let pid = runtime.node;
    let mut argv = cmdline(pid)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| failed(format!("could not read the command line of runtime {pid}")))?;
    if runtime.jailed() {
        // Inside its jail the shim is at another path; outside, the bench
        // uses the file the jail shows it from.
        let shim = p
            .shim_on_host()
            .ok_or_else(|| failed("could not find the shim in thaw's data directory"))?;
        for a in argv.iter_mut().filter(|a| a.ends_with("shim.mjs")) {
            *a = shim.to_string_lossy().into_owned();
        }
    }
    let env: Vec<(String, String)> = environ(pid)
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let fd: i32 = env
        .iter()
        .find(|(k, _)| k == "THAW_FD")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(3);

    let scratch = Scratch::new("thaw-bench-breakdown")?;
    let log = scratch.path().join("runtime.log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "could not start an async runtime".into())?;
    let none = || failed("no breakdown trial ran");
    let mut ready = Vec::new();
    let mut steps = |style: Style| -> Result<(Summary, Summary)> {
        let code = format!("code-{}", style.key());
        scratch.write(&format!("{code}/index.mjs"), &style.source("breakdown"))?;
        let code_dir = scratch.path().join(code);
        let (mut init, mut invoke) = (Vec::new(), Vec::new());
        for i in 0..trials {
            let [a, b, c] = trial(&rt, &argv, &env, fd, &code_dir, &log)?;
            ready.push(a);
            init.push(b);
            invoke.push(c);
            progress_n(
                &format!("cold-path breakdown ({} handler)", style.key()),
                "runtime start",
                i + 1,
                trials,
            );
        }
        Ok((
            Summary::of(&init).ok_or_else(none)?,
            Summary::of(&invoke).ok_or_else(none)?,
        ))
    };
    let (init, first_invoke) = steps(Style::Lambda)?;
    let fetch = if with_fetch {
        Some(steps(Style::Fetch)?)
    } else {
        None
    };
    Ok(Breakdown {
        command: argv.join(" "),
        jailed: runtime.jailed(),
        ready: Summary::of(&ready).ok_or_else(none)?,
        init,
        first_invoke,
        fetch,
    })
}

fn trial(
    rt: &tokio::runtime::Runtime,
    argv: &[String],
    env: &[(String, String)],
    fd: i32,
    code_dir: &Path,
    log: &Path,
) -> Result<[Duration; 3]> {
    let (host, runtime_end) = std::os::unix::net::UnixStream::pair()
        .context(|| "could not create a socketpair".into())?;
    let raw = runtime_end.as_raw_fd();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == fd {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, fd)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = Guarded::spawn_logged(&mut cmd, "node with the thaw shim", log)?;
    drop(runtime_end);
    host.set_nonblocking(true)
        .context(|| "could not set up the socketpair".into())?;
    let code_dir = code_dir.to_string_lossy();
    let steps = rt.block_on(async {
        let mut s = tokio::net::UnixStream::from_std(host).map_err(|e| e.to_string())?;
        tokio::time::timeout(STEP_LIMIT, async {
            wire::ready(&mut s).await?;
            let ready = start.elapsed();
            tokio::time::sleep(POOLED_PAUSE).await;
            let t = Instant::now();
            wire::init(&mut s, "breakdown", &code_dir, STEP_LIMIT).await?;
            let init = t.elapsed();
            let t = Instant::now();
            wire::call(&mut s, STEP_LIMIT).await?;
            Ok::<_, String>([ready, init, t.elapsed()])
        })
        .await
        .map_err(|_| format!("a step took longer than {STEP_LIMIT:?}"))?
    });
    let tail = child.log_tail();
    child.kill();
    steps.map_err(|e| failed(format!("runtime started by hand: {e} {tail}")))
}
