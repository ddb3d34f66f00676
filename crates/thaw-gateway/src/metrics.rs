//! `/metrics` in the Prometheus text format (version 0.0.4), every series
//! labelled with its function's namespace; and the last hour of each
//! function minute by minute (`{F}/stats`, the dashboard's charts).

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

/// The histogram bucket a latency of `secs` falls in; `None` past the
/// largest bound.
fn bucket_of(secs: f64) -> Option<usize> {
    BUCKETS.iter().position(|b| secs <= *b)
}

#[derive(Default)]
struct FunctionMetrics {
    outcomes: BTreeMap<&'static str, u64>,
    cold: u64,
    warm: u64,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
    /// The last hour, minute by minute.
    recent: LastHour,
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
        if let Some(i) = bucket_of(secs) {
            m.buckets[i] += 1;
        }
        m.sum += secs;
        m.count += 1;
        let minute = thaw_registry::now_ms().div_euclid(60_000);
        m.recent
            .record(minute, outcome == "ok", cold == Some(true), secs);
    }

    /// `function`'s last hour, a minute a row, oldest first, ending with
    /// the minute `now_ms` falls in.
    pub fn last_hour(&self, function: &FunctionId, now_ms: i64) -> Vec<thaw_api::MinuteStats> {
        let all = self.functions.lock().unwrap();
        let minute = now_ms.div_euclid(60_000);
        match all.get(function) {
            Some(m) => m.recent.window(minute),
            None => LastHour::default().window(minute),
        }
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

/// Minutes the dashboard's charts span.
const MINUTES: usize = 60;

/// One minute of one function: its calls, and their latencies in the
/// buckets of [`BUCKETS`] (the last slot past the largest bound).
#[derive(Clone, Copy, Default)]
struct Minute {
    /// Minutes since the epoch this slot holds; another value: empty.
    minute: i64,
    calls: u32,
    errors: u32,
    cold: u32,
    latency: [u32; BUCKETS.len() + 1],
}

/// A ring of the last [`MINUTES`] minutes: slot `minute % MINUTES` holds
/// that minute until it comes round again an hour later, so a function's
/// figures take the same few kilobytes however many calls it serves, and
/// minutes without a call cost nothing to skip.
#[derive(Default)]
struct LastHour {
    /// Allocated at the first call.
    slots: Option<Box<[Minute; MINUTES]>>,
}

impl LastHour {
    fn record(&mut self, minute: i64, ok: bool, cold: bool, secs: f64) {
        let slots = self
            .slots
            .get_or_insert_with(|| Box::new([Minute::default(); MINUTES]));
        let slot = &mut slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        slot.calls = slot.calls.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(!ok));
        slot.cold = slot.cold.saturating_add(u32::from(cold));
        let bucket = bucket_of(secs).unwrap_or(BUCKETS.len());
        slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
    }

    /// The hour ending with `now` (minutes since the epoch), oldest first.
    fn window(&self, now: i64) -> Vec<thaw_api::MinuteStats> {
        (now - MINUTES as i64 + 1..=now)
            .map(|minute| {
                let held = self
                    .slots
                    .as_ref()
                    .map(|s| s[minute.rem_euclid(MINUTES as i64) as usize])
                    .filter(|m| m.minute == minute);
                let m = held.unwrap_or_default();
                thaw_api::MinuteStats {
                    start_ms: minute * 60_000,
                    calls: m.calls,
                    errors: m.errors,
                    cold: m.cold,
                    p50_ms: quantile(&m.latency, 0.5).map(|s| s * 1000.0),
                    p99_ms: quantile(&m.latency, 0.99).map(|s| s * 1000.0),
                }
            })
            .collect()
    }
}

/// The `q` quantile (0 to 1) of latencies counted in [`BUCKETS`], in
/// seconds: found in the bucket where it falls, and placed within it as
/// if that bucket's calls were spread evenly between its bounds (as
/// Prometheus' `histogram_quantile` does). Past the largest bound, that
/// bound. `None` without calls.
fn quantile(latency: &[u32; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().map(|n| u64::from(*n)).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, n) in latency.iter().enumerate() {
        let n = u64::from(*n);
        if n > 0 && (below + n) as f64 >= rank {
            let Some(upper) = BUCKETS.get(i) else {
                return BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    BUCKETS.last().copied()
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 0.001;

    #[test]
    fn a_minute_counts_its_calls_errors_and_cold_starts() {
        let mut hour = LastHour::default();
        assert!(hour.slots.is_none(), "nothing is held before a call");
        hour.record(1000, true, true, 3.0 * MS);
        hour.record(1000, false, false, 3.0 * MS);
        hour.record(1000, true, false, 3.0 * MS);
        hour.record(1001, true, false, 0.1 * MS);
        let w = hour.window(1001);
        assert_eq!(w.len(), MINUTES);
        let (before, now) = (&w[MINUTES - 2], &w[MINUTES - 1]);
        assert_eq!((before.calls, before.errors, before.cold), (3, 1, 1));
        assert_eq!(before.start_ms, 1000 * 60_000);
        assert_eq!((now.calls, now.errors, now.cold), (1, 0, 0));
        assert_eq!(now.start_ms, 1001 * 60_000);
        for quiet in &w[..MINUTES - 2] {
            assert_eq!(quiet.calls, 0);
            assert_eq!((quiet.p50_ms, quiet.p99_ms), (None, None));
        }
    }

    #[test]
    fn minutes_older_than_an_hour_are_forgotten_as_their_slot_comes_round() {
        let mut hour = LastHour::default();
        hour.record(1000, true, false, MS);
        // Still within the hour that ends 59 minutes later.
        assert_eq!(hour.window(1059)[0].calls, 1);
        // An hour on, the minute is out of the window, though still held.
        assert!(hour.window(1060).iter().all(|m| m.calls == 0));
        // A call an hour later takes the same slot, starting from zero.
        hour.record(1060, false, true, MS);
        let now = hour.window(1060)[MINUTES - 1];
        assert_eq!((now.calls, now.errors, now.cold), (1, 1, 1));
        // And the window reads minutes, not slots: an earlier hour sees
        // nothing of it.
        assert!(hour.window(1030).iter().all(|m| m.calls == 0));
    }

    #[test]
    fn quantiles_are_placed_within_their_bucket() {
        let mut latency = [0u32; BUCKETS.len() + 1];
        assert_eq!(quantile(&latency, 0.5), None);
        // 100 calls between 1 ms and 2.5 ms (bucket 3): the median halfway.
        latency[3] = 100;
        let p50 = quantile(&latency, 0.5).unwrap();
        assert!((p50 - 1.75 * MS).abs() < 1e-9, "{p50}");
        let p99 = quantile(&latency, 0.99).unwrap();
        assert!((p99 - 2.485 * MS).abs() < 1e-9, "{p99}");
        // One slow call in a hundred lands p99 in its bucket, not p50.
        latency[3] = 98;
        latency[8] = 2; // 50 ms to 100 ms
        assert!(quantile(&latency, 0.5).unwrap() < 2.5 * MS);
        let p99 = quantile(&latency, 0.99).unwrap();
        assert!(p99 > 50.0 * MS && p99 <= 100.0 * MS, "{p99}");
        // Past the largest bound: that bound.
        let mut slow = [0u32; BUCKETS.len() + 1];
        slow[BUCKETS.len()] = 5;
        assert_eq!(quantile(&slow, 0.5), Some(30.0));
    }

    #[test]
    fn the_last_hour_is_forgotten_with_the_function() {
        let metrics = Metrics::default();
        let f = FunctionId::new("team", "api");
        metrics.record(&f, "ok", Some(true), Duration::from_millis(2));
        let now = thaw_registry::now_ms();
        let calls: u32 = metrics.last_hour(&f, now).iter().map(|m| m.calls).sum();
        assert_eq!(calls, 1);
        metrics.forget(&f);
        let hour = metrics.last_hour(&f, now);
        assert_eq!(hour.len(), MINUTES);
        assert!(hour.iter().all(|m| m.calls == 0));
    }
}
