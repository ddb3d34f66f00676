//! Functions, their immutable numbered versions, and the aliases that
//! choose which versions serve.
//!
//! A version is code (a bundle, its entry and `thaw.toml` settings) plus
//! configuration (environment variables and secrets set through the API).
//! A deploy or a configuration change makes a new version, starting from
//! the configuration of the version `latest` points to; nothing edits a
//! version. A version goes live (`activate`) only after its code loaded in
//! a runtime; `latest` then moves to it unless the deploy says otherwise.
//! An alias points at one version, or splits its calls between two by a
//! percentage. The newest [`VERSIONS_KEPT`] versions of each function are
//! kept, and any version an alias points at.

use crate::changes::Change;
use crate::db::{params, Kind, Row, Tx};
use crate::secrets::{SecretEntry, SecretValues};
use crate::{now_ms, CodeTree, Registry, RegistryError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thaw_bundle::Settings;

/// Versions kept per function, besides those an alias points at.
pub const VERSIONS_KEPT: i64 = 100;

/// The alias every deploy moves, unless told not to.
pub const LATEST: &str = "latest";

/// A function: its namespace and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FunctionId {
    pub namespace: String,
    pub name: String,
}

impl FunctionId {
    pub fn new(namespace: &str, name: &str) -> FunctionId {
        FunctionId {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for FunctionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One version of a function, ready to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// Unique across the registry: names the version's instances and logs.
    pub id: i64,
    pub function: FunctionId,
    /// 1, 2, 3 ... within its function.
    pub number: i64,
    pub bundle: String,
    pub entry: String,
    pub settings: Settings,
    /// Variables set through the API; they override `thaw.toml`'s `[env]`.
    pub env: BTreeMap<String, String>,
    pub secrets: SecretValues,
    pub archive_bytes: u64,
    /// The key that made it (`admin` for the admin token).
    pub deployed_by: String,
    /// `deploy`, `config` (environment or secrets) or `upgrade`.
    pub cause: String,
    pub created_ms: i64,
    /// Where the code tree lives on the host.
    pub code_dir: PathBuf,
}

impl Version {
    /// The runtime's environment: `thaw.toml`'s `[env]`, then variables
    /// set through the API, then secrets, each overriding the one before.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = self.settings.env.clone();
        env.extend(self.env.clone());
        env.extend(self.secrets.values().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// A function with its aliases and the versions they point at.
#[derive(Debug, Clone)]
pub struct Routable {
    pub function: FunctionId,
    pub aliases: Vec<Alias>,
    pub versions: Vec<Version>,
}

/// A version as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub number: i64,
    pub bundle: String,
    pub archive_bytes: u64,
    pub deployed_by: String,
    pub cause: String,
    pub created_ms: i64,
}

/// A share of an alias's calls sent to a second version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub version: i64,
    /// 1..=99: the share of calls, in percent, the second version gets.
    pub percent: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub name: String,
    /// The version number it points at.
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    pub updated_ms: i64,
}

/// One change of configuration, which makes a new version.
#[derive(Clone, PartialEq)]
pub enum ConfigChange {
    SetEnv(String, String),
    UnsetEnv(String),
    SetSecret(String, String),
    UnsetSecret(String),
}

impl std::fmt::Debug for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigChange::SetEnv(k, _) => write!(f, "SetEnv({k})"),
            ConfigChange::UnsetEnv(k) => write!(f, "UnsetEnv({k})"),
            ConfigChange::SetSecret(k, _) => write!(f, "SetSecret({k})"),
            ConfigChange::UnsetSecret(k) => write!(f, "UnsetSecret({k})"),
        }
    }
}

/// Checks a variable's name as POSIX shells take it, and keeps out the
/// names thaw's runtime and Node read for themselves.
pub fn validate_variable(name: &str) -> Result<(), RegistryError> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(RegistryError::Invalid(format!(
            "`{}` is not a variable name: 1 to 128 letters, digits and '_', not starting with a digit",
            name.escape_debug()
        )));
    }
    if name.starts_with("THAW_") || name.starts_with("NODE_") || name == "PATH" {
        return Err(RegistryError::Invalid(format!(
            "`{name}` is reserved for the runtime (THAW_*, NODE_*, PATH)"
        )));
    }
    Ok(())
}

const VERSION_COLUMNS: &str =
    "v.id, f.namespace, f.name, v.number, v.bundle, v.entry, v.settings, \
     v.env, v.secrets, v.archive_bytes, v.deployed_by, v.cause, v.created_ms, v.function_id";

/// Values of a version row, secrets still sealed.
struct VersionRow {
    version: Version,
    function_row: i64,
    sealed: Option<Vec<u8>>,
}

fn version_row(r: &Row) -> Result<VersionRow, RegistryError> {
    let corrupt = |i, e: serde_json::Error| {
        RegistryError::Corrupt(format!(
            "column {i} of a version is not the JSON it should be: {e}"
        ))
    };
    let settings: String = r.get(6)?;
    let env: String = r.get(7)?;
    Ok(VersionRow {
        version: Version {
            id: r.get(0)?,
            function: FunctionId {
                namespace: r.get(1)?,
                name: r.get(2)?,
            },
            number: r.get(3)?,
            bundle: r.get(4)?,
            entry: r.get(5)?,
            settings: serde_json::from_str(&settings).map_err(|e| corrupt(6, e))?,
            env: serde_json::from_str(&env).map_err(|e| corrupt(7, e))?,
            secrets: SecretValues::default(),
            archive_bytes: r.get::<i64>(9)? as u64,
            deployed_by: r.get(10)?,
            cause: r.get(11)?,
            created_ms: r.get(12)?,
            code_dir: PathBuf::new(),
        },
        sealed: r.get(8)?,
        function_row: r.get(13)?,
    })
}

impl Registry {
    fn finish(&self, row: VersionRow) -> Result<Version, RegistryError> {
        let mut v = row.version;
        v.code_dir = self.code_dir(&v.bundle);
        if let Some(sealed) = row.sealed {
            v.secrets = self.cipher.open(row.function_row, &sealed)?;
        }
        Ok(v)
    }

    fn function_row(tx: &mut Tx<'_>, f: &FunctionId) -> Result<Option<i64>, RegistryError> {
        tx.opt(
            "SELECT id FROM functions WHERE namespace = ?1 AND name = ?2",
            params![f.namespace, f.name],
            |r| r.get(0),
        )
    }

    /// The row of `f`, which must exist ([`RegistryError::NotFound`]).
    pub(crate) fn existing_function_row(
        tx: &mut Tx<'_>,
        f: &FunctionId,
    ) -> Result<i64, RegistryError> {
        Self::function_row(tx, f)?.ok_or_else(|| RegistryError::NotFound(f.name.clone()))
    }

    /// The version `latest` points at, secrets sealed.
    fn latest_row(tx: &mut Tx<'_>, function_row: i64) -> Result<Option<VersionRow>, RegistryError> {
        tx.opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM aliases a JOIN versions v ON v.id = a.version_id
                 JOIN functions f ON f.id = v.function_id
                 WHERE a.function_id = ?1 AND a.name = '{LATEST}'"
            ),
            params![function_row],
            version_row,
        )
    }

    /// Records a new version, not yet serving: `tree`'s code with the
    /// configuration `latest` has (none for a new function). A new
    /// function counts against its namespace's `max_functions`.
    pub fn add_version(
        &self,
        function: &FunctionId,
        tree: &CodeTree,
        archive_bytes: u64,
        deployed_by: &str,
    ) -> Result<Version, RegistryError> {
        let version = self.db.run(Kind::Write, |tx| {
        let function_row = match Self::function_row(tx, function)? {
            Some(id) => id,
            None => {
                let (limit, count): (i64, i64) = tx
                    .opt(
                        "SELECT n.max_functions, (SELECT COUNT(*) FROM functions WHERE namespace = n.name)
                         FROM namespaces n WHERE n.name = ?1",
                        params![function.namespace],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .ok_or_else(|| RegistryError::NoNamespace(function.namespace.clone()))?;
                if count >= limit {
                    return Err(RegistryError::LimitReached(format!(
                        "namespace `{}` has {count} functions, its limit (max_functions); remove one or ask the admin to raise it",
                        function.namespace
                    )));
                }
                let now = now_ms();
                tx.one(
                    "INSERT INTO functions (namespace, name, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
                     RETURNING id",
                    params![function.namespace, function.name, now],
                    |r| r.get(0),
                )?
            }
        };
        let base = Self::latest_row(tx, function_row)?;
        let (env, sealed) = match base {
            Some(b) => (b.version.env, b.sealed),
            None => (BTreeMap::new(), None),
        };
        Self::insert_version(
            tx,
            function_row,
            NewVersion {
                bundle: &tree.bundle,
                entry: &tree.entry,
                settings: &tree.settings,
                env: &env,
                sealed: sealed.as_deref(),
                archive_bytes,
                deployed_by,
                cause: "deploy",
            },
        )
        })?;
        self.version_by_id(version)
    }

    /// Records a new version that is `latest`'s with one change of its
    /// configuration, not yet serving.
    pub fn add_config_version(
        &self,
        function: &FunctionId,
        change: &ConfigChange,
        deployed_by: &str,
    ) -> Result<Version, RegistryError> {
        match change {
            ConfigChange::SetEnv(k, _)
            | ConfigChange::UnsetEnv(k)
            | ConfigChange::SetSecret(k, _)
            | ConfigChange::UnsetSecret(k) => validate_variable(k)?,
        }
        let version = self.db.run(Kind::Write, |tx| {
            let function_row = Self::function_row(tx, function)?
                .ok_or_else(|| RegistryError::NotFound(function.name.clone()))?;
            let base = Self::latest_row(tx, function_row)?
                .ok_or_else(|| RegistryError::NotFound(function.name.clone()))?;
            let mut env = base.version.env.clone();
            let mut secrets = match &base.sealed {
                Some(s) => self.cipher.open(function_row, s)?,
                None => SecretValues::default(),
            };
            let missing = |what: &str, k: &str| {
                RegistryError::NoSuch(format!("`{}` has no {what} named `{k}`", function.name))
            };
            match change {
                ConfigChange::SetEnv(k, v) => {
                    env.insert(k.clone(), v.clone());
                }
                ConfigChange::UnsetEnv(k) => {
                    env.remove(k).ok_or_else(|| missing("variable", k))?;
                }
                ConfigChange::SetSecret(k, v) => {
                    secrets.0.insert(
                        k.clone(),
                        SecretEntry {
                            value: v.clone(),
                            updated_ms: now_ms(),
                        },
                    );
                }
                ConfigChange::UnsetSecret(k) => {
                    secrets.0.remove(k).ok_or_else(|| missing("secret", k))?;
                }
            }
            let sealed = (!secrets.0.is_empty()).then(|| self.cipher.seal(function_row, &secrets));
            let b = &base.version;
            Self::insert_version(
                tx,
                function_row,
                NewVersion {
                    bundle: &b.bundle,
                    entry: &b.entry,
                    settings: &b.settings,
                    env: &env,
                    sealed: sealed.as_deref(),
                    archive_bytes: b.archive_bytes,
                    deployed_by,
                    cause: "config",
                },
            )
        })?;
        self.version_by_id(version)
    }

    fn insert_version(
        tx: &mut Tx<'_>,
        function_row: i64,
        v: NewVersion<'_>,
    ) -> Result<i64, RegistryError> {
        let number: i64 = tx.one(
            "UPDATE functions SET next_number = next_number + 1 WHERE id = ?1 RETURNING next_number - 1",
            params![function_row],
            |r| r.get(0),
        )?;
        tx.one(
            "INSERT INTO versions (function_id, number, bundle, entry, settings, env, secrets,
                                   archive_bytes, deployed_by, cause, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
            params![
                function_row,
                number,
                v.bundle,
                v.entry,
                serde_json::to_string(v.settings).expect("settings serialise"),
                serde_json::to_string(v.env).expect("env serialises"),
                v.sealed,
                v.archive_bytes as i64,
                v.deployed_by,
                v.cause,
                now_ms()
            ],
            |r| r.get(0),
        )
    }

    fn version_by_id(&self, id: i64) -> Result<Version, RegistryError> {
        let row = self.db.run(Kind::Read, |tx| {
            tx.one(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v JOIN functions f ON f.id = v.function_id
                     WHERE v.id = ?1"
                ),
                params![id],
                version_row,
            )
        })?;
        self.finish(row)
    }

    /// Lets `version` serve, and with `promote` points `latest` at it, in
    /// one transaction. Versions past the newest [`VERSIONS_KEPT`] that no
    /// alias points at are forgotten; returns how many, so the caller can
    /// free their code ([`Registry::collect_garbage`]).
    pub fn activate(&self, version: &Version, promote: bool) -> Result<usize, RegistryError> {
        let now = now_ms();
        self.db.run(Kind::Write, |tx| {
        let function_row: i64 = tx.one(
            "UPDATE versions SET live = 1 WHERE id = ?1 RETURNING function_id",
            params![version.id],
            |r| r.get(0),
        )?;
        let has_latest: bool = tx.one(
            "SELECT COUNT(*) > 0 FROM aliases WHERE function_id = ?1 AND name = 'latest'",
            params![function_row],
            |r| r.get(0),
        )?;
        if promote || !has_latest {
            tx.execute(
                "INSERT INTO aliases (function_id, name, version_id, updated_ms) VALUES (?1, 'latest', ?2, ?3)
                 ON CONFLICT(function_id, name) DO UPDATE SET version_id = excluded.version_id,
                     split_version_id = NULL, split_percent = 0, updated_ms = excluded.updated_ms",
                params![function_row, version.id, now],
            )?;
        }
        tx.execute(
            "UPDATE functions SET updated_ms = ?2 WHERE id = ?1",
            params![function_row, now],
        )?;
        crate::schedules::sync_toml_schedules(tx, function_row, now)?;
        tx.announce(&Change::Function(version.function.clone()))?;
        tx.execute(
            "DELETE FROM versions WHERE function_id = ?1 AND live = 1
               AND id NOT IN (SELECT id FROM versions WHERE function_id = ?1 ORDER BY number DESC LIMIT ?2)
               AND id NOT IN (SELECT version_id FROM aliases WHERE function_id = ?1)
               AND id NOT IN (SELECT split_version_id FROM aliases
                              WHERE function_id = ?1 AND split_version_id IS NOT NULL)",
            params![function_row, VERSIONS_KEPT],
        )
        })
    }

    /// Forgets a version that never went live (its code failed to load),
    /// and its function too if that was its first.
    pub fn discard_version(&self, version: &Version) -> Result<(), RegistryError> {
        self.db.run(Kind::Write, |tx| {
            tx.execute(
                "DELETE FROM versions WHERE id = ?1 AND live = 0",
                params![version.id],
            )?;
            tx.execute(
                "DELETE FROM functions WHERE namespace = ?1 AND name = ?2
               AND NOT EXISTS (SELECT 1 FROM versions WHERE function_id = functions.id)",
                params![version.function.namespace, version.function.name],
            )?;
            Ok(())
        })
    }

    /// Every function with its aliases and the versions they point at.
    pub fn routable(&self) -> Result<Vec<Routable>, RegistryError> {
        let ids: Vec<FunctionId> = self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT namespace, name FROM functions ORDER BY namespace, name",
                params![],
                |r| {
                    Ok(FunctionId {
                        namespace: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (aliases, versions) = self.function_routes(&id)?;
            if !aliases.is_empty() {
                out.push(Routable {
                    function: id,
                    aliases,
                    versions,
                });
            }
        }
        Ok(out)
    }

    /// A function's aliases and the versions they point at.
    pub fn function_routes(
        &self,
        function: &FunctionId,
    ) -> Result<(Vec<Alias>, Vec<Version>), RegistryError> {
        let aliases = self.aliases(function)?;
        let rows: Vec<VersionRow> = self.db.run(Kind::Read, |tx| {
            tx.map(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v JOIN functions f ON f.id = v.function_id
                     WHERE f.namespace = ?1 AND f.name = ?2 AND v.id IN
                       (SELECT version_id FROM aliases WHERE function_id = f.id
                        UNION SELECT split_version_id FROM aliases WHERE function_id = f.id)"
                ),
                params![function.namespace, function.name],
                version_row,
            )
        })?;
        let versions = rows
            .into_iter()
            .map(|r| self.finish(r))
            .collect::<Result<_, _>>()?;
        Ok((aliases, versions))
    }

    /// One live version of a function, by number.
    pub fn version(&self, function: &FunctionId, number: i64) -> Result<Version, RegistryError> {
        let row = self.db.run(Kind::Read, |tx| {
            tx.opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v JOIN functions f ON f.id = v.function_id
                     WHERE f.namespace = ?1 AND f.name = ?2 AND v.number = ?3 AND v.live = 1"
                ),
                params![function.namespace, function.name, number],
                version_row,
            )
        })?;
        match row {
            Some(r) => self.finish(r),
            None => Err(RegistryError::NoSuch(format!(
                "`{}` has no version {number} (see `thaw versions {}`)",
                function.name, function.name
            ))),
        }
    }

    /// The kept live versions of a function, newest first.
    pub fn versions(&self, function: &FunctionId) -> Result<Vec<VersionInfo>, RegistryError> {
        let out: Vec<VersionInfo> = self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT v.number, v.bundle, v.archive_bytes, v.deployed_by, v.cause, v.created_ms
                 FROM versions v JOIN functions f ON f.id = v.function_id
                 WHERE f.namespace = ?1 AND f.name = ?2 AND v.live = 1 ORDER BY v.number DESC",
                params![function.namespace, function.name],
                |r| {
                    Ok(VersionInfo {
                        number: r.get(0)?,
                        bundle: r.get(1)?,
                        archive_bytes: r.get::<i64>(2)? as u64,
                        deployed_by: r.get(3)?,
                        cause: r.get(4)?,
                        created_ms: r.get(5)?,
                    })
                },
            )
        })?;
        if out.is_empty() {
            return Err(RegistryError::NotFound(function.name.clone()));
        }
        Ok(out)
    }

    pub fn aliases(&self, function: &FunctionId) -> Result<Vec<Alias>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT a.name, v.number, s.number, a.split_percent, a.updated_ms
                 FROM aliases a JOIN functions f ON f.id = a.function_id
                 JOIN versions v ON v.id = a.version_id
                 LEFT JOIN versions s ON s.id = a.split_version_id
                 WHERE f.namespace = ?1 AND f.name = ?2 ORDER BY a.name",
                params![function.namespace, function.name],
                |r| {
                    let split: Option<i64> = r.get(2)?;
                    let percent = u8::try_from(r.get::<i64>(3)?).unwrap_or(0);
                    Ok(Alias {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        split: split.map(|version| Split { version, percent }),
                        updated_ms: r.get(4)?,
                    })
                },
            )
        })
    }

    /// Points `alias` at version `number`, with an optional share of calls
    /// for a second version; creates the alias if needed. One transaction.
    pub fn set_alias(
        &self,
        function: &FunctionId,
        alias: &str,
        number: i64,
        split: Option<Split>,
    ) -> Result<Alias, RegistryError> {
        thaw_bundle::validate_name(alias).map_err(|_| {
            RegistryError::Invalid(format!(
                "`{}` is not an alias name: lowercase letters, digits and '-', starting with a letter",
                alias.escape_debug()
            ))
        })?;
        if let Some(s) = split {
            if !(1..=99).contains(&s.percent) {
                return Err(RegistryError::Invalid(format!(
                    "a split sends 1 to 99 percent of calls to the second version, not {}",
                    s.percent
                )));
            }
            if s.version == number {
                return Err(RegistryError::Invalid(
                    "a split needs two different versions".into(),
                ));
            }
        }
        let now = now_ms();
        self.db.run(Kind::Write, |tx| {
        let function_row = Self::function_row(tx, function)?
            .ok_or_else(|| RegistryError::NotFound(function.name.clone()))?;
        let mut live = |n: i64| -> Result<i64, RegistryError> {
            tx.opt(
                "SELECT id FROM versions WHERE function_id = ?1 AND number = ?2 AND live = 1",
                params![function_row, n],
                |r| r.get(0),
            )?
            .ok_or_else(|| {
                RegistryError::NoSuch(format!(
                    "`{}` has no version {n} (see `thaw versions {}`)",
                    function.name, function.name
                ))
            })
        };
        let primary = live(number)?;
        let second = split.map(|s| live(s.version)).transpose()?;
        tx.execute(
            "INSERT INTO aliases (function_id, name, version_id, split_version_id, split_percent, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(function_id, name) DO UPDATE SET version_id = excluded.version_id,
                 split_version_id = excluded.split_version_id, split_percent = excluded.split_percent,
                 updated_ms = excluded.updated_ms",
            params![
                function_row,
                alias,
                primary,
                second,
                split.map(|s| s.percent).unwrap_or(0),
                now
            ],
        )?;
        if alias == LATEST {
            crate::schedules::sync_toml_schedules(tx, function_row, now)?;
        }
        tx.announce(&Change::Function(function.clone()))
        })?;
        Ok(Alias {
            name: alias.to_string(),
            version: number,
            split,
            updated_ms: now,
        })
    }

    pub fn remove_alias(&self, function: &FunctionId, alias: &str) -> Result<(), RegistryError> {
        if alias == LATEST {
            return Err(RegistryError::Invalid(
                "`latest` cannot be removed: point it elsewhere with `thaw rollback` or `thaw alias set`".into(),
            ));
        }
        let n = self.db.run(Kind::Write, |tx| {
            tx.announce(&Change::Function(function.clone()))?;
            tx.execute(
                "DELETE FROM aliases WHERE name = ?2 AND function_id =
                   (SELECT id FROM functions WHERE namespace = ?1 AND name = ?3)",
                params![function.namespace, alias, function.name],
            )
        })?;
        if n == 0 {
            return Err(RegistryError::NoSuch(format!(
                "`{}` has no alias `{alias}`",
                function.name
            )));
        }
        Ok(())
    }

    /// Points `alias` at version `to`, or at the newest live version older
    /// than the one it points at now; any split ends.
    pub fn rollback(
        &self,
        function: &FunctionId,
        alias: &str,
        to: Option<i64>,
    ) -> Result<Alias, RegistryError> {
        let current = self
            .aliases(function)?
            .into_iter()
            .find(|a| a.name == alias)
            .ok_or_else(|| {
                RegistryError::NoSuch(format!("`{}` has no alias `{alias}`", function.name))
            })?;
        let target = match to {
            Some(n) => n,
            None => self
                .versions(function)?
                .into_iter()
                .map(|v| v.number)
                .find(|n| *n < current.version)
                .ok_or_else(|| {
                    RegistryError::NoSuch(format!(
                        "`{}` has no version older than {} to roll `{alias}` back to",
                        function.name, current.version
                    ))
                })?,
        };
        self.set_alias(function, alias, target, None)
    }

    /// Removes a function, its versions, aliases and logs. Code trees no
    /// version uses any more are removed by [`Registry::collect_garbage`].
    pub fn remove(&self, function: &FunctionId) -> Result<(), RegistryError> {
        self.db.run(Kind::Write, |tx| {
            let function_row = Self::function_row(tx, function)?
                .ok_or_else(|| RegistryError::NotFound(function.name.clone()))?;
            tx.execute(
                "DELETE FROM aliases WHERE function_id = ?1",
                params![function_row],
            )?;
            tx.execute(
                "DELETE FROM versions WHERE function_id = ?1",
                params![function_row],
            )?;
            tx.execute(
                "DELETE FROM logs WHERE function_id = ?1",
                params![function_row],
            )?;
            tx.execute("DELETE FROM functions WHERE id = ?1", params![function_row])?;
            tx.announce(&Change::Function(function.clone()))
        })
    }
}

struct NewVersion<'a> {
    bundle: &'a str,
    entry: &'a str,
    settings: &'a Settings,
    env: &'a BTreeMap<String, String>,
    sealed: Option<&'a [u8]>,
    archive_bytes: u64,
    deployed_by: &'a str,
    cause: &'a str,
}
