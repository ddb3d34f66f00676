//! One cgroup per instance, on cgroup v2 or v1 behind one interface.
//!
//! Layout: instances live in `<base>/thaw/<id>`, where `<base>` is the cgroup
//! the calling process is in, in each hierarchy. Nesting under our own
//! cgroup keeps every instance inside whatever limits the operator put on
//! thaw itself (and is the only place a delegated, non-root thaw may write).
//!
//! - v1: one directory per controller hierarchy (memory, cpu, pids, freezer,
//!   and blkio when mounted), found through /proc/self/mountinfo and
//!   /proc/self/cgroup, so co-mounted controllers (`cpu,cpuacct`) and
//!   containers whose cgroup mounts show a subtree both work.
//! - v2: one directory. v2 forbids processes in a cgroup that hands
//!   controllers to its children, so the host calls [`crate::prepare_host`]
//!   once: it moves thaw into `<base>/thaw-supervisor` and enables the
//!   controllers in `<base>`. A process in a cgroup named `thaw-supervisor`
//!   therefore uses that cgroup's parent as `<base>`, which keeps the host
//!   and the jail processes it spawns agreeing on where instances are.

use crate::error::Context as _;
use crate::{config, JailError, Limits};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which cgroup hierarchy the host uses for resource control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

const SUPERVISOR: &str = "thaw-supervisor";
const GROUP: &str = "thaw";
/// CFS period used for the CPU quota: the kernel default, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// How long freeze, kill and remove wait for the kernel to settle.
const SETTLE: Duration = Duration::from_secs(3);

/// One directory per cgroup v1 hierarchy thaw uses.
#[derive(Debug, Clone)]
struct V1Dirs {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    freezer: PathBuf,
    blkio: Option<PathBuf>,
}

impl V1Dirs {
    /// The same place below each hierarchy's directory.
    fn join(&self, below: &Path) -> V1Dirs {
        V1Dirs {
            memory: self.memory.join(below),
            cpu: self.cpu.join(below),
            pids: self.pids.join(below),
            freezer: self.freezer.join(below),
            blkio: self.blkio.as_ref().map(|b| b.join(below)),
        }
    }
}

/// The host's cgroup layout: the base directory in each hierarchy, under
/// which instances are in `thaw/<id>`.
#[derive(Debug, Clone)]
enum Layout {
    V1(V1Dirs),
    V2 {
        /// `<base>`; instances are in `<base>/thaw/<id>`.
        base: PathBuf,
    },
}

/// The cgroup(s) of one instance. Cheap to build; every method is
/// idempotent and treats a cgroup that does not exist as empty.
#[derive(Debug, Clone)]
pub struct Cgroup {
    id: String,
    dirs: Dirs,
}

#[derive(Debug, Clone)]
enum Dirs {
    V1(V1Dirs),
    V2 { dir: PathBuf },
}

impl Cgroup {
    /// The cgroup of instance `id` on this host (it may not exist yet).
    pub fn for_instance(id: &str) -> Result<Cgroup, JailError> {
        config::validate_id(id)?;
        let dirs = match layout()? {
            Layout::V1(base) => Dirs::V1(base.join(&Path::new(GROUP).join(id))),
            Layout::V2 { base } => Dirs::V2 {
                dir: base.join(GROUP).join(id),
            },
        };
        Ok(Cgroup {
            id: id.to_string(),
            dirs,
        })
    }

    pub fn version(&self) -> CgroupVersion {
        match self.dirs {
            Dirs::V1(_) => CgroupVersion::V1,
            Dirs::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// Every directory of this cgroup, each once (co-mounted controllers
    /// share one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut add = |p: &PathBuf| {
            if !out.contains(p) {
                out.push(p.clone());
            }
        };
        match &self.dirs {
            Dirs::V1(V1Dirs {
                memory,
                cpu,
                pids,
                freezer,
                blkio,
            }) => {
                for d in [memory, cpu, pids, freezer] {
                    add(d);
                }
                if let Some(b) = blkio {
                    add(b);
                }
            }
            Dirs::V2 { dir } => add(dir),
        }
        out
    }

    /// The directory whose `cgroup.procs` lists the instance's processes.
    fn procs_dir(&self) -> &Path {
        match &self.dirs {
            Dirs::V1(V1Dirs { memory, .. }) => memory,
            Dirs::V2 { dir } => dir,
        }
    }

    /// Host pids of every process in the instance (empty if the cgroup does
    /// not exist).
    pub fn procs(&self) -> Result<Vec<i32>, JailError> {
        let path = self.procs_dir().join("cgroup.procs");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(JailError::os(format!("read {}", path.display()), e)),
        }
    }

    /// Whether the kernel's OOM killer killed a process of this instance.
    /// v2: `oom_kill` in memory.events. v1: `oom_kill` in memory.oom_control
    /// (Linux 4.13+); on older kernels, whether the limit was ever hit
    /// (memory.failcnt), which the caller should pair with the program having
    /// died of SIGKILL.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match &self.dirs {
            Dirs::V1(V1Dirs { memory, .. }) => (memory.join("memory.oom_control"), "oom_kill"),
            Dirs::V2 { dir } => (dir.join("memory.events"), "oom_kill"),
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        match keyed_value(&text, key) {
            Some(n) => n > 0,
            None => match &self.dirs {
                Dirs::V1(V1Dirs { memory, .. }) => {
                    read_u64(&memory.join("memory.failcnt")).unwrap_or(0) > 0
                }
                Dirs::V2 { .. } => false,
            },
        }
    }

    /// Memory charged to the instance now, in bytes (its /tmp included).
    pub fn memory_current(&self) -> Result<u64, JailError> {
        let file = match &self.dirs {
            Dirs::V1(V1Dirs { memory, .. }) => memory.join("memory.usage_in_bytes"),
            Dirs::V2 { dir } => dir.join("memory.current"),
        };
        read_u64(&file).context(|| format!("read {}", file.display()))
    }

    /// Stops every process of the instance until [`Cgroup::thaw`]; returns
    /// once the kernel reports them all frozen.
    pub fn freeze(&self) -> Result<(), JailError> {
        self.set_frozen(true)
    }

    /// Lets frozen processes run again.
    pub fn thaw(&self) -> Result<(), JailError> {
        self.set_frozen(false)
    }

    /// The file that thaws the cgroup, and what to write to it: what the
    /// outer process writes, from a signal handler, when the host dies.
    pub(crate) fn thaw_control(&self) -> (PathBuf, &'static str) {
        match &self.dirs {
            Dirs::V1(V1Dirs { freezer, .. }) => (freezer.join("freezer.state"), "THAWED"),
            Dirs::V2 { dir } => (dir.join("cgroup.freeze"), "0"),
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), JailError> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, fn(&str) -> bool) =
            match &self.dirs {
                Dirs::V1(V1Dirs { freezer, .. }) => (
                    freezer.join("freezer.state"),
                    if frozen { "FROZEN" } else { "THAWED" },
                    freezer.join("freezer.state"),
                    if frozen {
                        |s: &str| s.trim() == "FROZEN"
                    } else {
                        |s: &str| s.trim() == "THAWED"
                    },
                ),
                Dirs::V2 { dir } => (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    dir.join("cgroup.events"),
                    if frozen {
                        |s: &str| keyed_value(s, "frozen") == Some(1)
                    } else {
                        |s: &str| keyed_value(s, "frozen") == Some(0)
                    },
                ),
            };
        fs::write(&file, value).context(|| format!("write {value} to {}", file.display()))?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let state = fs::read_to_string(&state_file)
                .context(|| format!("read {}", state_file.display()))?;
            if done(&state) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(JailError::Stuck {
                    id: self.id.clone(),
                    what: format!(
                        "{} did not settle after {SETTLE:?} (a process may be stuck in the kernel)",
                        state_file.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// SIGKILLs every process of the instance and waits until none is left.
    /// v2 uses cgroup.kill (Linux 5.14+), which cannot race with fork; v1
    /// freezes the cgroup, kills every pid in it and thaws, until it is empty.
    pub fn kill_all(&self) -> Result<(), JailError> {
        if let Dirs::V2 { dir } = &self.dirs {
            match fs::write(dir.join("cgroup.kill"), "1") {
                Ok(()) => return self.wait_empty(),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(()),
                // No cgroup.kill on this kernel: fall through to the loop.
                Err(_) => {}
            }
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.survivors(&pids));
            }
            // Frozen processes cannot fork between our read and our kill.
            let frozen = self.freeze().is_ok();
            for pid in self.procs()? {
                // The process may be gone already; that is what we want.
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
            if frozen {
                self.thaw()?;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_empty(&self) -> Result<(), JailError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.survivors(&pids));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn survivors(&self, pids: &[i32]) -> JailError {
        JailError::Stuck {
            id: self.id.clone(),
            what: format!("processes {pids:?} survived SIGKILL for {SETTLE:?}"),
        }
    }

    /// Removes the cgroup from every hierarchy. Processes must be gone
    /// (see [`Cgroup::kill_all`]); a cgroup already removed is fine.
    pub fn remove(&self) -> Result<(), JailError> {
        for dir in self.dirs() {
            let deadline = Instant::now() + SETTLE;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Exiting processes leave the cgroup a moment after they
                    // stop being listed.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        return Err(JailError::os(
                            format!(
                                "remove cgroup {} (kill its processes first with kill_all)",
                                dir.display()
                            ),
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the cgroup and writes every limit. The caller has checked
    /// that no process is in it.
    pub(crate) fn create(
        &self,
        limits: &Limits,
        io_devices: &[(u32, u32)],
    ) -> Result<(), JailError> {
        // A leftover from an instance that died without cleanup starts fresh.
        self.remove()?;
        if let Dirs::V2 { dir } = &self.dirs {
            let group = dir.parent().expect("instance dir has a parent");
            enable_v2_controllers(group.parent().expect("group dir has a parent"))?;
            mkdir(group)?;
            enable_v2_controllers(group)?;
        }
        for dir in self.dirs() {
            mkdir(dir.parent().expect("instance dir has a parent"))?;
            mkdir(&dir)?;
        }
        match &self.dirs {
            Dirs::V1(V1Dirs {
                memory,
                cpu,
                pids,
                blkio,
                ..
            }) => {
                write(memory, "memory.limit_in_bytes", limits.memory_bytes)?;
                // memsw (memory+swap) exists only with swap accounting on;
                // without it, swappiness 0 keeps the instance out of swap.
                write_if_exists(memory, "memory.memsw.limit_in_bytes", limits.memory_bytes)?;
                write_if_exists(memory, "memory.swappiness", 0)?;
                write(cpu, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                write(cpu, "cpu.cfs_quota_us", cpu_quota_us(limits.cpu_millis))?;
                write(pids, "pids.max", limits.pids)?;
                if let (Some(blkio), Some(rate)) = (blkio, limits.io_bytes_per_sec) {
                    for (major, minor) in io_devices {
                        // Best effort: the kernel refuses devices it cannot
                        // throttle; docs/security.md says so.
                        let line = format!("{major}:{minor} {rate}");
                        let _ = fs::write(blkio.join("blkio.throttle.read_bps_device"), &line);
                        let _ = fs::write(blkio.join("blkio.throttle.write_bps_device"), &line);
                    }
                }
            }
            Dirs::V2 { dir } => {
                write(dir, "memory.max", limits.memory_bytes)?;
                write_if_exists(dir, "memory.swap.max", 0)?;
                // One OOM kill takes the whole instance, as v1's init does
                // when the program dies.
                write_if_exists(dir, "memory.oom.group", 1)?;
                let cpu_max = format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits.cpu_millis));
                write(dir, "cpu.max", cpu_max)?;
                write(dir, "pids.max", limits.pids)?;
                if let Some(rate) = limits.io_bytes_per_sec {
                    for (major, minor) in io_devices {
                        let line = format!("{major}:{minor} rbps={rate} wbps={rate}");
                        let _ = fs::write(dir.join("io.max"), line);
                    }
                }
            }
        }
        Ok(())
    }

    /// Changes the memory limit of a running instance: a runtime started
    /// before it knew its function gets the function's limit when bound.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<(), JailError> {
        match &self.dirs {
            Dirs::V1(V1Dirs { memory, .. }) => {
                // v1 wants memory <= memory+swap at every step: raise memsw
                // first when growing, lower it last when shrinking.
                let current: u64 = fs::read_to_string(memory.join("memory.limit_in_bytes"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                if bytes >= current {
                    write_if_exists(memory, "memory.memsw.limit_in_bytes", bytes)?;
                    write(memory, "memory.limit_in_bytes", bytes)?;
                } else {
                    write(memory, "memory.limit_in_bytes", bytes)?;
                    write_if_exists(memory, "memory.memsw.limit_in_bytes", bytes)?;
                }
            }
            Dirs::V2 { dir } => write(dir, "memory.max", bytes)?,
        }
        Ok(())
    }

    /// Moves process `pid` (a host pid) into the instance's cgroup in every
    /// hierarchy.
    pub(crate) fn add_process(&self, pid: i32) -> Result<(), JailError> {
        for dir in self.dirs() {
            write(&dir, "cgroup.procs", pid)?;
        }
        Ok(())
    }
}

fn cpu_quota_us(cpu_millis: u32) -> u64 {
    u64::from(cpu_millis) * CPU_PERIOD_US / 1000
}

fn mkdir(dir: &Path) -> Result<(), JailError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(JailError::os(format!("create cgroup {}", dir.display()), e)),
    }
}

fn write(dir: &Path, file: &str, value: impl ToString) -> Result<(), JailError> {
    let path = dir.join(file);
    let value = value.to_string();
    fs::write(&path, &value).context(|| format!("write {value} to {}", path.display()))
}

fn write_if_exists(dir: &Path, file: &str, value: impl ToString) -> Result<(), JailError> {
    if dir.join(file).exists() {
        write(dir, file, value)
    } else {
        Ok(())
    }
}

fn read_u64(path: &Path) -> io::Result<u64> {
    fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
}

/// The number after `key` in a `key value` per line file (memory.events,
/// cgroup.events, memory.oom_control).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The controllers a v2 instance cgroup uses; `io` is optional.
const V2_REQUIRED: &[&str] = &["memory", "cpu", "pids"];

/// Hands the controllers `dir` has down to its children.
fn enable_v2_controllers(dir: &Path) -> Result<(), JailError> {
    let available = fs::read_to_string(dir.join("cgroup.controllers"))
        .context(|| format!("read {}/cgroup.controllers", dir.display()))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    for c in V2_REQUIRED {
        if !available.contains(c) {
            return Err(JailError::Unsupported(format!(
                "cgroup v2 controller `{c}` is not available in {} (enable it in the parent's cgroup.subtree_control, or give thaw a delegated cgroup: systemd Delegate=yes)",
                dir.display()
            )));
        }
    }
    let wanted: Vec<String> = V2_REQUIRED
        .iter()
        .chain(available.contains(&"io").then_some(&"io"))
        .map(|c| format!("+{c}"))
        .collect();
    let path = dir.join("cgroup.subtree_control");
    fs::write(&path, wanted.join(" ")).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            JailError::Unsupported(format!(
                "cgroup v2: {} holds processes, so it cannot hand controllers to instance cgroups; call thaw_jail::prepare_host() once at startup, before spawning anything (it moves thaw into {SUPERVISOR})",
                dir.display()
            ))
        } else {
            JailError::os(format!("write {} to {}", wanted.join(" "), path.display()), e)
        }
    })
}

/// Makes this host ready for jails: on v2, moves the calling process into
/// `<own cgroup>/thaw-supervisor` if its cgroup cannot otherwise hand
/// controllers to instance cgroups. Call before starting any process.
pub(crate) fn prepare() -> Result<CgroupVersion, JailError> {
    // Creating `<base>/thaw` now finds permission problems at startup
    // rather than at the first instance.
    match layout()? {
        Layout::V1(V1Dirs {
            memory,
            cpu,
            pids,
            freezer,
            blkio,
        }) => {
            for base in [memory, cpu, pids, freezer].into_iter().chain(blkio) {
                mkdir(&base.join(GROUP))?;
            }
            Ok(CgroupVersion::V1)
        }
        Layout::V2 { base } => {
            if enable_v2_controllers(base).is_err() {
                let supervisor = base.join(SUPERVISOR);
                mkdir(&supervisor)?;
                write(&supervisor, "cgroup.procs", std::process::id())?;
                enable_v2_controllers(base)?;
            }
            mkdir(&base.join(GROUP))?;
            enable_v2_controllers(&base.join(GROUP))?;
            Ok(CgroupVersion::V2)
        }
    }
}

/// The host's layout, found once per process: mounts do not move under us,
/// and the own-cgroup rule gives the same base before and after `prepare`.
fn layout() -> Result<&'static Layout, JailError> {
    static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let mountinfo =
                fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
            let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
            detect(&mountinfo, &own, |mount| {
                fs::read_to_string(mount.join("cgroup.controllers"))
                    .map(|c| c.split_whitespace().any(|c| c == "memory"))
                    .unwrap_or(false)
            })
        })
        .as_ref()
        .map_err(|e| JailError::Unsupported(e.clone()))
}

/// A cgroup filesystem mount: where it is, which subtree of its hierarchy
/// it shows, and (v1) which controllers it carries.
struct CgroupMount {
    point: PathBuf,
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = right
                .get(2)
                .map(|o| o.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            Some(CgroupMount {
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
                v2,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` (as /proc/self/cgroup names it) under a
/// mount that shows subtree `mount.root` of its hierarchy.
fn under_mount(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    }
}

/// `has_memory` says whether a cgroup2 mount offers the memory controller
/// (reads its cgroup.controllers; a parameter so tests can fake it).
fn detect(
    mountinfo: &str,
    own_cgroups: &str,
    has_memory: impl Fn(&Path) -> bool,
) -> Result<Layout, String> {
    let mounts = parse_mounts(mountinfo);
    // hierarchy-id:controllers:path
    let own: Vec<(&str, &str)> = own_cgroups
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();

    // A controller lives in one hierarchy only: use v2 when memory is there.
    if let Some(m) = mounts.iter().find(|m| m.v2 && has_memory(&m.point)) {
        let path = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| *p)
            .ok_or("cgroup v2 is mounted but /proc/self/cgroup has no `0::` line")?;
        let path = path.strip_suffix(&format!("/{SUPERVISOR}")).unwrap_or(path);
        let path = if path.is_empty() { "/" } else { path };
        return Ok(Layout::V2 {
            base: under_mount(m, path),
        });
    }

    let v1 = |controller: &str| -> Result<PathBuf, String> {
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
            .ok_or_else(|| {
                format!(
                    "cgroup v1 controller `{controller}` is not mounted (thaw needs cgroup v2 at /sys/fs/cgroup, or v1 with memory, cpu, pids and freezer)"
                )
            })?;
        let path = own
            .iter()
            .find(|(cs, _)| cs.split(',').any(|c| c == controller))
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                format!("/proc/self/cgroup does not list the `{controller}` controller")
            })?;
        Ok(under_mount(mount, path))
    };
    Ok(Layout::V1(V1Dirs {
        memory: v1("memory")?,
        cpu: v1("cpu")?,
        pids: v1("pids")?,
        freezer: v1("freezer")?,
        blkio: v1("blkio").ok(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,blkio
";

    #[test]
    fn finds_v1_dirs_under_our_own_cgroups() {
        let own = "\
5:blkio:/
4:freezer:/x
3:pids:/
2:memory:/docker/abc/inner
1:cpu,cpuacct:/a/b
0::/
";
        let Layout::V1(V1Dirs {
            memory,
            cpu,
            pids,
            freezer,
            blkio,
        }) = detect(HYBRID, own, |_| false).unwrap()
        else {
            panic!("expected v1")
        };
        assert_eq!(memory, Path::new("/sys/fs/cgroup/memory/inner"));
        assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b"));
        assert_eq!(pids, Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(freezer, Path::new("/sys/fs/cgroup/freezer/x"));
        assert_eq!(blkio.unwrap(), Path::new("/sys/fs/cgroup/with space"));
    }

    #[test]
    fn says_which_v1_controller_is_missing() {
        let mounts = "35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let err = detect(mounts, "2:memory:/\n", |_| false).err().unwrap();
        assert!(err.contains("`cpu`"), "{err}");
    }

    #[test]
    fn v2_base_is_our_cgroup_or_the_parent_of_the_supervisor() {
        let mounts = "31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        for (own, base) in [
            (
                "0::/system.slice/thaw.service\n",
                "/sys/fs/cgroup/system.slice/thaw.service",
            ),
            (
                "0::/system.slice/thaw.service/thaw-supervisor\n",
                "/sys/fs/cgroup/system.slice/thaw.service",
            ),
            ("0::/thaw-supervisor\n", "/sys/fs/cgroup"),
            ("0::/\n", "/sys/fs/cgroup"),
        ] {
            let Layout::V2 { base: got } = detect(mounts, own, |_| true).unwrap() else {
                panic!("expected v2")
            };
            assert_eq!(got, Path::new(base), "{own}");
        }
        // Hybrid hosts keep their controllers on v1.
        assert!(matches!(
            detect(
                HYBRID,
                "2:memory:/\n1:cpu,cpuacct:/\n3:pids:/\n4:freezer:/\n0::/\n",
                |_| false
            ),
            Ok(Layout::V1(_))
        ));
    }

    #[test]
    fn keyed_values() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
        assert_eq!(keyed_value(events, "oom"), Some(1));
        assert_eq!(keyed_value("populated 1\nfrozen 0\n", "frozen"), Some(0));
        assert_eq!(keyed_value("", "frozen"), None);
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(250), 25_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
    }

    /// The v2 freeze, kill and remove paths, on this machine's controller-less
    /// cgroup2 mount (freeze and kill are core v2 features, so they work
    /// there; limits cannot be tested here and are not).
    #[test]
    fn v2_freeze_kill_remove_on_a_real_cgroup2_mount() {
        let mounts = parse_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let Some(unified) = mounts.iter().find(|m| m.v2) else {
            eprintln!("no cgroup2 mount on this host; v1-only machine");
            return;
        };
        let dir = unified
            .point
            .join(format!("thaw-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cg = Cgroup {
            id: "unit".into(),
            dirs: Dirs::V2 { dir: dir.clone() },
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add_process(child.id() as i32).unwrap();
        assert_eq!(cg.procs().unwrap(), vec![child.id() as i32]);
        cg.freeze().unwrap();
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(
            fs::read_to_string(dir.join("cgroup.events"))
                .unwrap()
                .contains("frozen 1"),
            "{stat}"
        );
        cg.thaw().unwrap();
        cg.kill_all().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        cg.remove().unwrap();
        assert!(!dir.exists());
        cg.remove().unwrap();
        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
    }
}
