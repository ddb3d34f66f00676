//! Packing a user's folder into a deterministic `.tar.gz`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use crate::paths::{check_lengths, check_link_target, human, show};
use crate::{BundleError, Limits, BUILD_DIR};

/// The result of [`pack_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The `.tar.gz` bytes, ready to upload.
    pub archive: Vec<u8>,
    /// Number of regular files in the archive (folders and symlinks not counted).
    pub files: u64,
    /// Sum of the regular files' sizes.
    pub unpacked_bytes: u64,
}

/// The gitignore-syntax file that leaves paths out of a bundle.
const IGNORE_FILE: &str = ".thawignore";

enum Kind {
    Dir,
    File { size: u64, exec: bool },
    Link(String),
}

struct Item {
    rel: String,
    path: PathBuf,
    kind: Kind,
}

/// Packs `dir` into a `.tar.gz`. Honours `.thawignore` (gitignore syntax) but
/// not `.gitignore`, so `node_modules` and dotfiles go in; `.git/` and the
/// build output folder `.thaw/` never do. Symlinks are stored as links and
/// must stay inside `dir`. The archive is deterministic (sorted, mtime 0,
/// uid/gid 0, modes 0644/0755), so the same folder gives the same
/// [`crate::content_hash`].
pub fn pack_dir(dir: &Path, limits: &Limits) -> Result<Packed, BundleError> {
    let bad_dir = |problem: &str| BundleError::BadDir {
        path: dir.display().to_string(),
        problem: problem.to_string(),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(bad_dir("it is not a folder")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(bad_dir("it does not exist")),
        Err(e) => {
            return Err(BundleError::io(
                format!("cannot read `{}`", dir.display()),
                e,
            ))
        }
    }

    let items = collect(dir)?;
    let entries = items.len() as u64;
    let files = items
        .iter()
        .filter(|i| matches!(i.kind, Kind::File { .. }))
        .count() as u64;
    let unpacked_bytes: u64 = items
        .iter()
        .map(|i| match i.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    if entries > limits.max_entries {
        return Err(BundleError::TooLarge {
            what: "the number of files, folders and symlinks",
            found: entries.to_string(),
            limit: limits.max_entries.to_string(),
        });
    }
    if unpacked_bytes > limits.max_unpacked_bytes {
        return Err(BundleError::TooLarge {
            what: "the total size of the files",
            found: human(unpacked_bytes),
            limit: human(limits.max_unpacked_bytes),
        });
    }

    let too_big = || BundleError::TooLarge {
        what: "the compressed archive",
        found: format!("more than {}", human(limits.max_archive_bytes)),
        limit: human(limits.max_archive_bytes),
    };
    let out = CappedVec {
        buf: Vec::new(),
        cap: limits.max_archive_bytes,
    };
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    for item in &items {
        append(&mut tar, item).map_err(|e| {
            if is_over_cap(&e) {
                too_big()
            } else {
                BundleError::io(format!("cannot pack `{}`", item.path.display()), e)
            }
        })?;
    }
    let finish = |tar: tar::Builder<GzEncoder<CappedVec>>| tar.into_inner()?.finish();
    let archive = match finish(tar) {
        Ok(out) => out.buf,
        Err(e) if is_over_cap(&e) => return Err(too_big()),
        Err(e) => return Err(BundleError::io("cannot write the archive", e)),
    };
    Ok(Packed {
        archive,
        files,
        unpacked_bytes,
    })
}

/// Walks `dir` and returns what goes in the archive, sorted by path.
fn collect(dir: &Path) -> Result<Vec<Item>, BundleError> {
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false) // no .gitignore, .ignore, git excludes or hidden-file rules
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|e| {
            let name = e.file_name();
            !(name == ".git" || (e.depth() == 1 && name == BUILD_DIR))
        })
        .build();

    let mut items = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| {
            BundleError::io("cannot read the folder", io::Error::other(e.to_string()))
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path().to_path_buf();
        let rel = rel_name(dir, &path)?;
        // What the server would refuse to unpack (before the folder it
        // unpacks into is known; that part is its own check).
        check_lengths(rel.as_bytes(), None).map_err(|problem| BundleError::PathTooLong {
            what: "file",
            path: show(rel.as_bytes()),
            problem,
        })?;
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| BundleError::io(format!("cannot read `{}`", path.display()), e))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File {
                size: meta.len(),
                exec: meta.permissions().mode() & 0o111 != 0,
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| BundleError::io(format!("cannot read `{}`", path.display()), e))?;
            let target_bytes = target.as_os_str().as_encoded_bytes();
            if let Err(problem) = check_link_target(&rel, target_bytes) {
                return Err(BundleError::UnsafePath {
                    what: "symlink",
                    path: format!("{rel} -> {}", show(target_bytes)),
                    problem: format!("{problem}; or leave it out with `{IGNORE_FILE}`"),
                });
            }
            if let Err(problem) = check_lengths(target_bytes, None) {
                return Err(BundleError::PathTooLong {
                    what: "symlink",
                    path: format!("{} -> {}", show(rel.as_bytes()), show(target_bytes)),
                    problem,
                });
            }
            Kind::Link(target.to_string_lossy().into_owned())
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "named pipe (fifo)"
            } else {
                "device file"
            };
            return Err(BundleError::Unsupported {
                what: "file",
                path: rel,
                kind: kind.into(),
            });
        };
        items.push(Item { rel, path, kind });
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(items)
}

/// `path` relative to `dir`, slash-separated; must be UTF-8 so every server
/// and tool sees the same name.
fn rel_name(dir: &Path, path: &Path) -> Result<String, BundleError> {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let parts: Option<Vec<&str>> = rel.iter().map(|p| p.to_str()).collect();
    parts
        .map(|p| p.join("/"))
        .ok_or_else(|| BundleError::UnsafePath {
            what: "file",
            path: show(rel.as_os_str().as_encoded_bytes()),
            problem: "has a name that is not valid UTF-8: rename it".into(),
        })
}

fn append<W: Write>(tar: &mut tar::Builder<W>, item: &Item) -> io::Result<()> {
    // Header::new_gnu starts zeroed: mtime, uid, gid and user names stay empty.
    let mut header = Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    match &item.kind {
        Kind::Dir => {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &item.rel, io::empty())
        }
        Kind::File { exec, .. } => {
            // Read whole so the header size always matches the data, even if
            // the file changes while we pack.
            let data = fs::read(&item.path)?;
            header.set_entry_type(EntryType::Regular);
            header.set_mode(if *exec { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, &item.rel, data.as_slice())
        }
        Kind::Link(target) => {
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &item.rel, target)
        }
    }
}

/// An in-memory sink that fails once it holds more than `cap` bytes, so a
/// folder that compresses badly never fills memory past the archive limit.
struct CappedVec {
    buf: Vec<u8>,
    cap: u64,
}

impl Write for CappedVec {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if (self.buf.len() + data.len()) as u64 > self.cap {
            return Err(io::Error::other(OverCap));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct OverCap;

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("archive size limit reached")
    }
}

impl std::error::Error for OverCap {}

fn is_over_cap(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverCap>())
}
