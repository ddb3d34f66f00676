//! `/metrics` in the Prometheus text format (version 0.0.4).

use crate::platform::Platform;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

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

#[derive(Default)]
pub struct Metrics {
    functions: Mutex<HashMap<String, FunctionMetrics>>,
}

impl Metrics {
    /// Counts one call of `function`: how it ended, whether it started its
    /// instance (`None` when it never reached one), and how long it took.
    pub fn record(
        &self,
        function: &str,
        outcome: &'static str,
        cold: Option<bool>,
        took: Duration,
    ) {
        let mut all = self.functions.lock().unwrap();
        let m = all.entry(function.to_string()).or_default();
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

    pub fn forget(&self, function: &str) {
        self.functions.lock().unwrap().remove(function);
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(p: &Platform) -> String {
    let mut out = String::new();
    let m = p.metrics.functions.lock().unwrap();
    let mut names: Vec<&String> = m.keys().collect();
    names.sort();

    out.push_str("# HELP thaw_invocations_total Calls of a function, by how they ended.\n# TYPE thaw_invocations_total counter\n");
    for name in &names {
        for (outcome, n) in &m[*name].outcomes {
            let _ = writeln!(
                out,
                "thaw_invocations_total{{function=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(name)
            );
        }
    }
    out.push_str("# HELP thaw_starts_total Calls that started their instance (cold) or found one running (warm).\n# TYPE thaw_starts_total counter\n");
    for name in &names {
        let f = &m[*name];
        for (start, n) in [("cold", f.cold), ("warm", f.warm)] {
            let _ = writeln!(
                out,
                "thaw_starts_total{{function=\"{}\",start=\"{start}\"}} {n}",
                label(name)
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
                "thaw_invocation_duration_seconds_bucket{{function=\"{}\",le=\"{bound}\"}} {cumulative}",
                label(name)
            );
        }
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_bucket{{function=\"{}\",le=\"+Inf\"}} {}",
            label(name),
            f.count
        );
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_sum{{function=\"{}\"}} {}",
            label(name),
            f.sum
        );
        let _ = writeln!(
            out,
            "thaw_invocation_duration_seconds_count{{function=\"{}\"}} {}",
            label(name),
            f.count
        );
    }
    drop(m);

    out.push_str("# HELP thaw_instances Instances of deployed functions, by state.\n# TYPE thaw_instances gauge\n");
    for route in p.routes() {
        let name = label(&route.version.function);
        let s = p.scheduler.stats(&route.version.function);
        let states = [
            ("busy", s.busy),
            ("idle", s.idle - s.paused),
            ("paused", s.paused),
            ("starting", s.starting),
        ];
        for (state, n) in states {
            let _ = writeln!(
                out,
                "thaw_instances{{function=\"{name}\",state=\"{state}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "thaw_queued_calls{{function=\"{name}\"}} {}",
            s.waiting
        );
    }

    let pool = p.scheduler.runtimes().snapshot();
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
