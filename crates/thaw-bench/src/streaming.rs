//! Streaming one large response: time to first byte and throughput of a
//! body of many MiB, through thaw (a fetch handler whose `Response` is a
//! `ReadableStream`) and from a bare Node `http` server writing the same
//! chunks with backpressure. Each run fetches the whole body over a fresh
//! loopback connection, `Connection: close`, and reads it as fast as it
//! comes; the median run is reported.

use crate::error::{failed, Context as _, Result};
use crate::procs::{connect_when_listening, free_port, minimal_env, Guarded, Scratch};
use crate::results::{StreamRow, Streaming};
use crate::stats::Summary;
use crate::thaw::Platform;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Bytes each side writes at a time.
const CHUNK: usize = 256 * 1024;
/// How long one whole response may take before the run is failed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The thaw function: `mib` MiB as chunks of one constant buffer.
fn thaw_source(mib: usize) -> String {
    format!(
        "const chunk = new Uint8Array({CHUNK}).fill(120);\n\
         export default {{\n  fetch() {{\n    let left = {chunks};\n    \
         const body = new ReadableStream({{ pull(c) {{ if (left-- > 0) c.enqueue(chunk); else c.close(); }} }});\n    \
         return new Response(body, {{ headers: {{ \"content-type\": \"application/octet-stream\" }} }});\n  }},\n}};\n",
        chunks = mib * (1024 * 1024 / CHUNK)
    )
}

/// The bare server: the same chunks, written as fast as the socket takes
/// them.
fn node_source(mib: usize, port: u16) -> String {
    format!(
        "const chunk = Buffer.alloc({CHUNK}, 120);\n\
         require(\"node:http\").createServer((req, res) => {{\n  \
         res.writeHead(200, {{ \"content-type\": \"application/octet-stream\" }});\n  \
         let left = {chunks};\n  \
         const more = () => {{ while (left > 0) {{ left--; if (!res.write(chunk)) {{ res.once(\"drain\", more); return; }} }} res.end(); }};\n  \
         more();\n}}).listen({port}, \"127.0.0.1\");\n",
        chunks = mib * (1024 * 1024 / CHUNK)
    )
}

/// `runs` fetches of `mib` MiB from thaw (on `p`) and from a bare Node
/// server, interleaved so that both see the same machine.
pub fn measure(p: &Platform, node: &Path, mib: usize, runs: usize) -> Result<Streaming> {
    let dir = Scratch::new("thaw-bench-streaming")?;
    let code = dir.path().join("stream-fn");
    std::fs::create_dir_all(&code).context(|| format!("could not create {}", code.display()))?;
    std::fs::write(code.join("index.mjs"), thaw_source(mib))
        .context(|| "could not write the streaming function".into())?;
    std::fs::write(code.join("thaw.toml"), "timeout = 300\n")
        .context(|| "could not write the streaming function's thaw.toml".into())?;
    p.deploy("bench-stream", &code)?;

    let port = free_port()?;
    let script = dir.path().join("stream-node.cjs");
    std::fs::write(&script, node_source(mib, port))
        .context(|| "could not write the bare Node server".into())?;
    let mut cmd = Command::new(node);
    minimal_env(&mut cmd).arg(&script);
    let mut server = Guarded::spawn_logged(
        &mut cmd,
        "bare Node http server",
        &dir.path().join("node.log"),
    )?;
    let node_addr = SocketAddr::from(([127, 0, 0, 1], port));
    drop(connect_when_listening(
        node_addr,
        &mut server,
        Duration::from_secs(10),
    )?);

    let want = (mib * 1024 * 1024) as u64;
    // One call first: thaw's instance is warm for the runs, as Node's is.
    fetch(p.addr, "/fn/bench-stream/", want)?;
    let (mut thaw, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        thaw.push(fetch(p.addr, "/fn/bench-stream/", want)?);
        bare.push(
            fetch(node_addr, "/", want)
                .map_err(|e| failed(format!("{e} {}", server.log_tail())))?,
        );
        crate::progress_n("streaming", "response", thaw.len(), runs);
    }
    server.stop(libc::SIGTERM, Duration::from_secs(2));
    Ok(Streaming {
        mib,
        rows: vec![
            row("thaw (fetch handler, ReadableStream body)", &thaw),
            row("bare Node http server", &bare),
        ],
    })
}

fn row(system: &str, runs: &[(Duration, Duration)]) -> StreamRow {
    let first: Vec<Duration> = runs.iter().map(|r| r.0).collect();
    let whole: Vec<Duration> = runs.iter().map(|r| r.1).collect();
    StreamRow {
        system: system.into(),
        first_byte: Summary::of(&first).map(|s| s.p50).unwrap_or_default(),
        whole: Summary::of(&whole).map(|s| s.p50).unwrap_or_default(),
    }
}

/// Fetches `path` whole: the time to the response's first byte and to its
/// last. Fails unless it is a 200 with at least `want` bytes after the
/// head (chunked framing counts; it is a few bytes per 256 KiB).
fn fetch(addr: SocketAddr, path: &str, want: u64) -> Result<(Duration, Duration)> {
    let mut s = TcpStream::connect(addr).context(|| format!("could not connect to {addr}"))?;
    s.set_read_timeout(Some(RUN_LIMIT))
        .context(|| "could not set a read timeout".into())?;
    let started = Instant::now();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .context(|| format!("could not send GET {path} to {addr}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut first = None;
    // The head, until its end is in; then only the body's bytes count.
    let mut head = Some(Vec::new());
    let mut body = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .context(|| format!("reading GET {path} from {addr}"))?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        let Some(h) = head.as_mut() else {
            body += n as u64;
            continue;
        };
        h.extend_from_slice(&buf[..n]);
        if let Some(end) = h.windows(4).position(|w| w == b"\r\n\r\n") {
            if !h.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&h[..end.min(200)]).into_owned();
                return Err(failed(format!("GET {path} from {addr} answered {line}")));
            }
            body = (h.len() - end - 4) as u64;
            head = None;
        } else if h.len() > 64 * 1024 {
            return Err(failed(format!("GET {path} from {addr}: no end of head")));
        }
    }
    let whole = started.elapsed();
    if body < want {
        return Err(failed(format!(
            "GET {path} from {addr} ended after {body} bytes of a body of {want}"
        )));
    }
    Ok((first.unwrap_or(whole), whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_write_the_same_number_of_chunks() {
        let chunks = |text: &str, key: &str| {
            text.split(key)
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .map(|n| n.trim().to_string())
        };
        let thaw = thaw_source(100);
        let node = node_source(100, 8080);
        assert_eq!(chunks(&thaw, "let left = "), Some("400".into()));
        assert_eq!(chunks(&node, "let left = "), Some("400".into()));
        assert!(thaw.contains(&format!("new Uint8Array({CHUNK})")));
        assert!(node.contains(&format!("Buffer.alloc({CHUNK}, 120)")));
    }
}
