//! Making an unpacked (and built) bundle read-only.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes the whole tree under `dir` (and `dir` itself) read-only: files 0444
/// (0555 if any execute bit was set), folders 0555. Symlinks are never
/// followed (Linux has no modes on links, so they are left alone). Walks with
/// an explicit stack so a deep tree cannot overflow the thread's stack.
pub fn seal(dir: &Path) -> io::Result<()> {
    let mut todo = vec![(dir.to_path_buf(), fs::symlink_metadata(dir)?)];
    while let Some((path, meta)) = todo.pop() {
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            // 0555 keeps r and x, so listing and descending still work after.
            fs::set_permissions(&path, Permissions::from_mode(0o555))?;
            for child in fs::read_dir(&path)? {
                let child = child?;
                // DirEntry::metadata does not follow symlinks.
                todo.push((child.path(), child.metadata()?));
            }
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mode = if exec { 0o555 } else { 0o444 };
            fs::set_permissions(&path, Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}
