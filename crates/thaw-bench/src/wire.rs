//! The wire protocol (docs/protocol.md) spoken by hand to one runtime, as
//! thaw's `Instance` speaks it: wait for `ready`, bind the function with
//! `init`, make one call (`GET /`). The cold-path breakdown speaks it to
//! Node started by hand, the microVM section to booted and restored VMs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_protocol::frame::{self, Frame, FrameReader, Stream};
use thaw_protocol::{write_message, FromRuntime, HttpRequest, Init, Invoke, Payload, ToRuntime};
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
    write_message(s, &init).await.map_err(|e| e.to_string())?;
    next(s, "init_ok", |m| matches!(m, FromRuntime::InitOk { .. })).await
}

/// One call, `GET /`, until the end of the body of its `result` with
/// status 200.
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
            source_ip: "127.0.0.1".into(),
            host: "127.0.0.1".into(),
        }),
    });
    let mut out = Vec::new();
    frame::encode_message(&mut out, &call).map_err(|e| e.to_string())?;
    frame::encode_end(&mut out, 1, Stream::Request);
    tokio::io::AsyncWriteExt::write_all(s, &out)
        .await
        .map_err(|e| e.to_string())?;
    let mut frames = FrameReader::new(s);
    next_in(&mut frames, "result", |m| {
        matches!(m, FromRuntime::Result { status: 200, .. })
    })
    .await?;
    loop {
        match frames.next::<FromRuntime>().await {
            Ok(Frame::End { .. }) => return Ok(()),
            Ok(Frame::Data { .. } | Frame::Message(FromRuntime::Log { .. })) => {}
            Ok(other) => return Err(format!("waiting for the end of the body, got {other:?}")),
            Err(e) => return Err(format!("waiting for the end of the body: {e}")),
        }
    }
}

/// Reads frames until one `wanted` accepts, skipping log lines. Each step
/// reads with a reader of its own: the runtime sends nothing between the
/// frame a step waits for and the next step's request, so nothing read
/// ahead is lost.
async fn next(s: &mut UnixStream, name: &str, wanted: impl Fn(&FromRuntime) -> bool) -> Step {
    next_in(&mut FrameReader::new(s), name, wanted).await
}

async fn next_in(
    frames: &mut FrameReader<&mut UnixStream>,
    name: &str,
    wanted: impl Fn(&FromRuntime) -> bool,
) -> Step {
    loop {
        let m = match frames.next::<FromRuntime>().await {
            Ok(Frame::Message(m)) => m,
            Ok(other) => return Err(format!("waiting for {name}, got {other:?}")),
            Err(e) => return Err(format!("waiting for {name}: {e}")),
        };
        if wanted(&m) {
            return Ok(());
        }
        if !matches!(m, FromRuntime::Log { .. }) {
            return Err(format!("waiting for {name}, got {m:?}"));
        }
    }
}
