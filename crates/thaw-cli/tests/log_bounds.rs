//! Bounds under abuse, end to end on a real `thaw up`: a function that logs
//! hundreds of megabytes leaves the database small and its log says what
//! was dropped; one that writes megabytes past the shim on its raw stdout
//! is stored cut; one that writes garbage on its protocol descriptor is
//! killed with a clear reason while the platform keeps serving.

mod common;

use common::{function_dir, http, Platform};
use serde_json::Value;

/// `(lines, bytes)` of a "[thaw] N lines (M bytes) dropped: ..." line.
fn dropped(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("[thaw] ")?;
    let (lines, rest) = rest.split_once(" lines (")?;
    let (bytes, _) = rest.split_once(" bytes) dropped: ")?;
    Some((lines.parse().ok()?, bytes.parse().ok()?))
}

/// The length a stored line had as written: its cut mark's figure, or its
/// own length.
fn written_length(line: &str) -> u64 {
    line.rsplit_once(" …[thaw: line cut, ")
        .and_then(|(_, mark)| mark.strip_suffix(" bytes in all]"))
        .map(|n| n.parse().unwrap())
        .unwrap_or(line.len() as u64)
}

/// The registry's bytes: its SQLite file, or its PostgreSQL database.
fn on_disk(p: &Platform) -> u64 {
    if let Some(url) = common::test_database(&p.data_dir) {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let bytes: i64 = db
            .query_one("SELECT pg_database_size(current_database())", &[])
            .unwrap()
            .get(0);
        return bytes as u64;
    }
    ["thaw.db", "thaw.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(p.data_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn a_call_logging_200_mb_leaves_the_database_small_and_says_what_was_dropped() {
    let p = Platform::start();
    const MB: u64 = 1024 * 1024;
    const TIMES: u64 = 200;
    let flood = function_dir(&[
        (
            "index.mjs",
            r#"export const handler = async () => {
                 const mb = "x".repeat(1024 * 1024);
                 for (let i = 0; i < 200; i++) console.log(mb);
                 return { statusCode: 200, body: "done" };
               };"#,
        ),
        // The shim queues frames faster than thaw reads them: room for that.
        ("thaw.toml", "memory = 1024\ntimeout = 600\n"),
    ]);
    p.deploy(flood.path(), "flood");
    let before = on_disk(&p);

    let r = http().get(p.url("flood", "/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "done");

    p.wait_for_log("flood", "dropped: ");
    let logs = p.log_lines("flood");
    let (said, kept): (Vec<&Value>, Vec<&Value>) = logs
        .iter()
        .partition(|l| dropped(l["line"].as_str().unwrap()).is_some());
    assert!(!said.is_empty());
    let (dropped_lines, dropped_bytes) = said
        .iter()
        .map(|l| dropped(l["line"].as_str().unwrap()).unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    for l in &said {
        let line = l["line"].as_str().unwrap();
        assert!(line.contains("log limit of"), "{line}");
        assert_eq!(l["stream"], "stderr", "{l}");
    }
    let kept_bytes: u64 = kept
        .iter()
        .map(|l| l["line"].as_str().unwrap().len() as u64)
        .sum();
    // At most the call's budget was kept, each line cut to 16 KiB...
    assert!(kept_bytes <= MB, "{kept_bytes} bytes of log kept");
    assert!(kept
        .iter()
        .all(|l| l["line"].as_str().unwrap().len() <= 16 * 1024));
    // ...and every byte written is either kept or counted as dropped.
    let written: u64 = kept
        .iter()
        .map(|l| written_length(l["line"].as_str().unwrap()))
        .sum::<u64>()
        + dropped_bytes;
    // console.log adds no newline to a line's text; 200 lines of 1 MiB.
    assert_eq!(written, TIMES * MB, "{dropped_lines} lines dropped");
    assert!(dropped_bytes > TIMES * MB / 2, "{dropped_bytes}");

    // The database grew by about the budget, not by 200 MB.
    let after = on_disk(&p);
    assert!(
        after < before + 16 * MB,
        "the database went from {before} to {after} bytes"
    );
}

#[test]
fn ten_megabytes_on_raw_stdout_in_one_line_are_stored_cut() {
    let p = Platform::start();
    let raw = function_dir(&[(
        "index.mjs",
        r#"import { writeSync } from "node:fs";
           // Straight to fd 1, past the shim: thaw reads it as raw output.
           function rawWrite(fd, buf) {
             let off = 0;
             while (off < buf.length) {
               try {
                 off += writeSync(fd, buf, off, Math.min(65536, buf.length - off));
               } catch (e) {
                 if (e.code !== "EAGAIN") throw e;
                 Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
               }
             }
           }
           export const handler = async () => {
             rawWrite(1, Buffer.from("r".repeat(10 * 1024 * 1024) + "\nraw after\n"));
             return { statusCode: 200, body: "written" };
           };"#,
    )]);
    p.deploy(raw.path(), "raw");
    let r = http().get(p.url("raw", "/")).send().unwrap();
    assert_eq!(r.status(), 200);
    p.wait_for_log("raw", "raw after");
    let logs = p.log_lines("raw");
    let cut = logs
        .iter()
        .find(|l| l["line"].as_str().unwrap().starts_with("rrrr"))
        .expect("the long line is stored");
    let line = cut["line"].as_str().unwrap();
    assert!(line.len() <= 16 * 1024, "{} bytes stored", line.len());
    assert!(
        line.ends_with(" …[thaw: line cut, 10485760 bytes in all]"),
        "{}",
        &line[line.len() - 60..]
    );
    assert_eq!(cut["stream"], "stdout", "{cut}");
}

/// A function that writes `bytes` (a JavaScript array) on its protocol
/// descriptor, then waits.
fn garbage_writer(bytes: &str) -> tempfile::TempDir {
    function_dir(&[(
        "index.mjs",
        &format!(
            r#"import {{ writeSync }} from "node:fs";
               export const handler = async () => {{
                 const fd = Number(process.env.THAW_FD ?? 3);
                 writeSync(fd, Buffer.from({bytes}));
                 await new Promise((resolve) => setTimeout(resolve, 20000));
                 return {{ statusCode: 200, body: "not killed" }};
               }};"#
        ),
    )])
}

#[test]
fn a_runtime_writing_garbage_on_its_protocol_descriptor_is_killed_and_others_keep_serving() {
    let p = Platform::start();
    let bystander = function_dir(&[("index.mjs", "export const main = () => ({ fine: true });")]);
    p.deploy(bystander.path(), "bystander");
    // A message frame of five bytes that are not JSON.
    let not_json = garbage_writer("[0, 0, 0, 6, 1, 104, 101, 108, 108, 111]");
    p.deploy(not_json.path(), "not-json");
    // A length of 4 GiB, and no body.
    let huge = garbage_writer("[255, 255, 255, 255]");
    p.deploy(huge.path(), "huge-frame");

    for (name, what) in [
        ("not-json", "malformed frame"),
        ("huge-frame", "larger than the 67108864-byte limit"),
    ] {
        // Twice: the next call gets a fresh instance, killed in turn.
        for _ in 0..2 {
            let r = http().get(p.url(name, "/")).send().unwrap();
            assert_eq!(r.status(), 502, "{name}");
            let v: Value = r.json().unwrap();
            assert_eq!(v["error"]["code"], "crashed", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("the runtime broke the wire protocol")
                    && message.contains(what)
                    && message.contains("thaw killed it"),
                "{v}"
            );
            let ok: Value = http()
                .get(p.url("bystander", "/"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(ok["fine"], true);
        }
    }
}
