//! Bounds under abuse (docs/security.md, "Bounds"): idle and slow
//! connections, huge bodies, paths the file system cannot hold. Each is
//! made against a real `thaw up` from outside, as a client would. Nothing
//! here asserts how fast anything is: only what is answered, what is
//! closed (within generous bounds), and how much memory thaw took.

mod common;

use common::{function_dir, http, status_bytes, thaw_pid, Platform};
use reqwest::Method;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const HELLO: &str = r#"export const handler = async () => ({ statusCode: 200, body: "hello" });"#;

/// Raises this process's soft descriptor limit to its hard limit and
/// returns it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// `host:port` of the platform.
fn address(p: &Platform) -> String {
    p.server.trim_start_matches("http://").to_string()
}

/// Whether the server has closed `s` (end of stream or reset); `s` is
/// non-blocking.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer: read on to see whether it closes
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s`; returns
/// the status and the body.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("the response");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (status, text[end + 4..end + 4 + length].to_string());
        }
    }
}

#[test]
fn idle_and_slow_connections_never_stop_others_and_are_closed() {
    const IDLE: usize = 1000;
    const SLOW: usize = 20;
    let nofile = raise_fd_limit();
    assert!(
        nofile >= (IDLE + SLOW + 200) as u64,
        "this test needs a descriptor limit of at least {} (ulimit -Hn is {nofile})",
        IDLE + SLOW + 200
    );
    let p = Platform::start();
    let dir = function_dir(&[("index.mjs", HELLO)]);
    p.deploy(dir.path(), "hello");
    let addr = address(&p);
    let answers = || {
        let r = http().get(format!("{}/healthz", p.server)).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "ok\n");
        let r = http().get(p.url("hello", "/")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "hello");
    };

    // A kept-alive connection that was answered once, then falls silent.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: thaw\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut kept), (200, "ok\n".to_string()));
    let kept_answered = Instant::now();

    // A thousand connections that never send a byte.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Slowloris: a request head, one byte every two seconds, never ended.
    let slow_started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: thaw\r\nX-Slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let trickle = std::thread::spawn(move || {
        let mut open: Vec<usize> = (0..SLOW).collect();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !open.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            open.retain(|&i| {
                let s = &mut slow[i];
                // A write to a closed connection may still succeed once;
                // the read tells.
                let _ = s.write(b"a");
                !closed(s)
            });
        }
        (open.len(), slow)
    });

    // Meanwhile a fresh client is answered, again and again.
    for _ in 0..5 {
        answers();
    }

    // The slow ones are closed, none having sent a whole head, and never
    // answered (a 200 would show as a read, and `closed` reads through).
    let (still_open, mut slow) = trickle.join().unwrap();
    assert_eq!(still_open, 0, "slow connections still open after 180 s");
    for s in &mut slow {
        assert!(closed(s));
    }
    eprintln!(
        "slow header connections closed after {:?}",
        slow_started.elapsed()
    );

    // So are the silent ones.
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let start = Instant::now();
    idle.retain_mut(|s| !closed(s));
    while !idle.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} silent connections still open",
            idle.len()
        );
        std::thread::sleep(Duration::from_millis(500));
        idle.retain_mut(|s| !closed(s));
    }

    // The kept-alive connection outlives the header timeout (10 s: it is
    // waiting for no head) and goes after the idle timeout (60 s).
    kept.set_nonblocking(true).unwrap();
    while kept_answered.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !closed(&mut kept),
        "a kept-alive connection was closed before its idle timeout"
    );
    let start = Instant::now();
    while !closed(&mut kept) {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "an idle kept-alive connection is never closed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    answers();
}

const HUGE: u64 = 512 << 20;

/// Sends a request whose body is `HUGE` bytes made on the fly (chunked, or
/// with a `Content-Length`), while reading the answer; returns the answer's
/// status and body, and how much of the body got sent.
fn send_huge(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    chunked: bool,
) -> (u16, Value, u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {HUGE}")
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: thaw\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'7'; 64 * 1024];
        let mut sent = 0u64;
        while sent < HUGE {
            let result = if chunked {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| writer.write_all(&chunk))
                    .and_then(|_| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&chunk)
            };
            if result.is_err() {
                break; // the server closed: it will not read the rest
            }
            sent += chunk.len() as u64;
        }
        if chunked && sent == HUGE {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
        sent
    });
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let (status, body) = read_response(&mut s);
    let _ = s.shutdown(Shutdown::Both);
    let sent = sender.join().unwrap();
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, body, sent)
}

#[test]
fn a_huge_body_is_refused_while_it_is_read_on_every_route() {
    let p = Platform::start();
    let dir = function_dir(&[("index.mjs", HELLO)]);
    p.deploy(dir.path(), "sink");
    let pid = thaw_pid(&p);
    let addr = address(&p);
    let token = p.token();
    let before = status_bytes(pid, "VmRSS");

    let routes = [
        ("PUT", "/v1/namespaces/default/functions/big"),
        ("POST", "/v1/functions/sink/invoke"),
        ("POST", "/fn/sink/upload"),
        ("POST", "/ns/default/fn/sink/"),
        ("POST", "/v1/namespaces"),
    ];
    for (method, path) in routes {
        for chunked in [true, false] {
            let (status, body, sent) = send_huge(&addr, method, path, &token, chunked);
            assert_eq!(
                status, 413,
                "{method} {path} (chunked: {chunked}) sent {sent} bytes: {body}"
            );
            assert_eq!(
                body["error"]["code"], "too_large",
                "{method} {path}: {body}"
            );
            assert!(
                sent < HUGE,
                "{method} {path}: all {HUGE} bytes were taken in"
            );
            let rss = status_bytes(pid, "VmRSS");
            eprintln!(
                "{method} {path} (chunked: {chunked}): 413 after {} MiB sent; thaw's RSS {} MiB",
                sent >> 20,
                rss >> 20
            );
        }
    }
    // The most thaw ever held: its resident peak, however brief. The
    // largest limit is a deploy's (64 MiB); the body is eight times that.
    let peak = status_bytes(pid, "VmHWM");
    eprintln!(
        "thaw's RSS: {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < HUGE / 3,
        "thaw's resident memory peaked at {} MiB for bodies of {} MiB",
        peak >> 20,
        HUGE >> 20
    );
    // And it still serves.
    let r = http().get(p.url("sink", "/")).send().unwrap();
    assert_eq!(r.text().unwrap(), "hello");
}

/// A gzip'd tar written byte by byte; names longer than a header holds go
/// in GNU long-name records, as GNU tar writes them.
fn raw_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    fn header(tar: &mut Vec<u8>, name: &[u8], kind: u8, size: usize) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar ");
        h[263..265].copy_from_slice(b" \0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        tar.extend_from_slice(&h);
    }
    fn data(tar: &mut Vec<u8>, bytes: &[u8]) {
        tar.extend_from_slice(bytes);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    let mut tar = Vec::new();
    for (name, content) in entries {
        let name = name.as_bytes();
        if name.len() > 100 {
            header(&mut tar, b"././@LongLink", b'L', name.len() + 1);
            data(&mut tar, &[name, b"\0"].concat());
            header(&mut tar, &name[..100], b'0', content.len());
        } else {
            header(&mut tar, name, b'0', content.len());
        }
        data(&mut tar, content);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A relative path of `len` bytes, in folders of 100-byte names.
fn deep(len: usize) -> String {
    let mut p = String::new();
    while p.len() + 101 < len {
        p.push_str(&"d".repeat(100));
        p.push('/');
    }
    p.push_str(&"f".repeat(len - p.len()));
    p
}

#[test]
fn paths_too_long_for_the_file_system_are_a_400_naming_them() {
    let p = Platform::start();
    let entry: &[u8] = b"export const handler = async () => ({ statusCode: 200 });";
    let put = |name: &str, long: &str| {
        let archive = raw_archive(&[("index.mjs", entry), (long, b"x")]);
        let r = p
            .api(Method::PUT, &format!("/v1/functions/{name}"))
            .body(archive)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };

    // One name over NAME_MAX (255 bytes).
    let (status, v) = put("long-name", &format!("lib/{}.js", "n".repeat(253)));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "path_too_long", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("archive entry `lib/nnnn"), "{message}");
    assert!(message.contains("256 bytes"), "{message}");

    // A path that fits PATH_MAX alone but not under the server's folder.
    let (status, v) = put("long-path", &deep(4080));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "path_too_long", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("archive entry `dddd"), "{message}");
    assert!(message.contains("PATH_MAX"), "{message}");
    let data_dir = p.data_dir.to_string_lossy().into_owned();
    assert!(!message.contains(&data_dir), "{message}");

    // Longer than PATH_MAX on its own.
    let (status, v) = put("longer-path", &deep(5000));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "path_too_long", "{v}");

    // Nothing was deployed, nothing left behind, and a good deploy works.
    let staging: Vec<_> = std::fs::read_dir(p.data_dir.join("code"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    let dir = function_dir(&[("index.mjs", HELLO)]);
    p.deploy(dir.path(), "fine");
    let r = http().get(p.url("fine", "/")).send().unwrap();
    assert_eq!(r.text().unwrap(), "hello");
    assert!(Path::new(&p.data_dir).is_dir());
}
