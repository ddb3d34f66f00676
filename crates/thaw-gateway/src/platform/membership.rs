//! This worker's lease in a shared registry (see `cluster.rs`): renewed
//! every second with how busy the worker is; the live workers read back
//! for routing; async calls of workers whose lease lapsed taken over; and
//! calls refused here while the lease cannot be renewed.

use super::Platform;
use crate::cluster::{LEASE, RENEW_EVERY};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_registry::{now_ms, Worker};

/// Lease renewals between two looks for calls of lapsed workers.
const RECOVER_EVERY: u32 = 5;

impl Platform {
    /// Joins the workers sharing the registry, if it is shared: records
    /// this worker (reachable at `--advertise`, or at `listening`), reads
    /// who else is live, then keeps the lease renewed.
    pub(crate) async fn join_cluster(
        self: &Arc<Self>,
        listening: SocketAddr,
    ) -> anyhow::Result<()> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        let address = match &self.config.advertise {
            Some(a) => a.trim_end_matches('/').to_string(),
            None if listening.ip().is_unspecified() => bail!(
                "thaw listens on {listening}, which other workers cannot use to reach it: give the address they can with --advertise http://HOST:PORT"
            ),
            None => format!("http://{listening}"),
        };
        let uri: axum::http::Uri = address
            .parse()
            .with_context(|| format!("--advertise {address} is not an address"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            bail!("--advertise wants http://HOST:PORT, not {address}");
        }
        let capacity = self
            .scheduler
            .host_budget()
            .map(|q| q.max_instances)
            .unwrap_or(u32::MAX);
        let started_ms = now_ms();
        let renew = {
            let platform = Arc::downgrade(self);
            let (id, address) = (cluster.me().to_string(), address.clone());
            move |recover: bool| {
                let platform = platform.clone();
                let (id, address) = (id.clone(), address.clone());
                async move {
                    let p = platform.upgrade()?;
                    let busy = p.scheduler.busy_instances();
                    let me = Worker {
                        id,
                        address,
                        capacity,
                        busy,
                        started_ms,
                        lease_until_ms: now_ms() + LEASE.as_millis() as i64,
                    };
                    let registry = p.registry.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        registry.renew_worker(&me)?;
                        let now = now_ms();
                        if recover {
                            let n = registry.recover_calls(now)?;
                            if n > 0 {
                                tracing::info!(
                                    "{n} async calls of workers whose lease lapsed: queued again"
                                );
                            }
                        }
                        registry.live_workers(now)
                    })
                    .await;
                    Some((p, result))
                }
            }
        };
        let started = Instant::now();
        match renew(false).await {
            Some((_, Ok(Ok(members)))) => {
                cluster.set_members(members);
                cluster.set_serving(true);
            }
            Some((_, Ok(Err(e)))) => bail!("could not join the workers sharing the registry: {e}"),
            Some((_, Err(e))) => bail!("could not join the workers sharing the registry: {e}"),
            None => return Ok(()),
        }
        tracing::info!(
            "worker {} joined as {address}; {} live workers",
            cluster.me(),
            cluster.members().len()
        );
        tokio::spawn(async move {
            // When the lease last renewed was written from: it runs to
            // LEASE after that. This worker stops serving a renewal period
            // before, when the others may begin to take its functions.
            let mut renewed = started;
            let mut ticks = 0u32;
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let _renewing = cluster.renewing.lock().await;
                if cluster.has_left() {
                    return;
                }
                ticks += 1;
                // A renewal stuck on a vanished network counts as failed
                // once this worker must stop serving: the lease runs out
                // all the same.
                let stop_at = renewed + LEASE - RENEW_EVERY;
                let patience = stop_at
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(50), RENEW_EVERY * 2);
                let attempt_started = Instant::now();
                let attempt =
                    tokio::time::timeout(patience, renew(ticks.is_multiple_of(RECOVER_EVERY)))
                        .await;
                let outcome = match attempt {
                    Ok(None) => return,
                    Ok(Some((_, Ok(Ok(members))))) => Ok(members),
                    Ok(Some((_, Ok(Err(e))))) => Err(e.to_string()),
                    Ok(Some((_, Err(e)))) => Err(e.to_string()),
                    Err(_) => Err(format!("the registry did not answer within {patience:?}")),
                };
                match outcome {
                    Ok(members) => {
                        renewed = attempt_started;
                        cluster.set_members(members);
                        cluster.set_serving(true);
                    }
                    Err(why) => {
                        tracing::warn!("could not renew this worker's lease: {why}");
                        // Stop before the lease lapses, when the others
                        // begin to take this worker's functions.
                        if Instant::now() >= stop_at {
                            cluster.set_serving(false);
                        }
                    }
                }
            }
        });
        Ok(())
    }
}
