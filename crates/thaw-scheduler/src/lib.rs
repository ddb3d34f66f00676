//! The scheduler: which instance serves a call.
//!
//! Instances are grouped in pools, one per function version. A call takes
//! an instance of its version with room for one more request, or starts one
//! (a cold start) while the version has fewer than its maximum, or waits in
//! a bounded queue. A call that outlives the function's timeout kills its
//! instance; an instance that dies is dropped from its pool and the next
//! call starts a fresh one. Idle instances are reclaimed after the
//! function's keep-alive, and a deploy retires the pools of older versions.
//!
//! This crate must not know HTTP or the registry: it is given a
//! [`FunctionSpec`] and a payload and answers with an outcome.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thaw_protocol::{Init, Payload};
use thaw_sandbox::{
    CollectError, Instance, InvokeOutcome, LogLine, Reply, RequestBody, ResponseBody, SandboxError,
};
use tokio::sync::Notify;

mod pool;

pub use pool::{PoolConfig, PoolSnapshot, RuntimePool};

/// Least time a runtime gets to import a function's code.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body a buffered call ([`Scheduler::invoke_buffered`])
/// takes: what one JSON answer of `thaw invoke` or a stored async result
/// may hold.
pub const MAX_BUFFERED_RESPONSE: usize = 64 * 1024 * 1024;

/// Everything the scheduler needs to know about one function version.
#[derive(Clone, PartialEq)]
pub struct FunctionSpec {
    /// The namespace the function belongs to: its instances count against
    /// that namespace's [`Quota`].
    pub namespace: String,
    pub name: String,
    pub version: i64,
    /// The read-only code tree on the host.
    pub code_dir: PathBuf,
    /// Entry module, relative to the code tree.
    pub entry: String,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Requests one instance serves at once.
    pub concurrency: u32,
    /// Largest request body an HTTP call may send it, bytes.
    pub max_body_bytes: u64,
    pub keep_alive: Duration,
    pub max_instances: u32,
    /// Instances kept bound and warm whatever the traffic
    /// ([`Scheduler::provision`]); the reaper never ends or pauses them.
    pub min_instances: u32,
    /// The driver its instances run under (`Driver::name`); `None`: the
    /// scheduler's first.
    pub driver: Option<String>,
    /// The runtime its instances run ([`RuntimePool::runtime`], a Node line
    /// such as `node22`); `None`: the scheduler's first.
    pub runtime: Option<String>,
}

/// `env` holds the function's secrets: Debug prints its names alone.
impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("code_dir", &self.code_dir)
            .field("entry", &self.entry)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("memory_mb", &self.memory_mb)
            .field("concurrency", &self.concurrency)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("max_instances", &self.max_instances)
            .field("min_instances", &self.min_instances)
            .field("driver", &self.driver)
            .field("runtime", &self.runtime)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Calls that may wait for an instance, per function version.
    pub queue_limit: usize,
    /// How long a queued call waits before giving up.
    pub queue_timeout: Duration,
    /// What every namespace's instances together may hold: the host's
    /// budget. `None`: no budget beyond the namespaces' own.
    pub host: Option<Quota>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            queue_limit: 100,
            queue_timeout: Duration::from_secs(10),
            host: None,
        }
    }
}

/// Why a call got no answer from the function.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the function did not answer within its timeout of {}s", .timeout.as_secs_f64())]
    Timeout {
        timeout: Duration,
        logs: Vec<LogLine>,
    },
    #[error("the function's instance crashed: {reason}")]
    Crashed { reason: String, logs: Vec<LogLine> },
    #[error("the function failed to start: {message}")]
    InitFailed {
        message: String,
        stack: Option<String>,
    },
    #[error("no runtime could be started: {0}")]
    Unavailable(String),
    #[error("too many requests waiting for this function ({0} queued); retry later")]
    QueueFull(usize),
    #[error("no instance of this function became free within {}s", .0.as_secs())]
    QueueTimeout(Duration),
    #[error("{0}")]
    QuotaReached(String),
    #[error("{0}")]
    HostBudget(String),
    #[error("the function's response is larger than the {} MiB a buffered call takes", .0 / (1024 * 1024))]
    ResponseTooLarge(usize),
}

/// Whose quota a check is against.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Namespace(&'a str),
    Host,
}

impl Scope<'_> {
    /// The namespace whose pools count; `None`: all.
    fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Namespace(ns) => Some(ns),
            Scope::Host => None,
        }
    }

    fn refused(&self, why: String) -> InvokeError {
        match self {
            Scope::Namespace(_) => InvokeError::QuotaReached(why),
            Scope::Host => InvokeError::HostBudget(why),
        }
    }
}

/// What one namespace's instances may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_instances: u32,
    pub max_memory_mb: u64,
}

impl Quota {
    /// Why one more instance of `memory_mb` does not fit beside `in_use`
    /// (instances, MiB), if it does not.
    fn refuses(&self, scope: Scope<'_>, in_use: (u32, u64), memory_mb: u32) -> Option<String> {
        let (instances, memory) = in_use;
        let (whose, instances_limit, memory_limit) = match scope {
            Scope::Namespace(ns) => (
                format!("namespace `{ns}`"),
                "max_instances",
                "max_memory_mb",
            ),
            Scope::Host => (
                "this host".to_string(),
                "its instance budget, thaw up --host-pids / pids per instance",
                "its memory budget, thaw up --host-memory-mb",
            ),
        };
        if instances + 1 > self.max_instances {
            return Some(format!(
                "{whose} runs {instances} instances, its limit ({instances_limit} = {}); retry later",
                self.max_instances
            ));
        }
        if memory + u64::from(memory_mb) > self.max_memory_mb {
            return Some(format!(
                "{whose} has {memory} MiB in instances; one more of {memory_mb} MiB would pass its limit ({memory_limit} = {}); retry later",
                self.max_memory_mb
            ));
        }
        None
    }

    /// Why an instance of `memory_mb` could never fit, if it could not.
    pub fn never_fits(&self, memory_mb: u32) -> bool {
        self.max_instances == 0 || u64::from(memory_mb) > self.max_memory_mb
    }
}

/// A call answered: its head, and its body as it streams (or, from
/// [`Scheduler::invoke_buffered`], whole).
#[derive(Debug)]
pub struct Invocation<B = ResponseBody> {
    pub id: u64,
    pub outcome: InvokeOutcome<B>,
    pub logs: Vec<LogLine>,
    /// Whether this call started its instance.
    pub cold: bool,
    pub pid: Option<u32>,
}

struct Slot {
    instance: Instance,
    inflight: u32,
    last_used: Instant,
    paused: bool,
    /// The scheduler's generation when it started: one from before
    /// [`Scheduler::renew_provisioned`] runs an older runtime.
    generation: u64,
}

#[derive(Default)]
struct Pool {
    /// Memory of each of its instances, MiB.
    memory_mb: u32,
    slots: Vec<Slot>,
    starting: u32,
    waiting: usize,
    freed: Arc<Notify>,
    /// Its version was retired: the calls on it finish, then its instances
    /// end. It stays in the map, counted against its namespace's quota and
    /// the host's budget, until its last instance is gone; a new call of
    /// the version (by number) takes it back into service.
    retired: bool,
}

impl Pool {
    /// Nothing runs, starts or waits in it.
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.starting == 0 && self.waiting == 0
    }
}

/// Namespace, function name, version id.
type PoolKey = (String, String, i64);

fn key_of(spec: &FunctionSpec) -> PoolKey {
    (spec.namespace.clone(), spec.name.clone(), spec.version)
}

pub struct Scheduler {
    /// One pool of pre-started runtimes per driver and runtime; the first
    /// is the platform's, whose driver and runtime serve functions that
    /// name none.
    runtimes: RwLock<Vec<Arc<RuntimePool>>>,
    config: SchedulerConfig,
    /// Shared with the tasks that hold a slot while a body streams.
    pools: Arc<Mutex<HashMap<PoolKey, Pool>>>,
    quotas: RwLock<HashMap<String, Quota>>,
    next_id: AtomicU64,
    /// Bumped when the runtime changes: provisioned instances started
    /// before are replaced.
    generation: AtomicU64,
}

/// Instances counted by what they are doing, for `thaw ls` and metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    pub busy: u32,
    pub idle: u32,
    /// Of the idle ones, those paused (off the CPU).
    pub paused: u32,
    pub starting: u32,
    pub waiting: usize,
}

enum Acquired {
    Warm(Instance),
    Cold,
}

impl Scheduler {
    /// A scheduler whose cold starts take runtimes from `runtimes`.
    pub fn new(runtimes: Arc<RuntimePool>, config: SchedulerConfig) -> Self {
        // Invocation ids name log lines in the registry, so they must not
        // repeat across restarts: start from the clock.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Scheduler {
            runtimes: RwLock::new(vec![runtimes]),
            config,
            pools: Arc::new(Mutex::new(HashMap::new())),
            quotas: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(seed),
            generation: AtomicU64::new(0),
        }
    }

    /// The name of the platform's driver (the first).
    pub fn driver_name(&self) -> &'static str {
        self.runtimes().driver().name()
    }

    /// The pool of pre-started runtimes behind cold starts of functions
    /// that name no driver and no runtime.
    pub fn runtimes(&self) -> Arc<RuntimePool> {
        self.runtimes.read().unwrap()[0].clone()
    }

    /// Every pool of pre-started runtimes, the platform's first.
    pub fn all_runtimes(&self) -> Vec<Arc<RuntimePool>> {
        self.runtimes.read().unwrap().clone()
    }

    /// Lets functions whose driver and runtime are `runtimes`' run.
    pub fn add_runtimes(&self, runtimes: Arc<RuntimePool>) {
        self.runtimes.write().unwrap().push(runtimes);
    }

    /// The driver and runtime `spec` runs on: its own, or the platform's
    /// where it names none.
    pub fn runtime_of(&self, spec: &FunctionSpec) -> (String, String) {
        let first = self.runtimes();
        (
            spec.driver
                .clone()
                .unwrap_or_else(|| first.driver().name().to_string()),
            spec.runtime
                .clone()
                .unwrap_or_else(|| first.runtime().to_string()),
        )
    }

    /// Gets ready ahead of its first cold start what attaching `spec`'s
    /// code needs from its driver (the process driver's image of the
    /// tree), so that after a restart no call waits for it.
    pub async fn prepare(&self, spec: &FunctionSpec) {
        if let Some(runtimes) = self.runtimes_for(spec) {
            runtimes.driver().prepare_code(&spec.code_dir).await;
        }
    }

    /// Whether this scheduler has a pool for `spec`'s driver and runtime.
    pub fn has_runtimes(&self, spec: &FunctionSpec) -> bool {
        self.runtimes_for(spec).is_some()
    }

    fn runtimes_for(&self, spec: &FunctionSpec) -> Option<Arc<RuntimePool>> {
        let (driver, runtime) = self.runtime_of(spec);
        self.runtimes
            .read()
            .unwrap()
            .iter()
            .find(|r| r.driver().name() == driver && r.runtime() == runtime)
            .cloned()
    }

    /// Runs one call of `spec` with `payload` (and `body`, for an HTTP
    /// request), until the head of its answer. The call keeps its instance
    /// until the runtime is done with the response body; its timeout
    /// covers the body too: a runtime still sending when it passes is
    /// killed, and the body is cut short.
    pub async fn invoke(
        &self,
        spec: &FunctionSpec,
        payload: Payload,
        body: RequestBody,
    ) -> Result<Invocation, InvokeError> {
        let started = tokio::time::Instant::now();
        let key = key_of(spec);
        let (instance, cold) = match self.acquire(&key, spec).await? {
            Acquired::Warm(instance) => (instance, false),
            Acquired::Cold => (self.start_bound(&key, spec, 1).await?, true),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline_ms = SystemTime::now()
            .checked_add(spec.timeout)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(u64::MAX);
        // The call runs to its answer in a task of its own: a caller that
        // goes away before it (a client that gave up) leaves it to finish,
        // and its slot is given back once the runtime is done with it
        // rather than never.
        let call = Call {
            pools: self.pools.clone(),
            key,
            instance,
            id,
            cold,
            timeout: spec.timeout,
            started,
        };
        match tokio::spawn(call.run(deadline_ms, payload, body)).await {
            Ok(result) => result,
            Err(e) => Err(InvokeError::Crashed {
                reason: format!("the call failed inside thaw: {e}"),
                logs: Vec::new(),
            }),
        }
    }

    /// [`Scheduler::invoke`] with the response body read whole (at most
    /// [`MAX_BUFFERED_RESPONSE`]): for callers that answer in one piece
    /// (`thaw invoke`, async calls, schedules). A body cut short makes the
    /// call a handler error.
    pub async fn invoke_buffered(
        &self,
        spec: &FunctionSpec,
        payload: Payload,
        body: RequestBody,
    ) -> Result<Invocation<Vec<u8>>, InvokeError> {
        let started = tokio::time::Instant::now();
        let inv = self.invoke(spec, payload, body).await?;
        let outcome = match inv.outcome {
            InvokeOutcome::Reply(Reply {
                status,
                headers,
                body,
            }) => {
                // The slot's own timer kills a runtime that stalls; this
                // bound only keeps the wait from outliving it.
                let collected = tokio::time::timeout_at(
                    started + spec.timeout + Duration::from_secs(1),
                    body.collect(MAX_BUFFERED_RESPONSE),
                )
                .await;
                match collected {
                    Ok(Ok(body)) => InvokeOutcome::Reply(Reply {
                        status,
                        headers,
                        body,
                    }),
                    Ok(Err(CollectError::TooLarge(limit))) => {
                        return Err(InvokeError::ResponseTooLarge(limit))
                    }
                    Ok(Err(CollectError::Aborted(cut))) => InvokeOutcome::HandlerError {
                        name: None,
                        message: cut.to_string(),
                        stack: None,
                        no_retry: false,
                    },
                    Err(_) => {
                        return Err(InvokeError::Timeout {
                            timeout: spec.timeout,
                            logs: inv.logs,
                        })
                    }
                }
            }
            InvokeOutcome::HandlerError {
                name,
                message,
                stack,
                no_retry,
            } => InvokeOutcome::HandlerError {
                name,
                message,
                stack,
                no_retry,
            },
        };
        Ok(Invocation {
            id: inv.id,
            outcome,
            logs: inv.logs,
            cold: inv.cold,
            pid: inv.pid,
        })
    }

    /// Starts one instance of `spec` and leaves it idle in its pool. Used
    /// at deploy time: it proves the code loads (syntax errors, missing
    /// handler, a throwing top level) before the version goes live, and the
    /// instance then serves the first call warm.
    pub async fn start_idle(&self, spec: &FunctionSpec) -> Result<(), InvokeError> {
        let key = key_of(spec);
        {
            let mut pools = self.pools.lock().unwrap();
            self.make_room(&mut pools, spec)?;
            let pool = pools.entry(key.clone()).or_default();
            pool.memory_mb = spec.memory_mb;
            pool.starting += 1;
        }
        self.start_bound(&key, spec, 0).await.map(|_| ())
    }

    /// Starts what `spec` lacks of its `min_instances`: instances of the
    /// current runtime, alive or starting. Returns how many it started; a
    /// namespace or host at its limit stops it with that error.
    pub async fn provision(&self, spec: &FunctionSpec) -> Result<u32, InvokeError> {
        let key = key_of(spec);
        let mut started = 0;
        loop {
            {
                let mut pools = self.pools.lock().unwrap();
                let generation = self.generation.load(Ordering::Relaxed);
                let have = pools.get(&key).map_or(0, |pool| {
                    pool.starting
                        + pool
                            .slots
                            .iter()
                            .filter(|s| s.generation == generation && s.instance.is_alive())
                            .count() as u32
                });
                if have >= spec.min_instances {
                    return Ok(started);
                }
                self.make_room(&mut pools, spec)?;
                let pool = pools.entry(key.clone()).or_default();
                pool.retired = false;
                pool.memory_mb = spec.memory_mb;
                pool.starting += 1;
            }
            self.start_bound(&key, spec, 0).await?;
            started += 1;
        }
    }

    /// The runtime changed: provisioned instances of the old one are
    /// replaced (new ones start at the next [`Scheduler::provision`]; the
    /// old ones end once their replacements are up and they are idle).
    pub fn renew_provisioned(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// What all instances together may hold, if bounded.
    pub fn host_budget(&self) -> Option<Quota> {
        self.config.host
    }

    /// Sets what the instances of `namespace` may hold at once.
    pub fn set_quota(&self, namespace: &str, quota: Quota) {
        self.quotas
            .write()
            .unwrap()
            .insert(namespace.to_string(), quota);
    }

    /// Forgets a namespace's quota (it was removed).
    pub fn remove_quota(&self, namespace: &str) {
        self.quotas.write().unwrap().remove(namespace);
    }

    /// Checks that one more instance of `spec` fits its namespace's quota
    /// and the host's budget; where it does not, ends the least recently
    /// used idle instance that counts against the one it passes (of the
    /// namespace, or of any namespace for the host) and checks again.
    /// Nothing is ended where ending every such idle instance would not
    /// make room.
    fn make_room(
        &self,
        pools: &mut HashMap<PoolKey, Pool>,
        spec: &FunctionSpec,
    ) -> Result<(), InvokeError> {
        let namespace = self.quotas.read().unwrap().get(&spec.namespace).copied();
        if let Some(quota) = namespace {
            fit(pools, spec, Scope::Namespace(&spec.namespace), quota)?;
        }
        if let Some(host) = self.config.host {
            fit(pools, spec, Scope::Host, host)?;
        }
        Ok(())
    }

    /// Instances of `namespace` running or starting, and their memory (MiB).
    /// Instances that cannot be reclaimed to make room, across every
    /// namespace: serving calls, finishing work their calls left, or
    /// starting. Idle ones do not count: they give way to new ones.
    pub fn busy_instances(&self) -> u32 {
        let usage = usage_of(&self.pools.lock().unwrap(), None);
        usage.in_use.0.saturating_sub(usage.idle.0)
    }

    pub fn usage(&self, namespace: &str) -> (u32, u64) {
        usage_of(&self.pools.lock().unwrap(), Some(namespace)).in_use
    }

    /// Kills the instances of every version of `function` in `namespace`
    /// but those in `keep`; busy ones finish their calls first.
    pub fn retire(&self, namespace: &str, function: &str, keep: &[i64]) {
        self.retire_where(|ns, name, version| {
            ns == namespace && name == function && !keep.contains(&version)
        });
    }

    /// Kills every instance of every function (at shutdown).
    pub fn retire_all(&self) {
        self.retire_where(|_, _, _| true);
    }

    /// Kills the instances of one version (one that never went live).
    pub fn retire_version(&self, version: i64) {
        self.retire_where(|_, _, v| v == version);
    }

    fn retire_where(&self, doomed: impl Fn(&str, &str, i64) -> bool) {
        let mut pools = self.pools.lock().unwrap();
        pools.retain(|(ns, name, version), pool| {
            if !doomed(ns, name, *version) {
                return true;
            }
            pool.retired = true;
            // Idle instances end now; busy and starting ones when their
            // call ends (`release`, `start_bound`), still counted until then.
            pool.slots.retain(|slot| {
                if slot.inflight == 0 {
                    end_when_settled(slot.instance.clone());
                }
                slot.inflight > 0
            });
            pool.freed.notify_waiters();
            !pool.is_empty()
        });
    }

    /// Kills instances idle for longer than their function's keep-alive.
    /// Returns how many were reclaimed.
    /// Also pauses instances idle for longer than `pause_after`, when set.
    /// `policy_of` gives a version's keep-alive and `min_instances`: that
    /// many of its instances of the current runtime (the most recently
    /// used) are neither ended nor paused; its instances of an older
    /// runtime end as soon as they are idle and enough new ones are up.
    pub fn reap_idle(
        &self,
        policy_of: impl Fn(&str, &str, i64) -> Option<(Duration, u32)>,
        pause_after: Option<Duration>,
    ) -> usize {
        let mut pools = self.pools.lock().unwrap();
        let mut reaped = 0;
        let generation = self.generation.load(Ordering::Relaxed);
        pools.retain(|(namespace, name, version), pool| {
            let (keep_alive, min) =
                policy_of(namespace, name, *version).unwrap_or((Duration::ZERO, 0));
            let current = |s: &Slot| s.generation == generation && s.instance.is_alive();
            // The provisioned floor: as many idle instances as busy ones
            // leave to fill, those of the current runtime first, the most
            // recently used first; an older runtime's count only until
            // enough current ones are up.
            let busy = pool
                .slots
                .iter()
                .filter(|s| current(s) && s.inflight > 0)
                .count() as u32;
            let mut idle: Vec<(bool, Instant, usize)> = pool
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inflight == 0 && s.instance.is_alive())
                .map(|(i, s)| (s.generation == generation, s.last_used, i))
                .collect();
            idle.sort_unstable_by(|a, b| b.cmp(a));
            let floor = min.saturating_sub(busy) as usize;
            let mut kept = vec![false; pool.slots.len()];
            for (_, _, i) in idle.into_iter().take(floor) {
                kept[i] = true;
            }
            let renewed = min > 0 && pool.slots.iter().filter(|s| current(s)).count() as u32 >= min;
            let mut index = 0;
            pool.slots.retain_mut(|slot| {
                let provisioned = kept[index];
                index += 1;
                if provisioned {
                    if slot.paused {
                        slot.instance.resume();
                        slot.paused = false;
                    }
                    return true;
                }
                if slot.inflight == 0 && renewed && slot.generation != generation {
                    end_when_settled(slot.instance.clone());
                    reaped += 1;
                    return false;
                }
                if slot.inflight == 0 && slot.instance.background_pending() {
                    // Work after an answer keeps it busy; idle time starts
                    // when that work ends.
                    slot.last_used = Instant::now();
                    return true;
                }
                let idle_for = slot.last_used.elapsed();
                let expired = slot.inflight == 0 && idle_for >= keep_alive;
                if expired {
                    slot.instance.kill();
                    reaped += 1;
                } else if slot.inflight == 0
                    && !slot.paused
                    && pause_after.is_some_and(|after| idle_for >= after)
                {
                    slot.instance.pause();
                    slot.paused = true;
                }
                !expired
            });
            !pool.is_empty()
        });
        reaped
    }

    /// Instances of every version of one function.
    pub fn stats(&self, namespace: &str, function: &str) -> PoolStats {
        let pools = self.pools.lock().unwrap();
        let mut stats = PoolStats::default();
        for ((ns, name, _), pool) in pools.iter() {
            if name != function || ns != namespace {
                continue;
            }
            for slot in &pool.slots {
                if slot.inflight > 0 {
                    stats.busy += 1;
                } else {
                    stats.idle += 1;
                    stats.paused += slot.paused as u32;
                }
            }
            stats.starting += pool.starting;
            stats.waiting += pool.waiting;
        }
        stats
    }

    async fn acquire(&self, key: &PoolKey, spec: &FunctionSpec) -> Result<Acquired, InvokeError> {
        let wait_until = Instant::now() + self.config.queue_timeout;
        loop {
            let freed = {
                let mut pools = self.pools.lock().unwrap();
                let pool = pools.entry(key.clone()).or_default();
                pool.retired = false;
                pool.slots
                    .retain(|s| s.instance.is_alive() || s.inflight > 0);
                // Most recently used first, so the rest can age out.
                let free = pool
                    .slots
                    .iter_mut()
                    .filter(|s| s.inflight < spec.concurrency.max(1) && s.instance.is_alive())
                    .max_by_key(|s| s.last_used);
                if let Some(slot) = free {
                    if slot.paused {
                        slot.instance.resume();
                        slot.paused = false;
                    }
                    slot.inflight += 1;
                    slot.last_used = Instant::now();
                    return Ok(Acquired::Warm(slot.instance.clone()));
                }
                if (pool.slots.len() as u32 + pool.starting) < spec.max_instances.max(1) {
                    self.make_room(&mut pools, spec)?;
                    let pool = pools.entry(key.clone()).or_default();
                    pool.memory_mb = spec.memory_mb;
                    pool.starting += 1;
                    return Ok(Acquired::Cold);
                }
                if pool.waiting >= self.config.queue_limit {
                    return Err(InvokeError::QueueFull(pool.waiting));
                }
                pool.waiting += 1;
                pool.freed.clone()
            };
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The pool may have changed between unlocking and enabling:
            // `release` notifies after changing it, so a change made before
            // `enable` is seen by the next loop turn only if we do not
            // sleep through it. A short bound on each wait covers that gap.
            let step = wait_until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, notified).await;
            {
                let mut pools = self.pools.lock().unwrap();
                if let Some(pool) = pools.get_mut(key) {
                    pool.waiting = pool.waiting.saturating_sub(1);
                }
            }
            if Instant::now() >= wait_until {
                return Err(InvokeError::QueueTimeout(self.config.queue_timeout));
            }
        }
    }

    /// Starts and binds an instance for a pool that counted it in
    /// `starting`, and adds it with `inflight` calls already on it.
    async fn start_bound(
        &self,
        key: &PoolKey,
        spec: &FunctionSpec,
        inflight: u32,
    ) -> Result<Instance, InvokeError> {
        let started = self.start_and_init(spec).await;
        let mut pools = self.pools.lock().unwrap();
        let Some(pool) = pools.get_mut(key) else {
            // Every pool that counts a start outlives it; none left means
            // thaw is shutting down.
            return started;
        };
        pool.starting = pool.starting.saturating_sub(1);
        match started {
            Ok(instance) if pool.retired && inflight == 0 => {
                // Started to wait idle for a version retired meanwhile.
                end_when_settled(instance.clone());
                if pool.is_empty() {
                    pools.remove(key);
                }
                Ok(instance)
            }
            Ok(instance) => {
                pool.slots.push(Slot {
                    instance: instance.clone(),
                    inflight,
                    last_used: Instant::now(),
                    paused: false,
                    generation: self.generation.load(Ordering::Relaxed),
                });
                if inflight == 0 {
                    pool.freed.notify_waiters();
                }
                Ok(instance)
            }
            Err(e) => {
                pool.freed.notify_waiters();
                Err(e)
            }
        }
    }

    async fn start_and_init(&self, spec: &FunctionSpec) -> Result<Instance, InvokeError> {
        let began = Instant::now();
        let runtimes = self.runtimes_for(spec).ok_or_else(|| {
            let (driver, runtime) = self.runtime_of(spec);
            InvokeError::Unavailable(format!(
                "this platform runs no {runtime} runtimes under the {driver} driver"
            ))
        })?;
        let (instance, from_pool) = runtimes
            .take_or_start()
            .await
            .map_err(|e| InvokeError::Unavailable(e.to_string()))?;
        let took = began.elapsed();
        let code_dir = match runtimes
            .driver()
            .attach(&instance, &spec.code_dir, spec.memory_mb)
            .await
        {
            Ok(path) => path,
            Err(e) => {
                instance.kill();
                return Err(InvokeError::Unavailable(e.to_string()));
            }
        };
        let init = Init {
            function: spec.name.clone(),
            version: spec.version,
            code_dir,
            entry: spec.entry.clone(),
            env: spec.env.clone(),
            timeout_ms: spec.timeout.as_millis() as u64,
            memory_mb: spec.memory_mb,
            namespace: spec.namespace.clone(),
            features: vec![thaw_protocol::FEATURE_BACKGROUND_DONE.to_string()],
        };
        // Loading code is not the handler's work: like Lambda's init phase
        // it gets its own allowance, so a short `timeout` does not fail a
        // cold start on a busy host.
        let result = instance.init(init, spec.timeout.max(INIT_TIMEOUT)).await;
        tracing::debug!(
            function = %spec.name,
            from_pool,
            runtime_us = took.as_micros() as u64,
            init_us = (began.elapsed() - took).as_micros() as u64,
            "cold start"
        );
        match result {
            Ok(_style) => Ok(instance),
            Err(SandboxError::Init { message, stack }) => {
                instance.kill();
                Err(InvokeError::InitFailed { message, stack })
            }
            Err(e) => {
                instance.kill();
                Err(InvokeError::InitFailed {
                    message: e.to_string(),
                    stack: None,
                })
            }
        }
    }
}

/// One call on the instance it was given, from its `invoke` until its
/// slot is given back.
struct Call {
    pools: Arc<Mutex<HashMap<PoolKey, Pool>>>,
    key: PoolKey,
    instance: Instance,
    id: u64,
    cold: bool,
    timeout: Duration,
    started: tokio::time::Instant,
}

impl Call {
    /// Runs the call until the head of its answer; its slot is given back
    /// then, or once the response body has all gone when it streams.
    async fn run(
        self,
        deadline_ms: u64,
        payload: Payload,
        body: RequestBody,
    ) -> Result<Invocation, InvokeError> {
        let Call { id, cold, .. } = self;
        let instance = &self.instance;
        let call = instance.invoke(id, deadline_ms, payload, body);
        let result = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                let logs = instance.abandon(id);
                instance.kill();
                Err(InvokeError::Timeout {
                    timeout: self.timeout,
                    logs,
                })
            }
            Ok((Ok(outcome), logs)) => {
                let mut inv = Invocation {
                    id,
                    outcome,
                    logs,
                    cold,
                    pid: instance.pid(),
                };
                // An answer gives its slot back with the end of its body.
                if let InvokeOutcome::Reply(reply) = &mut inv.outcome {
                    self.release_when_done(&mut reply.body);
                    return Ok(inv);
                }
                Ok(inv)
            }
            Ok((Err(e), logs)) => Err(InvokeError::Crashed {
                reason: match e {
                    SandboxError::Crashed(reason) => reason,
                    other => other.to_string(),
                },
                logs,
            }),
        };
        release(&self.pools, &self.key, &self.instance);
        result
    }

    /// Gives the slot back once the runtime is done with the response
    /// body (at once when it is already), and kills a runtime still
    /// sending it at the call's deadline.
    fn release_when_done(&self, body: &mut ResponseBody) {
        let (pools, key, instance) = (self.pools.clone(), self.key.clone(), self.instance.clone());
        if body.when_done(move || release(&pools, &key, &instance)) {
            return;
        }
        let Some(occupancy) = body.occupancy() else {
            return;
        };
        let (instance, deadline, timeout) = (
            self.instance.clone(),
            self.started + self.timeout,
            self.timeout,
        );
        tokio::spawn(async move {
            if tokio::time::timeout_at(deadline, occupancy).await.is_err() {
                instance.kill_because(&format!(
                    "the function did not finish its response within its timeout of {}s",
                    timeout.as_secs_f64()
                ));
            }
        });
    }
}

/// Gives back a call's slot on `instance`.
fn release(pools: &Mutex<HashMap<PoolKey, Pool>>, key: &PoolKey, instance: &Instance) {
    let mut pools = pools.lock().unwrap();
    let Some(pool) = pools.get_mut(key) else {
        // The version was retired while this call ran.
        end_when_settled(instance.clone());
        return;
    };
    let alive = instance.is_alive();
    if let Some(pos) = pool
        .slots
        .iter()
        .position(|s| same_instance(&s.instance, instance))
    {
        let slot = &mut pool.slots[pos];
        slot.inflight = slot.inflight.saturating_sub(1);
        slot.last_used = Instant::now();
        if slot.inflight == 0 && (!alive || pool.retired) {
            pool.slots.swap_remove(pos);
            if pool.retired {
                end_when_settled(instance.clone());
            }
        }
    }
    pool.freed.notify_waiters();
    if pool.retired && pool.is_empty() {
        pools.remove(key);
    }
}

/// An idle instance: when it was last used, its pool, its place there.
type IdleSlot = (Instant, PoolKey, usize);

/// What one namespace's pools hold.
struct Usage {
    /// Instances running or starting, and their memory (MiB).
    in_use: (u32, u64),
    /// Of those, the idle ones and their memory.
    idle: (u32, u64),
    /// The least recently used idle instance.
    coldest: Option<IdleSlot>,
}

impl Usage {
    /// What would be left with every idle instance ended.
    fn busy(&self) -> (u32, u64) {
        (self.in_use.0 - self.idle.0, self.in_use.1 - self.idle.1)
    }
}

/// Makes room for one more instance of `spec` within `quota` (see
/// [`Scheduler::make_room`]).
fn fit(
    pools: &mut HashMap<PoolKey, Pool>,
    spec: &FunctionSpec,
    scope: Scope<'_>,
    quota: Quota,
) -> Result<(), InvokeError> {
    loop {
        let usage = usage_of(pools, scope.namespace());
        let Some(why) = quota.refuses(scope, usage.in_use, spec.memory_mb) else {
            return Ok(());
        };
        if quota.refuses(scope, usage.busy(), spec.memory_mb).is_some() {
            return Err(scope.refused(why));
        }
        let Some((_, key, i)) = usage.coldest else {
            return Err(scope.refused(why));
        };
        if let Some(pool) = pools.get_mut(&key) {
            pool.slots.swap_remove(i).instance.kill();
        }
    }
}

/// What the pools of `namespace` (of all with `None`) hold.
fn usage_of(pools: &HashMap<PoolKey, Pool>, namespace: Option<&str>) -> Usage {
    let mut usage = Usage {
        in_use: (0, 0),
        idle: (0, 0),
        coldest: None,
    };
    for (key, pool) in pools
        .iter()
        .filter(|(key, _)| namespace.is_none_or(|ns| key.0 == ns))
    {
        let n = pool.slots.len() as u32 + pool.starting;
        let memory = u64::from(pool.memory_mb);
        usage.in_use.0 += n;
        usage.in_use.1 += u64::from(n) * memory;
        for (i, slot) in pool.slots.iter().enumerate() {
            if slot.inflight > 0 || slot.instance.background_pending() {
                continue;
            }
            usage.idle.0 += 1;
            usage.idle.1 += memory;
            if usage.coldest.as_ref().is_none_or(|c| slot.last_used < c.0) {
                usage.coldest = Some((slot.last_used, key.clone(), i));
            }
        }
    }
    usage
}

/// Kills a retired instance once the work its calls left running after
/// their answers ended (at most the runtime's bound), or now.
fn end_when_settled(instance: Instance) {
    if !instance.background_pending() {
        instance.kill();
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                instance.background_settled().await;
                instance.kill();
            });
        }
        Err(_) => instance.kill(),
    }
}

fn same_instance(a: &Instance, b: &Instance) -> bool {
    a.ptr_eq(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_variable_names_never_values() {
        let spec = FunctionSpec {
            namespace: "a".into(),
            name: "f".into(),
            version: 1,
            code_dir: PathBuf::from("/code"),
            entry: "index.mjs".into(),
            env: [("DB_PASSWORD".to_string(), "hunter2-value".to_string())].into(),
            timeout: Duration::from_secs(1),
            memory_mb: 128,
            concurrency: 1,
            max_body_bytes: 1024,
            keep_alive: Duration::from_secs(1),
            max_instances: 1,
            min_instances: 0,
            driver: None,
            runtime: None,
        };
        let shown = format!("{spec:?}");
        assert!(
            shown.contains("DB_PASSWORD") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_quota_counts_instances_and_their_memory() {
        let q = Quota {
            max_instances: 2,
            max_memory_mb: 512,
        };
        let a = Scope::Namespace("a");
        assert_eq!(q.refuses(a, (0, 0), 256), None);
        assert_eq!(q.refuses(a, (1, 256), 256), None);
        let full = q.refuses(a, (2, 512), 64).unwrap();
        assert!(full.contains("max_instances = 2"), "{full}");
        let heavy = q.refuses(a, (1, 256), 512).unwrap();
        assert!(heavy.contains("max_memory_mb = 512"), "{heavy}");
        let host = q.refuses(Scope::Host, (2, 0), 64).unwrap();
        assert!(host.starts_with("this host runs 2 instances"), "{host}");
        assert!(q.never_fits(513) && !q.never_fits(512));
    }
}
