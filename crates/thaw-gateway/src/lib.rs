//! thaw's HTTP server: the control API and the function routes.
//!
//! `/v1/...` is the control API (JSON, bearer token): deploy, list, invoke,
//! logs, remove. `/fn/{name}/...` is public: each request is turned into an
//! `invoke` of the function's current version and the runtime's answer into
//! the HTTP response. `/healthz` answers when the server is up.
//!
//! This crate wires the registry, the scheduler and a sandbox driver
//! together; it must not hold policy of its own about instances (that is
//! the scheduler's) or storage (the registry's).

mod api;
mod deploy;
mod errors;
mod function_route;
mod logsink;
mod metrics;
mod platform;

pub use platform::{build_microvm_runtime, serve, Config, DriverKind, JailMode, Platform};
pub use thaw_microvm::GuestKernel;
