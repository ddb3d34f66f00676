//! Namespaces (the unit of tenancy) and the API keys scoped to them.
//!
//! A key is `thawk_<id>_<secret>`: the id finds its row, the secret is
//! checked against the SHA-256 stored there, in constant time. The secret
//! is 32 random bytes, so a fast hash is enough: there is nothing to guess.
//! The key's text exists only in the answer to its creation.

use crate::changes::Change;
use crate::db::{params, Kind, Row};
use crate::{now_ms, Registry, RegistryError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The namespace every data directory has, where `/fn/{name}` points.
pub const DEFAULT_NAMESPACE: &str = "default";

const KEY_PREFIX: &str = "thawk_";

/// What one namespace may hold at once, so that no tenant takes the host
/// from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceLimits {
    /// Functions deployed.
    pub max_functions: u32,
    /// Instances running (busy, idle or starting) across its functions.
    pub max_instances: u32,
    /// Memory of those instances together (each counts its `memory`), MiB.
    pub max_memory_mb: u32,
    /// Largest archive one deploy may upload, bytes.
    pub max_deploy_bytes: u64,
    /// Async calls accepted and not yet finished (queued, running or
    /// waiting for a retry) across its functions.
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
}

/// Every namespace's bound on unfinished async calls unless set otherwise.
pub const MAX_QUEUED: u32 = 10_000;

fn default_max_queued() -> u32 {
    MAX_QUEUED
}

impl NamespaceLimits {
    /// What `thaw ns create` gives a tenant unless told otherwise: room
    /// for real work, not for the whole host.
    pub fn tenant() -> NamespaceLimits {
        NamespaceLimits {
            max_functions: 100,
            max_instances: 32,
            max_memory_mb: 8 * 1024,
            max_deploy_bytes: 64 << 20,
            max_queued: MAX_QUEUED,
        }
    }

    /// The `default` namespace's: on a host with one tenant it is the
    /// whole platform, bounded by the host's own budgets rather than these.
    pub fn whole_host() -> NamespaceLimits {
        NamespaceLimits {
            max_functions: 10_000,
            max_instances: 10_000,
            max_memory_mb: 1 << 20,
            max_deploy_bytes: 64 << 20,
            max_queued: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub created_ms: i64,
    pub limits: NamespaceLimits,
}

/// What a namespace key may do inside its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything inside the namespace: deploy, remove, aliases, secrets.
    Deploy,
    /// Call functions through the API; read nothing.
    Invoke,
    /// List, versions, logs and metrics of the namespace.
    Read,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Deploy => "deploy",
            Role::Invoke => "invoke",
            Role::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "deploy" => Some(Role::Deploy),
            "invoke" => Some(Role::Invoke),
            "read" => Some(Role::Read),
            _ => None,
        }
    }
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub role: Role,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl KeyInfo {
    fn from_row(r: &Row) -> Result<KeyInfo, RegistryError> {
        let role: String = r.get(3)?;
        Ok(KeyInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            namespace: r.get(2)?,
            role: Role::parse(&role).unwrap_or(Role::Read),
            created_ms: r.get(4)?,
            expires_ms: r.get(5)?,
            revoked_ms: r.get(6)?,
        })
    }

    pub fn usable_at(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

const KEY_COLUMNS: &str = "id, name, namespace, role, created_ms, expires_ms, revoked_ms";

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares in time independent of where the strings differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Registry {
    pub fn create_namespace(
        &self,
        name: &str,
        limits: NamespaceLimits,
    ) -> Result<Namespace, RegistryError> {
        thaw_bundle::validate_name(name)?;
        let created_ms = now_ms();
        let inserted = self.db.run(Kind::Write, |tx| {
            tx.announce(&Change::Namespace(name.to_string()))?;
            tx.execute(
            "INSERT INTO namespaces (name, created_ms, max_functions, max_instances, max_memory_mb, max_deploy_bytes, max_queued)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(name) DO NOTHING",
            params![
                name,
                created_ms,
                limits.max_functions,
                limits.max_instances,
                limits.max_memory_mb,
                limits.max_deploy_bytes as i64,
                limits.max_queued
            ],
        )
        })?;
        if inserted == 0 {
            return Err(RegistryError::Conflict(format!(
                "namespace `{name}` exists already"
            )));
        }
        Ok(Namespace {
            name: name.to_string(),
            created_ms,
            limits,
        })
    }

    pub fn set_namespace_limits(
        &self,
        name: &str,
        limits: NamespaceLimits,
    ) -> Result<Namespace, RegistryError> {
        let n = self.db.run(Kind::Write, |tx| {
            tx.announce(&Change::Namespace(name.to_string()))?;
            tx.execute(
            "UPDATE namespaces SET max_functions = ?2, max_instances = ?3, max_memory_mb = ?4, max_deploy_bytes = ?5,
                 max_queued = ?6
             WHERE name = ?1",
            params![
                name,
                limits.max_functions,
                limits.max_instances,
                limits.max_memory_mb,
                limits.max_deploy_bytes as i64,
                limits.max_queued
            ],
        )
        })?;
        if n == 0 {
            return Err(RegistryError::NoNamespace(name.to_string()));
        }
        self.namespace(name)
    }

    pub fn namespaces(&self) -> Result<Vec<Namespace>, RegistryError> {
        self.db.run(Kind::Read, |tx| {
            tx.map(
                "SELECT name, created_ms, max_functions, max_instances, max_memory_mb, max_deploy_bytes, max_queued
                 FROM namespaces ORDER BY name",
                params![],
                namespace_from_row,
            )
        })
    }

    pub fn namespace(&self, name: &str) -> Result<Namespace, RegistryError> {
        self.db
            .run(Kind::Read, |tx| {
                tx.opt(
                    "SELECT name, created_ms, max_functions, max_instances, max_memory_mb, max_deploy_bytes, max_queued
                     FROM namespaces WHERE name = ?1",
                    params![name],
                    namespace_from_row,
                )
            })?
            .ok_or_else(|| RegistryError::NoNamespace(name.to_string()))
    }

    /// Removes an empty namespace and its keys. One that still has
    /// functions is refused: nothing is removed by surprise.
    pub fn remove_namespace(&self, name: &str) -> Result<(), RegistryError> {
        if name == DEFAULT_NAMESPACE {
            return Err(RegistryError::Invalid(
                "the `default` namespace cannot be removed".into(),
            ));
        }
        self.db.run(Kind::Write, |tx| {
            let functions: i64 = tx.one(
                "SELECT COUNT(*) FROM functions WHERE namespace = ?1",
                params![name],
                |r| r.get(0),
            )?;
            if functions > 0 {
                return Err(RegistryError::Conflict(format!(
                    "namespace `{name}` still has {functions} functions: remove them first (`thaw rm NAME --namespace {name}`)"
                )));
            }
            tx.execute("DELETE FROM api_keys WHERE namespace = ?1", params![name])?;
            let n = tx.execute("DELETE FROM namespaces WHERE name = ?1", params![name])?;
            if n == 0 {
                return Err(RegistryError::NoNamespace(name.to_string()));
            }
            tx.announce(&Change::Namespace(name.to_string()))
        })
    }

    /// Makes a key; returns it with its text, which is not kept anywhere.
    pub fn create_key(
        &self,
        namespace: &str,
        name: &str,
        role: Role,
        expires_ms: Option<i64>,
    ) -> Result<(KeyInfo, String), RegistryError> {
        thaw_bundle::validate_name(name)?;
        if name == "admin" {
            return Err(RegistryError::Invalid(
                "`admin` names the admin token in versions' `deployed_by`: pick another key name"
                    .into(),
            ));
        }
        self.namespace(namespace)?;
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let info = KeyInfo {
            id: id.clone(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            role,
            created_ms: now_ms(),
            expires_ms,
            revoked_ms: None,
        };
        let inserted = self.db.run(Kind::Write, |tx| {
            // An expired key gives its name up: it is revoked as of its expiry.
            tx.execute(
                "UPDATE api_keys SET revoked_ms = expires_ms WHERE namespace = ?1 AND name = ?2
                   AND revoked_ms IS NULL AND expires_ms IS NOT NULL AND expires_ms <= ?3",
                params![namespace, name, info.created_ms],
            )?;
            tx.execute(
                "INSERT INTO api_keys (id, name, namespace, role, hash, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    info.id,
                    info.name,
                    info.namespace,
                    role.as_str(),
                    hash_secret(&secret),
                    info.created_ms,
                    info.expires_ms
                ],
            )
        });
        match inserted {
            Ok(_) => Ok((info, format!("{KEY_PREFIX}{id}_{secret}"))),
            Err(e) if e.is_unique_violation() => Err(RegistryError::Conflict(format!(
                "namespace `{namespace}` has a key named `{name}` already: revoke it or pick another name"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Keys of one namespace, or of all, revoked ones included.
    pub fn keys(&self, namespace: Option<&str>) -> Result<Vec<KeyInfo>, RegistryError> {
        self.db.run(Kind::Read, |tx| match namespace {
            Some(ns) => tx.map(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = ?1 ORDER BY namespace, created_ms"
                ),
                params![ns],
                KeyInfo::from_row,
            ),
            None => tx.map(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY namespace, created_ms"),
                params![],
                KeyInfo::from_row,
            ),
        })
    }

    /// Revokes a key by id: its next call fails. Revoking a revoked key
    /// changes nothing and answers it as it is.
    pub fn revoke_key(&self, id: &str) -> Result<KeyInfo, RegistryError> {
        self.db
            .run(Kind::Write, |tx| {
                tx.execute(
                    "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                    params![id, now_ms()],
                )?;
                tx.opt(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                    params![id],
                    KeyInfo::from_row,
                )
            })?
            .ok_or_else(|| {
                RegistryError::NoSuch(format!("no key with id `{id}` (see `thaw key ls`)"))
            })
    }

    /// The key `text` names, if it is one, matches, and is neither revoked
    /// nor expired.
    pub fn authenticate(&self, text: &str) -> Result<Option<KeyInfo>, RegistryError> {
        let Some((id, secret)) = text
            .strip_prefix(KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let found = self.db.run(Kind::Read, |tx| {
            tx.opt(
                &format!("SELECT {KEY_COLUMNS}, hash FROM api_keys WHERE id = ?1"),
                params![id],
                |r| Ok((KeyInfo::from_row(r)?, r.get::<String>(7)?)),
            )
        })?;
        Ok(found.and_then(|(info, hash)| {
            (same_secret(hash_secret(secret).as_bytes(), hash.as_bytes())
                && info.usable_at(now_ms()))
            .then_some(info)
        }))
    }
}

fn namespace_from_row(r: &Row) -> Result<Namespace, RegistryError> {
    Ok(Namespace {
        name: r.get(0)?,
        created_ms: r.get(1)?,
        limits: NamespaceLimits {
            max_functions: r.get(2)?,
            max_instances: r.get(3)?,
            max_memory_mb: r.get(4)?,
            max_deploy_bytes: r.get::<i64>(5)? as u64,
            max_queued: r.get(6)?,
        },
    })
}
