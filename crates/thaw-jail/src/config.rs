use crate::JailError;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// Everything the jail needs to know about one instance.
///
/// The host builds it, [`crate::command_args`] carries it to `thaw __jail`
/// as JSON, and the host-side calls ([`crate::attach`],
/// [`crate::cleanup_instance`]) take it again to find the instance's
/// directories. The environment is not part of it: the program gets exactly
/// the environment the host set on the `thaw __jail` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailConfig {
    /// Instance id: 1 to 64 of `[a-z0-9-]`, not starting with `-`. Names the
    /// instance's cgroup and its directory under `state_dir`; unique among
    /// live instances.
    pub id: String,
    /// Host directory that holds one directory per instance (`<id>/root`,
    /// `<id>/attach`). Nothing in it is visible inside a jail.
    pub state_dir: PathBuf,
    /// Host files and directories bound read-only at the same path inside.
    /// Directories are bound without their submounts.
    pub ro_binds: Vec<PathBuf>,
    /// Host files or directories bound read-only at another path inside:
    /// `(host, inside)`.
    #[serde(default)]
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Host directories bound read-write at another path inside:
    /// `(host, inside)`; nosuid, nodev and noexec. For a program that must
    /// leave files where the host reads them (QEMU's sockets). The host
    /// makes them writable by `uid`.
    #[serde(default)]
    pub writable_binds: Vec<(PathBuf, PathBuf)>,
    /// Filesystem images the host holds on loop devices ([`crate::Image`]),
    /// each mounted read-only, nosuid and nodev inside. Unlike a bind's,
    /// their lines in the jail's `/proc/self/mountinfo` name no host path.
    #[serde(default)]
    pub images: Vec<ImageMount>,
    /// Extra host devices, by name in `/dev` (`kvm`): each gets a node of
    /// the instance's own (same device numbers, owned by `uid`, mode
    /// 0600) at `/dev/<name>`, beside the jail's own null, zero, full,
    /// random and urandom.
    #[serde(default)]
    pub devices: Vec<String>,
    /// The program installs a seccomp filter of its own (QEMU's
    /// `-sandbox`), so the jail's allowlist, written for Node, is not
    /// installed in it. The jail's init is filtered either way.
    #[serde(default)]
    pub own_seccomp: bool,
    /// Mount the instance's own cgroup read-only at `/sys/fs/cgroup`
    /// (v2; v1: its memory controller at `/sys/fs/cgroup/memory`), where
    /// Node reads its memory limit (`process.constrainedMemory()`).
    #[serde(default)]
    pub own_cgroup: bool,
    /// Where attached code appears inside (an empty read-only directory
    /// until [`crate::attach`] is called).
    pub attach_point: PathBuf,
    /// Unprivileged user and group the program runs as. Not 0; give every
    /// instance its own uid so instances cannot signal one another even if
    /// another wall failed.
    pub uid: u32,
    pub gid: u32,
    pub limits: Limits,
}

/// One of [`JailConfig::images`]: the filesystem `fstype` on the block
/// device `device` (`/dev/loopN`), mounted at `at` inside. Made by
/// [`crate::Image::mount_at`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMount {
    pub device: PathBuf,
    pub fstype: String,
    pub at: PathBuf,
}

/// Resource limits of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Hard memory limit for everything in the instance, its `/tmp` included;
    /// swap is not allowed. Passing it gets the biggest process killed.
    pub memory_bytes: u64,
    /// CPU time per wall-clock time, in thousandths of a core (1000 = one
    /// core). At least 10.
    pub cpu_millis: u32,
    /// Most processes and threads alive at once (cgroup pids.max, and
    /// RLIMIT_NPROC for the instance's uid). Node needs about 12 for itself.
    pub pids: u32,
    /// Size of the private tmpfs at `/tmp`.
    pub tmp_bytes: u64,
    /// Read and write bandwidth on the block devices the instance's files
    /// live on, where the host can throttle them (see docs/security.md).
    #[serde(default)]
    pub io_bytes_per_sec: Option<u64>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE: largest file the program may write. Writes past it
    /// fail with EFBIG (SIGXFSZ is ignored in the jail).
    pub fsize_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            pids: 128,
            tmp_bytes: 64 << 20,
            io_bytes_per_sec: None,
            nofile: 1024,
            fsize_bytes: 64 << 20,
        }
    }
}

/// Trees inside the jail that the jail itself provides; binds may not go
/// in them. `/etc` may receive binds below it (certificates, say), which
/// shadow the jail's own files there; `/etc` itself and `/` may not be bound.
const RESERVED_TREES: &[&str] = &["/dev", "/proc", "/tmp"];
const RESERVED_EXACT: &[&str] = &["/", "/etc"];

impl JailConfig {
    /// Checks everything that can be checked without touching the system, so
    /// that a bad config fails in the host, before anything is spawned.
    pub fn validate(&self) -> Result<(), JailError> {
        validate_id(&self.id)?;
        if !self.state_dir.is_absolute() {
            return Err(bad(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            )));
        }
        for p in &self.ro_binds {
            inside_path("ro_binds entry", p)?;
        }
        for (what, binds) in [
            ("bind", &self.binds),
            ("writable bind", &self.writable_binds),
        ] {
            for (host, inside) in binds {
                if !host.is_absolute() {
                    return Err(bad(format!(
                        "{what} source {} must be an absolute path",
                        host.display()
                    )));
                }
                inside_path(&format!("{what} target"), inside)?;
            }
        }
        for image in &self.images {
            let device_ok = image.device.starts_with("/dev")
                && image
                    .device
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            let fstype_ok = !image.fstype.is_empty()
                && image.fstype.len() <= 32
                && image
                    .fstype
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !device_ok || !fstype_ok {
                return Err(bad(format!(
                    "image {} ({:?}) must be a block device under /dev and a filesystem type of [a-z0-9]",
                    image.device.display(),
                    image.fstype
                )));
            }
            inside_path("image mount point", &image.at)?;
        }
        for name in &self.devices {
            let ok = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(bad(format!(
                    "device {name:?} must be a name in /dev of 1 to 32 of [a-z0-9_]"
                )));
            }
        }
        inside_path("attach_point", &self.attach_point)?;
        if self.uid == 0 || self.gid == 0 {
            return Err(bad(
                "uid and gid must not be 0: the program must run unprivileged".into(),
            ));
        }
        let l = &self.limits;
        for (name, value) in [
            ("memory_bytes", l.memory_bytes),
            ("pids", l.pids.into()),
            ("tmp_bytes", l.tmp_bytes),
            ("nofile", l.nofile),
            ("fsize_bytes", l.fsize_bytes),
        ] {
            if value == 0 {
                return Err(bad(format!("limits.{name} must be greater than 0")));
            }
        }
        // The kernel's smallest CFS quota is 1 ms per 100 ms period.
        if l.cpu_millis < 10 {
            return Err(bad(format!(
                "limits.cpu_millis is {}, must be at least 10 (1% of a core)",
                l.cpu_millis
            )));
        }
        if l.io_bytes_per_sec == Some(0) {
            return Err(bad(
                "limits.io_bytes_per_sec must be greater than 0, or absent".into(),
            ));
        }
        Ok(())
    }
}

pub(crate) fn validate_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "instance id {id:?} must be 1 to 64 characters of [a-z0-9-], not starting with '-'"
        )))
    }
}

/// A path inside the jail: absolute, without `.` or `..`, and not one of the
/// directories the jail provides itself.
fn inside_path(what: &str, p: &Path) -> Result<(), JailError> {
    let clean = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !clean {
        return Err(bad(format!(
            "{what} {} must be an absolute path without `.` or `..`",
            p.display()
        )));
    }
    let reserved = RESERVED_EXACT.iter().find(|r| p == Path::new(r));
    let reserved = reserved.or_else(|| RESERVED_TREES.iter().find(|r| p.starts_with(r)));
    if let Some(r) = reserved {
        return Err(bad(format!(
            "{what} {} would cover {r}, which the jail provides itself",
            p.display()
        )));
    }
    Ok(())
}

fn bad(msg: String) -> JailError {
    JailError::Config(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JailConfig {
        JailConfig {
            id: "fn-1".into(),
            state_dir: "/var/lib/thaw/jails".into(),
            ro_binds: vec!["/usr/bin/node".into()],
            binds: vec![("/opt/shim".into(), "/runtime".into())],
            writable_binds: vec![("/var/lib/thaw/vms/vm-1".into(), "/run/vm".into())],
            images: vec![ImageMount {
                device: "/dev/loop3".into(),
                fstype: "erofs".into(),
                at: "/lib/extra".into(),
            }],
            devices: vec!["kvm".into()],
            own_seccomp: false,
            own_cgroup: false,
            attach_point: "/code".into(),
            uid: 100_000,
            gid: 100_000,
            limits: Limits::default(),
        }
    }

    #[test]
    fn accepts_a_good_config_and_round_trips_as_json() {
        let c = config();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<JailConfig>(&json).unwrap(), c);
    }

    #[test]
    fn rejects_what_would_escape_or_collide() {
        let cases: [fn(&mut JailConfig); 22] = [
            |c| c.id = "../x".into(),
            |c| c.id = "A".into(),
            |c| c.id = "-x".into(),
            |c| c.id = String::new(),
            |c| c.state_dir = "rel".into(),
            |c| c.attach_point = "/code/../etc".into(),
            |c| c.attach_point = "/proc/x".into(),
            |c| c.attach_point = "/".into(),
            |c| c.ro_binds.push("/tmp".into()),
            |c| c.binds.push(("rel".into(), "/x".into())),
            |c| c.writable_binds.push(("/x".into(), "/proc/x".into())),
            |c| c.writable_binds.push(("rel".into(), "/x".into())),
            |c| c.images[0].device = "/tmp/code.erofs".into(),
            |c| c.images[0].device = "/dev/../tmp/x".into(),
            |c| c.images[0].fstype = "erofs,ro".into(),
            |c| c.images[0].at = "/proc/x".into(),
            |c| c.devices.push("../sda".into()),
            |c| c.devices.push(String::new()),
            |c| c.uid = 0,
            |c| c.limits.memory_bytes = 0,
            |c| c.limits.cpu_millis = 5,
            |c| c.limits.io_bytes_per_sec = Some(0),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = config();
            change(&mut c);
            assert!(
                matches!(c.validate(), Err(JailError::Config(_))),
                "case {i} passed: {c:?}"
            );
        }
    }
}
