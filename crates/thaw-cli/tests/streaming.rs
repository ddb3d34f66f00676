//! Bodies that stream through thaw both ways, on real Node over real HTTP:
//! responses reach the client as the function writes them (Lambda's
//! `streamifyResponse`, a fetch `Response` over a `ReadableStream`),
//! requests reach a fetch handler as it reads them, and neither costs
//! thaw memory in proportion to the body.
//!
//! Figures (first byte, throughput, resident memory) are printed; the
//! assertions are about order and bytes, never about speed.

mod common;

use common::{function_dir, http, status_bytes, thaw_pid, Platform};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Lambda response streaming as AWS documents it: three server-sent
/// events, the function pausing between them.
const LAMBDA_SSE: &str = r#"
const pause = (ms) => new Promise((r) => setTimeout(r, ms));
export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  const stream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 201,
    headers: { "content-type": "text/event-stream", "x-style": "lambda" },
  });
  for (let i = 0; i < 3; i++) {
    if (i > 0) await pause(400);
    stream.write(`data: ${JSON.stringify({ i, written_ms: Date.now() })}\n\n`);
  }
  stream.end();
});
"#;

/// The same events from a fetch handler's `ReadableStream`.
const FETCH_SSE: &str = r#"
const pause = (ms) => new Promise((r) => setTimeout(r, ms));
export default {
  async fetch(request) {
    const encoder = new TextEncoder();
    let i = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (i === 3) return controller.close();
        if (i > 0) await pause(400);
        controller.enqueue(encoder.encode(`data: ${JSON.stringify({ i, written_ms: Date.now() })}\n\n`));
        i++;
      },
    });
    return new Response(body, { status: 201, headers: { "content-type": "text/event-stream", "x-style": "fetch" } });
  },
};
"#;

/// Reads server-sent events off `resp` as they arrive: each event's JSON
/// and when (Unix ms) the client had it whole.
fn read_events(resp: &mut reqwest::blocking::Response) -> Vec<(Value, u64)> {
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(at) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..at + 2).collect();
            let text = std::str::from_utf8(&event).unwrap().trim();
            let json = text.strip_prefix("data: ").expect("a data line");
            events.push((serde_json::from_str(json).unwrap(), now_ms()));
        }
    }
    assert!(
        pending.is_empty(),
        "a partial event at the end: {pending:?}"
    );
    events
}

#[test]
fn server_sent_events_arrive_one_by_one_while_the_function_runs() {
    // Connections silent for 300 ms are closed; the functions pause 400 ms
    // between events: a stream being answered is not a silent client.
    let p = Platform::start_with(&["--idle-timeout-ms", "300"]);
    for (name, code, style) in [
        ("sse-lambda", LAMBDA_SSE, "lambda"),
        ("sse-fetch", FETCH_SSE, "fetch"),
    ] {
        let dir = function_dir(&[("index.mjs", code)]);
        p.deploy(dir.path(), name);
        // Warm, so that the figures below are the stream's, not a start's.
        let mut warm = http().get(p.url(name, "/")).send().unwrap();
        read_events(&mut warm);

        let sent = Instant::now();
        let mut resp = http().get(p.url(name, "/events")).send().unwrap();
        let head = sent.elapsed();
        assert_eq!(resp.status(), 201, "{name}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["x-style"], style);
        let events = read_events(&mut resp);
        let numbers: Vec<_> = events.iter().map(|(e, _)| e["i"].clone()).collect();
        assert_eq!(numbers, [0, 1, 2], "{name}: every event, in order");
        let (first, first_at) = &events[0];
        let (last, last_at) = &events[2];
        eprintln!(
            "{name}: head after {head:?}; first event {} ms after it was written, last {} ms after the first",
            first_at.saturating_sub(first["written_ms"].as_u64().unwrap()),
            last_at.saturating_sub(*first_at),
        );
        // The client had the first event before the function wrote the
        // last: nothing held the response back until its end.
        assert!(
            *first_at < last["written_ms"].as_u64().unwrap(),
            "{name}: the first event arrived at {first_at}, after the last was written at {}",
            last["written_ms"]
        );
    }
}

/// A stream that never ends on its own: a chunk every 20 ms naming the
/// runtime, until the client goes away. `/plain` answers at once.
const ENDLESS_FETCH: &str = r#"
const pause = (ms) => new Promise((r) => setTimeout(r, ms));
export default {
  async fetch(request) {
    if (new URL(request.url).pathname.endsWith("/plain")) return new Response(`pid ${process.pid}`);
    const encoder = new TextEncoder();
    const body = new ReadableStream({
      async pull(controller) {
        await pause(20);
        controller.enqueue(encoder.encode(`pid ${process.pid}\n`));
      },
      cancel(reason) {
        console.log(`stream cancelled: ${reason}`);
      },
    });
    return new Response(body);
  },
};
"#;

const ENDLESS_LAMBDA: &str = r#"
const pause = (ms) => new Promise((r) => setTimeout(r, ms));
export const handler = awslambda.streamifyResponse(async (event, stream) => {
  if (event.rawPath === "/plain") {
    stream.write(`pid ${process.pid}`);
    stream.end();
    return;
  }
  while (!stream.destroyed) {
    stream.write(`pid ${process.pid}\n`);
    await pause(20);
  }
  console.log("stream closed by the client");
});
"#;

const ONE_AT_A_TIME: &str = "max_instances = 1\nconcurrency = 1\ntimeout = 120\n";

#[test]
fn a_client_that_disconnects_mid_stream_frees_the_instance() {
    let p = Platform::start();
    for (name, code, said) in [
        ("endless-fetch", ENDLESS_FETCH, "stream cancelled"),
        (
            "endless-lambda",
            ENDLESS_LAMBDA,
            "stream closed by the client",
        ),
    ] {
        let dir = function_dir(&[("index.mjs", code), ("thaw.toml", ONE_AT_A_TIME)]);
        p.deploy(dir.path(), name);
        let mut resp = http().get(p.url(name, "/stream")).send().unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let mut first = [0u8; 64];
        let n = resp.read(&mut first).unwrap();
        let first = String::from_utf8_lossy(&first[..n]).into_owned();
        let pid = first.lines().next().unwrap().to_string();
        assert!(pid.starts_with("pid "), "{name}: {first}");
        // The client goes away with the function still writing.
        drop(resp);

        // Its one instance serves the next call: not killed at its timeout
        // (two minutes away), not replaced, free.
        let next = http().get(p.url(name, "/plain")).send().unwrap();
        assert_eq!(next.status(), 200, "{name}");
        assert_eq!(next.headers()["x-thaw-start"], "warm", "{name}");
        assert_eq!(next.text().unwrap(), pid, "{name}: the same runtime");
        p.wait_for_log(name, said);
    }
}

/// Bytes that are neither text nor repetitive: every byte value, in an
/// order that depends on `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn binary_bodies_survive_byte_for_byte_both_ways() {
    let p = Platform::start();
    let echo_fetch = r#"export default { fetch: (request) =>
        new Response(request.body, { headers: { "content-type": "application/octet-stream" } }) };"#;
    let echo_lambda = r#"export const handler = async (event) => ({
        statusCode: 200, headers: { "content-type": "application/octet-stream" },
        isBase64Encoded: true,
        body: event.isBase64Encoded ? event.body : Buffer.from(event.body ?? "").toString("base64") });"#;
    p.deploy(
        function_dir(&[("index.mjs", echo_fetch)]).path(),
        "echo-fetch",
    );
    p.deploy(
        function_dir(&[("index.mjs", echo_lambda)]).path(),
        "echo-lambda",
    );
    // Sizes around the ways a body travels: empty, whole with its call,
    // streamed in chunks, several windows' worth.
    for len in [0, 1, 65_535, 65_536, 256 * 1024 + 1, 3 * 1024 * 1024 + 17] {
        let body = noise(len, len as u64);
        for name in ["echo-fetch", "echo-lambda"] {
            let resp = http()
                .post(p.url(name, "/"))
                .header("content-type", "application/octet-stream")
                .body(body.clone())
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}, {len} bytes");
            let back = resp.bytes().unwrap();
            assert!(
                back[..] == body[..],
                "{name}: {len} bytes came back as {} different ones",
                back.len()
            );
        }
    }
}

/// A reader of `len` bytes of [`noise`], made as it is read, hashing what
/// it gave.
struct Upload {
    left: u64,
    x: u64,
    hash: Arc<std::sync::Mutex<Sha256>>,
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left).min(64 * 1024) as usize;
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = self.x as u8;
        }
        self.hash.lock().unwrap().update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Samples a process's resident memory until told to stop; the highest.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(status_bytes(pid, "VmRSS"));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// How far above its resident memory before a transfer thaw may go while
/// a body of hundreds of MiB passes through it: a few windows and buffers.
const RSS_ALLOWANCE: u64 = 48 << 20;

#[test]
fn a_200_mib_upload_streams_to_a_fetch_handler_and_is_hashed_correctly() {
    const LEN: u64 = 200 << 20;
    let p = Platform::start();
    let hasher = r#"
import { createHash } from "node:crypto";
export default {
  async fetch(request) {
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of request.body) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    return Response.json({ bytes, sha256: hash.digest("hex") });
  },
};"#;
    let dir = function_dir(&[
        ("index.mjs", hasher),
        ("thaw.toml", "max_body_mb = 256\ntimeout = 300\n"),
    ]);
    p.deploy(dir.path(), "hasher");
    let small = function_dir(&[("index.mjs", hasher)]);
    p.deploy(small.path(), "hasher-6");
    let pid = thaw_pid(&p);
    http()
        .post(p.url("hasher", "/"))
        .body("warm")
        .send()
        .unwrap();

    let before = status_bytes(pid, "VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pid, stop.clone());
    let hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let upload = Upload {
        left: LEN,
        x: 0x9e37_79b9_7f4a_7c15,
        hash: hash.clone(),
    };
    let started = Instant::now();
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
        .post(p.url("hasher", "/"))
        // No length: sent chunked, as a client streaming an upload does.
        .body(reqwest::blocking::Body::new(upload))
        .send()
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    let expected = format!("{:x}", hash.lock().unwrap().clone().finalize());
    assert_eq!(answer["bytes"], LEN);
    assert_eq!(answer["sha256"], expected);
    eprintln!(
        "200 MiB upload in {took:?} ({:.0} MiB/s); thaw's RSS {} MiB before, {} MiB at most during",
        200.0 / took.as_secs_f64(),
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < before + RSS_ALLOWANCE,
        "thaw's resident memory went from {} MiB to {} MiB for a streamed upload",
        before >> 20,
        peak >> 20
    );

    // A function left at the default takes 6 MiB: more is a 413, whether
    // the length is announced or not.
    for chunked in [false, true] {
        let (status, answer) = post_raw(&p.server, "/fn/hasher-6/", 7 << 20, chunked);
        assert_eq!(status, 413, "chunked: {chunked}: {answer}");
        assert!(
            answer.contains("too_large") && answer.contains("max_body_mb"),
            "{answer}"
        );
    }
    let resp = http()
        .post(p.url("hasher-6", "/"))
        .body(vec![1u8; 6 << 20])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "6 MiB is within the default");
}

/// Posts `len` bytes, chunked (no length announced) or not, over a raw
/// connection (a client library may give up on the response when the
/// server stops reading the upload): the status and the answer as text.
fn post_raw(server: &str, path: &str, len: usize, chunked: bool) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(server.trim_start_matches("http://")).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: thaw\r\n{framing}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..len / chunk.len() {
            let sent = if chunked {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| writer.write_all(&chunk))
                    .and_then(|_| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&chunk)
            };
            if sent.is_err() {
                return; // the server stopped reading
            }
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the connection, or a reset once the answer is in.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let _ = sender.join();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

#[test]
fn a_1_gib_response_streams_through_with_thaws_memory_flat() {
    const MIB: usize = 1 << 20;
    const CHUNKS: usize = 1024;
    let p = Platform::start();
    // Each MiB is filled with its number (mod 256), so that the client can
    // tell a lost, repeated or reordered chunk.
    let download = format!(
        r#"
export default {{
  fetch() {{
    let i = 0;
    const body = new ReadableStream({{
      pull(controller) {{
        if (i === {CHUNKS}) return controller.close();
        controller.enqueue(new Uint8Array({MIB}).fill(i & 255));
        i++;
      }},
    }});
    return new Response(body, {{ headers: {{ "content-type": "application/octet-stream" }} }});
  }},
}};"#
    );
    let dir = function_dir(&[("index.mjs", &download), ("thaw.toml", "timeout = 600\n")]);
    p.deploy(dir.path(), "gigabyte");
    let pid = thaw_pid(&p);
    let before = status_bytes(pid, "VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pid, stop.clone());

    let started = Instant::now();
    let mut resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
        .get(p.url("gigabyte", "/"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut first_byte = None;
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| started.elapsed());
        for (k, b) in buf[..n].iter().enumerate() {
            let want = ((received + k) / MIB) as u8;
            assert_eq!(*b, want, "byte {} of the body", received + k);
        }
        received += n;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(received, CHUNKS * MIB);
    eprintln!(
        "1 GiB response: first byte after {:?}, all in {took:?} ({:.0} MiB/s); thaw's RSS {} MiB before, {} MiB at most during",
        first_byte.unwrap(),
        CHUNKS as f64 / took.as_secs_f64(),
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < before + RSS_ALLOWANCE,
        "thaw's resident memory went from {} MiB to {} MiB while 1 GiB streamed",
        before >> 20,
        peak >> 20
    );
}

#[test]
fn a_function_that_never_ends_its_stream_hits_its_timeout() {
    let p = Platform::start();
    let stuck = r#"
export default {
  fetch() {
    const body = new ReadableStream({
      start(controller) { controller.enqueue(new TextEncoder().encode("first\n")); },
      pull() { return new Promise(() => {}); },
    });
    return new Response(body);
  },
};"#;
    let dir = function_dir(&[
        ("index.mjs", stuck),
        ("thaw.toml", "timeout = 2\nmax_instances = 1\n"),
    ]);
    p.deploy(dir.path(), "stuck");
    let mut resp = http().get(p.url("stuck", "/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let ended = resp.read_to_end(&mut got);
    assert_eq!(&got[..6], b"first\n");
    assert!(
        ended.is_err(),
        "the body is cut short, not ended as if whole"
    );
    // And the function serves again, on a new runtime.
    let mut again = http().get(p.url("stuck", "/")).send().unwrap();
    let mut first = [0u8; 6];
    again.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
}

#[test]
fn a_client_that_gives_up_before_the_answer_does_not_hold_the_instance_for_good() {
    let p = Platform::start();
    let slow = r#"
export default {
  async fetch(request) {
    if (new URL(request.url).pathname === "/slow") await new Promise((r) => setTimeout(r, 1500));
    return new Response(`pid ${process.pid}`);
  },
};"#;
    let dir = function_dir(&[("index.mjs", slow), ("thaw.toml", ONE_AT_A_TIME)]);
    p.deploy(dir.path(), "slow");
    let first = http()
        .get(p.url("slow", "/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // The client gives up long before the function answers.
    let gave_up = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .get(p.url("slow", "/slow"))
        .send();
    assert!(gave_up.is_err(), "{gave_up:?}");
    let next = http().get(p.url("slow", "/")).send().unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()["x-thaw-start"], "warm");
    assert_eq!(next.text().unwrap(), first, "the same runtime");
}
