//! Bodies on the wire: a request's body pumped to the runtime as its credit
//! allows, and a response's body handed on chunk by chunk as it arrives.
//!
//! Either way, what thaw holds of one body is bounded by the window
//! ([`thaw_protocol::frame::WINDOW`]), whatever the body's size: the
//! runtime may send a response chunk only within the credit thaw granted,
//! and thaw grants more only as the consumer (the HTTP client, through
//! the gateway) takes what it has; a request chunk leaves only within the
//! credit the runtime granted, and thaw reads the client's next chunk only
//! once the last one has left.

use super::Shared;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use thaw_protocol::frame::{self, MAX_CHUNK, MAX_CREDIT, WINDOW};
use tokio::sync::{mpsc, oneshot, Notify};

/// A request body as the client sends it: chunks, or an error that says
/// why the rest will not come (the client went away, a limit was passed).
pub type BodyChunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// The body of a request, for a call whose payload is an HTTP request.
pub enum RequestBody {
    Empty,
    /// Whole already (a small body, or one read before the call).
    Full(Bytes),
    /// Read as the runtime takes it.
    Stream(BodyChunks),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            RequestBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// What the read loop hands a response body.
#[derive(Debug)]
pub(super) enum Chunk {
    Data(Bytes),
    End,
    Abort(String),
}

/// A response body that did not end normally: the function failed
/// mid-stream, hit its timeout, or its runtime died.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the response body was cut short: {0}")]
pub struct BodyAborted(pub String);

/// Why [`ResponseBody::collect`] has no whole body to give.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CollectError {
    #[error("the response is larger than the {} MiB a buffered call takes", .0 / (1024 * 1024))]
    TooLarge(usize),
    #[error(transparent)]
    Aborted(#[from] BodyAborted),
}

/// The read loop's side of one response body.
pub(super) struct Download {
    pub tx: mpsc::UnboundedSender<Chunk>,
    /// Credit granted to the runtime so far (bytes), by the consumer.
    pub granted: Arc<AtomicU64>,
    /// Bytes the runtime sent so far.
    pub received: u64,
    /// Dropped when the runtime is done with the body (it ended, was
    /// aborted, or the consumer went away): the call no longer occupies
    /// the instance.
    pub _occupied: oneshot::Sender<()>,
    /// What runs at that moment.
    pub done: Arc<Mutex<Done>>,
}

/// Whether the runtime is done with a body, and what to run when it is.
#[derive(Default)]
pub(super) struct Done {
    over: bool,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Download {
    fn drop(&mut self) {
        let then = {
            let mut done = self.done.lock().unwrap();
            done.over = true;
            done.then.take()
        };
        if let Some(then) = then {
            then();
        }
    }
}

impl Download {
    /// Ends the body with `last` (its end, or why it was cut short). The
    /// runtime is done with it before the consumer can see that: whatever
    /// waits for that ([`ResponseBody::when_done`]) has run by then.
    pub fn finish(self, last: Chunk) {
        let tx = self.tx.clone();
        drop(self);
        let _ = tx.send(last);
    }

    /// Takes one chunk from the runtime; `Err` says how it broke the
    /// flow control.
    pub fn take(&mut self, call: u64, bytes: Bytes) -> Result<(), String> {
        self.received += bytes.len() as u64;
        let granted = self.granted.load(Ordering::Acquire);
        if self.received > granted {
            return Err(format!(
                "{} bytes of the response body of call {call}, past the {granted} bytes of credit thaw granted",
                self.received
            ));
        }
        // The consumer may be gone; what it dropped is not kept.
        let _ = self.tx.send(Chunk::Data(bytes));
        Ok(())
    }
}

/// A response body as it arrives from the runtime.
pub struct ResponseBody {
    id: u64,
    rx: mpsc::UnboundedReceiver<Chunk>,
    shared: Weak<Shared>,
    granted: Arc<AtomicU64>,
    consumed: u64,
    finished: bool,
    occupied: Option<oneshot::Receiver<()>>,
    done: Arc<Mutex<Done>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("call", &self.id)
            .field("consumed", &self.consumed)
            .field("finished", &self.finished)
            .finish()
    }
}

/// Resolves once the runtime is done with a response body (see
/// [`ResponseBody::occupancy`]).
pub struct BodyOccupancy(oneshot::Receiver<()>);

impl BodyOccupancy {
    /// Whether the runtime is done already.
    pub fn is_over(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }
}

impl std::future::Future for BodyOccupancy {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl ResponseBody {
    /// A new download for call `id`: the read loop's end and the
    /// consumer's.
    pub(super) fn open(id: u64, shared: Weak<Shared>) -> (Download, ResponseBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (occupied_tx, occupied_rx) = oneshot::channel();
        let granted = Arc::new(AtomicU64::new(u64::from(WINDOW)));
        let done = Arc::new(Mutex::new(Done::default()));
        (
            Download {
                tx,
                granted: granted.clone(),
                received: 0,
                _occupied: occupied_tx,
                done: done.clone(),
            },
            ResponseBody {
                id,
                rx,
                shared,
                granted,
                consumed: 0,
                finished: false,
                occupied: Some(occupied_rx),
                done,
            },
        )
    }

    /// A body already whole, tied to no runtime (tests, fakes).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> ResponseBody {
        let (download, body) = ResponseBody::open(0, Weak::new());
        let bytes = bytes.into();
        if !bytes.is_empty() {
            let _ = download.tx.send(Chunk::Data(bytes));
        }
        let _ = download.tx.send(Chunk::End);
        body
    }

    /// What resolves once the runtime is done with this body: it sent its
    /// end or abort, the consumer went away, or the runtime died. Until
    /// then the call occupies its instance. Taken once.
    pub fn occupancy(&mut self) -> Option<BodyOccupancy> {
        self.occupied.take().map(BodyOccupancy)
    }

    /// Runs `then` once the runtime is done with this body (as
    /// [`ResponseBody::occupancy`] resolves), in the same step as what
    /// ends it, so that nothing can see the call still holding its
    /// instance after the body's last byte went out. Runs it at once, and
    /// returns `true`, if the runtime is done already.
    ///
    /// `then` runs on the runtime's read loop, or wherever the body is
    /// dropped: it must be quick and must not wait.
    pub fn when_done(&self, then: impl FnOnce() + Send + 'static) -> bool {
        let mut done = self.done.lock().unwrap();
        if done.over {
            drop(done);
            then();
            return true;
        }
        done.then = Some(Box::new(then));
        false
    }

    /// The next chunk; `None` once the body ended normally.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyAborted>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let chunk = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(chunk) => chunk,
        };
        match chunk {
            Some(Chunk::Data(bytes)) => {
                self.consumed += bytes.len() as u64;
                self.top_up();
                Poll::Ready(Some(Ok(bytes)))
            }
            Some(Chunk::End) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Some(Chunk::Abort(reason)) => {
                self.finished = true;
                Poll::Ready(Some(Err(BodyAborted(reason))))
            }
            None => {
                self.finished = true;
                Poll::Ready(Some(Err(BodyAborted(
                    "the runtime stopped answering".into(),
                ))))
            }
        }
    }

    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyAborted>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The whole body, or an error past `limit` bytes (the runtime is told
    /// to stop) or when it is cut short.
    pub async fn collect(mut self, limit: usize) -> Result<Vec<u8>, CollectError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(CollectError::TooLarge(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Grants the runtime credit again once a quarter of the window was
    /// taken, so that it has a window's worth ahead of the consumer.
    fn top_up(&mut self) {
        let granted = self.granted.load(Ordering::Relaxed);
        let more = (self.consumed + u64::from(WINDOW)).saturating_sub(granted);
        if more < u64::from(WINDOW / 4) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        self.granted.fetch_add(more, Ordering::AcqRel);
        let mut out = Vec::with_capacity(18);
        frame::encode_credit(&mut out, self.id, frame::Stream::Response, more as u32);
        shared.send_frames(out);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The consumer went away mid-body (a client that disconnected):
        // the runtime stops sending, and the call frees its instance.
        if let Some(shared) = self.shared.upgrade() {
            shared.cancel_call(self.id, "the client went away");
        }
    }
}

/// The pump's side of one request body: the credit the runtime granted,
/// and whether it wants no more.
#[derive(Default)]
pub(super) struct Upload {
    state: Mutex<UploadState>,
    wake: Notify,
}

#[derive(Default)]
struct UploadState {
    credit: u64,
    stopped: bool,
}

impl Upload {
    pub fn new() -> Arc<Upload> {
        let upload = Upload::default();
        upload.state.lock().unwrap().credit = u64::from(WINDOW);
        Arc::new(upload)
    }

    /// Adds credit from the runtime; `Err` when it grants past the bound.
    pub fn grant(&self, call: u64, bytes: u32) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        state.credit += u64::from(bytes);
        if state.credit > MAX_CREDIT {
            return Err(format!(
                "credit of {} bytes for the request body of call {call}, past the {MAX_CREDIT}-byte bound",
                state.credit
            ));
        }
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    pub fn stop(&self) {
        self.state.lock().unwrap().stopped = true;
        self.wake.notify_one();
    }

    /// Waits for credit and takes up to `want` bytes of it; 0 once the
    /// runtime wants no more.
    async fn take(&self, want: usize) -> usize {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.stopped {
                    return 0;
                }
                if state.credit > 0 {
                    let n = (want as u64).min(state.credit);
                    state.credit -= n;
                    return n as usize;
                }
            }
            // notify_one keeps a permit when nobody waits: a grant between
            // the check above and this wait is not lost.
            self.wake.notified().await;
        }
    }

    async fn stopped(&self) {
        loop {
            if self.state.lock().unwrap().stopped {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// Sends a request body to the runtime as its credit allows, then its end
/// (or an abort saying why it stopped). Runs as its own task for bodies
/// that are not whole at the call's start.
pub(super) async fn pump(shared: Weak<Shared>, id: u64, mut chunks: BodyChunks, up: Arc<Upload>) {
    let stream = frame::Stream::Request;
    let last = loop {
        let next = tokio::select! {
            next = chunks.next() => next,
            _ = up.stopped() => break None,
        };
        let mut bytes = match next {
            None => break Some(Ok(())),
            Some(Err(why)) => break Some(Err(why)),
            Some(Ok(bytes)) => bytes,
        };
        while !bytes.is_empty() {
            let n = up.take(bytes.len().min(MAX_CHUNK)).await;
            if n == 0 {
                break;
            }
            let piece = bytes.split_to(n);
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut out = Vec::with_capacity(18 + n);
            frame::encode_data(&mut out, id, stream, &piece);
            shared.send_frames(out);
        }
    };
    let Some(shared) = shared.upgrade() else {
        return;
    };
    shared.uploads.lock().unwrap().remove(&id);
    let mut out = Vec::new();
    match last {
        // The runtime stopped the stream (or the call ended): nothing to say.
        None => return,
        Some(Ok(())) => frame::encode_end(&mut out, id, stream),
        Some(Err(why)) => frame::encode_abort(&mut out, id, stream, &why),
    }
    shared.send_frames(out);
}
