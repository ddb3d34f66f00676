//! An `Instance` facing a runtime that does not play by the rules: one that
//! logs far past its budgets, and one that writes what is not the protocol.
//! The runtime's side is played by hand over an in-memory stream.

use std::sync::{Arc, Mutex};
use thaw_protocol::frame::{Frame, FrameReader};
use thaw_protocol::{write_message, FromRuntime, LogStream, Payload, ToRuntime, PROTOCOL_VERSION};
use thaw_sandbox::{
    Binding, BoxFuture, Instance, InvokeOutcome, LogLine, LogSink, RequestBody, RuntimeProcess,
    SandboxError,
};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

/// The figures of `instance.rs`, as documented in docs/protocol.md.
const CALL_LOG_BYTES: u64 = 1024 * 1024;
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Default)]
struct Sink(Mutex<Vec<LogLine>>);

impl LogSink for Sink {
    fn log(&self, _binding: Option<&Binding>, line: LogLine) {
        self.0.lock().unwrap().push(line);
    }
}

impl Sink {
    fn lines(&self) -> Vec<LogLine> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeProcess(watch::Sender<bool>);

impl RuntimeProcess for FakeProcess {
    fn pid(&self) -> Option<u32> {
        None
    }
    fn kill(&self) {
        self.0.send_replace(true);
    }
    fn wait_exit(&self) -> BoxFuture<'_, String> {
        let mut killed = self.0.subscribe();
        Box::pin(async move {
            let _ = killed.wait_for(|k| *k).await;
            "killed (fake)".to_string()
        })
    }
    fn pause(&self) {}
    fn resume(&self) {}
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Runtime {
    instance: Instance,
    sink: Arc<Sink>,
    killed: watch::Receiver<bool>,
    /// The runtime's end: what thaw sends, and where the runtime writes.
    from_host: FrameReader<ReadHalf<DuplexStream>>,
    to_host: WriteHalf<DuplexStream>,
}

async fn connect(output: Option<mpsc::UnboundedReceiver<(LogStream, String)>>) -> Runtime {
    let (host, far) = tokio::io::duplex(64 * 1024);
    let (from_host, mut to_host) = tokio::io::split(far);
    write_message(
        &mut to_host,
        &FromRuntime::Ready {
            protocol: PROTOCOL_VERSION,
            runtime: "fake/1".into(),
            node: String::new(),
            pid: 0,
        },
    )
    .await
    .unwrap();
    let (reader, writer) = tokio::io::split(host);
    let (killed_tx, killed) = watch::channel(false);
    let sink = Arc::new(Sink::default());
    let instance = Instance::connect(
        reader,
        writer,
        Box::new(FakeProcess(killed_tx)),
        output,
        sink.clone(),
    )
    .await
    .unwrap();
    Runtime {
        instance,
        sink,
        killed,
        from_host: FrameReader::new(from_host),
        to_host,
    }
}

type Call = tokio::task::JoinHandle<(Result<InvokeOutcome, SandboxError>, Vec<LogLine>)>;

impl Runtime {
    /// Starts call `id` and waits until the runtime has its `invoke`.
    async fn start_call(&mut self, id: u64) -> Call {
        let instance = self.instance.clone();
        let call = tokio::spawn(async move {
            instance
                .invoke(
                    id,
                    u64::MAX,
                    Payload::Event(serde_json::json!({})),
                    RequestBody::Empty,
                )
                .await
        });
        let msg = self.from_host.next::<ToRuntime>().await.unwrap();
        assert!(
            matches!(msg, Frame::Message(ToRuntime::Invoke(ref i)) if i.id == id),
            "{msg:?}"
        );
        call
    }

    async fn send(&mut self, msg: &FromRuntime) {
        write_message(&mut self.to_host, msg).await.unwrap();
    }

    async fn log(&mut self, id: u64, line: String) {
        self.send(&FromRuntime::Log {
            id: Some(id),
            stream: LogStream::Stdout,
            line,
        })
        .await;
    }

    async fn answer(&mut self, id: u64) {
        self.send(&FromRuntime::Result {
            id,
            status: 200,
            headers: Vec::new(),
            background: false,
        })
        .await;
    }

    /// Writes raw bytes on the protocol stream, as a function that found
    /// the descriptor could.
    async fn write_raw(&mut self, bytes: &[u8]) {
        self.to_host.write_all(bytes).await.unwrap();
        self.to_host.flush().await.unwrap();
    }
}

/// `(lines, bytes)` of a "[thaw] N lines (M bytes) dropped: ..." line.
fn dropped(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("[thaw] ")?;
    let (lines, rest) = rest.split_once(" lines (")?;
    let (bytes, rest) = rest.split_once(" bytes) dropped: ")?;
    assert!(rest.contains("log limit"), "{line}");
    Some((lines.parse().ok()?, bytes.parse().ok()?))
}

#[tokio::test]
async fn a_call_logging_far_past_its_budget_keeps_its_budget_and_says_what_was_dropped() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    const LINES: u64 = 200;
    const WRITTEN: u64 = 64 * 1024;
    for _ in 0..LINES {
        rt.log(1, "x".repeat(WRITTEN as usize)).await;
    }
    rt.answer(1).await;
    let (outcome, logs) = call.await.unwrap();
    assert!(
        matches!(outcome, Ok(InvokeOutcome::Reply(_))),
        "{outcome:?}"
    );

    let (summaries, kept): (Vec<&LogLine>, Vec<&LogLine>) =
        logs.iter().partition(|l| dropped(&l.line).is_some());
    assert!(!summaries.is_empty(), "nothing said about dropped lines");
    let kept_bytes: usize = kept.iter().map(|l| l.line.len()).sum();
    assert!(
        kept_bytes as u64 <= CALL_LOG_BYTES,
        "{kept_bytes} bytes kept"
    );
    for l in &kept {
        assert!(l.line.len() <= MAX_LINE_BYTES);
        assert!(l.line.ends_with("[thaw: line cut, 65536 bytes in all]"));
    }
    let (lines, bytes) = summaries
        .iter()
        .map(|l| dropped(&l.line).unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    assert_eq!(lines + kept.len() as u64, LINES);
    assert_eq!(bytes, lines * WRITTEN);
    for s in &summaries {
        assert_eq!(s.invocation, Some(1));
        assert_eq!(s.stream, LogStream::Stderr);
    }
    // The log sink got exactly what was returned with the call.
    assert_eq!(rt.sink.lines(), logs);
    assert!(rt.instance.is_alive());
}

#[tokio::test]
async fn a_ten_megabyte_line_is_stored_cut_whether_framed_or_raw() {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut rt = connect(Some(out_rx)).await;
    let call = rt.start_call(7).await;
    rt.log(7, "é".repeat(5 * 1024 * 1024)).await;
    rt.answer(7).await;
    let (_, logs) = call.await.unwrap();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].line.len() <= MAX_LINE_BYTES);
    assert!(logs[0].line.starts_with("éé"));
    assert!(
        logs[0]
            .line
            .ends_with(" …[thaw: line cut, 10485760 bytes in all]"),
        "{}",
        &logs[0].line[logs[0].line.len() - 60..]
    );

    out_tx
        .send((LogStream::Stderr, "r".repeat(10 * 1024 * 1024)))
        .unwrap();
    out_tx.send((LogStream::Stderr, "after".into())).unwrap();
    // The raw line lands in the sink after the call's line.
    let stored = loop {
        let lines = rt.sink.lines();
        if lines.iter().any(|l| l.line == "after") {
            break lines;
        }
        tokio::task::yield_now().await;
    };
    let raw = &stored[stored.len() - 2];
    assert_eq!(raw.invocation, None);
    assert!(raw.line.len() <= MAX_LINE_BYTES);
    assert!(raw
        .line
        .ends_with(" …[thaw: line cut, 10485760 bytes in all]"));
}

/// The call in flight fails with a reason naming the protocol, the runtime
/// is killed, and the instance takes no more calls.
async fn assert_killed_for(mut rt: Runtime, call: Call, what: &str) {
    let (outcome, _) = call.await.unwrap();
    let reason = match outcome {
        Err(SandboxError::Crashed(reason)) => reason,
        other => panic!("expected a crash, got {other:?}"),
    };
    assert!(
        reason.contains("the runtime broke the wire protocol") && reason.contains(what),
        "{reason}"
    );
    assert!(reason.contains("thaw killed it"), "{reason}");
    rt.killed.wait_for(|k| *k).await.unwrap();
    assert!(!rt.instance.is_alive());
    let (again, _) = rt
        .instance
        .invoke(
            2,
            u64::MAX,
            Payload::Event(serde_json::json!({})),
            RequestBody::Empty,
        )
        .await;
    match again {
        Err(SandboxError::Crashed(r)) => assert!(r.contains(what), "{r}"),
        other => panic!("a killed instance took a call: {other:?}"),
    }
    drop(rt.from_host);
}

#[tokio::test]
async fn a_frame_that_is_not_json_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.write_raw(b"\0\0\0\x06\x01hello").await;
    assert_killed_for(rt, call, "malformed frame").await;
}

#[tokio::test]
async fn a_frame_of_an_unknown_type_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    let raw = br#"{"type":"launch","id":1}"#;
    let mut frame = (raw.len() as u32 + 1).to_be_bytes().to_vec();
    frame.push(0x01);
    frame.extend_from_slice(raw);
    rt.write_raw(&frame).await;
    assert_killed_for(rt, call, "unknown variant `launch`").await;
}

#[tokio::test]
async fn an_oversized_length_kills_the_runtime_before_its_body_is_read() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    // Only the prefix is ever sent: the host must not wait for a body.
    let mut prefix = u32::MAX.to_be_bytes().to_vec();
    prefix.push(0x01);
    rt.write_raw(&prefix).await;
    assert_killed_for(rt, call, "larger than the 67108864-byte limit").await;
}

#[tokio::test]
async fn a_result_for_a_call_never_sent_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.answer(99).await;
    assert_killed_for(rt, call, "a result for call 99, which thaw never sent").await;
}

#[tokio::test]
async fn a_second_ready_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.send(&FromRuntime::Ready {
        protocol: PROTOCOL_VERSION,
        runtime: "fake/1".into(),
        node: String::new(),
        pid: 0,
    })
    .await;
    assert_killed_for(rt, call, "a second ready message").await;
}

#[tokio::test]
async fn an_init_ok_nobody_asked_for_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.send(&FromRuntime::InitOk {
        style: "lambda".into(),
        services: Vec::new(),
    })
    .await;
    assert_killed_for(rt, call, "no init was waiting").await;
}

#[tokio::test]
async fn log_lines_of_finished_calls_are_still_taken() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.answer(1).await;
    let (outcome, _) = call.await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    // A timer left behind by call 1 logs after it ended: no lie.
    rt.log(1, "late".into()).await;
    let call = rt.start_call(2).await;
    rt.answer(2).await;
    let (outcome, _) = call.await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(rt.sink.lines().iter().any(|l| l.line == "late"));
}

// Bodies: a runtime that sends past its credit, or out of turn, is broken;
// thaw sends a request body only within the credit the runtime grants.

/// Frames of a response body of `len` bytes for call `id`, with no end.
fn response_data(id: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    thaw_protocol::frame::encode_data(
        &mut out,
        id,
        thaw_protocol::frame::Stream::Response,
        &vec![b'r'; len],
    );
    out
}

#[tokio::test]
async fn response_bytes_past_the_credit_granted_kill_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.answer(1).await;
    let mut body = match call.await.unwrap().0 {
        Ok(InvokeOutcome::Reply(reply)) => reply.body,
        other => panic!("expected a reply, got {other:?}"),
    };
    // Nobody reads the body: the first window is all the runtime may send.
    let window = thaw_protocol::frame::WINDOW as usize;
    rt.write_raw(&response_data(1, window + 1)).await;
    rt.killed.wait_for(|k| *k).await.unwrap();
    let mut got = 0;
    let cut = loop {
        match body.chunk().await {
            Some(Ok(bytes)) => got += bytes.len(),
            Some(Err(cut)) => break cut,
            None => panic!("the body ended normally after {got} bytes"),
        }
    };
    assert!(got <= window, "{got} bytes handed on");
    assert!(
        cut.0.contains("broke the wire protocol") && cut.0.contains("credit"),
        "{cut}"
    );
    assert!(!rt.instance.is_alive());
}

#[tokio::test]
async fn a_body_frame_before_its_result_kills_the_runtime() {
    let mut rt = connect(None).await;
    let call = rt.start_call(1).await;
    rt.write_raw(&response_data(1, 10)).await;
    assert_killed_for(rt, call, "before its result").await;
}

#[tokio::test]
async fn a_request_body_leaves_only_within_the_credit_the_runtime_grants() {
    use futures_util::StreamExt as _;
    use thaw_protocol::frame::{encode_credit, Stream, WINDOW};
    let mut rt = connect(None).await;
    let total = 3 * WINDOW as usize + 5;
    let sent: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<bytes::Bytes, String>> = sent
        .chunks(100_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let instance = rt.instance.clone();
    let request = thaw_protocol::HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: Vec::new(),
        source_ip: "127.0.0.1".into(),
        host: "thaw".into(),
    };
    let _call = tokio::spawn(async move {
        instance
            .invoke(
                1,
                u64::MAX,
                Payload::Request(request),
                RequestBody::Stream(futures_util::stream::iter(chunks).boxed()),
            )
            .await
    });
    let msg = rt.from_host.next::<ToRuntime>().await.unwrap();
    assert!(
        matches!(msg, Frame::Message(ToRuntime::Invoke(_))),
        "{msg:?}"
    );

    let mut got = Vec::new();
    let mut granted = WINDOW as usize;
    loop {
        // Grant more only once all that was granted has come: a host that
        // sent past its credit would be caught here.
        let frame = if got.len() == granted {
            let next = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                rt.from_host.next::<ToRuntime>(),
            )
            .await;
            match next {
                Ok(frame) => frame.unwrap(),
                Err(_) => {
                    let mut out = Vec::new();
                    encode_credit(&mut out, 1, Stream::Request, WINDOW);
                    rt.write_raw(&out).await;
                    granted += WINDOW as usize;
                    continue;
                }
            }
        } else {
            rt.from_host.next::<ToRuntime>().await.unwrap()
        };
        match frame {
            Frame::Data {
                call: 1,
                stream: Stream::Request,
                bytes,
            } => {
                got.extend_from_slice(&bytes);
                assert!(
                    got.len() <= granted,
                    "{} bytes sent with {granted} granted",
                    got.len()
                );
            }
            Frame::End {
                call: 1,
                stream: Stream::Request,
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(got == sent, "the body arrived changed");
}

#[tokio::test]
async fn a_protocol_1_runtime_is_refused_naming_itself_and_both_versions() {
    // Protocol 1's ready: JSON straight after the length, no kind byte.
    let v1 = |protocol: u32| {
        let json = format!(
            r#"{{"type":"ready","protocol":{protocol},"runtime":"thaw-shim/0.1.0","node":"v20","pid":7}}"#
        );
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(json.as_bytes());
        frame
    };
    // And a protocol 2 frame naming another protocol.
    let mut v3 = Vec::new();
    thaw_protocol::frame::encode_message(
        &mut v3,
        &FromRuntime::Ready {
            protocol: 3,
            runtime: "thaw-shim/9.0.0".into(),
            node: String::new(),
            pid: 0,
        },
    )
    .unwrap();
    for (ready, runtime, protocol) in [(v1(1), "thaw-shim/0.1.0", 1), (v3, "thaw-shim/9.0.0", 3)] {
        let (host, far) = tokio::io::duplex(64 * 1024);
        let (_from_host, mut to_host) = tokio::io::split(far);
        to_host.write_all(&ready).await.unwrap();
        let (reader, writer) = tokio::io::split(host);
        let (killed_tx, killed) = watch::channel(false);
        let refused = Instance::connect(
            reader,
            writer,
            Box::new(FakeProcess(killed_tx)),
            None,
            Arc::new(Sink::default()),
        )
        .await;
        let message = match refused {
            Err(SandboxError::NotReady(message)) => message,
            Err(other) => panic!("expected NotReady, got {other}"),
            Ok(_) => panic!("a protocol {protocol} runtime was taken"),
        };
        assert!(
            message.contains(&format!("{runtime} speaks protocol {protocol}"))
                && message.contains(&format!("this host speaks protocol {PROTOCOL_VERSION}")),
            "{message}"
        );
        assert!(*killed.borrow(), "the refused runtime is killed");
    }
}
