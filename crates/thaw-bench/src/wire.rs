//! The wire protocol (docs/protocol.md) spoken by hand to one runtime, as
//! thaw's `Instance` speaks it: wait for `ready`, bind the function with
//! `init`, make one call (`GET /`). The cold-path breakdown speaks it to
//! Node started by hand, the microVM section to booted and restored VMs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_protocol::{
    read_frame, write_frame, FromRuntime, HttpRequest, Init, Invoke, Payload, ToRuntime,
};
use tokio::net::UnixStream;

type Step = std::result::Result<(), String>;

/// Reads frames until the runtime's `ready`.
pub async fn ready(s: &mut UnixStream) -> Step {
    next(s, "ready", |m| matches!(m, FromRuntime::Ready { .. })).await
}

/// Binds the runtime to `function`, whose `index.mjs` is in `code_dir` as
/// the runtime sees it, and waits for `init_ok`.
pub async fn init(s: &mut UnixStream, function: &str, code_dir: &str, limit: Duration) -> Step {
    let init = ToRuntime::Init(Init {
        function: function.into(),
        version: 1,
        code_dir: code_dir.into(),
        entry: "index.mjs".into(),
        env: BTreeMap::new(),
        timeout_ms: limit.as_millis() as u64,
        memory_mb: 256,
        namespace: "default".into(),
        features: Vec::new(),
    });
    write_frame(s, &init).await.map_err(|e| e.to_string())?;
    next(s, "init_ok", |m| matches!(m, FromRuntime::InitOk { .. })).await
}

/// One call, `GET /`, until its `result` with status 200.
pub async fn call(s: &mut UnixStream, limit: Duration) -> Step {
    let deadline_ms = (SystemTime::now() + limit)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let call = ToRuntime::Invoke(Invoke {
        id: 1,
        deadline_ms,
        payload: Payload::Request(HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("host".into(), "127.0.0.1".into())],
            body: String::new(),
            source_ip: "127.0.0.1".into(),
            host: "127.0.0.1".into(),
        }),
    });
    write_frame(s, &call).await.map_err(|e| e.to_string())?;
    next(s, "result", |m| {
        matches!(m, FromRuntime::Result { status: 200, .. })
    })
    .await
}

/// Reads frames until one `wanted` accepts, skipping log lines.
async fn next(s: &mut UnixStream, name: &str, wanted: impl Fn(&FromRuntime) -> bool) -> Step {
    loop {
        let m: FromRuntime = read_frame(s)
            .await
            .map_err(|e| format!("waiting for {name}: {e}"))?;
        if wanted(&m) {
            return Ok(());
        }
        if !matches!(m, FromRuntime::Log { .. }) {
            return Err(format!("waiting for {name}, got {m:?}"));
        }
    }
}
