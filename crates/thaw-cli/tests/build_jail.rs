//! The TypeScript build is confined like a function: with `thaw up --jail
//! on`, esbuild runs in a jail of its own that holds only esbuild and the
//! bundle, so a tsconfig.json `extends` or an import naming a host file
//! fails the deploy without the file being read. Under `--jail off` the
//! build runs on the host as before (the control below).
//!
//! These need a host that can run the jail (root, Linux 5.12+, cgroups);
//! `thaw up --jail on` refuses to start elsewhere, so they fail loudly
//! rather than pass without a jail.

mod common;

use common::{function_dir, http, stderr_of, Platform};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A handler whose answer is its own stack, `__filename` and a JSX element
/// built with whichever factory the build chose.
const MAIN_TSX: &str = r#"import { where } from "./lib";
(globalThis as any).hostJsx = (tag: string) => `host-factory:${tag}`;
(globalThis as any).React = { createElement: (tag: string) => `default-factory:${tag}` };

export const handler = async (): Promise<object> => {
  const stack: string = new Error("here").stack ?? "";
  const element: unknown = <div />;
  return { statusCode: 200, body: JSON.stringify({ stack, file: where(), element }) };
};
"#;
const LIB_TS: &str = "export function where(): string {\n  return __filename;\n}\n";

fn deploy(p: &Platform, dir: &Path, name: &str) -> std::process::Output {
    p.thaw(&["deploy", dir.to_str().unwrap(), "--name", name])
}

fn answer(p: &Platform, name: &str) -> serde_json::Value {
    let r = http().get(p.url(name, "/")).send().unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().unwrap()).unwrap()
}

/// What the data directory holds of build jails: nothing once a deploy
/// is over.
fn build_jails_left(p: &Platform) -> Vec<String> {
    std::fs::read_dir(p.data_dir.join("build-jails"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn typescript_deploys_from_a_jailed_build_and_traces_point_at_the_ts_lines() {
    let p = Platform::start_with(&["--jail", "on"]);
    let dir = function_dir(&[
        ("main.tsx", MAIN_TSX),
        ("lib.ts", LIB_TS),
        ("thaw.toml", "entry = \"main.tsx\"\n"),
    ]);
    let out = deploy(&p, dir.path(), "typed");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v = answer(&p, "typed");
    // The inline source map names the sources relative to the output, as
    // an unjailed build does: Node maps the stack to the .tsx line.
    let stack = v["stack"].as_str().unwrap();
    assert!(stack.contains("/code/main.tsx:6:"), "{stack}");
    assert_eq!(v["file"], "/code/main.tsx");
    assert_eq!(v["element"], "default-factory:div");

    // The build's jail is gone, and its output belongs to thaw again.
    assert_eq!(build_jails_left(&p), Vec::<String>::new());
    let code = p.data_dir.join("code");
    let built: Vec<_> = std::fs::read_dir(&code)
        .unwrap()
        .flatten()
        .map(|e| e.path().join(".thaw/entry.mjs"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(built.len(), 1, "{built:?}");
    let meta = std::fs::symlink_metadata(&built[0]).unwrap();
    assert!(meta.is_file());
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.mode() & 0o7777, 0o444, "sealed");
    let folder = std::fs::metadata(built[0].parent().unwrap()).unwrap();
    assert_eq!((folder.uid(), folder.mode() & 0o7777), (0, 0o555));

    // A syntax error still names the file and line, relative to the bundle.
    let bad = function_dir(&[
        (
            "index.ts",
            "import { x } from \"./sub/bad\";\nexport const handler = async () => x;\n",
        ),
        (
            "sub/bad.ts",
            "export const x: number = 1;\nexport const y = ;\n",
        ),
    ]);
    let out = deploy(&p, bad.path(), "typed");
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("\n    sub/bad.ts:2:17:"), "{err}");
    assert!(!err.contains("src/"), "{err}");
    assert_eq!(v, answer(&p, "typed"), "the previous version keeps serving");
}

/// A file only root can read, outside any bundle, whose settings would
/// show in the function's answer.
fn host_base_config(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("host-base.json");
    std::fs::write(
        &base,
        r#"{"compilerOptions": {"jsx": "react", "jsxFactory": "hostJsx"}, "hostSecret": "HOST-SECRET-7f3a"}"#,
    )
    .unwrap();
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    base
}

fn extends(base: &Path) -> tempfile::TempDir {
    function_dir(&[
        ("main.tsx", MAIN_TSX),
        ("lib.ts", LIB_TS),
        (
            "tsconfig.json",
            &format!(r#"{{"extends": "{}"}}"#, base.display()),
        ),
        ("thaw.toml", "entry = \"main.tsx\"\n"),
    ])
}

#[test]
fn a_tsconfig_extends_of_a_host_file_fails_the_deploy_without_reading_it() {
    let host = tempfile::tempdir().unwrap();
    let base = host_base_config(host.path());
    // A FIFO with no writer: whoever opens it to read waits for one, so a
    // build that tried to read it could not fail at once.
    let fifo = host.path().join("host-fifo.json");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscall on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let p = Platform::start_with(&["--jail", "on"]);
    for (host_file, name) in [(&base, "by-file"), (&fifo, "by-fifo")] {
        let dir = extends(host_file);
        let out = deploy(&p, dir.path(), name);
        assert!(!out.status.success(), "{name} deployed");
        let err = stderr_of(&out);
        assert!(
            err.contains(&format!(
                "Cannot find base config file \"{}\"",
                host_file.display()
            )),
            "{err}"
        );
        assert!(err.contains("\n    tsconfig.json:1:12:"), "{err}");
        assert!(err.contains("sees only the deployed folder"), "{err}");
        assert!(!err.contains("HOST-SECRET"), "{err}");
    }
    // Nobody holds the FIFO open to read it: a writer finds no reader.
    // SAFETY: plain syscalls on a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    assert_eq!(fd, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    assert_eq!(build_jails_left(&p), Vec::<String>::new());
    drop(p);

    // The control: the same bundle built on the host (`--jail off`) reads
    // the host file, and its factory shows in the answer.
    let p = Platform::start_with(&["--jail", "off"]);
    let dir = extends(&base);
    let out = deploy(&p, dir.path(), "by-file");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(answer(&p, "by-file")["element"], "host-factory:div");
}

#[test]
fn imports_of_host_files_fail_the_deploy_and_bring_in_nothing() {
    let host = tempfile::tempdir().unwrap();
    let marker = host.path().join("host-module.js");
    std::fs::write(&marker, "export default \"HOST-MARKER-91c2\";\n").unwrap();
    let up = "../".repeat(16);
    let p = Platform::start_with(&["--jail", "on"]);
    let cases = [
        // Not in the jail at all: esbuild cannot resolve it.
        (
            format!("import x from {:?};", marker.display().to_string()),
            "Could not resolve",
        ),
        // The jail's own /etc/hostname: found, but outside the bundle.
        (
            "import x from \"/etc/hostname\";".to_string(),
            "it imports `/etc/hostname`, which is outside the bundle",
        ),
        // The jail's own /etc/passwd, not JavaScript: its excerpt is
        // withheld whoever's it is.
        (
            format!("import x from \"{up}etc/passwd\";"),
            "esbuild failed on a file outside the bundle",
        ),
    ];
    for (i, (import, expected)) in cases.iter().enumerate() {
        let dir = function_dir(&[(
            "index.ts",
            &format!("{import}\nexport const handler = async () => ({{ statusCode: 200, body: String(x) }});\n"),
        )]);
        let out = deploy(&p, dir.path(), &format!("leak-{i}"));
        assert!(!out.status.success(), "{import} deployed");
        let err = stderr_of(&out);
        assert!(err.contains(expected), "{import}: {err}");
        for leaked in ["HOST-MARKER", "root:x:0:0", "/bin/bash"] {
            assert!(!err.contains(leaked), "{import}: {err}");
        }
    }
    let ls = p.thaw_ok(&["ls"]);
    assert!(!ls.contains("leak-"), "{ls}");
    assert_eq!(build_jails_left(&p), Vec::<String>::new());
}
