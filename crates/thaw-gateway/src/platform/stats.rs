//! What the dashboard reads beside the other views: a function's last
//! hour minute by minute (`GET {F}/stats`), and the host with its pools
//! (`GET /v1/platform`, admin only). Checked against the caller like every
//! operation (`ops.rs`).

use super::Platform;
use crate::auth::{Caller, Need};
use crate::errors::ApiError;
use thaw_api as view;
use thaw_registry::FunctionId;

impl Platform {
    /// `f`'s calls over the last hour: counted since `thaw up` started,
    /// forgotten with the function.
    pub fn stats(&self, caller: &Caller, f: &FunctionId) -> Result<view::FunctionStats, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        if self.routes.get(f).is_none() {
            return Err(ApiError::not_found(&f.name));
        }
        Ok(view::FunctionStats {
            namespace: f.namespace.clone(),
            function: f.name.clone(),
            minutes: self.metrics.last_hour(f, thaw_registry::now_ms()),
        })
    }

    /// The host: its driver, its budget and what instances hold of it,
    /// and each driver's pool of pre-started runtimes.
    pub async fn host(&self, caller: &Caller) -> Result<view::PlatformView, ApiError> {
        caller.allow("", Need::Admin)?;
        let namespaces = self.blocking(|r| r.namespaces()).await?;
        let in_use = namespaces
            .iter()
            .map(|ns| self.scheduler.usage(&ns.name))
            .fold(view::Usage::default(), |sum, (instances, memory_mb)| {
                view::Usage {
                    instances: sum.instances + u64::from(instances),
                    memory_mb: sum.memory_mb + memory_mb,
                }
            });
        let budget = self
            .scheduler
            .host_budget()
            .map(|q| view::Usage {
                instances: u64::from(q.max_instances),
                memory_mb: q.max_memory_mb,
            })
            .unwrap_or_default();
        let pools = self
            .scheduler
            .all_runtimes()
            .iter()
            .map(|pool| {
                let s = pool.snapshot();
                view::RuntimePoolView {
                    driver: pool.driver().name().to_string(),
                    runtime: pool.runtime().to_string(),
                    idle: s.idle,
                    starting: s.starting,
                    target: s.target,
                    hits: s.hits,
                    misses: s.misses,
                    started: s.started,
                    failed: s.failed,
                    runtime_bytes: s.runtime_bytes,
                }
            })
            .collect();
        let workers: Vec<view::WorkerView> = self
            .cluster
            .as_ref()
            .map(|c| c.members())
            .unwrap_or_default()
            .into_iter()
            .map(|w| view::WorkerView {
                id: w.id,
                address: w.address,
                busy: w.busy,
                capacity: w.capacity,
                started_ms: w.started_ms,
                lease_until_ms: w.lease_until_ms,
            })
            .collect();
        Ok(view::PlatformView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hosts: (workers.len() as u32).max(1),
            worker: self.cluster.as_ref().map(|c| c.me().to_string()),
            workers,
            driver: self.driver_summary.clone(),
            jailed: self.jailed,
            budget,
            in_use,
            namespaces: namespaces.len(),
            functions: self.routes.list(None).len(),
            pools,
            bench: self.bench_report(),
        })
    }

    /// The copy of the last `thaw bench` report in the data directory
    /// (`view::BENCH_REPORT`), at most 256 KiB of it.
    fn bench_report(&self) -> Option<view::BenchReport> {
        use std::io::Read as _;
        let path = self.config.data_dir.join(view::BENCH_REPORT);
        let file = std::fs::File::open(&path).ok()?;
        let written_ms = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let mut bytes = Vec::new();
        file.take(256 * 1024).read_to_end(&mut bytes).ok()?;
        Some(view::BenchReport {
            written_ms,
            markdown: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}
