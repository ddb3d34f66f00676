//! What a run found, before it is written out.

use crate::load::Warm;
use crate::machine::Machine;
use crate::stats::Summary;
use std::time::Duration;

/// A figure, or why there is none.
#[derive(Debug, Clone)]
pub enum Figure<T> {
    Measured(T),
    Skipped(String),
    Failed(String),
}

impl<T> Figure<T> {
    pub fn measured(&self) -> Option<&T> {
        match self {
            Figure::Measured(t) => Some(t),
            _ => None,
        }
    }

    pub fn failure(&self) -> Option<&str> {
        match self {
            Figure::Failed(why) => Some(why),
            _ => None,
        }
    }

    pub fn from_result(r: crate::Result<T>) -> Figure<T> {
        match r {
            Ok(t) => Figure::Measured(t),
            Err(e) => Figure::Failed(error_chain(&e)),
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[derive(Debug, Clone)]
pub struct Cold {
    /// Latency of the first calls counted as cold.
    pub summary: Summary,
    /// First calls made.
    pub attempted: usize,
    /// thaw only: first calls the platform marked `x-thaw-start: cold`;
    /// only those are in `summary`.
    pub confirmed: Option<usize>,
    /// thaw only, when `/metrics` has the pool's counters: cold starts
    /// during the phase that took a pre-started runtime (hits) or started
    /// Node on the call's path (misses).
    pub pool_takes: Option<PoolTakes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTakes {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Thaw,
    /// The bare Node server every ratio is taken against.
    Floor,
    Peer,
}

#[derive(Debug, Clone)]
pub struct SystemResult {
    pub name: String,
    /// The name under the chart's bars.
    pub short: String,
    pub role: Role,
    /// What the cold column means for this system.
    pub cold_means: String,
    pub cold: Figure<Cold>,
    pub warm: Figure<Warm>,
    /// Every call is a cold one: the warm figures are the cold ones.
    pub warm_is_cold: bool,
    pub notes: Vec<String>,
}

/// Memory of the processes of one kind, each measured once while idle.
#[derive(Debug, Clone)]
pub struct Memory {
    pub what: String,
    /// PSS of each process, in bytes.
    pub pss: Vec<u64>,
    /// thaw's idle function instances under the process driver, which the
    /// microVM section sets its idle VMs beside.
    pub idle_instances: bool,
}

/// Where thaw's cold path spends its time: the steps of a runtime start
/// done by hand, outside the platform, with the platform's own command.
/// `init` and `first_invoke` are with the Lambda-style function.
#[derive(Debug, Clone)]
pub struct Breakdown {
    pub command: String,
    /// thaw runs its runtimes in a jail, which the steps timed by hand
    /// leave out.
    pub jailed: bool,
    /// Spawn of Node with the shim until its `ready` frame.
    pub ready: Summary,
    /// `init` sent until `init_ok`: the function's module imported.
    pub init: Summary,
    /// `invoke` sent until `result`: the first call.
    pub first_invoke: Summary,
    /// `init` and first call again with the fetch-style function.
    pub fetch: Option<(Summary, Summary)>,
}

/// The microVM driver's mechanism: VMs booted from scratch against VMs
/// restored from a template, each to its first answer, and the memory of
/// idle restored VMs.
#[derive(Debug, Clone)]
pub struct Microvm {
    /// "TCG" or "KVM", as the driver's probe chose, and why.
    pub accel: String,
    pub accel_reason: String,
    /// Whether QEMU ran in thaw's jail (as `thaw up` runs it as root), and
    /// if not, why.
    pub jail: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
    pub image_id: String,
    pub kernel_release: String,
    pub initramfs_bytes: u64,
    pub guest_memory_mib: u32,
    /// QEMU started until the runtime's `ready`.
    pub boot_ready: Summary,
    /// QEMU started until the answer to the first call (`init` of the
    /// function in the image, then one `invoke`).
    pub boot_answer: Summary,
    /// Making the template: one boot, then the snapshot.
    pub template_made: Duration,
    /// The template's device state (its RAM is a file of its own).
    pub template_state_bytes: u64,
    /// QEMU started from the template until the guest runs again.
    pub restore_running: Summary,
    /// ... and the function's code image attached and mounted.
    pub restore_attached: Summary,
    /// ... and the answer to the first call (`ready`, `init`, `invoke`).
    pub restore_answer: Summary,
    /// PSS of each idle restored VM's QEMU, in bytes.
    pub idle_pss: Vec<u64>,
}

impl Microvm {
    /// Boot to first answer over restore to first answer, at p50.
    pub fn speedup(&self) -> f64 {
        self.boot_answer.p50.as_secs_f64() / self.restore_answer.p50.as_secs_f64().max(1e-9)
    }
}

/// Namespace limits under a noisy neighbour: one tenant's calls measured
/// alone (phase A), then again while another tenant, held to a few
/// instances, is called by many more clients than it may serve (phase B).
#[derive(Debug, Clone)]
pub struct Tenants {
    /// quiet's clients in both phases, one keep-alive connection each.
    pub clients: usize,
    /// noisy's clients in phase B, calling back to back.
    pub noisy_clients: usize,
    /// noisy's `max_instances`.
    pub noisy_limit: u32,
    /// How long one call of noisy's function takes (a timer, not CPU).
    pub noisy_work: Duration,
    /// Measured length of each phase, after its unmeasured warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    /// quiet alone.
    pub alone: TenantPhase,
    /// quiet while noisy is hammered.
    pub beside: TenantPhase,
    pub noisy: Noisy,
}

/// quiet's calls in one phase.
#[derive(Debug, Clone)]
pub struct TenantPhase {
    /// Latency of every good call of every client.
    pub latency: Summary,
    /// Good answers per second, all clients together.
    pub rps: f64,
    /// Calls that did not answer 200 `hello world` (another status, a
    /// wrong body, a broken connection), and the first of them.
    pub failed: u64,
    pub first_failure: Option<String>,
    /// CPU used while the phase was measured.
    pub cpu: Cpu,
}

/// CPU used during a measured window, in cores: CPU seconds over wall
/// seconds (2.0 is two cores busy all the time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu {
    /// `thaw up` itself: gateway, scheduler, registry.
    pub thaw_up: f64,
    /// The processes `thaw up` started: runtimes (both tenants'
    /// instances, pre-started ones) and their jails.
    pub runtimes: f64,
    /// The bench's own process: its client threads.
    pub bench: f64,
}

/// noisy's answers while quiet's phase B was measured.
#[derive(Debug, Clone)]
pub struct Noisy {
    /// 200: calls its instances served.
    pub ok: u64,
    /// 429 `namespace_limit`: calls refused for its `max_instances`.
    pub limited: u64,
    /// Anything else, and the first of them.
    pub other: u64,
    pub first_other: Option<String>,
    /// The window they were counted in.
    pub seconds: f64,
    /// Most instances `GET /v1/namespaces/noisy` counted, polled during
    /// phase B; `None` when no poll answered.
    pub peak_instances: Option<u32>,
    pub polls: usize,
}

impl Noisy {
    pub fn total(&self) -> u64 {
        self.ok + self.limited + self.other
    }
}

impl Tenants {
    /// What makes the section fail: correctness, never speed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.noisy.limited == 0 {
            v.push(format!(
                "noisy (max_instances = {}) got no 429 namespace_limit from {} clients calling \
                 back to back ({} answers: {} of them 200, {} other{}): the namespace limit did not refuse anything",
                self.noisy_limit,
                self.noisy_clients,
                self.noisy.total(),
                self.noisy.ok,
                self.noisy.other,
                self.noisy
                    .first_other
                    .as_deref()
                    .map(|f| format!("; the first other: {f}"))
                    .unwrap_or_default()
            ));
        }
        for (phase, p) in [
            ("alone (phase A)", &self.alone),
            ("beside noisy (phase B)", &self.beside),
        ] {
            if p.failed > 0 {
                v.push(format!(
                    "quiet {phase}: {} call(s) did not answer 200 hello world; the first: {}",
                    p.failed,
                    p.first_failure.as_deref().unwrap_or("?")
                ));
            }
        }
        if let Some(peak) = self.noisy.peak_instances.filter(|p| *p > self.noisy_limit) {
            v.push(format!(
                "noisy ran {peak} instances at once, over its max_instances of {}",
                self.noisy_limit
            ));
        }
        v
    }
}

/// One large response, streamed: per system, the median run's time to
/// the first byte and to the last.
#[derive(Debug, Clone)]
pub struct Streaming {
    pub mib: usize,
    pub rows: Vec<StreamRow>,
}

#[derive(Debug, Clone)]
pub struct StreamRow {
    pub system: String,
    pub first_byte: Duration,
    pub whole: Duration,
}

impl StreamRow {
    pub fn mib_per_s(&self, mib: usize) -> f64 {
        mib as f64 / self.whole.as_secs_f64().max(1e-9)
    }
}

/// Two workers sharing a PostgreSQL registry: one function called through
/// its home and through the other worker, which forwards the call; and
/// many functions called through both workers in turn.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Calls landing on the function's home worker.
    pub home: Warm,
    /// Calls landing on the other worker, forwarded to the home.
    pub forwarded: Warm,
    /// Functions of the warm-hit phase, and its rounds after the first.
    pub functions: usize,
    pub rounds: usize,
    /// Calls of those rounds, those that found a warm instance, and those
    /// served by another worker than the one that served the first call.
    pub calls: u64,
    pub warm: u64,
    pub away_from_home: u64,
}

impl Cluster {
    pub fn warm_ratio(&self) -> f64 {
        self.warm as f64 / (self.calls as f64).max(1.0)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub command_line: String,
    /// The driver `thaw up` announced, e.g. "process, jailed".
    pub thaw_driver: String,
    pub machine: Machine,
    pub functions: usize,
    pub duration: Duration,
    pub connections: usize,
    pub cold_gap: Duration,
    pub systems: Vec<SystemResult>,
    pub breakdown: Figure<Breakdown>,
    /// A large response through thaw and from a bare Node server.
    pub streaming: Figure<Streaming>,
    pub memory: Vec<Memory>,
    pub microvm: Figure<Microvm>,
    /// Namespace limits under a noisy neighbour.
    pub tenants: Figure<Tenants>,
    /// Two workers sharing PostgreSQL: the forwarding hop and warm hits.
    pub cluster: Figure<Cluster>,
    /// `thaw_pool_*` and `thaw_runtime_*` lines of `/metrics` at the end.
    pub pool_metrics: Vec<String>,
    pub elapsed: Duration,
}
