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
    pub memory: Vec<Memory>,
    pub microvm: Figure<Microvm>,
    /// `thaw_pool_*` and `thaw_runtime_*` lines of `/metrics` at the end.
    pub pool_metrics: Vec<String>,
    pub elapsed: Duration,
}
