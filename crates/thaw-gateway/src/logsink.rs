//! Console lines from runtimes, written to the registry in batches off the
//! request path.

use std::sync::Arc;
use thaw_registry::{LogRecord, Registry};
use thaw_sandbox::{Binding, LogLine, LogSink};
use tokio::sync::mpsc;

/// Lines written in one transaction at most.
const BATCH: usize = 512;

pub struct RegistryLogSink {
    tx: mpsc::UnboundedSender<LogRecord>,
}

impl RegistryLogSink {
    pub fn start(registry: Arc<Registry>) -> RegistryLogSink {
        let (tx, mut rx) = mpsc::unbounded_channel::<LogRecord>();
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
        RegistryLogSink { tx }
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
        let _ = self.tx.send(LogRecord {
            seq: 0,
            function: binding.function.clone(),
            version: Some(binding.version),
            invocation: line.invocation,
            stream: line.stream.as_str().to_string(),
            line: line.line,
            ts_ms: line.ts_ms as i64,
        });
    }
}
