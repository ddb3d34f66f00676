//! The dashboard in a real browser: a real `thaw up`, real Node, namespaces,
//! keys and functions made with the CLI, and Debian's chromium driven by
//! `tests/dashboard/browse.mjs` (playwright-core, installed by `cargo
//! xtask setup`). The script checks what each key sees and may do; this
//! test prepares, runs it and reads its summary. Screenshots of the main
//! pages go to `target/dashboard-screenshots/`.

mod common;

use common::{function_dir, http, repo_root, Platform, THAW};
use reqwest::header;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Markup a function logs and answers with: shown as text, it runs
/// nothing; parsed as HTML, it would fetch `/ui/x` and `/pwned`.
const XSS: &str = r#"<img src=x onerror="window.thawPwned=1;fetch('/pwned')">"#;

const CHROMIUM: &str = "/usr/bin/chromium";

/// `hello` at `version`: greets the event's `who` and logs the markup.
fn hello(version: u32) -> tempfile::TempDir {
    let markup = serde_json::to_string(XSS).unwrap();
    function_dir(&[(
        "index.mjs",
        &format!(
            "const MARKUP = {markup};
export const handler = async (event) => {{
  console.log(`greeting ${{event?.who ?? 'nobody'}}`);
  console.log(MARKUP);
  return {{ statusCode: 200, headers: {{ 'content-type': 'text/html' }}, body: `v{version} ${{MARKUP}}` }};
}};"
        ),
    )])
}

fn thaw_as(p: &Platform, key: &str, args: &[&str]) -> String {
    let out = p.cli().env("THAW_TOKEN", key).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "thaw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `target/dashboard-screenshots`, beside this test's own binary.
fn screenshots_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/dashboard-HASH
    let target = exe.ancestors().nth(3).unwrap();
    target.join("dashboard-screenshots")
}

fn dead_letters(p: &Platform, key: &str, name: &str) -> usize {
    let v: Value = http()
        .get(format!(
            "{}/v1/namespaces/team-a/functions/{name}/invocations?state=dead",
            p.server
        ))
        .bearer_auth(key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["calls"].as_array().map_or(0, Vec::len)
}

#[test]
fn the_dashboard_shows_each_key_what_it_may_see_and_runs_nothing_it_shows() {
    let scripts = repo_root().join("crates/thaw-cli/tests/dashboard");
    assert!(
        scripts.join("node_modules/playwright-core").is_dir() && Path::new(CHROMIUM).exists(),
        "the browser test needs playwright-core in {} and {CHROMIUM}: run `cargo xtask setup`",
        scripts.display()
    );
    let p = Platform::start();

    // The page and its scripts come from thaw itself, under a strict policy.
    let page = http().get(format!("{}/ui/", p.server)).send().unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(
        h[header::CONTENT_SECURITY_POLICY],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    let script = http()
        .get(format!("{}/ui/app.js", p.server))
        .send()
        .unwrap();
    assert!(script.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));

    // Two tenants; team-a has a deploy key and a read key.
    p.thaw_ok(&["ns", "create", "team-a"]);
    p.thaw_ok(&["ns", "create", "team-b"]);
    let deploy = p.new_key("team-a", "ci", "deploy");
    let read = p.new_key("team-a", "viewer", "read");
    let invoke = p.new_key("team-a", "caller", "invoke");
    let other = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'b' });",
    )]);
    p.thaw_ok(&[
        "deploy",
        other.path().to_str().unwrap(),
        "--name",
        "other",
        "--namespace",
        "team-b",
    ]);
    for version in [1, 2] {
        let code = hello(version);
        thaw_as(
            &p,
            &deploy,
            &["deploy", code.path().to_str().unwrap(), "--name", "hello"],
        );
    }
    // Calls for the charts to show.
    for _ in 0..5 {
        let r = http()
            .get(format!("{}/ns/team-a/fn/hello", p.server))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A dead letter to replay: an async call of a function that always throws.
    let failing = function_dir(&[
        (
            "index.mjs",
            "export const handler = async () => { throw new Error('always'); };",
        ),
        ("thaw.toml", "retries = 0\n"),
    ]);
    let failing = failing.path().to_str().unwrap();
    thaw_as(&p, &deploy, &["deploy", failing, "--name", "failing"]);
    thaw_as(&p, &deploy, &["invoke", "failing", "--async", "-d", "{}"]);
    p.eventually(60, "a dead letter", || {
        dead_letters(&p, &deploy, "failing") == 1
    });
    // The charts' figures, for a key of the namespace only.
    let stats = |key: &str, ns: &str, name: &str| {
        http()
            .get(format!(
                "{}/v1/namespaces/{ns}/functions/{name}/stats",
                p.server
            ))
            .bearer_auth(key)
            .send()
            .unwrap()
    };
    let hour: Value = stats(&read, "team-a", "hello").json().unwrap();
    let minutes = hour["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60, "{hour}");
    let calls: u64 = minutes.iter().map(|m| m["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, 5, "{hour}");
    assert!(minutes[59]["p99_ms"].as_f64().unwrap() > 0.0, "{hour}");
    assert_eq!(stats(&read, "team-b", "other").status(), 403);
    assert_eq!(stats(&read, "team-a", "nothing").status(), 404);
    // The host, for the admin only.
    let host = |key: &str| {
        http()
            .get(format!("{}/v1/platform", p.server))
            .bearer_auth(key)
            .send()
            .unwrap()
    };
    assert_eq!(host(&deploy).status(), 403);
    let host: Value = host(&p.token()).json().unwrap();
    assert_eq!(host["hosts"], 1, "{host}");
    assert_eq!(host["namespaces"], 3, "{host}");

    let fresh = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'fresh' });",
    )]);

    let shots = screenshots_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg(scripts.join("browse.mjs"))
        .current_dir(&scripts)
        .env("THAW_SERVER", &p.server)
        .env("THAW_BIN", THAW)
        .env("DEPLOY_KEY", &deploy)
        .env("READ_KEY", &read)
        .env("INVOKE_KEY", &invoke)
        .env("ADMIN_TOKEN", p.token())
        .env("FRESH_DIR", fresh.path())
        .env("XSS", XSS)
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser's checks failed (screenshots in {}):\n{stderr}\n{stdout}",
        shots.display()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    let mut listed: Vec<&str> = seen["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    listed.sort();
    assert_eq!(listed, ["failing", "fresh", "hello"], "{seen}");
    assert_eq!(seen["read_key_refused"]["rollback"], 403, "{seen}");
    for name in ["sign-in", "functions", "function", "read-key", "platform"] {
        let png = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 1000),
            "{}",
            png.display()
        );
    }

    // What the browser did went through the API: latest was rolled back,
    // a secret set by name, the dead letter replayed.
    let fresh_body = http()
        .get(format!("{}/ns/team-a/fn/fresh", p.server))
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(fresh_body, "fresh");
    let body = http()
        .get(format!("{}/ns/team-a/fn/hello", p.server))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(body.starts_with("v1 "), "{body}");
    let secrets = thaw_as(&p, &read, &["secret", "ls", "hello"]);
    assert!(secrets.contains("API_TOKEN"), "{secrets}");
}

#[test]
fn the_platform_view_carries_the_last_bench_report_for_the_admin_only() {
    let p = Platform::start();
    let platform = |token: &str| {
        http()
            .get(format!("{}/v1/platform", p.server))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    let v: Value = platform(&p.token()).json().unwrap();
    assert!(v.get("bench").is_none(), "no report yet: {v}");
    // What `thaw bench` keeps in the data directory (tests/bench.rs).
    let report = "# thaw benchmarks\n\n| system | p50 |\n| <b>thaw</b> | 1 ms |\n";
    std::fs::create_dir_all(p.data_dir.join("bench")).unwrap();
    std::fs::write(p.data_dir.join("bench/report.md"), report).unwrap();
    let v: Value = platform(&p.token()).json().unwrap();
    assert_eq!(v["bench"]["markdown"], report);
    assert!(v["bench"]["written_ms"].as_i64().unwrap() > 0);
    p.thaw_ok(&["ns", "create", "team-a"]);
    let key = p.new_key("team-a", "viewer", "read");
    assert_eq!(platform(&key).status(), 403);
}
