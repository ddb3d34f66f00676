//! The pool of pre-started runtimes, keep-alive and scale to zero, the
//! per-function limits and their queue, and the metrics that show them.
//! Behaviour only: nothing here asserts how fast anything is.

mod common;

use common::{function_dir, http, Platform};
use reqwest::Method;
use serde_json::Value;

// Each instance answers with an id of its own, made when it loads: inside
// a jail every instance is PID 2 of its own namespace.
const PID: &str = r#"
const INSTANCE = crypto.randomUUID();
export const handler = async (event) => {
  const ms = Number(event.queryStringParameters?.sleep ?? 0);
  if (ms) await new Promise((r) => setTimeout(r, ms));
  return { statusCode: 200, body: INSTANCE };
};
"#;

fn deploy_pid(p: &Platform, name: &str, toml: &str) -> tempfile::TempDir {
    let dir = function_dir(&[("index.mjs", PID), ("thaw.toml", toml)]);
    p.deploy(dir.path(), name);
    dir
}

fn call(p: &Platform, name: &str, query: &str) -> (u16, String, String) {
    let r = http()
        .get(p.url(name, &format!("/?{query}")))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let start = r
        .headers()
        .get("x-thaw-start")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.text().unwrap(), start)
}

fn instances(p: &Platform, name: &str) -> Value {
    let v: Value = p
        .api(Method::GET, &format!("/v1/functions/{name}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["instances"].clone()
}

#[test]
fn the_pool_fills_serves_cold_starts_and_refills() {
    let p = Platform::start_with(&["--pool-min", "3"]);
    p.eventually(20, "the pool holds 3 runtimes", || {
        p.metric("thaw_pool_runtimes{state=\"idle\"}") >= 3.0
    });
    let hits = p.metric("thaw_pool_takes_total{result=\"hit\"}");
    // Deploying loads the code in a runtime taken from the pool.
    let _d = deploy_pid(&p, "pooled", "keep_alive = 0\n");
    assert!(p.metric("thaw_pool_takes_total{result=\"hit\"}") > hits);
    // With keep_alive = 0 that instance goes; the next call is cold and
    // again takes a pre-started runtime.
    p.eventually(10, "the deploy's instance is reclaimed", || {
        instances(&p, "pooled")["idle"] == 0
    });
    let before = p.metric("thaw_pool_takes_total{result=\"hit\"}");
    let (status, _, start) = call(&p, "pooled", "");
    assert_eq!((status, start.as_str()), (200, "cold"));
    assert_eq!(
        p.metric("thaw_pool_takes_total{result=\"hit\"}"),
        before + 1.0
    );
    p.eventually(20, "the pool is refilled", || {
        p.metric("thaw_pool_runtimes{state=\"idle\"}") >= 3.0
    });
    assert!(
        p.metric("thaw_runtime_pss_bytes") > 0.0,
        "runtime memory is measured"
    );
}

#[test]
fn a_bound_runtime_never_serves_another_function() {
    let p = Platform::start();
    let _a = deploy_pid(&p, "fn-a", "keep_alive = 1\n");
    let _b = deploy_pid(&p, "fn-b", "keep_alive = 1\n");
    let mut pids_a = std::collections::HashSet::new();
    let mut pids_b = std::collections::HashSet::new();
    for _ in 0..5 {
        pids_a.insert(call(&p, "fn-a", "").1);
        pids_b.insert(call(&p, "fn-b", "").1);
    }
    assert!(pids_a.is_disjoint(&pids_b), "{pids_a:?} vs {pids_b:?}");
    // When fn-a's instances expire they are killed, not handed back to the
    // pool for fn-b.
    p.eventually(10, "fn-a scales to zero", || {
        instances(&p, "fn-a")["idle"] == 0 && instances(&p, "fn-a")["busy"] == 0
    });
    for _ in 0..3 {
        let pid = call(&p, "fn-b", "").1;
        assert!(!pids_a.contains(&pid));
    }
}

#[test]
fn idle_instances_expire_after_keep_alive_and_come_back_cold() {
    let p = Platform::start();
    let _d = deploy_pid(&p, "napper", "keep_alive = 1\n");
    let (_, pid1, _) = call(&p, "napper", "");
    let (_, pid2, start) = call(&p, "napper", "");
    assert_eq!((pid1.as_str(), start.as_str()), (pid2.as_str(), "warm"));
    p.eventually(10, "scaled to zero", || {
        let i = instances(&p, "napper");
        i["idle"] == 0 && i["busy"] == 0
    });
    let (status, pid3, start) = call(&p, "napper", "");
    assert_eq!((status, start.as_str()), (200, "cold"));
    assert_ne!(pid3, pid1);
}

#[test]
fn calls_beyond_max_instances_queue_and_past_the_queue_get_429() {
    let p = Platform::start_with(&["--queue-limit", "2"]);
    let _d = deploy_pid(
        &p,
        "narrow",
        "max_instances = 1\nconcurrency = 1\ntimeout = 20\n",
    );
    let url = p.url("narrow", "/?sleep=1500");
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                // Stagger slightly so the first call holds the instance.
                std::thread::sleep(std::time::Duration::from_millis(if i == 0 {
                    0
                } else {
                    300
                }));
                let r = http().get(&url).send().unwrap();
                (r.status().as_u16(), r.text().unwrap())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    let rejected: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok.len(), 3, "{results:?}");
    assert_eq!(rejected.len(), 2, "{results:?}");
    let v: Value = serde_json::from_str(&rejected[0].1).unwrap();
    assert_eq!(v["error"]["code"], "too_many_requests");
    // One instance served every call that got through.
    let pids: std::collections::HashSet<_> = ok.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(pids.len(), 1);
}

#[test]
fn a_queued_call_that_waits_too_long_gets_503() {
    let p = Platform::start_with(&["--queue-timeout-ms", "300"]);
    let _d = deploy_pid(&p, "busy", "max_instances = 1\ntimeout = 20\n");
    let url = p.url("busy", "/?sleep=2000");
    let first = std::thread::spawn(move || http().get(&url).send().unwrap().status().as_u16());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, body, _) = call(&p, "busy", "");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "queue_timeout");
    assert_eq!(first.join().unwrap(), 200);
}

#[test]
fn an_instance_serves_up_to_its_concurrency_at_once() {
    let p = Platform::start_with(&["--queue-limit", "0"]);
    let _d = deploy_pid(
        &p,
        "wide",
        "max_instances = 1\nconcurrency = 4\ntimeout = 20\n",
    );
    let url = p.url("wide", "/?sleep=700");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = http().get(&url).send().unwrap();
                (r.status().as_u16(), r.text().unwrap())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // With no queue at all, four calls at once succeed only if one
    // instance took all four.
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let pids: std::collections::HashSet<_> = results.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(pids.len(), 1);
}

#[test]
fn metrics_count_calls_by_outcome_and_start() {
    let p = Platform::start();
    let d = function_dir(&[(
        "index.mjs",
        "export const handler = async (e) => { if (e.rawPath === '/boom') throw new Error('x'); return 'ok'; };",
    )]);
    p.deploy(d.path(), "counted");
    let anon = http().get(format!("{}/metrics", p.server)).send().unwrap();
    assert_eq!(anon.status(), 401, "metrics need the token");
    let ok = "thaw_invocations_total{namespace=\"default\",function=\"counted\",outcome=\"ok\"}";
    let err = "thaw_invocations_total{namespace=\"default\",function=\"counted\",outcome=\"handler_error\"}";
    let warm = "thaw_starts_total{namespace=\"default\",function=\"counted\",start=\"warm\"}";
    let count =
        "thaw_invocation_duration_seconds_count{namespace=\"default\",function=\"counted\"}";
    assert_eq!(p.metric(ok), 0.0);
    for _ in 0..3 {
        assert_eq!(call(&p, "counted", "").0, 200);
    }
    assert_eq!(
        http()
            .get(p.url("counted", "/boom"))
            .send()
            .unwrap()
            .status(),
        500
    );
    assert_eq!(p.metric(ok), 3.0);
    assert_eq!(p.metric(err), 1.0);
    assert_eq!(p.metric(warm), 4.0, "the deploy left a warm instance");
    assert_eq!(p.metric(count), 4.0);
    assert_eq!(
        p.metric("thaw_instances{namespace=\"default\",function=\"counted\",state=\"idle\"}"),
        1.0
    );
}

#[test]
fn idle_instances_are_paused_and_resume_on_their_next_call() {
    let p = Platform::start_with(&["--pause-idle-after-ms", "200"]);
    let _d = deploy_pid(&p, "sleepy", "");
    let (_, pid, _) = call(&p, "sleepy", "");
    p.eventually(10, "the idle instance is paused", || {
        instances(&p, "sleepy")["paused"] == 1
    });
    let (status, pid_again, start) = call(&p, "sleepy", "");
    assert_eq!((status, start.as_str()), (200, "warm"));
    assert_eq!(pid_again, pid);
    assert_eq!(instances(&p, "sleepy")["paused"], 0);
}

#[test]
fn the_host_budget_bounds_all_instances_together() {
    let p = Platform::start_with(&["--host-memory-mb", "300"]);
    let slow = |ms: u32| {
        function_dir(&[
            (
                "index.mjs",
                &format!(
                    "export const handler = async () => {{ await new Promise(r => setTimeout(r, {ms})); \
                     return {{ statusCode: 200, body: 'done' }}; }};"
                ),
            ),
            ("thaw.toml", "memory = 256\n"),
        ])
    };
    let first = slow(1500);
    let second = slow(0);
    p.deploy(first.path(), "first");
    // Its deploy needs room for one instance: the first one's idle
    // instance makes it, across namespaces if need be.
    p.deploy(second.path(), "second");
    assert_eq!(
        p.metric("thaw_instances{namespace=\"default\",function=\"first\",state=\"idle\"}"),
        0.0
    );
    let busy = {
        let url = p.url("first", "/");
        std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
    };
    p.eventually(30, "the first function's call is running", || {
        p.metric("thaw_instances{namespace=\"default\",function=\"first\",state=\"busy\"}") == 1.0
    });
    let r = http().get(p.url("second", "/")).send().unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "host_budget", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--host-memory-mb = 300"),
        "{v}"
    );
    assert_eq!(busy.join().unwrap(), 200);
    // Once the first is idle again, the second's call makes room.
    assert_eq!(
        http().get(p.url("second", "/")).send().unwrap().status(),
        200
    );

    let greedy = function_dir(&[
        ("index.mjs", "export const handler = async () => 'x';"),
        ("thaw.toml", "memory = 512\n"),
    ]);
    let out = p.thaw(&[
        "deploy",
        greedy.path().to_str().unwrap(),
        "--name",
        "greedy",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr_of(&out).contains("more than this host's budget"),
        "{}",
        common::stderr_of(&out)
    );
}

/// The instance ids `name` answers with over `n` calls at once.
fn ids_at_once(p: &Platform, name: &str, n: usize) -> std::collections::BTreeSet<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| call(p, name, "sleep=300")))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, id, start) = h.join().unwrap();
                assert_eq!(status, 200);
                assert_eq!(start, "warm", "a provisioned instance answered");
                id
            })
            .collect()
    })
}

#[test]
fn provisioned_instances_outlive_keep_alive_crashes_and_runtime_upgrades() {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = shim_dir.path().join("shim.mjs");
    std::fs::copy(common::repo_root().join("runtime/shim/shim.mjs"), &shim).unwrap();
    let p = Platform::start_with(&[
        "--shim",
        shim.to_str().unwrap(),
        "--pause-idle-after-ms",
        "200",
    ]);
    let code = PID.replace(
        "export const handler = async (event) => {",
        "export const handler = async (event) => {\n  if (event.queryStringParameters?.exit) process.exit(1);",
    );
    let dir = function_dir(&[
        ("index.mjs", &code),
        (
            "thaw.toml",
            "min_instances = 2\nmax_instances = 4\nkeep_alive = 1\n",
        ),
    ]);
    p.deploy(dir.path(), "kept");
    p.eventually(20, "two instances are up", || {
        instances(&p, "kept")["idle"] == 2
    });
    // Past keep_alive and the pause delay: still two, not paused, warm.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(instances(&p, "kept")["idle"], 2);
    assert_eq!(instances(&p, "kept")["paused"], 0);
    let first = ids_at_once(&p, "kept", 2);
    assert_eq!(first.len(), 2, "two instances served at once: {first:?}");

    // One crashes (its process exits): the provisioner makes another.
    let (status, ..) = call(&p, "kept", "exit=1");
    assert_eq!(status, 502);
    p.eventually(20, "a replacement is up", || {
        let i = instances(&p, "kept");
        i["idle"] == 2 && i["busy"] == 0
    });
    let after_crash = ids_at_once(&p, "kept", 2);
    assert_eq!(after_crash.len(), 2);
    assert_ne!(after_crash, first, "one of them is new");

    // A runtime upgrade: two instances of the new runtime replace them.
    let mut source = std::fs::read_to_string(&shim).unwrap();
    source.push_str("\nglobalThis.THAW_TEST_RUNTIME = \"v2\";\n");
    std::fs::write(&shim, source).unwrap();
    p.thaw_ok(&["runtime", "upgrade"]);
    p.eventually(30, "both are renewed", || {
        let i = instances(&p, "kept");
        i["idle"] == 2 && ids_at_once(&p, "kept", 2).is_disjoint(&after_crash)
    });
}

#[test]
fn readyz_waits_for_provisioned_instances() {
    let data = tempfile::tempdir().unwrap();
    {
        let p = Platform::start_in(data.path(), &[]);
        let _d = deploy_pid(&p, "kept", "min_instances = 2\nmemory = 128\n");
        p.eventually(20, "ready", || {
            http()
                .get(format!("{}/readyz", p.server))
                .send()
                .unwrap()
                .status()
                == 200
        });
    }
    // Restarted with room for one instance of it only: never ready, and
    // /readyz says why; /healthz answers all the same.
    let p = Platform::launch(data.path(), &[], &["--host-memory-mb", "200"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = http().get(format!("{}/readyz", p.server)).send().unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["ready"], false);
    assert!(v["waiting"].to_string().contains("min_instances"), "{v}");
    assert_eq!(
        http()
            .get(format!("{}/healthz", p.server))
            .send()
            .unwrap()
            .status(),
        200
    );
}
