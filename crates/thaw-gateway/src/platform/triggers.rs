//! Calls without a waiting caller: the worker that fires cron schedules
//! and runs accepted async calls from the registry's queue.
//!
//! Each turn, the worker first fires the schedules whose tick has come
//! (`Registry::fire_schedules`: one async call per tick, accepted with the
//! schedule moved on in one transaction), then takes due calls.
//!
//! The queue lives in the registry (`thaw-registry/src/calls.rs`): this
//! worker claims what is due, runs each attempt through the same path as
//! an HTTP call (`Platform::resolve`, `Platform::call`: the function's own
//! instances, its limits and its namespace's), and hands the outcome back
//! for the registry to decide: done, retry after a backoff, or dead letter.
//! An attempt that found no room (the namespace or the host at its limit,
//! the function's own queue full) is deferred, not counted.

use crate::platform::Platform;
use crate::routes::{parse_target, Qualifier, Route};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_protocol::{HttpRequest, Payload, ScheduledCall};
use thaw_registry::{now_ms, Attempt, AttemptEnd, CallState, Claimed, Destination, FunctionId};
use thaw_sandbox::InvokeOutcome;
use thaw_scheduler::InvokeError;

/// Attempts running at once across the platform. Each waits in its
/// function's own queue like an HTTP call when the function is busy.
pub const ASYNC_CONCURRENCY: usize = 64;
/// Of those, what one namespace may hold: another's calls still find room
/// when one has a backlog.
const ASYNC_PER_NAMESPACE: u32 = 32;
/// How long recording an attempt's end is retried through registry errors.
const FINISH_RETRIES_FOR: Duration = Duration::from_secs(30);
/// How long an attempt that found no room waits before it is tried again.
const DEFERRED_MS: i64 = 1000;
/// The worker looks at the queue at least this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The text stored for a call's target: an alias name, or a version number.
pub(crate) fn target_text(q: &Qualifier) -> String {
    match q {
        Qualifier::Alias(a) => a.clone(),
        Qualifier::Version(n) => n.to_string(),
    }
}

fn qualifier_of(target: &str) -> Qualifier {
    parse_target(&format!("_@{target}")).1
}

/// How an HTTP request to run later is stored: its head as the protocol
/// has it, and its body as base64 in `body` (the stored form predates
/// bodies leaving the protocol's JSON, and calls stored then still run).
pub(crate) fn stored_request(
    request: &HttpRequest,
    body: &[u8],
) -> Result<serde_json::Value, serde_json::Error> {
    use base64::Engine as _;
    let mut stored = serde_json::to_value(request)?;
    stored["body"] = base64::engine::general_purpose::STANDARD
        .encode(body)
        .into();
    Ok(stored)
}

/// The protocol payload a stored call carries, and a request's body;
/// `id` is the call's own.
pub(crate) fn payload_of(
    kind: &str,
    mut payload: serde_json::Value,
    id: &str,
) -> Result<(Payload, Vec<u8>), String> {
    use base64::Engine as _;
    if kind == "scheduled" {
        payload["invocation"] = id.into();
    }
    match kind {
        "event" => Ok((Payload::Event(payload), Vec::new())),
        "request" => {
            let body = match payload.get("body") {
                Some(serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("the stored request's body is not base64: {e}"))?,
                _ => Vec::new(),
            };
            serde_json::from_value::<HttpRequest>(payload)
                .map(|r| (Payload::Request(r), body))
                .map_err(|e| format!("the stored request cannot be read: {e}"))
        }
        "scheduled" => serde_json::from_value::<ScheduledCall>(payload)
            .map(|s| (Payload::Scheduled(s), Vec::new()))
            .map_err(|e| format!("the stored schedule tick cannot be read: {e}")),
        other => Err(format!("unknown kind of call `{other}`")),
    }
}

/// How a run ended, for the registry and the metrics.
struct Ran {
    end: AttemptEnd,
    /// `ok`, `handler_error`, ... as counted in the metrics.
    outcome: &'static str,
    version: Option<i64>,
    run_id: Option<u64>,
    /// Whether it started its instance; `None` when it reached none.
    cold: Option<bool>,
    logs: Vec<String>,
}

fn lines(logs: &[thaw_sandbox::LogLine]) -> Vec<String> {
    logs.iter()
        .map(|l| format!("{} {}", l.stream.as_str(), l.line))
        .collect()
}

fn failed(outcome: &'static str, error: String) -> AttemptEnd {
    AttemptEnd::Failed {
        outcome: outcome.into(),
        error,
        retry: true,
    }
}

/// The result kept for a successful attempt: the answer's body as JSON
/// when it is JSON, else as text (or base64 when not UTF-8), with the
/// status for HTTP-shaped answers.
fn result_of(reply: &thaw_sandbox::Reply<Vec<u8>>, kind: &str) -> serde_json::Value {
    use base64::Engine as _;
    let body = match std::str::from_utf8(&reply.body) {
        Ok(text) => serde_json::from_str(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_string())),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(&reply.body)
        }),
    };
    if kind == "request" {
        serde_json::json!({ "status": reply.status, "body": body })
    } else {
        body
    }
}

impl Platform {
    /// Starts the worker: first it puts back calls a stopped thaw left
    /// running, then it runs what is due, waking when a call is accepted.
    pub(crate) fn spawn_async_worker(self: &Arc<Self>) {
        let platform = Arc::downgrade(self);
        let wake = self.async_wake.clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(ASYNC_CONCURRENCY));
        let registry = self.registry.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || registry.recover_calls(now_ms())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!("{n} async calls were running when thaw stopped: queued again")
                }
                Ok(Err(e)) => tracing::error!("could not recover running async calls: {e}"),
                Err(e) => tracing::error!("could not recover running async calls: {e}"),
            }
            let mut last_prune = Instant::now() - Duration::from_secs(3600);
            loop {
                let Some(p) = platform.upgrade() else { return };
                if p.cluster().is_some_and(|c| !c.serving()) {
                    // Without a lease, ticks and calls are the others' to
                    // take: whatever this worker claimed now they would
                    // run again once its lease is seen lapsed.
                    drop(p);
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
                let registry = p.registry.clone();
                match tokio::task::spawn_blocking(move || registry.fire_schedules(now_ms())).await {
                    Ok(Ok(fired)) => {
                        for f in &fired {
                            p.metrics
                                .record_tick(&f.function, f.call.is_some(), f.missed);
                        }
                    }
                    Ok(Err(e)) => tracing::error!("could not fire the schedules that are due: {e}"),
                    Err(e) => tracing::error!("the schedule firer failed: {e}"),
                }
                let free = permits.available_permits();
                let claimed = if free == 0 {
                    Vec::new()
                } else {
                    let (registry, worker) = (p.registry.clone(), p.worker_id.clone());
                    match tokio::task::spawn_blocking(move || {
                        registry.claim_calls(&worker, now_ms(), free as u32, ASYNC_PER_NAMESPACE)
                    })
                    .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::error!("could not take async calls from the queue: {e}");
                            Vec::new()
                        }
                        Err(e) => {
                            tracing::error!("the queue reader failed: {e}");
                            Vec::new()
                        }
                    }
                };
                let full = free > 0 && claimed.len() == free;
                for c in claimed {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        break;
                    };
                    let p = p.clone();
                    tokio::spawn(async move {
                        p.run_attempt(c).await;
                        drop(permit);
                        p.async_wake.notify_one();
                    });
                }
                if last_prune.elapsed() > Duration::from_secs(60) {
                    last_prune = Instant::now();
                    let registry = p.registry.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = registry.prune_calls(now_ms()) {
                            tracing::warn!("could not prune finished async calls: {e}");
                        }
                    });
                }
                let wait = if full {
                    Duration::ZERO
                } else {
                    let registry = p.registry.clone();
                    let due = tokio::task::spawn_blocking(move || {
                        let call = registry.next_call_due()?;
                        let tick = registry.next_schedule_due()?;
                        Ok::<_, thaw_registry::RegistryError>(match (call, tick) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        })
                    })
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
                    match due {
                        Some(at) => Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64),
                        None => IDLE_POLL,
                    }
                };
                drop(p);
                if !wait.is_zero() {
                    let _ = tokio::time::timeout(wait, wake.notified()).await;
                }
            }
        });
    }

    /// Runs one attempt of `c` and records how it ended.
    async fn run_attempt(&self, c: Claimed) {
        let started = Instant::now();
        let started_ms = now_ms();
        let route = self.resolve(&c.function, &qualifier_of(&c.target)).await;
        let (ran, route) = match route {
            Err(e) => (
                Ran {
                    end: failed("error", e.message.clone()),
                    outcome: e.code,
                    version: None,
                    run_id: None,
                    cold: None,
                    logs: Vec::new(),
                },
                None,
            ),
            Ok(route) => (self.run_on(&route, &c).await, Some(route)),
        };
        if let Some(route) = &route {
            self.record(route, ran.outcome, ran.cold, started.elapsed());
        }
        let attempt = Attempt {
            number: c.attempt,
            version: ran.version,
            run_id: ran.run_id,
            started_ms,
            finished_ms: now_ms(),
            outcome: String::new(),
            error: None,
            logs: ran.logs,
        };
        let destination = route
            .as_ref()
            .and_then(|r| self.destination_of(r, &c, &ran.end));
        let function = c.function.clone();
        let end = ran.end;
        let registry = self.registry.clone();
        let finished = tokio::task::spawn_blocking(move || {
            // The attempt ran: its end must be recorded, or the call stays
            // `running` under this worker's live lease. Through a short
            // outage of the registry, keep trying; past a long one this
            // worker's lease has lapsed, the call is queued again by the
            // others, and this late end would be ignored anyway.
            let give_up = Instant::now() + FINISH_RETRIES_FOR;
            let mut wait = Duration::from_millis(100);
            loop {
                match registry.finish_attempt(&c, &attempt, &end, destination.as_ref()) {
                    Err(e) if Instant::now() < give_up => {
                        tracing::warn!(
                            "could not record an attempt of call {} yet ({e}); trying again",
                            c.id
                        );
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    done => return done,
                }
            }
        })
        .await;
        match finished {
            Ok(Ok(Some(f))) => {
                self.metrics.record_attempt(&function, ran.outcome);
                if f.state == CallState::Dead {
                    self.metrics.record_dead(&function);
                }
                if f.destination_sent {
                    self.async_wake.notify_one();
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("could not record an attempt of {function}: {e}"),
            Err(e) => tracing::error!("recording an attempt of {function} failed: {e}"),
        }
    }

    async fn run_on(&self, route: &Route, c: &Claimed) -> Ran {
        let version = Some(route.version.number);
        let (payload, body) = match payload_of(&c.kind, c.payload.clone(), &c.id) {
            Ok(p) => p,
            Err(e) => {
                return Ran {
                    end: AttemptEnd::Failed {
                        outcome: "error".into(),
                        error: e,
                        retry: false,
                    },
                    outcome: "error",
                    version,
                    run_id: None,
                    cold: None,
                    logs: Vec::new(),
                }
            }
        };
        let inv = match self.call_buffered(route, payload, body).await {
            Ok(inv) => inv,
            Err(e) => {
                let code = crate::errors::invoke_error(&e).code;
                let (end, logs) = match &e {
                    InvokeError::QueueFull(_)
                    | InvokeError::QueueTimeout(_)
                    | InvokeError::QuotaReached(_)
                    | InvokeError::HostBudget(_) => (
                        AttemptEnd::Deferred {
                            reason: e.to_string(),
                            after_ms: DEFERRED_MS,
                        },
                        Vec::new(),
                    ),
                    InvokeError::Timeout { logs, .. } | InvokeError::Crashed { logs, .. } => {
                        (failed(code, e.to_string()), lines(logs))
                    }
                    _ => (failed(code, e.to_string()), Vec::new()),
                };
                return Ran {
                    end,
                    outcome: code,
                    version,
                    run_id: None,
                    cold: None,
                    logs,
                };
            }
        };
        let logs = lines(&inv.logs);
        let (end, outcome) = match &inv.outcome {
            InvokeOutcome::Reply(reply) if reply.status >= 500 => (
                failed(
                    "handler_error",
                    format!("the function answered with status {}", reply.status),
                ),
                "handler_error",
            ),
            InvokeOutcome::Reply(reply) => (
                AttemptEnd::Succeeded {
                    result: result_of(reply, &c.kind),
                },
                "ok",
            ),
            InvokeOutcome::HandlerError {
                name,
                message,
                no_retry,
                ..
            } => (
                AttemptEnd::Failed {
                    outcome: "handler_error".into(),
                    error: format!("{}: {message}", name.as_deref().unwrap_or("Error")),
                    retry: !no_retry,
                },
                "handler_error",
            ),
        };
        Ran {
            end,
            outcome,
            version,
            run_id: Some(inv.id),
            cold: Some(inv.cold),
            logs,
        }
    }

    /// The function `route`'s version names as its `destination`, with
    /// the events for either end of `c`.
    fn destination_of(&self, route: &Route, c: &Claimed, end: &AttemptEnd) -> Option<Destination> {
        let name = route.version.settings.destination.clone()?;
        let (response, error) = match end {
            AttemptEnd::Succeeded { result } => (result.clone(), serde_json::Value::Null),
            AttemptEnd::Failed { error, .. } => (serde_json::Value::Null, error.clone().into()),
            AttemptEnd::Deferred { .. } => return None,
        };
        let max_attempts = self
            .routes
            .get(&FunctionId::new(&c.function.namespace, &name))
            .and_then(|r| r.latest().map(|l| l.version.settings.retries + 1))
            .unwrap_or(thaw_registry::DEFAULT_RETRIES + 1);
        let event = |condition: &str| {
            serde_json::json!({
                "version": "1.0",
                "timestamp": format!("{}Z", thaw_api::utc_time(now_ms()).replace(' ', "T")),
                "requestContext": {
                    "requestId": c.id,
                    "namespace": c.function.namespace,
                    "function": c.function.name,
                    "functionVersion": route.version.number,
                    "condition": condition,
                    "approximateInvokeCount": c.attempt,
                },
                "requestPayload": c.payload,
                "responsePayload": response,
                "error": error,
            })
        };
        Some(Destination {
            function: name,
            max_attempts,
            on_success: event("Success"),
            on_failure: event("RetriesExhausted"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_back_as_they_were_given() {
        for q in [Qualifier::Alias("prod".into()), Qualifier::Version(7)] {
            assert_eq!(qualifier_of(&target_text(&q)), q);
        }
        assert_eq!(qualifier_of("latest"), Qualifier::Alias("latest".into()));
    }

    #[test]
    fn a_stored_call_of_an_unknown_kind_is_an_error_not_a_guess() {
        assert!(payload_of("event", serde_json::json!({ "a": 1 }), "x").is_ok());
        assert!(payload_of("request", serde_json::json!({ "a": 1 }), "x").is_err());
        assert!(payload_of("telepathy", serde_json::Value::Null, "x").is_err());
        let tick = serde_json::json!({
            "schedule": "s", "cron": "* * * * *", "timezone": "UTC",
            "scheduled_time_ms": 60000, "invocation": "",
        });
        match payload_of("scheduled", tick, "abc") {
            Ok((Payload::Scheduled(s), _)) => assert_eq!(s.invocation, "abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn results_are_json_when_they_can_be() {
        let reply = |body: &[u8]| thaw_sandbox::Reply {
            status: 200,
            headers: Vec::new(),
            body: body.to_vec(),
        };
        assert_eq!(
            result_of(&reply(b"{\"a\":1}"), "event"),
            serde_json::json!({ "a": 1 })
        );
        assert_eq!(result_of(&reply(b"hi"), "event"), serde_json::json!("hi"));
        assert_eq!(
            result_of(&reply(&[0xff]), "request"),
            serde_json::json!({ "status": 200, "body": { "base64": "/w==" } })
        );
    }
}
