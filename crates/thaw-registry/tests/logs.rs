//! Log retention by lines and by bytes, on both engines.

mod common;

use common::{Db, KEY};
use std::path::Path;
use thaw_registry::{FunctionId, LogQuery, LogRecord, Registry};
/// The figures of `logs.rs`.
const LINES_KEPT: usize = 10_000;
const BYTES_KEPT: usize = 8 * 1024 * 1024;
const LINE_BYTES_STORED: usize = 64 * 1024;

fn deploy(reg: &Registry, dir: &Path, f: &FunctionId) -> i64 {
    let src = dir.join(format!("src-{}", f.name));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("index.mjs"),
        "export const handler = async () => ({ statusCode: 200 });\n",
    )
    .unwrap();
    let packed = thaw_bundle::pack_dir(&src, &thaw_bundle::Limits::default()).unwrap();
    let tree = reg
        .store_code(&packed.archive, &thaw_bundle::Limits::default(), None)
        .unwrap();
    let v = reg
        .add_version(f, &tree, packed.archive.len() as u64, "admin")
        .unwrap();
    reg.activate(&v, true).unwrap();
    v.id
}

fn record(version: i64, line: String) -> LogRecord {
    LogRecord {
        seq: 0,
        version: Some(version),
        invocation: Some(1),
        stream: "stdout".into(),
        line,
        ts_ms: 1,
    }
}

/// Line `n` of `bytes` bytes, starting with its number.
fn numbered(n: usize, bytes: usize) -> String {
    let head = format!("{n:08} ");
    format!("{head}{}", "x".repeat(bytes - head.len()))
}

fn all_logs(reg: &Registry, f: &FunctionId) -> Vec<LogRecord> {
    reg.logs(
        f,
        &LogQuery {
            limit: 10_000,
            ..LogQuery::default()
        },
    )
    .unwrap()
}

fn number_of(line: &str) -> usize {
    line[..8].parse().unwrap()
}

fn a_function_keeps_its_newest_lines_within_the_byte_budget(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "loud");
    let quiet = FunctionId::new("default", "quiet");
    let v = deploy(&reg, dir.path(), &f);
    let q = deploy(&reg, dir.path(), &quiet);
    reg.append_logs(&[record(q, "a quiet line".into())])
        .unwrap();

    // 16 MiB in lines of 16 KiB, in batches as the log writer sends them.
    const LINE: usize = 16 * 1024;
    let mut n = 0;
    for _ in 0..20 {
        let batch: Vec<LogRecord> = (0..50)
            .map(|_| {
                n += 1;
                record(v, numbered(n, LINE))
            })
            .collect();
        reg.append_logs(&batch).unwrap();
    }
    let kept = all_logs(&reg, &f);
    let bytes: usize = kept.iter().map(|l| l.line.len()).sum();
    assert!(bytes <= BYTES_KEPT, "{bytes} bytes kept");
    assert_eq!(kept.len(), BYTES_KEPT / LINE);
    // The newest ones, in order, none missing.
    let numbers: Vec<usize> = kept.iter().map(|l| number_of(&l.line)).collect();
    let expected: Vec<usize> = (n - kept.len() + 1..=n).collect();
    assert_eq!(numbers, expected);
    // The other function's line is untouched.
    let other = all_logs(&reg, &quiet);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].line, "a quiet line");

    // Lines of several sizes: still within the budget, and the budget is
    // used (no more than one line's worth left over).
    let mut batch = Vec::new();
    for i in 0..400 {
        n += 1;
        batch.push(record(v, numbered(n, 100 + (i * 7919) % 60_000)));
    }
    reg.append_logs(&batch).unwrap();
    let kept = all_logs(&reg, &f);
    let bytes: usize = kept.iter().map(|l| l.line.len()).sum();
    assert!(bytes <= BYTES_KEPT, "{bytes} bytes kept");
    assert!(bytes > BYTES_KEPT - 60_000, "only {bytes} bytes kept");
    assert_eq!(number_of(&kept.last().unwrap().line), n);
}

fn a_function_keeps_at_most_its_lines_however_short(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "chatty");
    let v = deploy(&reg, dir.path(), &f);
    let mut n = 0;
    for _ in 0..21 {
        let batch: Vec<LogRecord> = (0..512)
            .map(|_| {
                n += 1;
                record(v, numbered(n, 20))
            })
            .collect();
        reg.append_logs(&batch).unwrap();
    }
    let kept = all_logs(&reg, &f);
    assert_eq!(kept.len(), LINES_KEPT);
    assert_eq!(number_of(&kept[0].line), n - LINES_KEPT + 1);
}

fn an_enormous_line_is_stored_cut(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "huge");
    let v = deploy(&reg, dir.path(), &f);
    reg.append_logs(&[record(v, "ü".repeat(5_000_000))])
        .unwrap();
    let kept = all_logs(&reg, &f);
    assert_eq!(kept.len(), 1);
    assert!(kept[0].line.len() <= LINE_BYTES_STORED);
    assert!(kept[0].line.starts_with("üü"));
    assert!(kept[0]
        .line
        .ends_with(" …[thaw: line cut, 10000000 bytes in all]"));
}

#[test]
fn logging_far_more_than_the_budget_does_not_grow_the_database_by_as_much() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path(), Some(KEY)).unwrap();
    let f = FunctionId::new("default", "flood");
    let v = deploy(&reg, dir.path(), &f);
    // 64 MiB in 16 KiB lines.
    let line = "y".repeat(16 * 1024);
    for _ in 0..(64 * 1024 / 16 / 256) {
        let batch: Vec<LogRecord> = (0..256).map(|_| record(v, line.clone())).collect();
        reg.append_logs(&batch).unwrap();
    }
    let size = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let on_disk = size("thaw.db") + size("thaw.db-wal");
    assert!(
        on_disk < 32 * 1024 * 1024,
        "64 MiB of logs left {on_disk} bytes on disk"
    );
}

on_both_engines!(
    a_function_keeps_its_newest_lines_within_the_byte_budget,
    a_function_keeps_at_most_its_lines_however_short,
    an_enormous_line_is_stored_cut,
);
