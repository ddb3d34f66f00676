//! TypeScript builds with the real esbuild from runtime/node_modules, run
//! under the real node.

mod common;

use std::path::Path;
use std::process::Command;

use common::write;
use thaw_bundle::{build, find_esbuild};

fn node_eval(script: &str) -> String {
    let out = Command::new("node")
        .args(["--input-type=module", "-e", script])
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn esbuild_is_found() {
    let found = find_esbuild(None).expect("esbuild in runtime/node_modules");
    assert!(found.is_file());
    // A hint that exists wins; one that does not is skipped.
    assert_eq!(find_esbuild(Some(&found)), Some(found.clone()));
    assert!(find_esbuild(Some(Path::new("/nonexistent/esbuild"))).is_some());
}

#[test]
fn typescript_compiles_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "src/greeter.ts",
        r#"
export interface Named { name: string }
export class Greeter implements Named {
    constructor(public name: string, private count: number = 0) {}
    greet(other: string): string {
        this.count += 1;
        return `${this.name} greets ${other} (${this.count})`;
    }
}
"#,
    );
    write(
        dir,
        "src/main.ts",
        r#"
import { Greeter, type Named } from "./greeter";
import { createRequire } from "node:module";
// A user's own require and __dirname must not clash with the build's.
const require = createRequire(import.meta.url);
const os = require("node:os");
export function make(name: string): Named & Greeter { return new Greeter(name); }
export const where: string = __dirname;
export const file: string = __filename;
export const hasOs: boolean = typeof os.platform() === "string";
"#,
    );
    write(dir, "src/data.json", r#"{"answer": 42}"#);
    write(
        dir,
        "src/cjs.ts",
        // A computed name is left to Node at run time.
        "const name = \"./data\" + \".json\";\nconst data = require(name);\nexport const answer: number = data.answer;\n",
    );

    let out = build(dir, "src/main.ts", None).unwrap();
    assert_eq!(out, ".thaw/entry.mjs");
    assert!(
        !dir.join(".thaw/meta.json").exists(),
        "metafile is cleaned up"
    );
    let url = format!("file://{}", dir.join(&out).display());
    let got = node_eval(&format!(
        "const m = await import({url:?}); const g = m.make('ada'); g.greet('x'); \
         console.log([g.greet('bob'), m.where, m.file, m.hasOs].join('|'))"
    ));
    let real = dir.canonicalize().unwrap();
    assert_eq!(
        got,
        format!(
            "ada greets bob (2)|{}|{}|true",
            real.join("src").display(),
            real.join("src/main.ts").display()
        )
    );

    // CommonJS-style require of a bundle file, resolved from the entry's folder.
    let out = build(dir, "src/cjs.ts", None).unwrap();
    let url = format!("file://{}", dir.join(&out).display());
    assert_eq!(
        node_eval(&format!("console.log((await import({url:?})).answer)")),
        "42"
    );
}

#[test]
fn syntax_error_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "index.ts",
        "import { x } from \"./bad\";\nconsole.log(x);\n",
    );
    write(
        tmp.path(),
        "bad.ts",
        "export const x: number = 1;\nexport const y = ;\n",
    );
    let err = build(tmp.path(), "index.ts", None).unwrap_err();
    assert_eq!(err.code(), "build_failed");
    let msg = err.to_string();
    assert!(msg.contains("bad.ts:2:"), "{msg}");
    assert!(msg.contains("index.ts"), "{msg}");
}

#[test]
fn javascript_is_returned_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "index.mjs", "export default 1;\n");
    assert_eq!(build(tmp.path(), "index.mjs", None).unwrap(), "index.mjs");
    assert!(!tmp.path().join(".thaw").exists());
}

#[test]
fn imports_from_outside_the_bundle_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "secret.ts", "export const s = 'host secret';\n");
    let dir = tmp.path().join("bundle");
    write(
        &dir,
        "index.ts",
        "import { s } from \"../secret\";\nexport const x: string = s;\n",
    );
    let err = build(&dir, "index.ts", None).unwrap_err();
    assert_eq!(err.code(), "build_failed");
    assert!(err.to_string().contains("outside the bundle"), "{err}");
    assert!(!dir.join(".thaw").exists());
}

#[test]
fn old_build_output_link_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "index.ts", "export const x: number = 1;\n");
    write(dir, "keep.js", "original");
    // An uploaded `.thaw` symlink must not redirect esbuild's output.
    std::fs::create_dir(dir.join(".thaw")).unwrap();
    std::os::unix::fs::symlink("../keep.js", dir.join(".thaw/entry.mjs")).unwrap();
    build(dir, "index.ts", None).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.js")).unwrap(),
        "original"
    );
    assert!(!dir.join(".thaw/entry.mjs").is_symlink());
}

#[test]
fn errors_in_host_files_are_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "host-secret.json", "top secret line\n");
    let dir = tmp.path().join("bundle");
    write(
        &dir,
        "tsconfig.json",
        r#"{"extends": "../host-secret.json"}"#,
    );
    write(&dir, "index.ts", "export const x: number = 1;\n");
    let err = build(&dir, "index.ts", None).unwrap_err();
    assert_eq!(err.code(), "build_failed");
    let msg = err.to_string();
    assert!(!msg.contains("secret line"), "{msg}");
    assert!(msg.contains("outside the bundle"), "{msg}");
}

#[test]
fn a_base_config_that_is_not_there_fails_the_build() {
    // esbuild itself only warns and builds on without it; in a jail every
    // host file is "not there", so this is what stops an `extends` of one.
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "tsconfig.json",
        r#"{"extends": "./missing/base.json"}"#,
    );
    write(tmp.path(), "index.ts", "export const x: number = 1;\n");
    let err = build(tmp.path(), "index.ts", None).unwrap_err();
    assert_eq!(err.code(), "build_failed");
    let msg = err.to_string();
    assert!(
        msg.contains("Cannot find base config file \"./missing/base.json\""),
        "{msg}"
    );
    assert!(msg.contains("tsconfig.json:1:12:"), "{msg}");
    assert!(!tmp.path().join(".thaw").exists());
}

#[test]
fn the_host_sandbox_builds_as_build_does() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "index.ts", "export const x: number = 41 + 1;\n");
    let out =
        thaw_bundle::build_with(tmp.path(), "index.ts", None, &thaw_bundle::HostBuild).unwrap();
    let url = format!("file://{}", tmp.path().join(&out).display());
    assert_eq!(
        node_eval(&format!("console.log((await import({url:?})).x)")),
        "42"
    );
}
