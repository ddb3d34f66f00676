//! Namespace limits under a noisy neighbour (docs/api.md, "Limits per
//! namespace"): a tenant asking for more instances than its limit gets
//! `429 namespace_limit`, while another tenant's calls keep their latency.
//!
//! The section starts a `thaw up` of its own and, through the API as the
//! admin, makes two namespaces: `noisy`, held to `max_instances = 2`, and
//! `quiet`, with the defaults; then a deploy key of each, and with each key
//! deploys its tenant's function through `PUT /v1/functions/{name}` (the
//! key's own namespace). Phase A measures quiet's warm calls alone; phase B
//! measures them again while noisy is called by many more clients than its
//! instances can serve, and counts noisy's answers by status.
//!
//! noisy's handler awaits a 20 ms timer rather than spinning: the limit
//! counts instances, and a call that holds its instance for 20 ms on a timer
//! asks for instances just as a busy one does, without taking the CPU. With
//! a busy loop, noisy's two instances (each may use a core) would take the
//! whole of a 2-core host, and phase B would measure the machine running out
//! of cores rather than whether the limit holds.
//!
//! Like the rest of the bench it asserts nothing about speed. It fails on
//! correctness only: noisy refused nothing, noisy ran more instances than
//! its limit, or any call of quiet did not answer 200 `hello world`.

use crate::error::{failed, Result};
use crate::http::{Conn, Response};
use crate::load::{check, WarmPlan};
use crate::procs::{cpu_time, descendants, Scratch};
use crate::progress;
use crate::results::{error_chain, Cpu, Noisy, TenantPhase, Tenants};
use crate::stats::Summary;
use crate::thaw::{Platform, Style};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// noisy's clients in phase B: eight times what its limit serves at once.
pub const NOISY_CLIENTS: usize = 16;
/// noisy's `max_instances`.
pub const NOISY_LIMIT: u32 = 2;
/// How long each of noisy's calls holds its instance.
pub const NOISY_WORK: Duration = Duration::from_millis(20);
/// How often phase B asks how many instances noisy runs.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Never keep more latency samples than this per phase.
const MAX_SAMPLES: usize = 2_000_000;

const QUIET: &str = "quiet";
const NOISY: &str = "noisy";
const QUIET_PATH: &str = "/ns/quiet/fn/hello/";
const NOISY_PATH: &str = "/ns/noisy/fn/work/";
/// What noisy's function answers.
const DONE: &[u8] = b"done";

/// noisy's handler: holds its instance for `ms` on a timer, then answers.
fn noisy_source(ms: u128) -> String {
    format!(
        "// noisy: holds its instance {ms} ms per call, on a timer (no CPU)\n\
         export const handler = async () => {{\n  \
         await new Promise((resolve) => setTimeout(resolve, {ms}));\n  \
         return {{ statusCode: 200, headers: {{ \"content-type\": \"text/plain\" }}, body: \"done\" }};\n\
         }};\n"
    )
}

/// The section, on a `thaw up` of its own started from `thaw_exe`.
pub fn measure(thaw_exe: &Path, node: &Path, plan: &WarmPlan) -> Result<Tenants> {
    progress("tenants: starting `thaw up`");
    let p = Platform::start(thaw_exe, node, &[])?;
    progress(&format!("tenants: up on http://{}", p.addr));
    let result = run(&p, plan).map_err(|e| {
        let tail = p.log_tail();
        if tail.is_empty() {
            e
        } else {
            failed(format!(
                "{}; thaw up's last log lines: {tail}",
                error_chain(&e)
            ))
        }
    });
    progress("tenants: stopping `thaw up`");
    result
}

fn run(p: &Platform, plan: &WarmPlan) -> Result<Tenants> {
    let limits = p.create_namespace(NOISY, Some(NOISY_LIMIT))?.limits;
    if limits.max_instances != NOISY_LIMIT {
        return Err(failed(format!(
            "namespace {NOISY} was made with max_instances = {}, not the {NOISY_LIMIT} asked for",
            limits.max_instances
        )));
    }
    p.create_namespace(QUIET, None)?;
    let noisy_key = p.create_key(NOISY, "bench-deploy", "deploy")?;
    let quiet_key = p.create_key(QUIET, "bench-deploy", "deploy")?;
    let code = Scratch::new("thaw-bench-code")?;
    code.write("noisy/index.mjs", &noisy_source(NOISY_WORK.as_millis()))?;
    code.write("quiet/index.mjs", &Style::Lambda.source("quiet"))?;
    // Each key deploys into its own namespace: the short form of the route.
    p.deploy_as(&noisy_key, "work", &code.path().join("noisy"))?;
    p.deploy_as(&quiet_key, "hello", &code.path().join("quiet"))?;
    progress(&format!(
        "tenants: namespaces {NOISY} (max_instances = {NOISY_LIMIT}) and {QUIET} made, one function deployed in each by its own deploy key"
    ));
    let first = |path: &str, ok: &dyn Fn(&Response) -> bool| -> Result<()> {
        let mut c =
            Conn::connect(p.addr).map_err(|e| failed(format!("could not reach thaw: {e}")))?;
        let r = c
            .get(path)
            .map_err(|e| failed(format!("GET {path} failed: {e}")))?;
        if ok(&r) {
            Ok(())
        } else {
            Err(failed(format!("GET {path}: {}", describe(&r))))
        }
    };
    first(QUIET_PATH, &|r| check(r).is_ok())?;
    first(NOISY_PATH, &|r| r.status == 200 && r.body == DONE)?;

    progress(&format!(
        "tenants: A. {QUIET} alone, {} clients, {:.1} s",
        plan.connections,
        plan.duration.as_secs_f64()
    ));
    let alone = quiet_phase(p.addr, plan, p.pid(), &|_| {})?;

    progress(&format!(
        "tenants: B. {QUIET}, {} clients, {:.1} s, while {NOISY_CLIENTS} clients call {NOISY} back to back",
        plan.connections,
        plan.duration.as_secs_f64()
    ));
    let (beside, noisy) = beside_noisy(p, plan)?;
    progress(&format!(
        "tenants: {NOISY}: {} answers, {} of them 429 namespace_limit, {} 200; at most {} instances seen",
        noisy.total(),
        noisy.limited,
        noisy.ok,
        noisy
            .peak_instances
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    ));
    Ok(Tenants {
        clients: plan.connections,
        noisy_clients: NOISY_CLIENTS,
        noisy_limit: NOISY_LIMIT,
        noisy_work: NOISY_WORK,
        duration: plan.duration,
        warmup: plan.warmup,
        alone,
        beside,
        noisy,
    })
}

/// A status and the start of a body, for an error message.
fn describe(r: &Response) -> String {
    format!(
        "answered {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
    )
}

/// What a set of clients found.
#[derive(Default)]
struct Tally {
    samples: Vec<Duration>,
    good: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        self.good += other.good;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

/// `clients` clients calling quiet back to back for `length`, each on a
/// keep-alive connection of its own, all starting together. Returns what
/// they found and the time from the start to the last one's end.
fn quiet_clients(
    addr: SocketAddr,
    clients: usize,
    length: Duration,
    keep_samples: bool,
) -> (Tally, Duration) {
    let start_line = Barrier::new(clients + 1);
    let per_client = MAX_SAMPLES / clients.max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let start_line = &start_line;
                s.spawn(move || {
                    let mut tally = Tally::default();
                    let mut conn = Conn::connect(addr).ok();
                    start_line.wait();
                    let deadline = Instant::now() + length;
                    while Instant::now() < deadline {
                        if conn.as_ref().is_none_or(Conn::is_closed) {
                            match Conn::connect(addr) {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    tally.failed += 1;
                                    tally
                                        .first_failure
                                        .get_or_insert(format!("connect to {addr}: {e}"));
                                    std::thread::sleep(Duration::from_millis(1));
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().expect("connected above");
                        let began = Instant::now();
                        match c.get(QUIET_PATH) {
                            Ok(r) => {
                                let took = began.elapsed();
                                match check(&r) {
                                    Ok(()) => {
                                        tally.good += 1;
                                        if keep_samples && tally.samples.len() < per_client {
                                            tally.samples.push(took);
                                        }
                                    }
                                    Err(e) => {
                                        tally.failed += 1;
                                        tally.first_failure.get_or_insert(e);
                                    }
                                }
                            }
                            Err(e) => {
                                conn = None;
                                tally.failed += 1;
                                tally
                                    .first_failure
                                    .get_or_insert(format!("GET {QUIET_PATH}: {e}"));
                            }
                        }
                    }
                    (tally, Instant::now())
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let mut all = Tally::default();
        let mut last = start;
        for w in workers {
            let (tally, end) = w.join().expect("a load thread panicked");
            all.merge(tally);
            last = last.max(end);
        }
        (all, last - start)
    })
}

/// CPU time used so far by `thaw up`, by each process it started, and by
/// the bench.
struct CpuMark {
    at: Instant,
    thaw_up: Duration,
    runtimes: HashMap<u32, Duration>,
    bench: Duration,
}

impl CpuMark {
    fn now(thaw_up: u32) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            thaw_up: cpu_time(thaw_up).unwrap_or_default(),
            runtimes: descendants(thaw_up)
                .into_iter()
                .filter_map(|pid| Some((pid, cpu_time(pid)?)))
                .collect(),
            bench: cpu_time(std::process::id()).unwrap_or_default(),
        }
    }

    /// What was used between `self` and the later `end`, in cores. A
    /// runtime that ended in between is left out; one that started counts
    /// from its start.
    fn until(&self, end: &CpuMark) -> Cpu {
        let wall = (end.at - self.at).as_secs_f64().max(1e-9);
        let runtimes: Duration = end
            .runtimes
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.runtimes.get(pid).copied().unwrap_or_default()))
            .sum();
        Cpu {
            thaw_up: end.thaw_up.saturating_sub(self.thaw_up).as_secs_f64() / wall,
            runtimes: runtimes.as_secs_f64() / wall,
            bench: end.bench.saturating_sub(self.bench).as_secs_f64() / wall,
        }
    }
}

/// quiet's phase: `plan.warmup` of unmeasured calls (they start one
/// instance per client), then `plan.duration` measured, with
/// `window(true)` called as it starts and `window(false)` as it ends.
/// Failed calls of the warm-up count too: any is a failure of the section.
fn quiet_phase(
    addr: SocketAddr,
    plan: &WarmPlan,
    thaw_up: u32,
    window: &dyn Fn(bool),
) -> Result<TenantPhase> {
    let (warmup, _) = quiet_clients(addr, plan.connections, plan.warmup, false);
    window(true);
    let before = CpuMark::now(thaw_up);
    let (mut tally, took) = quiet_clients(addr, plan.connections, plan.duration, true);
    let cpu = before.until(&CpuMark::now(thaw_up));
    window(false);
    tally.failed += warmup.failed;
    let first_failure = warmup.first_failure.or(tally.first_failure.take());
    let latency = Summary::of(&tally.samples).ok_or_else(|| {
        failed(format!(
            "quiet: none of its calls answered 200 hello world ({} failed; the first: {})",
            tally.failed,
            first_failure.as_deref().unwrap_or("?")
        ))
    })?;
    Ok(TenantPhase {
        latency,
        rps: tally.good as f64 / took.as_secs_f64().max(1e-9),
        failed: tally.failed,
        first_failure,
        cpu,
    })
}

/// noisy's answers, counted by every client while `measuring`.
struct NoisyCounts {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    first_other: Mutex<Option<String>>,
}

impl NoisyCounts {
    fn other(&self, what: String) {
        self.other.fetch_add(1, Ordering::Relaxed);
        self.first_other.lock().unwrap().get_or_insert(what);
    }
}

/// Whether an answer is thaw refusing a call for a namespace's limit.
fn is_namespace_limit(r: &Response) -> bool {
    r.status == 429
        && serde_json::from_slice::<serde_json::Value>(&r.body)
            .is_ok_and(|v| v["error"]["code"] == "namespace_limit")
}

/// Phase B: noisy's clients start, then quiet's phase runs as in A; noisy's
/// answers are counted, and its instances polled, while quiet is measured.
fn beside_noisy(p: &Platform, plan: &WarmPlan) -> Result<(TenantPhase, Noisy)> {
    let addr = p.addr;
    let stop = AtomicBool::new(false);
    let measuring = AtomicBool::new(false);
    let counts = NoisyCounts {
        ok: AtomicU64::new(0),
        limited: AtomicU64::new(0),
        other: AtomicU64::new(0),
        first_other: Mutex::new(None),
    };
    let peak = AtomicU64::new(0);
    let polls = AtomicUsize::new(0);
    let window = Mutex::new((Instant::now(), Duration::ZERO));
    let quiet = std::thread::scope(|s| {
        for _ in 0..NOISY_CLIENTS {
            s.spawn(|| {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.as_ref().is_none_or(Conn::is_closed) {
                        match Conn::connect(addr) {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                if measuring.load(Ordering::Relaxed) {
                                    counts.other(format!("connect to {addr}: {e}"));
                                }
                                std::thread::sleep(Duration::from_millis(1));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected above");
                    let answer = c.get(NOISY_PATH);
                    if !measuring.load(Ordering::Relaxed) {
                        if answer.is_err() {
                            conn = None;
                        }
                        continue;
                    }
                    match answer {
                        Ok(r) if r.status == 200 => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) if is_namespace_limit(&r) => {
                            counts.limited.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => counts.other(describe(&r)),
                        Err(e) => {
                            conn = None;
                            counts.other(format!("GET {NOISY_PATH}: {e}"));
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if measuring.load(Ordering::Relaxed) && Instant::now() >= next {
                    next = Instant::now() + POLL_EVERY;
                    if let Ok(ns) = p.namespace(NOISY) {
                        peak.fetch_max(u64::from(ns.instances), Ordering::Relaxed);
                        polls.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let quiet = quiet_phase(addr, plan, p.pid(), &|open| {
            let mut w = window.lock().unwrap();
            if open {
                *w = (Instant::now(), Duration::ZERO);
            } else {
                w.1 = w.0.elapsed();
            }
            measuring.store(open, Ordering::Relaxed);
        });
        stop.store(true, Ordering::Relaxed);
        quiet
    });
    let quiet = quiet?;
    let polls = polls.load(Ordering::Relaxed);
    let noisy = Noisy {
        ok: counts.ok.load(Ordering::Relaxed),
        limited: counts.limited.load(Ordering::Relaxed),
        other: counts.other.load(Ordering::Relaxed),
        first_other: counts.first_other.into_inner().unwrap(),
        seconds: window.into_inner().unwrap().1.as_secs_f64(),
        peak_instances: (polls > 0).then(|| peak.load(Ordering::Relaxed) as u32),
        polls,
    };
    Ok((quiet, noisy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_a_429_naming_the_namespace_limit_counts_as_refused() {
        let limit = r#"{"error":{"code":"namespace_limit","message":"namespace `noisy` runs 2 instances"}}"#;
        assert!(is_namespace_limit(&answer(429, limit)));
        let queue = r#"{"error":{"code":"too_many_requests","message":"queue full"}}"#;
        assert!(!is_namespace_limit(&answer(429, queue)));
        assert!(!is_namespace_limit(&answer(403, limit)));
        assert!(!is_namespace_limit(&answer(429, "not json")));
    }

    #[test]
    fn noisy_holds_its_instance_on_a_timer() {
        let js = noisy_source(20);
        assert!(js.contains("setTimeout(resolve, 20)"), "{js}");
        assert!(js.contains("export const handler = async"), "{js}");
        assert!(js.contains("body: \"done\""), "{js}");
    }
}
