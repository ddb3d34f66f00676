//! A writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Reproducible by construction: the caller adds entries in a fixed order,
//! and every entry gets uid 0, gid 0, mtime 0 and an inode number counted
//! from 1, so the same inputs give the same bytes.

use std::io::{self, Read, Write};

const TRAILER: &str = "TRAILER!!!";

pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    pub(crate) fn dir(&mut self, path: &str) -> io::Result<()> {
        self.header(path, libc::S_IFDIR | 0o755, 2, 0, (0, 0))
    }

    pub(crate) fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.header(path, libc::S_IFCHR | mode, 1, 0, (major, minor))
    }

    /// A regular file of `size` bytes read from `data`.
    pub(crate) fn file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.header(path, libc::S_IFREG | mode, 1, size, (0, 0))?;
        let copied = io::copy(&mut data.take(size), &mut CountingWriter(self))?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {copied}"),
            ));
        }
        self.pad()
    }

    /// Writes the trailer and pads the archive to a 512-byte boundary.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 1, 0, (0, 0))?;
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.raw(&vec![0u8; 512 - rem])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: newc entries are limited to 4 GiB"),
            )
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.raw(header.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.raw(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

struct CountingWriter<'a, W: Write>(&'a mut CpioWriter<W>);

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.out.write(buf)?;
        self.0.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_newc_aligned_and_reproducible() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.dir("/etc").unwrap();
            w.file("/etc/a", 0o644, 3, &mut &b"abc"[..]).unwrap();
            w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
            w.finish().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        assert_eq!(a.len() % 512, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("etc/a\0"));
        assert!(text.contains("TRAILER!!!"));
        // The file's data starts on a 4-byte boundary right after its name.
        let at = a.windows(6).position(|w| w == b"etc/a\0").unwrap() + 6;
        let data_at = at.div_ceil(4) * 4;
        assert_eq!(&a[data_at..data_at + 3], b"abc");
    }

    #[test]
    fn short_input_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/x", 0o644, 10, &mut &b"abc"[..]).is_err());
    }
}
