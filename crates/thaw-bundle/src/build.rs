//! Compiling a TypeScript entry with esbuild.

use std::env;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::paths::normalize_rel;
use crate::BundleError;

/// The folder inside a bundle that build output goes to. It is replaced on
/// every build and never packed.
pub const BUILD_DIR: &str = ".thaw";
const OUT_FILE: &str = ".thaw/entry.mjs";
const META_FILE: &str = ".thaw/meta.json";
const TIMEOUT: Duration = Duration::from_secs(60);
/// How much of esbuild's error output we hand back.
const MAX_OUTPUT: usize = 4096;

/// Makes `entry` (relative to `dir`) runnable by Node. JavaScript entries are
/// returned unchanged. TypeScript entries (`.ts`, `.mts`, `.cts`, `.tsx`)
/// are bundled by esbuild into `.thaw/entry.mjs` (ESM for Node 20, packages
/// left external, inline source map), which is returned. The output defines
/// `require`, `__filename` and `__dirname` as CommonJS code expects; the
/// latter two name the entry's source file and folder. `esbuild` is a hint
/// for [`find_esbuild`]. Every file esbuild bundled must lie inside `dir`.
pub fn build(dir: &Path, entry: &str, esbuild: Option<&Path>) -> Result<String, BundleError> {
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

    let mut child = Command::new(&esbuild)
        .arg(format!("./{rel}"))
        .args([
            "--bundle",
            "--platform=node",
            "--target=node20",
            "--format=esm",
            "--packages=external",
            "--sourcemap=inline",
            "--log-level=error",
            "--color=false",
            "--define:__filename=__thawFilename",
            "--define:__dirname=__thawDirname",
        ])
        .arg(format!("--outfile={OUT_FILE}"))
        .arg(format!("--metafile={META_FILE}"))
        .arg(format!("--banner:js={}", banner(&rel)))
        .current_dir(&dir)
        .env("PWD", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BundleError::io(format!("cannot run `{}`", esbuild.display()), e))?;

    // Drain stderr on a thread so a chatty esbuild cannot block on a full pipe.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stderr.read_to_end(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "esbuild took longer than {} seconds and was stopped",
                    TIMEOUT.as_secs()
                )));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(BundleError::io("cannot wait for esbuild", e)),
        }
    };
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(error_output(&output)));
    }
    check_inputs(&dir).map_err(failed)?;
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

/// Refuses output that bundled a file from outside the bundle (an absolute
/// or `../` import): on the server that would copy host files into the
/// function. Removes the metafile either way.
fn check_inputs(dir: &Path) -> Result<(), String> {
    let meta_path = dir.join(META_FILE);
    let meta = fs::read(&meta_path);
    let _ = fs::remove_file(&meta_path);
    let meta: serde_json::Value = meta
        .ok()
        .and_then(|m| serde_json::from_slice(&m).ok())
        .ok_or("esbuild wrote no readable metafile")?;
    let inputs = meta["inputs"]
        .as_object()
        .ok_or("esbuild's metafile lists no inputs")?;
    for input in inputs.keys() {
        if is_outside(input) {
            let _ = fs::remove_dir_all(dir.join(BUILD_DIR));
            return Err(format!(
                "it imports `{input}`, which is outside the bundle: \
                 only files inside the deployed folder can be bundled"
            ));
        }
    }
    Ok(())
}

/// A path esbuild printed, relative to the bundle root, that is not inside it.
fn is_outside(path: &str) -> bool {
    path.starts_with('/') || path.split('/').any(|part| part == "..")
}

/// esbuild's messages (`file:line:col:` plus a code excerpt), cut to a few
/// KiB at a character boundary. If any message points into a file outside
/// the bundle (say a tsconfig.json `extends` of a host file) the excerpt
/// would show that file's content to the user, so it is all withheld.
fn error_output(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    let leaks = text.lines().any(|line| {
        let mut parts = line.trim().trim_end_matches(':').rsplitn(3, ':');
        let (col, row, path) = (parts.next(), parts.next(), parts.next());
        let is_number = |p: Option<&str>| p.is_some_and(|p| p.parse::<u32>().is_ok());
        is_number(col) && is_number(row) && path.is_some_and(is_outside)
    });
    if leaks {
        return "esbuild failed on a file outside the bundle; only files inside the deployed \
                folder may be used (check your imports and `extends` in tsconfig.json)"
            .to_string();
    }
    if text.len() <= MAX_OUTPUT {
        return text.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… (more errors cut)", &text[..end])
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
