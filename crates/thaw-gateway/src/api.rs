//! The control API under `/v1/`, and the router that puts every route
//! together.
//!
//! Each handler parses its request, calls one operation of [`Platform`]
//! with the caller the bearer token named, and renders the typed view it
//! gets back. Function routes exist twice: under
//! `/v1/namespaces/{ns}/functions/...`, and under `/v1/functions/...`
//! meaning the caller's own namespace (a key's, or `default` for the
//! admin token).

use crate::auth::{Caller, Need};
use crate::errors::ApiError;
use crate::platform::{DeployOptions, Platform};
use crate::routes::{parse_target, Qualifier};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use thaw_api as view;
use thaw_registry::{ConfigChange, FunctionId, LogQuery};

/// Largest JSON body of a control request (not a deploy, not an event).
const MAX_CONTROL_BODY: usize = 1 << 20;

type Answer<T> = Result<Json<T>, ApiError>;

pub fn router(platform: Arc<Platform>) -> Router {
    let mut control = Router::new()
        .route("/v1/whoami", get(whoami))
        .route(
            "/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/v1/namespaces/{ns}",
            get(get_namespace)
                .patch(set_limits)
                .delete(remove_namespace),
        )
        .route("/v1/namespaces/{ns}/metrics", get(namespace_metrics))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/runtime/upgrade", post(upgrade_runtime))
        .route("/v1/platform", get(platform_view))
        .route("/metrics", get(all_metrics));
    for prefix in ["/v1", "/v1/namespaces/{ns}"] {
        let f = format!("{prefix}/functions/{{name}}");
        control = control
            .route(&format!("{prefix}/functions"), get(list_functions))
            .route(&f, get(get_function).put(deploy).delete(remove_function))
            .route(&format!("{f}/invoke"), post(invoke))
            .route(&format!("{f}/invocations"), get(list_calls))
            .route(&format!("{f}/dlq/replay"), post(dead_letters::<true>))
            .route(&format!("{f}/dlq/purge"), post(dead_letters::<false>))
            .route(&format!("{prefix}/invocations/{{id}}"), get(get_call))
            .route(
                &format!("{f}/schedules"),
                get(list_schedules).post(add_schedule),
            )
            .route(
                &format!("{f}/schedules/{{schedule}}"),
                axum::routing::delete(remove_schedule),
            )
            .route(&format!("{f}/logs"), get(logs))
            .route(&format!("{f}/stats"), get(stats))
            .route(&format!("{f}/versions"), get(versions))
            .route(&format!("{f}/aliases"), get(aliases))
            .route(
                &format!("{f}/aliases/{{alias}}"),
                put(set_alias).delete(remove_alias),
            )
            .route(&format!("{f}/rollback"), post(rollback))
            .route(&format!("{f}/secrets"), get(secrets))
            .route(
                &format!("{f}/secrets/{{key}}"),
                put(set_value::<true>).delete(unset_value::<true>),
            )
            .route(&format!("{f}/env"), get(env))
            .route(
                &format!("{f}/env/{{key}}"),
                put(set_value::<false>).delete(unset_value::<false>),
            );
    }
    let control = control
        .layer(axum::extract::DefaultBodyLimit::disable())
        .route_layer(middleware::from_fn_with_state(
            platform.clone(),
            authenticate,
        ));
    let functions = Router::new()
        .route("/fn/{name}", any(crate::function_route::call))
        .route("/fn/{name}/", any(crate::function_route::call))
        .route("/fn/{name}/{*rest}", any(crate::function_route::call))
        .route("/ns/{ns}/fn/{name}", any(crate::function_route::call))
        .route("/ns/{ns}/fn/{name}/", any(crate::function_route::call))
        .route(
            "/ns/{ns}/fn/{name}/{*rest}",
            any(crate::function_route::call),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
        .merge(control)
        .merge(functions)
        .merge(crate::ui::router())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method: see GET /v1/openapi.json",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such route: functions are under /fn/{name}/ and /ns/{namespace}/fn/{name}/, the API under /v1/",
            )
        })
        .with_state(platform)
}

/// Names the caller of every control request, or answers 401.
async fn authenticate(
    State(p): State<Arc<Platform>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match p.authenticate(token).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            }
            resp
        }
    }
}

/// `GET /readyz`: `200` once the pools are filled and provisioned
/// instances started after a start (docs/scaling.md), else `503` with why.
async fn readyz(State(p): State<Arc<Platform>>) -> Response {
    let (status, view) = match p.readiness() {
        Ok(()) => (
            StatusCode::OK,
            view::Readiness {
                ready: true,
                waiting: Vec::new(),
            },
        ),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            view::Readiness {
                ready: false,
                waiting,
            },
        ),
    };
    let mut response = (status, Json(view)).into_response();
    if let Some(cluster) = p.cluster() {
        // Which worker answered, for a load balancer's logs and for tests.
        if let Ok(me) = axum::http::HeaderValue::from_str(cluster.me()) {
            response
                .headers_mut()
                .insert(crate::cluster::WORKER_HEADER, me);
        }
    }
    response
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

/// A query string decoded as `T`, or a `bad_query` error in thaw's shape.
struct ApiQuery<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// What every control handler starts from: the platform, the caller its
/// token named, the route's parameters, and this server's base URL as the
/// client sees it (for the URLs views carry).
struct Call {
    p: Arc<Platform>,
    caller: Caller,
    params: HashMap<String, String>,
    base: String,
}

impl FromRequestParts<Arc<Platform>> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        platform: &Arc<Platform>,
    ) -> Result<Self, ApiError> {
        let caller =
            parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
                ApiError::internal("a control route without the authenticate layer")
            })?;
        let params =
            match Path::<HashMap<String, String>>::from_request_parts(parts, platform).await {
                Ok(Path(params)) => params,
                Err(e) => return Err(ApiError::bad_request("bad_path", e.body_text())),
            };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        Ok(Call {
            p: platform.clone(),
            caller,
            params,
            base: format!("http://{host}"),
        })
    }
}

impl Call {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or("")
    }

    /// The namespace the route names, or the caller's own.
    fn namespace(&self) -> &str {
        self.params
            .get("ns")
            .map(String::as_str)
            .unwrap_or(self.caller.home())
    }

    fn function(&self) -> FunctionId {
        FunctionId::new(self.namespace(), self.param("name"))
    }

    /// The function with the qualifier its `{name}` carries (`api@prod`).
    fn target(&self) -> (FunctionId, Qualifier) {
        let (name, qualifier) = parse_target(self.param("name"));
        (FunctionId::new(self.namespace(), name), qualifier)
    }
}

/// Reads a body of at most `limit` bytes, refusing more while reading.
async fn read_body(body: Body, limit: usize, what: &str) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{what} is larger than its limit of {limit} bytes"),
        )
    })
}

async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    parse_json(&read_body(body, MAX_CONTROL_BODY, "the request body").await?)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the request body is not what this route takes: {e}"),
        )
    })
}

async fn whoami(c: Call) -> Json<view::Whoami> {
    Json(c.p.whoami(&c.caller))
}

async fn list_namespaces(c: Call) -> Answer<view::NamespaceList> {
    Ok(Json(c.p.namespaces(&c.caller).await?))
}

async fn create_namespace(
    c: Call,
    body: Body,
) -> Result<(StatusCode, Json<view::NamespaceView>), ApiError> {
    c.caller.allow("", Need::Admin)?; // before reading a body it may not send
    let req = json_body(body).await?;
    let created = c.p.create_namespace(&c.caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn get_namespace(c: Call) -> Answer<view::NamespaceView> {
    Ok(Json(c.p.namespace(&c.caller, c.param("ns")).await?))
}

async fn set_limits(c: Call, body: Body) -> Answer<view::NamespaceView> {
    c.caller.allow("", Need::Admin)?; // before reading a body it may not send
    let patch = json_body(body).await?;
    Ok(Json(c.p.set_limits(&c.caller, c.param("ns"), patch).await?))
}

async fn remove_namespace(c: Call) -> Answer<view::Removed> {
    Ok(Json(c.p.remove_namespace(&c.caller, c.param("ns")).await?))
}

async fn namespace_metrics(c: Call) -> Result<Response, ApiError> {
    prometheus(c.p.metrics_text(&c.caller, Some(c.param("ns"))).await?)
}

async fn all_metrics(c: Call) -> Result<Response, ApiError> {
    prometheus(c.p.metrics_text(&c.caller, None).await?)
}

fn prometheus(text: String) -> Result<Response, ApiError> {
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct KeyFilter {
    namespace: Option<String>,
}

async fn list_keys(c: Call, ApiQuery(q): ApiQuery<KeyFilter>) -> Answer<view::KeyList> {
    Ok(Json(c.p.keys(&c.caller, q.namespace).await?))
}

async fn create_key(c: Call, body: Body) -> Result<(StatusCode, Json<view::CreatedKey>), ApiError> {
    c.caller.allow("", Need::Admin)?; // before reading a body it may not send
    let req = json_body(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(c.p.create_key(&c.caller, req).await?),
    ))
}

async fn revoke_key(c: Call) -> Answer<view::KeyView> {
    Ok(Json(c.p.revoke_key(&c.caller, c.param("id")).await?))
}

async fn list_functions(c: Call) -> Answer<view::FunctionList> {
    Ok(Json(
        c.p.list_functions(&c.caller, c.namespace(), &c.base)
            .await?,
    ))
}

async fn get_function(c: Call) -> Answer<view::FunctionView> {
    Ok(Json(c.p.function(&c.caller, &c.function(), &c.base)?))
}

#[derive(Deserialize)]
struct DeployQuery {
    /// `false`: the new version does not become `latest`.
    promote: Option<bool>,
}

/// `PUT .../functions/{name}`: the body is the folder as a tar.gz.
async fn deploy(
    c: Call,
    ApiQuery(q): ApiQuery<DeployQuery>,
    body: Body,
) -> Answer<view::FunctionView> {
    let f = c.function();
    let limit = c.p.deploy_limit(&c.caller, &f.namespace).await?;
    let archive = read_body(body, limit, "the archive").await.map_err(|e| {
        ApiError::new(
            e.status,
            e.code,
            format!(
                "{}: leave build output and data out with a .thawignore",
                e.message
            ),
        )
    })?;
    let options = DeployOptions {
        promote: q.promote.unwrap_or(true),
    };
    Ok(Json(
        c.p.deploy(&c.caller, &f, archive, options, &c.base).await?,
    ))
}

async fn remove_function(c: Call) -> Answer<view::Removed> {
    Ok(Json(c.p.remove_function(&c.caller, &c.function()).await?))
}

/// `POST .../functions/{name}/invoke`: the body is the event, any JSON
/// value; `{name}` may carry a qualifier (`api@prod`, `api@7`). Runs the
/// event now and answers with the outcome, or, asked with `x-thaw-invoke:
/// async` or `Prefer: respond-async`, stores it to run later and answers
/// `202` with the call's id, as a function URL does.
async fn invoke(c: Call, headers: axum::http::HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (f, qualifier) = c.target();
    let bytes = read_body(body, c.p.max_request_bytes(), "the event").await?;
    let event = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("bad_json", format!("the event is not valid JSON: {e}"))
        })?
    };
    if let Some(prefer) = crate::function_route::wants_async(&headers) {
        let payload = thaw_protocol::Payload::Event(event);
        let accepted =
            c.p.enqueue_call(Some(&c.caller), &f, &qualifier, payload, &[], &c.base)
                .await?;
        return Ok(crate::function_route::accepted_response(&accepted, prefer));
    }
    Ok(Json(c.p.invoke(&c.caller, &f, &qualifier, event).await?).into_response())
}

#[derive(Deserialize)]
struct CallParams {
    state: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

async fn list_calls(c: Call, ApiQuery(q): ApiQuery<CallParams>) -> Answer<view::CallList> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(thaw_registry::CallState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "bad_query",
                format!(
                    "`state={s}` is not a state: use queued, running, failed, succeeded or dead"
                ),
            )
        })?),
    };
    let query = thaw_registry::CallQuery {
        state,
        before: q.before,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(c.p.call_list(&c.caller, &c.function(), query).await?))
}

async fn get_call(c: Call) -> Answer<view::CallView> {
    Ok(Json(
        c.p.call_record(&c.caller, c.namespace(), c.param("id"))
            .await?,
    ))
}

async fn list_schedules(c: Call) -> Answer<view::ScheduleList> {
    Ok(Json(c.p.schedules(&c.caller, &c.function()).await?))
}

async fn add_schedule(c: Call, body: Body) -> Result<Response, ApiError> {
    c.caller.allow(c.namespace(), Need::Deploy)?; // before reading the body
    let req = json_body(body).await?;
    let added = c.p.add_schedule(&c.caller, &c.function(), req).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn remove_schedule(c: Call) -> Answer<view::Removed> {
    Ok(Json(
        c.p.remove_schedule(&c.caller, &c.function(), c.param("schedule"))
            .await?,
    ))
}

/// `POST .../dlq/replay` and `.../dlq/purge`, with `{"ids": [...]}` or an
/// empty body for every dead letter.
async fn dead_letters<const REPLAY: bool>(c: Call, body: Body) -> Answer<view::DeadLetters> {
    c.caller.allow(c.namespace(), Need::Deploy)?; // before reading the body
    let bytes = read_body(body, MAX_CONTROL_BODY, "the request body").await?;
    let ids: view::CallIds = if bytes.iter().all(u8::is_ascii_whitespace) {
        view::CallIds::default()
    } else {
        parse_json(&bytes)?
    };
    Ok(Json(
        c.p.dead_letters(&c.caller, &c.function(), ids, REPLAY)
            .await?,
    ))
}

#[derive(Deserialize)]
struct LogParams {
    after: Option<i64>,
    invocation: Option<u64>,
    limit: Option<u32>,
}

async fn logs(c: Call, ApiQuery(q): ApiQuery<LogParams>) -> Answer<view::LogList> {
    let query = LogQuery {
        after: q.after,
        invocation: q.invocation,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(c.p.logs(&c.caller, &c.function(), query).await?))
}

async fn versions(c: Call) -> Answer<view::VersionList> {
    Ok(Json(c.p.versions(&c.caller, &c.function(), &c.base).await?))
}

async fn aliases(c: Call) -> Answer<view::AliasList> {
    Ok(Json(c.p.aliases(&c.caller, &c.function(), &c.base)?))
}

async fn set_alias(c: Call, body: Body) -> Answer<view::AliasView> {
    c.caller.allow(c.namespace(), Need::Deploy)?; // before reading the body
    let req = json_body(body).await?;
    let alias = c.param("alias");
    Ok(Json(
        c.p.set_alias(&c.caller, &c.function(), alias, req, &c.base)
            .await?,
    ))
}

async fn remove_alias(c: Call) -> Answer<view::Removed> {
    let alias = c.param("alias");
    Ok(Json(
        c.p.remove_alias(&c.caller, &c.function(), alias).await?,
    ))
}

async fn rollback(c: Call, body: Body) -> Answer<view::AliasView> {
    c.caller.allow(c.namespace(), Need::Deploy)?; // before reading the body
    let bytes = read_body(body, MAX_CONTROL_BODY, "the request body").await?;
    let req: view::Rollback = if bytes.iter().all(u8::is_ascii_whitespace) {
        view::Rollback::default()
    } else {
        parse_json(&bytes)?
    };
    Ok(Json(
        c.p.rollback(&c.caller, &c.function(), req, &c.base).await?,
    ))
}

async fn secrets(c: Call) -> Answer<view::SecretList> {
    Ok(Json(c.p.secrets(&c.caller, &c.function())?))
}

async fn env(c: Call) -> Answer<view::EnvList> {
    Ok(Json(c.p.env(&c.caller, &c.function())?))
}

/// What `PUT`/`DELETE {F}/secrets/{key}` (`SECRET = true`) and
/// `{F}/env/{key}` change.
fn config_change<const SECRET: bool>(key: &str, value: Option<String>) -> ConfigChange {
    let key = key.to_string();
    match (SECRET, value) {
        (true, Some(v)) => ConfigChange::SetSecret(key, v),
        (true, None) => ConfigChange::UnsetSecret(key),
        (false, Some(v)) => ConfigChange::SetEnv(key, v),
        (false, None) => ConfigChange::UnsetEnv(key),
    }
}

/// Sets one secret or variable from the body's `{"value"}`.
async fn set_value<const SECRET: bool>(c: Call, body: Body) -> Answer<view::FunctionView> {
    let v: view::SetValue = json_body(body).await?;
    let change = config_change::<SECRET>(c.param("key"), Some(v.value));
    Ok(Json(
        c.p.configure(&c.caller, &c.function(), change, &c.base)
            .await?,
    ))
}

async fn unset_value<const SECRET: bool>(c: Call) -> Answer<view::FunctionView> {
    let change = config_change::<SECRET>(c.param("key"), None);
    Ok(Json(
        c.p.configure(&c.caller, &c.function(), change, &c.base)
            .await?,
    ))
}

/// `POST /v1/runtime/upgrade`: see `Platform::upgrade_runtime`.
async fn upgrade_runtime(c: Call) -> Answer<view::RuntimeUpgradeView> {
    Ok(Json(c.p.upgrade_runtime_op(&c.caller).await?))
}

/// `GET {F}/stats`: the last hour, minute by minute (the dashboard's charts).
async fn stats(c: Call) -> Answer<view::FunctionStats> {
    Ok(Json(c.p.stats(&c.caller, &c.function())?))
}

/// `GET /v1/platform`: the host, its budget and its pools (admin).
async fn platform_view(c: Call) -> Answer<view::PlatformView> {
    Ok(Json(c.p.host(&c.caller).await?))
}
