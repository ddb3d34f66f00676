//! Filesystem images held ready to mount: an image file (EROFS) bound
//! read-only to a loop device, its filesystem mounted nowhere.
//!
//! A jail mounts an [`Image`] instead of binding a host directory when the
//! host must not show where the files live: a bind's line in the jail's
//! `/proc/self/mountinfo` names the host path of its root (the path within
//! the host's filesystem), while a mount of the image's own filesystem
//! names `/` on `/dev/loopN`.
//!
//! Lifetimes: the loop device is bound with autoclear, so the kernel
//! unbinds it when its last user lets go. Its users are the [`Image`] (a
//! mount of the filesystem attached to no namespace, which dies with its
//! descriptor, so with the process that holds it, even under `kill -9`)
//! and every mount made from it: inside jails (they die with their
//! processes) and on instances' attach points (until the instance is
//! cleaned up, by [`crate::cleanup_instance`] or, after a crash,
//! [`crate::cleanup_stale`]). Nothing keeps the device once all are gone.

use crate::config::ImageMount;
use crate::error::Context as _;
use crate::mounts::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::sys;
use crate::JailError;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// How often to try another free loop device when one is taken between
/// asking for it and binding it (by another process doing the same).
const LOOP_ATTEMPTS: usize = 8;

/// An image file's filesystem on a loop device, mounted nowhere yet: each
/// mount of it ([`crate::attach_image`], [`ImageMount`] in a jail's
/// config) shares one superblock and its caches, so it costs a `mount(2)`
/// (about 10 µs), not the loop device and first mount (about 1 ms).
/// Dropping it lets the device go once no mount of it is left.
#[derive(Debug)]
pub struct Image {
    device: PathBuf,
    fstype: String,
    /// A mount of the filesystem attached to no namespace: it keeps the
    /// superblock, and through it the loop device, alive.
    _held: OwnedFd,
}

impl Image {
    /// Binds the image file at `path` to a free loop device, read-only and
    /// with autoclear, and mounts its `fstype` filesystem nowhere. Needs
    /// root, loop devices (`/dev/loop-control`) and Linux 5.8.
    pub fn open(path: &Path, fstype: &str) -> Result<Image, JailError> {
        let file = fs::File::open(path).context(|| format!("open the image {}", path.display()))?;
        let control = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .context(|| "open /dev/loop-control (is the loop module loaded?)".into())?;
        let control = OwnedFd::from(control);
        let file = OwnedFd::from(file);
        let flags = sys::LO_FLAGS_READ_ONLY | sys::LO_FLAGS_AUTOCLEAR;
        let mut attempt = 0;
        let (device, bound) = loop {
            attempt += 1;
            let n = sys::loop_free_device(&control).context(|| "find a free loop device".into())?;
            let device = PathBuf::from(format!("/dev/loop{n}"));
            let opened = fs::File::open(&device)
                .map(OwnedFd::from)
                .context(|| format!("open {}", device.display()))?;
            match sys::loop_configure(&opened, &file, flags) {
                Ok(()) => break (device, opened),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < LOOP_ATTEMPTS => {}
                Err(e) => {
                    return Err(JailError::os(
                        format!("bind {} to {}", path.display(), device.display()),
                        e,
                    ))
                }
            }
        };
        // Until the filesystem holds the device, `bound` does: were the
        // mount to fail, closing it unbinds the device again.
        let held = sys::mount_detached(
            fstype,
            &device,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
        .context(|| {
            format!(
                "mount the {fstype} image {} from {}",
                path.display(),
                device.display()
            )
        })?;
        drop(bound);
        Ok(Image {
            device,
            fstype: fstype.to_string(),
            _held: held,
        })
    }

    /// The loop device the image is on (`/dev/loopN`).
    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn fstype(&self) -> &str {
        &self.fstype
    }

    /// What a jail's config needs to mount this image at `at` inside. The
    /// jail finds it by device name: keep the image until the jail has
    /// mounted it (simplest: for the instance's life).
    pub fn mount_at(&self, at: impl Into<PathBuf>) -> ImageMount {
        ImageMount {
            device: self.device.clone(),
            fstype: self.fstype.clone(),
            at: at.into(),
        }
    }
}
