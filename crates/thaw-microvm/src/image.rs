//! The guest image: a kernel ([`GuestKernel`]: thaw's own, built from
//! Debian's source, or Debian's cloud kernel) and an initramfs holding
//! `thaw-agent` as `/init`, Node with its shared libraries, the shim, and
//! the kernel modules the agent loads (none for thaw's own kernel).
//!
//! Built reproducibly (entries sorted, uid/gid/mtime 0) and stored under
//! `<data>/images/<id>/`, where the id is a hash of every input: the same
//! inputs are never built twice. Debian packages are downloaded once with
//! `apt-get download` into `<data>/images/cache/debs/`; kernels are
//! extracted or built into `<data>/images/cache/kernels/`. (`<data>/images`
//! is [`ImageOptions::images_dir`].)

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::kbuild;
use crate::kmod;
use crate::MicrovmError;

/// Bumped whenever the layout of the image changes in a way its inputs do
/// not show (so old caches are not reused).
const IMAGE_FORMAT: &str = "thaw-image/1";
/// Where the guest finds things. The agent's config names them.
pub const GUEST_NODE: &str = "/usr/bin/node";
pub const GUEST_SHIM: &str = "/runtime/shim.mjs";
pub const GUEST_AGENT_CONFIG: &str = "/etc/thaw-agent.conf";
const GUEST_MODULES: &str = "/lib/modules/thaw";

/// The Debian package of the `Cloud` kernel (a metapackage).
const CLOUD_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Command line words for a kernel without ACPI: no machine here can reset
/// through the keyboard controller or ACPI, so a reboot (which `-no-reboot`
/// turns into QEMU exiting) goes straight to a triple fault.
const BUILT_IN_KERNEL_ARGS: &str = "reboot=t";

/// Modules every image needs: the virtio-mmio transport of QEMU's `microvm`
/// machine, the serial ports, and block devices for the code.
pub const REQUIRED_MODULES: &[&str] = &["virtio_mmio", "virtio_console", "virtio_blk"];
/// Filesystems a code drive may use, loaded when the kernel has them.
pub const OPTIONAL_MODULES: &[&str] = &["erofs", "squashfs", "9pnet_virtio", "9p"];

/// What to build an image from.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Where images are built and cached (thaw's `<data>/images` unless
    /// `thaw up --image-cache` says otherwise); one directory per image id,
    /// and downloads under `cache/`.
    pub images_dir: PathBuf,
    /// The `thaw-agent` binary (built for the host's x86_64 glibc).
    pub agent: PathBuf,
    /// The runtime shim (`runtime/shim/shim.mjs`).
    pub shim: PathBuf,
    /// The Node binary to copy into the guest, with the libraries `ldd` lists.
    pub node: PathBuf,
    /// Which kernel the guest boots.
    pub kernel: GuestKernel,
    /// Extra files for the guest: `(host path, absolute guest path)`.
    pub extra_files: Vec<(PathBuf, String)>,
}

impl ImageOptions {
    pub fn new(
        images_dir: impl Into<PathBuf>,
        agent: impl Into<PathBuf>,
        shim: impl Into<PathBuf>,
    ) -> Self {
        ImageOptions {
            images_dir: images_dir.into(),
            agent: agent.into(),
            shim: shim.into(),
            node: PathBuf::from("/usr/bin/node"),
            kernel: GuestKernel::default(),
            extra_files: Vec::new(),
        }
    }
}

/// The guest's PID 1 for a `thaw` at `thaw_exe`: `THAW_AGENT` when set,
/// else `thaw-agent` beside it (where `cargo build` and `cargo xtask up`
/// put it).
pub fn find_agent(thaw_exe: &Path) -> Result<PathBuf, MicrovmError> {
    if let Some(path) = std::env::var_os("THAW_AGENT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(MicrovmError::Image(format!(
                "THAW_AGENT is {}, which is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    let beside = thaw_exe.with_file_name("thaw-agent");
    if !beside.is_file() {
        return Err(MicrovmError::Image(format!(
            "thaw-agent, the guest's init, is needed beside {} or in THAW_AGENT: \
             build it with `cargo build --release -p thaw-agent`",
            thaw_exe.display()
        )));
    }
    Ok(beside)
}

/// The guest's kernel, and with it what the VM's machine must look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GuestKernel {
    /// thaw's own kernel (the default), built once from Debian's
    /// `linux-source` package with `kernel/thaw.config` (minutes; see
    /// `kbuild.rs`): every driver built in, no modules, no ACPI; QEMU names
    /// the virtio-mmio devices on the kernel command line. It boots faster
    /// and costs less memory per VM than `Cloud` (docs/microvm.md).
    #[default]
    Built,
    /// Debian's `linux-image-cloud-amd64`, fetched with `apt-get download`:
    /// its virtio drivers are modules (the agent loads them) and it finds
    /// virtio-mmio devices only through ACPI. Nothing to compile.
    Cloud,
    /// A bzImage built elsewhere with every driver thaw needs built in, as
    /// `kernel/thaw.config` has them: no modules, no ACPI, virtio-mmio
    /// devices from the kernel command line.
    Prebuilt(PathBuf),
}

/// A built image, as recorded in `<dir>/image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Hash of every input; also the directory name.
    pub id: String,
    pub dir: PathBuf,
    /// The bzImage, booted with `-kernel`.
    pub kernel: PathBuf,
    /// The uncompressed newc initramfs, given with `-initrd`.
    pub initramfs: PathBuf,
    pub kernel_release: String,
    /// The kernel .deb the kernel and modules came from.
    pub kernel_deb: String,
    /// Modules the agent loads at boot, in load order.
    pub modules: Vec<String>,
    pub initramfs_bytes: u64,
    /// Whether the kernel needs ACPI to find the machine's devices (QEMU's
    /// `microvm,acpi=on`). Without it, QEMU names the virtio-mmio devices
    /// on the kernel command line (`virtio_mmio.device=`).
    #[serde(default = "yes")]
    pub acpi: bool,
    /// Kernel command line words this kernel needs beyond thaw's own.
    #[serde(default)]
    pub kernel_args: String,
}

fn yes() -> bool {
    true
}

impl ImageInfo {
    /// Reads the record of an image built before.
    pub fn load(dir: &Path) -> Result<ImageInfo, MicrovmError> {
        let path = dir.join("image.json");
        let text = fs::read(&path)
            .map_err(|e| MicrovmError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| {
            MicrovmError::Image(format!("{} is not an image record: {e}", path.display()))
        })
    }
}

/// What [`build_image`] is doing, for a progress display.
#[derive(Debug, Clone)]
pub enum BuildProgress {
    Downloading {
        package: String,
    },
    Extracting {
        deb: PathBuf,
    },
    /// Unpacking Debian's kernel source to build thaw's kernel.
    KernelUnpacking {
        deb: PathBuf,
    },
    KernelConfiguring,
    /// Compiling the kernel with `jobs` jobs; `files` compiled so far.
    KernelCompiling {
        jobs: usize,
        files: usize,
    },
    KernelBuilt {
        secs: u64,
    },
    Collecting,
    /// Hashing the inputs; `bytes` is their total size.
    Hashing {
        bytes: u64,
    },
    Cached {
        id: String,
    },
    Writing {
        id: String,
        bytes: u64,
    },
    Built {
        id: String,
    },
}

impl fmt::Display for BuildProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildProgress::Downloading { package } => {
                write!(f, "downloading {package} with apt-get")
            }
            BuildProgress::Extracting { deb } => write!(f, "extracting {}", deb.display()),
            BuildProgress::KernelUnpacking { deb } => write!(
                f,
                "building thaw's guest kernel (once; minutes): unpacking {}",
                deb.display()
            ),
            BuildProgress::KernelConfiguring => write!(
                f,
                "building thaw's guest kernel: make allnoconfig with kernel/thaw.config"
            ),
            BuildProgress::KernelCompiling { jobs, files: 0 } => write!(
                f,
                "building thaw's guest kernel: make -j{jobs} bzImage (about 770 files, \
                 ~8 minutes of CPU time)"
            ),
            BuildProgress::KernelCompiling { files, .. } => {
                write!(f, "building thaw's guest kernel: {files} files compiled")
            }
            BuildProgress::KernelBuilt { secs } => {
                write!(f, "built thaw's guest kernel in {secs} s")
            }
            BuildProgress::Collecting => write!(
                f,
                "collecting the agent, Node, its libraries and kernel modules"
            ),
            BuildProgress::Hashing { bytes } => write!(f, "hashing {} MiB of inputs", bytes >> 20),
            BuildProgress::Cached { id } => write!(f, "image {id} is already built"),
            BuildProgress::Writing { id, bytes } => {
                write!(f, "writing image {id} ({} MiB initramfs)", bytes >> 20)
            }
            BuildProgress::Built { id } => write!(f, "built image {id}"),
        }
    }
}

enum Entry {
    Dir,
    File { mode: u32, source: Source },
    CharDev { mode: u32, major: u32, minor: u32 },
}

enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Source {
    fn len(&self) -> Result<u64, MicrovmError> {
        match self {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::Host(p) => Ok(fs::metadata(p)
                .map_err(|e| MicrovmError::io(format!("reading {}", p.display()), e))?
                .len()),
        }
    }

    fn open(&self) -> Result<Box<dyn Read + '_>, MicrovmError> {
        match self {
            Source::Bytes(b) => Ok(Box::new(&b[..])),
            Source::Host(p) => {
                Ok(Box::new(fs::File::open(p).map_err(|e| {
                    MicrovmError::io(format!("opening {}", p.display()), e)
                })?))
            }
        }
    }
}

/// The guest's file tree, kept sorted so the archive is reproducible.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn add(&mut self, path: &str, entry: Entry) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy();
            if s != "/" && !s.is_empty() {
                self.0.entry(s.into_owned()).or_insert(Entry::Dir);
            }
            parent = p.parent();
        }
        self.0.insert(path.to_string(), entry);
    }

    fn file(&mut self, path: &str, mode: u32, source: Source) {
        self.add(path, Entry::File { mode, source });
    }
}

/// Builds (or finds already built) the image for `opts`.
pub fn build_image(
    opts: &ImageOptions,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<ImageInfo, MicrovmError> {
    let images = opts.images_dir.clone();
    let cache = images.join("cache");
    let kernel = match &opts.kernel {
        GuestKernel::Cloud => {
            let deb = package_deb(&cache.join("debs"), CLOUD_KERNEL_PACKAGE, progress)?;
            extract_kernel(&cache.join("kernels"), &deb, progress)?
        }
        GuestKernel::Built => {
            let built = kbuild::build_kernel(&cache, progress)?;
            KernelTree::built_in(built.bzimage, &built.source_deb)?
        }
        GuestKernel::Prebuilt(bzimage) => KernelTree::built_in(bzimage.clone(), bzimage)?,
    };

    progress(&BuildProgress::Collecting);
    let modules = match &kernel.modules_dir {
        Some(dir) => {
            let required: Vec<String> = REQUIRED_MODULES.iter().map(|s| s.to_string()).collect();
            let optional: Vec<String> = OPTIONAL_MODULES.iter().map(|s| s.to_string()).collect();
            kmod::resolve(dir, &required, &optional)?
        }
        None => Vec::new(),
    };

    let mut tree = Tree::default();
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/code"] {
        tree.add(dir, Entry::Dir);
    }
    // The kernel opens /dev/console for PID 1 before anything is mounted.
    tree.add(
        "/dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    tree.file("/init", 0o755, Source::Host(opts.agent.clone()));
    tree.file(GUEST_NODE, 0o755, Source::Host(opts.node.clone()));
    tree.file(GUEST_SHIM, 0o644, Source::Host(opts.shim.clone()));
    for binary in [&opts.agent, &opts.node] {
        for lib in shared_libraries(binary)? {
            let guest = lib.to_string_lossy().into_owned();
            tree.file(&guest, 0o755, Source::Host(lib));
        }
    }
    let mut config = String::from("# Written by thaw-microvm's image build; read by thaw-agent.\n");
    for module in &modules {
        let guest = format!("{GUEST_MODULES}/{}.ko", module.name);
        config.push_str(&format!("module {guest}\n"));
        tree.file(&guest, 0o644, Source::Bytes(module.bytes.clone()));
    }
    if !kernel.acpi {
        // Without ACPI the kernel cannot power off (it halts for good);
        // a reset ends QEMU as well (-no-reboot).
        config.push_str("shutdown reboot\n");
    }
    config.push_str(&format!(
        "port {}\ncontrol_port {}\nexec {GUEST_NODE}\narg {GUEST_SHIM}\n\
         env PATH=/usr/local/bin:/usr/bin:/bin\nenv HOME=/tmp\nenv THAW_FD=3\n",
        crate::vm::PROTOCOL_PORT,
        crate::vm::CONTROL_PORT
    ));
    tree.file(
        GUEST_AGENT_CONFIG,
        0o644,
        Source::Bytes(config.into_bytes()),
    );
    tree.file(
        "/etc/passwd",
        0o644,
        Source::Bytes(b"root:x:0:0:root:/tmp:/bin/false\n".to_vec()),
    );
    tree.file("/etc/group", 0o644, Source::Bytes(b"root:x:0:\n".to_vec()));
    tree.file(
        "/etc/hosts",
        0o644,
        Source::Bytes(b"127.0.0.1 localhost\n".to_vec()),
    );
    for (host, guest) in &opts.extra_files {
        if !guest.starts_with('/') {
            return Err(MicrovmError::Image(format!(
                "extra file {guest:?}: guest paths must be absolute"
            )));
        }
        tree.file(guest, 0o644, Source::Host(host.clone()));
    }

    let total: u64 = tree
        .0
        .values()
        .map(|e| match e {
            Entry::File { source, .. } => source.len(),
            _ => Ok(0),
        })
        .sum::<Result<u64, _>>()?;
    progress(&BuildProgress::Hashing { bytes: total });
    let mut hasher = Sha256::new();
    hasher.update(IMAGE_FORMAT.as_bytes());
    hasher.update(kernel.hash.as_bytes());
    for (path, entry) in &tree.0 {
        hasher.update(path.as_bytes());
        match entry {
            Entry::Dir => hasher.update(b"\0dir\0"),
            Entry::CharDev { mode, major, minor } => {
                hasher.update(format!("\0chr {mode} {major} {minor}\0"))
            }
            Entry::File { mode, source } => {
                hasher.update(format!("\0file {mode}\0"));
                io::copy(&mut source.open()?, &mut HashWriter(&mut hasher))
                    .map_err(|e| MicrovmError::io(format!("hashing {path}"), e))?;
            }
        }
    }
    let id = hex::encode(hasher.finalize())[..20].to_string();

    let dir = images.join(&id);
    if dir.join("image.json").exists() {
        progress(&BuildProgress::Cached { id: id.clone() });
        return ImageInfo::load(&dir);
    }
    progress(&BuildProgress::Writing {
        id: id.clone(),
        bytes: total,
    });
    let tmp = images.join(format!(".{id}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)
        .map_err(|e| MicrovmError::io(format!("creating {}", tmp.display()), e))?;
    let result = write_image(&tmp, &tree, &kernel);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let initramfs_bytes = fs::metadata(tmp.join("initramfs.cpio"))
        .map(|m| m.len())
        .unwrap_or(0);
    let info = ImageInfo {
        id: id.clone(),
        dir: dir.clone(),
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio"),
        kernel_release: kernel.release.clone(),
        kernel_deb: kernel
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        modules: modules.iter().map(|m| m.name.clone()).collect(),
        initramfs_bytes,
        acpi: kernel.acpi,
        kernel_args: kernel.kernel_args.clone(),
    };
    let json = serde_json::to_vec_pretty(&info).expect("an image record serialises");
    fs::write(tmp.join("image.json"), json)
        .map_err(|e| MicrovmError::io("writing image.json", e))?;
    match fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another build of the same inputs finished first: same bytes.
        Err(_) if dir.join("image.json").exists() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            return Err(MicrovmError::io(
                format!("moving the image into {}", dir.display()),
                e,
            ))
        }
    }
    progress(&BuildProgress::Built { id });
    Ok(info)
}

fn write_image(dir: &Path, tree: &Tree, kernel: &KernelTree) -> Result<(), MicrovmError> {
    fs::copy(&kernel.bzimage, dir.join("vmlinuz"))
        .map_err(|e| MicrovmError::io(format!("copying {}", kernel.bzimage.display()), e))?;
    let path = dir.join("initramfs.cpio");
    let file = fs::File::create(&path)
        .map_err(|e| MicrovmError::io(format!("creating {}", path.display()), e))?;
    let mut cpio = CpioWriter::new(BufWriter::with_capacity(1 << 20, file));
    let werr =
        |p: &str, e: io::Error| MicrovmError::io(format!("writing {p} into the initramfs"), e);
    for (p, entry) in &tree.0 {
        match entry {
            Entry::Dir => cpio.dir(p).map_err(|e| werr(p, e))?,
            Entry::CharDev { mode, major, minor } => cpio
                .char_dev(p, *mode, *major, *minor)
                .map_err(|e| werr(p, e))?,
            Entry::File { mode, source } => {
                let len = source.len()?;
                cpio.file(p, *mode, len, &mut source.open()?)
                    .map_err(|e| werr(p, e))?;
            }
        }
    }
    cpio.finish().map_err(|e| werr("the trailer", e))?;
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn hash_file(path: &Path) -> Result<String, MicrovmError> {
    let mut file = fs::File::open(path)
        .map_err(|e| MicrovmError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut HashWriter(&mut hasher))
        .map_err(|e| MicrovmError::io(format!("hashing {}", path.display()), e))?;
    Ok(hex::encode(hasher.finalize()))
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> Result<Vec<u8>, MicrovmError> {
    let out = cmd
        .output()
        .map_err(|e| MicrovmError::io(format!("{what} ({hint})"), e))?;
    if !out.status.success() {
        return Err(MicrovmError::Image(format!(
            "{what} failed: {} ({hint})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The .deb of `package`, downloaded into `debs` unless a .deb of that
/// package is already there. A metapackage (`linux-image-cloud-amd64`,
/// `linux-source`) is followed to the versioned package it depends on (the
/// first dependency named like it).
pub(crate) fn package_deb(
    debs: &Path,
    package: &str,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<PathBuf, MicrovmError> {
    fs::create_dir_all(debs)
        .map_err(|e| MicrovmError::io(format!("creating {}", debs.display()), e))?;
    // Concurrent builds (tests, two thaws) must not download into the same
    // file at once.
    let _lock = lock_file(&debs.join(".download.lock"))?;
    let family = format!(
        "{}-",
        package.split('-').take(2).collect::<Vec<_>>().join("-")
    );
    let mut package = package.to_string();
    for _ in 0..4 {
        let deb = match find_deb(debs, &package) {
            Some(deb) => deb,
            None => {
                progress(&BuildProgress::Downloading {
                    package: package.clone(),
                });
                run(
                    Command::new("apt-get")
                        .args(["download", &package])
                        .current_dir(debs),
                    &format!("apt-get download {package}"),
                    "run `apt-get update` first; the package must exist in the host's apt sources",
                )?;
                find_deb(debs, &package).ok_or_else(|| {
                    MicrovmError::Image(format!(
                        "apt-get download {package} left no .deb in {}",
                        debs.display()
                    ))
                })?
            }
        };
        let depends = run(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Depends"),
            &format!("dpkg-deb -f {}", deb.display()),
            "dpkg-deb comes with dpkg",
        )?;
        let depends = String::from_utf8_lossy(&depends).into_owned();
        let next = depends
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .find(|d| d.starts_with(&family));
        match next {
            Some(next) => package = next.to_string(),
            None => return Ok(deb),
        }
    }
    Err(MicrovmError::Image(format!(
        "{package}: too many levels of metapackages"
    )))
}

/// Takes an exclusive lock on `path` (created if need be), held until the
/// returned file is dropped.
pub(crate) fn lock_file(path: &Path) -> Result<fs::File, MicrovmError> {
    use std::os::fd::AsRawFd;
    let file = fs::File::create(path)
        .map_err(|e| MicrovmError::io(format!("creating {}", path.display()), e))?;
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(MicrovmError::io(
            format!("locking {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .collect();
    found.sort();
    found.pop()
}

/// A kernel ready to go into an image.
struct KernelTree {
    /// Hash of what the kernel came from (the .deb, or the bzImage).
    hash: String,
    /// The file it came from, named in [`ImageInfo::kernel_deb`].
    source: PathBuf,
    bzimage: PathBuf,
    /// Where its modules are, for a kernel that has any.
    modules_dir: Option<PathBuf>,
    release: String,
    acpi: bool,
    kernel_args: String,
}

impl KernelTree {
    /// A kernel with every driver thaw needs built in (`kernel/thaw.config`).
    fn built_in(bzimage: PathBuf, source: &Path) -> Result<KernelTree, MicrovmError> {
        Ok(KernelTree {
            hash: hash_file(&bzimage)?,
            source: source.to_path_buf(),
            release: bzimage_release(&bzimage)?,
            bzimage,
            modules_dir: None,
            acpi: false,
            kernel_args: BUILT_IN_KERNEL_ARGS.to_string(),
        })
    }
}

/// The release a bzImage announces (`6.1.158-thaw`), read from its setup
/// header's kernel version string, as `file(1)` does.
fn bzimage_release(bzimage: &Path) -> Result<String, MicrovmError> {
    let bytes = fs::read(bzimage)
        .map_err(|e| MicrovmError::io(format!("reading {}", bzimage.display()), e))?;
    let not_a_bzimage =
        || MicrovmError::Image(format!("{} is not an x86 bzImage", bzimage.display()));
    // The boot protocol's setup header: "HdrS" at 0x202, the version
    // string's offset (from 0x200) at 0x20e.
    if bytes.get(0x202..0x206) != Some(b"HdrS") {
        return Err(not_a_bzimage());
    }
    let offset = u16::from_le_bytes([bytes[0x20e], bytes[0x20f]]) as usize + 0x200;
    let version = bytes.get(offset..).ok_or_else(not_a_bzimage)?;
    let end = version
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(version.len());
    let version = String::from_utf8_lossy(&version[..end]);
    version
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(not_a_bzimage)
}

fn extract_kernel(
    kernels: &Path,
    deb: &Path,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<KernelTree, MicrovmError> {
    let deb_hash = hash_file(deb)?;
    let root = kernels.join(&deb_hash[..20]);
    if !root.join(".complete").exists() {
        progress(&BuildProgress::Extracting {
            deb: deb.to_path_buf(),
        });
        let tmp = kernels.join(format!(".{}.tmp-{}", &deb_hash[..20], std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)
            .map_err(|e| MicrovmError::io(format!("creating {}", tmp.display()), e))?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp),
            &format!("dpkg-deb -x {}", deb.display()),
            "is it a kernel .deb?",
        )?;
        fs::write(tmp.join(".complete"), b"")
            .map_err(|e| MicrovmError::io("marking the kernel extracted", e))?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&tmp, &root)
            .map_err(|e| MicrovmError::io(format!("moving into {}", root.display()), e))?;
    }
    let bzimage = fs::read_dir(root.join("boot"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            MicrovmError::Image(format!(
                "{} holds no boot/vmlinuz-*: not a kernel package",
                deb.display()
            ))
        })?;
    let release = bzimage
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            MicrovmError::Image(format!("{} holds no modules for {release}", deb.display()))
        })?;
    Ok(KernelTree {
        hash: deb_hash,
        source: deb.to_path_buf(),
        bzimage,
        modules_dir: Some(modules_dir),
        release,
        acpi: true,
        kernel_args: String::new(),
    })
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this host
/// (the guest gets them at the same paths, with the same loader).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, MicrovmError> {
    let out = run(
        Command::new("ldd").arg(binary),
        &format!("ldd {}", binary.display()),
        "the guest needs the binary's libraries; ldd comes with libc-bin",
    )?;
    parse_ldd(&String::from_utf8_lossy(&out)).map_err(|lib| {
        MicrovmError::Image(format!(
            "{} needs {lib}, which ldd cannot find",
            binary.display()
        ))
    })
}

fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.starts_with("not found") {
                    return Err(name.to_string());
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_paths_and_missing_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1"
        );
    }

    #[test]
    fn tree_adds_parents_in_sorted_order() {
        let mut t = Tree::default();
        t.file("/usr/bin/node", 0o755, Source::Bytes(vec![]));
        t.add("/dev", Entry::Dir);
        let paths: Vec<&str> = t.0.keys().map(|s| s.as_str()).collect();
        assert_eq!(paths, ["/dev", "/usr", "/usr/bin", "/usr/bin/node"]);
    }
}
