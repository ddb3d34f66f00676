//! `/metrics` in the Prometheus text format (version 0.0.4), every series
//! labelled with its function's namespace.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use thaw_registry::FunctionId;
use thaw_scheduler::{PoolSnapshot, PoolStats};

/// Upper bounds, in seconds, of the latency histogram's buckets: fine at
/// the low end, where warm calls and pooled cold starts land.
const BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

#[derive(Default)]
struct FunctionMetrics {
    outcomes: BTreeMap<&'static str, u64>,
    cold: u64,
    warm: u64,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Async calls and schedules of one function.
#[derive(Default)]
struct TriggerMetrics {
    /// Attempts by how they ended.
    attempts: BTreeMap<&'static str, u64>,
    dead: u64,
    /// Schedule ticks that became calls, and ticks missed.
    fires: u64,
    misses: u64,
}

#[derive(Default)]
pub struct Metrics {
    functions: Mutex<HashMap<FunctionId, FunctionMetrics>>,
    triggers: Mutex<HashMap<FunctionId, TriggerMetrics>>,
}

impl Metrics {
    /// Counts one call of `function`: how it ended, whether it started its
    /// instance (`None` when it never reached one), and how long it took.
    pub fn record(
        &self,
        function: &FunctionId,
        outcome: &'static str,
        cold: Option<bool>,
        took: Duration,
    ) {
        let mut all = self.functions.lock().unwrap();
        let m = all.entry(function.clone()).or_default();
        *m.outcomes.entry(outcome).or_default() += 1;
        match cold {
            Some(true) => m.cold += 1,
            Some(false) => m.warm += 1,
            None => {}
        }
        if m.buckets.is_empty() {
            m.buckets = vec![0; BUCKETS.len()];
        }
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            m.buckets[i] += 1;
        }
        m.sum += secs;
        m.count += 1;
    }

    /// Counts one attempt of an async call of `function`.
    pub fn record_attempt(&self, function: &FunctionId, outcome: &'static str) {
        let mut all = self.triggers.lock().unwrap();
        *all.entry(function.clone())
            .or_default()
            .attempts
            .entry(outcome)
            .or_default() += 1;
    }

    /// Counts a schedule's tick of `function`: whether it became a call,
    /// and how many ticks before it were missed.
    pub fn record_tick(&self, function: &FunctionId, fired: bool, missed: u64) {
        let mut all = self.triggers.lock().unwrap();
        let t = all.entry(function.clone()).or_default();
        t.fires += u64::from(fired);
        t.misses += missed;
    }

    /// Counts a call of `function` that went to its dead-letter queue.
    pub fn record_dead(&self, function: &FunctionId) {
        self.triggers
            .lock()
            .unwrap()
            .entry(function.clone())
            .or_default()
            .dead += 1;
    }

    pub fn forget(&self, function: &FunctionId) {
        self.functions.lock().unwrap().remove(function);
        self.triggers.lock().unwrap().remove(function);
    }
}

/// The async queue's figures: per namespace from the registry (`queues`,
/// already filtered), per function from the counters.
fn render_triggers(
    out: &mut String,
    metrics: &Metrics,
    namespace: Option<&str>,
    queues: &[thaw_registry::QueueDepth],
) {
    let now = thaw_registry::now_ms();
    out.push_str("# HELP thaw_async_pending Async calls accepted and not finished (queued, running, waiting for a retry).\n# TYPE thaw_async_pending gauge\n");
    for q in queues {
        let _ = writeln!(
            out,
            "thaw_async_pending{{namespace=\"{}\"}} {}",
            label(&q.namespace),
            q.pending
        );
    }
    out.push_str("# HELP thaw_async_oldest_pending_seconds Age of the oldest unfinished async call.\n# TYPE thaw_async_oldest_pending_seconds gauge\n");
    for q in queues {
        let age = q
            .oldest_created_ms
            .map(|t| (now - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "thaw_async_oldest_pending_seconds{{namespace=\"{}\"}} {age}",
            label(&q.namespace)
        );
    }
    out.push_str("# HELP thaw_async_dead_letters Calls in dead-letter queues now.\n# TYPE thaw_async_dead_letters gauge\n");
    for q in queues {
        let _ = writeln!(
            out,
            "thaw_async_dead_letters{{namespace=\"{}\"}} {}",
            label(&q.namespace),
            q.dead
        );
    }
    let t = metrics.triggers.lock().unwrap();
    let mut names: Vec<&FunctionId> = t
        .keys()
        .filter(|f| namespace.is_none_or(|ns| f.namespace == ns))
        .collect();
    names.sort();
    out.push_str("# HELP thaw_async_attempts_total Attempts of async calls, by how they ended.\n# TYPE thaw_async_attempts_total counter\n");
    for name in &names {
        for (outcome, n) in &t[*name].attempts {
            let _ = writeln!(
                out,
                "thaw_async_attempts_total{{{},outcome=\"{outcome}\"}} {n}",
                fn_labels(name)
            );
        }
    }
    out.push_str("# HELP thaw_async_dead_lettered_total Async calls moved to the dead-letter queue.\n# TYPE thaw_async_dead_lettered_total counter\n");
    for name in &names {
        let _ = writeln!(
            out,
            "thaw_async_dead_lettered_total{{{}}} {}",
            fn_labels(name),
            t[*name].dead
        );
    }
    out.push_str("# HELP thaw_schedule_fires_total Schedule ticks that became async calls.\n# TYPE thaw_schedule_fires_total counter\n");
    for name in &names {
        let _ = writeln!(
            out,
            "thaw_schedule_fires_total{{{}}} {}",
            fn_labels(name),
            t[*name].fires
        );
    }
    out.push_str("# HELP thaw_schedule_misses_total Schedule ticks not run: passed while thaw was down (all but the last), or refused by a full queue.\n# TYPE thaw_schedule_misses_total counter\n");
    for name in &names {
        let _ = writeln!(
            out,
            "thaw_schedule_misses_total{{{}}} {}",
            fn_labels(name),
            t[*name].misses
        );
    }
}

/// `namespace="...",function="..."`.
fn fn_labels(f: &FunctionId) -> String {
    format!(
        "namespace=\"{}\",function=\"{}\"",
        label(&f.namespace),
        label(&f.name)
    )
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `namespace`'s functions (every namespace's with `None`),
/// with their instances from `functions`, and the pool's figures when
/// given (the platform's own, for the admin).
pub fn render(
    metrics: &Metrics,
    namespace: Option<&str>,
    functions: &[(FunctionId, PoolStats)],
    queues: &[thaw_registry::QueueDepth],
    pool: Option<PoolSnapshot>,
) -> String {
    let mut out = String::new();
    render_triggers(&mut out, metrics, namespace, queues);
    let m = metrics.functions.lock().unwrap();
    let mut names: Vec<&FunctionId> = m
        .keys()
        .filter(|f| namespace.is_none_or(|ns| f.namespace == ns))
        .collect();
    names.sort();

    out.push_str("# HELP thaw_invocations_total Calls of a function, by how they ended.\n# TYPE thaw_invocations_total counter\n");
    for name in &names {
        for (outcome, n) in &m[*name].outcomes {
            let _ = writeln!(
                out,
                "thaw_invocations_total{{{},outcome=\"{outcome}\"}} {n}",
                fn_labels(name)
            );
        }
    }
    out.push_str("# HELP thaw_starts_total Calls that started their instance (cold) or found one running (warm).\n# TYPE thaw_starts_total counter\n");
    for name in &names {
        let f = &m[*name];
        for (start, n) in [("cold", f.cold), ("warm", f.warm)] {
            let _ = writeln!(
                out,
                "thaw_starts_total{{{},start=\"{start}\"}} {n}",
                fn_labels(name)
            );
        }
    }
    out.push_str("# HELP thaw_invocation_duration_seconds Time from a call's arrival to its answer.\n# TYPE thaw_invocation_duration_seconds histogram\n");
    for name in &names {
        let f = &m[*name];
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += f.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "thaw_invocation_duration_seconds_bucket{{{},le=\"{bound}\"}} {cumulative}",
                fn_labels(name)
            );
        }
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_bucket{{{},le=\"+Inf\"}} {}",
            fn_labels(name),
            f.count
        );
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_sum{{{}}} {}",
            fn_labels(name),
            f.sum
        );
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_count{{{}}} {}",
            fn_labels(name),
            f.count
        );
    }
    drop(m);

    out.push_str("# HELP thaw_instances Instances of deployed functions, by state.\n# TYPE thaw_instances gauge\n");
    for (f, s) in functions {
        let labels = fn_labels(f);
        let states = [
            ("busy", s.busy),
            ("idle", s.idle - s.paused),
            ("paused", s.paused),
            ("starting", s.starting),
        ];
        for (state, n) in states {
            let _ = writeln!(out, "thaw_instances{{{labels},state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "thaw_queued_calls{{{labels}}} {}", s.waiting);
    }

    let Some(pool) = pool else {
        return out;
    };
    let lookups = pool.hits + pool.misses;
    let hit_rate = if lookups == 0 {
        1.0
    } else {
        pool.hits as f64 / lookups as f64
    };
    let _ = write!(
        out,
        "# HELP thaw_pool_runtimes Pre-started runtimes, bound to no function.\n# TYPE thaw_pool_runtimes gauge\n\
         thaw_pool_runtimes{{state=\"idle\"}} {}\nthaw_pool_runtimes{{state=\"starting\"}} {}\n\
         # HELP thaw_pool_target Runtimes the pool aims to keep waiting.\n# TYPE thaw_pool_target gauge\nthaw_pool_target {}\n\
         # HELP thaw_pool_takes_total Cold starts, by whether a pre-started runtime was there (hit) or one was started on the request's path (miss).\n\
         # TYPE thaw_pool_takes_total counter\nthaw_pool_takes_total{{result=\"hit\"}} {}\nthaw_pool_takes_total{{result=\"miss\"}} {}\n\
         # HELP thaw_pool_hit_ratio Share of cold starts served from the pool.\n# TYPE thaw_pool_hit_ratio gauge\nthaw_pool_hit_ratio {hit_rate}\n\
         # HELP thaw_pool_starts_total Runtimes the pool started, by result.\n# TYPE thaw_pool_starts_total counter\n\
         thaw_pool_starts_total{{result=\"ok\"}} {}\nthaw_pool_starts_total{{result=\"failed\"}} {}\n\
         # HELP thaw_runtime_pss_bytes Measured memory (PSS) of one waiting runtime.\n# TYPE thaw_runtime_pss_bytes gauge\nthaw_runtime_pss_bytes {}\n",
        pool.idle, pool.starting, pool.target, pool.hits, pool.misses, pool.started, pool.failed, pool.runtime_bytes
    );
    out
}
