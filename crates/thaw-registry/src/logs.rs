//! Console output kept per function, newest lines last.

use crate::db::{params, Kind, Row};
use crate::{FunctionId, Registry, RegistryError};
use serde::{Deserialize, Serialize};

/// Lines kept per function; older ones are pruned as new ones arrive.
pub const LINES_KEPT: i64 = 10_000;
/// Bytes of lines (UTF-8, as stored) kept per function, whatever their
/// number; older lines are pruned as new ones arrive.
pub const BYTES_KEPT: i64 = 8 * 1024 * 1024;
/// Longest line stored. The host cuts console lines well below this
/// (thaw-sandbox, 16 KiB); this is the last guard, for any other writer.
pub const LINE_BYTES_STORED: usize = 64 * 1024;

/// `line`, cut to [`LINE_BYTES_STORED`] (at a character boundary, and
/// marked) if it is longer.
fn stored_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= LINE_BYTES_STORED {
        return line.into();
    }
    format!(
        "{} …[thaw: line cut, {} bytes in all]",
        thaw_bundle::text_prefix(line, LINE_BYTES_STORED - 64),
        line.len()
    )
    .into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Increasing position in the log, for `after=` cursors.
    #[serde(default)]
    pub seq: i64,
    /// The version that wrote it: its id (unique across the registry) when
    /// appended, its number within its function when read back (none once
    /// that version is forgotten).
    pub version: Option<i64>,
    pub invocation: Option<u64>,
    pub stream: String,
    pub line: String,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only lines after this position.
    pub after: Option<i64>,
    /// Only this invocation's lines.
    pub invocation: Option<u64>,
    /// At most this many lines: the newest ones when `after` is not set.
    pub limit: u32,
}

impl Registry {
    /// Stores lines, each with the function of its version; lines of a
    /// version that is gone (its function removed) are dropped. Each
    /// function then keeps its newest lines within [`LINES_KEPT`] lines
    /// and [`BYTES_KEPT`] bytes, whichever is reached first.
    pub fn append_logs(&self, records: &[LogRecord]) -> Result<(), RegistryError> {
        if records.is_empty() {
            return Ok(());
        }
        self.db.run(Kind::Write, |tx| {
            for r in records {
                tx.execute(
                    "INSERT INTO logs (function_id, version, invocation, stream, line, ts_ms)
                     SELECT function_id, id, ?2, ?3, ?4, ?5 FROM versions WHERE id = ?1",
                    params![
                        r.version,
                        r.invocation.map(|i| i as i64),
                        r.stream,
                        stored_line(&r.line),
                        r.ts_ms
                    ],
                )?;
            }
            let mut versions: Vec<i64> = records.iter().filter_map(|r| r.version).collect();
            versions.sort_unstable();
            versions.dedup();
            let mut functions = Vec::new();
            for v in versions {
                let f: Option<i64> = tx.opt(
                    "SELECT function_id FROM versions WHERE id = ?1",
                    params![v],
                    |r| r.get(0),
                )?;
                functions.extend(f);
            }
            functions.sort_unstable();
            functions.dedup();
            for f in functions {
                tx.execute(
                    "DELETE FROM logs WHERE function_id = ?1 AND id <=
                       (SELECT id FROM logs WHERE function_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    params![f, LINES_KEPT],
                )?;
                // By bytes: the oldest lines go until the rest fits. Only
                // those are read, which in the steady state is about what
                // the batch added.
                let total: i64 = tx.one(
                    "SELECT CAST(COALESCE(SUM(octet_length(line)), 0) AS BIGINT) FROM logs
                     WHERE function_id = ?1",
                    params![f],
                    |r| r.get(0),
                )?;
                let mut excess = total - BYTES_KEPT;
                let mut last = None;
                while excess > 0 {
                    // The oldest lines in pages, so that a small excess
                    // reads little.
                    let page = tx.map(
                        "SELECT id, octet_length(line) FROM logs WHERE function_id = ?1 AND id > ?2
                         ORDER BY id ASC LIMIT 256",
                        params![f, last.unwrap_or(0i64)],
                        |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
                    )?;
                    if page.is_empty() {
                        break;
                    }
                    for (id, bytes) in page {
                        last = Some(id);
                        excess -= bytes;
                        if excess <= 0 {
                            break;
                        }
                    }
                }
                if let Some(last) = last {
                    tx.execute(
                        "DELETE FROM logs WHERE function_id = ?1 AND id <= ?2",
                        params![f, last],
                    )?;
                }
            }
            Ok(())
        })
    }

    pub fn logs(
        &self,
        function: &FunctionId,
        q: &LogQuery,
    ) -> Result<Vec<LogRecord>, RegistryError> {
        let limit = q.limit.clamp(1, 10_000) as i64;
        let map = |r: &Row| {
            Ok(LogRecord {
                seq: r.get(0)?,
                version: r.get(2)?,
                invocation: r.get::<Option<i64>>(3)?.map(|i| i as u64),
                stream: r.get(4)?,
                line: r.get(5)?,
                ts_ms: r.get(6)?,
            })
        };
        let invocation = q.invocation.map(|i| i as i64);
        let mut rows: Vec<LogRecord> = self.db.run(Kind::Read, |tx| {
            let function = Registry::existing_function_row(tx, function)?;
            match q.after {
                Some(after) => tx.map(
                    "SELECT id, function_id, (SELECT number FROM versions WHERE versions.id = logs.version),
                                invocation, stream, line, ts_ms FROM logs
                         WHERE function_id = ?1 AND id > ?2
                           AND (CAST(?3 AS BIGINT) IS NULL OR invocation = ?3)
                         ORDER BY id ASC LIMIT ?4",
                    params![function, after, invocation, limit],
                    map,
                ),
                None => {
                    let mut v = tx.map(
                        "SELECT id, function_id, (SELECT number FROM versions WHERE versions.id = logs.version),
                                    invocation, stream, line, ts_ms FROM logs
                             WHERE function_id = ?1
                               AND (CAST(?2 AS BIGINT) IS NULL OR invocation = ?2)
                             ORDER BY id DESC LIMIT ?3",
                        params![function, invocation, limit],
                        map,
                    )?;
                    v.reverse();
                    Ok(v)
                }
            }
        })?;
        rows.shrink_to_fit();
        Ok(rows)
    }
}
