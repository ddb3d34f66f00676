//! The runtime shim (`runtime/shim/shim.mjs`) built into thaw, so that a
//! `thaw` binary is all a host needs besides Node. Every driver runs it:
//! the process driver from the data directory, the microvm driver from
//! the guest image built with it.

use std::io;
use std::path::{Path, PathBuf};

/// The shim's source, as built into this thaw.
pub const SHIM_SOURCE: &str = include_str!("../../../runtime/shim/shim.mjs");

/// Writes the built-in shim to `<dir>/runtime/<hash>/shim.mjs` and returns
/// that path (see [`write_shim`]).
pub fn write_builtin_shim(dir: &Path) -> io::Result<PathBuf> {
    write_shim(dir, SHIM_SOURCE)
}

/// Writes the shim `source` to `<dir>/runtime/<hash>/shim.mjs` (once) and
/// returns that path. The hash is of the content, so a file already there
/// is this very shim and is left as it is: a shim's file never changes
/// once runtimes use it, and its path names its content.
pub fn write_shim(dir: &Path, source: &str) -> io::Result<PathBuf> {
    use sha2::Digest as _;
    let hash = hex::encode(&sha2::Sha256::digest(source.as_bytes())[..8]);
    let dir = dir.join("runtime").join(hash);
    let path = dir.join("shim.mjs");
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("shim.mjs.tmp");
        std::fs::write(&tmp, source)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}
