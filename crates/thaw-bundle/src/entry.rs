//! Finding the file a function starts from.

use std::fs;
use std::io;
use std::path::Path;

use crate::paths::normalize_rel;
use crate::{BundleError, Settings};

const SOURCE_EXTS: [&str; 6] = ["js", "mjs", "cjs", "ts", "mts", "cts"];
const INDEX_NAMES: [&str; 5] = [
    "index.ts",
    "index.mts",
    "index.js",
    "index.mjs",
    "index.cjs",
];
/// What Node (and esbuild) try after a `main` without extension.
const MAIN_SUFFIXES: [&str; 5] = ["", ".js", ".mjs", ".cjs", ".ts"];

/// Returns the entry file of the bundle in `dir`, relative and
/// slash-separated. In order: `entry` from the settings (must exist);
/// `main` of `package.json` if it names a file (trying `.js`, `.mjs`, `.cjs`,
/// `.ts` and `/index.*` like Node); the only source file at the top of the
/// folder; the only `index.{ts,mts,js,mjs,cjs}`. Otherwise an error lists the
/// candidates and says how to choose.
pub fn find_entry(dir: &Path, settings: &Settings) -> Result<String, BundleError> {
    if let Some(entry) = &settings.entry {
        let missing = || BundleError::NoEntry {
            message: format!(
                "thaw.toml sets `entry = {entry:?}`, but the bundle has no such file: \
                 fix the path (it is relative to the folder you deploy)"
            ),
        };
        let rel = normalize_rel(entry.as_bytes())
            .map_err(|problem| BundleError::BadSettings {
                message: format!("`entry = {entry:?}` {problem}"),
            })?
            .ok_or_else(missing)?;
        return if is_file(dir, &rel) {
            Ok(rel)
        } else {
            Err(missing())
        };
    }

    if let Some(main) = package_main(dir)? {
        let found = normalize_rel(main.as_bytes())
            .ok()
            .flatten()
            .and_then(|main| {
                let index = SOURCE_EXTS.map(|ext| format!("/index.{ext}"));
                MAIN_SUFFIXES
                    .iter()
                    .copied()
                    .chain(index.iter().map(String::as_str))
                    .map(|suffix| format!("{main}{suffix}"))
                    .find(|rel| is_file(dir, rel))
            });
        // A `main` naming nothing is common (`npm init` writes index.js even
        // for TypeScript projects), so fall through to the other rules.
        if let Some(rel) = found {
            return Ok(rel);
        }
    }

    let sources = top_level_sources(dir)?;
    if let [only] = sources.as_slice() {
        return Ok(only.clone());
    }
    let indexes: Vec<&String> = sources
        .iter()
        .filter(|s| INDEX_NAMES.contains(&s.as_str()))
        .collect();
    if let [only] = indexes.as_slice() {
        return Ok((*only).clone());
    }

    let how = "choose one with `entry = \"FILE\"` in thaw.toml or `\"main\"` in package.json";
    let message = if sources.is_empty() {
        format!(
            "no entry file found: put an index.js or index.ts at the top of the folder, or {how}"
        )
    } else {
        format!(
            "cannot tell which file is the entry; found {} at the top of the folder: {how}",
            sources.join(", ")
        )
    };
    Err(BundleError::NoEntry { message })
}

/// `main` from package.json, if the file exists and has a string `main`.
fn package_main(dir: &Path) -> Result<Option<String>, BundleError> {
    let path = dir.join("package.json");
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BundleError::io(
                format!("cannot read `{}`", path.display()),
                e,
            ))
        }
    };
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| BundleError::BadPackageJson {
            message: e.to_string(),
        })?;
    Ok(json.get("main").and_then(|m| m.as_str()).map(String::from))
}

/// Source files at the top of the tree, sorted; dotfiles and type
/// declarations (`*.d.ts`) are not candidates.
fn top_level_sources(dir: &Path) -> Result<Vec<String>, BundleError> {
    let read_err = |e| BundleError::io(format!("cannot read `{}`", dir.display()), e);
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(read_err)? {
        let item = item.map_err(read_err)?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let is_source = name
            .rsplit_once('.')
            .is_some_and(|(stem, ext)| SOURCE_EXTS.contains(&ext) && !stem.ends_with(".d"));
        if is_source && !name.starts_with('.') && is_file(dir, &name) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

/// A regular file (following in-tree symlinks, as Node would).
fn is_file(dir: &Path, rel: &str) -> bool {
    fs::metadata(dir.join(rel)).is_ok_and(|m| m.is_file())
}
