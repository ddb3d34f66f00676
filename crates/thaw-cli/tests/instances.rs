//! Instances: reused between calls, console captured per call, timeouts,
//! exceptions and crashes each with their own answer.

mod common;

use common::{function_dir, http, Platform};
use serde_json::Value;

// Each instance answers with an id of its own, made when it loads.
const PROBE: &str = r#"
const INSTANCE = crypto.randomUUID();
export const handler = async (event) => {
  const q = event.queryStringParameters ?? {};
  console.log(`call ${q.tag ?? "-"} in ${INSTANCE}`);
  if (q.mode === "hang") await new Promise(() => {});
  if (q.mode === "throw") throw new TypeError("bad thing " + q.tag);
  if (q.mode === "exit") process.exit(3);
  return { statusCode: 200, body: INSTANCE };
};
"#;

fn deploy_probe(p: &Platform, name: &str, toml: &str) -> tempfile::TempDir {
    let dir = function_dir(&[("index.mjs", PROBE), ("thaw.toml", toml)]);
    p.deploy(dir.path(), name);
    dir
}

fn call(p: &Platform, name: &str, query: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = http()
        .get(p.url(name, &format!("/?{query}")))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().unwrap(), headers)
}

#[test]
fn an_instance_serves_later_calls_and_each_call_gets_its_own_console_lines() {
    let p = Platform::start();
    let _d = deploy_probe(&p, "probe", "");
    let (s1, pid1, h1) = call(&p, "probe", "tag=one");
    let (s2, pid2, h2) = call(&p, "probe", "tag=two");
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(pid1, pid2, "the second call reuses the instance");
    assert_eq!(h2["x-thaw-start"], "warm");
    let id1: u64 = h1["x-thaw-invocation"].to_str().unwrap().parse().unwrap();
    let id2: u64 = h2["x-thaw-invocation"].to_str().unwrap().parse().unwrap();
    assert_ne!(id1, id2);
    let one = p.wait_for_log("probe", "call one");
    let two = p.wait_for_log("probe", "call two");
    assert_eq!(one["invocation"].as_u64(), Some(id1));
    assert_eq!(two["invocation"].as_u64(), Some(id2));
}

#[test]
fn a_call_past_the_timeout_gets_504_and_its_instance_is_killed() {
    let p = Platform::start();
    let _d = deploy_probe(&p, "slow", "timeout = 1\n");
    let (_, pid_before, _) = call(&p, "slow", "tag=warm");
    let (status, body, _) = call(&p, "slow", "mode=hang&tag=hung");
    assert_eq!(status, 504, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timeout of 1s"));
    let (status, pid_after, h) = call(&p, "slow", "tag=after");
    assert_eq!(status, 200);
    assert_ne!(pid_before, pid_after, "the hung instance was replaced");
    assert_eq!(h["x-thaw-start"], "cold");
}

#[test]
fn an_exception_gives_500_with_its_message_and_keeps_the_instance() {
    let p = Platform::start();
    let _d = deploy_probe(&p, "thrower", "");
    let (_, pid_before, _) = call(&p, "thrower", "tag=first");
    let (status, body, _) = call(&p, "thrower", "mode=throw&tag=x1");
    assert_eq!(status, 500);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "handler_error");
    assert_eq!(v["error"]["message"], "bad thing x1");
    assert_eq!(v["error"]["name"], "TypeError");
    let (status, pid_after, _) = call(&p, "thrower", "tag=again");
    assert_eq!(status, 200);
    assert_eq!(pid_before, pid_after);
    // The error's stack is in the function's log, like any console line.
    p.wait_for_log("thrower", "TypeError: bad thing x1");
}

#[test]
fn a_crash_gives_502_and_the_next_call_gets_a_fresh_instance() {
    let p = Platform::start();
    let _d = deploy_probe(&p, "crasher", "");
    let (_, pid_before, _) = call(&p, "crasher", "tag=first");
    let (status, body, _) = call(&p, "crasher", "mode=exit");
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "crashed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{v}"
    );
    let (status, pid_after, _) = call(&p, "crasher", "tag=after");
    assert_eq!(status, 200);
    assert_ne!(pid_before, pid_after);
}

#[test]
fn thaw_logs_follow_prints_new_lines_as_they_come() {
    use std::io::{BufRead, BufReader};
    let p = Platform::start();
    let _d = deploy_probe(&p, "chatty", "");
    let mut follower = p
        .cli()
        .args(["logs", "chatty", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    call(&p, "chatty", "tag=followed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line);
            if seen.last().unwrap().contains("call followed") {
                break;
            }
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        seen.iter().any(|l| l.contains("call followed")),
        "follower printed {seen:?}"
    );
}

#[test]
fn a_runtime_upgrade_drains_bound_instances_and_starts_new_ones_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("shim.mjs");
    std::fs::copy(common::repo_root().join("runtime/shim/shim.mjs"), &shim).unwrap();
    let p = Platform::start_with(&["--shim", shim.to_str().unwrap()]);
    common::upgrade_runtime_while_serving(&p, &shim, "process");
}
