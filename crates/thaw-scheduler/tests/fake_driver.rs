//! Scheduler tests through a fake driver: no Node, no root, no QEMU.
//!
//! `FakeDriver::start` makes an in-memory duplex stream and spawns a task
//! that plays the runtime's side of the wire protocol: it announces itself
//! ready, answers `init` at once, and answers each `invoke` after the delay
//! its event asks for (`{"sleep_ms": 300}`), or exits without answering
//! (`{"exit": true}`). Its answer's body ("ok") follows its head at once,
//! or after `{"body_after_ms": 300}`, or never (`{"stall": true}`). The host side is a real [`Instance`], so the
//! scheduler under test runs exactly as it does over a real runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thaw_protocol::frame::{self, Frame, FrameReader, Stream};
use thaw_protocol::{FromRuntime, Init, Payload, ToRuntime, PROTOCOL_VERSION};
use thaw_sandbox::{
    Binding, BoxFuture, Driver, Instance, InvokeOutcome, LogLine, LogSink, RequestBody,
    RuntimeChange, RuntimeProcess, SandboxError,
};
use thaw_scheduler::{
    FunctionSpec, Invocation, InvokeError, PoolConfig, Quota, RuntimePool, Scheduler,
    SchedulerConfig,
};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The path `FakeDriver::attach` says the runtime sees the code under.
const FAKE_CODE_DIR: &str = "/fake/code";
/// How one fake runtime ends when thaw kills it.
const KILLED: &str = "killed by signal 9 (fake)";
/// How one fake runtime ends when an event tells it to exit.
const EXITED: &str = "exited with code 1 (fake)";

/// What the tests can see of one runtime the fake driver started.
struct FakeRuntime {
    /// 1 for the first runtime started, and so on.
    number: u32,
    /// The `init` frame it was bound with.
    init: Mutex<Option<Init>>,
    /// `None` while it runs; how it ended once it has.
    exit: watch::Sender<Option<String>>,
}

impl FakeRuntime {
    fn killed(&self) -> bool {
        self.exit.borrow().as_deref() == Some(KILLED)
    }

    /// Function, version and namespace (from the env) it was bound to.
    fn bound_to(&self) -> Option<(String, i64, String)> {
        self.init.lock().unwrap().as_ref().map(|init| {
            (
                init.function.clone(),
                init.version,
                init.env.get("NAMESPACE").cloned().unwrap_or_default(),
            )
        })
    }
}

#[derive(Default)]
struct FakeCounters {
    starts: AtomicU32,
    kills: AtomicU32,
    pauses: AtomicU32,
    resumes: AtomicU32,
}

/// A driver whose runtimes are tasks in this process.
#[derive(Default)]
struct FakeDriver {
    counters: Arc<FakeCounters>,
    runtimes: Mutex<Vec<Arc<FakeRuntime>>>,
}

impl FakeDriver {
    fn starts(&self) -> u32 {
        self.counters.starts.load(Ordering::SeqCst)
    }

    /// Runtimes killed while they were still running.
    fn kills(&self) -> u32 {
        self.counters.kills.load(Ordering::SeqCst)
    }

    fn pauses(&self) -> u32 {
        self.counters.pauses.load(Ordering::SeqCst)
    }

    fn resumes(&self) -> u32 {
        self.counters.resumes.load(Ordering::SeqCst)
    }

    fn runtime(&self, number: u32) -> Arc<FakeRuntime> {
        self.runtimes
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.number == number)
            .cloned()
            .expect("no fake runtime of that number")
    }

    /// The init the newest runtime got.
    fn last_init(&self) -> Option<thaw_protocol::Init> {
        let runtimes = self.runtimes.lock().unwrap();
        runtimes.last().and_then(|r| r.init.lock().unwrap().clone())
    }

    /// What the killed runtimes were bound to.
    fn killed_bindings(&self) -> Vec<(String, i64, String)> {
        self.runtimes
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.killed())
            .filter_map(|r| r.bound_to())
            .collect()
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn start(&self, sink: Arc<dyn LogSink>) -> BoxFuture<'_, Result<Instance, SandboxError>> {
        Box::pin(async move {
            let number = self.counters.starts.fetch_add(1, Ordering::SeqCst) + 1;
            let runtime = Arc::new(FakeRuntime {
                number,
                init: Mutex::new(None),
                exit: watch::Sender::new(None),
            });
            self.runtimes.lock().unwrap().push(runtime.clone());
            let (host, far) = tokio::io::duplex(64 * 1024);
            tokio::spawn(play_runtime(far, runtime.clone()));
            let (reader, writer) = tokio::io::split(host);
            let process = FakeProcess {
                runtime,
                counters: self.counters.clone(),
            };
            Instance::connect(reader, writer, Box::new(process), None, sink).await
        })
    }

    fn attach<'a>(
        &'a self,
        _instance: &'a Instance,
        _host_dir: &'a Path,
        _memory_mb: u32,
    ) -> BoxFuture<'a, Result<String, SandboxError>> {
        Box::pin(async { Ok(FAKE_CODE_DIR.to_string()) })
    }

    fn upgrade_runtime<'a>(
        &'a self,
        _shim: &'a Path,
        _node: &'a Path,
    ) -> BoxFuture<'a, Result<RuntimeChange, SandboxError>> {
        Box::pin(async {
            Ok(RuntimeChange {
                before: "fake-runtime/1".into(),
                after: "fake-runtime/1".into(),
            })
        })
    }
}

/// The "process" behind a fake runtime: killing it ends the runtime's
/// task, which closes its end of the stream.
struct FakeProcess {
    runtime: Arc<FakeRuntime>,
    counters: Arc<FakeCounters>,
}

impl RuntimeProcess for FakeProcess {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn kill(&self) {
        let was_running = self.runtime.exit.send_if_modified(|exit| {
            if exit.is_none() {
                *exit = Some(KILLED.to_string());
                true
            } else {
                false
            }
        });
        if was_running {
            self.counters.kills.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_exit(&self) -> BoxFuture<'_, String> {
        let mut exit = self.runtime.exit.subscribe();
        Box::pin(async move {
            match exit.wait_for(Option::is_some).await {
                Ok(how) => how.clone().unwrap_or_default(),
                Err(_) => "gone".to_string(),
            }
        })
    }

    fn pause(&self) {
        self.counters.pauses.fetch_add(1, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.counters.resumes.fetch_add(1, Ordering::SeqCst);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn memory_pss(&self) -> Option<u64> {
        None
    }
}

/// Writes frames, encoded by `encode`, in one write.
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    writer: &tokio::sync::Mutex<W>,
    encode: impl FnOnce(&mut Vec<u8>),
) -> std::io::Result<()> {
    let mut out = Vec::new();
    encode(&mut out);
    tokio::io::AsyncWriteExt::write_all(&mut *writer.lock().await, &out).await
}

fn message(out: &mut Vec<u8>, msg: &FromRuntime) {
    frame::encode_message(out, msg).unwrap();
}

/// The runtime's side of the stream, until it is killed or told to exit.
async fn play_runtime(stream: DuplexStream, runtime: Arc<FakeRuntime>) {
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(reader);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut exit = runtime.exit.subscribe();
    let ready = FromRuntime::Ready {
        protocol: PROTOCOL_VERSION,
        runtime: "fake-runtime/1".into(),
        node: String::new(),
        pid: 0,
    };
    if write_frames(&writer, |out| message(out, &ready))
        .await
        .is_err()
    {
        return;
    }
    // Calls being answered; dropped (aborted) when the runtime ends, so
    // that nothing holds the stream open.
    let mut calls = JoinSet::new();
    loop {
        let msg = tokio::select! {
            msg = reader.next::<ToRuntime>() => msg,
            ended = exit.wait_for(Option::is_some) => {
                drop(ended);
                break;
            }
        };
        match msg {
            Ok(Frame::Message(ToRuntime::Init(init))) => {
                *runtime.init.lock().unwrap() = Some(init);
                let ok = FromRuntime::InitOk {
                    style: "fake".into(),
                    services: Vec::new(),
                };
                if write_frames(&writer, |out| message(out, &ok))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Frame::Message(ToRuntime::Invoke(invoke))) => {
                let event = match invoke.payload {
                    Payload::Event(event) => event,
                    Payload::Request(_) | Payload::Scheduled(_) => serde_json::Value::Null,
                };
                if event["exit"] == serde_json::Value::Bool(true) {
                    runtime.exit.send_replace(Some(EXITED.to_string()));
                    break;
                }
                let sleep = Duration::from_millis(event["sleep_ms"].as_u64().unwrap_or(0));
                let body_after = event["body_after_ms"].as_u64().map(Duration::from_millis);
                let stall = event["stall"] == serde_json::Value::Bool(true);
                // Work left running after the answer, as `waitUntil` does.
                let background = event["background_ms"].as_u64().map(Duration::from_millis);
                let bound = runtime
                    .bound_to()
                    .map(|(f, v, _)| format!("{f}@{v}"))
                    .unwrap_or_default();
                let result = FromRuntime::Result {
                    id: invoke.id,
                    status: 200,
                    headers: vec![
                        ("x-fake-runtime".into(), runtime.number.to_string()),
                        ("x-fake-function".into(), bound),
                    ],
                    background: background.is_some(),
                };
                let writer = writer.clone();
                let id = invoke.id;
                calls.spawn(async move {
                    tokio::time::sleep(sleep).await;
                    let body = |out: &mut Vec<u8>| {
                        frame::encode_data(out, id, Stream::Response, b"ok");
                        frame::encode_end(out, id, Stream::Response);
                    };
                    let _ = write_frames(&writer, |out| {
                        message(out, &result);
                        if body_after.is_none() && !stall {
                            body(out);
                        }
                    })
                    .await;
                    if stall {
                        return;
                    }
                    if let Some(after) = body_after {
                        tokio::time::sleep(after).await;
                        let _ = write_frames(&writer, body).await;
                    }
                    if let Some(after) = background {
                        tokio::time::sleep(after).await;
                        let done = FromRuntime::BackgroundDone {
                            id,
                            timed_out: false,
                        };
                        let _ = write_frames(&writer, |out| message(out, &done)).await;
                    }
                });
            }
            // Bodies and credit: this runtime's calls need none.
            Ok(_) => {}
            // The host closed the stream, or sent garbage.
            Err(_) => break,
        }
    }
    calls.abort_all();
    while calls.join_next().await.is_some() {}
}

struct NullSink;

impl LogSink for NullSink {
    fn log(&self, _binding: Option<&Binding>, _line: LogLine) {}
}

/// A scheduler over a fake driver whose runtime pool never pre-starts
/// runtimes (its refill is not spawned): every cold start calls `start`.
fn setup() -> (Arc<FakeDriver>, Scheduler) {
    setup_with(SchedulerConfig {
        queue_limit: 10,
        queue_timeout: Duration::from_secs(5),
        ..SchedulerConfig::default()
    })
}

fn setup_with(config: SchedulerConfig) -> (Arc<FakeDriver>, Scheduler) {
    let driver = Arc::new(FakeDriver::default());
    let runtimes = RuntimePool::new(
        driver.clone(),
        "node20",
        Arc::new(NullSink),
        PoolConfig {
            min_idle: 0,
            max_idle: 0,
            memory_budget: u64::MAX,
            parallel_starts: 1,
        },
    );
    (driver, Scheduler::new(runtimes, config))
}

fn spec(namespace: &str, name: &str, version: i64) -> FunctionSpec {
    FunctionSpec {
        namespace: namespace.into(),
        name: name.into(),
        version,
        code_dir: PathBuf::from("/nonexistent/host/code"),
        entry: "index.js".into(),
        env: BTreeMap::from([("NAMESPACE".to_string(), namespace.to_string())]),
        timeout: Duration::from_secs(5),
        memory_mb: 128,
        concurrency: 1,
        max_body_bytes: 6 * 1024 * 1024,
        keep_alive: Duration::from_secs(60),
        max_instances: 16,
        min_instances: 0,
        driver: None,
        runtime: None,
    }
}

fn sleeping(ms: u64) -> Payload {
    Payload::Event(serde_json::json!({ "sleep_ms": ms }))
}

/// A header of a call's reply.
fn header(call: &Invocation<Vec<u8>>, name: &str) -> String {
    match &call.outcome {
        InvokeOutcome::Reply(reply) => reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header in {reply:?}")),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// The message of a `QuotaReached` error, or a panic naming what it was.
fn quota_message(result: &Result<Invocation<Vec<u8>>, InvokeError>) -> &str {
    match result {
        Err(InvokeError::QuotaReached(message)) => message,
        other => panic!("expected QuotaReached, got {other:?}"),
    }
}

#[tokio::test]
async fn a_warm_instance_is_reused() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);

    let first = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(first.cold, "the first call starts the instance");
    match &first.outcome {
        InvokeOutcome::Reply(reply) => {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, b"ok".to_vec());
        }
        other => panic!("expected a reply, got {other:?}"),
    }
    assert_eq!(header(&first, "x-fake-function"), "f@1");

    let second = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(!second.cold, "the second call finds the instance warm");
    assert_eq!(
        header(&first, "x-fake-runtime"),
        header(&second, "x-fake-runtime")
    );
    assert_ne!(first.id, second.id, "invocation ids are unique");
    assert_eq!(driver.starts(), 1);
    assert_eq!(driver.kills(), 0);

    // Bound once, with the path the driver attached the code under.
    let init = driver.runtime(1).init.lock().unwrap().clone().unwrap();
    assert_eq!(init.function, "f");
    assert_eq!(init.version, 1);
    assert_eq!(init.code_dir, FAKE_CODE_DIR);
    assert_eq!(init.entry, "index.js");
    assert_eq!(init.memory_mb, 128);

    let stats = scheduler.stats("a", "f");
    assert_eq!((stats.busy, stats.idle, stats.starting), (0, 1, 0));
    assert_eq!(scheduler.usage("a"), (1, 128));
}

#[tokio::test]
async fn a_function_runs_on_the_pool_of_its_runtime_line() {
    let (default_line, scheduler) = setup();
    let node22 = Arc::new(FakeDriver::default());
    let pool = |driver: &Arc<FakeDriver>, line: &str| {
        RuntimePool::new(
            driver.clone(),
            line,
            Arc::new(NullSink),
            PoolConfig {
                min_idle: 0,
                max_idle: 0,
                memory_budget: u64::MAX,
                parallel_starts: 1,
            },
        )
    };
    let on = |line: Option<&str>, name: &str| FunctionSpec {
        runtime: line.map(String::from),
        ..spec("a", name, 1)
    };
    assert!(scheduler.has_runtimes(&on(None, "f")));
    // The first pool's line is the default, named or not.
    assert!(scheduler.has_runtimes(&on(Some("node20"), "f")));
    assert!(!scheduler.has_runtimes(&on(Some("node22"), "g")));
    let missing = scheduler
        .invoke_buffered(&on(Some("node22"), "g"), sleeping(0), RequestBody::Empty)
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, InvokeError::Unavailable(m) if m.contains("no node22 runtimes under the fake driver")),
        "{missing:?}"
    );

    scheduler.add_runtimes(pool(&node22, "node22"));
    assert_eq!(
        scheduler.runtime_of(&on(Some("node22"), "g")),
        ("fake".to_string(), "node22".to_string())
    );
    scheduler
        .invoke_buffered(&on(Some("node22"), "g"), sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    scheduler
        .invoke_buffered(&on(None, "f"), sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    scheduler
        .invoke_buffered(&on(Some("node20"), "h"), sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert_eq!((default_line.starts(), node22.starts()), (2, 1));
    assert_eq!(node22.last_init().unwrap().function, "g");
    let other_driver = FunctionSpec {
        driver: Some("microvm".into()),
        ..on(Some("node22"), "k")
    };
    assert!(!scheduler.has_runtimes(&other_driver));
}

#[tokio::test]
async fn calls_beyond_max_instances_queue_for_a_warm_instance() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        max_instances: 1,
        ..spec("a", "f", 1)
    };
    let (one, two) = tokio::join!(
        scheduler.invoke_buffered(&f, sleeping(200), RequestBody::Empty),
        scheduler.invoke_buffered(&f, sleeping(200), RequestBody::Empty),
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(driver.starts(), 1, "max_instances = 1 starts one runtime");
    assert_ne!(one.cold, two.cold, "one call was cold, the other waited");
    assert_eq!(
        header(&one, "x-fake-runtime"),
        header(&two, "x-fake-runtime")
    );
}

#[tokio::test]
async fn busy_instances_are_those_serving_calls_not_idle_ones() {
    let (_driver, scheduler) = setup();
    let (fa, fb) = (spec("a", "f", 1), spec("b", "g", 2));
    let during = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        scheduler.busy_instances()
    };
    let (ra, rb, busy) = tokio::join!(
        scheduler.invoke_buffered(&fa, sleeping(400), RequestBody::Empty),
        scheduler.invoke_buffered(&fb, sleeping(400), RequestBody::Empty),
        during,
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(busy, 2, "two calls running");
    // Their calls over, the instances stay, idle: none is busy.
    assert_eq!(scheduler.usage("a").0 + scheduler.usage("b").0, 2);
    assert_eq!(scheduler.busy_instances(), 0);
}

#[tokio::test]
async fn a_namespace_quota_caps_its_instances_only() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 2,
            max_memory_mb: 10_000,
        },
    );
    let fa = spec("a", "f", 1);
    let fb = spec("b", "f", 2);

    let (r1, r2, r3, rb) = tokio::join!(
        scheduler.invoke_buffered(&fa, sleeping(300), RequestBody::Empty),
        scheduler.invoke_buffered(&fa, sleeping(300), RequestBody::Empty),
        scheduler.invoke_buffered(&fa, sleeping(300), RequestBody::Empty),
        scheduler.invoke_buffered(&fb, sleeping(300), RequestBody::Empty),
    );
    let results = [r1, r2, r3];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "{results:?}");
    let refused: Vec<&str> = results
        .iter()
        .filter(|r| r.is_err())
        .map(quota_message)
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("max_instances = 2"), "{}", refused[0]);
    assert!(refused[0].contains("`a`"), "{}", refused[0]);

    let rb = rb.expect("namespace b has no quota");
    assert!(rb.cold);

    assert_eq!(driver.starts(), 3, "two in a, one in b");
    assert_eq!(driver.kills(), 0);
    assert_eq!(scheduler.usage("a"), (2, 256));
    assert_eq!(scheduler.usage("b"), (1, 128));
}

#[tokio::test]
async fn a_memory_quota_allows_one_instance_at_a_time() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 10,
            max_memory_mb: 300,
        },
    );
    let f = FunctionSpec {
        memory_mb: 256,
        ..spec("a", "f", 1)
    };
    let g = FunctionSpec {
        memory_mb: 256,
        ..spec("a", "g", 1)
    };

    let (one, two) = tokio::join!(
        scheduler.invoke_buffered(&f, sleeping(300), RequestBody::Empty),
        scheduler.invoke_buffered(&f, sleeping(300), RequestBody::Empty),
    );
    let (ok, refused) = if one.is_ok() { (one, two) } else { (two, one) };
    assert!(ok.unwrap().cold);
    let message = quota_message(&refused);
    assert!(message.contains("max_memory_mb = 300"), "{message}");
    assert!(message.contains("256 MiB"), "{message}");
    assert_eq!(driver.starts(), 1);
    assert_eq!(scheduler.usage("a"), (1, 256));

    // While f's only instance is busy it cannot make room for g.
    let (busy, other) = tokio::join!(
        scheduler.invoke_buffered(&f, sleeping(300), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            scheduler
                .invoke_buffered(&g, sleeping(0), RequestBody::Empty)
                .await
        }
    );
    assert!(!busy.unwrap().cold, "f's instance is reused");
    let message = quota_message(&other);
    assert!(message.contains("max_memory_mb = 300"), "{message}");
    assert_eq!(driver.starts(), 1);
    assert_eq!(driver.kills(), 0);
    assert_eq!(scheduler.usage("a"), (1, 256));
}

#[tokio::test]
async fn an_idle_instance_of_another_function_makes_room() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 1,
            max_memory_mb: 10_000,
        },
    );
    let f1 = spec("a", "f1", 1);
    let f2 = FunctionSpec {
        memory_mb: 200,
        ..spec("a", "f2", 2)
    };

    let first = scheduler
        .invoke_buffered(&f1, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(first.cold);
    assert_eq!(scheduler.stats("a", "f1").idle, 1);
    assert_eq!(scheduler.usage("a"), (1, 128));
    assert_eq!(driver.kills(), 0);

    let second = scheduler
        .invoke_buffered(&f2, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(second.cold);
    assert_eq!(header(&second, "x-fake-function"), "f2@2");
    assert_eq!(driver.starts(), 2);
    assert_eq!(driver.kills(), 1, "f1's idle instance was ended");
    assert!(driver.runtime(1).killed(), "the one killed is f1's");
    assert!(!driver.runtime(2).killed());
    let f1_stats = scheduler.stats("a", "f1");
    assert_eq!((f1_stats.idle, f1_stats.busy), (0, 0));
    assert_eq!(scheduler.stats("a", "f2").idle, 1);
    assert_eq!(scheduler.usage("a"), (1, 200));

    // And back: f1 now evicts f2, starting cold again.
    let third = scheduler
        .invoke_buffered(&f1, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(third.cold);
    assert_eq!(driver.kills(), 2);
    assert!(driver.runtime(2).killed());
    assert_eq!(scheduler.usage("a"), (1, 128));
}

#[tokio::test]
async fn retire_kills_idle_instances_of_other_versions_of_that_function_only() {
    let (driver, scheduler) = setup();
    let specs = [
        spec("a", "f", 1),
        spec("a", "f", 2),
        spec("a", "g", 1),
        spec("b", "f", 1),
    ];
    for s in &specs {
        scheduler.start_idle(s).await.unwrap();
    }
    assert_eq!(driver.starts(), 4);
    assert_eq!(scheduler.stats("a", "f").idle, 2);

    scheduler.retire("a", "f", &[2]);

    assert_eq!(driver.kills(), 1);
    assert_eq!(
        driver.killed_bindings(),
        vec![("f".to_string(), 1, "a".to_string())]
    );
    assert_eq!(scheduler.stats("a", "f").idle, 1);
    assert_eq!(scheduler.stats("a", "g").idle, 1);
    assert_eq!(scheduler.stats("b", "f").idle, 1);
    assert_eq!(scheduler.usage("a"), (2, 256));
    assert_eq!(scheduler.usage("b"), (1, 128));

    // The survivors still serve warm.
    for s in &specs[1..] {
        let call = scheduler
            .invoke_buffered(s, sleeping(0), RequestBody::Empty)
            .await
            .unwrap();
        assert!(
            !call.cold,
            "{}/{}@{} is warm",
            s.namespace, s.name, s.version
        );
    }
    assert_eq!(driver.starts(), 4);
    assert_eq!(driver.kills(), 1);
}

#[tokio::test]
async fn retire_lets_a_busy_instance_finish_its_call_then_kills_it() {
    let (driver, scheduler) = setup();
    let f1 = spec("a", "f", 1);
    let (call, killed_while_busy) = tokio::join!(
        scheduler.invoke_buffered(&f1, sleeping(300), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            scheduler.retire("a", "f", &[2]);
            driver.kills()
        }
    );
    let call = call.expect("a retired version's running call finishes");
    assert_eq!(header(&call, "x-fake-function"), "f@1");
    assert_eq!(killed_while_busy, 0, "busy instances are not killed");
    assert_eq!(driver.kills(), 1, "killed when its call ended");
    assert_eq!(scheduler.stats("a", "f"), Default::default());
    assert_eq!(scheduler.usage("a"), (0, 0));
}

#[tokio::test]
async fn reap_idle_with_zero_keep_alive_removes_idle_instances() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    let g = spec("a", "g", 1);
    scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    scheduler
        .invoke_buffered(&g, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert_eq!(scheduler.usage("a"), (2, 256));

    let hour = Duration::from_secs(3600);
    assert_eq!(scheduler.reap_idle(|_, _, _| Some((hour, 0)), None), 0);
    assert_eq!(driver.kills(), 0);

    let reaped = scheduler.reap_idle(
        |_, name, _| Some((if name == "f" { Duration::ZERO } else { hour }, 0)),
        None,
    );
    assert_eq!(reaped, 1);
    assert_eq!(driver.killed_bindings(), vec![("f".into(), 1, "a".into())]);
    assert_eq!(scheduler.stats("a", "f").idle, 0);
    assert_eq!(scheduler.stats("a", "g").idle, 1);

    // No keep-alive known counts as zero.
    assert_eq!(scheduler.reap_idle(|_, _, _| None, None), 1);
    assert_eq!(driver.kills(), 2);
    assert_eq!(scheduler.stats("a", "g").idle, 0);
    assert_eq!(scheduler.usage("a"), (0, 0));

    let again = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(again.cold, "a reaped instance is started anew");
    assert_eq!(driver.starts(), 3);
}

#[tokio::test]
async fn reap_idle_leaves_busy_instances_alone() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    let (call, reaped) = tokio::join!(
        scheduler.invoke_buffered(&f, sleeping(300), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            scheduler.reap_idle(|_, _, _| Some((Duration::ZERO, 0)), None)
        }
    );
    assert_eq!(reaped, 0);
    assert!(call.is_ok());
    assert_eq!(driver.kills(), 0);
    assert_eq!(scheduler.stats("a", "f").idle, 1);
}

#[tokio::test]
async fn reap_idle_pauses_and_a_call_resumes() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();

    let hour = Duration::from_secs(3600);
    let reaped = scheduler.reap_idle(|_, _, _| Some((hour, 0)), Some(Duration::ZERO));
    assert_eq!(reaped, 0);
    assert_eq!(driver.pauses(), 1);
    assert_eq!(scheduler.stats("a", "f").paused, 1);
    // Already paused: not paused twice.
    scheduler.reap_idle(|_, _, _| Some((hour, 0)), Some(Duration::ZERO));
    assert_eq!(driver.pauses(), 1);

    let call = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(!call.cold);
    assert_eq!(driver.resumes(), 1);
    let stats = scheduler.stats("a", "f");
    assert_eq!((stats.idle, stats.paused), (1, 0));
}

#[tokio::test]
async fn a_crashed_instance_is_replaced_by_the_next_call() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    let crash = Payload::Event(serde_json::json!({ "exit": true }));
    match scheduler
        .invoke_buffered(&f, crash, RequestBody::Empty)
        .await
    {
        Err(InvokeError::Crashed { reason, .. }) => {
            assert!(reason.contains(EXITED), "{reason}");
        }
        other => panic!("expected Crashed, got {other:?}"),
    }
    assert_eq!(scheduler.stats("a", "f").idle, 0);
    assert_eq!(scheduler.usage("a"), (0, 0));

    let next = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(next.cold);
    assert_eq!(header(&next, "x-fake-runtime"), "2");
    assert_eq!(driver.starts(), 2);
    assert_eq!(driver.kills(), 0, "it exited by itself");
}

#[tokio::test]
async fn a_call_past_its_timeout_kills_the_instance() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        timeout: Duration::from_millis(200),
        ..spec("a", "f", 1)
    };
    match scheduler
        .invoke_buffered(&f, sleeping(5_000), RequestBody::Empty)
        .await
    {
        Err(InvokeError::Timeout { timeout, .. }) => {
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(driver.kills(), 1);
    assert_eq!(scheduler.stats("a", "f"), Default::default());

    let next = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(next.cold);
    assert_eq!(driver.starts(), 2);
}

#[tokio::test]
async fn a_full_queue_refuses_calls() {
    let (driver, scheduler) = setup_with(SchedulerConfig {
        queue_limit: 1,
        queue_timeout: Duration::from_secs(5),
        ..SchedulerConfig::default()
    });
    let f = FunctionSpec {
        max_instances: 1,
        ..spec("a", "f", 1)
    };
    let (one, two, three) = tokio::join!(
        scheduler.invoke_buffered(&f, sleeping(200), RequestBody::Empty),
        scheduler.invoke_buffered(&f, sleeping(0), RequestBody::Empty),
        scheduler.invoke_buffered(&f, sleeping(0), RequestBody::Empty),
    );
    assert!(one.unwrap().cold);
    assert!(!two.unwrap().cold, "the queued call got the warm instance");
    assert!(matches!(three, Err(InvokeError::QueueFull(1))), "{three:?}");
    assert_eq!(driver.starts(), 1);
}

#[tokio::test]
async fn retiring_a_version_while_it_cold_starts_does_not_bring_it_back() {
    let (driver, scheduler) = setup();
    let f1 = spec("a", "f", 1);
    let (call, ()) = tokio::join!(
        scheduler.invoke_buffered(&f1, sleeping(0), RequestBody::Empty),
        async {
            assert_eq!(scheduler.stats("a", "f").starting, 1);
            scheduler.retire("a", "f", &[2]);
        }
    );
    call.unwrap();
    assert_eq!(
        scheduler.stats("a", "f").idle,
        0,
        "the retired version's instance survived"
    );
    assert_eq!(driver.kills(), 1);
}

#[tokio::test]
async fn a_retired_cold_start_does_not_let_a_quota_overrun() {
    let (_driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 1,
            max_memory_mb: 10_000,
        },
    );
    let (f1, f2) = (spec("a", "f", 1), spec("a", "f", 2));
    let (one, two) = tokio::join!(
        scheduler.invoke_buffered(&f1, sleeping(0), RequestBody::Empty),
        async {
            scheduler.retire("a", "f", &[2]);
            scheduler
                .invoke_buffered(&f2, sleeping(0), RequestBody::Empty)
                .await
        }
    );
    one.unwrap();
    // The retired version's start still counts while it runs: the new
    // version's call may be refused, never let past the quota.
    assert!(
        matches!(two, Ok(_) | Err(InvokeError::QuotaReached(_))),
        "{two:?}"
    );
    assert!(
        scheduler.usage("a").0 <= 1,
        "usage {:?} over a quota of 1",
        scheduler.usage("a")
    );
}

#[tokio::test]
async fn nothing_is_evicted_for_a_call_that_could_never_fit() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 10,
            max_memory_mb: 300,
        },
    );
    let small = FunctionSpec {
        memory_mb: 16,
        ..spec("a", "small", 1)
    };
    let huge = FunctionSpec {
        memory_mb: 512,
        ..spec("a", "huge", 1)
    };
    scheduler
        .invoke_buffered(&small, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    let r = scheduler
        .invoke_buffered(&huge, sleeping(0), RequestBody::Empty)
        .await;
    assert!(matches!(r, Err(InvokeError::QuotaReached(_))), "{r:?}");
    assert_eq!(
        driver.kills(),
        0,
        "small's idle instance was killed for nothing"
    );
}

#[tokio::test]
async fn nothing_is_evicted_when_busy_instances_alone_leave_no_room() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 10,
            max_memory_mb: 300,
        },
    );
    let small = FunctionSpec {
        memory_mb: 16,
        ..spec("a", "small", 1)
    };
    let big = FunctionSpec {
        memory_mb: 256,
        ..spec("a", "big", 1)
    };
    let big2 = FunctionSpec {
        memory_mb: 256,
        ..spec("a", "big2", 1)
    };
    scheduler
        .invoke_buffered(&small, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    let (busy, refused) = tokio::join!(
        scheduler.invoke_buffered(&big, sleeping(300), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            scheduler
                .invoke_buffered(&big2, sleeping(0), RequestBody::Empty)
                .await
        }
    );
    busy.unwrap();
    assert!(
        matches!(refused, Err(InvokeError::QuotaReached(_))),
        "{refused:?}"
    );
    assert_eq!(
        driver.kills(),
        0,
        "small's idle instance was killed for nothing"
    );
}

#[tokio::test]
async fn the_host_budget_spans_namespaces_and_evicts_across_them() {
    let (driver, scheduler) = setup_with(SchedulerConfig {
        queue_limit: 10,
        queue_timeout: Duration::from_secs(5),
        host: Some(Quota {
            max_instances: 1,
            max_memory_mb: 10_000,
        }),
    });
    let a = spec("a", "f", 1);
    let b = spec("b", "g", 1);
    scheduler
        .invoke_buffered(&a, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    // b's cold start ends a's idle instance: the host holds one at a time.
    scheduler
        .invoke_buffered(&b, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert_eq!(driver.kills(), 1);
    assert_eq!((scheduler.usage("a").0, scheduler.usage("b").0), (0, 1));
    // With b busy, a has no room anywhere: 503-worthy, not a namespace's 429.
    let (busy, refused) = tokio::join!(
        scheduler.invoke_buffered(&b, sleeping(300), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            scheduler
                .invoke_buffered(&a, sleeping(0), RequestBody::Empty)
                .await
        }
    );
    busy.unwrap();
    match refused {
        Err(InvokeError::HostBudget(why)) => {
            assert!(why.contains("this host runs 1 instances"), "{why}")
        }
        other => panic!("expected the host budget to refuse: {other:?}"),
    }
}

fn with_background(ms: u64) -> Payload {
    Payload::Event(serde_json::json!({ "background_ms": ms }))
}

#[tokio::test]
async fn work_after_an_answer_keeps_an_instance_from_pause_and_reaping() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    let call = scheduler
        .invoke_buffered(&f, with_background(400), RequestBody::Empty)
        .await
        .unwrap();
    assert!(call.cold && driver.starts() == 1);
    let init = driver.last_init().expect("an init");
    assert_eq!(init.namespace, "a");
    assert!(init
        .features
        .iter()
        .any(|x| x == thaw_protocol::FEATURE_BACKGROUND_DONE));
    // While the work runs, a zero keep-alive and pause delay touch nothing.
    assert_eq!(
        scheduler.reap_idle(|_, _, _| Some((Duration::ZERO, 0)), Some(Duration::ZERO)),
        0
    );
    assert_eq!((driver.kills(), driver.pauses()), (0, 0));
    // Once the runtime says it ended, the instance is idle like any other.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        scheduler.reap_idle(|_, _, _| Some((Duration::ZERO, 0)), None),
        1
    );
    assert_eq!(driver.kills(), 1);
}

#[tokio::test]
async fn a_retired_instance_finishes_its_work_after_the_answer_first() {
    let (driver, scheduler) = setup();
    let f = spec("a", "f", 1);
    scheduler
        .invoke_buffered(&f, with_background(400), RequestBody::Empty)
        .await
        .unwrap();
    scheduler.retire("a", "f", &[]);
    assert_eq!(driver.kills(), 0, "killed while its work ran");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(driver.kills(), 1, "killed once the work ended");
}

#[tokio::test]
async fn busy_instances_of_a_retired_version_still_count_against_the_quota() {
    let (driver, scheduler) = setup();
    scheduler.set_quota(
        "a",
        Quota {
            max_instances: 2,
            max_memory_mb: 10_000,
        },
    );
    let (v1, v2) = (spec("a", "f", 1), spec("a", "f", 2));
    let (first, second, refused) = tokio::join!(
        scheduler.invoke_buffered(&v1, sleeping(400), RequestBody::Empty),
        scheduler.invoke_buffered(&v1, sleeping(400), RequestBody::Empty),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // An alias moves to version 2 while version 1's calls run.
            scheduler.retire("a", "f", &[2]);
            assert_eq!(scheduler.usage("a").0, 2, "the busy ones still count");
            scheduler
                .invoke_buffered(&v2, sleeping(0), RequestBody::Empty)
                .await
        }
    );
    first.unwrap();
    second.unwrap();
    assert!(
        matches!(refused, Err(InvokeError::QuotaReached(_))),
        "{refused:?}"
    );
    // Once their calls ended, version 1's instances are gone and room is back.
    assert_eq!(scheduler.usage("a").0, 0);
    assert_eq!(driver.kills(), 2);
    scheduler
        .invoke_buffered(&v2, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
}

#[tokio::test]
async fn provisioned_instances_stay_warm_come_back_after_a_crash_and_are_renewed() {
    let (driver, scheduler) = setup();
    let mut f = spec("a", "f", 1);
    f.min_instances = 2;
    f.keep_alive = Duration::ZERO;
    assert_eq!(scheduler.provision(&f).await.unwrap(), 2);
    assert_eq!(scheduler.provision(&f).await.unwrap(), 0, "they are there");
    let floor = |_: &str, _: &str, _: i64| Some((Duration::ZERO, 2));
    // Past their keep-alive and the pause delay, they are neither ended nor paused.
    assert_eq!(scheduler.reap_idle(floor, Some(Duration::ZERO)), 0);
    assert_eq!(scheduler.stats("a", "f").idle, 2);
    assert_eq!((driver.kills(), driver.pauses()), (0, 0));
    // A call uses one of them warm.
    assert!(
        !scheduler
            .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
            .await
            .unwrap()
            .cold
    );

    // One crashes: the next round starts a replacement.
    let crashed = driver
        .runtimes
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.bound_to().is_some())
        .cloned()
        .unwrap();
    crashed.exit.send_replace(Some(EXITED.to_string()));
    let mut replaced = 0;
    for _ in 0..100 {
        replaced += scheduler.provision(&f).await.unwrap();
        if replaced > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(replaced, 1);
    scheduler.reap_idle(floor, None);
    assert_eq!(scheduler.stats("a", "f").idle, 2);

    // A runtime upgrade renews them: two new ones first, then the old end.
    scheduler.renew_provisioned();
    assert_eq!(
        scheduler.reap_idle(floor, None),
        0,
        "not before their replacements"
    );
    assert_eq!(scheduler.provision(&f).await.unwrap(), 2);
    assert_eq!(scheduler.reap_idle(floor, None), 2);
    assert_eq!(scheduler.stats("a", "f").idle, 2);

    // With no floor, keep-alive applies to them like any other.
    assert_eq!(
        scheduler.reap_idle(|_, _, _| Some((Duration::ZERO, 0)), None),
        2
    );
    assert_eq!(scheduler.usage("a"), (0, 0));
}

fn event(json: serde_json::Value) -> Payload {
    Payload::Event(json)
}

/// The streaming body of a call's reply.
fn body_of(call: Invocation) -> thaw_sandbox::ResponseBody {
    match call.outcome {
        InvokeOutcome::Reply(reply) => reply.body,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_still_streaming_holds_its_slot_until_it_ends() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        max_instances: 1,
        ..spec("a", "f", 1)
    };
    let head = scheduler
        .invoke(
            &f,
            event(serde_json::json!({ "body_after_ms": 300 })),
            RequestBody::Empty,
        )
        .await
        .unwrap();
    // The head is in, the body is not: the instance is still busy.
    assert_eq!(scheduler.busy_instances(), 1);
    let mut body = body_of(head);
    let next = scheduler.invoke_buffered(&f, sleeping(0), RequestBody::Empty);
    let read = async {
        let mut got = Vec::new();
        while let Some(chunk) = body.chunk().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    };
    let (next, got) = tokio::join!(next, read);
    assert_eq!(got, b"ok");
    let next = next.unwrap();
    assert!(!next.cold, "the next call waited for the same instance");
    assert_eq!(header(&next, "x-fake-runtime"), "1");
    assert_eq!(driver.starts(), 1);
    assert_eq!(scheduler.busy_instances(), 0);
}

#[tokio::test]
async fn a_body_dropped_mid_stream_frees_its_instance_at_once() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        max_instances: 1,
        timeout: Duration::from_secs(30),
        ..spec("a", "f", 1)
    };
    let head = scheduler
        .invoke(
            &f,
            event(serde_json::json!({ "stall": true })),
            RequestBody::Empty,
        )
        .await
        .unwrap();
    assert_eq!(scheduler.busy_instances(), 1);
    // The client went away: the body is dropped unread.
    drop(head);
    let next = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(!next.cold, "served by the instance the stalled body held");
    assert_eq!(driver.starts(), 1);
    assert_eq!(driver.kills(), 0, "freed, not killed");
}

#[tokio::test]
async fn a_body_still_streaming_at_the_timeout_is_cut_and_its_runtime_killed() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        timeout: Duration::from_millis(300),
        ..spec("a", "f", 1)
    };
    let head = scheduler
        .invoke(
            &f,
            event(serde_json::json!({ "stall": true })),
            RequestBody::Empty,
        )
        .await
        .unwrap();
    let mut body = body_of(head);
    match body.chunk().await {
        Some(Err(cut)) => assert!(cut.0.contains("within its timeout"), "{cut}"),
        other => panic!("expected the body cut short, got {other:?}"),
    }
    assert_eq!(driver.kills(), 1);
    let next = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(next.cold, "a new runtime");
}

#[tokio::test]
async fn a_buffered_call_refuses_a_body_cut_short_as_a_handler_error() {
    let (_driver, scheduler) = setup();
    let f = FunctionSpec {
        timeout: Duration::from_millis(300),
        ..spec("a", "f", 1)
    };
    match scheduler
        .invoke_buffered(
            &f,
            event(serde_json::json!({ "stall": true })),
            RequestBody::Empty,
        )
        .await
    {
        Ok(Invocation {
            outcome: InvokeOutcome::HandlerError { message, .. },
            ..
        }) => assert!(message.contains("cut short"), "{message}"),
        other => panic!("expected a handler error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_caller_that_goes_away_before_the_answer_gives_the_slot_back_when_it_comes() {
    let (driver, scheduler) = setup();
    let f = FunctionSpec {
        max_instances: 1,
        ..spec("a", "f", 1)
    };
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        scheduler.invoke(&f, sleeping(300), RequestBody::Empty),
    )
    .await;
    assert!(gave_up.is_err(), "the caller stopped waiting");
    // The call runs on; the next one gets the instance after it, warm.
    let next = scheduler
        .invoke_buffered(&f, sleeping(0), RequestBody::Empty)
        .await
        .unwrap();
    assert!(!next.cold);
    assert_eq!(driver.starts(), 1);
    assert_eq!(driver.kills(), 0);
}

// Several threads, as thaw runs: the read loop, the call and its reader
// may each be on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_free_by_the_time_a_body_is_read_to_its_end() {
    let (_driver, scheduler) = setup();
    let f = FunctionSpec {
        max_instances: 1,
        ..spec("a", "f", 1)
    };
    // Bodies that come with their head, and one that comes later.
    for event in [
        serde_json::json!({}),
        serde_json::json!({ "body_after_ms": 5 }),
    ] {
        for _ in 0..100 {
            let call = scheduler
                .invoke(&f, Payload::Event(event.clone()), RequestBody::Empty)
                .await
                .unwrap();
            let mut body = body_of(call);
            while let Some(chunk) = body.chunk().await {
                chunk.unwrap();
            }
            // Nothing between the body's end and this look: a client's
            // next call would find the instance free.
            assert_eq!(scheduler.busy_instances(), 0, "{event}");
        }
    }
}
