//! Several `thaw up` workers sharing one real PostgreSQL registry: what is
//! deployed, moved, revoked or removed through one is served accordingly
//! by the others, code included, without a restart.

mod common;

use common::{function_dir, http, until, Platform, TEST_SECRETS_KEY};
use reqwest::Method;
use std::path::Path;
use std::time::Duration;

/// A worker on `data_dir` whose registry is the database at `url`.
fn worker(data_dir: &Path, url: &str) -> Platform {
    Platform::start_in(
        data_dir,
        &[
            ("THAW_DATABASE_URL", url),
            ("THAW_SECRETS_KEY", TEST_SECRETS_KEY),
        ],
    )
}

fn body(url: &str) -> (u16, String) {
    let r = http().get(url).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn answering(text: &str) -> tempfile::TempDir {
    function_dir(&[(
        "index.mjs",
        &format!("export const handler = async () => ({{ statusCode: 200, body: {text:?} }});"),
    )])
}

#[test]
fn a_change_through_one_worker_is_served_by_the_others() {
    let url = thaw_testpg::shared().new_database_url();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(da.path(), &url);
    let b = worker(db.path(), &url);
    assert_eq!(a.token(), b.token(), "the workers share one admin token");

    // Each lists both workers, and says which one it is.
    let platform = |p: &Platform| -> serde_json::Value {
        p.api(Method::GET, "/v1/platform")
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    until(5, "each worker sees the other", || {
        [&a, &b].iter().all(|p| platform(p)["hosts"] == 2)
    });
    let (va, vb) = (platform(&a), platform(&b));
    assert_ne!(va["worker"], vb["worker"]);
    let ids = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&va), ids(&vb));
    assert!(ids(&va).contains(va["worker"].as_str().unwrap()), "{va}");
    let me = va["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == va["worker"])
        .unwrap();
    assert_eq!(me["address"].as_str().unwrap(), a.server, "{me}");

    // Deployed through A, with TypeScript B has never built: B fetches the
    // archive from the database and builds it.
    let ts = function_dir(&[(
        "index.ts",
        "export const handler = async (): Promise<{ statusCode: number; body: string }> => \
         ({ statusCode: 200, body: 'v1 in typescript' });",
    )]);
    a.deploy(ts.path(), "api");
    let took = until(10, "B serves what A deployed", || {
        body(&b.url("api", "/")) == (200, "v1 in typescript".into())
    });
    eprintln!("a deploy through A reached B in {took:?}");

    // A new version and a rollback through A: B follows each.
    a.deploy(answering("v2").path(), "api");
    let took = until(10, "B serves v2", || {
        body(&b.url("api", "/")) == (200, "v2".into())
    });
    eprintln!("a new version through A reached B in {took:?}");
    a.thaw_ok(&["rollback", "api"]);
    let took = until(10, "B serves v1 again", || {
        body(&b.url("api", "/")) == (200, "v1 in typescript".into())
    });
    eprintln!("a rollback through A reached B in {took:?}");

    // A namespace and a key made through B work through A; revoked
    // through A, the key fails through B.
    b.thaw_ok(&["ns", "create", "team"]);
    let key = b.new_key("team", "ci", "deploy");
    let listed = |p: &Platform, key: &str| {
        http()
            .get(format!("{}/v1/functions?namespace=team", p.server))
            .bearer_auth(key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(listed(&a, &key), 200);
    let keys: serde_json::Value = a
        .api(Method::GET, "/v1/keys?namespace=team")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = keys["keys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.api(Method::DELETE, &format!("/v1/keys/{id}"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let took = until(5, "the revoked key fails on B", || listed(&b, &key) == 401);
    eprintln!("a revocation through A reached B in {took:?}");

    // Removed through B: gone from A.
    b.thaw_ok(&["rm", "api"]);
    let took = until(10, "A forgets the removed function", || {
        body(&a.url("api", "/")).0 == 404
    });
    eprintln!("a removal through B reached A in {took:?}");

    // A third worker started now serves what is deployed.
    a.deploy(answering("late").path(), "late");
    let dc = tempfile::tempdir().unwrap();
    let c = worker(dc.path(), &url);
    assert_eq!(body(&c.url("late", "/")), (200, "late".into()));
}

#[test]
fn a_worker_with_another_secrets_key_is_refused() {
    let url = thaw_testpg::shared().new_database_url();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _a = worker(da.path(), &url);
    let out = std::process::Command::new(common::THAW)
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("THAW_DATA_DIR", db.path())
        .env("THAW_DATABASE_URL", &url)
        .env("THAW_SECRETS_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = common::stderr_of(&out);
    assert!(err.contains("secrets key"), "{err}");
    // And without any key, it says what it needs.
    let out = std::process::Command::new(common::THAW)
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("THAW_DATA_DIR", db.path())
        .env("THAW_DATABASE_URL", &url)
        .env_remove("THAW_SECRETS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr_of(&out).contains("THAW_SECRETS_KEY"),
        "{}",
        common::stderr_of(&out)
    );
}

/// `(status, worker that served, cold or warm)` of one call.
fn call_through(p: &Platform, name: &str) -> (u16, String, String) {
    let r = http().get(p.url(name, "/")).send().unwrap();
    let header = |h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (worker, start) = (header("x-thaw-worker"), header("x-thaw-start"));
    (r.status().as_u16(), worker, start)
}

#[test]
fn calls_find_their_functions_home_and_a_killed_worker_is_routed_around() {
    let url = thaw_testpg::shared().new_database_url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Platform> = dirs.iter().map(|d| worker(d.path(), &url)).collect();
    const FUNCTIONS: usize = 24;
    const ROUNDS: usize = 8;
    let code = answering("hi");
    for i in 0..FUNCTIONS {
        workers[0].deploy(code.path(), &format!("f{i}"));
    }
    for w in &workers {
        for i in 0..FUNCTIONS {
            until(10, "every worker knows every function", || {
                call_through(w, &format!("f{i}")).0 == 200
            });
        }
    }
    // Calls spread over the workers land on each function's home.
    let (mut calls, mut warm) = (0, 0);
    let mut homes = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        for i in 0..FUNCTIONS {
            let via = &workers[(i + round) % 3];
            let (status, served_by, start) = call_through(via, &format!("f{i}"));
            assert_eq!(status, 200);
            calls += 1;
            warm += usize::from(start == "warm");
            let home = homes.entry(i).or_insert_with(|| served_by.clone());
            assert_eq!(*home, served_by, "f{i} served away from its home");
        }
    }
    let ratio = warm as f64 / calls as f64;
    eprintln!("warm hit ratio over {calls} calls through three workers: {ratio:.4}");
    let distinct: std::collections::BTreeSet<_> = homes.values().collect();
    assert_eq!(distinct.len(), 3, "homes spread over the three workers");
    assert!(ratio > 0.95, "{ratio}");

    // kill -9 of one worker: every later call still succeeds through the
    // others, the dead one's functions served by their next choice.
    workers[2].kill();
    let live = &workers[..2];
    for round in 0..3 {
        for i in 0..FUNCTIONS {
            let (status, _, _) = call_through(&live[(i + round) % 2], &format!("f{i}"));
            assert_eq!(status, 200, "f{i} through a live worker after a kill");
        }
    }
    // Once its lease lapsed, each function has one home again.
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..FUNCTIONS {
        let served: std::collections::BTreeSet<String> = (0..4)
            .map(|round| call_through(&live[round % 2], &format!("f{i}")).1)
            .collect();
        assert_eq!(served.len(), 1, "f{i} served by {served:?}");
    }
}
