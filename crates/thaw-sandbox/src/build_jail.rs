//! TypeScript builds in thaw's jail: esbuild sees only itself and the bundle.
//!
//! [`JailedBuild`] is the [`BuildSandbox`] of a platform that jails its
//! runtimes. Each build gets a jail of its own, started like a runtime's
//! (`thaw __jail`, docs/security.md): its root holds the esbuild binary at
//! `/esbuild` (with its ELF interpreter and libraries at their host paths,
//! should it be dynamically linked) and the bundle read-only at `/src`,
//! with the bundle's build folder (`.thaw`) bound writable, nosuid, nodev
//! and noexec over `/src/.thaw`. Besides them the jail has only its own
//! `/etc`, `/dev`, `/proc` and `/tmp`, and no network. So a tsconfig.json
//! `extends`, a `paths` entry or an import naming a host file finds
//! nothing, and the build fails without reading it.
//!
//! esbuild runs as an unprivileged uid of its own (the settings' first), in
//! a cgroup with memory, CPU and pids limits, under the jail's seccomp
//! filter, and is killed after the build's time limit; the jail is torn
//! down after every build. The build folder is handed to that uid for the
//! build and taken back after, without following anything esbuild may
//! have left there.

use crate::JailSettings;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use thaw_bundle::{BuildEnd, BuildJob, BuildOutput, BuildSandbox, BuildView};

/// Where the bundle and esbuild are inside a build's jail. esbuild's
/// working folder is the jail's `/`, so it names the bundle's files
/// `src/...`; thaw-bundle shows them relative to the bundle.
const INSIDE_BUNDLE: &str = "/src";
const INSIDE_ESBUILD: &str = "/esbuild";
/// Empty and unused: every jail has an attach point.
const INSIDE_ATTACH: &str = "/code";

/// Runs each build's esbuild in a jail of its own.
pub struct JailedBuild {
    settings: JailSettings,
    next: AtomicU64,
}

impl JailedBuild {
    /// Builds run with `settings`: `exe` is the `thaw` binary, jails go in
    /// `state_dir` (clean it up with `thaw_jail::cleanup_stale` at start),
    /// and a build runs as uid and gid `first_uid + n % uids`. Give builds
    /// uids no runtime ever has.
    pub fn new(settings: JailSettings) -> JailedBuild {
        JailedBuild {
            settings,
            next: AtomicU64::new(0),
        }
    }

    /// Limits for a build's jail: esbuild bundles a large project in well
    /// under a GiB and one core, with a few dozen threads.
    pub fn default_limits() -> thaw_jail::Limits {
        thaw_jail::Limits {
            memory_bytes: 1 << 30,
            cpu_millis: 1000,
            pids: 256,
            tmp_bytes: 16 << 20,
            io_bytes_per_sec: None,
            nofile: 4096,
            // The output is one file.
            fsize_bytes: 256 << 20,
        }
    }
}

impl BuildSandbox for JailedBuild {
    fn view(&self, _tree: &Path) -> BuildView {
        BuildView {
            root: PathBuf::from(INSIDE_BUNDLE),
            cwd: PathBuf::from("/"),
        }
    }

    fn run(&self, job: &BuildJob<'_>) -> io::Result<BuildOutput> {
        let program = job.program.canonicalize()?;
        if !is_elf(&program)? {
            return Err(io::Error::other(format!(
                "{} is not a native executable (an npm wrapper script?): a jailed build runs \
                 esbuild's own binary; point THAW_ESBUILD at node_modules/@esbuild/<os>-<arch>/bin/esbuild",
                program.display()
            )));
        }
        // The program itself goes to a fixed path; what it loads (nothing,
        // for the static binary npm installs) where the loader looks.
        let mut ro_binds = thaw_jail::program_binds(&program).map_err(io::Error::other)?;
        ro_binds.retain(|p| p != &program);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let uid = self.settings.uid_for(n);
        let config = thaw_jail::JailConfig {
            id: format!("build-{}-{n}", std::process::id()),
            state_dir: self.settings.state_dir.clone(),
            ro_binds,
            binds: vec![
                (program, PathBuf::from(INSIDE_ESBUILD)),
                (job.tree.to_path_buf(), PathBuf::from(INSIDE_BUNDLE)),
            ],
            writable_binds: vec![(
                job.out_dir.to_path_buf(),
                Path::new(INSIDE_BUNDLE).join(thaw_bundle::BUILD_DIR),
            )],
            images: Vec::new(),
            devices: Vec::new(),
            own_seccomp: false,
            own_cgroup: false,
            attach_point: PathBuf::from(INSIDE_ATTACH),
            uid,
            gid: uid,
            limits: self.settings.limits.clone(),
        };
        let args = job
            .args
            .iter()
            .map(|a| a.clone().into_string())
            .collect::<Result<Vec<String>, OsString>>()
            .map_err(|a| io::Error::other(format!("a build argument is not UTF-8: {a:?}")))?;
        let argv = thaw_jail::command_args(&config, Path::new(INSIDE_ESBUILD), &args)
            .map_err(io::Error::other)?;

        let owner = fs::metadata(job.tree)?;
        let mut jail = Teardown {
            config: &config,
            out_dir: job.out_dir,
            owner: (owner.uid(), owner.gid()),
            done: false,
        };
        std::os::unix::fs::lchown(job.out_dir, Some(uid), Some(uid))?;
        // The program gets exactly the environment of `thaw __jail`: none.
        let mut cmd = Command::new(&self.settings.exe);
        cmd.args(argv).env_clear();
        let mut output = thaw_bundle::run_to_end(&mut cmd, job.timeout)?;
        // Before the cgroup goes.
        let oom = thaw_jail::Cgroup::for_instance(&config.id).is_ok_and(|c| c.oom_killed());
        jail.finish()?;

        if output.end == BuildEnd::Exited(thaw_jail::SETUP_FAILED) {
            let text = String::from_utf8_lossy(&output.stderr);
            if let Some(line) = text.lines().rev().find(|l| l.starts_with("thaw-jail: ")) {
                return Err(io::Error::other(format!(
                    "the build's jail could not be set up: {line}"
                )));
            }
        }
        if oom {
            output.end = BuildEnd::Stopped(format!(
                "it went past the build's memory limit of {} MiB and was killed",
                self.settings.limits.memory_bytes >> 20
            ));
        }
        Ok(output)
    }
}

/// Whether `path` starts like an ELF file.
fn is_elf(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path)?;
    Ok(file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// Tears a build's jail down, and gives the build folder back to the
/// tree's owner: on every way out of a build.
struct Teardown<'a> {
    config: &'a thaw_jail::JailConfig,
    out_dir: &'a Path,
    owner: (u32, u32),
    done: bool,
}

impl Teardown<'_> {
    /// Kills whatever is left of the jail (so nothing writes in the build
    /// folder any more), removes it, and takes the folder back.
    fn finish(&mut self) -> io::Result<()> {
        self.done = true;
        thaw_jail::cleanup_instance(self.config)
            .map_err(|e| io::Error::other(format!("could not tear the build's jail down: {e}")))?;
        take_back(self.out_dir, self.owner)
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.finish() {
                tracing::warn!("after a build: {e}");
            }
        }
    }
}

/// Makes `dir` and everything in it owned by `owner` again, and `dir` mode
/// 0755. Never follows a link: what the build left is not trusted
/// (thaw-bundle refuses anything but regular files there afterwards).
fn take_back(dir: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if fs::symlink_metadata(&path)?.is_dir() {
            for entry in fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temp folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "thaw-sandbox-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn taking_back_follows_no_link() {
        let tmp = TempDir::new("take-back");
        let outside = tmp.path().join("outside");
        fs::write(&outside, "x").unwrap();
        std::os::unix::fs::lchown(&outside, Some(4242), Some(4242)).unwrap();
        let dir = tmp.path().join("out");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/file"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        for p in [
            &dir,
            &dir.join("sub"),
            &dir.join("sub/file"),
            &dir.join("link"),
        ] {
            std::os::unix::fs::lchown(p, Some(4343), Some(4343)).unwrap();
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        take_back(&dir, (0, 0)).unwrap();
        for p in [
            &dir,
            &dir.join("sub"),
            &dir.join("sub/file"),
            &dir.join("link"),
        ] {
            assert_eq!(fs::symlink_metadata(p).unwrap().uid(), 0, "{}", p.display());
        }
        assert_eq!(fs::metadata(&outside).unwrap().uid(), 4242);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn a_script_is_not_run_in_the_jail() {
        let tmp = TempDir::new("script");
        let script = tmp.path().join("esbuild");
        fs::write(&script, "#!/usr/bin/env node\n").unwrap();
        assert!(!is_elf(&script).unwrap());
        assert!(is_elf(Path::new("/bin/sh")).unwrap());
    }
}
