//! A minimal QMP (QEMU Machine Protocol) client: one JSON object per line,
//! commands answered in order, asynchronous events skipped.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::MicrovmError;

pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and leaves
    /// capabilities negotiation mode.
    pub(crate) async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, MicrovmError> {
        let stream = crate::vm::connect_unix(path, timeout).await?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_value().await?;
        if greeting.get("QMP").is_none() {
            return Err(MicrovmError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self) -> Result<Value, MicrovmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| MicrovmError::Qmp(format!("reading: {e}")))?;
        if n == 0 {
            return Err(MicrovmError::Qmp(
                "QEMU closed the QMP socket (did it exit?)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| MicrovmError::Qmp(format!("bad JSON {line:?}: {e}")))
    }

    /// Runs one command and returns its `return` value.
    pub(crate) async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> Result<Value, MicrovmError> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| MicrovmError::Qmp(format!("sending {command}: {e}")))?;
        self.read_return(command).await
    }

    /// Runs one command that takes a file descriptor (`getfd`, `add-fd`):
    /// the descriptor travels with the command's bytes (SCM_RIGHTS), and
    /// QEMU gets its own copy of it. This is how a VMM that sees nothing
    /// of the host's files is handed exactly the ones it needs.
    pub(crate) async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, MicrovmError> {
        let msg = json!({ "execute": command, "arguments": arguments });
        let mut line = msg.to_string();
        line.push('\n');
        let stream: &UnixStream = self.writer.as_ref();
        let failed = |e: std::io::Error| MicrovmError::Qmp(format!("sending {command}: {e}"));
        loop {
            stream.writable().await.map_err(failed)?;
            match stream.try_io(Interest::WRITABLE, || {
                send_with_fd(stream.as_raw_fd(), line.as_bytes(), fd.as_raw_fd())
            }) {
                Ok(n) if n == line.len() => break,
                // The descriptor went with the first bytes; the rest go plain.
                Ok(n) => {
                    self.writer
                        .write_all(&line.as_bytes()[n..])
                        .await
                        .map_err(failed)?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        self.read_return(command).await
    }

    /// Reads until the answer to `command` (skipping events).
    async fn read_return(&mut self, command: &str) -> Result<Value, MicrovmError> {
        loop {
            let v = self.read_value().await?;
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = v.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(MicrovmError::Qmp(format!("{command}: {desc}")));
            }
            // An event ({"event": ...}): not what we wait for.
        }
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, ...).
    pub(crate) async fn status(&mut self) -> Result<String, MicrovmError> {
        let v = self.execute("query-status", json!({})).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    }

    /// Polls `query-migrate` until the migration has completed.
    pub(crate) async fn wait_migration(&mut self, timeout: Duration) -> Result<(), MicrovmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.execute("query-migrate", json!({})).await?;
            match v.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let why = v
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(MicrovmError::Qmp(format!("migration failed: {why}")));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MicrovmError::Timeout(format!(
                    "waiting {timeout:?} for the migration to finish"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One `sendmsg` of `bytes` with `fd` attached as SCM_RIGHTS.
fn send_with_fd(socket: RawFd, bytes: &[u8], fd: RawFd) -> std::io::Result<usize> {
    const FD_SPACE: usize = std::mem::size_of::<RawFd>();
    // u64 for the alignment cmsghdr needs.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure computation.
    let control_len = unsafe { libc::CMSG_SPACE(FD_SPACE as u32) } as usize;
    assert!(control_len <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; zero is valid for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len;
    // SAFETY: `msg` describes `control`, which is large enough for one
    // header carrying one descriptor (asserted above); CMSG_FIRSTHDR is
    // therefore non-null and CMSG_DATA points inside `control`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_SPACE as u32) as usize;
        std::ptr::copy_nonoverlapping(
            (&fd as *const RawFd).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            FD_SPACE,
        );
    }
    // SAFETY: every pointer in `msg` is valid for the duration of the call.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
