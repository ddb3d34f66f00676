//! The database's shape, and the upgrade of every older shape to it.
//!
//! `PRAGMA user_version` says which shape a file has. Version 0 with a
//! `functions` table is the first release's (functions by name only, one
//! current version, no namespaces): it is upgraded in one transaction, its
//! functions landing in `default` with their versions numbered from 1 and
//! `latest` pointing at the one that served. A file newer than this
//! release knows is refused rather than misread.
//!
//! PostgreSQL gets the same shape from the same text: the statements below
//! are written for SQLite and [`postgres_sql`] rewrites their column types
//! (64-bit integers everywhere, `BYTEA` for blobs, sequences for ids). Its
//! version is kept in a one-row table `thaw_schema`, and workers starting
//! together upgrade it one at a time under an advisory lock.

use crate::db::{params, Tx};
use crate::tenancy::{NamespaceLimits, DEFAULT_NAMESPACE};
use crate::{now_ms, RegistryError};

/// The shape this release writes.
pub const CURRENT: i64 = 6;

const TABLES: &str = "
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    max_functions INTEGER NOT NULL,
    max_instances INTEGER NOT NULL,
    max_memory_mb INTEGER NOT NULL,
    max_deploy_bytes INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE UNIQUE INDEX api_keys_live_names ON api_keys(namespace, name) WHERE revoked_ms IS NULL;
CREATE TABLE functions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    name TEXT NOT NULL,
    next_number INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (namespace, name)
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function_id INTEGER NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    bundle TEXT NOT NULL,
    entry TEXT NOT NULL,
    settings TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',
    secrets BLOB,
    archive_bytes INTEGER NOT NULL DEFAULT 0,
    deployed_by TEXT NOT NULL DEFAULT '',
    cause TEXT NOT NULL DEFAULT 'deploy',
    live INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    UNIQUE (function_id, number)
);
CREATE TABLE aliases (
    function_id INTEGER NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    split_version_id INTEGER REFERENCES versions(id),
    split_percent INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (function_id, name)
);
CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function_id INTEGER NOT NULL,
    version INTEGER,
    invocation INTEGER,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);
CREATE INDEX logs_by_function ON logs(function_id, id);
";

/// Shape 3: async calls with their attempts (the queue and the dead-letter
/// queue are states of one table), cron schedules, and each namespace's
/// bound on calls waiting to run.
const V3: &str = "
ALTER TABLE namespaces ADD COLUMN max_queued INTEGER NOT NULL DEFAULT 10000;
CREATE TABLE calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL UNIQUE,
    function_id INTEGER NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    result TEXT,
    error TEXT,
    dedup TEXT UNIQUE
);
CREATE INDEX calls_due ON calls(state, run_at_ms);
CREATE INDEX calls_by_function ON calls(function_id, state, id);
CREATE TABLE call_attempts (
    call_id INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    version INTEGER,
    run_id INTEGER,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    logs TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (call_id, number)
);
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function_id INTEGER NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    alias TEXT NOT NULL,
    method TEXT,
    payload TEXT,
    origin TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_tick_ms INTEGER,
    next_ms INTEGER,
    fired INTEGER NOT NULL DEFAULT 0,
    missed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (function_id, name)
);
CREATE INDEX schedules_due ON schedules(next_ms);
UPDATE namespaces SET max_queued = 100000 WHERE name = 'default';
";

/// Shape 4: facts about the registry itself, such as a value sealed with
/// the secrets key, by which a worker started with another key is refused
/// before it writes anything.
const V4: &str = "
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

/// Shape 5: uploaded archives by content hash, for a registry that many
/// workers share (each fetches an archive the first time it needs it).
/// One host keeps them as files in the data directory instead, and leaves
/// this table empty.
const V5: &str = "
CREATE TABLE bundles (
    hash TEXT PRIMARY KEY,
    archive BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// Shape 6: the workers sharing the registry, each with a lease it
/// renews, and which worker runs each running async call (its lease
/// lapsed, the call is taken over).
const V6: &str = "
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    busy INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL
);
ALTER TABLE calls ADD COLUMN worker TEXT;
";

/// The steps after the second shape: (the shape it makes, its SQL).
const STEPS: &[(i64, &str)] = &[(3, V3), (4, V4), (5, V5), (6, V6)];

/// Statements written for SQLite, as PostgreSQL takes them.
pub(crate) fn postgres_sql(sql: &str) -> String {
    sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
}

/// Inserts the `default` namespace of a new registry.
fn insert_default_namespace(tx: &mut Tx<'_>) -> Result<(), RegistryError> {
    let limits = NamespaceLimits::whole_host();
    tx.execute(
        "INSERT INTO namespaces (name, created_ms, max_functions, max_instances, max_memory_mb, max_deploy_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            DEFAULT_NAMESPACE,
            now_ms(),
            limits.max_functions,
            limits.max_instances,
            limits.max_memory_mb,
            limits.max_deploy_bytes as i64
        ],
    )?;
    Ok(())
}

/// An arbitrary number naming the schema upgrade's advisory lock.
const UPGRADE_LOCK: i64 = 0x7468_6177_0001;

/// Brings a PostgreSQL database to [`CURRENT`], in one transaction (run
/// at READ COMMITTED, so that a worker that waited for the lock sees what
/// the one before it made).
pub(crate) fn migrate_postgres(tx: &mut Tx<'_>) -> Result<(), RegistryError> {
    tx.batch(&format!("SELECT pg_advisory_xact_lock({UPGRADE_LOCK})"))?;
    tx.batch("CREATE TABLE IF NOT EXISTS thaw_schema (version BIGINT NOT NULL)")?;
    let found: Option<i64> = tx.opt("SELECT version FROM thaw_schema", params![], |r| r.get(0))?;
    let from = match found {
        Some(v) if v > CURRENT => {
            return Err(RegistryError::TooNew {
                found: v,
                known: CURRENT,
            })
        }
        Some(v) => v,
        None => {
            tx.batch(&postgres_sql(TABLES))?;
            insert_default_namespace(tx)?;
            tx.execute("INSERT INTO thaw_schema (version) VALUES (2)", params![])?;
            2
        }
    };
    for (shape, sql) in STEPS {
        if *shape > from {
            tx.batch(&postgres_sql(sql))?;
        }
    }
    if from != CURRENT {
        tx.execute("UPDATE thaw_schema SET version = ?1", params![CURRENT])?;
        if found.is_some() {
            tracing::info!("upgraded the registry from schema {from} to {CURRENT}");
        }
    }
    Ok(())
}

/// The first release's tables, renamed out of the way and copied over.
const FROM_V1: &str = "
DROP INDEX IF EXISTS versions_by_function;
DROP INDEX IF EXISTS logs_by_function;
ALTER TABLE versions RENAME TO v1_versions;
ALTER TABLE functions RENAME TO v1_functions;
ALTER TABLE logs RENAME TO v1_logs;
";

const COPY_V1: &str = "
INSERT INTO functions (namespace, name, created_ms, updated_ms)
    SELECT 'default', name, created_ms, updated_ms FROM v1_functions;
INSERT INTO versions (id, function_id, number, bundle, entry, settings, deployed_by, live, created_ms)
    SELECT v.id, f.id,
           (SELECT COUNT(*) FROM v1_versions w WHERE w.function = v.function AND w.id <= v.id),
           v.bundle, v.entry, v.settings, 'admin', v.id <= o.current_version, v.created_ms
    FROM v1_versions v
    JOIN v1_functions o ON o.name = v.function
    JOIN functions f ON f.namespace = 'default' AND f.name = v.function;
UPDATE functions SET next_number =
    (SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE function_id = functions.id);
INSERT INTO aliases (function_id, name, version_id, updated_ms)
    SELECT f.id, 'latest', o.current_version, o.updated_ms
    FROM v1_functions o JOIN functions f ON f.namespace = 'default' AND f.name = o.name;
INSERT INTO logs (id, function_id, version, invocation, stream, line, ts_ms)
    SELECT l.id, f.id, l.version, l.invocation, l.stream, l.line, l.ts_ms
    FROM v1_logs l JOIN functions f ON f.namespace = 'default' AND f.name = l.function;
DROP TABLE v1_logs;
DROP TABLE v1_versions;
DROP TABLE v1_functions;
";

/// Brings an SQLite file to [`CURRENT`], in one transaction.
pub(crate) fn migrate_sqlite(tx: &mut Tx<'_>) -> Result<(), RegistryError> {
    let found: i64 = tx.one("PRAGMA user_version", params![], |r| r.get(0))?;
    if found == CURRENT {
        return Ok(());
    }
    if found > CURRENT {
        return Err(RegistryError::TooNew {
            found,
            known: CURRENT,
        });
    }
    let first_release = found == 0 && {
        tx.one(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'functions'",
            params![],
            |r| r.get(0),
        )?
    };
    if found < 2 {
        if first_release {
            tx.batch(FROM_V1)?;
        }
        tx.batch(TABLES)?;
        insert_default_namespace(tx)?;
        if first_release {
            tx.batch(COPY_V1)?;
        }
    }
    for (shape, sql) in STEPS {
        if *shape > found.max(2) {
            tx.batch(sql)?;
        }
    }
    tx.batch(&format!("PRAGMA user_version = {CURRENT}"))?;
    if first_release {
        tracing::info!("upgraded the registry to schema {CURRENT}: existing functions are in namespace `default`");
    } else if found > 0 {
        tracing::info!("upgraded the registry from schema {found} to {CURRENT}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Kind, Store};
    use rusqlite::Connection;

    /// A file of the second shape, as the release that wrote it left it:
    /// its tables, the `default` namespace, a tenant and a function.
    fn second_shape() -> Store {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TABLES).unwrap();
        conn.execute_batch(
            "INSERT INTO namespaces VALUES ('default', 1, 10000, 10000, 1048576, 67108864);
             INSERT INTO namespaces VALUES ('team-a', 1, 100, 32, 8192, 67108864);
             INSERT INTO functions (namespace, name, created_ms, updated_ms) VALUES ('team-a', 'api', 1, 1);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        Store::Sqlite(std::sync::Mutex::new(conn))
    }

    fn count(store: &Store, sql: &str) -> i64 {
        store
            .run(Kind::Read, |tx| tx.one(sql, params![], |r| r.get(0)))
            .unwrap()
    }

    #[test]
    fn the_second_shape_gains_calls_schedules_queue_bounds_and_meta() {
        let store = second_shape();
        store.run(Kind::Write, migrate_sqlite).unwrap();
        assert_eq!(count(&store, "PRAGMA user_version"), CURRENT);
        let bound = |ns: &str| -> i64 {
            count(
                &store,
                &format!("SELECT max_queued FROM namespaces WHERE name = '{ns}'"),
            )
        };
        assert_eq!((bound("default"), bound("team-a")), (100_000, 10_000));
        for table in [
            "calls",
            "call_attempts",
            "schedules",
            "meta",
            "bundles",
            "workers",
        ] {
            let n = count(&store, &format!("SELECT COUNT(*) FROM {table}"));
            assert_eq!(n, 0, "{table} exists and is empty");
        }
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM functions"),
            1,
            "what was there stays"
        );
        // Opening it again changes nothing.
        store.run(Kind::Write, migrate_sqlite).unwrap();
    }

    #[test]
    fn postgres_gets_the_same_tables_with_its_own_types() {
        let ddl = postgres_sql(TABLES);
        assert!(ddl.contains("id BIGSERIAL PRIMARY KEY"));
        assert!(ddl.contains("secrets BYTEA"));
        assert!(!ddl.contains("INTEGER"), "every integer is 64-bit");
        assert_eq!(
            ddl.matches("CREATE TABLE").count(),
            TABLES.matches("CREATE TABLE").count()
        );
    }
}
