//! Code images: a function's read-only code tree as a filesystem image the
//! guest mounts from its code drive after a restore.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::vm::CODE_DRIVE_BYTES;
use crate::MicrovmError;

/// The filesystem type of images from [`build_code_image`].
pub const CODE_FSTYPE: &str = "erofs";

/// Builds an EROFS image of `tree` at `out` (owned by root, fixed
/// timestamps, so the same tree gives the same bytes), padded sparsely to
/// the code drive's fixed capacity. Needs `mkfs.erofs` (`erofs-utils`).
pub fn build_code_image(tree: &Path, out: &Path) -> Result<(), MicrovmError> {
    let tmp = out.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let output = Command::new("mkfs.erofs")
        .args([
            "--quiet",
            "--all-root",
            "-T0",
            "-U00000000-0000-0000-0000-000000000000",
        ])
        .arg(&tmp)
        .arg(tree)
        .output()
        .map_err(|e| MicrovmError::io("running mkfs.erofs (install the erofs-utils package)", e))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(MicrovmError::Image(format!(
            "mkfs.erofs {} failed: {}",
            tree.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .map_err(|e| MicrovmError::io("opening the code image", e))?;
    let len = file
        .metadata()
        .map_err(|e| MicrovmError::io("reading the code image size", e))?
        .len();
    if len > CODE_DRIVE_BYTES {
        let _ = fs::remove_file(&tmp);
        return Err(MicrovmError::Image(format!(
            "the code of {} takes {} MiB as an image; the limit is {} MiB",
            tree.display(),
            len >> 20,
            CODE_DRIVE_BYTES >> 20
        )));
    }
    file.set_len(CODE_DRIVE_BYTES)
        .map_err(|e| MicrovmError::io("padding the code image", e))?;
    drop(file);
    fs::rename(&tmp, out)
        .map_err(|e| MicrovmError::io(format!("moving the code image to {}", out.display()), e))
}
