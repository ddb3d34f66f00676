//! Shared by the integration tests: builds the agent and the image once
//! (cached under the target directory), and speaks just enough of the
//! protocol to init and invoke.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

mod agent;
pub use agent::*;

use thaw_microvm::{build_image, GuestKernel, ImageInfo, ImageOptions};
use thaw_protocol::frame::{Frame, FrameReader};
use thaw_protocol::{write_message, FromRuntime, Init, Invoke, Payload, ToRuntime};
use tokio::net::UnixStream;

/// Where the built-in test function lives in the image (tests of booting
/// need code without the code drive; real functions never sit in the image).
pub const BUILTIN_CODE_DIR: &str = "/opt/thaw-test";

pub const TEST_HANDLER: &str = "export const handler = async (event) => {\n  if (event.exit) setTimeout(() => process.exit(0), 10);\n  return { echo: event, now: Date.now() };\n};\n";

/// The test image, built (or found cached) once per test process.
pub fn image() -> ImageInfo {
    static IMAGE: OnceLock<ImageInfo> = OnceLock::new();
    IMAGE
        .get_or_init(|| image_with(GuestKernel::default()))
        .clone()
}

/// The test image with another kernel.
pub fn image_with(kernel: GuestKernel) -> ImageInfo {
    let code = data_dir().join("builtin-index.mjs");
    std::fs::write(&code, TEST_HANDLER).unwrap();
    let mut opts = ImageOptions::new(
        data_dir().join("images"),
        agent_binary(),
        workspace_root().join("runtime/shim/shim.mjs"),
    );
    opts.kernel = kernel;
    opts.extra_files
        .push((code, format!("{BUILTIN_CODE_DIR}/index.mjs")));
    build_image(&opts, &mut |p| eprintln!("image: {p}")).expect("building the guest image")
}

/// A short run directory (Unix socket paths are limited).
pub fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("thaw-vm")
        .tempdir_in("/tmp")
        .unwrap()
}

pub const TIMEOUT: Duration = Duration::from_secs(180);

/// The next frame, in time. Each step below reads with a reader of its
/// own: the runtime sends nothing unasked between the frame a step waits
/// for and the next step's request, so nothing read ahead is lost.
async fn next(frames: &mut FrameReader<&mut UnixStream>, what: &str) -> Frame<FromRuntime> {
    tokio::time::timeout(TIMEOUT, frames.next::<FromRuntime>())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap()
}

/// Reads frames until `ready`; returns the runtime string.
pub async fn expect_ready(ch: &mut UnixStream) -> String {
    let mut frames = FrameReader::new(ch);
    loop {
        let Frame::Message(msg) = next(&mut frames, "ready").await else {
            panic!("expected ready, got a body frame");
        };
        match msg {
            FromRuntime::Ready { runtime, node, .. } => return format!("{runtime} node {node}"),
            FromRuntime::Log { line, .. } => eprintln!("guest log: {line}"),
            other => panic!("expected ready, got {other:?}"),
        }
    }
}

/// init + one invoke with `event`; returns the handler's JSON answer.
pub async fn init_and_invoke(
    ch: &mut UnixStream,
    code_dir: &str,
    event: serde_json::Value,
) -> serde_json::Value {
    let init = ToRuntime::Init(Init {
        function: "t".into(),
        version: 1,
        code_dir: code_dir.into(),
        entry: "index.mjs".into(),
        env: BTreeMap::new(),
        timeout_ms: 30_000,
        memory_mb: 128,
        namespace: "default".into(),
        features: Vec::new(),
    });
    write_message(ch, &init).await.unwrap();
    let mut frames = FrameReader::new(&mut *ch);
    loop {
        let Frame::Message(msg) = next(&mut frames, "init_ok").await else {
            panic!("expected init_ok, got a body frame");
        };
        match msg {
            FromRuntime::InitOk { style, .. } => {
                assert_eq!(style, "lambda");
                break;
            }
            FromRuntime::Log { line, .. } => eprintln!("guest log: {line}"),
            other => panic!("expected init_ok, got {other:?}"),
        }
    }
    invoke(ch, 1, event).await
}

pub async fn invoke(ch: &mut UnixStream, id: u64, event: serde_json::Value) -> serde_json::Value {
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    write_message(
        ch,
        &ToRuntime::Invoke(Invoke {
            id,
            deadline_ms,
            payload: Payload::Event(event),
        }),
    )
    .await
    .unwrap();
    let mut frames = FrameReader::new(ch);
    let mut body = Vec::new();
    loop {
        match next(&mut frames, "the result").await {
            Frame::Message(FromRuntime::Result {
                id: got, status, ..
            }) => {
                assert_eq!(got, id);
                assert_eq!(status, 200);
            }
            Frame::Data { call, bytes, .. } if call == id => body.extend_from_slice(&bytes),
            Frame::End { call, .. } if call == id => return serde_json::from_slice(&body).unwrap(),
            Frame::Message(FromRuntime::Log { line, .. }) => eprintln!("guest log: {line}"),
            other => panic!("expected a result and its body, got {other:?}"),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
