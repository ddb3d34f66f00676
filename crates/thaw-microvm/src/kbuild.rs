//! thaw's own guest kernel, built from Debian's `linux-source` package with
//! the config fragment `kernel/thaw.config` (built into thaw).
//!
//! The fragment is applied on top of `make allnoconfig`, so the kernel has
//! only what it names: the way Lupine Linux made Linux behave like a
//! unikernel by configuration alone. Everything the guest uses is built in
//! (no modules, no ACPI), and QEMU's microvm machine names the virtio-mmio
//! devices on the kernel command line.
//!
//! The build takes minutes, so its result is kept under
//! `<images>/cache/kernels/thaw-<key>/bzImage`, where the key hashes the
//! source package, the fragment and [`RECIPE`]; a lock file makes a second
//! process wait for the first one's build instead of repeating it. The
//! build is reproducible: the timestamp, user, host and build number that
//! end up in the kernel are fixed, and it runs in the unpacked source tree
//! (so no absolute path of the cache ends up in it).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::image::{hash_file, lock_file, package_deb, BuildProgress};
use crate::MicrovmError;

/// The config fragment, applied with `make allnoconfig KCONFIG_ALLCONFIG=`.
pub const KERNEL_CONFIG: &str = include_str!("../kernel/thaw.config");
/// What the steps below do; changing them must change this (it is part of
/// the cache key).
const RECIPE: &str = "thaw-kernel/1: in-tree allnoconfig+KCONFIG_ALLCONFIG, make bzImage, \
                      KBUILD_BUILD_TIMESTAMP=1970-01-01 USER=thaw HOST=thaw VERSION=1";
/// The Debian metapackage of the newest kernel source (a .tar.xz in
/// `/usr/src`), fetched with `apt-get download`, never installed.
const SOURCE_PACKAGE: &str = "linux-source";
/// What the build runs, and the Debian packages that bring it.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("xz", "xz-utils"),
];
/// Packages `cargo xtask setup` installs for the build.
pub const KERNEL_BUILD_PACKAGES: &[&str] = &[
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "xz-utils",
];

/// A kernel built by [`build_kernel`].
pub(crate) struct BuiltKernel {
    pub(crate) bzimage: PathBuf,
    /// The `linux-source` .deb it was built from.
    pub(crate) source_deb: PathBuf,
}

/// Builds thaw's kernel, or finds it built.
pub(crate) fn build_kernel(
    cache: &Path,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<BuiltKernel, MicrovmError> {
    let deb = package_deb(&cache.join("debs"), SOURCE_PACKAGE, progress)?;
    let mut key = Sha256::new();
    key.update(RECIPE.as_bytes());
    key.update(b"\0");
    key.update(hash_file(&deb)?.as_bytes());
    key.update(b"\0");
    // Settings only: a comment changed in the fragment rebuilds nothing.
    for setting in settings(KERNEL_CONFIG) {
        key.update(setting.as_bytes());
        key.update(b"\n");
    }
    let key = hex::encode(key.finalize())[..20].to_string();

    let kernels = cache.join("kernels");
    fs::create_dir_all(&kernels)
        .map_err(|e| MicrovmError::io(format!("creating {}", kernels.display()), e))?;
    let out = kernels.join(format!("thaw-{key}"));
    let built = BuiltKernel {
        bzimage: out.join("bzImage"),
        source_deb: deb.clone(),
    };
    // Held until this function returns: a second process waits here for
    // the first one's build instead of repeating it.
    let _lock = lock_file(&kernels.join(format!("thaw-{key}.lock")))?;
    if out.join(".complete").exists() {
        return Ok(built);
    }
    check_tools()?;

    let work = kernels.join(format!(".thaw-{key}.build"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)
        .map_err(|e| MicrovmError::io(format!("creating {}", work.display()), e))?;
    let log = kernels.join(format!("thaw-{key}.log"));
    let result = build_in(&work, &deb, &log, progress).and_then(|bzimage| {
        let tmp = kernels.join(format!(".thaw-{key}.out"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)
            .map_err(|e| MicrovmError::io(format!("creating {}", tmp.display()), e))?;
        fs::copy(&bzimage, tmp.join("bzImage"))
            .map_err(|e| MicrovmError::io(format!("copying {}", bzimage.display()), e))?;
        fs::write(tmp.join("thaw.config"), KERNEL_CONFIG)
            .map_err(|e| MicrovmError::io("writing thaw.config", e))?;
        fs::write(tmp.join(".complete"), b"")
            .map_err(|e| MicrovmError::io("marking the kernel built", e))?;
        let _ = fs::remove_dir_all(&out);
        fs::rename(&tmp, &out)
            .map_err(|e| MicrovmError::io(format!("moving into {}", out.display()), e))
    });
    // The source tree and objects are ~1.6 GiB; only the bzImage is kept.
    let _ = fs::remove_dir_all(&work);
    if result.is_ok() {
        let _ = fs::remove_file(&log);
    }
    result.map(|()| built)
}

fn check_tools() -> Result<(), MicrovmError> {
    let missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .filter(|(tool, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .map(|(_, package)| *package)
        // objtool, which the x86-64 build runs, needs libelf's headers.
        .chain((!Path::new("/usr/include/gelf.h").exists()).then_some("libelf-dev"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MicrovmError::Image(format!(
        "building the guest kernel needs {}: `apt-get install {}` (`cargo xtask setup` does)",
        missing.join(", "),
        KERNEL_BUILD_PACKAGES.join(" ")
    )))
}

/// Unpacks the source into `work`, configures and compiles it; returns the
/// bzImage. The output of the configuration and the compiler goes to `log`.
fn build_in(
    work: &Path,
    deb: &Path,
    log: &Path,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<PathBuf, MicrovmError> {
    progress(&BuildProgress::KernelUnpacking {
        deb: deb.to_path_buf(),
    });
    let package = work.join("package");
    command(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&package),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    let tarball = fs::read_dir(package.join("usr/src"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("linux-source-") && name.ends_with(".tar.xz")
        })
        .ok_or_else(|| {
            MicrovmError::Image(format!(
                "{} holds no usr/src/linux-source-*.tar.xz: not Debian's kernel source",
                deb.display()
            ))
        })?;
    command(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(work),
        &format!("tar -xf {}", tarball.display()),
    )?;
    let _ = fs::remove_dir_all(&package);
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let src = work.join(name.trim_end_matches(".tar.xz"));

    progress(&BuildProgress::KernelConfiguring);
    let fragment = work.join("thaw.config");
    fs::write(&fragment, KERNEL_CONFIG)
        .map_err(|e| MicrovmError::io(format!("writing {}", fragment.display()), e))?;
    let mut config = make(&src);
    config
        .arg("allnoconfig")
        .arg(format!("KCONFIG_ALLCONFIG={}", fragment.display()));
    run_logged(&mut config, log, "make allnoconfig", &mut |_| {})?;
    let dotconfig = src.join(".config");
    let dotconfig = fs::read_to_string(&dotconfig)
        .map_err(|e| MicrovmError::io(format!("reading {}", dotconfig.display()), e))?;
    let dropped = dropped_options(KERNEL_CONFIG, &dotconfig);
    if !dropped.is_empty() {
        return Err(MicrovmError::Image(format!(
            "kernel/thaw.config asks for {} but the kernel's Kconfig did not take it \
             (a dependency is missing from the fragment, or the option is gone in this kernel)",
            dropped.join(", ")
        )));
    }

    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    progress(&BuildProgress::KernelCompiling { jobs, files: 0 });
    let started = Instant::now();
    let mut files = 0;
    let mut compile = make(&src);
    compile.arg(format!("-j{jobs}")).arg("bzImage");
    run_logged(&mut compile, log, "make bzImage", &mut |line| {
        if line.starts_with("  CC ") {
            files += 1;
            if files % 100 == 0 {
                progress(&BuildProgress::KernelCompiling { jobs, files });
            }
        }
    })?;
    progress(&BuildProgress::KernelBuilt {
        secs: started.elapsed().as_secs(),
    });
    Ok(src.join("arch/x86/boot/bzImage"))
}

/// `make` in the source tree with what the kernel records of its build fixed.
fn make(src: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .env("KBUILD_BUILD_USER", "thaw")
        .env("KBUILD_BUILD_HOST", "thaw")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("LC_ALL", "C")
        .env_remove("ARCH")
        .env_remove("CROSS_COMPILE")
        .env_remove("MAKEFLAGS");
    cmd
}

fn command(cmd: &mut Command, what: &str) -> Result<(), MicrovmError> {
    let out = cmd
        .output()
        .map_err(|e| MicrovmError::io(what.to_string(), e))?;
    if !out.status.success() {
        return Err(MicrovmError::Image(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `cmd` with its output appended to `log`, handing each stdout line
/// to `line`; on failure the error holds the log's last lines.
fn run_logged(
    cmd: &mut Command,
    log: &Path,
    what: &str,
    line: &mut dyn FnMut(&str),
) -> Result<(), MicrovmError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| MicrovmError::io(format!("opening {}", log.display()), e))?;
    let stderr = file
        .try_clone()
        .map_err(|e| MicrovmError::io(format!("opening {}", log.display()), e))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| MicrovmError::io(format!("running {what}"), e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for text in BufReader::new(stdout).lines() {
        let Ok(text) = text else { break };
        line(&text);
        use std::io::Write;
        let _ = writeln!(file, "{text}");
    }
    let status = child
        .wait()
        .map_err(|e| MicrovmError::io(format!("waiting for {what}"), e))?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    let tail: Vec<&str> = text.lines().collect();
    Err(MicrovmError::Image(format!(
        "{what} failed ({status}); the whole output is in {}:\n{}",
        log.display(),
        tail[tail.len().saturating_sub(25)..].join("\n")
    )))
}

/// The lines of a config fragment that set something (`CONFIG_X=v` or
/// `# CONFIG_X is not set`), without comments and blank lines.
fn settings(fragment: &str) -> impl Iterator<Item = &str> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_") || unset_option(l).is_some())
}

/// `CONFIG_X` of a `# CONFIG_X is not set` line.
fn unset_option(line: &str) -> Option<&str> {
    line.strip_prefix("# ")?
        .strip_suffix(" is not set")
        .filter(|name| name.starts_with("CONFIG_"))
}

/// The settings of `fragment` that `config` (a `.config`) does not have.
fn dropped_options(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::BTreeSet<&str> = config.lines().map(str::trim).collect();
    settings(fragment)
        .filter(|setting| match unset_option(setting) {
            // An option left out of .config altogether is off, too.
            Some(name) => have.iter().any(|h| h.starts_with(&format!("{name}="))),
            None => !have.contains(setting),
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_options_are_the_ones_kconfig_did_not_take() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n\
                        # CONFIG_D is not set\nCONFIG_E=\"x\"\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\nCONFIG_E=\"x\"\n";
        assert_eq!(
            dropped_options(fragment, config),
            ["CONFIG_B=y", "# CONFIG_D is not set"]
        );
    }

    #[test]
    fn cargo_xtask_setup_installs_what_the_build_needs() {
        let xtask = include_str!("../../../xtask/src/main.rs");
        for package in KERNEL_BUILD_PACKAGES {
            assert!(
                xtask.contains(&format!("\"{package}\"")),
                "{package} is missing from xtask's APT_PACKAGES"
            );
        }
        assert!(xtask.contains(&format!("\"{SOURCE_PACKAGE}\"")));
    }

    #[test]
    fn the_fragment_builds_in_what_the_agent_and_qemu_rely_on() {
        for needed in [
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_EROFS_FS=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_TMPFS=y",
            "CONFIG_BLK_DEV_INITRD=y",
        ] {
            assert!(
                KERNEL_CONFIG.lines().any(|l| l == needed),
                "{needed} missing"
            );
        }
        assert!(!KERNEL_CONFIG.contains("CONFIG_MODULES=y"));
    }
}
