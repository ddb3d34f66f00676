//! The framed wire protocol between thaw and a runtime instance.
//!
//! One byte stream per instance (a socketpair for the `process` driver, a
//! virtio-serial port for `microvm`) carries length-prefixed frames: JSON
//! messages (`init`, `invoke`, `result`, `log`, `error`) and binary frames
//! that carry request and response bodies in chunks under credit-based flow
//! control ([`frame`]). This crate owns the message types and the framing,
//! and nothing else: it knows no transport, no process, no HTTP server.
//! `docs/protocol.md` is its specification.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Version of the protocol this host speaks; a runtime announcing another
/// one is refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest JSON message either side accepts (an event travels in its
/// `invoke`). Bodies travel in chunks of [`frame::MAX_CHUNK`] and are not
/// bounded by it.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the runtime closed its end of the stream")]
    Closed,
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of kind {0:#04x}, which protocol {PROTOCOL_VERSION} does not have")]
    UnknownKind(u8),
    #[error("frame of kind {kind:#04x} is {len} bytes long, too short for its kind")]
    FrameTooShort { kind: u8, len: usize },
    #[error("frame for stream {0}, which protocol {PROTOCOL_VERSION} does not have")]
    UnknownStream(u8),
    #[error(
        "{runtime} speaks protocol {protocol}; this host speaks protocol {PROTOCOL_VERSION}: \
         run a runtime of this thaw release (its shim, or a microVM image built by this \
         release's `thaw image build`)"
    )]
    OldProtocol { protocol: u64, runtime: String },
}

/// Messages a runtime sends to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromRuntime {
    Ready {
        protocol: u32,
        runtime: String,
        #[serde(default)]
        node: String,
        #[serde(default)]
        pid: u32,
    },
    InitOk {
        style: String,
        #[serde(default)]
        services: Vec<String>,
    },
    InitError {
        message: String,
        #[serde(default)]
        stack: Option<String>,
    },
    Log {
        id: Option<u64>,
        stream: LogStream,
        line: String,
    },
    /// The head of a response; its body follows on the call's
    /// [`frame::Stream::Response`].
    Result {
        id: u64,
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        /// Work of this call goes on after the answer (`waitUntil`); a
        /// `background_done` frame follows when it ends.
        #[serde(default)]
        background: bool,
    },
    Error {
        id: u64,
        message: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        stack: Option<String>,
        #[serde(default)]
        background: bool,
        /// The handler asked not to be tried again (a scheduled call's
        /// `controller.noRetry()`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_retry: bool,
    },
    /// The work a call left running after its answer ended (or the shim
    /// stopped waiting for it: `timed_out`). Sent only to a host that
    /// listed [`FEATURE_BACKGROUND_DONE`] in `init`.
    BackgroundDone {
        id: u64,
        #[serde(default)]
        timed_out: bool,
    },
}

/// Init's `features` entry that asks the runtime for `background_done`.
pub const FEATURE_BACKGROUND_DONE: &str = "background_done";

/// How long work after an answer may run (Cloudflare's `waitUntil` bound);
/// the host stops waiting for its `background_done` a little later.
pub const BACKGROUND_LIMIT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Messages the host sends to a runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRuntime {
    Init(Init),
    Invoke(Invoke),
}

/// Binds a started runtime to one function version, for life.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Init {
    pub function: String,
    pub version: i64,
    /// Absolute path, as the runtime sees it, of the read-only code tree.
    pub code_dir: String,
    /// Entry module, relative to `code_dir`.
    pub entry: String,
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// The function's namespace (OpenWhisk's `__OW_NAMESPACE`).
    #[serde(default)]
    pub namespace: String,
    /// What this host understands beyond the base protocol
    /// ([`FEATURE_BACKGROUND_DONE`]).
    #[serde(default)]
    pub features: Vec<String>,
}

/// `env` holds the function's secrets: Debug prints its names alone.
impl std::fmt::Debug for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Init")
            .field("function", &self.function)
            .field("version", &self.version)
            .field("code_dir", &self.code_dir)
            .field("entry", &self.entry)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("memory_mb", &self.memory_mb)
            .field("namespace", &self.namespace)
            .field("features", &self.features)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    pub id: u64,
    /// Unix time in milliseconds after which the host kills the instance.
    pub deadline_ms: u64,
    #[serde(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// An HTTP request that reached `/fn/{name}/...`.
    Request(HttpRequest),
    /// A JSON event from `thaw invoke`.
    Event(serde_json::Value),
    /// A tick of a cron schedule.
    Scheduled(ScheduledCall),
}

/// What a schedule's tick tells the function; each handler style receives
/// it in its own ecosystem's shape (docs/triggers.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledCall {
    /// The schedule's name.
    pub schedule: String,
    pub cron: String,
    pub timezone: String,
    /// The tick this call is for, Unix milliseconds.
    pub scheduled_time_ms: i64,
    /// The async call's id.
    pub invocation: String,
    /// For class services: `Class.method` to call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// An HTTP request's head; its body follows the `invoke` on the call's
/// [`frame::Stream::Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// Starts with `/`: the part of the URL path after `/fn/{name}`.
    pub path: String,
    /// Raw query string, without the `?`.
    pub query: String,
    /// Lowercase names; repeated names are kept as separate pairs.
    pub headers: Vec<(String, String)>,
    pub source_ip: String,
    pub host: String,
}

/// Writes one message frame (a convenience for peers that send little:
/// tests, tools).
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buf = Vec::new();
    frame::encode_message(&mut buf, msg)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

impl ProtocolError {
    /// Whether the peer broke the protocol (a frame too large, or one that
    /// is not a message this side knows), as opposed to the stream ending
    /// or failing. The stream cannot be trusted afterwards: the host kills
    /// a runtime that does this.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            ProtocolError::FrameTooLarge(_)
                | ProtocolError::Malformed(_)
                | ProtocolError::UnknownKind(_)
                | ProtocolError::FrameTooShort { .. }
                | ProtocolError::UnknownStream(_)
                | ProtocolError::OldProtocol { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frame::{Frame, FrameReader};

    #[test]
    fn init_debug_shows_variable_names_never_values() {
        let init = Init {
            function: "f".into(),
            version: 1,
            code_dir: "/code".into(),
            entry: "index.mjs".into(),
            env: [("DB_PASSWORD".to_string(), "hunter2-value".to_string())].into(),
            timeout_ms: 1000,
            memory_mb: 128,
            namespace: "a".into(),
            features: Vec::new(),
        };
        let shown = format!("{:?}", ToRuntime::Init(init));
        assert!(
            shown.contains("DB_PASSWORD") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn messages_round_trip_and_match_the_documented_json() {
        let msg = ToRuntime::Invoke(Invoke {
            id: 7,
            deadline_ms: 1000,
            payload: Payload::Event(serde_json::json!({"a": 1})),
        });
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"invoke","id":7,"deadline_ms":1000,"event":{"a":1}})
        );
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).await.unwrap();
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        assert_eq!(buf[4], 0x01, "the message kind");
        let back: Frame<ToRuntime> = FrameReader::new(buf.as_slice()).next().await.unwrap();
        assert_eq!(back, Frame::Message(msg));
    }

    #[tokio::test]
    async fn runtime_messages_parse_from_the_shim_json() {
        let raw =
            br#"{"type":"result","id":3,"status":200,"headers":[["content-type","text/plain"]]}"#;
        let mut buf = (raw.len() as u32 + 1).to_be_bytes().to_vec();
        buf.push(0x01);
        buf.extend_from_slice(raw);
        let msg: Frame<FromRuntime> = FrameReader::new(buf.as_slice()).next().await.unwrap();
        assert_eq!(
            msg,
            Frame::Message(FromRuntime::Result {
                id: 3,
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                background: false,
            })
        );
    }

    #[tokio::test]
    async fn bad_json_and_unknown_types_are_violations() {
        for raw in [
            &b"not json"[..],
            br#"{"type":"launch_missiles"}"#,
            br#"{"id":1}"#,
        ] {
            let mut buf = (raw.len() as u32 + 1).to_be_bytes().to_vec();
            buf.push(0x01);
            buf.extend_from_slice(raw);
            let err = FrameReader::new(buf.as_slice())
                .next::<FromRuntime>()
                .await
                .unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
            assert!(err.is_violation());
        }
    }

    #[tokio::test]
    async fn truncated_and_empty_streams_are_closed() {
        let truncated = [0u8, 0, 0, 10, 0x01, b'{'];
        let err = FrameReader::new(&truncated[..])
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
        let empty: [u8; 0] = [];
        let err = FrameReader::new(&empty[..])
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
    }
}
