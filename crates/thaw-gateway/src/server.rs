//! `thaw up`: open the platform, serve HTTP until stopped, shut down.
//!
//! Connections are accepted here, not by `axum::serve`, so that each one is
//! bounded (docs/security.md, "Bounds"): a client has
//! [`ConnectionLimits::header_read_timeout`] to send a request's head, and
//! [`ConnectionLimits::idle_timeout`] of silence while it is its turn to send
//! (between requests, or within a request body thaw is waiting for); at most
//! [`ConnectionLimits::max_connections`] are open at once. A connection that
//! overstays is closed, whatever it does; so idle or slow clients hold a
//! slot for a bounded time and never stop thaw from answering others.

use crate::platform::{Config, Platform};
use anyhow::Context as _;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

/// How long clients may hold a connection, and how many may. Each field
/// is a `thaw up` flag's worth; [`Default`] holds thaw's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's head (request line and
    /// headers), counted from when the connection was accepted for its
    /// first request, and from the request's first byte for the next ones
    /// on a kept-alive connection. Past it, the connection is closed.
    pub header_read_timeout: Duration,
    /// Silence thaw waits out while it is the client's turn to send: on a
    /// kept-alive connection between a response and the next request, and
    /// within a request body the handler is reading. Past it, the
    /// connection is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; `None`: derived from the descriptor limit
    /// (see [`ConnectionLimits::connection_cap`]). At the cap thaw stops
    /// accepting (new connections wait in the kernel's listen queue) and
    /// closes kept-alive connections that sit idle, to make room.
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// Most connections the derived cap allows, however many descriptors
/// there are: an idle connection costs about 10 KiB of thaw's memory.
const MAX_DERIVED_CONNECTIONS: usize = 16_384;

/// Fewest connections the derived cap allows, however few descriptors.
const MIN_DERIVED_CONNECTIONS: usize = 64;

/// Largest request head (request line and headers) a client may send, and
/// so the most one connection buffers while it is read; hyper answers 431
/// past it. (hyper's own default is about 400 KiB per connection.)
const MAX_HEAD_BYTES: usize = 64 * 1024;

impl ConnectionLimits {
    /// The connection cap for a process that may open `nofile`
    /// descriptors: a quarter of them (at least 256) is kept for
    /// everything else (instances' sockets and pipes, the registry,
    /// bundles, the listener), the rest may be connections, between 64 and
    /// 16,384 unless set.
    pub fn connection_cap(&self, nofile: u64) -> usize {
        if let Some(max) = self.max_connections {
            return max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        }
        let reserve = (nofile / 4).max(256);
        let room = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX);
        room.clamp(MIN_DERIVED_CONNECTIONS, MAX_DERIVED_CONNECTIONS)
    }
}

/// Runs the platform until the process is stopped.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    serve_with(config, ConnectionLimits::default()).await
}

/// [`serve`] with connection limits of one's own.
pub async fn serve_with(config: Config, limits: ConnectionLimits) -> anyhow::Result<()> {
    let nofile = raise_fd_limit();
    let listen = config.listen;
    let platform = Platform::open(config).await?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "could not listen on {listen} (is another thaw running? pick another with --listen)"
        )
    })?;
    let addr = listener.local_addr()?;
    platform.spawn_reaper();
    platform.spawn_async_worker();
    platform.spawn_provisioner();
    platform.spawn_change_follower();
    platform.join_cluster(addr).await?;
    eprintln!("{}", platform.started_line(addr));
    eprintln!("dashboard: http://{addr}/ui/ (sign in with an API key)");
    if !platform.can_build_typescript() {
        eprintln!("warning: esbuild not found: TypeScript deploys will fail until `cargo xtask setup` runs");
    }
    let cap = limits.connection_cap(nofile);
    tracing::info!(
        "at most {cap} connections (descriptor limit {nofile}); request heads within {:?}, idle clients closed after {:?}",
        limits.header_read_timeout,
        limits.idle_timeout
    );
    let app = crate::api::router(platform.clone());
    accept_until_stopped(listener, app, limits, cap, shutdown_signal()).await;
    platform.shut_down().await;
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit, so that
/// connections and instances are bounded by what the operator allows, not
/// by a login default of 1024; returns the soft limit in force.
fn raise_fd_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            } else {
                tracing::warn!(
                    "could not raise the descriptor limit from {} to {}: {}",
                    limit.rlim_cur,
                    limit.rlim_max,
                    io::Error::last_os_error()
                );
            }
        }
    }
    limit.rlim_cur
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("thaw is stopping");
}

/// Accepts connections until `stop` resolves, then lets every open one
/// finish what it is doing (idle ones close at once) and returns when all
/// are closed.
async fn accept_until_stopped(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    cap: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let (crowded, crowded_rx) = watch::channel(false);
    let (stopping, stopping_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        // A slot before a connection: at the cap nothing more is accepted,
        // so new clients wait in the kernel's listen queue (costing thaw no
        // descriptor and no memory) and are taken, in order, as slots free.
        // Accepting and closing at once would instead turn every client
        // away while the cap holds, the ones that mean well included.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // While full, kept-alive connections sitting idle between
                // requests make room.
                crowded.send_replace(true);
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = &mut stop => break,
                };
                crowded.send_replace(false);
                slot
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        // Out of descriptors or memory: the client waits in
                        // the queue meanwhile.
                        tracing::error!("accept error: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = &mut stop => break,
                        }
                    }
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // An answer goes out as its head and then its body's chunks: with
        // Nagle's algorithm on, a chunk written after the head waits for
        // the peer's delayed acknowledgement (40 ms on Linux), which a
        // worker forwarding the call, reading the head first, holds back.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            limits,
            crowded: crowded_rx.clone(),
            stopping: stopping_rx.clone(),
        };
        tokio::spawn(async move {
            connection.serve(stream, peer).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection holds a slot until it is closed.
    let _ = slots.acquire_many(cap as u32).await;
}

/// What one connection's task needs.
struct Connection {
    app: Router,
    limits: ConnectionLimits,
    /// True while all slots are taken and a client may be waiting.
    crowded: watch::Receiver<bool>,
    /// Turns true when thaw is stopping.
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, peer: SocketAddr) {
        let watch = Arc::new(Watch::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            watch: watch.clone(),
        });
        let app = self.app.clone();
        let on_request = watch.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let handling = Handling::begin(on_request.clone());
            let mut request = request.map(|body| WatchedBody {
                inner: body,
                watch: on_request.clone(),
            });
            // Function routes take the client's address (source_ip).
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                let response =
                    tower_service::Service::<Request<WatchedBody>>::call(&mut app, request).await;
                // The request is being handled until its response's body has
                // been sent, however long a function streams it (its own
                // timeout bounds that): a pause between two server-sent
                // events is not a client's silence.
                response.map(|r| {
                    r.map(|body| {
                        axum::body::Body::new(Answering {
                            inner: body,
                            _handling: handling,
                        })
                    })
                })
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Timing is this module's, not hyper's (whose header timer would
        // also cut kept-alive connections short of the idle timeout).
        builder
            .header_read_timeout(None)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        // Once set, hyper closes the connection as soon as no response is
        // owed (at once when idle), never cutting one short.
        let mut closing = false;
        loop {
            if !closing && *self.crowded.borrow() && watch.idle_between_requests() {
                tracing::debug!("closing the idle connection from {peer} to make room");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            let deadline = watch.deadline(&self.limits);
            let overstayed = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    return;
                }
                _ = overstayed => {
                    // The deadline may have moved since: look again. Past
                    // it the client has had its whole time: the socket is
                    // closed whatever hyper is waiting for.
                    if watch.deadline(&self.limits).is_some_and(|at| at <= Instant::now()) {
                        tracing::debug!("closing the connection from {peer}: too slow or idle too long");
                        return;
                    }
                }
                _ = watch.changed.notified() => {}
                _ = self.crowded.changed(), if !closing => {}
                _ = self.stopping.changed(), if !closing => {
                    // Idle connections close at once; a request being
                    // handled is answered first.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Never set: stands for "not now" in a [`Watch`] time slot.
const NEVER: u64 = u64::MAX;

/// What one connection is doing, as far as its deadlines go. Times are
/// milliseconds since it was accepted.
struct Watch {
    accepted: Instant,
    /// Requests being handled (HTTP/1: at most one).
    handling: AtomicUsize,
    /// Whether a request has reached the router yet.
    served: AtomicBool,
    /// When the first byte of the next request came, while no request is
    /// being handled.
    head_started: AtomicU64,
    /// When thaw last finished a request or wrote to the client.
    active: AtomicU64,
    /// Since when the handler waits for request body bytes that have not
    /// come.
    body_wait: AtomicU64,
    /// Woken when a deadline may have come closer.
    changed: Notify,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            accepted: Instant::now(),
            handling: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            head_started: AtomicU64::new(NEVER),
            active: AtomicU64::new(0),
            body_wait: AtomicU64::new(NEVER),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64, after: Duration) -> Instant {
        self.accepted + Duration::from_millis(ms) + after
    }

    /// When the connection is to be closed unless something happens first;
    /// `None` while a handler is at work (it has timeouts of its own).
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.handling.load(Ordering::SeqCst) > 0 {
            let waiting = self.body_wait.load(Ordering::SeqCst);
            return (waiting != NEVER).then(|| self.at(waiting, limits.idle_timeout));
        }
        if !self.served.load(Ordering::SeqCst) {
            return Some(self.accepted + limits.header_read_timeout);
        }
        match self.head_started.load(Ordering::SeqCst) {
            NEVER => Some(self.at(self.active.load(Ordering::SeqCst), limits.idle_timeout)),
            started => Some(self.at(started, limits.header_read_timeout)),
        }
    }

    /// A kept-alive connection with nothing to do.
    fn idle_between_requests(&self) -> bool {
        self.served.load(Ordering::SeqCst)
            && self.handling.load(Ordering::SeqCst) == 0
            && self.head_started.load(Ordering::SeqCst) == NEVER
    }

    fn read_some(&self) {
        if self.handling.load(Ordering::SeqCst) == 0
            && self.served.load(Ordering::SeqCst)
            && self
                .head_started
                .compare_exchange(NEVER, self.now(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn wrote_some(&self) {
        self.active.store(self.now(), Ordering::SeqCst);
    }
}

/// One request in the router's hands.
struct Handling(Arc<Watch>);

impl Handling {
    fn begin(watch: Arc<Watch>) -> Handling {
        watch.handling.fetch_add(1, Ordering::SeqCst);
        watch.served.store(true, Ordering::SeqCst);
        watch.head_started.store(NEVER, Ordering::SeqCst);
        watch.changed.notify_one();
        Handling(watch)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let watch = &self.0;
        watch.active.store(watch.now(), Ordering::SeqCst);
        watch.head_started.store(NEVER, Ordering::SeqCst);
        watch.handling.fetch_sub(1, Ordering::SeqCst);
        watch.changed.notify_one();
    }
}

/// The connection's socket, telling its [`Watch`] what comes and goes.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote_some();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body, holding its request's [`Handling`] until it is sent
/// (or dropped, the client gone).
struct Answering {
    inner: axum::body::Body,
    _handling: Handling,
}

impl Body for Answering {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body, telling the connection's [`Watch`] while the handler
/// waits for bytes the client has not sent.
struct WatchedBody {
    inner: Incoming,
    watch: Arc<Watch>,
}

impl Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let watch = &self.watch;
        if polled.is_pending() {
            if watch
                .body_wait
                .compare_exchange(NEVER, watch.now(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                watch.changed.notify_one();
            }
        } else {
            watch.body_wait.store(NEVER, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watch.body_wait.store(NEVER, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server of `accept_until_stopped` on a free port; stops when the
    /// sender is sent to (or dropped).
    async fn start(
        limits: ConnectionLimits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "slow\n"
                }),
            )
            .route(
                "/echo",
                post(|body: axum::body::Body| async move {
                    match axum::body::to_bytes(body, 1 << 20).await {
                        Ok(b) => b.len().to_string(),
                        Err(_) => "error".to_string(),
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cap = limits.connection_cap(1024);
        let server = tokio::spawn(accept_until_stopped(listener, app, limits, cap, async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// Sends one request and reads its response (`Content-Length` framed);
    /// returns the status line's code and the body.
    async fn ask(s: &mut TcpStream, path: &str) -> (u16, String) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
                .await
                .expect("an answer within a minute")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    let status = text[9..12].parse().unwrap();
                    return (status, text[end + 4..end + 4 + length].to_string());
                }
            }
        }
    }

    /// Waits (at most a minute) for the server to close `s`.
    async fn closes(s: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        let end = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the connection was never closed");
    }

    #[tokio::test]
    async fn at_the_cap_idle_kept_alive_connections_make_room() {
        let (addr, stop, server) = start(ConnectionLimits {
            header_read_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            max_connections: Some(2),
        })
        .await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut a, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(ask(&mut b, "/healthz").await, (200, "ok\n".into()));
        // Both slots are held by idle kept-alive connections: a third
        // client is still answered, and knows its own address.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let me = c.local_addr().unwrap().to_string();
        assert_eq!(ask(&mut c, "/peer").await, (200, me));
        // ... because an idle one was closed to make room.
        tokio::select! {
            _ = closes(&mut a) => {}
            _ = closes(&mut b) => {}
        }
        // Stopping closes idle connections at once and returns.
        stop.send(()).unwrap();
        closes(&mut c).await;
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the server stops")
            .unwrap();
    }

    #[tokio::test]
    async fn silent_and_stalled_clients_are_closed_and_queued_ones_served() {
        let (addr, _stop, _server) = start(ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(500),
            max_connections: Some(2),
        })
        .await;
        // Two clients that never send a byte hold both slots...
        let mut silent = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        // ... a third waits in the listen queue, and is served once the
        // header timeout has closed them.
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut c, "/healthz").await, (200, "ok\n".into()));
        for s in &mut silent {
            closes(s).await;
        }
        // A request body that stops coming: closed after the idle timeout.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        closes(&mut stalled).await;
        // A head that never ends, though bytes keep coming.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"X").await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), trickle)
            .await
            .expect("a slow head is cut off");
    }

    #[tokio::test]
    async fn a_head_too_large_is_refused_with_431() {
        let (addr, _stop, _server) = start(ConnectionLimits::default()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let big = "x".repeat(MAX_HEAD_BYTES);
        let head = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
        // The server may stop reading before all of it is sent.
        let _ = c.write_all(head.as_bytes()).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        // A head within the bound is served.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let fits = "x".repeat(MAX_HEAD_BYTES / 2);
        let head = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {fits}\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }

    #[tokio::test]
    async fn stopping_answers_the_request_in_progress() {
        let (addr, stop, server) = start(ConnectionLimits::default()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let asked = tokio::spawn(async move { ask(&mut c, "/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        assert_eq!(asked.await.unwrap(), (200, "slow\n".into()));
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the server stops")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[test]
    fn the_connection_cap_follows_the_descriptor_limit() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.connection_cap(1024), 768);
        assert_eq!(limits.connection_cap(20_000), 15_000);
        assert_eq!(limits.connection_cap(1 << 20), MAX_DERIVED_CONNECTIONS);
        assert_eq!(limits.connection_cap(100), MIN_DERIVED_CONNECTIONS);
        let set = ConnectionLimits {
            max_connections: Some(5),
            ..limits
        };
        assert_eq!(set.connection_cap(1024), 5);
    }

    #[test]
    fn deadlines_follow_what_the_connection_does() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        };
        let w = Arc::new(Watch::new());
        // A fresh connection: its first head within the header timeout,
        // bytes or not.
        assert_eq!(
            w.deadline(&limits),
            Some(w.accepted + limits.header_read_timeout)
        );
        w.read_some();
        assert_eq!(
            w.deadline(&limits),
            Some(w.accepted + limits.header_read_timeout)
        );
        // Handled: no deadline, unless the handler waits for body bytes.
        let handling = Handling::begin(w.clone());
        assert_eq!(w.deadline(&limits), None);
        w.body_wait.store(1_000, Ordering::SeqCst);
        assert_eq!(w.deadline(&limits), Some(w.at(1_000, limits.idle_timeout)));
        w.body_wait.store(NEVER, Ordering::SeqCst);
        w.read_some(); // body bytes: not a new head
        assert_eq!(w.deadline(&limits), None);
        drop(handling);
        // Kept alive: the idle timeout, until the next head begins.
        assert!(w.idle_between_requests());
        let idle = w.deadline(&limits).unwrap();
        assert!(idle >= w.accepted + limits.idle_timeout);
        w.read_some();
        assert!(!w.idle_between_requests());
        let head = w.deadline(&limits).unwrap();
        assert!(head < idle && head >= w.accepted + limits.header_read_timeout);
    }
}
