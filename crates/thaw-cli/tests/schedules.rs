//! Cron schedules end to end, on the real clock, with a real `thaw up` and
//! real Node: every handler style receives its own ecosystem's event, each
//! tick fires once, and a `kill -9` and restart neither repeats a tick nor
//! runs every missed one. (The minute-by-minute rules on a clock the test
//! moves are in thaw-registry's `tests/schedules.rs`; here a six-field
//! expression ticks every two seconds so that real time stays short.)

mod common;

use common::{function_dir, Platform};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const EVERY_2S: &str = "*/2 * * * * *";

fn toml(extra: &str) -> String {
    format!(
        "[[schedule]]\nname = \"tick\"\ncron = \"{EVERY_2S}\"\npayload = {{ job = \"sweep\" }}\n{extra}"
    )
}

const STYLES: &[(&str, &str, &str)] = &[
    (
        "lambda",
        "export const handler = async (event) => ({ source: event.source, type: event['detail-type'], \
         time: event.time, detail: event.detail, id: event.id });",
        "",
    ),
    (
        "fetch",
        "export default { async scheduled(controller, env, ctx) { \
           return { cron: controller.cron, time: controller.scheduledTime, type: controller.type }; } };",
        "",
    ),
    (
        "class",
        "export class Jobs { tick(arg) { return { method: 'Jobs.tick', arg }; } }",
        "method = \"Jobs.tick\"\n",
    ),
    (
        "openwhisk",
        "export const main = (params) => ({ params, action: process.env.__OW_ACTION_NAME });",
        "",
    ),
];

fn get(p: &Platform, path: &str) -> Value {
    let r = p.api(Method::GET, path).send().unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().unwrap()
}

/// Every scheduled call of `name` with its tick, oldest tick first.
fn ticks(p: &Platform, name: &str) -> Vec<(i64, Value)> {
    let list = get(p, &format!("/v1/functions/{name}/invocations?limit=1000"));
    let mut out: Vec<(i64, Value)> = list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["origin"] == "schedule:tick")
        .map(|c| {
            let full = get(p, &format!("/v1/invocations/{}", c["id"].as_str().unwrap()));
            (full["payload"]["scheduled_time_ms"].as_i64().unwrap(), full)
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

fn schedule(p: &Platform, name: &str) -> Value {
    get(p, &format!("/v1/functions/{name}/schedules"))["schedules"][0].clone()
}

/// Ticks are on the two-second grid, none twice, and every tick from the
/// first to the last either fired or is counted as missed.
fn check_ticks(p: &Platform, name: &str) -> Vec<(i64, Value)> {
    // The schedule keeps ticking while it is read: take a reading no tick
    // fell into (the count the same before and after the calls' list).
    let (seen, s) = loop {
        let before = schedule(p, name);
        let seen = ticks(p, name);
        let s = schedule(p, name);
        if before["fired"] == s["fired"] && before["missed"] == s["missed"] {
            break (seen, s);
        }
    };
    let times: Vec<i64> = seen.iter().map(|(t, _)| *t).collect();
    let distinct: BTreeSet<i64> = times.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        times.len(),
        "{name}: a tick fired twice: {times:?}"
    );
    assert!(times.iter().all(|t| t % 2000 == 0), "{name}: {times:?}");
    assert_eq!(
        s["fired"].as_u64().unwrap() as usize,
        times.len(),
        "{name}: {s}"
    );
    let span = ((times.last().unwrap() - times[0]) / 2000 + 1) as u64;
    assert_eq!(
        span,
        times.len() as u64 + s["missed"].as_u64().unwrap(),
        "{name}: every tick fired or counted missed: {times:?} {s}"
    );
    seen
}

fn wait_for_ticks(p: &Platform, name: &str, at_least: usize) {
    p.eventually(60, &format!("{name} ran {at_least} ticks"), || {
        let t = ticks(p, name);
        t.len() >= at_least && t.iter().all(|(_, c)| c["state"] == "succeeded")
    });
}

#[test]
fn every_handler_style_gets_its_event_once_per_tick_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut p = Platform::start_in(data.path(), &[]);
    let dirs: Vec<_> = STYLES
        .iter()
        .map(|(name, code, extra)| {
            let dir = function_dir(&[("index.mjs", code), ("thaw.toml", &toml(extra))]);
            p.deploy(dir.path(), name);
            dir
        })
        .collect();
    for (name, ..) in STYLES {
        wait_for_ticks(&p, name, 3);
    }
    let before: Vec<usize> = STYLES
        .iter()
        .map(|(name, ..)| check_ticks(&p, name).len())
        .collect();

    // What each style received, from the result it returned.
    let result = |name: &str| ticks(&p, name).pop().unwrap();
    let (tick, lambda) = result("lambda");
    let r = &lambda["result"];
    assert_eq!(r["source"], "aws.events");
    assert_eq!(r["type"], "Scheduled Event");
    assert_eq!(r["detail"], json!({ "job": "sweep" }));
    assert_eq!(r["id"], lambda["id"]);
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
    let (tick_f, fetch) = result("fetch");
    assert_eq!(
        fetch["result"],
        json!({ "cron": EVERY_2S, "time": tick_f, "type": "scheduled" })
    );
    let (_, class) = result("class");
    assert_eq!(
        class["result"],
        json!({ "method": "Jobs.tick", "arg": { "job": "sweep" } })
    );
    let (_, ow) = result("openwhisk");
    assert_eq!(
        ow["result"],
        json!({ "params": { "job": "sweep" }, "action": "/default/openwhisk" })
    );
    assert!(tick > 0);

    // Down for about five seconds: two or three ticks pass unseen.
    p.kill();
    std::thread::sleep(Duration::from_secs(5));
    let p = Platform::start_in(data.path(), &[]);
    for ((name, ..), n) in STYLES.iter().zip(&before) {
        wait_for_ticks(&p, name, n + 3);
        let after = check_ticks(&p, name);
        let s = schedule(&p, name);
        assert!(s["missed"].as_u64().unwrap() >= 1, "{name}: {s}");
        // After the gap, one catch-up call, not one per missed tick.
        let gaps: Vec<i64> = after.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert_eq!(
            gaps.iter().filter(|g| **g > 2000).count() as u64,
            1.min(s["missed"].as_u64().unwrap()),
            "{name}: {gaps:?}"
        );
    }
    assert!(
        p.metric("thaw_schedule_fires_total{namespace=\"default\",function=\"lambda\"}") >= 3.0
    );
    assert!(
        p.metric("thaw_schedule_misses_total{namespace=\"default\",function=\"lambda\"}") >= 1.0
    );
    drop(dirs);
}

#[test]
fn schedules_through_the_cli_and_their_errors() {
    let p = Platform::start();
    let dir = function_dir(&[("index.mjs", "export const handler = async (e) => e;")]);
    p.deploy(dir.path(), "job");
    let out = p.thaw_ok(&[
        "schedule",
        "add",
        "job",
        "--name",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "America/New_York",
        "--payload",
        "{\"full\":true}",
    ]);
    assert!(out.contains("schedule nightly of job"), "{out}");
    let listed = p.thaw_ok(&["schedule", "ls", "job"]);
    assert!(
        listed.contains("nightly") && listed.contains("America/New_York"),
        "{listed}"
    );
    let s = schedule(&p, "job");
    // 02:30 in New York is 06:30 or 07:30 UTC, depending on the season.
    let next = s["next_ms"].as_i64().unwrap();
    let minute_of_day = next / 60_000 % 1440;
    assert!(minute_of_day == 390 || minute_of_day == 450, "{s}");

    for (args, needle) in [
        (vec!["--cron", "61 * * * *"], "out of range"),
        (vec!["--cron", "0 0 30 2 *"], "never"),
        (
            vec!["--cron", "* * * * *", "--timezone", "Mars/Olympus"],
            "time zone",
        ),
        (
            vec!["--cron", "* * * * *", "--payload", "{nope"],
            "not valid json",
        ),
    ] {
        let mut all = vec!["schedule", "add", "job", "--name", "bad"];
        all.extend(args);
        let out = p.thaw(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(needle), "{all:?}: {err}");
    }
    let dup = p.thaw(&[
        "schedule", "add", "job", "--name", "nightly", "--cron", "@daily",
    ]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already"));
    p.thaw_ok(&["schedule", "rm", "job", "nightly"]);
    assert!(p
        .thaw_ok(&["schedule", "ls", "job"])
        .contains("no schedules"));

    // A thaw.toml schedule is refused at deploy when it is wrong.
    let bad = function_dir(&[
        ("index.mjs", "export const handler = async (e) => e;"),
        ("thaw.toml", "[[schedule]]\ncron = \"* * * *\"\n"),
    ]);
    let out = p.thaw(&["deploy", bad.path().to_str().unwrap(), "--name", "job"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schedule-1") && err.contains("field"), "{err}");
}
