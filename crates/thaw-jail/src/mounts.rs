//! The jail's filesystem: the per-instance host directories, the root built
//! inside the jail's mount namespace, and attaching code to a running jail.
//!
//! Per instance the host keeps `<state_dir>/<id>/`:
//! - `root/`: an empty directory; inside the jail's mount namespace a tmpfs
//!   is mounted on it, filled with read-only binds, and pivot_root'ed into.
//!   The host never sees anything in it.
//! - `attach/`: a tmpfs of one inode (its empty root), made a shared mount
//!   in the host's namespace. The jail's namespace is a slave of the host's,
//!   and binds this tmpfs at the attach point, so whatever the host later
//!   mounts on `attach/` propagates into the jail (and nothing the jail
//!   mounts ever propagates out). Being a filesystem of its own, its line in
//!   the jail's `/proc/self/mountinfo` shows its root, `/`, where a bind of
//!   a host directory would show that directory's host path.

use crate::config::ImageMount;
use crate::error::Context as _;
use crate::sys::{self, cvt, mount, umount_detach};
use crate::{Image, JailConfig, JailError};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Device nodes a Node process needs; bound from the host's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Size of the tmpfs holding the root's mount points and /etc files.
const ROOT_TMPFS: &str = "size=1m,nr_inodes=4096,mode=0755";
const DEV_TMPFS: &str = "size=64k,nr_inodes=64,mode=0755";
/// The attach point's tmpfs: room for its root directory and nothing else,
/// which is also how [`is_attached`] tells it from attached code.
const ATTACH_TMPFS: &str = "size=4k,nr_inodes=1,mode=0755";
/// Hostname inside every jail: nothing of the host's.
pub(crate) const HOSTNAME: &str = "thaw";

pub(crate) struct InstanceDirs {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub attach: PathBuf,
}

impl InstanceDirs {
    /// The instance's own node for the host device `/dev/<name>`.
    pub fn device_node(&self, name: &str) -> PathBuf {
        self.dir.join(format!("dev-{name}"))
    }

    pub fn new(config: &JailConfig) -> Self {
        let dir = config.state_dir.join(&config.id);
        InstanceDirs {
            root: dir.join("root"),
            attach: dir.join("attach"),
            dir,
        }
    }
}

/// Host side, before the jail's namespaces exist: creates the instance's
/// directories and mounts the attach point's tmpfs on `attach/`, shared.
pub(crate) fn prepare_host_dirs(config: &JailConfig) -> Result<(), JailError> {
    let dirs = InstanceDirs::new(config);
    fs::create_dir_all(&config.state_dir)
        .context(|| format!("create state dir {}", config.state_dir.display()))?;
    for d in [&dirs.dir, &dirs.root, &dirs.attach] {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .context(|| format!("create {}", d.display()))?;
    }
    for name in &config.devices {
        make_device_node(config, &dirs, name)?;
    }
    let a = &dirs.attach;
    mount(
        Some(Path::new("tmpfs")),
        a,
        Some("tmpfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(ATTACH_TMPFS),
    )
    .context(|| format!("mount the attach point's tmpfs on {}", a.display()))?;
    // Private first, so the shared mount gets a peer group of its own rather
    // than joining whatever group the state dir's mount is in.
    mount(None, a, None, libc::MS_PRIVATE, None)
        .context(|| format!("make {} private", a.display()))?;
    mount(None, a, None, libc::MS_SHARED, None)
        .context(|| format!("make {} shared", a.display()))?;
    Ok(())
}

/// Host side: a node of the instance's own for the host's `/dev/<name>`
/// (same device numbers), owned by the instance's uid with mode 0600, as
/// Firecracker's jailer makes `/dev/kvm` in its chroot. The host's node may
/// allow only root (`/dev/kvm` is 0600 on some hosts, 0660 for group kvm on
/// others); this one allows the jail's uid and nobody else.
fn make_device_node(config: &JailConfig, dirs: &InstanceDirs, name: &str) -> Result<(), JailError> {
    let host = Path::new("/dev").join(name);
    let meta = fs::metadata(&host).context(|| format!("stat {}", host.display()))?;
    if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
        return Err(JailError::Config(format!(
            "{} is not a character device",
            host.display()
        )));
    }
    let node = dirs.device_node(name);
    let path = sys::cstring(&node).context(|| format!("create {}", node.display()))?;
    // SAFETY: plain syscalls on a NUL-terminated path.
    unsafe {
        cvt(libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | 0o600,
            meta.rdev(),
        ))
        .context(|| format!("mknod {}", node.display()))?;
        cvt(libc::chown(path.as_ptr(), config.uid, config.gid))
            .context(|| format!("chown {}", node.display()))?;
    }
    Ok(())
}

/// Host side: unmounts everything on `attach/` and removes the instance's
/// directories. Only ever rmdir: a directory that is unexpectedly not empty
/// is reported, never deleted recursively (it could be someone's code).
pub(crate) fn remove_host_dirs(config: &JailConfig) -> Result<(), JailError> {
    let dirs = InstanceDirs::new(config);
    // Code mount, then the tmpfs; a bounded loop in case of stacking.
    for _ in 0..16 {
        match umount_detach(&dirs.attach) {
            Ok(()) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => break,
            Err(e) => {
                return Err(JailError::os(
                    format!("unmount {}", dirs.attach.display()),
                    e,
                ))
            }
        }
    }
    // The instance's own device nodes (`dev-<name>`), and nothing else.
    if let Ok(entries) = fs::read_dir(&dirs.dir) {
        for entry in entries.flatten() {
            let is_node = entry
                .file_type()
                .is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_char_device(&t));
            if is_node && entry.file_name().to_string_lossy().starts_with("dev-") {
                fs::remove_file(entry.path())
                    .context(|| format!("remove {}", entry.path().display()))?;
            }
        }
    }
    for d in [&dirs.attach, &dirs.root, &dirs.dir] {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(JailError::os(format!("remove {}", d.display()), e)),
        }
    }
    Ok(())
}

/// Inside the jail's fresh mount namespace (as its init, still root): builds
/// the root and pivots into it. On return `/` is the read-only jail root.
pub(crate) fn build_root(config: &JailConfig) -> Result<(), JailError> {
    let dirs = InstanceDirs::new(config);
    let root = dirs.root.as_path();
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));

    // Host mounts flow in (that is how attach works); ours never flow out.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )
    .context(|| "make the jail's mounts slaves of the host's".into())?;
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o022) };

    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(ROOT_TMPFS),
    )
    .context(|| format!("mount the root tmpfs on {}", root.display()))?;

    // /etc first: a bind below /etc then shadows these files instead of
    // these writes going through it.
    write_etc(&inside(Path::new("/etc")), config)?;

    let mut read_only: Vec<(&Path, ReadOnly)> = config
        .ro_binds
        .iter()
        .map(|p| (p.as_path(), ReadOnly::Bind(p)))
        .chain(
            config
                .binds
                .iter()
                .map(|(host, at)| (at.as_path(), ReadOnly::Bind(host))),
        )
        .chain(
            config
                .images
                .iter()
                .map(|image| (image.at.as_path(), ReadOnly::Image(image))),
        )
        .collect();
    // Parents before children, so a nested mount lands on top of its parent's.
    read_only.sort_by(|a, b| a.0.cmp(b.0));
    for (at, source) in read_only {
        match source {
            ReadOnly::Bind(host) => bind_read_only(host, &inside(at), BindKind::Code)?,
            ReadOnly::Image(image) => mount_image(image, &inside(at))?,
        }
    }
    for (host, at) in &config.writable_binds {
        bind_writable(host, &inside(at))?;
    }

    let dev = inside(Path::new("/dev"));
    mkdir_p(&dev)?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(DEV_TMPFS),
    )
    .context(|| "mount /dev tmpfs".into())?;
    for name in DEVICES {
        bind_read_only(
            &Path::new("/dev").join(name),
            &dev.join(name),
            BindKind::Device,
        )?;
    }
    for name in &config.devices {
        bind_read_only(&dirs.device_node(name), &dev.join(name), BindKind::Device)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .context(|| format!("create /dev/{link}"))?;
    }
    remount_read_only(&dev, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)?;

    // This process is PID 1 of the new PID namespace, so this /proc shows
    // the jail's processes only. /proc/sys is made read-only on top.
    let proc_ = inside(Path::new("/proc"));
    mkdir_p(&proc_)?;
    mount(
        Some(Path::new("proc")),
        &proc_,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .context(|| "mount /proc".into())?;
    let sys = proc_.join("sys");
    mount(Some(&sys), &sys, None, libc::MS_BIND, None).context(|| "bind /proc/sys".into())?;
    remount_read_only(&sys, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)?;

    // noexec: nothing dropped into /tmp runs as a program.
    let tmp = inside(Path::new("/tmp"));
    mkdir_p(&tmp)?;
    let inodes = (config.limits.tmp_bytes / 4096).clamp(1024, 1 << 20);
    mount(
        Some(Path::new("tmpfs")),
        &tmp,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!(
            "size={},nr_inodes={inodes},mode=1777",
            config.limits.tmp_bytes
        )),
    )
    .context(|| "mount /tmp".into())?;

    // Best effort: a host whose hierarchy cannot be mounted here keeps a
    // working jail without it (libuv then says 0: no known limit).
    if config.own_cgroup {
        let _ = mount_own_cgroup(&inside(Path::new("/sys/fs/cgroup")), config);
    }

    let attach_point = inside(&config.attach_point);
    mkdir_p(&attach_point)?;
    mount(Some(&dirs.attach), &attach_point, None, libc::MS_BIND, None)
        .context(|| format!("bind the attach point {}", config.attach_point.display()))?;
    remount_read_only(&attach_point, libc::MS_NOSUID | libc::MS_NODEV)?;

    std::env::set_current_dir(root).context(|| format!("chdir {}", root.display()))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // lazy unmount then drops it, with every host mount under it.
    sys::pivot_root(Path::new("."), Path::new("."))
        .context(|| "pivot_root into the jail root".into())?;
    umount_detach(Path::new(".")).context(|| "unmount the host's root".into())?;
    std::env::set_current_dir("/").context(|| "chdir /".into())?;
    remount_read_only(Path::new("/"), libc::MS_NOSUID | libc::MS_NODEV)?;
    Ok(())
}

/// Mounts the instance's own cgroup read-only where libuv looks for the
/// memory limit (`process.constrainedMemory()` in Node): the memory
/// controller at `/sys/fs/cgroup/memory` (v1) or the hierarchy at
/// `/sys/fs/cgroup` (v2). In the jail's cgroup namespace the instance's
/// cgroup is the root, so nothing of the host's hierarchy shows.
fn mount_own_cgroup(at: &Path, config: &JailConfig) -> Result<(), JailError> {
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    match crate::cgroup::Cgroup::for_instance(&config.id)?.version() {
        crate::cgroup::CgroupVersion::V1 => {
            let memory = at.join("memory");
            mkdir_p(&memory)?;
            mount(
                Some(Path::new("cgroup")),
                &memory,
                Some("cgroup"),
                flags,
                Some("memory"),
            )
            .context(|| "mount the instance's memory cgroup".into())
        }
        crate::cgroup::CgroupVersion::V2 => {
            mkdir_p(at)?;
            mount(Some(Path::new("cgroup2")), at, Some("cgroup2"), flags, None)
                .context(|| "mount the instance's cgroup".into())
        }
    }
}

/// Where a read-only tree of the jail's root comes from.
enum ReadOnly<'a> {
    /// A host file or directory.
    Bind(&'a Path),
    /// A filesystem image the host holds on a loop device.
    Image(&'a ImageMount),
}

/// Mounts the image's filesystem from its device (the superblock the
/// host's [`Image`] holds), read-only, nosuid and nodev, at `at`, and cuts
/// it from the host's propagation as binds are.
fn mount_image(image: &ImageMount, at: &Path) -> Result<(), JailError> {
    mkdir_p(at)?;
    mount(
        Some(&image.device),
        at,
        Some(&image.fstype),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .context(|| {
        format!(
            "mount the {} image on {} (does the host still hold it?)",
            image.fstype,
            image.device.display()
        )
    })?;
    mount(None, at, None, libc::MS_PRIVATE, None)
        .context(|| format!("make {} private", at.display()))
}

#[derive(Clone, Copy)]
enum BindKind {
    /// Programs, libraries, code: executable, never setuid or devices.
    Code,
    /// Device nodes: usable as devices, never executable.
    Device,
}

fn bind_read_only(host: &Path, at: &Path, kind: BindKind) -> Result<(), JailError> {
    let meta = fs::metadata(host)
        .context(|| format!("bind {}: the host path must exist", host.display()))?;
    if !at.exists() {
        let created = if meta.is_dir() {
            fs::create_dir_all(at)
        } else {
            fs::create_dir_all(at.parent().expect("absolute path has a parent"))
                .and_then(|()| fs::File::create(at).map(drop))
        };
        created.context(|| {
            format!(
                "create the mount point for {} (a bind may only go inside another bind where that path exists)",
                host.display()
            )
        })?;
    }
    // Not MS_REC: submounts of a bound directory would stay writable.
    mount(Some(host), at, None, libc::MS_BIND, None)
        .context(|| format!("bind {}", host.display()))?;
    let flags = match kind {
        BindKind::Code => libc::MS_NOSUID | libc::MS_NODEV,
        BindKind::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
    };
    remount_read_only(at, flags)?;
    // Cut it from the host's propagation: later host mounts under a bound
    // directory must not appear in the jail. Only the attach point receives.
    mount(None, at, None, libc::MS_PRIVATE, None)
        .context(|| format!("make {} private", at.display()))
}

/// A host directory the program may write in (never run programs from,
/// nor find devices or setuid files in).
fn bind_writable(host: &Path, at: &Path) -> Result<(), JailError> {
    let meta = fs::metadata(host)
        .context(|| format!("bind {}: the host path must exist", host.display()))?;
    if !meta.is_dir() {
        return Err(JailError::Config(format!(
            "writable bind {} must be a directory",
            host.display()
        )));
    }
    mkdir_p(at)?;
    mount(Some(host), at, None, libc::MS_BIND, None)
        .context(|| format!("bind {}", host.display()))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        None,
        at,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | flags,
        None,
    )
    .context(|| format!("remount {} nosuid, nodev, noexec", at.display()))?;
    mount(None, at, None, libc::MS_PRIVATE, None)
        .context(|| format!("make {} private", at.display()))
}

fn remount_read_only(at: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    mount(
        None,
        at,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
        None,
    )
    .context(|| format!("remount {} read-only", at.display()))
}

fn mkdir_p(p: &Path) -> Result<(), JailError> {
    fs::create_dir_all(p).context(|| format!("create {}", p.display()))
}

/// A minimal /etc: enough for getpwuid, localhost and the hostname to
/// resolve, none of it the host's.
fn write_etc(etc: &Path, config: &JailConfig) -> Result<(), JailError> {
    mkdir_p(etc)?;
    let (uid, gid) = (config.uid, config.gid);
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/:/sbin/nologin\nthaw:x:{uid}:{gid}:thaw:/tmp:/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nthaw:x:{gid}:\n")),
        (
            "hosts",
            format!("127.0.0.1 localhost {HOSTNAME}\n::1 localhost {HOSTNAME}\n"),
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n".into(),
        ),
        ("hostname", format!("{HOSTNAME}\n")),
    ];
    for (name, text) in files {
        fs::write(etc.join(name), text).context(|| format!("write /etc/{name}"))?;
    }
    Ok(())
}

// The new mount API (Linux 5.2, mount_setattr 5.12). libc has the syscall
// numbers but not these constants.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes `host_dir` appear read-only at the attach point of the running jail
/// of `config.id`, without copying anything. Inside, the mount's line in
/// `/proc/self/mountinfo` names `host_dir` (its path within the host's
/// filesystem); [`attach_image`] shows no host path.
///
/// The directory is cloned into a detached mount (open_tree), made read-only,
/// nosuid and nodev while still detached (mount_setattr), then moved onto the
/// instance's shared `attach/` mount (move_mount), from which the kernel
/// propagates it into the jail. Because the mount is read-only before it is
/// attached, the jail never sees a writable moment. (Bind then remount would
/// not work: a remount does not propagate to the jail's copy.) Needs Linux
/// 5.12.
pub fn attach(config: &JailConfig, host_dir: &Path) -> Result<(), JailError> {
    config.validate()?;
    let dirs = InstanceDirs::new(config);
    if is_attached(&dirs, config)? {
        return Err(JailError::AlreadyAttached(config.id.clone()));
    }
    let source = sys::cstring(host_dir).context(|| format!("attach {}", host_dir.display()))?;
    // SAFETY: plain syscall on a NUL-terminated path; the result is a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(JailError::os(
            format!("clone a mount of {} (open_tree)", host_dir.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: open_tree returned a fresh descriptor that we now own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: `attr` is a valid mount_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(JailError::os(
            format!(
                "make the mount of {} read-only (mount_setattr)",
                host_dir.display()
            ),
            io::Error::last_os_error(),
        ));
    }
    let target =
        sys::cstring(&dirs.attach).context(|| format!("attach at {}", dirs.attach.display()))?;
    // SAFETY: plain syscall; `tree` is a detached mount, `target` a path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(JailError::os(
            format!(
                "attach {} at {} (move_mount)",
                host_dir.display(),
                dirs.attach.display()
            ),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Makes the filesystem of `image` appear read-only at the attach point of
/// the running jail of `config.id`: a new mount of the superblock the
/// image holds (nothing is read or copied), made on the instance's shared
/// `attach/`, from which the kernel propagates it into the jail. Inside,
/// its line in `/proc/self/mountinfo` shows `/` on the image's loop device,
/// no host path.
///
/// The mount is read-only, nosuid and nodev from its creation (`mount(2)`
/// sets a new mount's flags before it is attached, and propagated copies
/// take them), on a read-only filesystem on a read-only device: the jail
/// never sees a writable moment.
pub fn attach_image(config: &JailConfig, image: &Image) -> Result<(), JailError> {
    config.validate()?;
    let dirs = InstanceDirs::new(config);
    if is_attached(&dirs, config)? {
        return Err(JailError::AlreadyAttached(config.id.clone()));
    }
    mount(
        Some(image.device()),
        &dirs.attach,
        Some(image.fstype()),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .context(|| {
        format!(
            "attach the image on {} at {}",
            image.device().display(),
            dirs.attach.display()
        )
    })
}

/// Removes attached code from the instance's jail, if any (the jail's attach
/// point is empty again).
pub fn detach(config: &JailConfig) -> Result<(), JailError> {
    config.validate()?;
    let dirs = InstanceDirs::new(config);
    match is_attached(&dirs, config) {
        Ok(true) => match umount_detach(&dirs.attach) {
            Ok(()) => Ok(()),
            // Nothing mounted there at all: the jail was never set up.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(JailError::os(
                format!("unmount {}", dirs.attach.display()),
                e,
            )),
        },
        Ok(false) | Err(JailError::NoJail(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether code is mounted on the instance's `attach/`: the top mount there
/// is then not the attach point's own tmpfs. That one is told apart by
/// holding room for one inode, its empty root; no code tree is such a
/// filesystem (a tree holds at least its entry file).
fn is_attached(dirs: &InstanceDirs, config: &JailConfig) -> Result<bool, JailError> {
    let top = match sys::statfs(&dirs.attach) {
        Ok(top) => top,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(JailError::NoJail(config.id.clone()))
        }
        Err(e) => {
            return Err(JailError::os(
                format!("statfs {}", dirs.attach.display()),
                e,
            ))
        }
    };
    let attach_point = top.f_type == libc::TMPFS_MAGIC && top.f_files == 1;
    Ok(!attach_point)
}
