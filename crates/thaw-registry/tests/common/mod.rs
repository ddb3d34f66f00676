//! Helpers shared by the registry's tests: a registry in a scratch
//! directory and real deploys into it.

#![allow(dead_code)]

use std::path::Path;
use thaw_registry::{FunctionId, Registry, Version};

pub const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn open(dir: &Path) -> Registry {
    Registry::open(dir, Some(KEY)).unwrap()
}

/// Deploys a one-file function answering `text` as `f`'s new `latest`.
pub fn deploy(reg: &Registry, dir: &Path, f: &FunctionId, text: &str) -> Version {
    deploy_with(reg, dir, f, text, None)
}

/// As [`deploy`], with a `thaw.toml`.
pub fn deploy_with(
    reg: &Registry,
    dir: &Path,
    f: &FunctionId,
    text: &str,
    toml: Option<&str>,
) -> Version {
    let src = dir.join(format!("src-{}-{}-{text}", f.namespace, f.name));
    std::fs::create_dir_all(&src).unwrap();
    if let Some(toml) = toml {
        std::fs::write(src.join("thaw.toml"), toml).unwrap();
    }
    std::fs::write(
        src.join("index.mjs"),
        format!("export const handler = async () => ({{ statusCode: 200, body: {text:?} }});\n"),
    )
    .unwrap();
    let limits = thaw_bundle::Limits::default();
    let packed = thaw_bundle::pack_dir(&src, &limits).unwrap();
    let tree = reg.store_code(&packed.archive, &limits, None).unwrap();
    let v = reg
        .add_version(f, &tree, packed.archive.len() as u64, "admin")
        .unwrap();
    reg.activate(&v, true).unwrap();
    v
}
