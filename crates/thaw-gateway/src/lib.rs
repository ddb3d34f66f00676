//! thaw's HTTP server: the control API and the function routes.
//!
//! `/v1/...` is the control API (JSON, bearer token: the admin token or a
//! namespace key, `auth.rs`): namespaces, keys, deploys, versions,
//! aliases, secrets, invoke, logs. `/fn/{name}/...` (namespace `default`)
//! and `/ns/{namespace}/fn/{name}/...` are public: each request resolves to
//! one version through an alias (`name@prod`) or a number (`name@7`) and
//! becomes an `invoke` of it. `/healthz` answers when the server is up.
//!
//! One request reads top to bottom: `api.rs` or `function_route.rs`
//! parses it, calls one operation of `Platform` (`platform/ops.rs`), and
//! renders a typed view of `thaw-api`. This crate wires the registry, the
//! scheduler and the sandbox drivers together; it must not hold policy of
//! its own about instances (the scheduler's) or storage (the registry's).

mod api;
mod auth;
mod cluster;
mod errors;
mod function_route;
mod logsink;
mod metrics;
mod openapi;
mod platform;
mod routes;
mod server;
mod ui;

pub use platform::{build_microvm_runtime, Config, DriverKind, HostBudget, JailMode, Platform};
pub use server::{serve, serve_with, ConnectionLimits};
pub use thaw_microvm::GuestKernel;
