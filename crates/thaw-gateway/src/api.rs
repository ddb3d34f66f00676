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
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use thaw_api as view;
use thaw_registry::{ConfigChange, FunctionId, LogQuery};

/// Largest JSON body of a control request (not a deploy, not an event).
const MAX_CONTROL_BODY: usize = 1 << 20;

type Params = Path<HashMap<String, String>>;
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
        .route("/metrics", get(all_metrics));
    for prefix in ["/v1", "/v1/namespaces/{ns}"] {
        let f = format!("{prefix}/functions/{{name}}");
        control = control
            .route(&format!("{prefix}/functions"), get(list_functions))
            .route(&f, get(get_function).put(deploy).delete(remove_function))
            .route(&format!("{f}/invoke"), post(invoke))
            .route(&format!("{f}/logs"), get(logs))
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
        .route("/v1/openapi.json", get(openapi))
        .merge(control)
        .merge(functions)
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

/// `http://host:port` as the client that asked sees this server.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn namespace_of<'a>(caller: &'a Caller, params: &'a HashMap<String, String>) -> &'a str {
    params
        .get("ns")
        .map(String::as_str)
        .unwrap_or(caller.home())
}

/// The function a route names, with the qualifier its `{name}` carries.
fn target_of(caller: &Caller, params: &HashMap<String, String>) -> (FunctionId, Qualifier) {
    let (name, qualifier) = parse_target(params.get("name").map(String::as_str).unwrap_or(""));
    (
        FunctionId::new(namespace_of(caller, params), name),
        qualifier,
    )
}

fn function_of(caller: &Caller, params: &HashMap<String, String>) -> FunctionId {
    FunctionId::new(
        namespace_of(caller, params),
        params.get("name").map(String::as_str).unwrap_or(""),
    )
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> &'a str {
    params.get(name).map(String::as_str).unwrap_or("")
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
    let bytes = read_body(body, MAX_CONTROL_BODY, "the request body").await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the request body is not what this route takes: {e}"),
        )
    })
}

async fn whoami(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
) -> Json<view::Whoami> {
    Json(p.whoami(&c))
}

async fn list_namespaces(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
) -> Answer<view::NamespaceList> {
    Ok(Json(p.namespaces(&c).await?))
}

async fn create_namespace(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    body: Body,
) -> Result<(StatusCode, Json<view::NamespaceView>), ApiError> {
    c.allow("", Need::Admin)?; // before reading a body it may not send
    let req = json_body(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_namespace(&c, req).await?),
    ))
}

async fn get_namespace(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::NamespaceView> {
    Ok(Json(p.namespace(&c, param(&params, "ns")).await?))
}

async fn set_limits(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    body: Body,
) -> Answer<view::NamespaceView> {
    let patch = json_body(body).await?;
    Ok(Json(p.set_limits(&c, param(&params, "ns"), patch).await?))
}

async fn remove_namespace(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::Removed> {
    Ok(Json(p.remove_namespace(&c, param(&params, "ns")).await?))
}

async fn namespace_metrics(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Result<Response, ApiError> {
    prometheus(p.metrics_text(&c, Some(param(&params, "ns"))).await?)
}

async fn all_metrics(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
) -> Result<Response, ApiError> {
    prometheus(p.metrics_text(&c, None).await?)
}

fn prometheus(text: String) -> Result<Response, ApiError> {
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct KeyFilter {
    namespace: Option<String>,
}

async fn list_keys(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    ApiQuery(q): ApiQuery<KeyFilter>,
) -> Answer<view::KeyList> {
    Ok(Json(p.keys(&c, q.namespace).await?))
}

async fn create_key(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    body: Body,
) -> Result<(StatusCode, Json<view::CreatedKey>), ApiError> {
    c.allow("", Need::Admin)?; // before reading a body it may not send
    let req = json_body(body).await?;
    Ok((StatusCode::CREATED, Json(p.create_key(&c, req).await?)))
}

async fn revoke_key(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::KeyView> {
    Ok(Json(p.revoke_key(&c, param(&params, "id")).await?))
}

async fn list_functions(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
) -> Answer<view::FunctionList> {
    Ok(Json(
        p.list_functions(&c, namespace_of(&c, &params), &base_url(&headers))
            .await?,
    ))
}

async fn get_function(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
) -> Answer<view::FunctionView> {
    Ok(Json(p.function(
        &c,
        &function_of(&c, &params),
        &base_url(&headers),
    )?))
}

#[derive(Deserialize)]
struct DeployQuery {
    /// `false`: the new version does not become `latest`.
    promote: Option<bool>,
}

/// `PUT .../functions/{name}`: the body is the folder as a tar.gz.
async fn deploy(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    ApiQuery(q): ApiQuery<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Answer<view::FunctionView> {
    let f = function_of(&c, &params);
    let limit = p.deploy_limit(&c, &f.namespace).await?;
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
        p.deploy(&c, &f, archive, options, &base_url(&headers))
            .await?,
    ))
}

async fn remove_function(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::Removed> {
    Ok(Json(
        p.remove_function(&c, &function_of(&c, &params)).await?,
    ))
}

/// `POST .../functions/{name}/invoke`: the body is the event, any JSON
/// value; `{name}` may carry a qualifier (`api@prod`, `api@7`).
async fn invoke(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    body: Body,
) -> Answer<view::InvokeResult> {
    let (f, qualifier) = target_of(&c, &params);
    let bytes = read_body(body, p.max_request_bytes(), "the event").await?;
    let event = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("bad_json", format!("the event is not valid JSON: {e}"))
        })?
    };
    Ok(Json(p.invoke(&c, &f, &qualifier, event).await?))
}

#[derive(Deserialize)]
struct LogParams {
    after: Option<i64>,
    invocation: Option<u64>,
    limit: Option<u32>,
}

async fn logs(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    ApiQuery(q): ApiQuery<LogParams>,
) -> Answer<view::LogList> {
    let query = LogQuery {
        after: q.after,
        invocation: q.invocation,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(p.logs(&c, &function_of(&c, &params), query).await?))
}

async fn versions(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
) -> Answer<view::VersionList> {
    Ok(Json(
        p.versions(&c, &function_of(&c, &params), &base_url(&headers))
            .await?,
    ))
}

async fn aliases(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
) -> Answer<view::AliasList> {
    Ok(Json(p.aliases(
        &c,
        &function_of(&c, &params),
        &base_url(&headers),
    )?))
}

async fn set_alias(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Answer<view::AliasView> {
    let req = json_body(body).await?;
    let f = function_of(&c, &params);
    Ok(Json(
        p.set_alias(&c, &f, param(&params, "alias"), req, &base_url(&headers))
            .await?,
    ))
}

async fn remove_alias(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::Removed> {
    let f = function_of(&c, &params);
    Ok(Json(p.remove_alias(&c, &f, param(&params, "alias")).await?))
}

async fn rollback(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Answer<view::AliasView> {
    let bytes = read_body(body, MAX_CONTROL_BODY, "the request body").await?;
    let req: view::Rollback = if bytes.iter().all(u8::is_ascii_whitespace) {
        view::Rollback::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("the request body is not what this route takes: {e}"),
            )
        })?
    };
    let f = function_of(&c, &params);
    Ok(Json(p.rollback(&c, &f, req, &base_url(&headers)).await?))
}

async fn secrets(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::SecretList> {
    Ok(Json(p.secrets(&c, &function_of(&c, &params))?))
}

async fn env(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
) -> Answer<view::EnvList> {
    Ok(Json(p.env(&c, &function_of(&c, &params))?))
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
async fn set_value<const SECRET: bool>(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Answer<view::FunctionView> {
    let v: view::SetValue = json_body(body).await?;
    let change = config_change::<SECRET>(param(&params, "key"), Some(v.value));
    let f = function_of(&c, &params);
    Ok(Json(
        p.configure(&c, &f, change, &base_url(&headers)).await?,
    ))
}

async fn unset_value<const SECRET: bool>(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
    params: Params,
    headers: HeaderMap,
) -> Answer<view::FunctionView> {
    let change = config_change::<SECRET>(param(&params, "key"), None);
    let f = function_of(&c, &params);
    Ok(Json(
        p.configure(&c, &f, change, &base_url(&headers)).await?,
    ))
}

/// `POST /v1/runtime/upgrade`: see `Platform::upgrade_runtime`.
async fn upgrade_runtime(
    State(p): State<Arc<Platform>>,
    Extension(c): Extension<Caller>,
) -> Answer<view::RuntimeUpgradeView> {
    Ok(Json(p.upgrade_runtime_op(&c).await?))
}
