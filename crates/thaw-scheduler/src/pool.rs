//! Pre-started runtimes: Node with the shim running, bound to no function,
//! waiting to be taken by a cold start.
//!
//! A cold start takes one from here instead of starting Node on the
//! request's path. A background task refills the pool; how many it keeps
//! follows the recent rate of cold starts, between a floor and a ceiling,
//! and never beyond a memory budget measured from the runtimes themselves.
//! A runtime taken from the pool is bound to one function and never comes
//! back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use thaw_sandbox::{Driver, Instance, LogSink};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Runtimes kept waiting even when no cold start has happened lately.
    pub min_idle: usize,
    /// Never more than this many waiting.
    pub max_idle: usize,
    /// Waiting runtimes together stay under this many bytes (PSS).
    pub memory_budget: u64,
    /// Runtimes started at once while refilling; more would take CPU from
    /// requests being served.
    pub parallel_starts: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: 2,
            max_idle: 16,
            memory_budget: 512 * 1024 * 1024,
            parallel_starts: 2,
        }
    }
}

/// How the pool is doing, for metrics and `thaw ls`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PoolSnapshot {
    pub idle: usize,
    pub starting: usize,
    pub target: usize,
    /// Cold starts served from the pool.
    pub hits: u64,
    /// Cold starts that found the pool empty and started Node themselves.
    pub misses: u64,
    pub started: u64,
    pub failed: u64,
    /// Measured memory of one waiting runtime (PSS), 0 before the first.
    pub runtime_bytes: u64,
}

/// Window over which the rate of cold starts is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Wait after a failed start before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

struct State {
    idle: VecDeque<Instance>,
    starting: usize,
    recent_takes: VecDeque<Instant>,
    /// Bumped by `flush`: a runtime that finishes starting under an older
    /// generation runs the old runtime and is not kept.
    generation: u64,
}

pub struct RuntimePool {
    driver: Arc<dyn Driver>,
    /// What its runtimes run, beside the driver: a Node line (`node22`).
    runtime: String,
    sink: Arc<dyn LogSink>,
    config: PoolConfig,
    state: Mutex<State>,
    wake: Notify,
    hits: AtomicU64,
    misses: AtomicU64,
    started: AtomicU64,
    failed: AtomicU64,
    runtime_bytes: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    /// Set the first time as many runtimes waited as the target asked.
    filled: std::sync::atomic::AtomicBool,
}

impl RuntimePool {
    /// A pool of `driver`'s runtimes of `runtime` (a Node line, `node22`:
    /// the scheduler picks the pool by driver and runtime, and does not
    /// look further into either).
    pub fn new(
        driver: Arc<dyn Driver>,
        runtime: impl Into<String>,
        sink: Arc<dyn LogSink>,
        config: PoolConfig,
    ) -> Arc<Self> {
        Arc::new(RuntimePool {
            driver,
            runtime: runtime.into(),
            sink,
            config,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                starting: 0,
                recent_takes: VecDeque::new(),
                generation: 0,
            }),
            wake: Notify::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            started: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            runtime_bytes: AtomicU64::new(0),
            closed: Default::default(),
            filled: Default::default(),
        })
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// The Node line its runtimes run (`node22`).
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// A started runtime for a cold start: from the pool when one waits,
    /// else started here, on the caller's time (counted as a miss).
    pub async fn take_or_start(&self) -> Result<(Instance, bool), thaw_sandbox::SandboxError> {
        if let Some(instance) = self.take() {
            return Ok((instance, true));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let instance = self.driver.start(self.sink.clone()).await?;
        Ok((instance, false))
    }

    /// Takes a waiting runtime, if any.
    pub fn take(&self) -> Option<Instance> {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        st.recent_takes.push_back(now);
        while st
            .recent_takes
            .front()
            .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
        {
            st.recent_takes.pop_front();
        }
        let found = loop {
            match st.idle.pop_front() {
                Some(i) if i.is_alive() => break Some(i),
                Some(_) => continue,
                None => break None,
            }
        };
        drop(st);
        self.wake.notify_one();
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// How many runtimes should wait: the floor, plus one second's worth of
    /// recent cold starts, capped by the ceiling and the memory budget.
    fn target(&self, st: &State) -> usize {
        let per_sec = st.recent_takes.len() as f64 / RATE_WINDOW.as_secs_f64();
        let wanted = self.config.min_idle + per_sec.ceil() as usize;
        let per_runtime = self.runtime_bytes.load(Ordering::Relaxed).max(1);
        let by_budget = (self.config.memory_budget / per_runtime) as usize;
        wanted.min(self.config.max_idle).min(by_budget.max(1))
    }

    /// Whether the pool has once held as many waiting runtimes as its
    /// target: from then on a cold start finds one unless a burst took
    /// them all (a readiness check for after start).
    pub fn filled(&self) -> bool {
        self.filled.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.state.lock().unwrap();
        PoolSnapshot {
            idle: st.idle.len(),
            starting: st.starting,
            target: self.target(&st),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            runtime_bytes: self.runtime_bytes.load(Ordering::Relaxed),
        }
    }

    /// Starts the background refill. Between rounds it holds only a weak
    /// reference, so the task ends within a second of the pool's last user.
    pub fn spawn_refill(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(refill_loop(weak));
    }

    /// Kills every waiting runtime, and those still starting as they
    /// finish, and refills with runtimes started from now on: after
    /// `Driver::upgrade_runtime`, nothing of the old runtime is handed out.
    pub fn flush(&self) -> usize {
        let idle: Vec<Instance> = {
            let mut st = self.state.lock().unwrap();
            st.generation += 1;
            st.idle.drain(..).collect()
        };
        let n = idle.len();
        for i in idle {
            i.kill();
        }
        self.wake.notify_one();
        n
    }

    /// Stops refilling and kills every waiting runtime, including those
    /// still starting, which it waits for (a few seconds at most).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (idle, starting): (Vec<Instance>, usize) = {
                let mut st = self.state.lock().unwrap();
                (st.idle.drain(..).collect(), st.starting)
            };
            for i in idle {
                i.kill();
            }
            if starting == 0 || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start_one(self: Arc<Self>) {
        let generation = self.state.lock().unwrap().generation;
        let started = self.driver.start(self.sink.clone()).await;
        let failed = {
            let mut st = self.state.lock().unwrap();
            st.starting -= 1;
            match started {
                Ok(instance) if st.generation != generation => {
                    instance.kill();
                    false
                }
                Ok(instance) => {
                    self.started.fetch_add(1, Ordering::Relaxed);
                    if let Some(bytes) = instance.process().memory_pss() {
                        // A running average: runtimes differ little, and
                        // the first is measured before Node settles.
                        let old = self.runtime_bytes.load(Ordering::Relaxed);
                        let avg = if old == 0 {
                            bytes
                        } else {
                            (old * 3 + bytes) / 4
                        };
                        self.runtime_bytes.store(avg, Ordering::Relaxed);
                    }
                    st.idle.push_back(instance);
                    false
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("could not pre-start a runtime: {e}");
                    true
                }
            }
        };
        if failed {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        self.wake.notify_one();
    }
}

async fn refill_loop(pool: Weak<RuntimePool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.closed.load(Ordering::Acquire) {
            return;
        }
        let to_start = {
            let mut st = p.state.lock().unwrap();
            st.idle.retain(Instance::is_alive);
            let target = p.target(&st);
            if st.idle.len() >= target {
                p.filled.store(true, Ordering::Release);
            }
            let have = st.idle.len() + st.starting;
            let room = p.config.parallel_starts.saturating_sub(st.starting);
            let n = target.saturating_sub(have).min(room);
            st.starting += n;
            // Past the target (the rate fell): let the newest extras go.
            while st.idle.len() > target && st.starting == 0 {
                if let Some(extra) = st.idle.pop_back() {
                    extra.kill();
                }
            }
            n
        };
        for _ in 0..to_start {
            tokio::spawn(p.clone().start_one());
        }
        // Also look again now and then: the rate window slides even when
        // nothing happens, and a runtime may die while it waits.
        let _ = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await;
    }
}
