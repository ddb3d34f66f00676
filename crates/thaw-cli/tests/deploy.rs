//! Deploying: the token, storage by content hash, settings and entries,
//! restarts, atomic swaps, and hostile or broken input.

mod common;

use common::{function_dir, http, stderr_of, Platform};
use reqwest::Method;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

const VERSIONED: &str = r#"
import { VERSION } from "./version.mjs";
export const handler = async () => ({ statusCode: 200, headers: { "x-version": VERSION }, body: VERSION });
"#;

fn versioned(v: &str) -> tempfile::TempDir {
    function_dir(&[
        ("index.mjs", VERSIONED),
        ("version.mjs", &format!("export const VERSION = \"{v}\";")),
        ("thaw.toml", "entry = \"index.mjs\"\n"),
    ])
}

fn get_text(url: &str) -> (u16, String) {
    let r = http().get(url).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn the_control_api_wants_the_token_and_function_routes_do_not() {
    let p = Platform::start();
    let token_file = p.data_dir.join("token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let d = versioned("v1");
    p.deploy(d.path(), "open");

    let anon = http()
        .get(format!("{}/v1/functions", p.server))
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(anon.headers()["www-authenticate"], "Bearer");
    let v: Value = anon.json().unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let wrong = http()
        .get(format!("{}/v1/functions", p.server))
        .bearer_auth("thaw_wrong")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let listed: Value = p
        .api(Method::GET, "/v1/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["functions"][0]["name"], "open");
    assert_eq!(get_text(&p.url("open", "/")), (200, "v1".to_string()));

    // Without the data directory the CLI has no token and says what to do.
    let out = p
        .cli()
        .env("THAW_DATA_DIR", "/nonexistent")
        .args(["ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("THAW_TOKEN"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn thaw_token_from_the_environment_is_used_by_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_in(dir.path(), &[("THAW_TOKEN", "s3cret-token")]);
    assert!(!dir.path().join("token").exists());
    let out = p.thaw_ok(&["ls"]);
    assert!(out.contains("no functions deployed"), "{out}");
    let r = http()
        .get(format!("{}/v1/functions", p.server))
        .bearer_auth("s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_bundle_is_stored_once_and_settings_node_modules_and_thawignore_apply() {
    let p = Platform::start();
    let d = function_dir(&[
        (
            "app.js",
            r#"const fs = require("fs");
               const dep = require("leftpad-ish");
               exports.handler = async () => ({ statusCode: 200, body: JSON.stringify({
                 dep: dep("7", 3), greeting: process.env.GREETING, secret: fs.existsSync("secret.txt"),
                 notes: fs.existsSync("notes/keep.txt"), token: process.env.THAW_TOKEN ?? null }) });"#,
        ),
        ("package.json", r#"{"name":"x","main":"app.js"}"#),
        (
            "node_modules/leftpad-ish/index.js",
            "module.exports = (s, n) => s.padStart(n, '0');",
        ),
        ("secret.txt", "do not ship"),
        ("notes/keep.txt", "ship"),
        (".thawignore", "secret.txt\n"),
        (
            "thaw.toml",
            "name = \"settled\"\n[env]\nGREETING = \"hi\"\n",
        ),
    ]);
    // No --name: thaw.toml's name is used.
    let url = p.thaw_ok(&["deploy", d.path().to_str().unwrap()]);
    assert_eq!(url.trim(), p.url("settled", ""));
    let (status, body) = get_text(&p.url("settled", "/"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["dep"], "007");
    assert_eq!(v["greeting"], "hi");
    assert_eq!(v["secret"], false, ".thawignore keeps secret.txt out");
    assert_eq!(v["notes"], true);
    assert_eq!(
        v["token"],
        Value::Null,
        "thaw's environment never reaches code"
    );

    // The same folder under another name is the same bundle: stored once.
    p.deploy(d.path(), "settled-too");
    let bundles: Vec<_> = std::fs::read_dir(p.data_dir.join("bundles"))
        .unwrap()
        .collect();
    assert_eq!(bundles.len(), 1);
    let trees: Vec<_> = std::fs::read_dir(p.data_dir.join("code"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(trees.len(), 1);
    // The tree is read-only.
    let tree = trees[0].path();
    let mode = std::fs::metadata(tree.join("app.js"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "code files are not writable");
}

#[test]
fn a_single_file_needs_no_settings_and_typescript_is_compiled_at_deploy() {
    let p = Platform::start();
    let single = function_dir(&[("only.js", "exports.main = () => ({ one: 1 });")]);
    p.deploy(single.path(), "single");
    assert_eq!(
        get_text(&p.url("single", "/")),
        (200, r#"{"one":1}"#.to_string())
    );
    let ts = function_dir(&[
        (
            "main.ts",
            "import { greet } from './lib';\nexport const handler = async (e: unknown): Promise<object> => ({ statusCode: 200, body: greet('ts') });\n",
        ),
        (
            "lib.ts",
            "export function greet(who: string): string { const n: number = 1; return `hi ${who} ${n}`; }\n",
        ),
        ("thaw.toml", "entry = \"main.ts\"\n"),
    ]);
    p.deploy(ts.path(), "typed");
    assert_eq!(get_text(&p.url("typed", "/")), (200, "hi ts 1".to_string()));
}

#[test]
fn functions_survive_a_restart_without_a_redeploy() {
    let data = tempfile::tempdir().unwrap();
    let d = versioned("kept");
    {
        let p = Platform::start_in(data.path(), &[]);
        p.deploy(d.path(), "durable");
        assert_eq!(get_text(&p.url("durable", "/")).1, "kept");
        let mut p = p;
        p.kill();
    }
    let p = Platform::start_in(data.path(), &[]);
    assert_eq!(get_text(&p.url("durable", "/")), (200, "kept".to_string()));
    let ls = p.thaw_ok(&["ls"]);
    assert!(ls.contains("durable"), "{ls}");
}

#[test]
fn a_redeploy_swaps_atomically_and_a_failed_one_keeps_the_old_version() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let p = Platform::start();
    p.deploy(versioned("v1").path(), "swap");
    let stop = Arc::new(AtomicBool::new(false));
    let url = p.url("swap", "/");
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = http();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(&url).send().unwrap();
                assert_eq!(r.status(), 200);
                let header = r.headers()["x-version"].to_str().unwrap().to_string();
                let body = r.text().unwrap();
                assert_eq!(header, body, "one response, one version");
                seen.push(body);
            }
            seen
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    p.deploy(versioned("v2").path(), "swap");
    // Once deploy returns, every new request sees the new version.
    for _ in 0..5 {
        assert_eq!(get_text(&p.url("swap", "/")).1, "v2");
    }
    stop.store(true, Ordering::Relaxed);
    let seen = hammer.join().unwrap();
    let first_v2 = seen.iter().position(|v| v == "v2").unwrap_or(seen.len());
    assert!(
        seen[first_v2..].iter().all(|v| v == "v2"),
        "never back to v1 after v2 was seen"
    );

    // Broken code is refused at deploy time, and v2 keeps serving.
    let broken = function_dir(&[(
        "index.mjs",
        "export const handler = async () => {\n  return {;\n};\n",
    )]);
    let out = p.thaw(&["deploy", broken.path().to_str().unwrap(), "--name", "swap"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("SyntaxError") && err.contains("index.mjs"),
        "{err}"
    );
    assert!(err.contains("previous version keeps serving"), "{err}");
    let no_handler = function_dir(&[("index.mjs", "export const nothing = 1;\n")]);
    let out = p.thaw(&[
        "deploy",
        no_handler.path().to_str().unwrap(),
        "--name",
        "swap",
    ]);
    assert!(!out.status.success());
    let bad_ts = function_dir(&[("index.ts", "const x: number = ;\n")]);
    let out = p.thaw(&["deploy", bad_ts.path().to_str().unwrap(), "--name", "swap"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("index.ts:1"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(get_text(&p.url("swap", "/")), (200, "v2".to_string()));
}

/// A gzip'd tar whose entries are written byte by byte, so that it can
/// hold what a well-behaved packer refuses to write.
fn raw_archive(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        tar.extend_from_slice(&h);
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

fn put_archive(p: &Platform, name: &str, archive: Vec<u8>) -> (u16, Value) {
    let r = p
        .api(Method::PUT, &format!("/v1/functions/{name}"))
        .body(archive)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn hostile_and_broken_input_gets_a_clear_4xx_and_loses_nothing() {
    let p = Platform::start();
    p.deploy(versioned("good").path(), "target");
    let ok = b"exports.main = () => 1;" as &[u8];

    for bad in [
        "Upper",
        "-lead",
        "has_underscore",
        "a.b",
        "trailing-",
        &"x".repeat(64),
    ] {
        let (status, v) = put_archive(&p, bad, raw_archive(&[("index.js", b'0', "", ok)]));
        assert_eq!(status, 400, "name {bad:?}: {v}");
        assert_eq!(v["error"]["code"], "invalid_name", "{bad}");
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            raw_archive(&[("../evil.js", b'0', "", ok)]),
            "unsafe_path",
        ),
        (
            "absolute",
            raw_archive(&[("/tmp/evil.js", b'0', "", ok)]),
            "unsafe_path",
        ),
        (
            "link-out",
            raw_archive(&[
                ("index.js", b'0', "", ok),
                ("passwd", b'2', "/etc/passwd", b""),
            ]),
            "unsafe_path",
        ),
        (
            "link-up",
            raw_archive(&[("index.js", b'0', "", ok), ("up", b'2', "../../..", b"")]),
            "unsafe_path",
        ),
        (
            "through-link",
            raw_archive(&[("d", b'2', "sub", b""), ("d/x.js", b'0', "", ok)]),
            "unsafe_path",
        ),
        (
            "no-entry",
            raw_archive(&[("a.js", b'0', "", ok), ("b.js", b'0', "", ok)]),
            "no_entry",
        ),
        (
            "not-gzip",
            b"this is not an archive".to_vec(),
            "bad_archive",
        ),
    ];
    for (name, archive, code) in cases {
        let (status, v) = put_archive(&p, "target", archive);
        assert_eq!(status, 400, "{name}: {v}");
        assert_eq!(v["error"]["code"], code, "{name}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let huge = vec![0u8; 64 * 1024 * 1024 + 1];
    let (status, v) = put_archive(&p, "target", huge);
    assert_eq!(status, 413, "{v}");
    // Nothing was lost: the good version still serves, no host file was
    // written, and no half-unpacked tree was left behind.
    assert_eq!(get_text(&p.url("target", "/")), (200, "good".to_string()));
    assert!(!std::path::Path::new("/tmp/evil.js").exists());
    let leftovers: Vec<_> = std::fs::read_dir(p.data_dir.join("code"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty());

    // The CLI refuses to pack a link that leaves the folder.
    let d = function_dir(&[("index.js", "exports.main = () => 1;")]);
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("passwd")).unwrap();
    let out = p.thaw(&["deploy", d.path().to_str().unwrap(), "--name", "linky"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("passwd"), "{}", stderr_of(&out));

    // Unknown routes and functions are clear 404s.
    let (status, body) = get_text(&p.url("missing", "/"));
    assert_eq!(status, 404);
    assert!(body.contains("no function named `missing`"), "{body}");
}

#[test]
fn thaw_rm_removes_a_function_and_its_instances() {
    let p = Platform::start();
    p.deploy(versioned("bye").path(), "doomed");
    assert_eq!(get_text(&p.url("doomed", "/")).0, 200);
    let out = p.thaw_ok(&["rm", "doomed"]);
    assert!(out.contains("removed doomed"));
    assert_eq!(get_text(&p.url("doomed", "/")).0, 404);
    let out = p.thaw(&["rm", "doomed"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("no function named `doomed`"));
}
