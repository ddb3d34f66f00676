//! The registry: what is deployed, by whom.
//!
//! Namespaces, API keys (hashed), functions, their numbered versions,
//! aliases, configuration (environment and secrets, encrypted), async calls
//! with their attempts, cron schedules and console logs live in one
//! database: an SQLite file in the data directory (`thaw.db`) on one host,
//! or a PostgreSQL database that many hosts share ([`Database`]). The schema
//! is one (`schema.rs`, upgraded in place from older releases) and every
//! operation is written once for both engines (`db.rs`). Code bundles are stored once by the
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
mod changes;
mod db;
mod functions;
mod logs;
mod schedules;
mod schema;
mod secrets;
mod tenancy;
mod workers;

pub use calls::{
    backoff_ms, Attempt, AttemptEnd, CallQuery, CallRecord, CallState, Claimed, Destination,
    Finished, NewCall, QueueDepth, DEFAULT_RETRIES, MAX_RETRIES,
};
pub use changes::Change;
pub use db::{redact as redact_database_url, Engine};
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
pub use workers::Worker;

use db::{params, Kind, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use thaw_bundle::{BundleError, Limits, Settings};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(#[from] postgres::Error),
    /// The database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
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

/// Where the registry's records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `thaw.db` in the data directory: one host.
    Sqlite,
    /// A PostgreSQL database (a `postgres://` URL or `key=value`
    /// parameters) that the workers of a cluster share.
    Postgres(String),
}

impl Database {
    /// The database a `--database` value names: nothing (or `sqlite`) for
    /// the embedded file, a `postgres://` or `postgresql://` URL for
    /// PostgreSQL.
    pub fn parse(text: Option<&str>) -> Result<Database, RegistryError> {
        match text.map(str::trim).filter(|t| !t.is_empty()) {
            None | Some("sqlite") => Ok(Database::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url.to_string()))
            }
            Some(other) => Err(RegistryError::Invalid(format!(
                "`{}` is not a database thaw knows: give `sqlite` (the default, a file in the data \
                 directory) or a PostgreSQL URL such as postgres://thaw@db.example/thaw",
                db::redact(other)
            ))),
        }
    }
}

/// The row of `meta` holding a value sealed with the secrets key.
const KEY_CHECK: &str = "secrets_key_check";
/// The row of `meta` holding the admin token of a shared database, sealed.
const ADMIN_TOKEN: &str = "admin_token";

pub struct Registry {
    root: PathBuf,
    db: Store,
    cipher: SecretCipher,
}

impl Registry {
    /// Opens (creating if needed) the registry in `root` with its records
    /// in `thaw.db` there, upgrading a data directory of an older release
    /// in place. See [`Registry::open_with`].
    pub fn open(root: &Path, secrets_key: Option<&str>) -> Result<Registry, RegistryError> {
        Registry::open_with(root, &Database::Sqlite, secrets_key)
    }

    /// Opens the registry whose records are in `database`, keeping code
    /// under `root`. Secrets are encrypted with `secrets_key` when given
    /// (`THAW_SECRETS_KEY`), else, for SQLite only, with the key in
    /// `secrets.key`, made on first use: workers sharing PostgreSQL must be
    /// given the same key, and one given another key is refused.
    pub fn open_with(
        root: &Path,
        database: &Database,
        secrets_key: Option<&str>,
    ) -> Result<Registry, RegistryError> {
        for dir in [root.to_path_buf(), root.join("bundles"), root.join("code")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
        let secrets_key = secrets_key.filter(|k| !k.trim().is_empty());
        let cipher = match (secrets_key, database) {
            (Some(k), _) => SecretCipher::from_text(k)?,
            (None, Database::Sqlite) => {
                let text = private_file(&root.join("secrets.key"), || {
                    hex::encode(rand::random::<[u8; 32]>())
                })?;
                SecretCipher::from_text(&text)?
            }
            (None, Database::Postgres(_)) => {
                return Err(RegistryError::Secrets(
                    "a registry in PostgreSQL needs THAW_SECRETS_KEY (64 hex digits, as `openssl rand -hex 32` \
                     prints), the same on every worker: it is never stored in the database"
                        .into(),
                ))
            }
        };
        let db = match database {
            Database::Sqlite => {
                let conn = rusqlite::Connection::open(root.join("thaw.db"))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn.pragma_update(None, "foreign_keys", "ON")?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                let store = Store::Sqlite(std::sync::Mutex::new(conn));
                store.run(Kind::Write, schema::migrate_sqlite)?;
                store
            }
            Database::Postgres(url) => {
                let store = Store::Postgres(db::PgPool::connect(url)?);
                store.run(Kind::Queue, schema::migrate_postgres)?;
                store
            }
        };
        let registry = Registry {
            root: root.to_path_buf(),
            db,
            cipher,
        };
        registry.check_secrets_key()?;
        Ok(registry)
    }

    /// Refuses a secrets key other than the one the registry's secrets are
    /// sealed with, before anything is sealed with it.
    fn check_secrets_key(&self) -> Result<(), RegistryError> {
        let sealed = self.cipher.seal(0, &SecretValues::default());
        let fits = self.db.run(Kind::Write, |tx| {
            let stored: Option<Vec<u8>> = tx.opt(
                "SELECT value FROM meta WHERE name = ?1",
                params![KEY_CHECK],
                |r| r.get(0),
            )?;
            if let Some(stored) = stored {
                return Ok(self.cipher.open(0, &stored).is_ok());
            }
            // The first start of this release on a registry that has
            // secrets already: the key must open them before it is
            // recorded as the key.
            let some_secret: Option<(i64, Vec<u8>)> = tx.opt(
                "SELECT function_id, secrets FROM versions WHERE secrets IS NOT NULL LIMIT 1",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if let Some((function_row, blob)) = some_secret {
                if self.cipher.open(function_row, &blob).is_err() {
                    return Ok(false);
                }
            }
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![KEY_CHECK, sealed],
            )?;
            // Another worker may have recorded its key first.
            let stored: Vec<u8> = tx.one(
                "SELECT value FROM meta WHERE name = ?1",
                params![KEY_CHECK],
                |r| r.get(0),
            )?;
            Ok(self.cipher.open(0, &stored).is_ok())
        })?;
        fits.then_some(()).ok_or_else(|| {
            RegistryError::Secrets(
                "this secrets key is not the one the registry's secrets are sealed with: \
                 start thaw with the key it had before (THAW_SECRETS_KEY, or secrets.key in the data directory); \
                 every worker sharing a database needs the same key"
                    .into(),
            )
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which engine the records are in.
    pub fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The admin token: `THAW_TOKEN` if given; else, on one host, the one
    /// stored in the data directory, or a new random one stored there
    /// (mode 0600); in a shared database, the one stored there sealed with
    /// the secrets key, or a new one, so that every worker has the same.
    /// Either way the data directory's `token` file holds it for the CLI
    /// on that host.
    pub fn token(&self, from_env: Option<String>) -> Result<String, RegistryError> {
        if let Some(t) = from_env.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        let new_token = || format!("thaw_{}", hex::encode(rand::random::<[u8; 24]>()));
        if self.engine() == Engine::Sqlite {
            return private_file(&self.root.join("token"), new_token);
        }
        let mut made = SecretValues::default();
        made.0.insert(
            ADMIN_TOKEN.into(),
            secrets::SecretEntry {
                value: new_token(),
                updated_ms: now_ms(),
            },
        );
        let sealed = self.cipher.seal(0, &made);
        let stored: Vec<u8> = self.db.run(Kind::Write, |tx| {
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![ADMIN_TOKEN, sealed],
            )?;
            tx.one(
                "SELECT value FROM meta WHERE name = ?1",
                params![ADMIN_TOKEN],
                |r| r.get(0),
            )
        })?;
        let token = self
            .cipher
            .open(0, &stored)?
            .0
            .remove(ADMIN_TOKEN)
            .map(|e| e.value)
            .ok_or_else(|| RegistryError::Corrupt("the stored admin token is empty".into()))?;
        let path = self.root.join("token");
        if fs::read_to_string(&path)
            .map(|t| t.trim() != token)
            .unwrap_or(true)
        {
            let _ = fs::remove_file(&path);
            private_file(&path, || token.clone())?;
        }
        Ok(token)
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
        if self.engine() == Engine::Postgres {
            // Durable where every worker finds it before the deploy goes on.
            let bytes = archive.len() as i64;
            self.db.run(Kind::Write, |tx| {
                tx.execute(
                    "INSERT INTO bundles (hash, archive, bytes, created_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hash) DO UPDATE SET created_ms = excluded.created_ms",
                    params![bundle, archive, bytes, now_ms()],
                )
            })?;
        }
        if let Some(tree) = self.local_tree(&bundle)? {
            return Ok(tree);
        }
        let dir = self.code_dir(&bundle);
        let meta_path = self.root.join("code").join(format!("{bundle}.json"));

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

    /// The code tree of `bundle` if this host has it made.
    fn local_tree(&self, bundle: &str) -> Result<Option<CodeTree>, RegistryError> {
        let dir = self.code_dir(bundle);
        let meta_path = self.root.join("code").join(format!("{bundle}.json"));
        let Ok(meta) = fs::read(&meta_path) else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut tree: CodeTree = serde_json::from_slice(&meta)
            .map_err(|e| RegistryError::Corrupt(format!("{}: {e}", meta_path.display())))?;
        tree.dir = dir;
        Ok(Some(tree))
    }

    /// The code tree of `bundle` on this host, made first if this host has
    /// not got it: from the archive in the shared database (a version
    /// deployed through another worker), or from the archive kept in the
    /// data directory. The archive is checked against its hash before it
    /// is unpacked.
    pub fn fetch_code_with(
        &self,
        bundle: &str,
        limits: &Limits,
        esbuild: Option<&Path>,
        sandbox: &dyn thaw_bundle::BuildSandbox,
    ) -> Result<CodeTree, RegistryError> {
        if let Some(tree) = self.local_tree(bundle)? {
            return Ok(tree);
        }
        let archive = match self.engine() {
            Engine::Postgres => self
                .db
                .run(Kind::Read, |tx| {
                    tx.opt(
                        "SELECT archive FROM bundles WHERE hash = ?1",
                        params![bundle],
                        |r| r.get::<Vec<u8>>(0),
                    )
                })?
                .ok_or_else(|| {
                    RegistryError::Corrupt(format!(
                        "bundle {bundle} is in no worker's reach: not in the database"
                    ))
                })?,
            Engine::Sqlite => {
                let path = self.root.join("bundles").join(format!("{bundle}.tar.gz"));
                fs::read(&path).map_err(io_err(&path))?
            }
        };
        let found = thaw_bundle::content_hash(&archive);
        if found != bundle {
            return Err(RegistryError::Corrupt(format!(
                "the stored archive of bundle {bundle} hashes to {found}: refusing it"
            )));
        }
        self.store_code_with(&archive, limits, esbuild, sandbox)
    }

    /// Deletes bundles and code trees that no kept version refers to, and
    /// staging directories left by an interrupted build (those over an
    /// hour old: a younger one may be a build under way that took no
    /// deploy lock, code fetched for another worker's deploy). Call it
    /// when no deploy is running: at start-up, or under the platform's
    /// deploy lock.
    /// Says which code trees went, for the drivers to let go of them.
    pub fn collect_garbage(&self) -> Result<Garbage, RegistryError> {
        let used: std::collections::HashSet<String> = self
            .db
            .run(Kind::Read, |tx| {
                tx.map("SELECT DISTINCT bundle FROM versions", params![], |r| {
                    r.get::<String>(0)
                })
            })?
            .into_iter()
            .collect();
        let mut garbage = Garbage::default();
        if self.engine() == Engine::Postgres {
            // Archives stored in the last hour are left alone: a deploy on
            // another worker may have stored one and not yet recorded the
            // version that uses it.
            garbage.removed += self.db.run(Kind::Write, |tx| {
                tx.execute(
                    "DELETE FROM bundles WHERE created_ms < ?1
                       AND hash NOT IN (SELECT DISTINCT bundle FROM versions)",
                    params![now_ms() - 3_600_000],
                )
            })?;
        }
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
                if hash.is_empty() && younger_than(&path, STAGING_KEPT) {
                    // A staging directory of a build under way (code
                    // fetched for another worker's deploy takes no deploy
                    // lock); one left by an interrupted build is older.
                    continue;
                }
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

/// Staging directories younger than this may belong to a build under way.
const STAGING_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `path` was modified less than `age` ago.
fn younger_than(path: &Path, age: std::time::Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed < age)
}
