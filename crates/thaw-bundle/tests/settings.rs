//! thaw.toml and finding the entry file.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use common::write;
use thaw_bundle::{find_entry, read_settings, Settings};

fn settings_err(toml: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "thaw.toml", toml);
    let err = read_settings(tmp.path()).unwrap_err();
    assert_eq!(err.code(), "bad_settings", "{err}");
    err.to_string()
}

#[test]
fn defaults_without_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = read_settings(tmp.path()).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(
        (s.memory_mb, s.timeout_s, s.concurrency, s.keep_alive_s),
        (256, 30, 1, 300)
    );
    assert!(s.name.is_none() && s.entry.is_none() && s.env.is_empty());
    // An empty file means defaults too.
    write(tmp.path(), "thaw.toml", "");
    assert_eq!(read_settings(tmp.path()).unwrap(), Settings::default());
}

#[test]
fn full_example() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "thaw.toml",
        r#"
name = "hello-api"
entry = "src/main.ts"
memory = 512
timeout = 60
concurrency = 8
max_body_mb = 1024
keep_alive = 0
max_instances = 3
driver = "microvm"
runtime = "node22"

retries = 5
destination = "audit"
[env]
GREETING = "hi"
_PRIVATE_1 = ""
"#,
    );
    let s = read_settings(tmp.path()).unwrap();
    let env = BTreeMap::from([
        ("GREETING".to_string(), "hi".to_string()),
        ("_PRIVATE_1".to_string(), String::new()),
    ]);
    assert_eq!(
        s,
        Settings {
            name: Some("hello-api".into()),
            entry: Some("src/main.ts".into()),
            memory_mb: 512,
            timeout_s: 60,
            concurrency: 8,
            max_body_mb: 1024,
            keep_alive_s: 0,
            max_instances: 3,
            min_instances: 0,
            env,
            driver: Some("microvm".into()),
            runtime: Some("node22".into()),
            retries: 5,
            destination: Some("audit".into()),
            schedules: Vec::new(),
        }
    );
    // Serde uses the TOML names, so settings survive a JSON round trip.
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"memory\":512"), "{json}");
    assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
}

#[test]
fn an_unknown_driver_is_named_with_the_known_ones() {
    let msg = settings_err("driver = \"firecracker\"\n");
    assert!(msg.contains("firecracker"), "{msg}");
    assert!(msg.contains("process, microvm"), "{msg}");
}

#[test]
fn an_unknown_node_line_is_named_with_the_known_ones() {
    for line in ["node18", "node", "22", "node22.1", "deno2", "Node22"] {
        let msg = settings_err(&format!("runtime = {line:?}\n"));
        assert!(msg.contains(&format!("`runtime = {line:?}`")), "{msg}");
        assert!(msg.contains("node20, node22, node24, node26"), "{msg}");
    }
    let msg = settings_err("runtime = 22\n");
    assert!(msg.contains("line 1"), "{msg}");
    for line in thaw_bundle::RUNTIMES {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "thaw.toml", &format!("runtime = {line:?}\n"));
        assert_eq!(
            read_settings(tmp.path()).unwrap().runtime.as_deref(),
            Some(*line)
        );
    }
}

#[test]
fn unknown_key_is_named() {
    let msg = settings_err("memory = 128\nmemroy_mb = 3\n");
    assert!(msg.contains("memroy_mb"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn bad_types() {
    let msg = settings_err("memory = \"big\"\n");
    assert!(msg.contains("memory") || msg.contains("line 1"), "{msg}");
    let msg = settings_err("[env]\nPORT = 8080\n");
    assert!(msg.contains("line 2") && msg.contains("string"), "{msg}");
    let msg = settings_err("timeout = -1\n");
    assert!(msg.contains("line 1"), "{msg}");
    let msg = settings_err("max_body_mb = \"6MB\"\n");
    assert!(
        msg.contains("line 1") && msg.contains("max_body_mb"),
        "{msg}"
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let msg = settings_err("name = \"a\"\nmemory = = 3\n");
    assert!(msg.contains("line 2, column"), "{msg}");
}

#[test]
fn out_of_range_values() {
    for (toml, key) in [
        ("memory = 32", "memory = 32"),
        ("memory = 5000", "between 64 and 4096"),
        ("timeout = 0", "timeout = 0"),
        ("timeout = 901", "between 1 and 900"),
        ("concurrency = 0", "concurrency"),
        ("keep_alive = 86401", "keep_alive"),
        (
            "max_body_mb = 0",
            "`max_body_mb = 0` is out of range: it must be between 1 and 10240 (MiB)",
        ),
        ("max_body_mb = 20000", "between 1 and 10240"),
    ] {
        let msg = settings_err(toml);
        assert!(msg.contains(key), "{toml}: {msg}");
    }
}

#[test]
fn bad_name_entry_and_env_key() {
    let msg = settings_err("name = \"Hello\"\n");
    assert!(msg.contains("Hello") && msg.contains("lowercase"), "{msg}");
    let msg = settings_err("entry = \"../x.js\"\n");
    assert!(msg.contains("../x.js"), "{msg}");
    let msg = settings_err("entry = \"/abs.js\"\n");
    assert!(msg.contains("/abs.js"), "{msg}");
    for key in ["1ABC", "A-B", "\"A B\"", "\"\""] {
        let msg = settings_err(&format!("[env]\n{key} = \"x\"\n"));
        assert!(msg.contains("environment variable name"), "{key}: {msg}");
    }
}

fn entry_of(files: &[&str]) -> Result<String, thaw_bundle::BundleError> {
    let tmp = tempfile::tempdir().unwrap();
    for f in files {
        write(tmp.path(), f, "1");
    }
    find_entry(tmp.path(), &Settings::default())
}

#[test]
fn entry_from_settings() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "src/main.ts", "1");
    write(tmp.path(), "index.js", "1");
    let mut s = Settings {
        entry: Some("./src/main.ts".into()),
        ..Settings::default()
    };
    assert_eq!(find_entry(tmp.path(), &s).unwrap(), "src/main.ts");
    s.entry = Some("src/missing.ts".into());
    let err = find_entry(tmp.path(), &s).unwrap_err();
    assert_eq!(err.code(), "no_entry");
    assert!(err.to_string().contains("src/missing.ts"), "{err}");
    s.entry = Some("src".into());
    assert_eq!(find_entry(tmp.path(), &s).unwrap_err().code(), "no_entry");
}

#[test]
fn entry_from_package_json_main() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "lib/server.js", "1");
    write(tmp.path(), "a.js", "1");
    write(tmp.path(), "b.js", "1");
    write(tmp.path(), "package.json", r#"{"main": "./lib/server.js"}"#);
    assert_eq!(
        find_entry(tmp.path(), &Settings::default()).unwrap(),
        "lib/server.js"
    );
    // Without extension, like Node.
    write(tmp.path(), "package.json", r#"{"main": "lib/server"}"#);
    assert_eq!(
        find_entry(tmp.path(), &Settings::default()).unwrap(),
        "lib/server.js"
    );
    // A folder with an index.
    write(tmp.path(), "pkg/index.mjs", "1");
    write(tmp.path(), "package.json", r#"{"main": "pkg"}"#);
    assert_eq!(
        find_entry(tmp.path(), &Settings::default()).unwrap(),
        "pkg/index.mjs"
    );
    // A main that names nothing falls through to the other rules.
    write(tmp.path(), "package.json", r#"{"main": "index.js"}"#);
    write(tmp.path(), "index.ts", "1");
    assert_eq!(
        find_entry(tmp.path(), &Settings::default()).unwrap(),
        "index.ts"
    );
    // Invalid JSON is an error.
    write(tmp.path(), "package.json", "{ main: nope");
    let err = find_entry(tmp.path(), &Settings::default()).unwrap_err();
    assert_eq!(err.code(), "bad_package_json");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn entry_single_top_level_file() {
    let found = entry_of(&[
        "handler.ts",
        "types.d.ts",
        "README.md",
        "lib/x.js",
        "node_modules/y/index.js",
    ]);
    assert_eq!(found.unwrap(), "handler.ts");
    assert_eq!(entry_of(&["app.cjs", ".eslintrc.js"]).unwrap(), "app.cjs");
}

#[test]
fn entry_single_index() {
    assert_eq!(
        entry_of(&["index.ts", "helpers.ts", "config.js"]).unwrap(),
        "index.ts"
    );
}

#[test]
fn entry_ambiguity_lists_candidates() {
    let err = entry_of(&["a.js", "b.ts", "index.js", "index.ts"]).unwrap_err();
    assert_eq!(err.code(), "no_entry");
    let msg = err.to_string();
    for needle in [
        "a.js",
        "b.ts",
        "index.js",
        "index.ts",
        "entry = ",
        "package.json",
    ] {
        assert!(msg.contains(needle), "{needle} not in: {msg}");
    }
    let err = entry_of(&["README.md", "src/index.ts"]).unwrap_err();
    assert_eq!(err.code(), "no_entry");
    assert!(err.to_string().contains("no entry file found"), "{err}");
}

#[test]
fn entry_through_in_tree_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "dist/main.js", "1");
    symlink("dist/main.js", tmp.path().join("main.js")).unwrap();
    assert_eq!(
        find_entry(tmp.path(), &Settings::default()).unwrap(),
        "main.js"
    );
}

#[test]
fn schedules_are_read_and_checked() {
    let s = Settings::from_toml(
        r#"
retries = 0
[[schedule]]
cron = "*/5 * * * *"
[[schedule]]
name = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Paris"
alias = "prod"
method = "Jobs.nightly"
payload = { days = 30, tags = ["a", "b"] }
"#,
    )
    .unwrap();
    assert_eq!(s.retries, 0);
    assert_eq!(s.schedules.len(), 2);
    assert_eq!(s.schedules[0].name_at(0), "schedule-1");
    assert_eq!(s.schedules[0].timezone(), "UTC");
    assert_eq!(s.schedules[0].alias(), "latest");
    let nightly = &s.schedules[1];
    assert_eq!(nightly.name_at(1), "nightly");
    assert_eq!(
        nightly.payload,
        Some(serde_json::json!({ "days": 30, "tags": ["a", "b"] }))
    );
    // They survive the JSON the registry stores settings as.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);

    for (toml, needle) in [
        ("[[schedule]]\ncron = \"61 * * * *\"\n", "`61` is out of range"),
        ("[[schedule]]\ncron = \"* * * *\"\n", "schedule-1"),
        ("[[schedule]]\ncron = \"0 0 30 2 *\"\n", "never"),
        ("[[schedule]]\ncron = \"@reboot\"\n", "reboot"),
        ("[[schedule]]\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\n", "timezone"),
        ("[[schedule]]\ncron = \"* * * * *\"\nalias = \"Prod\"\n", "not an alias name"),
        ("[[schedule]]\ncron = \"* * * * *\"\nmethod = \"nightly\"\n", "Class.method"),
        ("[[schedule]]\ncron = \"* * * * *\"\nevery = 5\n", "unknown field `every`"),
        ("[[schedule]]\nname = \"a\"\ncron = \"@daily\"\n[[schedule]]\nname = \"a\"\ncron = \"@hourly\"\n", "two [[schedule]] entries are named `a`"),
        ("retries = 11\n", "`retries = 11` is out of range"),
        ("name = \"job\"\ndestination = \"job\"\n", "names the function itself"),
        ("destination = \"Audit\"\n", "`destination`"),
    ] {
        let err = settings_err(toml);
        assert!(err.contains(needle), "{toml}: {err}");
    }
    let many: String = (0..21)
        .map(|_| "[[schedule]]\ncron = \"@daily\"\n")
        .collect();
    assert!(settings_err(&many).contains("at most 20"));
}
