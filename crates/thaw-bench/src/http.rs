//! A minimal blocking HTTP/1.1 client over one keep-alive TCP connection.
//!
//! The bench times requests with it, so it does as little as it can: one
//! write per request, reads into a reused buffer, no pooling, no
//! redirects, no TLS. It understands `content-length` and chunked bodies,
//! which is what every system measured here answers with.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A request that takes longer than this is an error, not a sample.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response the bench accepts; hello world is 11 bytes.
const MAX_RESPONSE: usize = 16 << 20;

pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    /// The server said `connection: close` or ended the body with EOF.
    closed: bool,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Conn::over(TcpStream::connect(addr)?, addr)
    }

    /// Uses a connection opened elsewhere.
    pub fn over(stream: TcpStream, addr: SocketAddr) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            closed: false,
        })
    }

    /// The server closed this connection (`connection: close`, or an end
    /// of stream): the next request needs a new one.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], &[])
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the server closed this connection",
            ));
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        self.stream.write_all(&message)?;
        self.read_response()
    }

    /// Reads more bytes into the buffer; an end of stream is an error.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() > MAX_RESPONSE {
            return Err(bad("response larger than 16 MiB"));
        }
        let len = self.buf.len();
        self.buf.resize(len + 16 * 1024, 0);
        let n = match self.stream.read(&mut self.buf[len..]) {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection mid-response",
            ));
        }
        Ok(())
    }

    /// Index just past the next `\r\n` from `pos`, reading as needed.
    fn line_end(&mut self) -> io::Result<usize> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                return Ok(self.pos + i + 2);
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            self.fill()?;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end - 4])
            .map_err(|_| bad("response head is not UTF-8"))?
            .to_string();
        self.pos = head_end;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length = get("content-length").and_then(|v| v.parse::<usize>().ok());
        if get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.closed = true;
        }
        let body = if chunked {
            self.read_chunked()?
        } else if let Some(n) = length {
            if n > MAX_RESPONSE {
                return Err(bad("response larger than 16 MiB"));
            }
            self.take(n)?
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else {
            // The body runs to the end of the stream.
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            let out = self.buf[self.pos..].to_vec();
            self.pos = self.buf.len();
            out
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let end = self.line_end()?;
            let size_text = std::str::from_utf8(&self.buf[self.pos..end - 2])
                .map_err(|_| bad("bad chunk size"))?;
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(&format!("bad chunk size {size_text:?}")))?;
            self.pos = end;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let end = self.line_end()?;
                    let empty = end - self.pos == 2;
                    self.pos = end;
                    if empty {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > MAX_RESPONSE {
                return Err(bad("response larger than 16 MiB"));
            }
            body.extend(self.take(size)?);
            self.take(2)?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves the given raw responses, one per request, on one connection.
    fn serve(responses: Vec<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                let mut got = Vec::new();
                while find(&got, b"\r\n\r\n").is_none() {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(r.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn reads_length_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Thaw-Start: cold\r\n\r\nhello world",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
        ]);
        let mut c = Conn::connect(addr).unwrap();
        let r = c.get("/").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
        assert_eq!(r.header("x-thaw-start"), Some("cold"));
        let r = c.get("/").unwrap();
        assert_eq!(r.body, b"hello world");
        assert_eq!(c.get("/").unwrap().status, 204);
        assert_eq!(c.get("/").unwrap().body, b"to the end");
        assert!(c.get("/").is_err(), "the server closed the connection");
    }
}
