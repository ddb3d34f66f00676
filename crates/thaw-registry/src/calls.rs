//! Async calls: accepted durably, run at least once, retried with backoff,
//! kept as dead letters when every attempt failed.
//!
//! One table holds them all; a call's `state` says where it is:
//! `queued` (waiting for its first run, or replayed), `running` (an attempt
//! is under way), `failed` (an attempt failed; the next one waits for its
//! backoff), `succeeded`, and `dead` (every attempt failed: the function's
//! dead-letter queue). Each attempt that ended is a row of its own, with its
//! error and its console lines, so a dead letter tells its whole story
//! after the function's log has moved on.
//!
//! Every change of state is one transaction: a call accepted is on disk
//! before anyone hears of it, and an attempt's end, the retry or dead
//! letter it causes and the event it sends to a destination are written
//! together. A process that stops mid-attempt leaves the call `running`;
//! [`Registry::recover_calls`] puts such calls back in the queue at the next
//! start, without counting the interrupted attempt against the retries.

use crate::db::{params, Kind, Row, Tx};
use crate::{now_ms, FunctionId, Registry, RegistryError};
use serde::{Deserialize, Serialize};

/// Retries when `thaw.toml` says nothing: three attempts in all.
pub const DEFAULT_RETRIES: u32 = 2;
/// Most retries a function may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Bytes of an attempt's result kept (longer ones are cut and marked).
pub const RESULT_BYTES_KEPT: usize = 64 * 1024;
/// Console lines kept per attempt, and their bytes in all.
pub const ATTEMPT_LINES_KEPT: usize = 100;
pub const ATTEMPT_LOG_BYTES_KEPT: usize = 16 * 1024;
/// How long finished calls are kept: succeeded ones a week, dead letters
/// two weeks (or until replayed or purged).
pub const SUCCEEDED_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;
pub const DEAD_KEPT_MS: i64 = 14 * 24 * 3600 * 1000;
/// Finished calls kept per function and state, newest first, whatever their age.
pub const FINISHED_KEPT_PER_FUNCTION: i64 = 10_000;

/// The wait before retry number `attempt` (1 = the first retry): one
/// second, doubling, at most five minutes.
pub fn backoff_ms(attempt: u32) -> i64 {
    1000i64
        .saturating_mul(1i64 << attempt.saturating_sub(1).min(20))
        .min(300_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Queued,
    Running,
    Failed,
    Succeeded,
    Dead,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running => "running",
            CallState::Failed => "failed",
            CallState::Succeeded => "succeeded",
            CallState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<CallState> {
        Some(match s {
            "queued" => CallState::Queued,
            "running" => CallState::Running,
            "failed" => CallState::Failed,
            "succeeded" => CallState::Succeeded,
            "dead" => CallState::Dead,
            _ => return None,
        })
    }

    /// Not finished: counts against the namespace's `max_queued`.
    pub fn pending(self) -> bool {
        matches!(
            self,
            CallState::Queued | CallState::Running | CallState::Failed
        )
    }
}

/// A call to accept.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub function: FunctionId,
    /// An alias name, or `@N` for version N: resolved at each attempt, so
    /// a replay after a fix runs the fixed version.
    pub target: String,
    /// `request`, `event` or `scheduled`: what `payload` is.
    pub kind: String,
    pub payload: serde_json::Value,
    /// Who asked: `api`, `http`, `schedule:<name>`, `destination`, ...
    pub origin: String,
    /// Attempts in all: the function's retries plus one.
    pub max_attempts: u32,
    /// A call with the key of one already accepted is not accepted again
    /// (a schedule's tick).
    pub dedup: Option<String>,
}

/// A call as shown: everything about it but its payload for lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: String,
    pub function: FunctionId,
    pub target: String,
    pub kind: String,
    pub origin: String,
    pub state: CallState,
    /// Attempts that count against the retries.
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When the next attempt may start (queued and failed calls).
    pub next_attempt_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub payload: Option<serde_json::Value>,
    /// The worker running its attempt, while one runs (the id `/readyz`
    /// and `x-thaw-worker` give).
    pub worker: Option<String>,
    /// Oldest first.
    pub history: Vec<Attempt>,
}

/// One attempt that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// The version number it ran on (none if it reached no version).
    pub version: Option<i64>,
    /// The runtime invocation id its log lines carry.
    pub run_id: Option<u64>,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// `ok`, `handler_error`, `timeout`, `crashed`, `error` (thaw could not
    /// run it), `deferred` (no room for it yet) or `interrupted` (thaw
    /// stopped); the last two do not count. Set from the [`AttemptEnd`].
    pub outcome: String,
    pub error: Option<String>,
    pub logs: Vec<String>,
}

/// A call taken from the queue for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub row: i64,
    pub id: String,
    pub function: FunctionId,
    pub target: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub origin: String,
    /// This attempt's number among those that count (1 = first).
    pub attempt: u32,
    pub max_attempts: u32,
    pub started_ms: i64,
    /// The worker running this attempt.
    pub worker: String,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum AttemptEnd {
    Succeeded {
        result: serde_json::Value,
    },
    /// The function failed (threw, timed out, crashed, answered 5xx);
    /// `retry: false` when it asked not to be retried.
    Failed {
        outcome: String,
        error: String,
        retry: bool,
    },
    /// The attempt never reached the function for a reason of the
    /// platform's (no room for an instance right now): not counted, tried
    /// again after `after_ms`.
    Deferred {
        reason: String,
        after_ms: i64,
    },
}

/// What [`Registry::finish_attempt`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub state: CallState,
    /// The destination event was accepted too.
    pub destination_sent: bool,
}

/// Where a finished call's outcome goes: another function of its
/// namespace, called async with the event for how the call ended.
#[derive(Debug, Clone)]
pub struct Destination {
    pub function: String,
    pub max_attempts: u32,
    /// Sent when the call succeeded.
    pub on_success: serde_json::Value,
    /// Sent when it went to the dead-letter queue.
    pub on_failure: serde_json::Value,
}

/// Per namespace: calls not yet finished, and when the oldest was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub namespace: String,
    pub pending: u64,
    pub oldest_created_ms: Option<i64>,
    pub dead: u64,
}

/// A filter for [`Registry::calls`].
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    pub state: Option<CallState>,
    /// Only calls accepted before this one (a page's cursor).
    pub before: Option<String>,
    pub limit: u32,
}

fn new_public_id() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// Cuts `text` to `max` bytes at a character boundary, marked.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!(
        "{} …[cut: {} bytes in all]",
        thaw_bundle::text_prefix(text, max),
        text.len()
    )
}

/// `result`, or a note saying it was too long to keep.
fn kept_result(result: &serde_json::Value) -> String {
    let text = result.to_string();
    if text.len() <= RESULT_BYTES_KEPT {
        return text;
    }
    serde_json::json!({ "thaw_result_cut": true, "bytes": text.len(), "start": cut(&text, 1024) })
        .to_string()
}

fn kept_logs(lines: &[String]) -> String {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for line in lines.iter().rev().take(ATTEMPT_LINES_KEPT) {
        let line = cut(line, 2048);
        bytes += line.len();
        if bytes > ATTEMPT_LOG_BYTES_KEPT {
            break;
        }
        kept.push(line);
    }
    if kept.len() < lines.len() {
        kept.push(format!(
            "[thaw: {} earlier lines of this attempt not kept]",
            lines.len() - kept.len()
        ));
    }
    kept.reverse();
    serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into())
}

const CALL_COLUMNS: &str = "c.id, c.public_id, f.namespace, f.name, c.target, c.kind, c.origin, c.state, \
     c.attempts, c.max_attempts, c.created_ms, c.updated_ms, c.run_at_ms, c.finished_ms, c.result, c.error, c.payload, c.worker";

fn call_row(r: &Row) -> Result<(i64, CallRecord), RegistryError> {
    let state: String = r.get(7)?;
    let state = CallState::parse(&state).unwrap_or(CallState::Queued);
    let json = |i: usize| -> Result<Option<serde_json::Value>, RegistryError> {
        Ok(r.get::<Option<String>>(i)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    };
    Ok((
        r.get(0)?,
        CallRecord {
            id: r.get(1)?,
            function: FunctionId {
                namespace: r.get(2)?,
                name: r.get(3)?,
            },
            target: r.get(4)?,
            kind: r.get(5)?,
            origin: r.get(6)?,
            state,
            attempts: r.get(8)?,
            max_attempts: r.get(9)?,
            created_ms: r.get(10)?,
            updated_ms: r.get(11)?,
            next_attempt_ms: matches!(state, CallState::Queued | CallState::Failed)
                .then(|| r.get(12))
                .transpose()?,
            finished_ms: r.get(13)?,
            result: json(14)?,
            error: r.get(15)?,
            payload: json(16)?,
            worker: (state == CallState::Running)
                .then(|| r.get::<Option<String>>(17))
                .transpose()?
                .flatten(),
            history: Vec::new(),
        },
    ))
}

fn attempts_of(tx: &mut Tx<'_>, row: i64) -> Result<Vec<Attempt>, RegistryError> {
    tx.map(
        "SELECT number, version, run_id, started_ms, finished_ms, outcome, error, logs
         FROM call_attempts WHERE call_id = ?1 ORDER BY number",
        params![row],
        |r| {
            let logs: String = r.get(7)?;
            Ok(Attempt {
                number: r.get(0)?,
                version: r.get(1)?,
                run_id: r.get::<Option<i64>>(2)?.map(|v| v as u64),
                started_ms: r.get(3)?,
                finished_ms: r.get(4)?,
                outcome: r.get(5)?,
                error: r.get(6)?,
                logs: serde_json::from_str(&logs).unwrap_or_default(),
            })
        },
    )
}

fn insert_attempt(
    tx: &mut Tx<'_>,
    row: i64,
    attempt: &Attempt,
    logs: &[String],
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO call_attempts (call_id, number, version, run_id, started_ms, finished_ms, outcome, error, logs)
         VALUES (?1, (SELECT COALESCE(MAX(number), 0) + 1 FROM call_attempts WHERE call_id = ?1),
                 ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            row,
            attempt.version,
            attempt.run_id.map(|v| v as i64),
            attempt.started_ms,
            attempt.finished_ms,
            attempt.outcome,
            attempt.error.as_deref().map(|e| cut(e, 8192)),
            kept_logs(logs)
        ],
    )?;
    Ok(())
}

impl Registry {
    /// Accepts a call: on disk when this returns. An unknown function is
    /// [`RegistryError::NotFound`]; a namespace at its `max_queued` is
    /// [`RegistryError::LimitReached`]; a `dedup` key seen before returns
    /// the call it named.
    pub fn enqueue(&self, call: &NewCall) -> Result<String, RegistryError> {
        self.db
            .run(Kind::Write, |tx| enqueue_in(tx, call, now_ms()))
    }

    /// Takes up to `limit` calls whose time has come, oldest first, and
    /// marks them running with their attempt counted. No namespace gets
    /// more than `per_namespace` running at once, so that one tenant's
    /// backlog does not hold every attempt while another's calls wait.
    pub fn claim_calls(
        &self,
        worker: &str,
        now: i64,
        limit: u32,
        per_namespace: u32,
    ) -> Result<Vec<Claimed>, RegistryError> {
        self.db.run(Kind::Queue, |tx| {
            let candidates: Vec<Claimed> = tx.map(
                "WITH running AS (
                     SELECT f.namespace AS ns, COUNT(*) AS n
                     FROM calls c JOIN functions f ON f.id = c.function_id
                     WHERE c.state = 'running' GROUP BY f.namespace
                 ), due AS (
                     SELECT c.id, c.public_id, f.namespace AS ns, f.name, c.target, c.kind, c.payload,
                            c.origin, c.attempts, c.max_attempts, c.run_at_ms,
                            ROW_NUMBER() OVER (PARTITION BY f.namespace ORDER BY c.run_at_ms, c.id) AS place
                     FROM calls c JOIN functions f ON f.id = c.function_id
                     WHERE c.state IN ('queued', 'failed') AND c.run_at_ms <= ?1
                 )
                 SELECT due.id, public_id, due.ns, name, target, kind, payload, origin, attempts, max_attempts
                 FROM due LEFT JOIN running ON running.ns = due.ns
                 WHERE due.place + COALESCE(running.n, 0) <= ?3
                 ORDER BY run_at_ms, due.id LIMIT ?2",
                params![now, limit, per_namespace],
                |r| {
                let payload: String = r.get(6)?;
                Ok(Claimed {
                    row: r.get(0)?,
                    id: r.get(1)?,
                    function: FunctionId {
                        namespace: r.get(2)?,
                        name: r.get(3)?,
                    },
                    target: r.get(4)?,
                    kind: r.get(5)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    origin: r.get(7)?,
                    attempt: r.get::<u32>(8)? + 1,
                    max_attempts: r.get(9)?,
                    started_ms: now,
                    worker: worker.to_string(),
                })
            })?;
            if candidates.is_empty() {
                return Ok(candidates);
            }
            // Another worker may have taken some of them since: those it
            // holds are skipped, those it finished are no longer due.
            let rows = candidates
                .iter()
                .map(|c| c.row.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let lock = tx.skip_locked();
            let free: std::collections::HashMap<i64, u32> = tx
                .map(
                    &format!(
                        "SELECT id, attempts FROM calls
                         WHERE id IN ({rows}) AND state IN ('queued', 'failed') AND run_at_ms <= ?1{lock}"
                    ),
                    params![now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .into_iter()
                .collect();
            let mut claimed = Vec::with_capacity(free.len());
            for mut c in candidates {
                let Some(attempts) = free.get(&c.row) else {
                    continue;
                };
                c.attempt = attempts + 1;
                tx.execute(
                    "UPDATE calls SET state = 'running', attempts = attempts + 1, updated_ms = ?2,
                         worker = ?3 WHERE id = ?1",
                    params![c.row, now, worker],
                )?;
                claimed.push(c);
            }
            Ok(claimed)
        })
    }

    /// When the next queued or failed call may run, if any waits.
    pub fn next_call_due(&self) -> Result<Option<i64>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.one(
                "SELECT MIN(run_at_ms) FROM calls WHERE state IN ('queued', 'failed')",
                params![],
                |r| r.get(0),
            )
        })
    }

    /// Records the end of `claimed`'s attempt and moves the call on: done,
    /// back to wait for a retry, or dead. With a `destination`, a finished
    /// call (succeeded or dead) sends it an event, in the same transaction.
    /// A call removed meanwhile (its function went) is left gone.
    pub fn finish_attempt(
        &self,
        claimed: &Claimed,
        attempt: &Attempt,
        end: &AttemptEnd,
        destination: Option<&Destination>,
    ) -> Result<Option<Finished>, RegistryError> {
        let now = attempt.finished_ms;
        self.db.run(Kind::Write, |tx| {
        // A call removed meanwhile (its function went), or taken over by
        // another worker after this one's lease lapsed: this attempt no
        // longer decides anything.
        let current: Option<(String, Option<String>)> = tx.opt(
            "SELECT state, worker FROM calls WHERE id = ?1",
            params![claimed.row],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        match current {
            Some((state, worker)) if state == "running" && worker.as_deref() == Some(&claimed.worker) => {}
            _ => return Ok(None),
        }
        let mut recorded = attempt.clone();
        (recorded.outcome, recorded.error) = match end {
            AttemptEnd::Succeeded { .. } => ("ok".into(), None),
            AttemptEnd::Failed { outcome, error, .. } => (outcome.clone(), Some(error.clone())),
            AttemptEnd::Deferred { reason, .. } => ("deferred".into(), Some(reason.clone())),
        };
        let attempt = &recorded;
        let state = match end {
            AttemptEnd::Succeeded { result } => {
                insert_attempt(tx, claimed.row, attempt, &attempt.logs)?;
                tx.execute(
                    "UPDATE calls SET state = 'succeeded', updated_ms = ?2, finished_ms = ?2,
                         result = ?3, error = NULL WHERE id = ?1",
                    params![claimed.row, now, kept_result(result)],
                )?;
                CallState::Succeeded
            }
            AttemptEnd::Failed { error, retry, .. } => {
                insert_attempt(tx, claimed.row, attempt, &attempt.logs)?;
                let error = cut(error, 8192);
                if *retry && claimed.attempt < claimed.max_attempts {
                    tx.execute(
                        "UPDATE calls SET state = 'failed', updated_ms = ?2, run_at_ms = ?3, error = ?4
                         WHERE id = ?1",
                        params![
                            claimed.row,
                            now,
                            now + backoff_ms(claimed.attempt),
                            error
                        ],
                    )?;
                    CallState::Failed
                } else {
                    tx.execute(
                        "UPDATE calls SET state = 'dead', updated_ms = ?2, finished_ms = ?2, error = ?3
                         WHERE id = ?1",
                        params![claimed.row, now, error],
                    )?;
                    CallState::Dead
                }
            }
            AttemptEnd::Deferred { after_ms, .. } => {
                insert_attempt(tx, claimed.row, attempt, &[])?;
                tx.execute(
                    "UPDATE calls SET state = 'queued',
                         attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                         updated_ms = ?2, run_at_ms = ?3 WHERE id = ?1",
                    params![claimed.row, now, now + after_ms],
                )?;
                return Ok(Some(Finished {
                    state: CallState::Queued,
                    destination_sent: false,
                }));
            }
        };
        let mut destination_sent = false;
        if let (Some(d), true) = (
            destination,
            matches!(state, CallState::Succeeded | CallState::Dead)
                && claimed.origin != "destination",
        ) {
            let event = if state == CallState::Succeeded {
                d.on_success.clone()
            } else {
                d.on_failure.clone()
            };
            let call = NewCall {
                function: FunctionId::new(&claimed.function.namespace, &d.function),
                target: crate::LATEST.into(),
                kind: "event".into(),
                payload: event,
                origin: "destination".into(),
                max_attempts: d.max_attempts,
                dedup: Some(format!("destination:{}", claimed.id)),
            };
            match enqueue_in(tx, &call, now) {
                Ok(_) => destination_sent = true,
                // A database error leaves the transaction unusable (on
                // PostgreSQL it is aborted): the whole finish fails and is
                // tried again. A refusal is the destination's, not ours.
                Err(e @ (RegistryError::Db(_) | RegistryError::Postgres(_) | RegistryError::Unavailable(_))) => {
                    return Err(e)
                }
                Err(e) => tracing::warn!(
                    "the outcome of call {} of {} could not go to its destination `{}`: {e}",
                    claimed.id,
                    claimed.function,
                    d.function
                ),
            }
        }
        Ok(Some(Finished {
            state,
            destination_sent,
        }))
        })
    }

    /// Calls left `running` by a worker that is gone (a thaw that stopped,
    /// or a worker sharing the database whose lease lapsed by `now`) go back
    /// to the queue, each with an `interrupted` attempt on record that does
    /// not count against its retries. Returns how many. One host calls it
    /// at start; workers sharing a database, every few seconds.
    pub fn recover_calls(&self, now: i64) -> Result<usize, RegistryError> {
        self.db.run(Kind::Write, |tx| {
            let rows: Vec<(i64, i64)> = tx.map(
                "SELECT id, updated_ms FROM calls WHERE state = 'running'
                   AND (worker IS NULL OR NOT EXISTS
                        (SELECT 1 FROM workers w WHERE w.id = calls.worker AND w.lease_until_ms > ?1))",
                params![now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for (row, started) in &rows {
                let attempt = Attempt {
                    number: 0,
                    version: None,
                    run_id: None,
                    started_ms: *started,
                    finished_ms: now,
                    outcome: "interrupted".into(),
                    error: Some(
                        "the worker running this attempt stopped or lost its lease; it does not count"
                            .into(),
                    ),
                    logs: Vec::new(),
                };
                insert_attempt(tx, *row, &attempt, &[])?;
                tx.execute(
                    "UPDATE calls SET state = 'queued', worker = NULL,
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                     updated_ms = ?2, run_at_ms = ?2 WHERE id = ?1",
                    params![row, now],
                )?;
            }
            Ok(rows.len())
        })
    }

    /// One call of `namespace`, with its attempts and payload.
    pub fn call(&self, namespace: &str, id: &str) -> Result<CallRecord, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            let found = tx.opt(
                &format!(
                    "SELECT {CALL_COLUMNS} FROM calls c JOIN functions f ON f.id = c.function_id
                     WHERE c.public_id = ?1 AND f.namespace = ?2"
                ),
                params![id, namespace],
                call_row,
            )?;
            let (row, mut call) =
                found.ok_or_else(|| RegistryError::NoSuch(format!("no call with id `{id}`")))?;
            call.history = attempts_of(tx, row)?;
            Ok(call)
        })
    }

    /// `function`'s calls, newest first, without payloads or attempts.
    pub fn calls(
        &self,
        function: &FunctionId,
        query: &CallQuery,
    ) -> Result<Vec<CallRecord>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            let function_row = Registry::existing_function_row(tx, function)?;
            let before: i64 = match &query.before {
                None => i64::MAX,
                Some(id) => tx
                    .opt(
                        "SELECT id FROM calls WHERE public_id = ?1 AND function_id = ?2",
                        params![id, function_row],
                        |r| r.get(0),
                    )?
                    .ok_or_else(|| RegistryError::NoSuch(format!("no call with id `{id}`")))?,
            };
            tx.map(
                &format!(
                    "SELECT {CALL_COLUMNS} FROM calls c JOIN functions f ON f.id = c.function_id
                     WHERE c.function_id = ?1 AND c.id < ?2
                       AND (CAST(?3 AS TEXT) IS NULL OR c.state = ?3)
                     ORDER BY c.id DESC LIMIT ?4"
                ),
                params![
                    function_row,
                    before,
                    query.state.map(CallState::as_str),
                    query.limit.clamp(1, 1000)
                ],
                |r| {
                    let (_, mut call) = call_row(r)?;
                    call.payload = None;
                    Ok(call)
                },
            )
        })
    }

    /// Puts dead letters of `function` back in the queue (those named, or
    /// all), their retries renewed; returns how many.
    pub fn replay_dead(
        &self,
        function: &FunctionId,
        ids: Option<&[String]>,
    ) -> Result<usize, RegistryError> {
        self.on_dead(function, ids, |tx, row, now| {
            tx.execute(
                "UPDATE calls SET state = 'queued', attempts = 0, run_at_ms = ?2, updated_ms = ?2,
                     finished_ms = NULL WHERE id = ?1",
                params![row, now],
            )
        })
    }

    /// Forgets dead letters of `function` (those named, or all).
    pub fn purge_dead(
        &self,
        function: &FunctionId,
        ids: Option<&[String]>,
    ) -> Result<usize, RegistryError> {
        self.on_dead(function, ids, |tx, row, _| {
            tx.execute("DELETE FROM calls WHERE id = ?1", params![row])
        })
    }

    fn on_dead(
        &self,
        function: &FunctionId,
        ids: Option<&[String]>,
        each: impl Fn(&mut Tx<'_>, i64, i64) -> Result<usize, RegistryError>,
    ) -> Result<usize, RegistryError> {
        let now = now_ms();
        self.db.run(Kind::Write, |tx| {
            let function_row = Registry::existing_function_row(tx, function)?;
            let rows: Vec<i64> = match ids {
                None => tx.map(
                    "SELECT id FROM calls WHERE function_id = ?1 AND state = 'dead' ORDER BY id",
                    params![function_row],
                    |r| r.get(0),
                )?,
                Some(ids) => {
                    let mut rows = Vec::new();
                    for id in ids {
                        let row: Option<(i64, String)> = tx.opt(
                            "SELECT id, state FROM calls WHERE function_id = ?1 AND public_id = ?2",
                            params![function_row, id],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        match row {
                            None => {
                                return Err(RegistryError::NoSuch(format!(
                                    "`{}` has no call with id `{id}`",
                                    function.name
                                )))
                            }
                            Some((_, state)) if state != "dead" => {
                                return Err(RegistryError::Conflict(format!(
                                    "call `{id}` is {state}, not in the dead-letter queue"
                                )))
                            }
                            Some((row, _)) => rows.push(row),
                        }
                    }
                    rows
                }
            };
            for row in &rows {
                each(tx, *row, now)?;
            }
            Ok(rows.len())
        })
    }

    /// Per namespace: unfinished calls, the oldest one's age, dead letters.
    pub fn queue_depths(&self) -> Result<Vec<QueueDepth>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT f.namespace,
                        COUNT(*) FILTER (WHERE c.state IN ('queued', 'running', 'failed')),
                        MIN(CASE WHEN c.state IN ('queued', 'running', 'failed') THEN c.created_ms END),
                        COUNT(*) FILTER (WHERE c.state = 'dead')
                 FROM calls c JOIN functions f ON f.id = c.function_id
                 GROUP BY f.namespace ORDER BY f.namespace",
                params![],
                |r| {
                    Ok(QueueDepth {
                        namespace: r.get(0)?,
                        pending: r.get::<i64>(1)? as u64,
                        oldest_created_ms: r.get(2)?,
                        dead: r.get::<i64>(3)? as u64,
                    })
                },
            )
        })
    }

    /// Forgets finished calls past their retention; returns how many.
    pub fn prune_calls(&self, now: i64) -> Result<usize, RegistryError> {
        self.db.run(Kind::Write, |tx| {
            let mut n = tx.execute(
                "DELETE FROM calls WHERE (state = 'succeeded' AND finished_ms < ?1)
                OR (state = 'dead' AND finished_ms < ?2)",
                params![now - SUCCEEDED_KEPT_MS, now - DEAD_KEPT_MS],
            )?;
            for state in ["succeeded", "dead"] {
                let crowded: Vec<i64> = tx.map(
                    "SELECT function_id FROM calls WHERE state = ?1
                 GROUP BY function_id HAVING COUNT(*) > ?2",
                    params![state, FINISHED_KEPT_PER_FUNCTION],
                    |r| r.get(0),
                )?;
                for function_row in crowded {
                    n += tx.execute(
                        "DELETE FROM calls WHERE function_id = ?1 AND state = ?2 AND id <= (
                       SELECT id FROM calls WHERE function_id = ?1 AND state = ?2
                       ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                        params![function_row, state, FINISHED_KEPT_PER_FUNCTION],
                    )?;
                }
            }
            Ok(n)
        })
    }
}

/// Accepts `call` inside `tx` (see [`Registry::enqueue`]).
pub(crate) fn enqueue_in(
    tx: &mut Tx<'_>,
    call: &NewCall,
    now: i64,
) -> Result<String, RegistryError> {
    if let Some(key) = &call.dedup {
        let seen: Option<String> = tx.opt(
            "SELECT public_id FROM calls WHERE dedup = ?1",
            params![key],
            |r| r.get(0),
        )?;
        if let Some(id) = seen {
            return Ok(id);
        }
    }
    let (function_row, max_queued): (i64, i64) = tx
        .opt(
            "SELECT f.id, n.max_queued FROM functions f JOIN namespaces n ON n.name = f.namespace
             WHERE f.namespace = ?1 AND f.name = ?2",
            params![call.function.namespace, call.function.name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .ok_or_else(|| RegistryError::NotFound(call.function.name.clone()))?;
    let pending: i64 = tx.one(
        "SELECT COUNT(*) FROM calls c JOIN functions f ON f.id = c.function_id
         WHERE f.namespace = ?1 AND c.state IN ('queued', 'running', 'failed')",
        params![call.function.namespace],
        |r| r.get(0),
    )?;
    if pending >= max_queued {
        return Err(RegistryError::LimitReached(format!(
            "namespace `{}` has {pending} async calls waiting or running, its limit (max_queued): \
             try again when some have finished",
            call.function.namespace
        )));
    }
    let id = new_public_id();
    tx.execute(
        "INSERT INTO calls (public_id, function_id, target, kind, payload, origin, state, attempts,
                            max_attempts, run_at_ms, created_ms, updated_ms, dedup)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8, ?8, ?8, ?9)",
        params![
            id,
            function_row,
            call.target,
            call.kind,
            call.payload.to_string(),
            call.origin,
            call.max_attempts.max(1),
            now,
            call.dedup
        ],
    )?;
    Ok(id)
}
