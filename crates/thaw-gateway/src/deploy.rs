//! `PUT /v1/functions/{name}`: a new version goes live only once its code
//! is stored, built and has loaded in a real runtime. Until then, and if
//! any step fails, the previous version keeps serving.

use crate::api::describe;
use crate::errors::ApiError;
use crate::platform::{spec_of, Platform};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use thaw_scheduler::InvokeError;

pub async fn deploy(
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    thaw_bundle::validate_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let limit = p.config.limits.max_archive_bytes as usize;
    let archive = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the archive is larger than the {} MiB limit: leave build output and data out with a .thawignore",
                limit / (1024 * 1024)
            ),
        )
    })?;
    if archive.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_archive",
            "the request body is empty: send the folder as a tar.gz (thaw deploy does this)",
        ));
    }

    let _deploying = p.deploy_lock.lock().await;
    let (registry, limits, esbuild) = (p.registry.clone(), p.config.limits, p.esbuild.clone());
    let fname = name.clone();
    let version = tokio::task::spawn_blocking(move || {
        let tree = registry.store_code(&archive, &limits, esbuild.as_deref())?;
        registry.add_version(&fname, &tree)
    })
    .await
    .map_err(ApiError::internal)??;

    // Load the code once in a real runtime before it serves anyone.
    let spec = spec_of(&version);
    let loaded = match p.ensure_driver(&spec).await {
        Ok(()) => p.scheduler.start_idle(&spec).await,
        Err(e) => Err(e),
    };
    if let Err(e) = loaded {
        p.scheduler.retire_version(&spec.name, spec.version);
        let registry = p.registry.clone();
        let discarded = version.clone();
        let _ = tokio::task::spawn_blocking(move || registry.discard_version(&discarded)).await;
        return Err(match e {
            InvokeError::InitFailed { message, stack } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "init_failed",
                format!(
                    "the code failed to load, so the previous version keeps serving: {message}"
                ),
            )
            .with(json!({ "stack": stack })),
            other => crate::errors::invoke_error(&other),
        });
    }

    let registry = p.registry.clone();
    let activated = version.clone();
    tokio::task::spawn_blocking(move || registry.activate(&activated))
        .await
        .map_err(ApiError::internal)??;
    p.set_route(version);
    let route = p.route(&name).ok_or_else(|| ApiError::not_found(&name))?;
    Ok((StatusCode::OK, Json(describe(&route, &p, &headers))))
}
