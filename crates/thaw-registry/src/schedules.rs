//! Cron schedules: a function called at each tick, through an alias, as an
//! async call (`calls.rs`).
//!
//! A schedule comes from the `[[schedule]]` entries of the `thaw.toml` of
//! the version `latest` points at (origin `toml`: they follow deploys and
//! rollbacks), or from the API (origin `api`: they stay until removed). Each
//! row keeps the next tick it owes (`next_ms`). [`Registry::fire_schedules`]
//! accepts the call for the latest tick that has come and moves `next_ms`
//! past it in one transaction, so a tick is fired once, whatever stops when.
//! Ticks missed while thaw was down are not all run: the last of them is,
//! once, and the others are counted as missed.

use crate::calls::{enqueue_in, NewCall};
use crate::db::{params, Kind, Row, Tx};
use crate::{now_ms, FunctionId, Registry, RegistryError};
use serde::{Deserialize, Serialize};
use thaw_bundle::{ScheduleSpec, Settings, MAX_SCHEDULES};

/// A schedule as stored, with where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub function: FunctionId,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub alias: String,
    pub method: Option<String>,
    pub payload: Option<serde_json::Value>,
    /// `toml` or `api`.
    pub origin: String,
    pub created_ms: i64,
    /// The last tick a call was accepted for.
    pub last_tick_ms: Option<i64>,
    /// The next tick it will fire for.
    pub next_ms: Option<i64>,
    pub fired: u64,
    /// Ticks not run: passed while thaw was down (all but the last), or
    /// refused (the namespace's queue was full).
    pub missed: u64,
}

/// One tick fired by [`Registry::fire_schedules`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub function: FunctionId,
    pub schedule: String,
    pub tick_ms: i64,
    /// The call accepted for it; none when it could not be.
    pub call: Option<String>,
    /// Ticks before it that were skipped.
    pub missed: u64,
}

fn ts(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}

/// The first tick of `cron` in `tz` strictly after `after_ms`.
fn next_tick(cron: &str, timezone: &str, after_ms: i64) -> Option<i64> {
    let cron = thaw_cron::Cron::parse(cron).ok()?;
    let tz = thaw_cron::parse_time_zone(timezone).ok()?;
    cron.next_after(ts(after_ms)?, &tz)
        .map(|t| t.as_millisecond())
}

const SCHEDULE_COLUMNS: &str =
    "f.namespace, f.name, s.name, s.cron, s.timezone, s.alias, s.method, \
     s.payload, s.origin, s.created_ms, s.last_tick_ms, s.next_ms, s.fired, s.missed";

/// A schedule read from `r`, its columns ([`SCHEDULE_COLUMNS`]) starting
/// at `at`.
fn schedule_from(r: &Row, at: usize) -> Result<Schedule, RegistryError> {
    Ok(Schedule {
        function: FunctionId {
            namespace: r.get(at)?,
            name: r.get(at + 1)?,
        },
        name: r.get(at + 2)?,
        cron: r.get(at + 3)?,
        timezone: r.get(at + 4)?,
        alias: r.get(at + 5)?,
        method: r.get(at + 6)?,
        payload: r
            .get::<Option<String>>(at + 7)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        origin: r.get(at + 8)?,
        created_ms: r.get(at + 9)?,
        last_tick_ms: r.get(at + 10)?,
        next_ms: r.get(at + 11)?,
        fired: r.get::<i64>(at + 12)? as u64,
        missed: r.get::<i64>(at + 13)? as u64,
    })
}

fn insert_schedule(
    tx: &mut Tx<'_>,
    function_row: i64,
    name: &str,
    spec: &ScheduleSpec,
    origin: &str,
    now: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO schedules (function_id, name, cron, timezone, alias, method, payload, origin,
                                created_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            function_row,
            name,
            spec.cron,
            spec.timezone(),
            spec.alias(),
            spec.method,
            spec.payload.as_ref().map(|p| p.to_string()),
            origin,
            now,
            next_tick(&spec.cron, spec.timezone(), now)
        ],
    )?;
    Ok(())
}

/// Makes the function's `toml` schedules those of the `thaw.toml` of the
/// version `latest` points at. A schedule whose name, expression and time
/// zone are unchanged keeps its place (no tick fired twice or skipped); a
/// name an API schedule holds is left to it.
pub(crate) fn sync_toml_schedules(
    tx: &mut Tx<'_>,
    function_row: i64,
    now: i64,
) -> Result<(), RegistryError> {
    let settings: Option<String> = tx.opt(
        "SELECT v.settings FROM aliases a JOIN versions v ON v.id = a.version_id
         WHERE a.function_id = ?1 AND a.name = 'latest'",
        params![function_row],
        |r| r.get(0),
    )?;
    let declared: Vec<(String, ScheduleSpec)> = settings
        .and_then(|s| serde_json::from_str::<Settings>(&s).ok())
        .map(|s| {
            s.schedules
                .iter()
                .enumerate()
                .map(|(i, spec)| (spec.name_at(i), spec.clone()))
                .collect()
        })
        .unwrap_or_default();
    let existing: Vec<(String, String, String, String)> = tx.map(
        "SELECT name, cron, timezone, origin FROM schedules WHERE function_id = ?1",
        params![function_row],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    for (name, cron, timezone, origin) in &existing {
        if origin != "toml" {
            continue;
        }
        let same = declared
            .iter()
            .any(|(n, s)| n == name && &s.cron == cron && s.timezone() == timezone);
        if !same {
            tx.execute(
                "DELETE FROM schedules WHERE function_id = ?1 AND name = ?2",
                params![function_row, name],
            )?;
        }
    }
    for (name, spec) in &declared {
        match existing.iter().find(|(n, ..)| n == name) {
            Some((_, cron, timezone, origin))
                if origin == "toml" && cron == &spec.cron && timezone == spec.timezone() =>
            {
                tx.execute(
                    "UPDATE schedules SET alias = ?3, method = ?4, payload = ?5
                     WHERE function_id = ?1 AND name = ?2",
                    params![
                        function_row,
                        name,
                        spec.alias(),
                        spec.method,
                        spec.payload.as_ref().map(|p| p.to_string())
                    ],
                )?;
            }
            Some((_, _, _, origin)) if origin == "api" => tracing::warn!(
                "schedule `{name}` of thaw.toml is not used: a schedule made through the API has that name"
            ),
            _ => insert_schedule(tx, function_row, name, spec, "toml", now)?,
        }
    }
    Ok(())
}

impl Registry {
    /// Adds a schedule through the API. `spec` must be valid
    /// ([`ScheduleSpec::validate`]) and name itself.
    pub fn add_schedule(
        &self,
        function: &FunctionId,
        spec: &ScheduleSpec,
    ) -> Result<Schedule, RegistryError> {
        let name = spec
            .name
            .clone()
            .ok_or_else(|| RegistryError::Invalid("a schedule needs a name".into()))?;
        spec.validate(&format!("schedule `{name}`"))
            .map_err(RegistryError::Invalid)?;
        let now = now_ms();
        self.db.run(Kind::Write, |tx| {
        let function_row = Registry::existing_function_row(tx, function)?;
        let (count, taken): (i64, bool) = tx.one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE name = ?2) FROM schedules WHERE function_id = ?1",
            params![function_row, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if taken {
            return Err(RegistryError::Conflict(format!(
                "`{}` has a schedule named `{name}` already",
                function.name
            )));
        }
        if count as usize >= MAX_SCHEDULES {
            return Err(RegistryError::Invalid(format!(
                "`{}` has {count} schedules, the most a function may have",
                function.name
            )));
        }
        insert_schedule(tx, function_row, &name, spec, "api", now)
        })?;
        self.schedules(function)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RegistryError::Corrupt(format!("schedule `{name}` vanished")))
    }

    /// Removes a schedule made through the API (one from `thaw.toml` goes
    /// with the next deploy that no longer declares it).
    pub fn remove_schedule(&self, function: &FunctionId, name: &str) -> Result<(), RegistryError> {
        self.db.run(Kind::Write, |tx| {
            let origin: Option<String> = tx.opt(
                "SELECT s.origin FROM schedules s JOIN functions f ON f.id = s.function_id
             WHERE f.namespace = ?1 AND f.name = ?2 AND s.name = ?3",
                params![function.namespace, function.name, name],
                |r| r.get(0),
            )?;
            match origin.as_deref() {
                None => Err(RegistryError::NoSuch(format!(
                    "`{}` has no schedule named `{name}`",
                    function.name
                ))),
                Some("toml") => Err(RegistryError::Conflict(format!(
                    "schedule `{name}` is declared in thaw.toml: remove it there and deploy"
                ))),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM schedules WHERE name = ?3 AND function_id =
                       (SELECT id FROM functions WHERE namespace = ?1 AND name = ?2)",
                        params![function.namespace, function.name, name],
                    )?;
                    Ok(())
                }
            }
        })
    }

    /// `function`'s schedules, by name.
    pub fn schedules(&self, function: &FunctionId) -> Result<Vec<Schedule>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            Registry::existing_function_row(tx, function)?;
            tx.map(
                &format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules s JOIN functions f ON f.id = s.function_id
                     WHERE f.namespace = ?1 AND f.name = ?2 ORDER BY s.name"
                ),
                params![function.namespace, function.name],
                |r| schedule_from(r, 0),
            )
        })
    }

    /// When the next schedule is due, if any.
    pub fn next_schedule_due(&self) -> Result<Option<i64>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.one("SELECT MIN(next_ms) FROM schedules", params![], |r| {
                r.get(0)
            })
        })
    }

    /// Fires every schedule whose tick has come by `now`: for each, one
    /// async call for the latest tick in (last fired, now], accepted with
    /// the schedule moved past it, in one transaction.
    pub fn fire_schedules(&self, now: i64) -> Result<Vec<Fired>, RegistryError> {
        self.db.run(Kind::Write, |tx| {
            let due: Vec<(i64, i64, Schedule)> = tx.map(
                &format!(
                    "SELECT s.id, s.function_id, {SCHEDULE_COLUMNS}
                 FROM schedules s JOIN functions f ON f.id = s.function_id
                 WHERE s.next_ms IS NOT NULL AND s.next_ms <= ?1 ORDER BY s.next_ms"
                ),
                params![now],
                |r| Ok((r.get(0)?, r.get(1)?, schedule_from(r, 2)?)),
            )?;
            let mut fired = Vec::new();
            for (row, function_row, s) in due {
                let next_owed = s.next_ms.unwrap_or(now);
                let (tick, missed) = match (
                    thaw_cron::Cron::parse(&s.cron),
                    thaw_cron::parse_time_zone(&s.timezone),
                ) {
                    (Ok(cron), Ok(tz)) => {
                        let span = cron.missed(
                            ts(next_owed - 1).unwrap_or_default(),
                            ts(now).unwrap_or_default(),
                            &tz,
                        );
                        (
                            span.latest.map(|t| t.as_millisecond()).unwrap_or(next_owed),
                            span.count.saturating_sub(1),
                        )
                    }
                    _ => (next_owed, 0),
                };
                let retries: u32 = tx
                    .opt(
                        "SELECT v.settings FROM aliases a JOIN versions v ON v.id = a.version_id
                     WHERE a.function_id = ?1 AND a.name = 'latest'",
                        params![function_row],
                        |r| r.get::<String>(0),
                    )?
                    .and_then(|t| serde_json::from_str::<Settings>(&t).ok())
                    .map(|settings| settings.retries)
                    .unwrap_or(crate::DEFAULT_RETRIES);
                let call = NewCall {
                    function: s.function.clone(),
                    target: s.alias.clone(),
                    kind: "scheduled".into(),
                    payload: serde_json::json!({
                        "schedule": s.name,
                        "cron": s.cron,
                        "timezone": s.timezone,
                        "scheduled_time_ms": tick,
                        "invocation": "",
                        "method": s.method,
                        "payload": s.payload,
                    }),
                    origin: format!("schedule:{}", s.name),
                    max_attempts: retries + 1,
                    dedup: Some(format!("schedule:{row}:{tick}")),
                };
                let (call, refused) = match enqueue_in(tx, &call, now) {
                    Ok(id) => (Some(id), 0),
                    Err(RegistryError::LimitReached(why)) => {
                        tracing::warn!(
                            "schedule `{}` of {} skipped its tick: {why}",
                            s.name,
                            s.function
                        );
                        (None, 1)
                    }
                    Err(e) => return Err(e),
                };
                let next = next_tick(&s.cron, &s.timezone, tick.max(now));
                tx.execute(
                    "UPDATE schedules SET last_tick_ms = ?2, next_ms = ?3,
                     fired = fired + ?4, missed = missed + ?5 WHERE id = ?1",
                    params![
                        row,
                        tick,
                        next,
                        i64::from(call.is_some()),
                        (missed + refused) as i64
                    ],
                )?;
                fired.push(Fired {
                    function: s.function,
                    schedule: s.name,
                    tick_ms: tick,
                    call,
                    missed: missed + refused,
                });
            }
            Ok(fired)
        })
    }
}
