//! The registry: what is deployed, kept on disk under one data directory.
//!
//! Functions, their versions and settings, and their console logs live in
//! one SQLite file (`thaw.db`). Code bundles are stored once by the SHA-256
//! of their archive (`bundles/<hash>.tar.gz`) and unpacked once into a
//! read-only tree (`code/<hash>/`) that every instance of every version
//! using that bundle shares. The API token lives in `token` (mode 0600).
//!
//! This crate must not start runtimes or speak HTTP: it stores and answers.

mod logs;

pub use logs::{LogQuery, LogRecord};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use thaw_bundle::{BundleError, Limits, Settings};

/// Versions kept per function (the current one included); older ones and
/// the code only they used are removed.
const VERSIONS_KEPT: i64 = 5;

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
    #[error("corrupt registry record: {0}")]
    Corrupt(String),
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

/// One deployed version of a function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    pub function: String,
    pub id: i64,
    pub bundle: String,
    pub entry: String,
    pub settings: Settings,
    pub created_ms: i64,
    /// Where the code tree lives on the host.
    #[serde(skip)]
    pub code_dir: PathBuf,
}

pub struct Registry {
    root: PathBuf,
    db: Mutex<Connection>,
}

impl Registry {
    /// Opens (creating if needed) the registry in `root`.
    pub fn open(root: &Path) -> Result<Registry, RegistryError> {
        for dir in [root.to_path_buf(), root.join("bundles"), root.join("code")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
        let conn = Connection::open(root.join("thaw.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Registry {
            root: root.to_path_buf(),
            db: Mutex::new(conn),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The API token: `THAW_TOKEN` if given, else the one stored in the
    /// data directory, else a new random one stored there (mode 0600).
    pub fn token(&self, from_env: Option<String>) -> Result<String, RegistryError> {
        if let Some(t) = from_env.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        let path = self.root.join("token");
        match fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let token = format!("thaw_{}", hex::encode(rand::random::<[u8; 24]>()));
        let tmp = self.root.join("token.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(token.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(token)
    }

    fn code_dir(&self, bundle: &str) -> PathBuf {
        self.root.join("code").join(bundle)
    }

    /// Stores an uploaded archive once and makes its code tree: checked,
    /// unpacked, built (TypeScript), sealed read-only. An archive stored
    /// before is not unpacked again.
    pub fn store_code(
        &self,
        archive: &[u8],
        limits: &Limits,
        esbuild: Option<&Path>,
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

        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(self.root.join("code"))
            .map_err(io_err(&self.root))?;
        let tree_dir = staging.path().join("tree");
        thaw_bundle::unpack(archive, &tree_dir, limits)?;
        let settings = thaw_bundle::read_settings(&tree_dir)?;
        let source_entry = thaw_bundle::find_entry(&tree_dir, &settings)?;
        let entry = thaw_bundle::build(&tree_dir, &source_entry, esbuild)?;
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

    /// Records `tree` as a new version of `function`, not yet serving.
    pub fn add_version(&self, function: &str, tree: &CodeTree) -> Result<Version, RegistryError> {
        let now = now_ms();
        let settings = serde_json::to_string(&tree.settings).expect("settings serialise");
        let db = self.db.lock().unwrap();
        db.execute(
            "INSERT INTO versions (function, bundle, entry, settings, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![function, tree.bundle, tree.entry, settings, now],
        )?;
        Ok(Version {
            function: function.to_string(),
            id: db.last_insert_rowid(),
            bundle: tree.bundle.clone(),
            entry: tree.entry.clone(),
            settings: tree.settings.clone(),
            created_ms: now,
            code_dir: tree.dir.clone(),
        })
    }

    /// Makes `version` the one its function serves, in one transaction: a
    /// reader sees the old version or the new one, never a mix. Versions
    /// beyond the newest few are forgotten.
    pub fn activate(&self, version: &Version) -> Result<(), RegistryError> {
        let now = now_ms();
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO functions (name, current_version, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET current_version = excluded.current_version, updated_ms = excluded.updated_ms",
            params![version.function, version.id, now],
        )?;
        tx.execute(
            "DELETE FROM versions WHERE function = ?1 AND id NOT IN
               (SELECT id FROM versions WHERE function = ?1 ORDER BY id DESC LIMIT ?2)",
            params![version.function, VERSIONS_KEPT],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a version that never went live (its code failed to load).
    pub fn discard_version(&self, version: &Version) -> Result<(), RegistryError> {
        self.with_db(|db| {
            db.execute(
                "DELETE FROM versions WHERE id = ?1 AND id NOT IN (SELECT current_version FROM functions)",
                params![version.id],
            )
        })?;
        Ok(())
    }

    /// The current version of every function, by name.
    pub fn current_versions(&self) -> Result<Vec<Version>, RegistryError> {
        let db = self.db.lock().unwrap();
        let mut stmt = db.prepare(
            "SELECT f.name, v.id, v.bundle, v.entry, v.settings, v.created_ms
             FROM functions f JOIN versions v ON v.id = f.current_version ORDER BY f.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (function, id, bundle, entry, settings, created_ms) = row?;
            let settings = serde_json::from_str(&settings)
                .map_err(|e| RegistryError::Corrupt(format!("settings of {function}: {e}")))?;
            out.push(Version {
                code_dir: self.code_dir(&bundle),
                function,
                id,
                bundle,
                entry,
                settings,
                created_ms,
            });
        }
        Ok(out)
    }

    pub fn current_version(&self, function: &str) -> Result<Version, RegistryError> {
        self.current_versions()?
            .into_iter()
            .find(|v| v.function == function)
            .ok_or_else(|| RegistryError::NotFound(function.to_string()))
    }

    /// Removes a function, its versions and its logs. Code trees no
    /// version uses any more are removed by [`Registry::collect_garbage`].
    pub fn remove(&self, function: &str) -> Result<(), RegistryError> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        let n = tx.execute("DELETE FROM functions WHERE name = ?1", params![function])?;
        if n == 0 {
            return Err(RegistryError::NotFound(function.to_string()));
        }
        tx.execute(
            "DELETE FROM versions WHERE function = ?1",
            params![function],
        )?;
        tx.execute("DELETE FROM logs WHERE function = ?1", params![function])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes bundles and code trees that no kept version refers to, and
    /// staging directories left by an interrupted deploy. Call it when no
    /// deploy is running (at start-up).
    pub fn collect_garbage(&self) -> Result<usize, RegistryError> {
        let used: std::collections::HashSet<String> = {
            let db = self.db.lock().unwrap();
            let mut stmt = db.prepare("SELECT DISTINCT bundle FROM versions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut removed = 0;
        for sub in ["code", "bundles"] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // `<hash>.erofs` is the microvm driver's image of a code
                // tree: it lives and goes with the tree.
                let hash = name
                    .trim_end_matches(".tar.gz")
                    .trim_end_matches(".json")
                    .trim_end_matches(".erofs")
                    .to_string();
                if used.contains(&hash) {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() {
                    unseal_for_removal(&path);
                    let _ = fs::remove_dir_all(&path);
                } else {
                    let _ = fs::remove_file(&path);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RegistryError> {
        let db = self.db.lock().unwrap();
        Ok(f(&db)?)
    }

    pub fn function_exists(&self, function: &str) -> Result<bool, RegistryError> {
        self.with_db(|db| {
            db.query_row(
                "SELECT 1 FROM functions WHERE name = ?1",
                params![function],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
    }
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    bundle TEXT NOT NULL,
    entry TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_by_function ON versions(function, id);
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    version INTEGER,
    invocation INTEGER,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs(function, id);
";
