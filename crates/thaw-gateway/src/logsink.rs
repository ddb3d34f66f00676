//! Console lines from runtimes, written to the registry in batches off the
//! request path.
//!
//! Lines arrive already bounded (thaw-sandbox cuts each to 16 KiB and caps
//! what a call and an instance may log); here the backlog waiting for the
//! disk is bounded too, in lines and in bytes. What does not fit is dropped,
//! counted per function version, and said in that function's log as soon
//! as the writer catches up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thaw_registry::{LogRecord, Registry};
use thaw_sandbox::{Binding, LogLine, LogSink};
use tokio::sync::mpsc;

/// Lines written in one transaction at most.
const BATCH: usize = 512;
/// Lines waiting to be written, at most. A function that logs faster than
/// the disk takes loses lines (counted) rather than growing thaw's memory.
const BACKLOG: usize = 100_000;
/// Bytes waiting to be written, at most (each line counted with
/// [`LINE_OVERHEAD`]).
const BACKLOG_BYTES: usize = 32 * 1024 * 1024;
/// What one waiting line costs beyond its text.
const LINE_OVERHEAD: usize = 64;
/// How often the writer says what was dropped when nothing else comes.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Warnings in thaw's own log about a full backlog: at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(1);

pub struct RegistryLogSink {
    tx: mpsc::Sender<LogRecord>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Bytes of the lines in the channel.
    queued: AtomicUsize,
    /// Lines dropped so far, for thaw's own log.
    dropped_total: AtomicU64,
    /// Lines (and bytes) dropped per version, not yet said in its log.
    unsaid: Mutex<HashMap<i64, (u64, u64)>>,
    last_warning: Mutex<Option<Instant>>,
}

fn cost(line: &str) -> usize {
    line.len() + LINE_OVERHEAD
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl State {
    fn drop_line(&self, version: i64, bytes: usize) {
        {
            let mut unsaid = self.unsaid.lock().unwrap_or_else(|e| e.into_inner());
            let entry = unsaid.entry(version).or_default();
            entry.0 += 1;
            entry.1 += bytes as u64;
        }
        let total = self.dropped_total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!("log backlog full: {total} lines dropped so far");
        }
    }

    /// One line per version saying what it lost, to be written now.
    fn take_unsaid(&self) -> Vec<LogRecord> {
        let unsaid = std::mem::take(&mut *self.unsaid.lock().unwrap_or_else(|e| e.into_inner()));
        unsaid
            .into_iter()
            .map(|(version, (lines, bytes))| LogRecord {
                seq: 0,
                version: Some(version),
                invocation: None,
                stream: "stderr".into(),
                line: format!(
                    "[thaw] {lines} lines ({bytes} bytes) dropped: thaw's log writer fell behind \
                     (more than {BACKLOG} lines or {} MiB waiting for the disk)",
                    BACKLOG_BYTES / (1024 * 1024)
                ),
                ts_ms: now_ms(),
            })
            .collect()
    }
}

impl RegistryLogSink {
    pub fn start(registry: Arc<Registry>) -> RegistryLogSink {
        let (tx, mut rx) = mpsc::channel::<LogRecord>(BACKLOG);
        let state = Arc::new(State::default());
        let writer_state = state.clone();
        tokio::spawn(async move {
            let state = writer_state;
            loop {
                let mut batch = Vec::new();
                match tokio::time::timeout(FLUSH_EVERY, rx.recv()).await {
                    Ok(Some(first)) => batch.push(first),
                    Ok(None) => break,
                    Err(_) => {}
                }
                while !batch.is_empty() && batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let taken: usize = batch.iter().map(|r| cost(&r.line)).sum();
                state.queued.fetch_sub(taken, Ordering::AcqRel);
                // Once caught up (the batch is not full: nothing else is
                // waiting), say what was dropped, after what was kept.
                if batch.len() < BATCH {
                    batch.extend(state.take_unsaid());
                }
                if batch.is_empty() {
                    continue;
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
        RegistryLogSink { tx, state }
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
        let cost = cost(&line.line);
        let queued = self.state.queued.fetch_add(cost, Ordering::AcqRel) + cost;
        if queued > BACKLOG_BYTES {
            self.state.queued.fetch_sub(cost, Ordering::AcqRel);
            self.state.drop_line(binding.version, line.line.len());
            return;
        }
        let bytes = line.line.len();
        let sent = self.tx.try_send(LogRecord {
            seq: 0,
            version: Some(binding.version),
            invocation: line.invocation,
            stream: line.stream.as_str().to_string(),
            line: line.line,
            ts_ms: line.ts_ms as i64,
        });
        if sent.is_err() {
            self.state.queued.fetch_sub(cost, Ordering::AcqRel);
            self.state.drop_line(binding.version, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_registry::{FunctionId, LogQuery};
    use thaw_sandbox::LogStream;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_full_backlog_drops_lines_and_says_so_in_the_function_log() {
        let dir = Scratch(std::env::temp_dir().join(format!(
            "thaw-logsink-{}-{}",
            std::process::id(),
            now_ms()
        )));
        let src = dir.0.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("index.mjs"), "export const handler = () => 1;\n").unwrap();
        let registry = Arc::new(Registry::open(&dir.0.join("data"), Some(KEY)).unwrap());
        let f = FunctionId::new("default", "loud");
        let limits = thaw_bundle::Limits::default();
        let packed = thaw_bundle::pack_dir(&src, &limits).unwrap();
        let tree = registry.store_code(&packed.archive, &limits, None).unwrap();
        let v = registry
            .add_version(&f, &tree, packed.archive.len() as u64, "admin")
            .unwrap();
        registry.activate(&v, true).unwrap();

        let sink = RegistryLogSink::start(registry.clone());
        let binding = Binding {
            function: "loud".into(),
            version: v.id,
        };
        // The writer runs on this (single) thread: nothing is written
        // until this loop is done, so the backlog fills.
        const LINE: usize = 16 * 1024;
        const SENT: u64 = 3000;
        for _ in 0..SENT {
            sink.log(
                Some(&binding),
                LogLine {
                    invocation: Some(1),
                    stream: LogStream::Stdout,
                    line: "x".repeat(LINE),
                    ts_ms: 1,
                },
            );
        }
        let accepted = (BACKLOG_BYTES / (LINE + LINE_OVERHEAD)) as u64;
        let dropped = SENT - accepted;
        assert_eq!(sink.state.dropped_total.load(Ordering::Relaxed), dropped);

        let said = format!(
            "[thaw] {dropped} lines ({} bytes) dropped: thaw's log writer fell behind",
            dropped * LINE as u64
        );
        let started = Instant::now();
        loop {
            let logs = registry
                .logs(
                    &f,
                    &LogQuery {
                        limit: 10_000,
                        ..LogQuery::default()
                    },
                )
                .unwrap();
            // Said once, and everything accepted taken off the backlog.
            let saying: Vec<_> = logs.iter().filter(|l| l.line.starts_with(&said)).collect();
            assert!(saying.len() <= 1, "{saying:?}");
            if saying.len() == 1 && sink.state.queued.load(Ordering::Acquire) == 0 {
                assert_eq!(saying[0].invocation, None);
                assert_eq!(saying[0].stream, "stderr");
                break;
            }
            // A guard against a hang, not a timing assertion.
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "never said: {said}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
