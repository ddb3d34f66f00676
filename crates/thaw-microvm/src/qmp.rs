//! A minimal QMP (QEMU Machine Protocol) client: one JSON object per line,
//! commands answered in order, asynchronous events skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

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
