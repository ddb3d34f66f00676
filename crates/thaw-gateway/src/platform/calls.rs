//! Operations on async calls and schedules: accept a call, read one or a
//! function's list, replay or purge dead letters; list, add and remove
//! schedules. Each is checked against the caller's key and namespace like
//! every other operation (`ops.rs`).

use super::triggers::target_text;
use super::Platform;
use crate::auth::{Caller, Need};
use crate::errors::ApiError;
use crate::routes::Qualifier;
use axum::http::StatusCode;
use thaw_api as view;
use thaw_protocol::Payload;
use thaw_registry::{CallQuery, CallRecord, FunctionId, NewCall, RegistryError, Schedule};

/// A call's status URL, from the server's base URL.
pub fn call_url(base: &str, namespace: &str, id: &str) -> String {
    format!("{base}/v1/namespaces/{namespace}/invocations/{id}")
}

fn call_view(c: CallRecord) -> view::CallView {
    view::CallView {
        id: c.id,
        namespace: c.function.namespace,
        function: c.function.name,
        target: c.target,
        kind: c.kind,
        origin: c.origin,
        state: c.state.as_str().to_string(),
        attempts: c.attempts,
        max_attempts: c.max_attempts,
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
        next_attempt_ms: c.next_attempt_ms,
        finished_ms: c.finished_ms,
        result: c.result,
        error: c.error,
        payload: c.payload,
        worker: c.worker,
        history: c
            .history
            .into_iter()
            .map(|a| view::AttemptView {
                number: a.number,
                version: a.version,
                invocation: a.run_id,
                started_ms: a.started_ms,
                finished_ms: a.finished_ms,
                outcome: a.outcome,
                error: a.error,
                logs: a.logs,
            })
            .collect(),
    }
}

fn schedule_view(s: Schedule) -> view::ScheduleView {
    view::ScheduleView {
        name: s.name,
        cron: s.cron,
        timezone: s.timezone,
        alias: s.alias,
        method: s.method,
        payload: s.payload,
        origin: s.origin,
        created_ms: s.created_ms,
        last_tick_ms: s.last_tick_ms,
        next_ms: s.next_ms,
        fired: s.fired,
        missed: s.missed,
    }
}

/// Reading a call: any role of its namespace may, the one that made it
/// (an invoke key) included.
fn allow_reading(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
    caller
        .allow(namespace, Need::Read)
        .or_else(|_| caller.allow(namespace, Need::Invoke))
}

impl Platform {
    /// Accepts a call of `f` to run later: stored before this returns (an
    /// HTTP request with its `body`, which other payloads do not have). The
    /// target must resolve now (an unknown function or alias is a 404, not
    /// a 202); each attempt resolves it again.
    pub async fn enqueue_call(
        &self,
        caller: Option<&Caller>,
        f: &FunctionId,
        qualifier: &Qualifier,
        payload: Payload,
        body: &[u8],
        base: &str,
    ) -> Result<view::CallAccepted, ApiError> {
        if let Some(caller) = caller {
            caller.allow(&f.namespace, Need::Invoke)?;
        }
        let route = self.resolve(f, qualifier).await?;
        let (kind, origin, payload) = match payload {
            Payload::Request(r) => ("request", "http", super::triggers::stored_request(&r, body)),
            Payload::Event(e) => ("event", "api", Ok(e)),
            Payload::Scheduled(s) => ("scheduled", "api", serde_json::to_value(s)),
        };
        let call = NewCall {
            function: f.clone(),
            target: target_text(qualifier),
            kind: kind.into(),
            payload: payload.map_err(ApiError::internal)?,
            origin: origin.into(),
            max_attempts: route.version.settings.retries + 1,
            dedup: None,
        };
        let id = self
            .blocking(move |r| r.enqueue(&call))
            .await
            .map_err(|e| match e.code {
                "namespace_limit" => {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.message)
                }
                _ => e,
            })?;
        self.async_wake.notify_one();
        Ok(view::CallAccepted {
            status_url: call_url(base, &f.namespace, &id),
            id,
            namespace: f.namespace.clone(),
            function: f.name.clone(),
            state: "queued".into(),
        })
    }

    /// One async call of `namespace`, with its payload and every attempt.
    pub async fn call_record(
        &self,
        caller: &Caller,
        namespace: &str,
        id: &str,
    ) -> Result<view::CallView, ApiError> {
        allow_reading(caller, namespace)?;
        let (namespace, id) = (namespace.to_string(), id.to_string());
        let call = self.blocking(move |r| r.call(&namespace, &id)).await?;
        Ok(call_view(call))
    }

    /// `f`'s async calls, newest first, filtered by state.
    pub async fn call_list(
        &self,
        caller: &Caller,
        f: &FunctionId,
        query: CallQuery,
    ) -> Result<view::CallList, ApiError> {
        allow_reading(caller, &f.namespace)?;
        let function = f.clone();
        let limit = query.limit.clamp(1, 1000);
        let calls = self
            .blocking(move |r| r.calls(&function, &CallQuery { limit, ..query }))
            .await?;
        let next = (calls.len() as u32 == limit)
            .then(|| calls.last().map(|c| c.id.clone()))
            .flatten();
        Ok(view::CallList {
            calls: calls.into_iter().map(call_view).collect(),
            next,
        })
    }

    /// Replays (`replay: true`) or purges `f`'s dead letters: those named,
    /// or all of them.
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        f: &FunctionId,
        ids: view::CallIds,
        replay: bool,
    ) -> Result<view::DeadLetters, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let function = f.clone();
        let count = self
            .blocking(move |r| -> Result<usize, RegistryError> {
                let ids = ids.ids.as_deref();
                if replay {
                    r.replay_dead(&function, ids)
                } else {
                    r.purge_dead(&function, ids)
                }
            })
            .await?;
        if replay && count > 0 {
            self.async_wake.notify_one();
        }
        Ok(view::DeadLetters {
            function: f.name.clone(),
            action: if replay { "replayed" } else { "purged" }.into(),
            count,
        })
    }

    /// `f`'s schedules, those of its `thaw.toml` and those of the API.
    pub async fn schedules(
        &self,
        caller: &Caller,
        f: &FunctionId,
    ) -> Result<view::ScheduleList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let function = f.clone();
        let list = self.blocking(move |r| r.schedules(&function)).await?;
        Ok(view::ScheduleList {
            function: f.name.clone(),
            schedules: list.into_iter().map(schedule_view).collect(),
        })
    }

    pub async fn add_schedule(
        &self,
        caller: &Caller,
        f: &FunctionId,
        req: view::NewSchedule,
    ) -> Result<view::ScheduleView, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let spec = thaw_bundle::ScheduleSpec {
            name: Some(req.name),
            cron: req.cron,
            timezone: req.timezone,
            alias: req.alias,
            method: req.method,
            payload: req.payload,
        };
        let function = f.clone();
        let added = self
            .blocking(move |r| r.add_schedule(&function, &spec))
            .await?;
        self.async_wake.notify_one();
        Ok(schedule_view(added))
    }

    pub async fn remove_schedule(
        &self,
        caller: &Caller,
        f: &FunctionId,
        name: &str,
    ) -> Result<view::Removed, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let (function, schedule) = (f.clone(), name.to_string());
        self.blocking(move |r| r.remove_schedule(&function, &schedule))
            .await?;
        Ok(view::Removed {
            removed: name.to_string(),
        })
    }
}
