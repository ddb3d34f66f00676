//! Unpacking an untrusted `.tar.gz`. Every path, type and size is checked
//! here; the tar crate only splits the stream into entries.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

use crate::paths::{check_lengths, check_link_target, human, normalize_rel, show, MAX_PATH_BYTES};
use crate::{BundleError, Limits};

/// The result of [`unpack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Number of regular files written (folders and symlinks not counted).
    pub files: u64,
    /// Bytes of file content actually written.
    pub bytes: u64,
}

/// What a path in `dest` is, as created by us.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    File,
    Dir,
    /// A folder created because an entry below it came first; a later
    /// folder entry for it is fine, anything else is a clash.
    ImplicitDir,
    Link,
}

/// Unpacks a hostile `.tar.gz` into `dest`, which must not exist yet and is
/// created (with its parents). Only regular files, folders and symlinks are
/// accepted; paths and symlink targets must stay inside the bundle; nothing
/// is ever written through a symlink or over an earlier entry. Files get mode
/// 0644 (0755 if the archive gave any execute bit), folders 0755. Sizes are
/// counted from the bytes really written. On any error `dest` is removed.
pub fn unpack(archive: &[u8], dest: &Path, limits: &Limits) -> Result<Unpacked, BundleError> {
    if archive.len() as u64 > limits.max_archive_bytes {
        return Err(BundleError::TooLarge {
            what: "the compressed archive",
            found: human(archive.len() as u64),
            limit: human(limits.max_archive_bytes),
        });
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| BundleError::io(format!("cannot create `{}`", parent.display()), e))?;
    }
    // create_dir fails if dest exists, so we never mix into an old tree.
    make_dir(dest)
        .map_err(|e| BundleError::io(format!("cannot create `{}`", dest.display()), e))?;
    let result = unpack_into(archive, dest, limits);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_into(archive: &[u8], dest: &Path, limits: &Limits) -> Result<Unpacked, BundleError> {
    // The tar crate reads headers and long names into memory and skips entry
    // data on its own, so cap the whole decompressed stream too: file data
    // plus a generous allowance for headers and padding (gzip bombs).
    let tripped = Rc::new(Cell::new(false));
    let stream = Capped {
        inner: GzDecoder::new(archive),
        left: limits
            .max_unpacked_bytes
            .saturating_add(limits.max_entries.saturating_mul(4096))
            .saturating_add(1 << 20),
        tripped: tripped.clone(),
    };
    let stream_error = |e: io::Error| {
        if tripped.get() {
            BundleError::TooLarge {
                what: "the unpacked archive",
                found: format!("more than {}", human(limits.max_unpacked_bytes)),
                limit: human(limits.max_unpacked_bytes),
            }
        } else {
            BundleError::BadArchive {
                reason: e.to_string(),
            }
        }
    };

    let mut tar = tar::Archive::new(stream);
    let mut made: HashMap<String, Made> = HashMap::new();
    let mut done = Unpacked { files: 0, bytes: 0 };
    let mut entries: u64 = 0;
    let mut count = |n: u64| {
        entries += n;
        if entries > limits.max_entries {
            return Err(BundleError::TooLarge {
                what: "the number of files, folders and symlinks",
                found: format!("more than {}", limits.max_entries),
                limit: limits.max_entries.to_string(),
            });
        }
        Ok(())
    };

    for entry in tar.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue; // pax global metadata (comments, defaults): nothing to write
        }
        let raw = entry.path_bytes().into_owned();
        let unsafe_path = |problem: &str| BundleError::UnsafePath {
            what: "archive entry",
            path: show(&raw),
            problem: problem.to_string(),
        };
        let too_long = |path: String, problem: String| BundleError::PathTooLong {
            what: "archive entry",
            path,
            problem,
        };
        if raw.len() > MAX_PATH_BYTES {
            // Refused for its length (which check_lengths is sure to do)
            // rather than for what normalize_rel would find in it.
            check_lengths(&raw, None).map_err(|p| too_long(show(&raw), p))?;
        }
        let rel = match normalize_rel(&raw).map_err(unsafe_path)? {
            Some(rel) => rel,
            // The root folder itself ("./"): it exists already.
            None if kind == EntryType::Directory => continue,
            None => return Err(unsafe_path("names the bundle folder itself")),
        };
        // Before any file-system call: a name the kernel would refuse
        // (ENAMETOOLONG) is the archive's fault, not the host's.
        check_lengths(rel.as_bytes(), Some(dest)).map_err(|p| too_long(show(rel.as_bytes()), p))?;
        let unsupported = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => None,
            EntryType::Symlink => None,
            EntryType::Link => Some("hard link".to_string()),
            EntryType::Char | EntryType::Block => Some("device file".to_string()),
            EntryType::Fifo => Some("named pipe (fifo)".to_string()),
            EntryType::GNUSparse => Some("sparse file".to_string()),
            other => Some(format!("tar entry of type {:?}", other.as_byte() as char)),
        };
        if let Some(kind) = unsupported {
            return Err(BundleError::Unsupported {
                what: "archive entry",
                path: rel,
                kind,
            });
        }

        let created = make_parents(dest, &rel, &mut made)?;
        count(created + 1)?;
        let previous = made.get(&rel).copied();
        let clash = match previous {
            None => false,
            Some(Made::ImplicitDir) => kind != EntryType::Directory,
            Some(_) => true,
        };
        if clash {
            return Err(BundleError::Duplicate { path: rel });
        }
        let path = dest.join(&rel);
        let io_err = |e: io::Error| BundleError::io(format!("cannot write `{rel}`"), e);
        match kind {
            EntryType::Directory => {
                if previous.is_none() {
                    make_dir(&path).map_err(io_err)?;
                }
                made.insert(rel, Made::Dir);
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                let target = target.unwrap_or_default();
                if let Err(problem) = check_link_target(&rel, &target) {
                    return Err(BundleError::UnsafePath {
                        what: "symlink",
                        path: format!("{rel} -> {}", show(&target)),
                        problem: problem.to_string(),
                    });
                }
                if let Err(problem) = check_lengths(&target, None) {
                    return Err(BundleError::PathTooLong {
                        what: "symlink",
                        path: format!("{} -> {}", show(rel.as_bytes()), show(&target)),
                        problem,
                    });
                }
                // check_link_target proved the target is UTF-8.
                let target = String::from_utf8_lossy(&target).into_owned();
                std::os::unix::fs::symlink(target, &path).map_err(io_err)?;
                made.insert(rel, Made::Link);
            }
            _ => {
                let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
                // create_new is O_CREAT|O_EXCL: it never follows or reuses an
                // existing name, and make_parents saw no symlink on the way.
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err)?;
                let budget = limits.max_unpacked_bytes - done.bytes;
                let written = copy_capped(&mut entry, &mut file, budget, &rel, &stream_error)?;
                if written > budget {
                    return Err(BundleError::TooLarge {
                        what: "the unpacked archive",
                        found: format!("more than {}", human(limits.max_unpacked_bytes)),
                        limit: human(limits.max_unpacked_bytes),
                    });
                }
                if written != entry.size() {
                    return Err(BundleError::BadArchive {
                        reason: format!("`{rel}` is cut short"),
                    });
                }
                let mode = if exec { 0o755 } else { 0o644 };
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(io_err)?;
                done.bytes += written;
                done.files += 1;
                made.insert(rel, Made::File);
            }
        }
    }
    Ok(done)
}

/// Creates the missing folders above `rel`, refusing to go through a symlink
/// or a file. Returns how many folders it created.
fn make_parents(
    dest: &Path,
    rel: &str,
    made: &mut HashMap<String, Made>,
) -> Result<u64, BundleError> {
    let mut created = 0;
    for (i, _) in rel.match_indices('/') {
        let parent = &rel[..i];
        match made.get(parent) {
            Some(Made::Dir | Made::ImplicitDir) => {}
            Some(Made::Link) => {
                return Err(BundleError::UnsafePath {
                    what: "archive entry",
                    path: rel.to_string(),
                    problem: format!(
                        "is inside the symlink `{parent}`: nothing may be written through a link"
                    ),
                })
            }
            Some(Made::File) => {
                return Err(BundleError::Duplicate {
                    path: parent.to_string(),
                })
            }
            None => {
                make_dir(&dest.join(parent))
                    .map_err(|e| BundleError::io(format!("cannot create `{parent}`"), e))?;
                made.insert(parent.to_string(), Made::ImplicitDir);
                created += 1;
            }
        }
    }
    Ok(created)
}

/// mkdir with mode 0755 whatever the umask; fails if the name exists.
fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o755).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(0o755))
}

/// Copies at most `budget + 1` bytes, so the caller can tell "over budget"
/// from "exactly at budget" without reading a bomb to its end. Read errors
/// are the archive's fault, write errors the disk's.
fn copy_capped(
    from: &mut impl Read,
    to: &mut impl Write,
    budget: u64,
    rel: &str,
    stream_error: &dyn Fn(io::Error) -> BundleError,
) -> Result<u64, BundleError> {
    let mut from = from.take(budget.saturating_add(1));
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e)),
        };
        to.write_all(&buf[..n])
            .map_err(|e| BundleError::io(format!("cannot write `{rel}`"), e))?;
        total += n as u64;
    }
}

/// A reader that fails after `left` bytes and records that it did.
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Only a real read past the cap counts, not a probe at the end.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.tripped.set(true);
            return Err(io::Error::other("archive expands too far"));
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}
