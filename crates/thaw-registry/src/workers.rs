//! The workers sharing one registry, and their leases.
//!
//! Each `thaw up` on a shared database is a worker: it records itself
//! (its id, the address other workers reach it at, how many instances it
//! may run) and renews a lease every second or so. A worker whose lease
//! lapsed is out: no call is routed to it, and the async calls it was
//! running are taken over by the others ([`Registry::recover_calls`]).
//! Leases are compared with each worker's own clock, so the workers' clocks
//! must agree to well within a lease (NTP does).

use crate::db::{params, Kind, Row};
use crate::{Registry, RegistryError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Random, new at each start.
    pub id: String,
    /// Where the other workers reach it: `http://10.0.0.2:8787`.
    pub address: String,
    /// Instances it may run at once.
    pub capacity: u32,
    /// Instances busy at its last renewal.
    pub busy: u32,
    pub started_ms: i64,
    pub lease_until_ms: i64,
}

fn worker_from(r: &Row) -> Result<Worker, RegistryError> {
    Ok(Worker {
        id: r.get(0)?,
        address: r.get(1)?,
        capacity: r.get(2)?,
        busy: r.get(3)?,
        started_ms: r.get(4)?,
        lease_until_ms: r.get(5)?,
    })
}

impl Registry {
    /// Records `worker` with its lease (until `worker.lease_until_ms`),
    /// or renews it. Workers whose leases lapsed long ago are forgotten.
    pub fn renew_worker(&self, worker: &Worker) -> Result<(), RegistryError> {
        self.db.run(Kind::Write, |tx| {
            tx.execute(
                "INSERT INTO workers (id, address, capacity, busy, started_ms, lease_until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     capacity = excluded.capacity, busy = excluded.busy,
                     lease_until_ms = excluded.lease_until_ms",
                params![
                    worker.id,
                    worker.address,
                    worker.capacity,
                    worker.busy,
                    worker.started_ms,
                    worker.lease_until_ms
                ],
            )?;
            Ok(())
        })
    }

    /// The workers whose lease runs past `now`, by id.
    pub fn live_workers(&self, now: i64) -> Result<Vec<Worker>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT id, address, capacity, busy, started_ms, lease_until_ms FROM workers
                 WHERE lease_until_ms > ?1 ORDER BY id",
                params![now],
                worker_from,
            )
        })
    }

    /// A worker stopping cleanly gives its lease up at once, and records
    /// of workers gone for an hour go.
    pub fn leave(&self, id: &str, now: i64) -> Result<(), RegistryError> {
        self.db.run(Kind::Write, |tx| {
            tx.execute(
                "UPDATE workers SET lease_until_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            tx.execute(
                "DELETE FROM workers WHERE lease_until_ms < ?1",
                params![now - 3_600_000],
            )?;
            Ok(())
        })
    }
}
