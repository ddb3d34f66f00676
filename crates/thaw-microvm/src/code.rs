//! Code images: a function's read-only code tree as a filesystem image the
//! guest mounts from its code drive after a restore. The image is the one
//! thaw-sandbox builds for every driver (`thaw_sandbox::build_erofs_image`,
//! kept beside the tree); the code drive has a fixed capacity, so here it
//! is padded to it.

use std::fs;
use std::path::Path;

use crate::vm::CODE_DRIVE_BYTES;
use crate::MicrovmError;

/// The filesystem type of images from [`build_code_image`].
pub const CODE_FSTYPE: &str = thaw_sandbox::IMAGE_FSTYPE;

/// Builds the EROFS image of `tree` at `out` and pads it sparsely to the
/// code drive's fixed capacity. Needs `mkfs.erofs` (`erofs-utils`).
pub fn build_code_image(tree: &Path, out: &Path) -> Result<(), MicrovmError> {
    thaw_sandbox::build_erofs_image(tree, out).map_err(|e| MicrovmError::Image(e.to_string()))?;
    pad_code_image(out)
}

/// Pads the image at `image` sparsely to the code drive's capacity, unless
/// it is already that long (an image the process driver built beside the
/// same tree is not padded; padding it does not disturb a loop device
/// reading it). Fails if the image is larger than the drive.
pub(crate) fn pad_code_image(image: &Path) -> Result<(), MicrovmError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| MicrovmError::io("opening the code image", e))?;
    let len = file
        .metadata()
        .map_err(|e| MicrovmError::io("reading the code image size", e))?
        .len();
    if len > CODE_DRIVE_BYTES {
        return Err(MicrovmError::Image(format!(
            "the code image {} takes {} MiB; the limit is {} MiB",
            image.display(),
            len >> 20,
            CODE_DRIVE_BYTES >> 20
        )));
    }
    if len < CODE_DRIVE_BYTES {
        file.set_len(CODE_DRIVE_BYTES)
            .map_err(|e| MicrovmError::io("padding the code image", e))?;
    }
    Ok(())
}
