//! Two `thaw up` workers sharing one PostgreSQL registry (docs/cluster.md):
//! what a call pays when it lands on a worker that is not its function's
//! home and is forwarded there, against a call that lands home; and how
//! often calls spread over both workers find a warm instance.
//!
//! The section starts a scratch PostgreSQL server from the host's packages
//! (`initdb` and `postgres` in a temporary directory, removed afterwards)
//! and two workers on loopback, each with a data directory of its own. The
//! forwarding hop is measured on loopback: between hosts, add the network's
//! round trip. Skipped when no PostgreSQL server is installed.

use crate::error::{failed, Result};
use crate::http::{Conn, Response};
use crate::load::{self, WarmPlan};
use crate::procs::Scratch;
use crate::progress;
use crate::results::Cluster;
use crate::stats::Summary;
use crate::thaw::{Platform, Style};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds of calls over every function after the first (cold) one.
pub const ROUNDS: usize = 5;
/// At most this many functions in the warm-hit phase.
const MAX_FUNCTIONS: usize = 100;
/// How long a function deployed through one worker may take to answer
/// through the other.
const FOLLOW_LIMIT: Duration = Duration::from_secs(20);

/// Why the section cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    thaw_testpg::bin_dir().err()
}

pub fn measure(thaw_exe: &Path, node: &Path, plan: &WarmPlan, functions: usize) -> Result<Cluster> {
    progress("cluster: starting a scratch PostgreSQL server and two workers");
    let pg = thaw_testpg::TestPg::start(&[])
        .map_err(|e| failed(format!("could not start a scratch PostgreSQL server: {e}")))?;
    let url = pg.url(&pg.new_database());
    let key = hex::encode(rand::random::<[u8; 32]>());
    let env = [
        ("THAW_DATABASE_URL", url.as_str()),
        ("THAW_SECRETS_KEY", key.as_str()),
    ];
    let a = Platform::start_with_env(thaw_exe, node, &[], &env)?;
    let b = Platform::start_with_env(thaw_exe, node, &[], &env)?;
    let workers = [&a, &b];
    progress(&format!(
        "cluster: workers on http://{} and http://{}",
        a.addr, b.addr
    ));

    let code = Scratch::new("thaw-bench-code")?;
    code.write("hello/index.mjs", &Style::Lambda.source("cluster hello"))?;
    a.deploy("hello", &code.path().join("hello"))?;
    for w in workers {
        answering(w.addr, "/fn/hello/")?;
    }
    let home_id = served_by(&call(a.addr, "/fn/hello/")?)?;
    let (home, away) = if home_id == worker_id(a.addr)? {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let mut at_home = load::warm("cluster, landing home", home.addr, "/fn/hello/", plan)?;
    let mut forwarded = load::warm(
        "cluster, landing away and forwarded",
        away.addr,
        "/fn/hello/",
        plan,
    )?;
    // Latency side by side: one call home, one call away, in turn, so
    // that both see the same machine at the same moments.
    progress(&format!(
        "cluster: latency, a call landing home and one landing away in turn, {:.1} s",
        plan.duration.as_secs_f64()
    ));
    let (home_samples, away_samples) = in_turn(home.addr, away.addr, "/fn/hello/", plan.duration)?;
    let summary = |s: &[Duration]| {
        Summary::of(s).ok_or_else(|| failed("cluster: no call succeeded in the latency phase"))
    };
    at_home.latency = summary(&home_samples)?;
    forwarded.latency = summary(&away_samples)?;

    let n = functions.clamp(2, MAX_FUNCTIONS);
    progress(&format!(
        "cluster: {n} functions deployed through both workers, then called through both in turn"
    ));
    for i in 0..n {
        let name = format!("f{i}");
        code.write(
            &format!("{name}/index.mjs"),
            &Style::Lambda.source(&format!("cluster {name}")),
        )?;
        workers[i % 2].deploy(&name, &code.path().join(&name))?;
    }
    let mut homes = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/fn/f{i}/");
        for w in workers {
            answering(w.addr, &path)?;
        }
        homes.push(served_by(&call(workers[i % 2].addr, &path)?)?);
    }
    let (mut calls, mut warm, mut away_from_home) = (0u64, 0u64, 0u64);
    for round in 0..ROUNDS {
        for (i, home) in homes.iter().enumerate() {
            let r = call(workers[(i + round + 1) % 2].addr, &format!("/fn/f{i}/"))?;
            load::check(&r).map_err(|e| failed(format!("cluster: f{i} {e}")))?;
            calls += 1;
            warm += u64::from(r.header("x-thaw-start") == Some("warm"));
            away_from_home += u64::from(&served_by(&r)? != home);
        }
    }
    progress(&format!(
        "cluster: {warm} of {calls} calls warm, {away_from_home} served away from their home"
    ));
    Ok(Cluster {
        home: at_home,
        forwarded,
        functions: n,
        rounds: ROUNDS,
        calls,
        warm,
        away_from_home,
    })
}

/// Calls `path` through `home` and through `away` in turn, each on a
/// keep-alive connection of its own, for `length`: the latencies of each.
fn in_turn(
    home: SocketAddr,
    away: SocketAddr,
    path: &str,
    length: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let connect = |addr: SocketAddr| {
        Conn::connect(addr).map_err(|e| failed(format!("could not reach {addr}: {e}")))
    };
    let mut conns = [connect(home)?, connect(away)?];
    let mut samples = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + length;
    while Instant::now() < deadline {
        for (conn, samples) in conns.iter_mut().zip(samples.iter_mut()) {
            let began = Instant::now();
            let r = conn
                .get(path)
                .map_err(|e| failed(format!("GET {path} failed: {e}")))?;
            let took = began.elapsed();
            load::check(&r).map_err(|e| failed(format!("cluster: {e}")))?;
            samples.push(took);
        }
    }
    let [home, away] = samples;
    Ok((home, away))
}

fn call(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut c = Conn::connect(addr).map_err(|e| failed(format!("could not reach {addr}: {e}")))?;
    c.get(path)
        .map_err(|e| failed(format!("GET {path} on {addr} failed: {e}")))
}

/// The worker that served `r`.
fn served_by(r: &Response) -> Result<String> {
    r.header("x-thaw-worker")
        .map(str::to_string)
        .ok_or_else(|| failed("a function's answer did not say which worker served it"))
}

/// The id of the worker at `addr`, as its `/readyz` gives it.
fn worker_id(addr: SocketAddr) -> Result<String> {
    served_by(&call(addr, "/readyz")?)
}

/// Waits until `path` answers 200 through `addr`.
fn answering(addr: SocketAddr, path: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let r = call(addr, path)?;
        if load::check(&r).is_ok() {
            return Ok(());
        }
        if start.elapsed() > FOLLOW_LIMIT {
            return Err(failed(format!(
                "{path} did not answer through {addr} within {FOLLOW_LIMIT:?}: {}",
                r.status
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
