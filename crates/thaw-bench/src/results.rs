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
    /// `thaw_pool_*` and `thaw_runtime_*` lines of `/metrics` at the end.
    pub pool_metrics: Vec<String>,
    pub elapsed: Duration,
}
