//! The jail every runtime instance runs in, in the manner of Firecracker's
//! jailer: new PID, mount, network, IPC, UTS and cgroup namespaces under a
//! minimal init; a pivot_root into a read-only root of read-only binds, a
//! private /proc, a few device nodes and a size-limited /tmp; one cgroup per
//! instance (v2, or v1) for memory, CPU, pids, IO and freezing; rlimits; an
//! unprivileged uid with every capability gone and no_new_privs; and a
//! seccomp allowlist. It owns the per-instance directories under
//! `state_dir`, the per-instance cgroups, attaching code into a running
//! jail, and the filesystem images ([`Image`]) jails mount instead of
//! binding host directories. It must stay small, libc-level and auditable:
//! it knows nothing of Node, QEMU or thaw's protocol, starts no threads,
//! and touches no host state besides its own directories, cgroups, mounts
//! and the loop devices of the images it holds. The `thaw` binary
//! calls [`run_from_args`] for its hidden `__jail` subcommand before doing
//! anything else; the host uses the rest of this API. See docs/security.md.

mod cgroup;
mod config;
mod error;
mod image;
mod mounts;
mod privs;
mod run;
mod seccomp;
mod sys;

pub use cgroup::{Cgroup, CgroupVersion};
pub use config::{ImageMount, JailConfig, Limits};
pub use error::JailError;
pub use image::Image;
pub use mounts::{attach, attach_image, detach};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The hidden first argument of the `thaw` binary that runs the jail.
pub const SUBCOMMAND: &str = "__jail";

/// Exit code of a jail that could not be set up. Its stderr then ends with
/// one line starting with `thaw-jail: ` that says what failed.
pub const SETUP_FAILED: i32 = 125;

/// The arguments, after the executable, that run `program args...` in the
/// jail described by `config`: `__jail --config <json> -- <program> <args>`.
/// `program` is a path inside the jail. Fails if the config is invalid.
///
/// The host spawns `<thaw exe>` with these, with the environment the program
/// should get (and nothing else), the program's stdin/stdout/stderr, and
/// optionally a descriptor at fd 3 that reaches the program. Spawn from a
/// thread that lives as long as the instance: the jail dies with the thread
/// that spawned it (PR_SET_PDEATHSIG), so not from a short-lived
/// `spawn_blocking` thread.
pub fn command_args(
    config: &JailConfig,
    program: &Path,
    args: &[String],
) -> Result<Vec<OsString>, JailError> {
    config.validate()?;
    let json = serde_json::to_string(config).map_err(|e| JailError::Config(e.to_string()))?;
    let mut out: Vec<OsString> = vec![
        SUBCOMMAND.into(),
        "--config".into(),
        json.into(),
        "--".into(),
        program.as_os_str().to_owned(),
    ];
    out.extend(args.iter().map(OsString::from));
    Ok(out)
}

/// Runs a jail from the arguments [`command_args`] built (a leading
/// `__jail` is skipped), and exits the way the jailed program exits: same
/// code, or killed by the same signal. On a setup failure prints one line
/// starting with `thaw-jail: ` to stderr and exits with [`SETUP_FAILED`].
///
/// Must be called while the process is single-threaded (before any runtime
/// or thread starts): it forks.
pub fn run_from_args(args: Vec<OsString>) -> ! {
    let result =
        parse_args(args).and_then(|(config, program, args)| run::outer(&config, &program, &args));
    match result {
        Ok(never) => match never {},
        Err(e) => run::fail(&e),
    }
}

fn parse_args(args: Vec<OsString>) -> Result<(JailConfig, PathBuf, Vec<OsString>), JailError> {
    let mut it = args.into_iter().peekable();
    if it.peek().is_some_and(|a| a == SUBCOMMAND) {
        it.next();
    }
    if it.next().is_none_or(|a| a != "--config") {
        return Err(JailError::Usage("missing --config".into()));
    }
    let json = it
        .next()
        .ok_or_else(|| JailError::Usage("--config needs a JSON value".into()))?;
    let json = json
        .into_string()
        .map_err(|_| JailError::Usage("--config is not valid UTF-8".into()))?;
    let config: JailConfig =
        serde_json::from_str(&json).map_err(|e| JailError::Config(e.to_string()))?;
    if it.next().is_none_or(|a| a != "--") {
        return Err(JailError::Usage("missing `--` before the program".into()));
    }
    let program = it
        .next()
        .map(PathBuf::from)
        .ok_or_else(|| JailError::Usage("missing the program to run".into()))?;
    Ok((config, program, it.collect()))
}

/// What must be bound for a dynamically linked program (Node, QEMU, a
/// library QEMU loads as a module) to run in a jail: the file itself, its
/// ELF interpreter and every shared library, each at the path the dynamic
/// loader looks for it (as `ldd` reports them). Pass them as
/// [`JailConfig::ro_binds`].
pub fn program_binds(node: &Path) -> Result<Vec<PathBuf>, JailError> {
    let out = Command::new("ldd")
        .arg(node)
        .env_clear()
        .output()
        .map_err(|e| JailError::os("run ldd (is glibc's ldd installed?)", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut binds = vec![node.to_path_buf()];
    if !out.status.success() {
        // A static binary needs nothing else.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(binds);
        }
        return Err(JailError::Config(format!(
            "ldd {} failed: {}",
            node.display(),
            stderr.trim()
        )));
    }
    for line in stdout.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            return Ok(binds);
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
        // "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)".
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                let path = rest.split(" (").next().unwrap_or("").trim();
                if path == "not found" || path.is_empty() {
                    return Err(JailError::Config(format!(
                        "{} needs {name}, which the dynamic loader cannot find on this host",
                        node.display()
                    )));
                }
                path
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !binds.contains(&path) {
                binds.push(path);
            }
        }
    }
    Ok(binds)
}

/// Tears an instance down, whatever state it is in: kills every process in
/// its cgroup, removes the cgroup, unmounts attached code and removes its
/// directories under `state_dir`. Idempotent; call it whenever an instance
/// ends (its `thaw __jail` process exited or was killed), and after reading
/// [`Cgroup::oom_killed`].
pub fn cleanup_instance(config: &JailConfig) -> Result<(), JailError> {
    config.validate()?;
    let cgroup = Cgroup::for_instance(&config.id)?;
    cgroup.kill_all()?;
    cgroup.remove()?;
    mounts::remove_host_dirs(config)
}

/// Cleans up every instance left under `state_dir` by a host that stopped
/// without doing so itself (killed, crashed, or at its own shutdown):
/// kills what still runs in their cgroups, removes the cgroups, unmounts
/// and removes their directories. Returns how many there were. Call it at
/// start-up before spawning, and at shutdown after killing every instance.
pub fn cleanup_stale(state_dir: &Path) -> Result<usize, JailError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(JailError::os(format!("read {}", state_dir.display()), e)),
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if config::validate_id(&id).is_err() {
            continue;
        }
        let stale = JailConfig {
            id,
            state_dir: state_dir.to_path_buf(),
            ro_binds: Vec::new(),
            binds: Vec::new(),
            writable_binds: Vec::new(),
            images: Vec::new(),
            devices: Vec::new(),
            own_seccomp: false,
            own_cgroup: false,
            attach_point: PathBuf::from("/code"),
            uid: 0,
            gid: 0,
            limits: Limits::default(),
        };
        let cgroup = Cgroup::for_instance(&stale.id)?;
        cgroup.kill_all()?;
        cgroup.remove()?;
        mounts::remove_host_dirs(&stale)?;
        cleaned += 1;
    }
    Ok(cleaned)
}

/// Checks that this host can run jails and prepares its cgroups; call once
/// at startup, before spawning any process. Fails with
/// [`JailError::Unsupported`] saying what is missing: root, namespaces,
/// seccomp, the new mount API (Linux 5.12) or usable cgroups. On cgroup v2
/// it may move the calling process into `<its cgroup>/thaw-supervisor` (see
/// [`Cgroup`]).
pub fn prepare_host() -> Result<CgroupVersion, JailError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::Unsupported(
            "thaw must run as root to create jails (namespaces, mounts, cgroups)".into(),
        ));
    }
    for ns in ["pid", "mnt", "net", "ipc", "uts", "cgroup"] {
        if !Path::new("/proc/self/ns").join(ns).exists() {
            return Err(JailError::Unsupported(format!(
                "the kernel has no {ns} namespaces (CONFIG_{}_NS)",
                ns.to_uppercase()
            )));
        }
    }
    // SAFETY: PR_GET_SECCOMP takes no arguments.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP) } < 0 {
        return Err(JailError::Unsupported(
            "the kernel has no seccomp (CONFIG_SECCOMP_FILTER)".into(),
        ));
    }
    // SAFETY: deliberately invalid arguments; we only look at the errno.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        return Err(JailError::Unsupported(
            "the kernel lacks mount_setattr, which attaching code needs (Linux 5.12 or newer)"
                .into(),
        ));
    }
    cgroup::prepare()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_args_round_trip_through_parse_args() {
        let config = JailConfig {
            id: "a-1".into(),
            state_dir: "/var/lib/thaw/jails".into(),
            ro_binds: vec!["/usr/bin/node".into()],
            binds: vec![],
            writable_binds: vec![],
            images: Vec::new(),
            devices: vec![],
            own_seccomp: true,
            own_cgroup: false,
            attach_point: "/code".into(),
            uid: 100_001,
            gid: 100_001,
            limits: Limits::default(),
        };
        let args = command_args(
            &config,
            Path::new("/usr/bin/node"),
            &["-e".into(), "1".into()],
        )
        .unwrap();
        assert_eq!(args[0], SUBCOMMAND);
        let (parsed, program, rest) = parse_args(args).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(program, Path::new("/usr/bin/node"));
        assert_eq!(rest, vec![OsString::from("-e"), OsString::from("1")]);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            vec![],
            vec!["--config"],
            vec!["--config", "{}", "--"],
            vec!["x"],
        ] {
            let args = args.into_iter().map(OsString::from).collect();
            assert!(parse_args(args).is_err());
        }
    }

    #[test]
    fn this_host_can_run_jails() {
        // This machine: root, cgroup v1 (hybrid). On a pure v2 host this
        // would move the test process into a thaw-supervisor cgroup.
        let version = prepare_host().unwrap();
        assert_eq!(version, Cgroup::for_instance("x").unwrap().version());
    }

    #[test]
    fn program_binds_finds_interpreter_and_libraries() {
        let binds = program_binds(Path::new("/usr/bin/node")).unwrap();
        assert_eq!(binds[0], Path::new("/usr/bin/node"));
        assert!(
            binds
                .iter()
                .any(|p| p.to_string_lossy().contains("ld-linux")),
            "{binds:?}"
        );
        assert!(binds.iter().any(|p| p.ends_with("libc.so.6")), "{binds:?}");
        assert!(binds.iter().all(|p| p.is_absolute()));
    }
}
