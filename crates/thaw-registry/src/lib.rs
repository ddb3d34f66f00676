//! The registry: what is deployed, by whom, kept on disk under one data
//! directory.
//!
//! Namespaces, API keys (hashed), functions, their numbered versions,
//! aliases, configuration (environment and secrets, encrypted), async calls
//! with their attempts, cron schedules and console logs live in one SQLite
//! file (`thaw.db`, schema in `schema.rs`, upgraded
//! in place from older releases). Code bundles are stored once by the
//! SHA-256 of their archive (`bundles/<hash>.tar.gz`) and unpacked once into
//! a read-only tree (`code/<hash>/`) that every instance of every version
//! using that bundle shares. The admin token lives in `token` and the key
//! that encrypts secrets in `secrets.key` (both mode 0600).
//!
//! Every operation on a function takes a [`FunctionId`]: a namespace and a
//! name. Nothing here reaches a function without naming its namespace.
//!
//! This crate must not start runtimes or speak HTTP: it stores and answers.

mod calls;
mod functions;
mod logs;
mod schedules;
mod schema;
mod secrets;
mod tenancy;

pub use calls::{
    backoff_ms, Attempt, AttemptEnd, CallQuery, CallRecord, CallState, Claimed, Destination,
    Finished, NewCall, QueueDepth, DEFAULT_RETRIES, MAX_RETRIES,
};
pub use functions::{
    validate_variable, Alias, ConfigChange, FunctionId, Routable, Split, Version, VersionInfo,
    LATEST, VERSIONS_KEPT,
};
pub use logs::{LogQuery, LogRecord, BYTES_KEPT, LINES_KEPT, LINE_BYTES_STORED};
pub use schedules::{Fired, Schedule};
pub use secrets::{SecretCipher, SecretValues};
pub use tenancy::{
    same_secret, KeyInfo, Namespace, NamespaceLimits, Role, DEFAULT_NAMESPACE, MAX_QUEUED,
};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use thaw_bundle::{BundleError, Limits, Settings};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("no function named `{0}`")]
    NotFound(String),
    #[error("no namespace named `{0}`")]
    NoNamespace(String),
    #[error("{0}")]
    NoSuch(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    LimitReached(String),
    #[error("corrupt registry record: {0}")]
    Corrupt(String),
    #[error("the data directory was written by a newer thaw (schema {found}; this thaw knows up to {known}): run that release")]
    TooNew { found: i64, known: i64 },
    #[error("secrets cannot be read: {0}")]
    Secrets(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A code tree ready to serve: unpacked, built, read-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeTree {
    pub bundle: String,
    /// The runnable entry, relative to the tree.
    pub entry: String,
    pub settings: Settings,
    #[serde(skip)]
    pub dir: PathBuf,
}

pub struct Registry {
    root: PathBuf,
    db: Mutex<Connection>,
    cipher: SecretCipher,
}

impl Registry {
    /// Opens (creating if needed) the registry in `root`, upgrading a data
    /// directory of an older release in place. Secrets are encrypted with
    /// `secrets_key` when given (`THAW_SECRETS_KEY`), else with the key in
    /// `secrets.key`, made on first use.
    pub fn open(root: &Path, secrets_key: Option<&str>) -> Result<Registry, RegistryError> {
        for dir in [root.to_path_buf(), root.join("bundles"), root.join("code")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
        let cipher = match secrets_key.filter(|k| !k.trim().is_empty()) {
            Some(k) => SecretCipher::from_text(k)?,
            None => {
                let text = private_file(&root.join("secrets.key"), || {
                    hex::encode(rand::random::<[u8; 32]>())
                })?;
                SecretCipher::from_text(&text)?
            }
        };
        let mut conn = Connection::open(root.join("thaw.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        Ok(Registry {
            root: root.to_path_buf(),
            db: Mutex::new(conn),
            cipher,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The admin token: `THAW_TOKEN` if given, else the one stored in the
    /// data directory, else a new random one stored there (mode 0600).
    pub fn token(&self, from_env: Option<String>) -> Result<String, RegistryError> {
        if let Some(t) = from_env.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        private_file(&self.root.join("token"), || {
            format!("thaw_{}", hex::encode(rand::random::<[u8; 24]>()))
        })
    }

    fn code_dir(&self, bundle: &str) -> PathBuf {
        self.root.join("code").join(bundle)
    }

    /// [`Registry::store_code_with`] with TypeScript built on the host
    /// ([`thaw_bundle::HostBuild`]): for tests and tools. A platform that
    /// jails its runtimes builds in a jail too.
    pub fn store_code(
        &self,
        archive: &[u8],
        limits: &Limits,
        esbuild: Option<&Path>,
    ) -> Result<CodeTree, RegistryError> {
        self.store_code_with(archive, limits, esbuild, &thaw_bundle::HostBuild)
    }

    /// Stores an uploaded archive once and makes its code tree: checked,
    /// unpacked, built (TypeScript, esbuild run by `sandbox`), sealed
    /// read-only. An archive stored before is not unpacked again.
    pub fn store_code_with(
        &self,
        archive: &[u8],
        limits: &Limits,
        esbuild: Option<&Path>,
        sandbox: &dyn thaw_bundle::BuildSandbox,
    ) -> Result<CodeTree, RegistryError> {
        let bundle = thaw_bundle::content_hash(archive);
        let dir = self.code_dir(&bundle);
        let meta_path = self.root.join("code").join(format!("{bundle}.json"));
        if let Ok(meta) = fs::read(&meta_path) {
            if dir.is_dir() {
                let mut tree: CodeTree = serde_json::from_slice(&meta)
                    .map_err(|e| RegistryError::Corrupt(format!("{}: {e}", meta_path.display())))?;
                tree.dir = dir;
                return Ok(tree);
            }
        }

        // The staging tree's paths are at least as long as the final ones
        // (`code/<64 hex>`), so a path that fits while unpacking still fits
        // once the tree is moved.
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .rand_bytes(55)
            .tempdir_in(self.root.join("code"))
            .map_err(io_err(&self.root))?;
        let tree_dir = staging.path().join("tree");
        thaw_bundle::unpack(archive, &tree_dir, limits)?;
        let settings = thaw_bundle::read_settings(&tree_dir)?;
        let source_entry = thaw_bundle::find_entry(&tree_dir, &settings)?;
        let entry = thaw_bundle::build_with(&tree_dir, &source_entry, esbuild, sandbox)?;
        thaw_bundle::seal(&tree_dir).map_err(io_err(&tree_dir))?;

        let bundle_path = self.root.join("bundles").join(format!("{bundle}.tar.gz"));
        if !bundle_path.exists() {
            let tmp = staging.path().join("bundle.tar.gz");
            fs::write(&tmp, archive).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &bundle_path).map_err(io_err(&bundle_path))?;
        }
        match fs::rename(&tree_dir, &dir) {
            Ok(()) => {}
            // Another deploy of the same archive won the race: same bytes,
            // same tree; ours goes away with the staging directory.
            Err(_) if dir.is_dir() => unseal_for_removal(&tree_dir),
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let tree = CodeTree {
            bundle,
            entry,
            settings,
            dir,
        };
        let meta = serde_json::to_vec(&tree).expect("code tree metadata serialises");
        let tmp = staging.path().join("meta.json");
        fs::write(&tmp, meta).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &meta_path).map_err(io_err(&meta_path))?;
        Ok(tree)
    }

    /// Deletes bundles and code trees that no kept version refers to, and
    /// staging directories left by an interrupted deploy. Call it when no
    /// deploy is running: at start-up, or under the platform's deploy lock.
    /// Says which code trees went, for the drivers to let go of them.
    pub fn collect_garbage(&self) -> Result<Garbage, RegistryError> {
        let used: std::collections::HashSet<String> = {
            let db = self.db.lock().unwrap();
            let mut stmt = db.prepare("SELECT DISTINCT bundle FROM versions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut garbage = Garbage::default();
        for sub in ["code", "bundles"] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Everything named `<hash>` or `<hash>.<something>` lives
                // and goes with that bundle: its archive (`.tar.gz`), its
                // tree and the tree's metadata (`.json`), the tree's image
                // (`.erofs`) and one being built beside it. Staging
                // directories (`.staging-...`) belong to no bundle.
                let hash = name.split('.').next().unwrap_or_default();
                if used.contains(hash) {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() {
                    unseal_for_removal(&path);
                    let _ = fs::remove_dir_all(&path);
                    if sub == "code" && !hash.is_empty() {
                        garbage.code_trees.push(path);
                    }
                } else {
                    let _ = fs::remove_file(&path);
                }
                garbage.removed += 1;
            }
        }
        Ok(garbage)
    }
}

/// What [`Registry::collect_garbage`] removed.
#[derive(Debug, Default)]
pub struct Garbage {
    /// The code trees that went (each a [`CodeTree::dir`]).
    pub code_trees: Vec<PathBuf>,
    /// How many entries went in all: trees, their metadata and images,
    /// bundles, leftovers.
    pub removed: usize,
}

/// A sealed tree has read-only directories, which `remove_dir_all` cannot
/// empty: give the owner write access back first.
fn unseal_for_removal(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            unseal_for_removal(&e.path());
        }
    }
}

/// The trimmed text of a private file, written first (mode 0600, through
/// a rename so a crash never leaves half a file) with `make` when missing.
fn private_file(path: &Path, make: impl FnOnce() -> String) -> Result<String, RegistryError> {
    match fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let text = make();
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(text)
}
