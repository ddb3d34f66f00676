//! One JSON shape for every error thaw itself answers with:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thaw_registry::RegistryError;
use thaw_scheduler::InvokeError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub fn with(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no function named `{name}` is deployed in this namespace (see `thaw ls`)"),
        )
    }

    /// A failure of the host, logged in full; the caller learns only that
    /// it happened, since the details may name paths on the host.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "thaw failed on its side; the server's log has the details",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, error.as_object_mut())
        {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(name) => ApiError::not_found(&name),
            RegistryError::NoNamespace(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "no_namespace",
                format!("no namespace named `{name}` (see `thaw ns ls`)"),
            ),
            RegistryError::NoSuch(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            RegistryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            RegistryError::Invalid(m) => ApiError::bad_request("invalid", m),
            RegistryError::LimitReached(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "namespace_limit", m)
            }
            RegistryError::Unavailable(m) => {
                tracing::error!("{m}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry_unavailable",
                    "thaw cannot reach its database right now: try again shortly",
                )
            }
            // The bundle's own I/O failures are the host's problem, and their
            // messages name host paths: not for the caller.
            RegistryError::Bundle(b) if b.code() == "io_error" => ApiError::internal(b),
            RegistryError::Bundle(b) => {
                let status = if b.code() == "too_large" {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                ApiError::new(status, b.code(), b.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// How a call that got no answer from the function is told to the caller.
pub fn invoke_error(e: &InvokeError) -> ApiError {
    let (status, code) = match e {
        InvokeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        InvokeError::Crashed { .. } => (StatusCode::BAD_GATEWAY, "crashed"),
        InvokeError::InitFailed { .. } => (StatusCode::BAD_GATEWAY, "init_failed"),
        InvokeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        InvokeError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        InvokeError::QueueTimeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_timeout"),
        InvokeError::QuotaReached(_) => (StatusCode::TOO_MANY_REQUESTS, "namespace_limit"),
        InvokeError::HostBudget(_) => (StatusCode::SERVICE_UNAVAILABLE, "host_budget"),
        InvokeError::ResponseTooLarge(_) => (StatusCode::BAD_GATEWAY, "bad_response"),
    };
    ApiError::new(status, code, e.to_string())
}
