//! Namespaces, keys, versions, aliases and secrets, through the real CLI
//! and HTTP against a real `thaw up`.

mod common;

use common::{function_dir, http, Platform};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Output;

/// Runs the CLI with `key` as its API key.
fn thaw_as(p: &Platform, key: &str, args: &[&str]) -> Output {
    p.cli().env("THAW_TOKEN", key).args(args).output().unwrap()
}

fn thaw_as_ok(p: &Platform, key: &str, args: &[&str]) -> String {
    let out = thaw_as(p, key, args);
    assert!(
        out.status.success(),
        "thaw {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A function answering `marker` and whether its secret is set.
fn marked(marker: &str) -> tempfile::TempDir {
    function_dir(&[(
        "index.mjs",
        &format!(
            "export const handler = async () => ({{ statusCode: 200, \
             body: '{marker}:' + (process.env.DB_PASSWORD ? 'secret' : 'none') }});"
        ),
    )])
}

fn request(
    p: &Platform,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http()
        .request(method, format!("{}{path}", p.server))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn tenants_reach_only_their_own_namespace_and_roles_hold() {
    let p = Platform::start();
    p.thaw_ok(&["ns", "create", "team-a"]);
    p.thaw_ok(&["ns", "create", "team-b"]);
    let deploy_a = p.new_key("team-a", "ci", "deploy");
    let deploy_b = p.new_key("team-b", "ci", "deploy");
    let invoke_a = p.new_key("team-a", "caller", "invoke");
    let read_a = p.new_key("team-a", "viewer", "read");
    assert!(deploy_a.starts_with("thawk_"), "{deploy_a}");

    let a_url = thaw_as_ok(
        &p,
        &deploy_a,
        &[
            "deploy",
            marked("A").path().to_str().unwrap(),
            "--name",
            "api",
        ],
    );
    let b_url = thaw_as_ok(
        &p,
        &deploy_b,
        &[
            "deploy",
            marked("B").path().to_str().unwrap(),
            "--name",
            "api",
        ],
    );
    assert_eq!(a_url, format!("{}/ns/team-a/fn/api", p.server));
    assert_eq!(b_url, format!("{}/ns/team-b/fn/api", p.server));
    assert_eq!(http().get(&a_url).send().unwrap().text().unwrap(), "A:none");
    assert_eq!(http().get(&b_url).send().unwrap().text().unwrap(), "B:none");
    assert_eq!(
        http().get(p.url("api", "/")).send().unwrap().status(),
        404,
        "not in default"
    );
    thaw_as_ok(
        &p,
        &deploy_b,
        &[
            "secret",
            "set",
            "api",
            "DB_PASSWORD",
            "--from-file",
            "/etc/hostname",
        ],
    );

    // Unqualified routes mean the key's own namespace.
    let (s, v) = request(&p, &deploy_a, Method::GET, "/v1/functions/api", None);
    assert_eq!((s, v["namespace"].as_str()), (200, Some("team-a")));

    // Every route of team-b, with every key of team-a: forbidden, and
    // nothing of team-b in the answer.
    let b = "/v1/namespaces/team-b/functions";
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, b.to_string(), None),
        (Method::GET, format!("{b}/api"), None),
        (Method::POST, format!("{b}/api/invoke"), Some(json!({}))),
        (Method::GET, format!("{b}/api/logs"), None),
        (Method::GET, format!("{b}/api/versions"), None),
        (Method::GET, format!("{b}/api/aliases"), None),
        (
            Method::PUT,
            format!("{b}/api/aliases/prod"),
            Some(json!({"version": 1})),
        ),
        (Method::POST, format!("{b}/api/rollback"), Some(json!({}))),
        (Method::GET, format!("{b}/api/secrets"), None),
        (
            Method::PUT,
            format!("{b}/api/secrets/X"),
            Some(json!({"value": "v"})),
        ),
        (Method::DELETE, format!("{b}/api/secrets/DB_PASSWORD"), None),
        (Method::GET, format!("{b}/api/env"), None),
        (
            Method::PUT,
            format!("{b}/api/env/X"),
            Some(json!({"value": "v"})),
        ),
        (
            Method::GET,
            "/v1/namespaces/team-b/metrics".to_string(),
            None,
        ),
        (Method::GET, "/v1/namespaces/team-b".to_string(), None),
        (Method::DELETE, format!("{b}/api"), None),
    ];
    for key in [&deploy_a, &invoke_a, &read_a] {
        for (method, path, body) in &routes {
            let (s, v) = request(&p, key, method.clone(), path, body.clone());
            assert_eq!(s, 403, "{method} {path}: {v}");
            assert_eq!(v["error"]["code"], "forbidden");
            assert!(!v.to_string().contains("B:"), "{v}");
        }
        // Admin routes, and metrics of every namespace, are the admin's.
        for (method, path) in [
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/namespaces"),
            (Method::GET, "/v1/keys"),
            (Method::POST, "/v1/runtime/upgrade"),
        ] {
            assert_eq!(
                request(&p, key, method.clone(), path, None).0,
                403,
                "{method} {path}"
            );
        }
        let (s, _) = request(
            &p,
            key,
            Method::POST,
            "/v1/keys",
            Some(json!({"namespace": "team-b", "name": "x", "role": "deploy"})),
        );
        assert_eq!(s, 403);
    }
    // A deploy into team-b with team-a's key is refused before the body is read.
    let out = thaw_as(
        &p,
        &deploy_a,
        &[
            "deploy",
            marked("X").path().to_str().unwrap(),
            "--name",
            "api",
            "--namespace",
            "team-b",
        ],
    );
    assert!(!out.status.success());
    assert!(
        common::stderr_of(&out).contains("belongs to namespace `team-a`"),
        "{}",
        common::stderr_of(&out)
    );
    assert_eq!(
        http().get(&b_url).send().unwrap().text().unwrap(),
        "B:secret",
        "team-b untouched"
    );

    // Roles inside team-a.
    let a = "/v1/namespaces/team-a/functions";
    let reads = [
        a.to_string(),
        format!("{a}/api"),
        format!("{a}/api/logs"),
        format!("{a}/api/versions"),
        format!("{a}/api/aliases"),
        format!("{a}/api/secrets"),
        "/v1/namespaces/team-a/metrics".to_string(),
    ];
    for path in &reads {
        assert_eq!(
            request(&p, &read_a, Method::GET, path, None).0,
            200,
            "read {path}"
        );
        assert_eq!(
            request(&p, &invoke_a, Method::GET, path, None).0,
            403,
            "invoke key reads {path}"
        );
    }
    let (s, v) = request(
        &p,
        &invoke_a,
        Method::POST,
        &format!("{a}/api/invoke"),
        Some(json!({})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["body"].as_str().unwrap().contains("A:none"), "{v}");
    assert_eq!(
        request(
            &p,
            &read_a,
            Method::POST,
            &format!("{a}/api/invoke"),
            Some(json!({}))
        )
        .0,
        403
    );
    for key in [&read_a, &invoke_a] {
        assert_eq!(
            request(&p, key, Method::DELETE, &format!("{a}/api"), None).0,
            403
        );
        assert_eq!(
            request(
                &p,
                key,
                Method::PUT,
                &format!("{a}/api/secrets/X"),
                Some(json!({"value": "v"}))
            )
            .0,
            403
        );
    }
    let metrics = match request(
        &p,
        &read_a,
        Method::GET,
        "/v1/namespaces/team-a/metrics",
        None,
    )
    .1
    {
        Value::String(text) => text,
        other => panic!("metrics are text: {other}"),
    };
    assert!(metrics.contains("namespace=\"team-a\""), "{metrics}");
    assert!(!metrics.contains("team-b"), "{metrics}");
    assert!(
        !metrics.contains("thaw_pool_"),
        "pool figures are the platform's"
    );

    // `thaw ls` with each key lists its own `api` only.
    assert!(thaw_as_ok(&p, &read_a, &["ls"]).contains("/ns/team-a/fn/api"));
    assert!(!thaw_as_ok(&p, &read_a, &["ls"]).contains("team-b"));

    // A revoked key fails on its next call.
    let keys: Value = p
        .api(Method::GET, "/v1/keys?namespace=team-a")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let viewer = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(request(&p, &read_a, Method::GET, a, None).0, 200);
    p.thaw_ok(&["key", "revoke", &viewer]);
    let (s, v) = request(&p, &read_a, Method::GET, a, None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(p.thaw_ok(&["key", "ls"]).contains("revoked"));

    // team-a removes its own function; team-b's stays.
    thaw_as_ok(&p, &deploy_a, &["rm", "api"]);
    assert_eq!(http().get(&a_url).send().unwrap().status(), 404);
    assert_eq!(
        http().get(&b_url).send().unwrap().text().unwrap(),
        "B:secret"
    );
    let out = p.thaw(&["ns", "rm", "team-b"]);
    assert!(
        common::stderr_of(&out).contains("still has 1 functions"),
        "{}",
        common::stderr_of(&out)
    );
    p.thaw_ok(&["ns", "rm", "team-a"]);
    assert_eq!(
        request(&p, &deploy_a, Method::GET, a, None).0,
        401,
        "its keys went with it"
    );
}

/// Calls `url` `n` times; counts answers by body.
fn tally(url: &str, n: usize) -> HashMap<String, usize> {
    let client = http();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = client.get(url).send().unwrap();
        assert_eq!(r.status(), 200);
        *seen.entry(r.text().unwrap()).or_default() += 1;
    }
    seen
}

#[test]
fn versions_aliases_splits_and_rollback_under_load() {
    let p = Platform::start();
    p.thaw_ok(&["ns", "create", "team-a"]);
    let key = p.new_key("team-a", "ci", "deploy");
    let secret = "correct-horse-battery-staple-7f3a";
    let deploy = |marker: &str| {
        thaw_as_ok(
            &p,
            &key,
            &[
                "deploy",
                marked(marker).path().to_str().unwrap(),
                "--name",
                "api",
            ],
        )
    };
    let url = deploy("one"); // version 1
    let out = p
        .cli()
        .env("THAW_TOKEN", &key)
        .args(["secret", "set", "api", "DB_PASSWORD"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(secret.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2"));
    deploy("two"); // 3
    deploy("three"); // 4
    assert_eq!(
        http().get(&url).send().unwrap().text().unwrap(),
        "three:secret"
    );

    let versions = thaw_as_ok(&p, &key, &["versions", "api"]);
    for n in ["1", "2", "3", "4"] {
        assert!(
            versions.lines().any(|l| l.trim_start().starts_with(n)),
            "{versions}"
        );
    }
    assert!(
        versions.contains("config") && versions.contains("ci"),
        "{versions}"
    );
    // Each version has its own URL.
    assert_eq!(
        http()
            .get(format!("{url}@1/"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "one:none"
    );
    assert_eq!(
        http()
            .get(format!("{url}@2/"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "one:secret"
    );
    assert_eq!(
        http().get(format!("{url}@9/")).send().unwrap().status(),
        404
    );

    thaw_as_ok(&p, &key, &["alias", "set", "api", "prod", "2"]);
    assert_eq!(
        tally(&format!("{url}@prod/"), 20),
        HashMap::from([("one:secret".to_string(), 20)])
    );
    thaw_as_ok(
        &p,
        &key,
        &["alias", "set", "api", "prod", "2", "--split", "3:10"],
    );
    let seen = tally(&format!("{url}@prod/"), 2000);
    let canary = seen.get("two:secret").copied().unwrap_or(0);
    assert_eq!(
        seen.get("one:secret").copied().unwrap_or(0) + canary,
        2000,
        "{seen:?}"
    );
    assert!(
        (140..=260).contains(&canary),
        "10% ± 3 points of 2000: {canary}"
    );

    // Roll `prod` back while clients call it: no call fails, each answer
    // is wholly one version's (its body matches the version it names).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, target) = (stop.clone(), format!("{url}@prod/"));
            std::thread::spawn(move || {
                let client = http();
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = client.get(&target).send().unwrap();
                    let status = r.status().as_u16();
                    let version = r.headers()["x-thaw-version"].to_str().unwrap().to_string();
                    answers.push((status, version, r.text().unwrap()));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = thaw_as_ok(&p, &key, &["rollback", "api", "--alias", "prod"]);
    assert!(out.contains("prod -> version 1"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let body_of = HashMap::from([("1", "one:none"), ("2", "one:secret"), ("3", "two:secret")]);
    let mut after = 0;
    for answers in callers.into_iter().map(|t| t.join().unwrap()) {
        assert!(!answers.is_empty());
        for (status, version, body) in &answers {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(
                body_of[version.as_str()],
                body,
                "version {version} answered {body}"
            );
        }
        after += answers.iter().filter(|a| a.1 == "1").count();
    }
    assert!(after > 0, "calls after the rollback reached version 1");
    assert_eq!(
        tally(&format!("{url}@prod/"), 20),
        HashMap::from([("one:none".to_string(), 20)])
    );
    // `latest` rolls back to the version before it, with its configuration.
    thaw_as_ok(&p, &key, &["rollback", "api"]);
    assert_eq!(
        http().get(&url).send().unwrap().text().unwrap(),
        "two:secret"
    );

    // The secret's value is nowhere but in the function's environment:
    // not in an answer of the API, not in the data directory, not in any
    // process's command line.
    for path in ["", "/versions", "/aliases", "/secrets", "/env", "/logs"] {
        let (_, v) = request(
            &p,
            &key,
            Method::GET,
            &format!("/v1/functions/api{path}"),
            None,
        );
        assert!(!v.to_string().contains(secret), "{path}: {v}");
    }
    let listed = thaw_as_ok(&p, &key, &["secret", "ls", "api"]);
    assert!(
        listed.contains("DB_PASSWORD") && !listed.contains(secret),
        "{listed}"
    );
    let mut files = vec![p.data_dir.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if path.ends_with("jails") || path.ends_with("vm-jails") {
                continue;
            }
            files.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret in clear",
                path.display()
            );
        }
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(!cmdline
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()));
        }
    }
}

#[test]
fn a_namespace_past_its_limits_gets_429_while_another_keeps_serving() {
    let p = Platform::start();
    p.thaw_ok(&[
        "ns",
        "create",
        "small",
        "--max-instances",
        "2",
        "--max-deploy-bytes",
        "4096",
    ]);
    p.thaw_ok(&["ns", "create", "other"]);
    let small = p.new_key("small", "ci", "deploy");
    let other = p.new_key("other", "ci", "deploy");
    let slow = function_dir(&[(
        "index.mjs",
        "export const handler = async () => { await new Promise(r => setTimeout(r, 1500)); return 'slow'; };",
    )]);
    let url = thaw_as_ok(
        &p,
        &small,
        &["deploy", slow.path().to_str().unwrap(), "--name", "slow"],
    );
    let quick = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'quick' });",
    )]);
    let quick_url = thaw_as_ok(
        &p,
        &other,
        &["deploy", quick.path().to_str().unwrap(), "--name", "quick"],
    );

    // Six calls at once, one instance each at most two at a time.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = http().get(&url).send().unwrap();
                let status = r.status().as_u16();
                (status, r.text().unwrap())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..10 {
        assert_eq!(
            http().get(&quick_url).send().unwrap().text().unwrap(),
            "quick"
        );
    }
    let results: Vec<(u16, String)> = calls.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let throttled: Vec<&(u16, String)> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + throttled.len(), 6, "{results:?}");
    assert!((2..=4).contains(&ok), "{results:?}");
    for (_, body) in throttled {
        assert!(
            body.contains("namespace_limit") && body.contains("max_instances = 2"),
            "{body}"
        );
    }

    // A deploy larger than the namespace allows is refused while reading.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: String = (0..20_000)
        .map(|_| {
            // xorshift: letters gzip cannot shrink much.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    let big = function_dir(&[
        ("index.mjs", "export const handler = async () => 'x';"),
        ("noise.txt", &noise),
    ]);
    let out = thaw_as(
        &p,
        &small,
        &["deploy", big.path().to_str().unwrap(), "--name", "big"],
    );
    assert!(!out.status.success());
    assert!(
        common::stderr_of(&out).contains("limit of 4096 bytes"),
        "{}",
        common::stderr_of(&out)
    );
    // A function asking for more memory than the namespace may hold.
    let greedy = function_dir(&[
        ("index.mjs", "export const handler = async () => 'x';"),
        ("thaw.toml", "memory = 4096\n"),
    ]);
    p.thaw_ok(&[
        "ns",
        "set",
        "small",
        "--max-memory-mb",
        "1024",
        "--max-deploy-bytes",
        "1000000",
    ]);
    let out = thaw_as(
        &p,
        &small,
        &[
            "deploy",
            greedy.path().to_str().unwrap(),
            "--name",
            "greedy",
        ],
    );
    assert!(
        common::stderr_of(&out).contains("max_memory_mb = 1024"),
        "{}",
        common::stderr_of(&out)
    );
}

#[test]
fn a_data_dir_of_the_first_release_opens_and_keeps_serving() {
    if common::on_postgres() {
        // This is the upgrade of an SQLite file; the SQLite pass runs it.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::fs::File::open(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-dir-v1.tar.gz"),
    )
    .unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(fixture))
        .unpack(dir.path())
        .unwrap();
    let p = Platform::start_in(dir.path(), &[]);
    assert!(p.up_line.contains("functions: 1"), "{}", p.up_line);
    assert_eq!(
        http()
            .get(p.url("echo", "/x"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "v2:/x"
    );
    assert_eq!(
        http()
            .get(p.url("echo@1", "/x"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "v1:/x"
    );
    let ls = p.thaw_ok(&["ls"]);
    assert!(ls.contains("echo") && ls.contains("/fn/echo"), "{ls}");
    let versions = p.thaw_ok(&["versions", "echo"]);
    assert!(versions.contains("latest"), "{versions}");
    assert_eq!(
        versions.lines().count(),
        3,
        "a header and two versions: {versions}"
    );
    let logs = p.thaw_ok(&["logs", "echo"]);
    assert!(logs.contains("echo called"), "{logs}");
    // And it takes new deploys as any data directory does.
    let d = function_dir(&[(
        "index.mjs",
        "export const handler = async () => ({ statusCode: 200, body: 'three' });",
    )]);
    p.deploy(d.path(), "echo");
    assert_eq!(
        http()
            .get(p.url("echo", "/"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "three"
    );
    assert!(p
        .thaw_ok(&["versions", "echo"])
        .lines()
        .nth(1)
        .unwrap()
        .trim_start()
        .starts_with('3'));
}
