//! The three processes of a running jail.
//!
//! ```text
//! host (thaw) ── outer (`thaw __jail`, host PID namespace, not in the cgroup)
//!                  └── init (PID 1 of the jail: namespaces, root, then unprivileged)
//!                        └── program (PID 2: rlimits, no privileges, seccomp, execve)
//! ```
//!
//! The outer process stays in the host's PID namespace so the host has an
//! ordinary child to wait for and signal, and mirrors the program's exit.
//! It ends with the host (PR_SET_PDEATHSIG), init dies with it (the same),
//! and when init dies the kernel kills everything else in the PID namespace.
//!
//! A paused instance is frozen (cgroup freezer), and a frozen process does
//! not act on a SIGKILL until it is thawed (cgroup v1 holds it). So the
//! outer process, which is not in the cgroup, asks for a catchable signal
//! when the host dies ([`HOST_GONE`]), and its handler thaws the cgroup and
//! kills init: a paused instance ends with the host too, not at the next
//! start. The handler also unmounts the instance's attach point on the host,
//! so that what the host attached there (code on a loop device) goes with
//! the host as well.

use crate::cgroup::Cgroup;
use crate::error::Context as _;
use crate::mounts::{self, HOSTNAME};
use crate::sys::{self, cvt};
use crate::{privs, seccomp, JailConfig, JailError, SETUP_FAILED};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// The descriptor the host hands the program; kept open through the jail.
pub(crate) const PASSED_FD: libc::c_int = 3;

/// RLIMIT_CORE of 1, not 0: 0 stops core files, but a core_pattern that
/// pipes to a helper (systemd-coredump, apport: root processes on the host
/// that read the crashed process) ignores the limit, except for the value 1,
/// which the kernel reserves to refuse the dump. One byte is also below the
/// smallest core file, so no file is written either.
const NO_CORE_DUMPS: u64 = 1;

/// Signals a process passes on to its child: the host can ask the program to
/// stop through the outer process and init.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The child signals are forwarded to (init for the outer process, the
/// program for init).
static CHILD: AtomicI32 = AtomicI32::new(0);

/// What the outer process gets when the host dies: catchable, unlike
/// SIGKILL, and not one the host uses (SIGPWR: power failure, unused here).
const HOST_GONE: libc::c_int = libc::SIGPWR;

/// The thaw control file of the instance's cgroup (NUL-terminated) and the
/// bytes that thaw it, set before [`HOST_GONE`]'s handler is installed.
static THAW: std::sync::OnceLock<(CString, &'static [u8])> = std::sync::OnceLock::new();

/// The instance's attach point on the host (NUL-terminated), unmounted by
/// [`HOST_GONE`]'s handler, set before it is installed.
static ATTACH: std::sync::OnceLock<CString> = std::sync::OnceLock::new();

/// The host died: thaw the instance, kill init (and so the namespace) and
/// unmount the attach point: the code attached on it, then its own tmpfs.
/// Only async-signal-safe calls: open, write, close, kill, umount2, _exit.
extern "C" fn on_host_gone(_: libc::c_int) {
    if let Some((path, value)) = THAW.get() {
        // SAFETY: a NUL-terminated path and a valid buffer; plain syscalls.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
            }
        }
    }
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Some(attach) = ATTACH.get() {
        for _ in 0..2 {
            // SAFETY: a NUL-terminated path; umount2 is async-signal-safe.
            let r =
                unsafe { libc::umount2(attach.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
            if r != 0 {
                break;
            }
        }
    }
    // SAFETY: _exit is async-signal-safe; nothing is left to flush.
    unsafe { libc::_exit(128 + libc::SIGKILL) };
}

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

fn forward_signals_to(pid: libc::pid_t) -> Result<(), JailError> {
    CHILD.store(pid, Ordering::Relaxed);
    for s in FORWARDED {
        sys::set_signal_handler(s, Some(forward_signal))
            .context(|| format!("install handler for signal {s}"))?;
    }
    Ok(())
}

/// Prints a setup failure the way the host expects and exits.
pub(crate) fn fail(e: &JailError) -> ! {
    let line = format!("thaw-jail: {e}\n").replace(['\n', '\r'], " ");
    let _ = sys::write_all(2, format!("{}\n", line.trim_end()).as_bytes());
    std::process::exit(SETUP_FAILED);
}

/// The outer process: sets up what lives on the host side, starts init in a
/// new PID namespace, waits, and exits the way the program did.
pub(crate) fn outer(
    config: &JailConfig,
    program: &Path,
    args: &[OsString],
) -> Result<std::convert::Infallible, JailError> {
    // End with the host. The parent may already be gone by the time the
    // death signal is armed; then we are an orphan and must stop now. The
    // signal is SIGKILL until the cgroup exists, then HOST_GONE, whose
    // handler also ends a frozen instance.
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .context(|| "set the parent-death signal".into())?;
    // SAFETY: as above.
    if unsafe { libc::getppid() } != parent {
        std::process::exit(SETUP_FAILED);
    }
    if sys::thread_count() > 1 {
        return Err(JailError::Usage(
            "run_from_args must run before the process starts any thread (it forks)".into(),
        ));
    }
    config.validate()?;
    if !program.is_absolute() {
        return Err(JailError::Usage(format!(
            "program {} must be an absolute path inside the jail",
            program.display()
        )));
    }
    reserve_passed_fd()?;

    let cgroup = Cgroup::for_instance(&config.id)?;
    let devices = match config.limits.io_bytes_per_sec {
        Some(_) => io_devices(config),
        None => Vec::new(),
    };
    // Refuse before touching anything when the id belongs to a live
    // instance: the cleanup on error below would kill it.
    if !cgroup.procs()?.is_empty() {
        return Err(JailError::InUse(config.id.clone()));
    }
    let started = (|| {
        cgroup.create(&config.limits, &devices)?;
        // Leftovers of an instance with this id that was never cleaned up.
        mounts::remove_host_dirs(config)?;
        mounts::prepare_host_dirs(config)?;
        let (go_read, go_write) = sys::pipe().context(|| "create a pipe".into())?;
        let (status_read, status_write) = sys::pipe().context(|| "create a pipe".into())?;
        // Our next child is PID 1 of a new PID namespace; we stay outside.
        sys::unshare(libc::CLONE_NEWPID).context(|| "create a PID namespace".into())?;
        let pid = sys::fork().context(|| "fork the jail's init".into())?;
        if pid == 0 {
            drop(go_write);
            drop(status_read);
            let e = init(config, program, args, go_read, status_write);
            fail(&e);
        }
        drop(go_read);
        drop(status_write);
        if let Err(e) = cgroup.add_process(pid) {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_pid(pid);
            return Err(e);
        }
        sys::write_all(go_write.as_raw_fd(), b"g").context(|| "start the jail's init".into())?;
        // Kept open for as long as we live: init checks for the hang-up.
        Ok((pid, status_read, go_write))
    })();
    let (pid, status_read, _alive) = match started {
        Ok(v) => v,
        Err(e) => {
            // Best effort: the host calls cleanup_instance as well.
            let _ = crate::cleanup_instance(config);
            return Err(e);
        }
    };

    forward_signals_to(pid)?;
    let (thaw_file, thaw_value) = cgroup.thaw_control();
    let thaw_file = CString::new(thaw_file.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage("a cgroup path holds a NUL byte".into()))?;
    let _ = THAW.set((thaw_file, thaw_value.as_bytes()));
    let attach = mounts::InstanceDirs::new(config).attach;
    let attach = CString::new(attach.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage("the state dir holds a NUL byte".into()))?;
    let _ = ATTACH.set(attach);
    sys::set_signal_handler(HOST_GONE, Some(on_host_gone))
        .context(|| "install the host-death handler".into())?;
    sys::prctl(libc::PR_SET_PDEATHSIG, HOST_GONE as libc::c_ulong)
        .context(|| "set the parent-death signal".into())?;
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parent {
        // The host died before the new signal was armed.
        on_host_gone(HOST_GONE);
    }
    // The program alone holds the host's descriptor from here on, so the
    // host sees the stream end when the program closes it.
    sys::close(PASSED_FD);
    let (_, init_status) = sys::wait_pid(pid).context(|| "wait for the jail's init".into())?;
    let mut buf = [0u8; 4];
    let status = match sys::read_exact_or_eof(&status_read, &mut buf) {
        Ok(4) => i32::from_le_bytes(buf),
        // No report: init itself died (killed, or failed during setup).
        _ => init_status,
    };
    exit_like(status)
}

/// Makes sure fd 3 is taken, so no descriptor the jail opens lands there and
/// reaches the program by accident. When the host passed nothing, the
/// placeholder is close-on-exec and the program sees no fd 3.
fn reserve_passed_fd() -> Result<(), JailError> {
    if sys::fd_is_open(PASSED_FD) {
        return Ok(());
    }
    // Opened close-on-exec, like every descriptor Rust opens.
    let null = std::fs::File::open("/dev/null").context(|| "open /dev/null".into())?;
    if null.as_raw_fd() != PASSED_FD {
        // SAFETY: dup3 onto a free descriptor number.
        cvt(unsafe { libc::dup3(null.as_raw_fd(), PASSED_FD, libc::O_CLOEXEC) })
            .context(|| "reserve file descriptor 3".into())?;
        return Ok(());
    }
    // Already landed on 3 (the lowest free number): keep it open for good.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(null);
    Ok(())
}

/// Ends this process the way `status` (a wait status) says: same exit code,
/// or killed by the same signal, so the host sees the program's end.
fn exit_like(status: libc::c_int) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let signal = if libc::WIFSIGNALED(status) {
        libc::WTERMSIG(status)
    } else {
        libc::SIGKILL
    };
    // No core dump of ours for the program's crash (1: see NO_CORE_DUMPS).
    let _ = sys::setrlimit(libc::RLIMIT_CORE, NO_CORE_DUMPS);
    let _ = sys::set_signal_handler(signal, None);
    let _ = sys::unblock_all_signals();
    // SAFETY: plain syscalls.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
    std::process::exit(128 + signal);
}

/// Overwrites this process's argument area, so that the jail's
/// `/proc/1/cmdline` says `thaw-init` and nothing of the configuration it
/// was forked with (paths, uid, limits). The area is this process's own
/// memory, where the kernel reads `cmdline` from; the arguments were parsed
/// before the fork and are not read again.
fn hide_arguments() -> Result<(), JailError> {
    let stat =
        std::fs::read_to_string("/proc/self/stat").context(|| "read /proc/self/stat".into())?;
    // Fields after the command name, which ends with the last ')': the
    // first of them is field 3; arg_start and arg_end are fields 48 and 49.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Err(JailError::Usage(
            "/proc/self/stat has no argument area".into(),
        ));
    };
    if end <= start {
        return Ok(());
    }
    let shown = b"thaw-init\0";
    // SAFETY: [start, end) is this process's argument area, mapped and
    // writable (the initial stack); nothing holds a reference into it.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        area.fill(0);
        let n = shown.len().min(area.len());
        area[..n].copy_from_slice(&shown[..n]);
    }
    // Shrink the area to the name too, where the kernel lets us (it needs
    // CAP_SYS_RESOURCE, which init still has here): otherwise the length
    // of the old arguments shows as trailing NULs.
    // SAFETY: plain syscall; a failure leaves the zeroed area as it is.
    unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_ARG_END as libc::c_ulong,
            (start + shown.len().min(end - start)) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    Ok(())
}

/// PID 1 of the jail. Returns only with the error that stopped it.
fn init(
    config: &JailConfig,
    program: &Path,
    args: &[OsString],
    go: OwnedFd,
    status: OwnedFd,
) -> JailError {
    match init_inner(config, program, args, go, status) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn init_inner(
    config: &JailConfig,
    program: &Path,
    args: &[OsString],
    go: OwnedFd,
    status: OwnedFd,
) -> Result<std::convert::Infallible, JailError> {
    // The kernel delivers this SIGKILL even to a namespace's init, because
    // it comes from the parent namespace.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .context(|| "set the parent-death signal".into())?;
    // Wait until the outer process has put us in the cgroup; EOF means it
    // died before (and we were spared PDEATHSIG by the race).
    let mut byte = [0u8; 1];
    if sys::read_exact_or_eof(&go, &mut byte).context(|| "wait for the jail's parent".into())? != 1
    {
        std::process::exit(SETUP_FAILED);
    }
    // The cgroup namespace comes after joining the cgroup, so /proc/self/cgroup
    // shows `/` inside and nothing of the host's hierarchy.
    sys::unshare(
        libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP,
    )
    .context(|| "create mount, network, IPC, UTS and cgroup namespaces".into())?;
    let name = c"thaw-init";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    hide_arguments()?;
    // SAFETY: the name and its length describe a valid buffer.
    cvt(unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) })
        .context(|| "set the hostname".into())?;
    loopback_up()?;
    mounts::build_root(config)?;

    // Everything execv needs, built while we may still allocate freely.
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage("program path contains a NUL byte".into()))?;
    let mut argv: Vec<CString> = vec![path.clone()];
    for a in args {
        argv.push(
            CString::new(a.as_bytes())
                .map_err(|_| JailError::Usage("argument contains a NUL byte".into()))?,
        );
    }

    let child = sys::fork().context(|| "fork the program".into())?;
    if child == 0 {
        drop(status);
        drop(go);
        let e = exec_program(config, &path, &argv);
        fail(&e);
    }
    forward_signals_to(child)?;
    sys::close(PASSED_FD);

    // init needs nothing more than waiting; it gives up root like the
    // program, and is not dumpable, so the program cannot ptrace or read it.
    privs::drop_to(config.uid, config.gid)?;
    sys::prctl(libc::PR_SET_DUMPABLE, 0).context(|| "make init non-dumpable".into())?;
    // Changing credentials cleared the parent-death signal: arm it again,
    // then make sure the parent did not die in between (its end of the
    // `go` pipe closes when it does).
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .context(|| "set the parent-death signal".into())?;
    if sys::hung_up(&go) {
        std::process::exit(SETUP_FAILED);
    }
    drop(go);
    seccomp::install().context(|| "install the seccomp filter in init".into())?;

    // Reap everything (orphans are re-parented to us) until the program ends;
    // then leave, and the kernel kills whatever is left in the namespace.
    let program_status = loop {
        match sys::wait_pid(-1) {
            Ok((pid, st)) if pid == child => break st,
            Ok(_) => continue,
            Err(e) => return Err(JailError::os("wait for the program", e)),
        }
    };
    let _ = sys::write_all(status.as_raw_fd(), &program_status.to_le_bytes());
    if libc::WIFEXITED(program_status) {
        std::process::exit(libc::WEXITSTATUS(program_status));
    }
    // A namespace's init cannot kill itself with a signal; the outer process
    // re-raises it from the status written above.
    std::process::exit(128 + libc::WTERMSIG(program_status));
}

/// PID 2: limits, no privileges, seccomp, then the program.
fn exec_program(config: &JailConfig, path: &CString, argv: &[CString]) -> JailError {
    let result = (|| -> Result<(), JailError> {
        // Handlers installed by init do not survive execve, but a blocked mask
        // and ignored signals would.
        for s in FORWARDED {
            sys::set_signal_handler(s, None).context(|| format!("reset signal {s}"))?;
        }
        sys::unblock_all_signals().context(|| "unblock signals".into())?;
        // Writing past RLIMIT_FSIZE then fails with EFBIG instead of killing.
        sys::ignore_signal(libc::SIGXFSZ).context(|| "ignore SIGXFSZ".into())?;

        let l = &config.limits;
        for (resource, value, name) in [
            (libc::RLIMIT_NOFILE, l.nofile, "RLIMIT_NOFILE"),
            (libc::RLIMIT_FSIZE, l.fsize_bytes, "RLIMIT_FSIZE"),
            (libc::RLIMIT_CORE, NO_CORE_DUMPS, "RLIMIT_CORE"),
            // Per uid across the host; each instance has its own uid, so
            // this is a second pids limit.
            (libc::RLIMIT_NPROC, u64::from(l.pids), "RLIMIT_NPROC"),
        ] {
            sys::setrlimit(resource, value).context(|| format!("set {name} to {value}"))?;
        }
        sys::close_from(PASSED_FD + 1);
        privs::drop_to(config.uid, config.gid)?;
        if !config.own_seccomp {
            seccomp::install().context(|| "install the seccomp filter".into())?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        return e;
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `path` and every argv entry are NUL-terminated and outlive the
    // call; the list ends with a null pointer. execv keeps the environment.
    unsafe { libc::execv(path.as_ptr(), ptrs.as_ptr()) };
    JailError::os(
        format!(
            "run {} (is it bound into the jail, with its ELF interpreter and libraries?)",
            path.to_string_lossy()
        ),
        std::io::Error::last_os_error(),
    )
}

/// A new network namespace has a loopback device, down. Bring it up; it
/// is the only interface the jail has.
fn loopback_up() -> Result<(), JailError> {
    // SAFETY: plain socket syscall.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .context(|| "open a socket to configure lo".into())?;
    // SAFETY: we own the descriptor socket just returned.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming an interface; the ioctls read and
    // write its flags member only.
    unsafe {
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))
            .context(|| "read the flags of lo".into())?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))
            .context(|| "bring lo up".into())?;
    }
    Ok(())
}

/// The block devices an instance's files are read from: that of the state
/// dir (where attached code usually lives too) and of every bind. Each is
/// mapped from partition to disk, since the kernel throttles whole disks.
/// Filesystems without a block device (tmpfs, overlay) have nothing to
/// throttle and are skipped.
fn io_devices(config: &JailConfig) -> Vec<(u32, u32)> {
    let paths: Vec<&Path> = std::iter::once(config.state_dir.as_path())
        .chain(config.ro_binds.iter().map(PathBuf::as_path))
        .chain(config.binds.iter().map(|(h, _)| h.as_path()))
        .collect();
    let mut out = Vec::new();
    for p in paths {
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let sys_dir = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let Ok(real) = std::fs::canonicalize(&sys_dir) else {
            continue;
        };
        let disk = if real.join("partition").exists() {
            let Some(parent) = real.parent() else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(parent.join("dev")) else {
                continue;
            };
            let Some((ma, mi)) = text.trim().split_once(':') else {
                continue;
            };
            match (ma.parse(), mi.parse()) {
                (Ok(ma), Ok(mi)) => (ma, mi),
                _ => continue,
            }
        } else {
            (major, minor)
        };
        if !out.contains(&disk) {
            out.push(disk);
        }
    }
    out
}
