//! Test tool: run inside a jail, tries what a hostile program would and
//! prints one `name RESULT` line per attempt (`ok`, or the errno's name).
//! The integration tests bind it into jails; it is not part of thaw.
//!
//! - `thaw-jail-probe syscalls`: forbidden system calls, with harmless
//!   arguments (an allowed call would fail with EINVAL or EFAULT instead of
//!   EPERM, or do nothing).
//! - `thaw-jail-probe fds`: the open file descriptors.
//! - `thaw-jail-probe sleep <seconds>`: sleeps (a cheap child to fork-bomb with).

use std::ffi::CString;

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EROFS => "EROFS",
        libc::ENOTTY => "ENOTTY",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ESRCH => "ESRCH",
        _ => return format!("errno{e}"),
    };
    name.to_string()
}

fn report(name: &str, r: libc::c_long) {
    let result = if r >= 0 {
        "ok".to_string()
    } else {
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    };
    println!("{name} {result}");
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn syscalls() {
    let tmp = c("/tmp");
    let tmpfs = c("tmpfs");
    let empty = c("");
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY: each call gets pointers to live C strings or null; none of
    // them, if it were allowed, could harm the jail's own process.
    unsafe {
        use libc::syscall as sc;
        report(
            "mount",
            sc(
                libc::SYS_mount,
                tmpfs.as_ptr(),
                tmp.as_ptr(),
                tmpfs.as_ptr(),
                0,
                null,
            ),
        );
        report("umount2", sc(libc::SYS_umount2, tmp.as_ptr(), 0));
        report(
            "pivot_root",
            sc(libc::SYS_pivot_root, tmp.as_ptr(), tmp.as_ptr()),
        );
        report("chroot", sc(libc::SYS_chroot, tmp.as_ptr()));
        report(
            "ptrace_attach_init",
            sc(libc::SYS_ptrace, libc::PTRACE_ATTACH, 1, 0, 0),
        );
        report(
            "ptrace_traceme",
            sc(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0),
        );
        report(
            "process_vm_readv",
            sc(libc::SYS_process_vm_readv, 1, null, 0, null, 0, 0),
        );
        report("unshare_user", sc(libc::SYS_unshare, libc::CLONE_NEWUSER));
        report("unshare_net", sc(libc::SYS_unshare, libc::CLONE_NEWNET));
        report("setns", sc(libc::SYS_setns, 0, 0));
        let pid = sc(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        );
        if pid == 0 {
            libc::_exit(0);
        }
        report("clone_newuser", pid);
        report("clone3", sc(libc::SYS_clone3, null, 0));
        report("bpf", sc(libc::SYS_bpf, 5, null, 0));
        report(
            "init_module",
            sc(libc::SYS_init_module, null, 0, empty.as_ptr()),
        );
        report(
            "finit_module",
            sc(libc::SYS_finit_module, -1, empty.as_ptr(), 0),
        );
        report(
            "delete_module",
            sc(libc::SYS_delete_module, tmpfs.as_ptr(), 0),
        );
        report("kexec_load", sc(libc::SYS_kexec_load, 0, 0, null, 0));
        report(
            "kexec_file_load",
            sc(libc::SYS_kexec_file_load, -1, -1, 0, null, 0),
        );
        report("keyctl", sc(libc::SYS_keyctl, 0, -3, 0));
        report(
            "add_key",
            sc(
                libc::SYS_add_key,
                empty.as_ptr(),
                empty.as_ptr(),
                null,
                0,
                -3,
            ),
        );
        report(
            "request_key",
            sc(
                libc::SYS_request_key,
                empty.as_ptr(),
                empty.as_ptr(),
                null,
                -3,
            ),
        );
        report(
            "perf_event_open",
            sc(libc::SYS_perf_event_open, null, 0, -1, -1, 0),
        );
        report("swapon", sc(libc::SYS_swapon, tmp.as_ptr(), 0));
        report("swapoff", sc(libc::SYS_swapoff, tmp.as_ptr()));
        // Magic numbers deliberately wrong: EINVAL if the call got through.
        report("reboot", sc(libc::SYS_reboot, 0, 0, 0, null));
        report("acct", sc(libc::SYS_acct, null));
        report("quotactl", sc(libc::SYS_quotactl, 0, null, 0, null));
        report("userfaultfd", sc(libc::SYS_userfaultfd, 0));
        report(
            "open_by_handle_at",
            sc(libc::SYS_open_by_handle_at, -1, null, 0),
        );
        #[cfg(target_arch = "x86_64")]
        {
            report("iopl", sc(libc::SYS_iopl, 3));
            report("ioperm", sc(libc::SYS_ioperm, 0, 1, 1));
        }
        report("settimeofday", sc(libc::SYS_settimeofday, null, null));
        report(
            "clock_settime",
            sc(libc::SYS_clock_settime, libc::CLOCK_REALTIME, null),
        );
        report("adjtimex", sc(libc::SYS_adjtimex, null));
        report("syslog", sc(libc::SYS_syslog, 10, null, 0));
        report("io_uring_setup", sc(libc::SYS_io_uring_setup, 1, null));
        report(
            "socket_vsock",
            sc(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        );
        report(
            "socket_packet",
            sc(libc::SYS_socket, libc::AF_PACKET, libc::SOCK_RAW, 0),
        );
        report(
            "socket_netlink_audit",
            sc(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_RAW, 9),
        );
        report(
            "ioctl_tiocsti",
            sc(libc::SYS_ioctl, 0, libc::TIOCSTI, empty.as_ptr()),
        );
        report("setuid_0", sc(libc::SYS_setuid, 0));
        report(
            "memfd_create",
            sc(libc::SYS_memfd_create, empty.as_ptr(), 0),
        );
        report("personality", sc(libc::SYS_personality, 0x0040_0000)); // READ_IMPLIES_EXEC
        report(
            "mknodat_null",
            sc(
                libc::SYS_mknodat,
                libc::AT_FDCWD,
                c("/tmp/null").as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            ),
        );
        // Controls: must work.
        report("getpid", sc(libc::SYS_getpid));
        report("socket_inet", {
            let fd = sc(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd >= 0 {
                libc::close(fd as i32);
            }
            fd
        });
        report("socket_netlink_route", {
            let fd = sc(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_RAW, 0);
            if fd >= 0 {
                libc::close(fd as i32);
            }
            fd
        });
    }
}

fn fds() {
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    println!("{}", fds.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("syscalls") => {
            // As root outside a jail, some of these would succeed for real.
            // SAFETY: getuid cannot fail.
            if unsafe { libc::getuid() } == 0 {
                eprintln!("thaw-jail-probe: refusing to probe as root; run me inside a jail");
                std::process::exit(2);
            }
            syscalls()
        }
        Some("fds") => fds(),
        Some("sleep") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        _ => {
            eprintln!("usage: thaw-jail-probe syscalls|fds|sleep <seconds>");
            std::process::exit(2);
        }
    }
}
