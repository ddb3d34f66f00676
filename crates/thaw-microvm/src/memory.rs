//! Guest RAM in a memfd: a template's memory, shared by every VM restored
//! from it and writable by none.
//!
//! QEMU gets the memfd as its file descriptor 3 and maps it through
//! `mem-path=/proc/self/fd/3`. A template boots with `share=on` on a fresh
//! memfd, so the guest writes straight into it; once saved, the memfd is
//! sealed against writes (`F_SEAL_WRITE`, and against resizing) and every
//! restore maps it `share=off`: pages come from the one memfd and are copied
//! only when a guest writes them. The seal is what lets QEMU run in a jail
//! without being able to change the template: QEMU 7.2 opens its memory file
//! read-write even for a private mapping, and a writable template file would
//! let one compromised VMM poison every VM restored after it. A sealed
//! memfd can be opened read-write and mapped privately, but `write(2)` and
//! shared writable mappings of it fail for everyone.
//!
//! On disk the memory is `<template>/memory`, a sparse file: pages the
//! guest never wrote (all zero) are holes in it and are never put in the
//! memfd either.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::MicrovmError;

const PAGE: usize = 4096;
/// Bytes copied per read.
const CHUNK: usize = 2 << 20;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Guest RAM, held as a memfd for as long as VMs may use it.
#[derive(Debug)]
pub(crate) struct GuestMemory {
    fd: OwnedFd,
    bytes: u64,
}

impl GuestMemory {
    /// A fresh, zero-filled, writable memfd of `bytes`, for a template's boot.
    pub(crate) fn new(bytes: u64) -> Result<GuestMemory, MicrovmError> {
        let name = c"thaw-guest-ram";
        // SAFETY: plain syscall with a NUL-terminated name.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(MicrovmError::io(
                "creating a memfd for guest RAM",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create returned a fresh descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let memory = GuestMemory { fd, bytes };
        memory
            .file()
            .set_len(bytes)
            .map_err(|e| MicrovmError::io("sizing the guest RAM memfd", e))?;
        Ok(memory)
    }

    /// Reads a saved memory file into a new memfd (holes and zero pages
    /// left out) and seals it.
    pub(crate) fn load(path: &Path) -> Result<GuestMemory, MicrovmError> {
        let file = fs::File::open(path)
            .map_err(|e| MicrovmError::io(format!("opening {}", path.display()), e))?;
        let bytes = file
            .metadata()
            .map_err(|e| MicrovmError::io(format!("reading {}", path.display()), e))?
            .len();
        let memory = GuestMemory::new(bytes)?;
        copy_nonzero(&file, &memory.file(), bytes)
            .map_err(|e| MicrovmError::io(format!("loading {}", path.display()), e))?;
        memory.seal()?;
        Ok(memory)
    }

    /// Writes the memory to `path` as a sparse file (under a temporary
    /// name, then renamed).
    pub(crate) fn save(&self, path: &Path) -> Result<(), MicrovmError> {
        let tmp = path.with_extension("tmp");
        let out = fs::File::create(&tmp)
            .map_err(|e| MicrovmError::io(format!("creating {}", tmp.display()), e))?;
        out.set_len(self.bytes)
            .and_then(|()| copy_nonzero(&self.file(), &out, self.bytes))
            .and_then(|()| out.sync_all())
            .map_err(|e| MicrovmError::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| MicrovmError::io(format!("moving {} in place", path.display()), e))
    }

    /// Forbids every write and resize from now on, by anyone. Fails while a
    /// process still maps it shared and writable: the template's QEMU must
    /// be gone, which may take a moment after it was reaped.
    pub(crate) fn seal(&self) -> Result<(), MicrovmError> {
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: plain fcntl on a descriptor we own.
            if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                return Err(MicrovmError::io("sealing the template's memory", e));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The memfd as a file, for reading and writing through it (it stays
    /// owned by `self`).
    fn file(&self) -> std::mem::ManuallyDrop<fs::File> {
        // SAFETY: the File is never dropped, so the descriptor is not closed
        // twice; it lives no longer than `self`.
        std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(self.fd.as_raw_fd()) })
    }
}

/// Copies the pages of `from` that hold anything but zeros to the same
/// offsets of `to` (which is `len` bytes, zero-filled or sparse), skipping
/// the holes of `from` without reading them.
fn copy_nonzero(from: &fs::File, to: &fs::File, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let Some(data) = seek(from, offset, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(from, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let mut pos = data;
        while pos < hole {
            let n = (hole - pos).min(CHUNK as u64) as usize;
            from.read_exact_at(&mut buf[..n], pos)?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page != &ZERO_PAGE[..page.len()] {
                    to.write_all_at(page, pos + (i * PAGE) as u64)?;
                }
            }
            pos += n as u64;
        }
        offset = hole;
    }
    Ok(())
}

/// `lseek` with SEEK_DATA or SEEK_HOLE; `None` when there is no more data.
fn seek(file: &fs::File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_memory_loads_back_sparse_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let memory = GuestMemory::new(8 << 20).unwrap();
        memory.file().write_all_at(b"kernel", 4096 * 3).unwrap();
        memory.file().write_all_at(b"heap", (6 << 20) + 10).unwrap();
        let path = dir.path().join("memory");
        memory.save(&path).unwrap();

        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8 << 20);
        // Two pages written; the rest are holes.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());

        let loaded = GuestMemory::load(&path).unwrap();
        assert_eq!(loaded.bytes(), 8 << 20);
        let mut buf = [0u8; 6];
        loaded.file().read_exact_at(&mut buf, 4096 * 3).unwrap();
        assert_eq!(&buf, b"kernel");
        let mut buf = [0u8; 4];
        loaded
            .file()
            .read_exact_at(&mut buf, (6 << 20) + 10)
            .unwrap();
        assert_eq!(&buf, b"heap");

        // Sealed: no write, through this descriptor or a reopened one.
        let err = loaded.file().write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let reopened = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", loaded.fd().as_raw_fd()))
            .unwrap();
        let err = reopened.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    }
}
