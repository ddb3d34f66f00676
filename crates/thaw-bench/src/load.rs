//! The two measurements every system gets: warm calls to a server that is
//! already up, and "process start to first answer" for systems whose only
//! way to start something new is a new process.

use crate::error::{failed, Context as _, Result};
use crate::http::{Conn, Response};
use crate::procs::{connect_when_listening, Guarded};
use crate::progress;
use crate::stats::Summary;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// The body every hello-world function answers with.
pub const HELLO: &[u8] = b"hello world";

/// Never keep more latency samples than this, whatever the duration.
const MAX_SAMPLES: usize = 2_000_000;
/// A started server must answer within this.
pub const START_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub struct WarmPlan {
    /// Length of the sequential phase, and of the concurrent phase.
    pub duration: Duration,
    /// Unmeasured calls before each phase.
    pub warmup: Duration,
    /// Clients of the concurrent phase, one keep-alive connection each.
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct Warm {
    /// Sequential calls from one client on one keep-alive connection.
    pub latency: Summary,
    /// Answers per second with `connections` clients calling back to back.
    pub rps: f64,
    pub connections: usize,
    /// Failed calls in both phases (wrong status or body, broken connection).
    pub errors: u64,
}

/// Whether an answer is the hello world every system must give.
pub fn check(r: &Response) -> std::result::Result<(), String> {
    if r.status == 200 && r.body == HELLO {
        Ok(())
    } else {
        Err(format!(
            "answered {} {:?} instead of 200 {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)]),
            String::from_utf8_lossy(HELLO)
        ))
    }
}

/// Counts failed calls and gives up when they are more than a few.
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn new() -> Errors {
        Errors {
            count: AtomicU64::new(0),
            first: Mutex::new(None),
        }
    }

    fn record(&self, what: String, ok_so_far: u64) -> Result<()> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.first.lock().unwrap().get_or_insert(what);
        if n > 100 && n > ok_so_far / 100 {
            return Err(failed(format!(
                "{n} calls failed (after {ok_so_far} good ones); the first: {}",
                self.first.lock().unwrap().clone().unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// One call; on a broken connection, a new one for the next call.
fn call(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    path: &str,
) -> std::result::Result<Duration, String> {
    if conn.is_none() {
        *conn = Some(Conn::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?);
    }
    let c = conn.as_mut().expect("connected above");
    let start = Instant::now();
    match c.get(path) {
        Ok(r) => {
            let elapsed = start.elapsed();
            check(&r)?;
            Ok(elapsed)
        }
        Err(e) => {
            *conn = None;
            Err(format!("GET {path}: {e}"))
        }
    }
}

/// Calls back to back on one connection until `deadline`; returns the
/// latencies of the good calls.
fn sequential(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
    errors: &Errors,
) -> Result<Vec<Duration>> {
    let mut conn = None;
    let mut samples = Vec::with_capacity(64 * 1024);
    while Instant::now() < deadline && samples.len() < MAX_SAMPLES {
        match call(&mut conn, addr, path) {
            Ok(d) => samples.push(d),
            Err(e) => errors.record(e, samples.len() as u64)?,
        }
    }
    Ok(samples)
}

/// `connections` clients calling back to back for `length`; returns the
/// good answers per second.
fn concurrent(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    length: Duration,
    errors: &Errors,
) -> Result<f64> {
    let good = AtomicU64::new(0);
    let start_line = Barrier::new(connections + 1);
    let (start, outcome) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                s.spawn(|| -> Result<Instant> {
                    let mut conn = Conn::connect(addr).ok();
                    start_line.wait();
                    let deadline = Instant::now() + length;
                    while Instant::now() < deadline {
                        match call(&mut conn, addr, path) {
                            Ok(_) => {
                                good.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors.record(e, good.load(Ordering::Relaxed))?,
                        }
                    }
                    Ok(Instant::now())
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let ends: Vec<Result<Instant>> = workers
            .into_iter()
            .map(|w| w.join().expect("a load thread panicked"))
            .collect();
        (start, ends)
    });
    let mut last = start;
    for end in outcome {
        last = last.max(end?);
    }
    let seconds = (last - start).as_secs_f64().max(1e-9);
    Ok(good.load(Ordering::Relaxed) as f64 / seconds)
}

/// Warm latency and throughput of `GET path` on a server that is up.
pub fn warm(label: &str, addr: SocketAddr, path: &str, plan: &WarmPlan) -> Result<Warm> {
    let errors = Errors::new();
    progress(&format!(
        "{label}: warm, sequential, 1 client, {:.1} s",
        plan.duration.as_secs_f64()
    ));
    sequential(addr, path, Instant::now() + plan.warmup, &errors)?;
    let samples = sequential(addr, path, Instant::now() + plan.duration, &errors)?;
    let latency = Summary::of(&samples).ok_or_else(|| {
        failed(format!(
            "{label}: no call succeeded in the sequential phase"
        ))
    })?;
    progress(&format!(
        "{label}: warm, {} concurrent clients, {:.1} s",
        plan.connections,
        plan.duration.as_secs_f64()
    ));
    concurrent(addr, path, plan.connections, plan.warmup, &errors)?;
    let rps = concurrent(addr, path, plan.connections, plan.duration, &errors)?;
    Ok(Warm {
        latency,
        rps,
        connections: plan.connections,
        errors: errors.count.load(Ordering::Relaxed),
    })
}

/// Time from spawning `cmd` to the end of the first answer it gives on
/// `addr`: the process starts, loads its code, listens, and answers. The
/// process is then killed (not timed).
pub fn start_to_first_answer(
    cmd: &mut Command,
    name: &str,
    addr: SocketAddr,
    log: &std::path::Path,
) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Guarded::spawn_logged(cmd, name, log)?;
    let stream = connect_when_listening(addr, &mut child, START_LIMIT)?;
    let mut conn = Conn::over(stream, addr).context(|| format!("could not use {addr}"))?;
    let r = conn
        .get("/")
        .context(|| format!("{name} did not answer on {addr}"))?;
    let elapsed = start.elapsed();
    check(&r).map_err(|e| failed(format!("{name} {e}")))?;
    child.kill();
    Ok(elapsed)
}
