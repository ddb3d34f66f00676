//! `ANY /fn/{name}/{path...}` (namespace `default`) and
//! `ANY /ns/{namespace}/fn/{name}/{path...}`: one HTTP request, one
//! invocation. `{name}` may carry a qualifier: `name@prod` goes through
//! the alias `prod`, `name@7` to version 7; plain `name` through `latest`.
//!
//! The request reaches the runtime with its method, raw path, raw query,
//! headers and body as they came (bodies as bytes, so binary survives).
//! Bodies stream both ways: the request's is read from the client as the
//! function takes it (up to the function's `max_body_mb`), the response's
//! reaches the client as the function writes it.
//! A request that asks to be run later (`x-thaw-invoke: async`, or
//! `Prefer: respond-async`) is stored as it came and answered `202` with
//! the call's id and status URL; it runs from the queue (`triggers.rs`).
//! The runtime's answer is checked before it becomes the response: it is
//! the function's output, and the function is not trusted.

use crate::cluster::{mark_refused, ClientIp, Landing, WORKER_HEADER};
use crate::errors::{invoke_error, ApiError};
use crate::platform::Platform;
use crate::routes::parse_target;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thaw_protocol::{HttpRequest, Payload};
use thaw_registry::{FunctionId, DEFAULT_NAMESPACE};
use thaw_sandbox::{BodyAborted, InvokeOutcome, RequestBody, ResponseBody};
use thaw_scheduler::InvokeError;

/// Request bodies up to this size are read whole before the call (one
/// frame with the invoke); larger ones, and those of unknown size, stream.
const READ_WHOLE_BELOW: u64 = 64 * 1024;

/// Headers that describe one hop of the connection, not the message: they
/// are neither passed to the function nor taken from its answer.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

pub async fn call(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    // With workers sharing a registry, the call may belong elsewhere
    // (`cluster.rs`).
    let request = match p.cluster() {
        Some(cluster) => match cluster
            .land(request, peer.ip(), p.max_request_bytes())
            .await
        {
            Ok(Landing::Here(request)) => request,
            Ok(Landing::Answered(response)) => return response,
            Err(e) => return e.into_response(),
        },
        None => request,
    };
    let mut response = match serve(p.clone(), peer, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(cluster) = p.cluster() {
        if let Ok(me) = HeaderValue::from_str(cluster.me()) {
            response.headers_mut().insert(WORKER_HEADER, me);
        }
    }
    response
}

/// Splits `/fn/{target}{rest}` or `/ns/{namespace}/fn/{target}{rest}`
/// into namespace, target and `rest`, keeping `rest` exactly as sent.
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let (namespace, after) = match path.strip_prefix("/fn/") {
        Some(after) => (DEFAULT_NAMESPACE, after),
        None => {
            let after = path.strip_prefix("/ns/")?;
            let (namespace, after) = after.split_once('/')?;
            (namespace, after.strip_prefix("fn/")?)
        }
    };
    match after.find('/') {
        Some(i) => Some((namespace, &after[..i], &after[i..])),
        None => Some((namespace, after, "/")),
    }
}

async fn serve(
    p: Arc<Platform>,
    peer: SocketAddr,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let (namespace, target, rest) =
        split_path(parts.uri.path()).ok_or_else(|| ApiError::not_found(""))?;
    let (name, qualifier) = parse_target(target);
    let route = p
        .resolve(&FunctionId::new(namespace, name), &qualifier)
        .await?;
    let limit = route.spec.max_body_bytes;
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let run_later = wants_async(&parts.headers);
    let payload = Payload::Request(HttpRequest {
        method: parts.method.as_str().to_string(),
        path: rest.to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        source_ip: parts
            .extensions
            .get::<ClientIp>()
            .map_or(peer.ip(), |c| c.0)
            .to_string(),
        host: host.clone(),
    });
    if let Some(prefer) = run_later {
        // A call stored to run later keeps its body in the registry: the
        // platform's bound on stored bodies applies too.
        let limit = limit.min(p.max_request_bytes() as u64);
        let body = read_whole(body, limit).await?;
        let accepted = p
            .enqueue_call(
                None,
                &FunctionId::new(namespace, name),
                &qualifier,
                payload,
                &body,
                &format!("http://{host}"),
            )
            .await?;
        return Ok(accepted_response(&accepted, prefer));
    }
    let overflowed = Arc::new(AtomicBool::new(false));
    let body = match declared {
        Some(0) => RequestBody::Empty,
        Some(n) if n < READ_WHOLE_BELOW => RequestBody::Full(read_whole(body, limit).await?),
        _ => RequestBody::Stream(streamed(body, limit, overflowed.clone())),
    };

    let inv = match p.call(&route, payload, body).await {
        Ok(inv) => inv,
        Err(e) => {
            let err = invoke_error(&e);
            p.record(&route, err.code, None, started.elapsed());
            let mut response = err.into_response();
            // No room here and the function never ran: a worker that
            // forwarded it may try another.
            if matches!(
                e,
                InvokeError::QueueFull(_)
                    | InvokeError::HostBudget(_)
                    | InvokeError::Unavailable(_)
            ) {
                mark_refused(&mut response);
            }
            return Ok(with_meta(response, None, None));
        }
    };
    let cold = Some(inv.cold);
    let id = Some(inv.id);
    if overflowed.load(Ordering::Acquire) {
        // The function was cut off from the rest of its body before it
        // answered: whatever it made of the start, the request was too big.
        p.record(&route, "too_large", cold, started.elapsed());
        return Ok(with_meta(too_large(limit).into_response(), id, cold));
    }
    let (outcome, response) = match inv.outcome {
        InvokeOutcome::Reply(reply) => match build_response(reply) {
            Ok(r) => ("ok", r),
            Err(e) => (e.code, e.into_response()),
        },
        InvokeOutcome::HandlerError {
            name: error_name,
            message,
            ..
        } => (
            "handler_error",
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "handler_error", message)
                .with(json!({ "name": error_name }))
                .into_response(),
        ),
    };
    p.record(&route, outcome, cold, started.elapsed());
    let mut response = with_meta(response, id, cold);
    response
        .headers_mut()
        .insert("x-thaw-version", HeaderValue::from(route.version.number));
    Ok(response)
}

/// The `202` of a call accepted to run later, here and through `POST
/// .../invoke`: the status URL in `Location`, the call's id in
/// `x-thaw-invocation`, and `Preference-Applied` when it was asked for
/// with `Prefer: respond-async` (`prefer`).
pub(crate) fn accepted_response(accepted: &thaw_api::CallAccepted, prefer: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, axum::Json(accepted)).into_response();
    let h = response.headers_mut();
    if let Ok(url) = HeaderValue::from_str(&accepted.status_url) {
        h.insert(header::LOCATION, url);
    }
    if let Ok(id) = HeaderValue::from_str(&accepted.id) {
        h.insert("x-thaw-invocation", id);
    }
    if prefer {
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    response
}

/// Whether the request asks to run later: `Some(true)` through `Prefer:
/// respond-async` (RFC 7240), `Some(false)` through `x-thaw-invoke: async`.
pub(crate) fn wants_async(headers: &axum::http::HeaderMap) -> Option<bool> {
    let thaw = headers
        .get_all("x-thaw-invoke")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"async"));
    if thaw {
        return Some(false);
    }
    let prefer = headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("respond-async")
            })
        })
    });
    prefer.then_some(true)
}

/// Marks a response with its invocation id and whether it was a cold start.
fn with_meta(mut response: Response, id: Option<u64>, cold: Option<bool>) -> Response {
    let h = response.headers_mut();
    if let Some(id) = id {
        h.insert("x-thaw-invocation", HeaderValue::from(id));
    }
    if let Some(cold) = cold {
        h.insert(
            "x-thaw-start",
            HeaderValue::from_static(if cold { "cold" } else { "warm" }),
        );
    }
    response
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "this function takes request bodies of at most {} MiB (`max_body_mb` in its thaw.toml)",
            limit / (1024 * 1024)
        ),
    )
}

async fn read_whole(body: Body, limit: u64) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large(limit))
}

/// The client's body as the runtime takes it, cut off with an error past
/// `limit` bytes (a body of unknown size announced none), which also sets
/// `overflowed`.
fn streamed(body: Body, limit: u64, overflowed: Arc<AtomicBool>) -> thaw_sandbox::BodyChunks {
    let mut seen = 0u64;
    Box::pin(body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| format!("the client's request body failed: {e}"))?;
        seen += chunk.len() as u64;
        if seen > limit {
            overflowed.store(true, Ordering::Release);
            return Err(format!(
                "the request body is larger than the {} MiB this function takes (`max_body_mb` in its thaw.toml)",
                limit / (1024 * 1024)
            ));
        }
        Ok(chunk)
    }))
}

/// A response body as the HTTP server sends it: each chunk as it comes;
/// one cut short ends the response abnormally (the client sees the
/// connection end before the body's end).
struct Streamed(ResponseBody);

impl futures_util::Stream for Streamed {
    type Item = Result<bytes::Bytes, BodyAborted>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_chunk(cx)
    }
}

fn bad_output(what: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_response",
        format!("the function answered with {what}"),
    )
}

fn build_response(reply: thaw_sandbox::Reply) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| bad_output(format!("an invalid status code {}", reply.status)))?;
    let mut response = Response::new(Body::from_stream(Streamed(reply.body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad_output(format!("an invalid header name {name:?}")))?;
        // `x-thaw-*` are thaw's own: what a function sets there must not
        // pass for thaw's word (a forwarding worker reads `x-thaw-refused`
        // as "never ran" and would run the call again elsewhere).
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str().starts_with("x-thaw-") {
            continue;
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| bad_output(format!("an invalid value for header {name}")))?;
        headers.append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_the_path_is_kept_as_sent() {
        assert_eq!(split_path("/fn/hello"), Some(("default", "hello", "/")));
        assert_eq!(split_path("/fn/hello/"), Some(("default", "hello", "/")));
        assert_eq!(
            split_path("/fn/hello/a%2Fb/c"),
            Some(("default", "hello", "/a%2Fb/c"))
        );
        assert_eq!(
            split_path("/ns/team-a/fn/api@prod/x?y"),
            Some(("team-a", "api@prod", "/x?y"))
        );
        assert_eq!(
            split_path("/ns/team-a/fn/api"),
            Some(("team-a", "api", "/"))
        );
        assert_eq!(split_path("/ns/team-a/api"), None);
        assert_eq!(split_path("/v1/x"), None);
    }

    #[test]
    fn a_function_cannot_answer_with_broken_headers_or_status() {
        let reply = |status, headers: Vec<(&str, &str)>| thaw_sandbox::Reply {
            status,
            headers: headers
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: ResponseBody::from_bytes(Vec::new()),
        };
        assert!(build_response(reply(200, vec![("x-ok", "1")])).is_ok());
        assert_eq!(
            build_response(reply(200, vec![("bad header", "1")]))
                .unwrap_err()
                .status,
            StatusCode::BAD_GATEWAY
        );
        assert!(build_response(reply(200, vec![("x", "a\r\nb")])).is_err());
        assert!(build_response(reply(99, vec![])).is_err());
        assert!(build_response(reply(1000, vec![])).is_err());
        let r = build_response(reply(201, vec![("transfer-encoding", "chunked")])).unwrap();
        assert!(r.headers().get("transfer-encoding").is_none());
        // thaw's own headers are thaw's to set.
        let r = build_response(reply(
            503,
            vec![
                ("x-thaw-refused", "1"),
                ("X-Thaw-Worker", "me"),
                ("x-thawed", "ok"),
            ],
        ))
        .unwrap();
        assert!(r.headers().get("x-thaw-refused").is_none());
        assert!(r.headers().get("x-thaw-worker").is_none());
        assert_eq!(r.headers().get("x-thawed").unwrap(), "ok");
    }
}
