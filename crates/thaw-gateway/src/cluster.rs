//! One worker among several sharing a PostgreSQL registry: who is in, where
//! each function lives, and carrying a call there.
//!
//! Membership: every worker renews a lease in the registry each second
//! (`platform/membership.rs` runs the loop) and reads who else holds one.
//! A worker that cannot renew its own lease for [`LEASE`] stops serving
//! function calls (`503 not_serving`, and `/readyz` says so) rather than
//! serve routes that may be stale; the others stop routing to it once its
//! lease lapses.
//!
//! Homes: each function has a home worker, the first in its rendezvous
//! order (highest-random-weight hashing of the function's name with each
//! live worker's id), so its warm instances are found again whichever
//! worker a call lands on, and a worker joining or leaving moves only the
//! functions whose first choice it is. A call landing elsewhere is
//! forwarded to the home over a kept-alive connection. When the home is
//! out of room (it refused the call without running it: full queue, host
//! budget, no runtime) or cannot be reached, the call goes to the next
//! choice, and as a last resort it is served where it landed.
//!
//! Workers authenticate each other with a token derived from the secrets
//! key they share; a forwarded call is served where it arrives, never
//! forwarded again. The token and the hop's headers are taken off every
//! request before a function sees it.

use crate::errors::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use thaw_registry::Worker;

/// How long a lease lasts; it is renewed every [`RENEW_EVERY`].
pub const LEASE: Duration = Duration::from_secs(5);
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A worker that refused a connection is passed over this long.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Choices a call may try before it is served where it landed.
const TRIES: usize = 3;

/// Carries the token between workers.
pub const CLUSTER_HEADER: &str = "x-thaw-cluster";
/// The address of the client a forwarded call came from.
pub const CLIENT_HEADER: &str = "x-thaw-client-ip";
/// Set on a platform refusal (the function never ran): another worker may
/// take the call.
pub const REFUSED_HEADER: &str = "x-thaw-refused";
/// Which worker served a function call.
pub const WORKER_HEADER: &str = "x-thaw-worker";

/// The client's address, for a call forwarded from another worker.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub struct Cluster {
    me: String,
    token: String,
    members: RwLock<Vec<Worker>>,
    suspects: Mutex<HashMap<String, Instant>>,
    serving: AtomicBool,
    /// Set once this worker stops: it serves no more and renews nothing.
    left: AtomicBool,
    /// Held while the lease is being renewed, so that giving it up waits
    /// for a renewal under way instead of being undone by it.
    pub(crate) renewing: tokio::sync::Mutex<()>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    pub forwarded: AtomicU64,
    pub spilled: AtomicU64,
    pub served_here: AtomicU64,
}

/// What to do with a function call that arrived here.
pub enum Landing {
    /// Serve it on this worker.
    Here(Request<Body>),
    /// Another worker answered it.
    Answered(Response),
}

/// The function a function-route path names: `namespace/name`.
fn function_key(path: &str) -> Option<String> {
    let (namespace, rest) = match path.strip_prefix("/fn/") {
        Some(rest) => (thaw_registry::DEFAULT_NAMESPACE, rest),
        None => {
            let rest = path.strip_prefix("/ns/")?;
            let (ns, rest) = rest.split_once('/')?;
            (ns, rest.strip_prefix("fn/")?)
        }
    };
    let target = rest.split('/').next()?;
    let name = target.split('@').next()?;
    (!name.is_empty()).then(|| format!("{namespace}/{name}"))
}

/// Rendezvous weight of `worker` for `key`.
fn weight(key: &str, worker: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(worker.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// `members` in the order `key` prefers them.
fn rendezvous<'a>(key: &str, members: &'a [Worker]) -> Vec<&'a Worker> {
    let mut ordered: Vec<(u64, &Worker)> =
        members.iter().map(|w| (weight(key, &w.id), w)).collect();
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    ordered.into_iter().map(|(_, w)| w).collect()
}

impl Cluster {
    /// A worker with id `me`, whose token is derived from the secrets key
    /// all workers share.
    pub fn new(me: String, secrets_key: &str) -> Cluster {
        let token = hex::encode(
            Sha256::new()
                .chain_update(b"thaw cluster token v1\0")
                .chain_update(secrets_key.trim().as_bytes())
                .finalize(),
        );
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        // Kept-alive connections to a worker that vanished are dropped
        // within seconds instead of being reused.
        connector.set_keepalive(Some(Duration::from_secs(5)));
        connector.set_keepalive_interval(Some(Duration::from_secs(1)));
        connector.set_keepalive_retries(Some(3));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector);
        Cluster {
            me,
            token,
            members: RwLock::new(Vec::new()),
            suspects: Mutex::new(HashMap::new()),
            // Not until the first lease is written (`join_cluster`).
            serving: AtomicBool::new(false),
            left: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(()),
            client,
            forwarded: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            served_here: AtomicU64::new(0),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live workers, as last read from the registry.
    pub fn set_members(&self, members: Vec<Worker>) {
        *self.members.write().unwrap() = members;
    }

    pub fn members(&self) -> Vec<Worker> {
        self.members.read().unwrap().clone()
    }

    /// Whether this worker holds its lease (and so serves calls).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub fn set_serving(&self, serving: bool) {
        if self.has_left() {
            return;
        }
        if self.serving.swap(serving, Ordering::AcqRel) != serving {
            if serving {
                tracing::info!("this worker holds its lease: serving calls");
            } else {
                tracing::error!(
                    "this worker could not renew its lease in the registry: it stops serving calls until it can"
                );
            }
        }
    }

    /// This worker is stopping: it takes no more calls and its lease is
    /// not renewed again.
    pub fn leave(&self) {
        self.left.store(true, Ordering::Release);
        self.serving.store(false, Ordering::Release);
    }

    /// This worker's routing counters and membership, in Prometheus text.
    pub fn render_metrics(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP thaw_cluster_calls_total Function calls that reached this worker, by what became of them: served here (the function's home, a call another worker forwarded, or a last resort), forwarded to the function's home, or spilled past a home that had no room.\n\
             # TYPE thaw_cluster_calls_total counter\n\
             thaw_cluster_calls_total{{landing=\"here\"}} {}\n\
             thaw_cluster_calls_total{{landing=\"forwarded\"}} {}\n\
             thaw_cluster_calls_total{{landing=\"spilled\"}} {}\n\
             # HELP thaw_cluster_workers Live workers sharing the registry, as this worker last read them.\n\
             # TYPE thaw_cluster_workers gauge\n\
             thaw_cluster_workers {}\n\
             # HELP thaw_cluster_serving Whether this worker holds its lease and serves calls.\n\
             # TYPE thaw_cluster_serving gauge\n\
             thaw_cluster_serving {}\n",
            load(&self.served_here),
            load(&self.forwarded),
            load(&self.spilled),
            self.members.read().unwrap().len(),
            u8::from(self.serving()),
        )
    }

    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// The worker ids a call of `key` tries, in order: live workers by
    /// rendezvous weight, those that refused a connection lately or are
    /// full last.
    fn choices(&self, key: &str) -> Vec<Worker> {
        let members = self.members.read().unwrap();
        let mut suspects = self.suspects.lock().unwrap();
        suspects.retain(|_, since| since.elapsed() < SUSPECT_FOR);
        let (good, bad): (Vec<&Worker>, Vec<&Worker>) =
            rendezvous(key, &members).into_iter().partition(|w| {
                w.id == self.me || (!suspects.contains_key(&w.id) && w.busy < w.capacity)
            });
        good.into_iter().chain(bad).cloned().collect()
    }

    fn suspect(&self, worker: &str) {
        self.suspects
            .lock()
            .unwrap()
            .insert(worker.to_string(), Instant::now());
    }

    /// Whether `headers` carry this cluster's token.
    fn sent_by_a_worker(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CLUSTER_HEADER)
            .is_some_and(|v| thaw_registry::same_secret(v.as_bytes(), self.token.as_bytes()))
    }

    /// Decides where a function call is served; see the module's
    /// documentation. `body_limit` bounds what is buffered of a body that
    /// may have to be sent twice.
    pub async fn land(
        &self,
        mut request: Request<Body>,
        peer: IpAddr,
        body_limit: usize,
    ) -> Result<Landing, ApiError> {
        let from_worker = self.sent_by_a_worker(request.headers());
        let client_ip = request
            .headers()
            .get(CLIENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<IpAddr>().ok());
        // Whatever a client sent of the hop's headers is not believed, and
        // no function sees them.
        for h in [CLUSTER_HEADER, CLIENT_HEADER] {
            request.headers_mut().remove(h);
        }
        if !self.serving() {
            // Refused without running: a forwarding worker tries the next.
            let mut refusal = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_serving",
                "this worker lost its lease in the registry and serves no calls until it renews it: try another worker",
            )
            .into_response();
            mark_refused(&mut refusal);
            return Ok(Landing::Answered(refusal));
        }
        if from_worker {
            if let Some(ip) = client_ip {
                request.extensions_mut().insert(ClientIp(ip));
            }
            self.served_here.fetch_add(1, Ordering::Relaxed);
            return Ok(Landing::Here(request));
        }
        let Some(key) = function_key(request.uri().path()) else {
            return Ok(Landing::Here(request));
        };
        if crate::function_route::wants_async(request.headers()).is_some() {
            // The queue is shared: any worker runs it.
            return Ok(Landing::Here(request));
        }
        let choices = self.choices(&key);
        if choices.first().is_none_or(|w| w.id == self.me) {
            self.served_here.fetch_add(1, Ordering::Relaxed);
            return Ok(Landing::Here(request));
        }
        // The function sees its caller's address, not this worker's.
        let peer_ip = Some(peer);
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, body_limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request bodies are limited to {} MiB",
                    body_limit / (1024 * 1024)
                ),
            )
        })?;
        for (i, worker) in choices.iter().take(TRIES).enumerate() {
            if worker.id == self.me {
                break;
            }
            let sent = self
                .send(
                    worker,
                    &parts.method,
                    &parts.uri,
                    &parts.headers,
                    body.clone(),
                    peer_ip,
                )
                .await;
            match sent {
                Ok(response)
                    if response.headers().contains_key(REFUSED_HEADER)
                        && i + 1 < TRIES.min(choices.len()) =>
                {
                    self.spilled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(response) => {
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                    return Ok(Landing::Answered(response));
                }
                Err(Unreached::Never) => {
                    self.suspect(&worker.id);
                    continue;
                }
                Err(Unreached::Lost(e)) => {
                    self.suspect(&worker.id);
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "worker_lost",
                        format!(
                            "the worker serving this call stopped answering mid-call ({e}): it may or may not have run; retry if that is safe"
                        ),
                    ));
                }
            }
        }
        // Nobody else could take it: serve it here.
        self.served_here.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::from_parts(parts, Body::from(body));
        if let Some(ip) = peer_ip {
            request.extensions_mut().insert(ClientIp(ip));
        }
        Ok(Landing::Here(request))
    }

    async fn send(
        &self,
        worker: &Worker,
        method: &axum::http::Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        client_ip: Option<IpAddr>,
    ) -> Result<Response, Unreached> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let target: Uri = format!("{}{path}", worker.address.trim_end_matches('/'))
            .parse()
            .map_err(|_| Unreached::Never)?;
        let mut forward = Request::builder().method(method.clone()).uri(target);
        for (name, value) in headers {
            if !is_hop_by_hop(name) {
                forward = forward.header(name, value);
            }
        }
        forward = forward.header(CLUSTER_HEADER, &self.token);
        if let Some(ip) = client_ip {
            forward = forward.header(CLIENT_HEADER, ip.to_string());
        }
        let forward = forward
            .body(Full::new(body))
            .map_err(|_| Unreached::Never)?;
        // A worker that vanished from the network leaves the request
        // hanging on a connection nobody answers: give up once its lease
        // has lapsed, as the other workers do.
        let request = self.client.request(forward);
        tokio::pin!(request);
        let mut watch = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                sent = &mut request => return match sent {
                    Ok(response) => {
                        let (parts, incoming) = response.into_parts();
                        Ok(Response::from_parts(parts, Body::new(incoming)))
                    }
                    Err(e) if e.is_connect() => Err(Unreached::Never),
                    Err(e) => Err(Unreached::Lost(e.to_string())),
                },
                _ = watch.tick() => {
                    if !self.is_member(&worker.id) {
                        return Err(Unreached::Lost(format!(
                            "worker {} lost its lease in the registry",
                            worker.id
                        )));
                    }
                }
            }
        }
    }

    fn is_member(&self, id: &str) -> bool {
        self.members.read().unwrap().iter().any(|w| w.id == id)
    }
}

enum Unreached {
    /// No connection: the call was not sent.
    Never,
    /// The connection broke after the call was sent.
    Lost(String),
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// Marks a platform refusal so a forwarding worker may try another.
pub fn mark_refused(response: &mut Response) {
    response
        .headers_mut()
        .insert(REFUSED_HEADER, HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> Worker {
        Worker {
            id: id.into(),
            address: format!("http://{id}"),
            capacity: 10,
            busy: 0,
            started_ms: 0,
            lease_until_ms: i64::MAX,
        }
    }

    #[test]
    fn a_function_route_names_its_function() {
        assert_eq!(function_key("/fn/api/x/y").as_deref(), Some("default/api"));
        assert_eq!(function_key("/fn/api@prod").as_deref(), Some("default/api"));
        assert_eq!(
            function_key("/ns/team/fn/api@7/z").as_deref(),
            Some("team/api")
        );
        assert_eq!(function_key("/v1/functions"), None);
        assert_eq!(function_key("/fn/"), None);
    }

    #[test]
    fn homes_spread_and_move_only_when_their_worker_goes() {
        let three: Vec<Worker> = ["a", "b", "c"].into_iter().map(worker).collect();
        let keys: Vec<String> = (0..3000).map(|i| format!("default/f{i}")).collect();
        let home = |members: &[Worker], k: &str| rendezvous(k, members)[0].id.clone();
        let mut per_worker: HashMap<String, usize> = HashMap::new();
        for k in &keys {
            *per_worker.entry(home(&three, k)).or_default() += 1;
        }
        for (w, n) in &per_worker {
            assert!((800..1200).contains(n), "{w} is home to {n} of 3000");
        }
        // Without c, only c's functions move; each to its second choice.
        let two: Vec<Worker> = three.iter().filter(|w| w.id != "c").cloned().collect();
        for k in &keys {
            let before = rendezvous(k, &three);
            let after = home(&two, k);
            if before[0].id != "c" {
                assert_eq!(after, before[0].id, "{k} moved though its home stayed");
            } else {
                assert_eq!(after, before[1].id);
            }
        }
    }

    #[test]
    fn suspects_and_full_workers_go_last() {
        let cluster = Cluster::new("a".into(), &"11".repeat(32));
        let mut members: Vec<Worker> = ["a", "b", "c"].into_iter().map(worker).collect();
        let key = (0..)
            .map(|i| format!("default/f{i}"))
            .find(|k| rendezvous(k, &members)[0].id == "b")
            .unwrap();
        cluster.set_members(members.clone());
        assert_eq!(cluster.choices(&key)[0].id, "b");
        cluster.suspect("b");
        assert_eq!(cluster.choices(&key).last().unwrap().id, "b");
        cluster.suspects.lock().unwrap().clear();
        members[1].busy = 10;
        cluster.set_members(members);
        assert_eq!(cluster.choices(&key).last().unwrap().id, "b");
    }

    #[test]
    fn only_the_shared_token_makes_a_call_a_workers() {
        let cluster = Cluster::new("a".into(), &"11".repeat(32));
        let other = Cluster::new("b".into(), &"22".repeat(32));
        let mut h = HeaderMap::new();
        h.insert(
            CLUSTER_HEADER,
            HeaderValue::from_str(&cluster.token).unwrap(),
        );
        assert!(cluster.sent_by_a_worker(&h));
        assert!(!other.sent_by_a_worker(&h));
        h.insert(CLUSTER_HEADER, HeaderValue::from_static("guess"));
        assert!(!cluster.sent_by_a_worker(&h));
    }
}
