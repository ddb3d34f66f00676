//! The seccomp filter: an allowlist of the system calls Node 20 (and the
//! jail's own init) use, as a hand-written classic BPF program.
//!
//! Hand-written because the program is short and this way every instruction
//! is in this file to audit. Shape:
//!
//! 1. Wrong architecture (e.g. a 32-bit syscall entry): kill the process.
//! 2. x86_64 x32 syscall numbers: EPERM.
//! 3. A few calls are allowed only with safe arguments (`clone` without
//!    namespace flags, `socket` for unix/inet/inet6/netlink-route, `ioctl`
//!    without TIOCSTI/TIOCLINUX); `clone3` returns ENOSYS, because its flags
//!    live in memory BPF cannot read and glibc falls back to `clone` on
//!    ENOSYS.
//! 4. Every call on the allowlist: allowed. Everything else: EPERM, so Node
//!    reports a clean error instead of dying.
//!
//! The kernel (5.11+) caches "always allowed" results per syscall number, so
//! the linear list costs nothing on the hot path for calls without argument
//! checks.

use std::io;

// seccomp_data layout: nr at 0, arch at 4, instruction pointer at 8, args
// from 16, 8 bytes each; we read the low 32 bits (little-endian).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("thaw-jail's seccomp filter knows x86_64 and aarch64 only");

#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// clone(2) flags that create namespaces (CLONE_NEWTIME shares its bit with
/// the exit signal in clone's first argument, and is refused by clone anyway).
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// Terminal ioctls that push input into, or reprogram, a terminal another
/// process reads.
const DENIED_IOCTLS: &[u32] = &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

const NETLINK_ROUTE: u32 = 0;

/// Allowed with any arguments. Grouped by what Node uses them for.
const ALLOWED: &[libc::c_long] = &[
    // files and directories
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_fadvise64,
    libc::SYS_readahead,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_umask,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    // memory
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_brk,
    libc::SYS_membarrier,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    // event loop, timers, signals
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_signalfd4,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_getitimer,
    libc::SYS_setitimer,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // threads and processes (clone is checked below)
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_execve,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_getcpu,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_setrlimit,
    libc::SYS_getrusage,
    libc::SYS_times,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getrandom,
    libc::SYS_capget,
    // identity (all read-only; set*id without capabilities can only drop)
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_getpgid,
    libc::SYS_setpgid,
    libc::SYS_getsid,
    libc::SYS_setsid,
    // network (socket and socketpair are checked below)
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
];

/// The pre-*at calls glibc and libuv still use on x86_64.
#[cfg(target_arch = "x86_64")]
const ALLOWED_LEGACY: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_symlink,
    libc::SYS_link,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_lchown,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_futimesat,
    libc::SYS_getdents,
    libc::SYS_pipe,
    libc::SYS_dup2,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_epoll_create,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd,
    libc::SYS_signalfd,
    libc::SYS_inotify_init,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_pause,
    libc::SYS_alarm,
    libc::SYS_time,
    libc::SYS_getpgrp,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_LEGACY: &[libc::c_long] = &[];

/// Calls that must stay denied (the list, and more that a jailed
/// program has no business making), kept so a test can check none slipped
/// into the allowlist. The filter does not use it: not being allowed is what
/// denies them.
#[cfg(test)]
const MUST_DENY: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_io_uring_setup,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_mount_setattr,
    libc::SYS_kcmp,
    // memfd_create + execveat would run a dropped binary without a file
    // system, around /tmp's noexec; Node needs neither.
    libc::SYS_memfd_create,
    libc::SYS_execveat,
    libc::SYS_personality,
    libc::SYS_vmsplice,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setresuid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const RET_K: u32 = libc::BPF_RET | libc::BPF_K;
const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE_K: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET_K: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;

/// Appends "if nr == `nr` run `block` (which must return), else go on".
fn on_syscall(prog: &mut Vec<libc::sock_filter>, nr: libc::c_long, block: Vec<libc::sock_filter>) {
    let skip = u8::try_from(block.len()).expect("argument check blocks are short");
    prog.push(jump(JEQ_K, nr as u32, 0, skip));
    prog.extend(block);
}

/// The whole program.
pub(crate) fn program() -> Vec<libc::sock_filter> {
    let mut prog = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, RET_KILL),
        stmt(LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        prog.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(RET_K, RET_EPERM));
    }

    on_syscall(&mut prog, libc::SYS_clone3, vec![stmt(RET_K, RET_ENOSYS)]);
    on_syscall(
        &mut prog,
        libc::SYS_clone,
        vec![
            stmt(LD_W_ABS, off_arg_low(0)),
            jump(JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1),
            stmt(RET_K, RET_EPERM),
            stmt(RET_K, RET_ALLOW),
        ],
    );
    // socket(domain, type, protocol): unix, inet and inet6 sockets; netlink
    // for routing information only (getifaddrs). No vsock, packet, alg...:
    // families that are not per network namespace, or add kernel surface.
    on_syscall(
        &mut prog,
        libc::SYS_socket,
        vec![
            stmt(LD_W_ABS, off_arg_low(0)),
            jump(JEQ_K, libc::AF_UNIX as u32, 4, 0),
            jump(JEQ_K, libc::AF_INET as u32, 3, 0),
            jump(JEQ_K, libc::AF_INET6 as u32, 2, 0),
            jump(JEQ_K, libc::AF_NETLINK as u32, 2, 0),
            stmt(RET_K, RET_EPERM),
            stmt(RET_K, RET_ALLOW),
            stmt(LD_W_ABS, off_arg_low(2)),
            jump(JEQ_K, NETLINK_ROUTE, 0, 1),
            stmt(RET_K, RET_ALLOW),
            stmt(RET_K, RET_EPERM),
        ],
    );
    on_syscall(
        &mut prog,
        libc::SYS_socketpair,
        vec![
            stmt(LD_W_ABS, off_arg_low(0)),
            jump(JEQ_K, libc::AF_UNIX as u32, 0, 1),
            stmt(RET_K, RET_ALLOW),
            stmt(RET_K, RET_EPERM),
        ],
    );
    let mut ioctl = vec![stmt(LD_W_ABS, off_arg_low(1))];
    for (i, cmd) in DENIED_IOCTLS.iter().enumerate() {
        // Jump to the EPERM after the remaining checks and the ALLOW.
        let to_deny = (DENIED_IOCTLS.len() - i) as u8;
        ioctl.push(jump(JEQ_K, *cmd, to_deny, 0));
    }
    ioctl.push(stmt(RET_K, RET_ALLOW));
    ioctl.push(stmt(RET_K, RET_EPERM));
    on_syscall(&mut prog, libc::SYS_ioctl, ioctl);

    for nr in ALLOWED.iter().chain(ALLOWED_LEGACY) {
        prog.push(jump(JEQ_K, *nr as u32, 0, 1));
        prog.push(stmt(RET_K, RET_ALLOW));
    }
    prog.push(stmt(RET_K, RET_EPERM));
    prog
}

/// Installs the filter on the calling thread. Needs no_new_privs (or
/// CAP_SYS_ADMIN); survives execve and is inherited by every child.
pub(crate) fn install() -> io::Result<()> {
    let prog = program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_dangerous_is_allowed() {
        let special = [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_ioctl,
        ];
        for nr in MUST_DENY {
            assert!(
                !ALLOWED.contains(nr) && !ALLOWED_LEGACY.contains(nr) && !special.contains(nr),
                "syscall {nr} must not be allowed"
            );
        }
    }

    #[test]
    fn program_is_within_kernel_limits() {
        let prog = program();
        assert!(prog.len() < 4096, "{} instructions", prog.len());
        // Each list entry is a local two-instruction pair; no jump may point
        // past the end.
        for (i, ins) in prog.iter().enumerate() {
            if ins.code as u32 & 0x07 == libc::BPF_JMP {
                assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < prog.len());
            }
        }
        assert_eq!(prog.last().unwrap().k, RET_EPERM);
    }
}
