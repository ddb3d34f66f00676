//! Several `thaw up` workers sharing one real PostgreSQL registry: what is
//! deployed, moved, revoked or removed through one is served accordingly
//! by the others, code included, without a restart.

mod common;

use common::{function_dir, http, Platform, TEST_SECRETS_KEY};
use reqwest::Method;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// How long until `check` holds (polled), failing past `secs`.
fn until(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
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
