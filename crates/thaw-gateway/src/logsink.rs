//! Console lines from runtimes, written to the registry in batches off the
//! request path.

use std::sync::Arc;
use thaw_registry::{LogRecord, Registry};
use thaw_sandbox::{Binding, LogLine, LogSink};
use tokio::sync::mpsc;

/// Lines written in one transaction at most.
const BATCH: usize = 512;
/// Lines waiting to be written, at most. A function that logs faster than
/// the disk takes loses lines (counted) rather than growing thaw's memory.
const BACKLOG: usize = 100_000;

pub struct RegistryLogSink {
    tx: mpsc::Sender<LogRecord>,
    dropped: std::sync::atomic::AtomicU64,
}

impl RegistryLogSink {
    pub fn start(registry: Arc<Registry>) -> RegistryLogSink {
        let (tx, mut rx) = mpsc::channel::<LogRecord>(BACKLOG);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let registry = registry.clone();
                let written =
                    tokio::task::spawn_blocking(move || registry.append_logs(&batch)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("could not store log lines: {e}"),
                    Err(e) => tracing::error!("log writer failed: {e}"),
                }
            }
        });
        RegistryLogSink {
            tx,
            dropped: Default::default(),
        }
    }
}

impl LogSink for RegistryLogSink {
    fn log(&self, binding: Option<&Binding>, line: LogLine) {
        let Some(binding) = binding else {
            tracing::debug!(
                stream = line.stream.as_str(),
                "unbound runtime: {}",
                line.line
            );
            return;
        };
        let sent = self.tx.try_send(LogRecord {
            seq: 0,
            version: Some(binding.version),
            invocation: line.invocation,
            stream: line.stream.as_str().to_string(),
            line: line.line,
            ts_ms: line.ts_ms as i64,
        });
        if sent.is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(10_000) {
                tracing::warn!("log backlog full: {} lines dropped so far", n + 1);
            }
        }
    }
}
