//! Compiling a TypeScript entry with esbuild, where a [`BuildSandbox`] says:
//! on the host ([`HostBuild`]), or confined (thaw-sandbox's `JailedBuild`,
//! which runs esbuild in thaw's jail seeing only itself and the bundle).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::paths::normalize_rel;
use crate::BundleError;

/// The folder inside a bundle that build output goes to. It is replaced on
/// every build and never packed.
pub const BUILD_DIR: &str = ".thaw";
const OUT_NAME: &str = "entry.mjs";
const META_NAME: &str = "meta.json";
const OUT_FILE: &str = ".thaw/entry.mjs";
const TIMEOUT: Duration = Duration::from_secs(60);
/// How much of esbuild's error output we hand back.
const MAX_OUTPUT: usize = 4096;
/// How much of a program's stderr [`run_to_end`] keeps; the rest is read
/// and dropped.
const MAX_STDERR: usize = 64 * 1024;
/// Largest metafile read back.
const MAX_META_BYTES: u64 = 64 << 20;

/// Where and how esbuild runs for [`build_with`]. [`HostBuild`] runs it as a
/// plain child of thaw; thaw-sandbox's `JailedBuild` runs it in thaw's jail,
/// where the only files are esbuild itself and the bundle (read-only, but
/// for its build folder), and there is no network.
pub trait BuildSandbox: Send + Sync {
    /// How the program will see `tree` (the bundle's real path on the host).
    fn view(&self, tree: &Path) -> BuildView;

    /// Runs `job.program` to its end, or kills it after `job.timeout`
    /// ([`BuildEnd::TimedOut`]). An error is the host's problem (the
    /// program or its sandbox could not be started), not the bundle's.
    fn run(&self, job: &BuildJob<'_>) -> io::Result<BuildOutput>;
}

/// Where the program of a [`BuildSandbox`] sees the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    /// The bundle's folder, an absolute path as the program sees it. The
    /// arguments name the entry and the output under it.
    pub root: PathBuf,
    /// The program's working folder, absolute: esbuild prints paths
    /// (messages, metafile) relative to it.
    pub cwd: PathBuf,
}

/// One run of esbuild.
#[derive(Debug)]
pub struct BuildJob<'a> {
    /// The esbuild binary, a host path.
    pub program: &'a Path,
    /// Its arguments; paths in them are under [`BuildView::root`].
    pub args: &'a [OsString],
    /// The bundle, its real path on the host. The program must not write in
    /// it, but for `out_dir`.
    pub tree: &'a Path,
    /// `tree/.thaw`: an empty folder, where the program writes its output.
    pub out_dir: &'a Path,
    pub timeout: Duration,
}

/// How a build's program ended, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub end: BuildEnd,
    /// The first 64 KiB of its stderr.
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEnd {
    /// It exited with this code.
    Exited(i32),
    /// It was ended otherwise (a signal, a memory limit): why, to follow
    /// "esbuild was stopped: ".
    Stopped(String),
    /// It ran past the time limit and was killed.
    TimedOut,
}

/// Runs esbuild on the host as a child of thaw, with the bundle as its
/// working folder: it can read whatever thaw's user can (`thaw up --jail
/// off`, or a host that cannot jail). Only the metafile check after the
/// build keeps host files out of the output, and it comes after esbuild
/// read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostBuild;

impl BuildSandbox for HostBuild {
    fn view(&self, tree: &Path) -> BuildView {
        BuildView {
            root: tree.to_path_buf(),
            cwd: tree.to_path_buf(),
        }
    }

    fn run(&self, job: &BuildJob<'_>) -> io::Result<BuildOutput> {
        let mut cmd = Command::new(job.program);
        cmd.args(job.args)
            .current_dir(job.tree)
            .env("PWD", job.tree);
        run_to_end(&mut cmd, job.timeout)
    }
}

/// Spawns `cmd` with no stdin or stdout and its stderr piped, and waits for
/// it to end, for at most `timeout`: then it is killed (SIGKILL) and
/// reaped. Keeps the first 64 KiB of stderr; more is read and dropped, so a
/// chatty program neither blocks on a full pipe nor fills memory.
pub fn run_to_end(cmd: &mut Command, timeout: Duration) -> io::Result<BuildOutput> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_STDERR - kept.len();
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        kept
    });
    let started = Instant::now();
    let end = loop {
        match child.try_wait() {
            Ok(Some(status)) => break end_of(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break BuildEnd::TimedOut;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(BuildOutput { end, stderr })
}

fn end_of(status: ExitStatus) -> BuildEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => BuildEnd::Exited(code),
        (None, Some(signal)) => BuildEnd::Stopped(format!("killed by signal {signal}")),
        (None, None) => BuildEnd::Stopped("ended without an exit code".into()),
    }
}

/// [`build_with`] on the host ([`HostBuild`]): for folders that are the
/// operator's own, or a platform that runs nothing jailed.
pub fn build(dir: &Path, entry: &str, esbuild: Option<&Path>) -> Result<String, BundleError> {
    build_with(dir, entry, esbuild, &HostBuild)
}

/// Makes `entry` (relative to `dir`) runnable by Node. JavaScript entries are
/// returned unchanged. TypeScript entries (`.ts`, `.mts`, `.cts`, `.tsx`)
/// are bundled by esbuild, run by `sandbox`, into `.thaw/entry.mjs` (ESM for
/// Node 20, packages left external, inline source map), which is returned.
/// The output defines `require`, `__filename` and `__dirname` as CommonJS
/// code expects; the latter two name the entry's source file and folder.
/// `esbuild` is a hint for [`find_esbuild`].
///
/// The build fails when a file it bundled lies outside `dir` (an absolute
/// or `../` import), and when a `tsconfig.json` names a base config
/// (`extends`) that esbuild cannot find: in a jail, any file outside the
/// bundle. Messages name files relative to `dir`; those of a failure in a
/// file outside it are withheld.
pub fn build_with(
    dir: &Path,
    entry: &str,
    esbuild: Option<&Path>,
    sandbox: &dyn BuildSandbox,
) -> Result<String, BundleError> {
    let is_ts = [".ts", ".mts", ".cts", ".tsx"]
        .iter()
        .any(|ext| entry.ends_with(ext));
    if !is_ts {
        return Ok(entry.to_string());
    }
    let failed = |output: String| BundleError::BuildFailed {
        entry: entry.to_string(),
        output,
    };
    let rel = normalize_rel(entry.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| failed("the entry must be a relative path inside the bundle".into()))?;
    let esbuild = find_esbuild(esbuild).ok_or_else(|| BundleError::NoEsbuild {
        entry: entry.to_string(),
    })?;
    // esbuild reports inputs relative to its working folder after resolving
    // symlinks, so give it the real path or in-tree files would look outside.
    let dir = dir
        .canonicalize()
        .map_err(|e| BundleError::io(format!("cannot open `{}`", dir.display()), e))?;
    clear_build_dir(&dir)?;
    let out_dir = dir.join(BUILD_DIR);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&out_dir)
        .map_err(|e| BundleError::io(format!("cannot create `{}`", out_dir.display()), e))?;

    let view = sandbox.view(&dir);
    let under_root = |rel: &str| view.root.join(rel).into_os_string();
    let mut args: Vec<OsString> = vec![under_root(&rel)];
    args.extend(
        [
            "--bundle",
            "--platform=node",
            "--target=node20",
            "--format=esm",
            "--packages=external",
            "--sourcemap=inline",
            "--log-level=error",
            // esbuild only warns about a tsconfig.json problem (a base
            // config it cannot find, a bad target or `paths` pattern, a
            // cycle) and builds on without it; in a jail a missing base is
            // any `extends` of a host file. tsc refuses each of them too.
            "--log-override:tsconfig.json=error",
            "--color=false",
            "--define:__filename=__thawFilename",
            "--define:__dirname=__thawDirname",
        ]
        .map(OsString::from),
    );
    for (flag, name) in [("--outfile=", OUT_NAME), ("--metafile=", META_NAME)] {
        let mut arg = OsString::from(flag);
        arg.push(under_root(&format!("{BUILD_DIR}/{name}")));
        args.push(arg);
    }
    args.push(format!("--banner:js={}", banner(&rel)).into());

    let job = BuildJob {
        program: &esbuild,
        args: &args,
        tree: &dir,
        out_dir: &out_dir,
        timeout: TIMEOUT,
    };
    let output = sandbox
        .run(&job)
        .map_err(|e| BundleError::io(format!("cannot run `{}`", esbuild.display()), e))?;
    let result = match output.end {
        BuildEnd::Exited(0) => check_output(&out_dir).and_then(|()| check_inputs(&dir, &view)),
        BuildEnd::Exited(_) => Err(error_output(&output.stderr, &view)),
        BuildEnd::Stopped(why) => Err(format!("esbuild was stopped: {why}")),
        BuildEnd::TimedOut => Err(format!(
            "esbuild took longer than {} seconds and was stopped",
            TIMEOUT.as_secs()
        )),
    };
    if let Err(output) = result {
        let _ = fs::remove_dir_all(&out_dir);
        return Err(failed(output));
    }
    Ok(OUT_FILE.to_string())
}

/// The lines put before the output. The `__thaw` names cannot clash with the
/// user's: `__filename`/`__dirname` are mapped to them with `--define`, which
/// only rewrites free identifiers; esbuild renames a user's own top-level
/// `require` by itself, so defining `require` is safe.
fn banner(rel: &str) -> String {
    // JSON string syntax is valid JavaScript string syntax.
    let rel = serde_json::to_string(rel).expect("a string serialises");
    format!(
        "import {{ createRequire as __thawCreateRequire }} from \"node:module\"; \
         import {{ fileURLToPath as __thawFileURLToPath }} from \"node:url\"; \
         import {{ dirname as __thawPathDirname, join as __thawPathJoin }} from \"node:path\"; \
         const __thawFilename = __thawPathJoin(__thawPathDirname(__thawFileURLToPath(import.meta.url)), \"..\", {rel}); \
         const __thawDirname = __thawPathDirname(__thawFilename); \
         const require = __thawCreateRequire(__thawFilename);"
    )
}

/// Removes old build output. It is part of the (untrusted) upload until now,
/// and a symlink there would make esbuild write elsewhere in the tree.
fn clear_build_dir(dir: &Path) -> Result<(), BundleError> {
    let out = dir.join(BUILD_DIR);
    let result = match fs::symlink_metadata(&out) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&out),
        Ok(_) => fs::remove_file(&out),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| BundleError::io(format!("cannot clear `{}`", out.display()), e))
}

/// What a build left in its folder: only the output and the metafile, as
/// regular files. A jailed esbuild wrote them as another user, so nothing
/// there is trusted: a link or a FIFO in their place must not be followed
/// or read by thaw, nor kept in the tree.
fn check_output(out_dir: &Path) -> Result<(), String> {
    let unexpected = |what: String| {
        format!(
            "esbuild left {what} in `{BUILD_DIR}`, where it writes only {OUT_NAME} and {META_NAME}"
        )
    };
    let entries = fs::read_dir(out_dir).map_err(|e| format!("cannot read `{BUILD_DIR}`: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read `{BUILD_DIR}`: {e}"))?;
        let name = entry.file_name();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot read `{BUILD_DIR}`: {e}"))?;
        if name != OUT_NAME && name != META_NAME {
            return Err(unexpected(format!("`{}`", name.to_string_lossy())));
        }
        if !kind.is_file() {
            return Err(unexpected(format!(
                "a `{}` that is not a regular file",
                name.to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// Refuses output that bundled a file from outside the bundle (an absolute
/// or `../` import): on the server that would copy host files into the
/// function. Removes the metafile either way.
fn check_inputs(dir: &Path, view: &BuildView) -> Result<(), String> {
    let meta_path = dir.join(BUILD_DIR).join(META_NAME);
    let meta = read_no_follow(&meta_path, MAX_META_BYTES);
    let _ = fs::remove_file(&meta_path);
    let meta: serde_json::Value = meta
        .ok()
        .and_then(|m| serde_json::from_slice(&m).ok())
        .ok_or("esbuild wrote no readable metafile")?;
    let inputs = meta["inputs"]
        .as_object()
        .ok_or("esbuild's metafile lists no inputs")?;
    for input in inputs.keys() {
        if let Place::Outside(shown) = place(view, input) {
            return Err(format!(
                "it imports `{shown}`, which is outside the bundle: \
                 only files inside the deployed folder can be bundled"
            ));
        }
    }
    Ok(())
}

/// A regular file's content, at most `limit` bytes, never through a symlink.
fn read_no_follow(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // `check_output` found a regular file, and nothing writes in the build
    // folder any more: the program has ended (in a jail, with every
    // process of the jail).
    if !fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let file = fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > limit {
        return Err(io::Error::other("not a regular file of a sane size"));
    }
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Where a path esbuild printed lies.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// A file in the bundle, shown relative to its root.
    Inside(String),
    /// A file outside the bundle, shown as esbuild named it (relative to
    /// the bundle) or, when esbuild ran elsewhere (a jail), absolute.
    Outside(String),
    /// A module of another esbuild namespace (a `data:` URL), not a file.
    NotAFile,
}

fn place(view: &BuildView, printed: &str) -> Place {
    if !printed.starts_with('/')
        && printed
            .split('/')
            .next()
            .is_some_and(|first| first.contains(':'))
    {
        return Place::NotAFile;
    }
    // Lexically: esbuild prints paths cleaned, relative to its working
    // folder, and a jail's files are not the host's to look at.
    let mut abs = PathBuf::from("/");
    for part in view.cwd.join(printed).components() {
        match part {
            Component::ParentDir => {
                abs.pop();
            }
            Component::Normal(name) => abs.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    match abs.strip_prefix(&view.root) {
        Ok(rel) => Place::Inside(rel.to_string_lossy().into_owned()),
        Err(_) if view.cwd == view.root => Place::Outside(printed.to_string()),
        Err(_) => Place::Outside(abs.to_string_lossy().into_owned()),
    }
}

/// A location line of esbuild's messages, `path:line:col:` (indented), as
/// its indent, its path and the rest.
fn location(line: &str) -> Option<(&str, &str, &str)> {
    let text = line.trim_start();
    let indent = &line[..line.len() - text.len()];
    // Code excerpts (`  1 │ code`) may hold anything, `a:1:2:` too.
    if text.contains(['│', '╵']) {
        return None;
    }
    let body = text.trim_end().trim_end_matches(':');
    let mut parts = body.rsplitn(3, ':');
    let (col, row, path) = (parts.next()?, parts.next()?, parts.next()?);
    let is_number = |p: &str| p.parse::<u32>().is_ok();
    if !(is_number(col) && is_number(row)) || path.is_empty() {
        return None;
    }
    Some((indent, path, &text[path.len()..]))
}

/// esbuild's messages (`file:line:col:` plus a code excerpt), files named
/// relative to the bundle, cut to a few KiB at a character boundary. If any
/// message points into a file outside the bundle (say a tsconfig.json
/// `extends` of a host file) the excerpt would show that file's content to
/// the user, so it is all withheld.
fn error_output(raw: &[u8], view: &BuildView) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut lines = Vec::new();
    // Where the bundle is from esbuild's working folder, when that is not
    // the bundle itself (`src/` in a jail): message text names files so.
    let prefix = view
        .root
        .strip_prefix(&view.cwd)
        .ok()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| format!(" {}/", p.to_string_lossy()));
    for line in text.trim().lines() {
        match location(line).map(|(indent, path, rest)| (indent, place(view, path), rest)) {
            Some((_, Place::Outside(_), _)) => {
                return "esbuild failed on a file outside the bundle; only files inside the \
                        deployed folder may be used (check your imports and `extends` in \
                        tsconfig.json)"
                    .to_string()
            }
            Some((indent, Place::Inside(path), rest)) => {
                lines.push(format!("{indent}{path}{rest}"))
            }
            _ => match &prefix {
                Some(prefix) => lines.push(line.replace(prefix.as_str(), " ")),
                None => lines.push(line.to_string()),
            },
        }
    }
    let mut text = lines.join("\n");
    if text.contains("Cannot find base config file") {
        text.push_str(
            "\n\nnote: the build sees only the deployed folder: a tsconfig.json `extends` must \
             name a file inside it (or a package in its node_modules)",
        );
    }
    if text.len() <= MAX_OUTPUT {
        return text;
    }
    format!(
        "{}\n… (more errors cut)",
        crate::text_prefix(&text, MAX_OUTPUT)
    )
}

/// Finds an esbuild binary: `hint` if it exists; `$THAW_ESBUILD`; the
/// repository's `runtime/node_modules` (native binary first, then
/// `.bin/esbuild`), the repository being found from this crate's source
/// location and by walking up from the running executable to a folder with
/// `runtime/package.json`; finally `esbuild` on `PATH`.
pub fn find_esbuild(hint: Option<&Path>) -> Option<PathBuf> {
    if let Some(hint) = hint.filter(|h| h.is_file()) {
        return Some(hint.to_path_buf());
    }
    if let Some(path) = env::var_os("THAW_ESBUILD").map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
    }
    let native = format!(
        "runtime/node_modules/@esbuild/{}-{}/bin/esbuild",
        env::consts::OS,
        match env::consts::ARCH {
            "x86_64" => "x64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    let exe_root = env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|dir| dir.join("runtime/package.json").is_file())
            .map(Path::to_path_buf)
    });
    let roots = [
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")),
        exe_root,
    ];
    for root in roots.into_iter().flatten() {
        for rel in [native.as_str(), "runtime/node_modules/.bin/esbuild"] {
            let path = root.join(rel);
            if path.is_file() {
                return Some(path);
            }
        }
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("esbuild"))
        .find(|path| {
            fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox that runs nothing: it sees the bundle as a jail would
    /// (`/src`, working folder `/`) and does what the test says.
    struct Fake {
        view: BuildView,
        act: fn(&BuildJob<'_>) -> io::Result<BuildOutput>,
    }

    impl BuildSandbox for Fake {
        fn view(&self, _tree: &Path) -> BuildView {
            self.view.clone()
        }
        fn run(&self, job: &BuildJob<'_>) -> io::Result<BuildOutput> {
            (self.act)(job)
        }
    }

    fn jailed(act: fn(&BuildJob<'_>) -> io::Result<BuildOutput>) -> Fake {
        Fake {
            view: BuildView {
                root: "/src".into(),
                cwd: "/".into(),
            },
            act,
        }
    }

    fn exited(code: i32, stderr: &str) -> io::Result<BuildOutput> {
        Ok(BuildOutput {
            end: BuildEnd::Exited(code),
            stderr: stderr.as_bytes().to_vec(),
        })
    }

    /// Writes the output and a metafile listing `inputs`, as esbuild would.
    fn wrote(job: &BuildJob<'_>, inputs: &[&str]) -> io::Result<BuildOutput> {
        fs::write(job.out_dir.join(OUT_NAME), "export {};\n")?;
        let inputs: serde_json::Map<String, serde_json::Value> = inputs
            .iter()
            .map(|i| (i.to_string(), serde_json::json!({ "bytes": 1 })))
            .collect();
        fs::write(
            job.out_dir.join(META_NAME),
            serde_json::to_vec(&serde_json::json!({ "inputs": inputs }))?,
        )?;
        exited(0, "")
    }

    /// Builds `index.ts` in a fresh bundle with `sandbox`; any existing
    /// file stands for esbuild.
    fn build_in(sandbox: &dyn BuildSandbox) -> (tempfile::TempDir, Result<String, BundleError>) {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("index.ts"), "export const x = 1;\n").unwrap();
        let esbuild = env::current_exe().unwrap();
        let result = build_with(tmp.path(), "index.ts", Some(&esbuild), sandbox);
        (tmp, result)
    }

    fn message(result: Result<String, BundleError>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "build_failed", "{err}");
        err.to_string()
    }

    #[test]
    fn arguments_name_the_bundle_where_the_sandbox_shows_it() {
        let (tmp, result) = build_in(&jailed(|job| {
            let args: Vec<String> = job
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert_eq!(args[0], "/src/index.ts");
            assert!(args.contains(&"--outfile=/src/.thaw/entry.mjs".to_string()));
            assert!(args.contains(&"--metafile=/src/.thaw/meta.json".to_string()));
            assert!(args.contains(&"--log-override:tsconfig.json=error".to_string()));
            assert_eq!(job.out_dir, job.tree.join(BUILD_DIR));
            assert!(fs::read_dir(job.out_dir)?.next().is_none(), "empty");
            // A data: URL is a module, not a file.
            wrote(
                job,
                &["src/index.ts", "data:text/javascript,export default 1"],
            )
        }));
        assert_eq!(result.unwrap(), OUT_FILE);
        assert!(tmp.path().join(OUT_FILE).is_file());
        assert!(!tmp.path().join(".thaw/meta.json").exists());
    }

    #[test]
    fn an_input_outside_the_jailed_bundle_is_named_by_its_path_in_the_jail() {
        let (tmp, result) = build_in(&jailed(|job| wrote(job, &["src/index.ts", "etc/hostname"])));
        let msg = message(result);
        assert!(
            msg.contains("it imports `/etc/hostname`, which is outside the bundle"),
            "{msg}"
        );
        assert!(!tmp.path().join(BUILD_DIR).exists());
    }

    #[test]
    fn jailed_messages_name_files_relative_to_the_bundle() {
        let (_tmp, result) = build_in(&jailed(|_| {
            exited(
                1,
                "✘ [ERROR] Unexpected \";\"\n\n    src/bad.ts:2:17:\n      2 │ export const y = ;\n        ╵                  ^\n\n\
                 ✘ [ERROR] No loader is configured for \".bin\" files: src/data.bin\n\n    src/index.ts:1:14:\n      1 │ import t from \"./data.bin\"; // a:1:2:\n",
            )
        }));
        let msg = message(result);
        assert!(msg.contains("\n    bad.ts:2:17:\n"), "{msg}");
        assert!(msg.contains("files: data.bin\n"), "{msg}");
        assert!(msg.contains("\n    index.ts:1:14:\n"), "{msg}");
        assert!(!msg.contains("src/"), "{msg}");
    }

    #[test]
    fn a_message_in_a_file_outside_is_withheld() {
        let (_tmp, result) = build_in(&jailed(|_| {
            exited(
                1,
                "✘ [ERROR] Unexpected \"root\"\n\n    etc/passwd:1:0:\n      1 │ root:x:0:0:secret\n",
            )
        }));
        let msg = message(result);
        assert!(!msg.contains("secret"), "{msg}");
        assert!(msg.contains("outside the bundle"), "{msg}");
    }

    #[test]
    fn a_missing_base_config_explains_what_the_build_sees() {
        let (_tmp, result) = build_in(&jailed(|_| {
            exited(
                1,
                "✘ [ERROR] Cannot find base config file \"/etc/base.json\" [tsconfig.json]\n\n    src/tsconfig.json:1:12:\n      1 │ {\"extends\": \"/etc/base.json\"}\n",
            )
        }));
        let msg = message(result);
        assert!(msg.contains("    tsconfig.json:1:12:"), "{msg}");
        assert!(msg.contains("sees only the deployed folder"), "{msg}");
    }

    #[test]
    fn links_and_strangers_in_the_build_folder_fail_the_build() {
        let (tmp, result) = build_in(&jailed(|job| {
            wrote(job, &["src/index.ts"])?;
            fs::remove_file(job.out_dir.join(META_NAME))?;
            std::os::unix::fs::symlink("/etc/passwd", job.out_dir.join(META_NAME))?;
            exited(0, "")
        }));
        let msg = message(result);
        assert!(msg.contains("not a regular file"), "{msg}");
        assert!(!tmp.path().join(BUILD_DIR).exists());

        let (_tmp, result) = build_in(&jailed(|job| {
            fs::write(job.out_dir.join("extra.js"), "")?;
            wrote(job, &["src/index.ts"])
        }));
        assert!(message(result).contains("`extra.js`"));
    }

    #[test]
    fn how_the_program_ended_is_said() {
        let (_tmp, result) = build_in(&jailed(|_| {
            Ok(BuildOutput {
                end: BuildEnd::TimedOut,
                stderr: Vec::new(),
            })
        }));
        assert!(message(result).contains("longer than 60 seconds"));
        let (_tmp, result) = build_in(&jailed(|_| {
            Ok(BuildOutput {
                end: BuildEnd::Stopped("past its memory limit".into()),
                stderr: Vec::new(),
            })
        }));
        assert!(message(result).contains("esbuild was stopped: past its memory limit"));
        let (_tmp, result) = build_in(&jailed(|_| Err(io::Error::other("no jail"))));
        assert_eq!(result.unwrap_err().code(), "io_error");
    }

    #[test]
    fn on_the_host_paths_are_as_esbuild_printed_them() {
        let view = HostBuild.view(Path::new("/data/tree"));
        assert_eq!(view.cwd, view.root);
        assert_eq!(place(&view, "src/a.ts"), Place::Inside("src/a.ts".into()));
        assert_eq!(
            place(&view, "../secret.ts"),
            Place::Outside("../secret.ts".into())
        );
        assert_eq!(
            place(&view, "/etc/passwd"),
            Place::Outside("/etc/passwd".into())
        );
        assert_eq!(place(&view, "data:text/plain,x"), Place::NotAFile);
        let jail = jailed(|_| exited(0, "")).view;
        assert_eq!(place(&jail, "src/a.ts"), Place::Inside("a.ts".into()));
        assert_eq!(
            place(&jail, "src/../etc/x"),
            Place::Outside("/etc/x".into())
        );
        assert_eq!(place(&jail, "srcx/a"), Place::Outside("/srcx/a".into()));
    }

    #[test]
    fn run_to_end_reports_exit_timeout_and_keeps_some_stderr() {
        let out = run_to_end(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.end, BuildEnd::Exited(3));
        assert_eq!(out.stderr, b"oops\n");
        let out = run_to_end(
            Command::new("sh").args(["-c", "head -c 300000 /dev/zero >&2"]),
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.end, BuildEnd::Exited(0));
        assert_eq!(out.stderr.len(), MAX_STDERR);
        let out = run_to_end(Command::new("sleep").arg("600"), Duration::from_millis(50)).unwrap();
        assert_eq!(out.end, BuildEnd::TimedOut);
        let out = run_to_end(Command::new("sh").args(["-c", "kill -9 $$"]), TIMEOUT).unwrap();
        assert_eq!(out.end, BuildEnd::Stopped("killed by signal 9".into()));
    }
}
