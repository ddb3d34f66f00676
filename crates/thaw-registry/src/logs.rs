//! Console output kept per function, newest lines last.

use crate::{Registry, RegistryError};
use rusqlite::params;
use serde::{Deserialize, Serialize};

/// Lines kept per function; older ones are pruned as new ones arrive.
const LINES_KEPT: i64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Increasing position in the log, for `after=` cursors.
    #[serde(default)]
    pub seq: i64,
    pub function: String,
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
    pub fn append_logs(&self, records: &[LogRecord]) -> Result<(), RegistryError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO logs (function, version, invocation, stream, line, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in records {
                insert.execute(params![
                    r.function,
                    r.version,
                    r.invocation.map(|i| i as i64),
                    r.stream,
                    r.line,
                    r.ts_ms
                ])?;
            }
            let mut functions: Vec<&str> = records.iter().map(|r| r.function.as_str()).collect();
            functions.sort_unstable();
            functions.dedup();
            let mut prune = tx.prepare_cached(
                "DELETE FROM logs WHERE function = ?1 AND id <=
                   (SELECT id FROM logs WHERE function = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?;
            for f in functions {
                prune.execute(params![f, LINES_KEPT])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn logs(&self, function: &str, q: &LogQuery) -> Result<Vec<LogRecord>, RegistryError> {
        let db = self.db.lock().unwrap();
        let limit = q.limit.clamp(1, 10_000) as i64;
        let map = |r: &rusqlite::Row<'_>| {
            Ok(LogRecord {
                seq: r.get(0)?,
                function: r.get(1)?,
                version: r.get(2)?,
                invocation: r.get::<_, Option<i64>>(3)?.map(|i| i as u64),
                stream: r.get(4)?,
                line: r.get(5)?,
                ts_ms: r.get(6)?,
            })
        };
        let invocation = q.invocation.map(|i| i as i64);
        let mut rows: Vec<LogRecord> = match q.after {
            Some(after) => {
                let mut stmt = db.prepare_cached(
                    "SELECT id, function, version, invocation, stream, line, ts_ms FROM logs
                     WHERE function = ?1 AND id > ?2 AND (?3 IS NULL OR invocation = ?3)
                     ORDER BY id ASC LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![function, after, invocation, limit], map)?;
                rows.collect::<Result<_, _>>()?
            }
            None => {
                let mut stmt = db.prepare_cached(
                    "SELECT id, function, version, invocation, stream, line, ts_ms FROM logs
                     WHERE function = ?1 AND (?2 IS NULL OR invocation = ?2)
                     ORDER BY id DESC LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![function, invocation, limit], map)?;
                let mut v: Vec<LogRecord> = rows.collect::<Result<_, _>>()?;
                v.reverse();
                v
            }
        };
        rows.shrink_to_fit();
        Ok(rows)
    }
}
