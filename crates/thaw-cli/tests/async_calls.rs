//! Async invocations end to end, with a real `thaw up`, real Node and real
//! HTTP: accepted durably, retried, dead-lettered, replayed after a fix,
//! not lost to `kill -9`, and kept apart by namespace.

mod common;

use common::{function_dir, http, Platform};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Fails every attempt of a call whose `n` is a multiple of three.
const FLAKY: &str = r#"
export const handler = async (event) => {
  await new Promise((r) => setTimeout(r, 5));
  if (event.n % 3 === 0) throw new Error(`no luck with ${event.n}`);
  return { n: event.n };
};
"#;

const FIXED: &str = r#"
export const handler = async (event) => ({ n: event.n, fixed: true });
"#;

const SETTINGS: &str = "concurrency = 32\nmax_instances = 2\n";

fn enqueue(p: &Platform, path: &str, token: &str, event: &Value) -> reqwest::blocking::Response {
    http()
        .post(format!("{}{path}", p.server))
        .bearer_auth(token)
        .header("x-thaw-invoke", "async")
        .json(event)
        .send()
        .unwrap()
}

fn get(p: &Platform, path: &str) -> Value {
    let r = p.api(Method::GET, path).send().unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().unwrap()
}

/// Every call of `name` in the default namespace, by id.
fn all_calls(p: &Platform, name: &str) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let mut before = String::new();
    loop {
        let page = get(
            p,
            &format!("/v1/functions/{name}/invocations?limit=1000{before}"),
        );
        for c in page["calls"].as_array().unwrap() {
            out.insert(c["id"].as_str().unwrap().to_string(), c.clone());
        }
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return out,
        }
    }
}

fn count_state(calls: &HashMap<String, Value>, state: &str) -> usize {
    calls.values().filter(|c| c["state"] == state).count()
}

#[test]
fn a_thousand_async_calls_survive_a_kill_and_all_are_accounted_for() {
    let data = tempfile::tempdir().unwrap();
    let mut p = Platform::start_in(data.path(), &[]);
    let code = function_dir(&[("index.mjs", FLAKY), ("thaw.toml", SETTINGS)]);
    p.deploy(code.path(), "job");
    let token = p.token();

    // 1,000 calls from four clients at once; each is a 202 with an id.
    let ids: Vec<(u32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let (p, token) = (&p, &token);
                s.spawn(move || {
                    (0..250u32)
                        .map(|i| {
                            let n = t * 250 + i;
                            let r =
                                enqueue(p, "/v1/functions/job/invoke", token, &json!({ "n": n }));
                            assert_eq!(r.status(), 202, "call {n}");
                            let accepted: Value = r.json().unwrap();
                            assert_eq!(accepted["state"], "queued");
                            (n, accepted["id"].as_str().unwrap().to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 1000);

    // Kill thaw while calls are still running or waiting: the failing
    // third need two backoffs (1 s, then 2 s) before they are dead.
    p.eventually(60, "some calls succeeded", || {
        count_state(&all_calls(&p, "job"), "succeeded") >= 100
    });
    let before_kill = all_calls(&p, "job");
    let unfinished = before_kill
        .values()
        .filter(|c| c["state"] != "succeeded" && c["state"] != "dead")
        .count();
    assert!(unfinished > 0, "the kill comes with calls unfinished");
    p.kill();

    let p = Platform::start_in(data.path(), &[]);
    let start = Instant::now();
    let calls = loop {
        let calls = all_calls(&p, "job");
        let done = count_state(&calls, "succeeded") + count_state(&calls, "dead");
        if done == 1000 {
            break calls;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "only {done} of 1000 calls finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(calls.len(), 1000, "no call lost, none made up");
    for (n, id) in &ids {
        let c = &calls[id];
        if n % 3 == 0 {
            assert_eq!(c["state"], "dead", "call {n}: {c}");
            assert_eq!(c["attempts"], 3, "call {n}: {c}");
        } else {
            assert_eq!(c["state"], "succeeded", "call {n}: {c}");
            assert_eq!(c["result"], json!({ "n": n }), "call {n}");
        }
    }
    // A dead letter tells its story: three failed attempts with their
    // error and console lines (and any attempt the kill interrupted).
    let (n, id) = ids.iter().find(|(n, _)| n % 3 == 0).unwrap();
    let one = get(&p, &format!("/v1/invocations/{id}"));
    let failed: Vec<&Value> = one["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "handler_error")
        .collect();
    assert_eq!(failed.len(), 3, "{one}");
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains(&format!("no luck with {n}")));
    assert!(failed[0]["logs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains("no luck")));
    assert_eq!(one["payload"], json!({ "n": n }));
    // `thaw logs --invocation` takes the async call's id.
    let out = p.thaw(&["logs", "job", "--invocation", id]);
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains(&format!("no luck with {n}")), "{stdout}");
    assert!(
        stderr.contains("--- attempt") && stderr.contains("handler_error"),
        "{stderr}"
    );
    assert_eq!(p.metric("thaw_async_pending{namespace=\"default\"}"), 0.0);
    assert_eq!(
        p.metric("thaw_async_dead_letters{namespace=\"default\"}"),
        334.0
    );

    // The CLI lists the dead letters; after a fix, replaying empties them.
    let listed = p.thaw_ok(&["dlq", "ls", "job", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["calls"].as_array().unwrap().len(), 334);
    let fixed = function_dir(&[("index.mjs", FIXED), ("thaw.toml", SETTINGS)]);
    p.deploy(fixed.path(), "job");
    let out = p.thaw_ok(&["dlq", "replay", "job"]);
    assert!(
        out.contains("334 dead letters of job queued again"),
        "{out}"
    );
    p.eventually(60, "the replayed calls succeeded", || {
        count_state(&all_calls(&p, "job"), "succeeded") == 1000
    });
    let replayed = get(&p, &format!("/v1/invocations/{id}"));
    assert_eq!(replayed["result"], json!({ "n": n, "fixed": true }));
    let empty = p.thaw_ok(&["dlq", "ls", "job"]);
    assert!(empty.contains("job has no dead async calls"), "{empty}");
}

#[test]
fn http_calls_run_later_and_a_destination_hears_how_they_ended() {
    let p = Platform::start();
    let audit = function_dir(&[(
        "index.mjs",
        "export const handler = async (event) => { console.log('heard', event.requestContext.condition, event.requestContext.requestId); return {}; };",
    )]);
    p.deploy(audit.path(), "audit");
    let web = function_dir(&[
        (
            "index.mjs",
            r#"export const handler = async (event) => {
                 if (event.rawPath === "/fail") return { statusCode: 503, body: "down" };
                 return { statusCode: 201, body: JSON.stringify({ got: event.body, path: event.rawPath }) };
               };"#,
        ),
        ("thaw.toml", "retries = 1\ndestination = \"audit\"\n"),
    ]);
    p.deploy(web.path(), "web");

    // Prefer: respond-async on the public route: 202 with where to look.
    let r = http()
        .post(p.url("web", "/orders"))
        .header("prefer", "respond-async, wait=10")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["preference-applied"], "respond-async");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let accepted: Value = r.json().unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    assert!(location.ends_with(&format!("/v1/namespaces/default/invocations/{id}")));
    let path = location
        .split_once("/v1/")
        .map(|(_, rest)| format!("/v1/{rest}"))
        .unwrap();
    p.eventually(30, "the HTTP call ran", || {
        get(&p, &path)["state"] == "succeeded"
    });
    let done = get(&p, &path);
    assert_eq!(done["kind"], "request");
    assert_eq!(done["origin"], "http");
    assert_eq!(done["result"]["status"], 201);
    assert_eq!(
        done["result"]["body"],
        json!({ "got": "hello", "path": "/orders" })
    );

    // A 5xx answer is a failure: retried once (retries = 1), then dead.
    let r = http()
        .post(p.url("web", "/fail"))
        .header("x-thaw-invoke", "async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let failing: Value = r.json().unwrap();
    let failing = failing["id"].as_str().unwrap().to_string();
    p.eventually(30, "the failing call is dead", || {
        get(&p, &format!("/v1/invocations/{failing}"))["state"] == "dead"
    });
    let dead = get(&p, &format!("/v1/invocations/{failing}"));
    assert_eq!(dead["attempts"], 2);
    assert!(dead["error"].as_str().unwrap().contains("status 503"));

    // The destination heard both ends, as async calls of its own.
    p.wait_for_log("audit", &format!("heard Success {id}"));
    p.wait_for_log("audit", &format!("heard RetriesExhausted {failing}"));
    let heard = get(&p, "/v1/functions/audit/invocations");
    assert!(heard["calls"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["origin"] == "destination"));

    // Unknown functions and aliases are refused at once, not accepted.
    let r = http()
        .post(p.url("nope", "/"))
        .header("x-thaw-invoke", "async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = enqueue(
        &p,
        "/v1/functions/web@canary/invoke",
        &p.token(),
        &json!({}),
    );
    assert_eq!(r.status(), 404);
}

#[test]
fn a_tenant_cannot_see_or_replay_another_tenants_calls_and_its_queue_is_bounded() {
    let p = Platform::start();
    let admin = p.token();
    for ns in ["team-a", "team-b"] {
        p.thaw_ok(&["ns", "create", ns]);
    }
    p.thaw_ok(&["ns", "set", "team-a", "--max-queued", "3"]);
    let key = |ns: &str, role: &str| p.new_key(ns, &format!("{ns}-{role}"), role);
    let (a_deploy, a_invoke, b_deploy) = (
        key("team-a", "deploy"),
        key("team-a", "invoke"),
        key("team-b", "deploy"),
    );
    let slow = function_dir(&[(
        "index.mjs",
        "export const handler = async () => { await new Promise((r) => setTimeout(r, 3000)); throw new Error('slow and wrong'); };",
    ), ("thaw.toml", "retries = 0\n")]);
    let deploy = |ns: &str| {
        let out = p
            .cli()
            .args([
                "deploy",
                slow.path().to_str().unwrap(),
                "--name",
                "job",
                "--namespace",
                ns,
            ])
            .env("THAW_TOKEN", &admin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    deploy("team-a");
    deploy("team-b");

    // An invoke key may accept calls and read them back.
    let r = enqueue(&p, "/v1/functions/job/invoke", &a_invoke, &json!({}));
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |token: &str, path: &str| {
        http()
            .get(format!("{}{path}", p.server))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    assert_eq!(
        read(&a_invoke, &format!("/v1/invocations/{id}")).status(),
        200
    );
    // team-b sees nothing of it, by its own routes or team-a's.
    assert_eq!(
        read(&b_deploy, &format!("/v1/invocations/{id}")).status(),
        404
    );
    assert_eq!(
        read(
            &b_deploy,
            &format!("/v1/namespaces/team-a/invocations/{id}")
        )
        .status(),
        403
    );
    assert_eq!(
        read(&b_deploy, "/v1/namespaces/team-a/functions/job/invocations").status(),
        403
    );
    let listed: Value = read(&b_deploy, "/v1/functions/job/invocations")
        .json()
        .unwrap();
    assert!(listed["calls"].as_array().unwrap().is_empty());

    // The queue bound: three unfinished calls, the fourth is a clear 429.
    for _ in 0..2 {
        assert_eq!(
            enqueue(&p, "/v1/functions/job/invoke", &a_deploy, &json!({})).status(),
            202
        );
    }
    let r = enqueue(&p, "/v1/functions/job/invoke", &a_deploy, &json!({}));
    assert_eq!(r.status(), 429);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_queued"));
    // team-b is not held back by team-a's full queue.
    assert_eq!(
        enqueue(&p, "/v1/functions/job/invoke", &b_deploy, &json!({})).status(),
        202
    );

    // Once dead, only team-a's deploy key may replay or purge them.
    p.eventually(60, "team-a's calls are dead", || {
        let v: Value = read(&a_deploy, "/v1/functions/job/invocations?state=dead")
            .json()
            .unwrap();
        v["calls"].as_array().unwrap().len() == 3
    });
    let post = |token: &str, path: &str, body: &Value| {
        http()
            .post(format!("{}{path}", p.server))
            .bearer_auth(token)
            .json(body)
            .send()
            .unwrap()
    };
    let one = json!({ "ids": [id] });
    assert_eq!(
        post(
            &b_deploy,
            "/v1/namespaces/team-a/functions/job/dlq/replay",
            &one
        )
        .status(),
        403
    );
    // By its own function's route, team-b names a call it does not have.
    assert_eq!(
        post(&b_deploy, "/v1/functions/job/dlq/purge", &one).status(),
        404
    );
    assert_eq!(
        post(&a_invoke, "/v1/functions/job/dlq/purge", &one).status(),
        403
    );
    let purged: Value = post(&a_deploy, "/v1/functions/job/dlq/purge", &one)
        .json()
        .unwrap();
    assert_eq!(purged["count"], 1);
    assert_eq!(
        read(&a_deploy, &format!("/v1/invocations/{id}")).status(),
        404
    );
}
