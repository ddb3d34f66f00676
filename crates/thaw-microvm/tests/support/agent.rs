//! The `thaw-agent` binary and the persistent image cache, for any test
//! that boots VMs: thaw-microvm's own, and thaw-cli's end-to-end tests
//! (which include this file with `#[path]`). Plain std only, so that
//! including it needs no dependency.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `target/tmp` (only integration tests get CARGO_TARGET_TMPDIR).
fn target_tmp() -> PathBuf {
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target/tmp"),
    }
}

/// Persistent across runs, so the kernel download and image build happen once.
pub fn data_dir() -> PathBuf {
    let dir = target_tmp().join("thaw-microvm-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds thaw-agent in a target directory of its own (the outer cargo
/// holds the lock on ours while tests run) and returns the binary.
pub fn agent_binary() -> PathBuf {
    let target = target_tmp().join("agent-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "thaw-agent", "--target-dir"])
        .arg(&target)
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build -p thaw-agent");
    assert!(status.success(), "building thaw-agent failed");
    target.join("release/thaw-agent")
}

/// Builds thaw-jail's own binary (`thaw-jail __jail ...`, the entry point
/// the `thaw` binary also has), beside the agent, and returns it.
pub fn jail_binary() -> PathBuf {
    let target = target_tmp().join("agent-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "thaw-jail",
            "--bin",
            "thaw-jail",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build -p thaw-jail");
    assert!(status.success(), "building thaw-jail failed");
    target.join("release/thaw-jail")
}
