//! Thin, safe wrappers over the few system calls the jail makes, each
//! returning `io::Result` so callers can add context. No policy lives here.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub(crate) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string or null, as mount(2) accepts.
    cvt(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map(drop)
}

/// Lazily unmounts the topmost mount at `target`, never following a symlink
/// planted there.
pub(crate) fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: plain syscall on a NUL-terminated path.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) })
        .map(drop)
}

/// statfs(2): what filesystem `path` is on, with its counts and mount flags.
pub(crate) fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let path = cstring(path)?;
    // SAFETY: a zeroed statfs is a valid out buffer for the call to fill.
    let mut out: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    cvt(unsafe { libc::statfs(path.as_ptr(), &mut out) })?;
    Ok(out)
}

// Loop devices (linux/loop.h; LOOP_CONFIGURE is Linux 5.8). libc has neither
// the ioctls nor the structs.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// The device refuses writes.
pub(crate) const LO_FLAGS_READ_ONLY: u32 = 1;
/// The device lets go of its file when its last user closes it.
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The number of a loop device bound to no file (`/dev/loopN`), made if
/// none is free. Another process may take it before we bind it.
pub(crate) fn loop_free_device(control: &OwnedFd) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument.
    let n = cvt(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    Ok(n as u32)
}

/// Binds the loop device open at `device` to `file`, whole, with `flags`
/// (`LO_FLAGS_*`). EBUSY: someone else bound it first.
pub(crate) fn loop_configure(device: &OwnedFd, file: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: all-zero is a valid loop_config (no offset, no size limit,
    // default block size); the fields that matter are set below.
    let mut config: LoopConfig = unsafe { std::mem::zeroed() };
    config.fd = file.as_raw_fd() as u32;
    config.info.lo_flags = flags;
    // SAFETY: `config` is a valid loop_config that outlives the call.
    cvt(unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) }).map(drop)
}

// The new mount API's filesystem contexts (Linux 5.2). libc has the
// syscall numbers but not these constants.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt_long(ret)?;
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A new filesystem of type `fstype` mounted nowhere, made from `source`
/// (a block device) read-only: a detached mount with `attrs`
/// (`MOUNT_ATTR_*`). It is freed with the descriptor unless moved
/// somewhere. A superblock already made from `source` is shared.
pub(crate) fn mount_detached(fstype: &str, source: &Path, attrs: u64) -> io::Result<OwnedFd> {
    let fstype = cstring(fstype)?;
    let source = cstring(source)?;
    let (key_source, key_ro) = (c"source", c"ro");
    // SAFETY: a NUL-terminated name; the result is a new descriptor.
    let context =
        owned_fd(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let fs = context.as_raw_fd();
    // SAFETY: `fs` is a filesystem context; keys and values are
    // NUL-terminated strings, and the flag and command take no value.
    unsafe {
        cvt_long(libc::syscall(
            libc::SYS_fsconfig,
            fs,
            FSCONFIG_SET_STRING,
            key_source.as_ptr(),
            source.as_ptr(),
            0,
        ))?;
        // Read-only from the start: the device is opened for reading only.
        cvt_long(libc::syscall(
            libc::SYS_fsconfig,
            fs,
            FSCONFIG_SET_FLAG,
            key_ro.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        ))?;
        cvt_long(libc::syscall(
            libc::SYS_fsconfig,
            fs,
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        ))?;
    }
    // SAFETY: plain syscall on the context; the result is a new descriptor.
    owned_fd(unsafe { libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs) })
}

pub(crate) fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstring(new_root)?;
    let put_old = cstring(put_old)?;
    // SAFETY: plain syscall on NUL-terminated paths.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

pub(crate) fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used by this crate take integer arguments only.
    cvt(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn read_exact_or_eof(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// Whether the other end of pipe `fd` is closed (without blocking).
pub(crate) fn hung_up(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & libc::POLLHUP != 0
}

pub(crate) fn write_all(fd: libc::c_int, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

pub(crate) fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: callers only fork while the process is single-threaded (checked
    // in `run_from_args`), so the child may keep using the allocator.
    cvt(unsafe { libc::fork() })
}

/// waitpid that retries on EINTR (signal handlers forward signals while we wait).
pub(crate) fn wait_pid(pid: libc::pid_t) -> io::Result<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok((r, status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Installs `handler` for `signal` with SA_RESTART, or restores the default
/// disposition when `handler` is None.
pub(crate) fn set_signal_handler(
    signal: libc::c_int,
    handler: Option<extern "C" fn(libc::c_int)>,
) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
    // handler, if any, only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = match handler {
            Some(h) => h as usize,
            None => libc::SIG_DFL,
        };
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        cvt(libc::sigaction(signal, &action, std::ptr::null_mut())).map(drop)
    }
}

pub(crate) fn ignore_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: as in `set_signal_handler`.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut action.sa_mask);
        cvt(libc::sigaction(signal, &action, std::ptr::null_mut())).map(drop)
    }
}

pub(crate) fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        cvt(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))
        .map(drop)
    }
}

pub(crate) fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit.
    cvt(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

pub(crate) fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor number this process will not use again;
    // an error (not open) changes nothing.
    unsafe { libc::close(fd) };
}

/// Whether file descriptor `fd` is open.
pub(crate) fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Closes every descriptor from `first` up; close_range(2) where the kernel
/// has it (5.9+), one by one otherwise.
pub(crate) fn close_from(first: libc::c_int) {
    // SAFETY: closing descriptors we will never use again.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) == 0
        {
            return;
        }
        let mut max: libc::rlimit = std::mem::zeroed();
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut max) == 0 {
            max.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1024
        };
        for fd in first..top {
            libc::close(fd);
        }
    }
}

/// Number of threads in this process.
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}
