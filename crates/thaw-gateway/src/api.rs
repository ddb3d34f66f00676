//! The control API under `/v1/`, and the router that puts every route
//! together.

use crate::errors::{invoke_error, ApiError};
use crate::platform::{Platform, Route};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use thaw_registry::LogQuery;
use thaw_sandbox::{InvokeOutcome, LogLine};

pub fn router(platform: Arc<Platform>) -> Router {
    let control = Router::new()
        .route("/v1/functions", get(list_functions))
        .route(
            "/v1/functions/{name}",
            get(get_function)
                .put(crate::deploy::deploy)
                .delete(remove_function),
        )
        .route("/v1/functions/{name}/invoke", post(invoke_function))
        .route("/v1/functions/{name}/logs", get(function_logs))
        .route("/v1/runtime/upgrade", post(upgrade_runtime))
        .route(
            "/metrics",
            get(|State(p): State<Arc<Platform>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(&p),
                )
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .route_layer(middleware::from_fn_with_state(
            platform.clone(),
            require_token,
        ));
    let functions = Router::new()
        .route("/fn/{name}", any(crate::function_route::call))
        .route("/fn/{name}/", any(crate::function_route::call))
        .route("/fn/{name}/{*rest}", any(crate::function_route::call))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(control)
        .merge(functions)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such route: functions are under /fn/{name}/, the API under /v1/",
            )
        })
        .with_state(platform)
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(platform): State<Arc<Platform>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same_secret(t.trim().as_bytes(), platform.token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API token: send `Authorization: Bearer <token>`; \
                 the CLI reads THAW_TOKEN or the `token` file in the data directory",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            resp
        }
    }
}

/// The public URL of a function, as seen by the client that asked.
pub fn function_url(headers: &HeaderMap, platform: &Platform, name: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| platform.config.listen.to_string());
    format!("http://{host}/fn/{name}")
}

pub fn describe(route: &Route, platform: &Platform, headers: &HeaderMap) -> Value {
    let v = &route.version;
    let stats = platform.scheduler.stats(&v.function);
    json!({
        "name": v.function,
        "version": v.id,
        "url": function_url(headers, platform, &v.function),
        "bundle": v.bundle,
        "entry": v.entry,
        "settings": v.settings,
        "deployed_ms": v.created_ms,
        "instances": stats,
    })
}

async fn list_functions(State(p): State<Arc<Platform>>, headers: HeaderMap) -> Json<Value> {
    let all: Vec<Value> = p
        .routes()
        .iter()
        .map(|r| describe(r, &p, &headers))
        .collect();
    Json(json!({ "functions": all }))
}

async fn get_function(
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let route = p.route(&name).ok_or_else(|| ApiError::not_found(&name))?;
    Ok(Json(describe(&route, &p, &headers)))
}

async fn remove_function(
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _deploying = p.deploy_lock.lock().await;
    let registry = p.registry.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || registry.remove(&n))
        .await
        .map_err(ApiError::internal)??;
    p.remove_route(&name);
    Ok(Json(json!({ "removed": name })))
}

pub fn log_json(l: &LogLine) -> Value {
    json!({ "stream": l.stream.as_str(), "line": l.line, "ts_ms": l.ts_ms })
}

/// `thaw invoke`: the body is the event, any JSON value.
async fn invoke_function(
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let route = p.route(&name).ok_or_else(|| ApiError::not_found(&name))?;
    if body.len() > p.config.max_request_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the event is {} bytes; the limit is {}",
                body.len(),
                p.config.max_request_bytes
            ),
        ));
    }
    let event: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the event is not valid JSON: {e}"),
            )
        })?
    };
    let started = std::time::Instant::now();
    let result = p
        .scheduler
        .invoke(&route.spec, thaw_protocol::Payload::Event(event))
        .await;
    let (outcome, cold) = match &result {
        Ok(inv) => (
            match inv.outcome {
                InvokeOutcome::Reply(_) => "ok",
                InvokeOutcome::HandlerError { .. } => "handler_error",
            },
            Some(inv.cold),
        ),
        Err(e) => (invoke_error(e).code, None),
    };
    p.metrics.record(&name, outcome, cold, started.elapsed());
    let out = match result {
        Ok(inv) => {
            let logs: Vec<Value> = inv.logs.iter().map(log_json).collect();
            let mut out = json!({
                "function": name,
                "version": route.version.id,
                "invocation": inv.id,
                "cold": inv.cold,
                "logs": logs,
            });
            match inv.outcome {
                InvokeOutcome::Reply(reply) => {
                    out["status"] = json!(reply.status);
                    out["headers"] = json!(reply.headers);
                    match String::from_utf8(reply.body) {
                        Ok(text) => out["body"] = json!(text),
                        Err(e) => {
                            out["body_base64"] =
                                json!(base64::engine::general_purpose::STANDARD
                                    .encode(e.into_bytes()))
                        }
                    }
                }
                InvokeOutcome::HandlerError {
                    name: error_name,
                    message,
                    stack,
                } => {
                    out["error"] = json!({
                        "code": "handler_error",
                        "name": error_name,
                        "message": message,
                        "stack": stack,
                    });
                }
            }
            (StatusCode::OK, Json(out)).into_response()
        }
        Err(e) => {
            let err = invoke_error(&e);
            let logs: Vec<Value> = match &e {
                thaw_scheduler::InvokeError::Timeout { logs, .. }
                | thaw_scheduler::InvokeError::Crashed { logs, .. } => {
                    logs.iter().map(log_json).collect()
                }
                _ => Vec::new(),
            };
            let mut body = err.body();
            body["logs"] = json!(logs);
            (err.status, Json(body)).into_response()
        }
    };
    Ok(out)
}

#[derive(Deserialize)]
struct LogParams {
    after: Option<i64>,
    invocation: Option<u64>,
    limit: Option<u32>,
}

async fn function_logs(
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    Query(q): Query<LogParams>,
) -> Result<Json<Value>, ApiError> {
    if p.route(&name).is_none() {
        return Err(ApiError::not_found(&name));
    }
    let query = LogQuery {
        after: q.after,
        invocation: q.invocation,
        limit: q.limit.unwrap_or(100),
    };
    let registry = p.registry.clone();
    let records = tokio::task::spawn_blocking(move || registry.logs(&name, &query))
        .await
        .map_err(ApiError::internal)??;
    let next = records.last().map(|r| r.seq).or(q.after).unwrap_or(0);
    Ok(Json(json!({ "logs": records, "next": next })))
}

/// `POST /v1/runtime/upgrade`: see `Platform::upgrade_runtime`.
async fn upgrade_runtime(State(p): State<Arc<Platform>>) -> Result<Json<Value>, ApiError> {
    let done = p.upgrade_runtime().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "upgrade_failed",
            format!("the runtime was not upgraded: {e:#}"),
        )
    })?;
    let drivers: Vec<Value> = done
        .iter()
        .map(|u| {
            json!({
                "driver": u.driver,
                "before": u.change.before,
                "after": u.change.after,
                "changed": u.change.changed(),
                "replaced_waiting": u.replaced,
            })
        })
        .collect();
    Ok(Json(json!({ "drivers": drivers })))
}
