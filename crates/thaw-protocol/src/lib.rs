//! The framed wire protocol between thaw and a runtime instance.
//!
//! One byte stream per instance (a socketpair for the `process` driver, a
//! virtio-serial port for `microvm`) carries length-prefixed JSON messages:
//! `init`, `invoke`, `result`, `log`, `error`. This crate owns the message
//! types and the framing, and nothing else: it knows no transport, no
//! process, no HTTP server. `docs/protocol.md` is its specification.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the protocol this host speaks; a runtime announcing another
/// one is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts. Bodies travel in frames, so this also
/// bounds a request or response body (after base64).
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
    Result {
        id: u64,
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        /// Base64 of the response body.
        #[serde(default)]
        body: String,
    },
    Error {
        id: u64,
        message: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        stack: Option<String>,
    },
}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// Starts with `/`: the part of the URL path after `/fn/{name}`.
    pub path: String,
    /// Raw query string, without the `?`.
    pub query: String,
    /// Lowercase names; repeated names are kept as separate pairs.
    pub headers: Vec<(String, String)>,
    /// Base64 of the request body.
    pub body: String,
    pub source_ip: String,
    pub host: String,
}

/// Writes one frame: a big-endian u32 length, then the JSON.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let json = serde_json::to_vec(msg)?;
    if json.len() > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge(json.len()));
    }
    let mut buf = Vec::with_capacity(4 + json.len());
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. A clean end of stream before a frame starts is
/// [`ProtocolError::Closed`].
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(serde_json::from_slice(&buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_match_the_documented_json() {
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
        write_frame(&mut buf, &msg).await.unwrap();
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        let back: ToRuntime = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, msg);
    }

    #[tokio::test]
    async fn runtime_messages_parse_from_the_shim_json() {
        let raw = br#"{"type":"result","id":3,"status":200,"headers":[["content-type","text/plain"]],"body":"aGk="}"#;
        let mut buf = (raw.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(raw);
        let msg: FromRuntime = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(
            msg,
            FromRuntime::Result {
                id: 3,
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: "aGk=".into()
            }
        );
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read_frame::<_, FromRuntime>(&mut &huge[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(_)));
        let truncated = [0u8, 0, 0, 10, b'{'];
        let err = read_frame::<_, FromRuntime>(&mut &truncated[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
        let empty: [u8; 0] = [];
        let err = read_frame::<_, FromRuntime>(&mut &empty[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
    }
}
