//! Protocol 2 framing: JSON messages and binary body frames on one stream.
//!
//! Every frame is a 4-byte big-endian length `N` (the bytes after it), then
//! one kind byte, then `N - 1` bytes whose shape the kind decides:
//!
//! | kind | name | after the kind byte |
//! | --- | --- | --- |
//! | `0x01` | message | UTF-8 JSON object (`type` names it) |
//! | `0x02` | data | call id (u64 BE), stream (u8), body bytes |
//! | `0x03` | end | call id, stream |
//! | `0x04` | abort | call id, stream, UTF-8 reason |
//! | `0x05` | credit | call id, stream, bytes granted (u32 BE) |
//!
//! Bodies never pass through JSON. The sender of a stream may have at most
//! the credit its receiver granted in flight ([`WINDOW`] to begin with), so
//! neither side ever holds more than a window per stream, whatever the
//! body's size. `docs/protocol.md` is the specification.
//!
//! A protocol 1 peer's frames are JSON right after the length, so their
//! first byte is `{`: [`FrameReader`] names such a peer rather than taking
//! it for a broken one.

use crate::{ProtocolError, MAX_FRAME};
use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

const KIND_MESSAGE: u8 = 0x01;
const KIND_DATA: u8 = 0x02;
const KIND_END: u8 = 0x03;
const KIND_ABORT: u8 = 0x04;
const KIND_CREDIT: u8 = 0x05;
/// The first byte of every protocol 1 frame's JSON.
const PROTOCOL_1_FIRST_BYTE: u8 = b'{';

/// Kind byte, call id and stream: what precedes a data frame's bytes.
const STREAM_HEADER: usize = 1 + 8 + 1;

/// Largest body chunk one data frame carries. Senders split larger writes.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Credit each stream starts with: what a sender may have in flight before
/// its receiver grants more.
pub const WINDOW: u32 = 1024 * 1024;
/// Largest credit a receiver may have outstanding on one stream; more is a
/// violation (a receiver that grants without bound defeats the window).
pub const MAX_CREDIT: u64 = 64 * 1024 * 1024;
/// Longest reason an abort frame carries, in bytes.
pub const MAX_ABORT_REASON: usize = 4096;

/// Which body of a call a stream frame belongs to. Other values are
/// reserved (a later bidirectional stream) and refused today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Host → runtime: the HTTP request's body.
    Request = 0,
    /// Runtime → host: the response's body, after its `result`.
    Response = 1,
}

impl Stream {
    fn from_byte(b: u8) -> Option<Stream> {
        match b {
            0 => Some(Stream::Request),
            1 => Some(Stream::Response),
            _ => None,
        }
    }
}

/// One frame, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<T> {
    Message(T),
    Data {
        call: u64,
        stream: Stream,
        bytes: Bytes,
    },
    End {
        call: u64,
        stream: Stream,
    },
    Abort {
        call: u64,
        stream: Stream,
        reason: String,
    },
    Credit {
        call: u64,
        stream: Stream,
        bytes: u32,
    },
}

/// Appends a message frame holding `msg` as JSON.
pub fn encode_message<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, KIND_MESSAGE]);
    serde_json::to_writer(&mut *out, msg)?;
    let len = out.len() - start - 4;
    if len - 1 > MAX_FRAME {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge(len - 1));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

fn stream_header(out: &mut Vec<u8>, len: usize, kind: u8, call: u64, stream: Stream) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&call.to_be_bytes());
    out.push(stream as u8);
}

/// Appends data frames carrying `bytes`, split at [`MAX_CHUNK`].
pub fn encode_data(out: &mut Vec<u8>, call: u64, stream: Stream, bytes: &[u8]) {
    for chunk in bytes.chunks(MAX_CHUNK) {
        stream_header(out, STREAM_HEADER + chunk.len(), KIND_DATA, call, stream);
        out.extend_from_slice(chunk);
    }
}

/// Appends the frame that ends a stream normally.
pub fn encode_end(out: &mut Vec<u8>, call: u64, stream: Stream) {
    stream_header(out, STREAM_HEADER, KIND_END, call, stream);
}

/// Appends the frame that ends a stream abnormally; the reason is cut at
/// [`MAX_ABORT_REASON`] bytes (at a character boundary).
pub fn encode_abort(out: &mut Vec<u8>, call: u64, stream: Stream, reason: &str) {
    let mut end = reason.len().min(MAX_ABORT_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    stream_header(out, STREAM_HEADER + reason.len(), KIND_ABORT, call, stream);
    out.extend_from_slice(reason);
}

/// Appends a frame granting the sender of a stream `bytes` more credit.
pub fn encode_credit(out: &mut Vec<u8>, call: u64, stream: Stream, bytes: u32) {
    stream_header(out, STREAM_HEADER + 4, KIND_CREDIT, call, stream);
    out.extend_from_slice(&bytes.to_be_bytes());
}

/// What one read offers to fill at least: a frame's bytes arrive in reads
/// of this size or more, so small frames cost one read for many.
const READ_SIZE: usize = 64 * 1024;

/// Reads frames from an untrusted peer, many per read where they fit.
///
/// A frame's declared length is checked against its kind's bound before
/// any of it is waited for, and the buffer grows with the bytes that
/// arrive, never with the length announced: a peer that announces 64 MiB
/// and sends ten bytes costs ten bytes' worth (and a read's room).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Reads until the buffer holds `want` bytes; `Closed` at a clean end.
    async fn fill(&mut self, want: usize) -> Result<(), ProtocolError> {
        while self.buf.len() < want {
            // Room for what is missing, but never more than what arrived
            // so far (or a read's worth): the buffer doubles as bytes come.
            let missing = want - self.buf.len();
            self.buf
                .reserve(missing.min(self.buf.len().max(READ_SIZE)).max(READ_SIZE));
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ProtocolError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(ProtocolError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next frame. A clean end of stream between frames is
    /// [`ProtocolError::Closed`].
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Frame<T>, ProtocolError> {
        self.fill(4).await?;
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        // No kind allows this much: refused without waiting for a kind byte
        // that a broken peer may never send.
        if len > 1 + MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge(len - 1));
        }
        self.fill(5).await?;
        let kind = self.buf[4];
        if kind == PROTOCOL_1_FIRST_BYTE {
            return Err(self.protocol_1(len).await);
        }
        check_length(kind, len)?;
        self.fill(4 + len).await?;
        let mut frame = self.buf.split_to(4 + len);
        frame.advance(5);
        if kind == KIND_MESSAGE {
            return Ok(Frame::Message(serde_json::from_slice(&frame)?));
        }
        let call = frame.get_u64();
        let stream_byte = frame.get_u8();
        let stream =
            Stream::from_byte(stream_byte).ok_or(ProtocolError::UnknownStream(stream_byte))?;
        Ok(match kind {
            KIND_DATA => Frame::Data {
                call,
                stream,
                bytes: frame.freeze(),
            },
            KIND_END => Frame::End { call, stream },
            KIND_ABORT => Frame::Abort {
                call,
                stream,
                reason: String::from_utf8_lossy(&frame).into_owned(),
            },
            KIND_CREDIT => Frame::Credit {
                call,
                stream,
                bytes: frame.get_u32(),
            },
            _ => unreachable!("check_length refuses unknown kinds"),
        })
    }

    /// Names a protocol 1 peer from its first frame, a JSON `ready` that
    /// says which protocol and runtime it is.
    async fn protocol_1(&mut self, len: usize) -> ProtocolError {
        #[derive(serde::Deserialize)]
        struct Ready {
            #[serde(default)]
            protocol: Option<u64>,
            #[serde(default)]
            runtime: Option<String>,
        }
        let said = if len <= MAX_FRAME && self.fill(4 + len).await.is_ok() {
            serde_json::from_slice::<Ready>(&self.buf[4..4 + len]).ok()
        } else {
            None
        };
        let (protocol, runtime) = said
            .map(|r| (r.protocol.unwrap_or(1), r.runtime))
            .unwrap_or((1, None));
        ProtocolError::OldProtocol {
            protocol,
            runtime: runtime.unwrap_or_else(|| "the runtime".into()),
        }
    }
}

/// Refuses a frame whose length its kind does not allow, before reading it.
fn check_length(kind: u8, len: usize) -> Result<(), ProtocolError> {
    let (min, max) = match kind {
        KIND_MESSAGE => (1, 1 + MAX_FRAME),
        KIND_DATA => (STREAM_HEADER + 1, STREAM_HEADER + MAX_CHUNK),
        KIND_END => (STREAM_HEADER, STREAM_HEADER),
        KIND_ABORT => (STREAM_HEADER, STREAM_HEADER + MAX_ABORT_REASON),
        KIND_CREDIT => (STREAM_HEADER + 4, STREAM_HEADER + 4),
        other => return Err(ProtocolError::UnknownKind(other)),
    };
    if len > max {
        return Err(ProtocolError::FrameTooLarge(len - 1));
    }
    if len < min {
        return Err(ProtocolError::FrameTooShort { kind, len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FromRuntime, LogStream};

    /// A peer that sends `data` in pieces of at most `piece` bytes and
    /// records the widest read it was offered.
    struct Peer {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        widest_read: usize,
    }

    impl Peer {
        fn new(data: Vec<u8>, piece: usize) -> Peer {
            Peer {
                data,
                pos: 0,
                piece,
                widest_read: 0,
            }
        }
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            this.widest_read = this.widest_read.max(buf.remaining());
            let n = buf
                .remaining()
                .min(this.piece)
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn log(line: &str) -> FromRuntime {
        FromRuntime::Log {
            id: Some(1),
            stream: LogStream::Stdout,
            line: line.into(),
        }
    }

    #[tokio::test]
    async fn every_kind_round_trips_through_small_reads() {
        let body: Vec<u8> = (0..=255u8).cycle().take(MAX_CHUNK * 2 + 7).collect();
        let mut out = Vec::new();
        encode_message(&mut out, &log("héllo")).unwrap();
        encode_data(&mut out, 9, Stream::Response, &body);
        encode_end(&mut out, 9, Stream::Response);
        encode_abort(&mut out, 10, Stream::Request, "client went away");
        encode_credit(&mut out, 11, Stream::Request, 4096);
        let mut r = FrameReader::new(Peer::new(out, 1000));
        assert_eq!(
            r.next::<FromRuntime>().await.unwrap(),
            Frame::Message(log("héllo"))
        );
        let mut got = Vec::new();
        for _ in 0..3 {
            match r.next::<FromRuntime>().await.unwrap() {
                Frame::Data {
                    call: 9,
                    stream: Stream::Response,
                    bytes,
                } => got.extend_from_slice(&bytes),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, body, "binary bytes pass untouched, split at MAX_CHUNK");
        assert_eq!(
            r.next::<FromRuntime>().await.unwrap(),
            Frame::End {
                call: 9,
                stream: Stream::Response
            }
        );
        assert_eq!(
            r.next::<FromRuntime>().await.unwrap(),
            Frame::Abort {
                call: 10,
                stream: Stream::Request,
                reason: "client went away".into()
            }
        );
        assert_eq!(
            r.next::<FromRuntime>().await.unwrap(),
            Frame::Credit {
                call: 11,
                stream: Stream::Request,
                bytes: 4096
            }
        );
        assert!(matches!(
            r.next::<FromRuntime>().await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn lengths_a_kind_does_not_allow_are_refused_before_reading() {
        let cases: [(u8, u32); 5] = [
            (KIND_DATA, (STREAM_HEADER + MAX_CHUNK + 1) as u32),
            (KIND_MESSAGE, u32::MAX),
            (KIND_END, 99),
            (KIND_CREDIT, 3),
            (KIND_ABORT, (STREAM_HEADER + MAX_ABORT_REASON + 1) as u32),
        ];
        for (kind, len) in cases {
            let mut data = len.to_be_bytes().to_vec();
            data.push(kind);
            data.extend_from_slice(&[0; 100]);
            let mut r = FrameReader::new(Peer::new(data, usize::MAX));
            let err = r.next::<FromRuntime>().await.unwrap_err();
            assert!(err.is_violation(), "kind {kind} len {len}: {err}");
        }
        for raw in [[0, 0, 0, 1, 0x06], [0, 0, 0, 0, 0x01]] {
            let mut r = FrameReader::new(&raw[..]);
            let err = r.next::<FromRuntime>().await.unwrap_err();
            assert!(err.is_violation(), "{err}");
        }
    }

    #[tokio::test]
    async fn a_length_no_kind_allows_is_refused_before_its_kind_byte() {
        let prefix = u32::MAX.to_be_bytes();
        let err = FrameReader::new(&prefix[..])
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(_)), "{err}");
    }

    #[tokio::test]
    async fn a_reserved_stream_number_is_a_violation() {
        let mut out = Vec::new();
        encode_end(&mut out, 1, Stream::Request);
        *out.last_mut().unwrap() = 7;
        let err = FrameReader::new(&out[..])
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::UnknownStream(7)), "{err}");
        assert!(err.is_violation());
    }

    #[tokio::test]
    async fn the_buffer_grows_with_what_arrives_not_with_the_announced_length() {
        let mut data = ((60 * 1024 * 1024) as u32).to_be_bytes().to_vec();
        data.push(KIND_MESSAGE);
        data.extend_from_slice(b"{\"type\":\"");
        let mut peer = Peer::new(data, usize::MAX);
        let err = FrameReader::new(&mut peer)
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Closed), "{err}");
        assert!(
            peer.widest_read <= 2 * READ_SIZE,
            "a read offered {} bytes of room",
            peer.widest_read
        );
    }

    #[tokio::test]
    async fn a_protocol_1_peer_is_named_with_its_runtime() {
        let json =
            br#"{"type":"ready","protocol":1,"runtime":"thaw-shim/0.1.0","node":"v22","pid":5}"#;
        let mut data = (json.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(json);
        let err = FrameReader::new(&data[..])
            .next::<FromRuntime>()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("protocol 1")
                && text.contains("thaw-shim/0.1.0")
                && text.contains(&format!(
                    "this host speaks protocol {}",
                    crate::PROTOCOL_VERSION
                )),
            "{text}"
        );
        assert!(err.is_violation());
    }

    #[test]
    fn an_abort_reason_is_cut_at_a_character_boundary() {
        let mut out = Vec::new();
        encode_abort(&mut out, 1, Stream::Response, &"é".repeat(MAX_ABORT_REASON));
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert!(len - STREAM_HEADER <= MAX_ABORT_REASON);
        assert!(std::str::from_utf8(&out[4 + STREAM_HEADER..]).is_ok());
    }
}
