//! The registry on both engines (an SQLite file in a scratch directory,
//! a database in a real PostgreSQL server), and the upgrades of SQLite
//! files written by older releases.

mod common;

use common::{open, Db, KEY};
use std::path::Path;
use thaw_registry::{
    ConfigChange, FunctionId, LogQuery, LogRecord, NamespaceLimits, Registry, RegistryError, Role,
    Split,
};

/// A code tree whose handler answers `text`.
fn tree(reg: &Registry, src: &Path, text: &str) -> (thaw_registry::CodeTree, u64) {
    std::fs::create_dir_all(src).unwrap();
    std::fs::write(
        src.join("index.mjs"),
        format!("export const handler = async () => ({{ statusCode: 200, body: {text:?} }});\n"),
    )
    .unwrap();
    let packed = thaw_bundle::pack_dir(src, &thaw_bundle::Limits::default()).unwrap();
    let t = reg
        .store_code(&packed.archive, &thaw_bundle::Limits::default(), None)
        .unwrap();
    (t, packed.archive.len() as u64)
}

fn deploy(reg: &Registry, dir: &Path, f: &FunctionId, text: &str) -> thaw_registry::Version {
    let (t, bytes) = tree(reg, &dir.join(format!("src-{text}")), text);
    let v = reg.add_version(f, &t, bytes, "admin").unwrap();
    reg.activate(&v, true).unwrap();
    v
}

fn the_same_name_in_two_namespaces_is_two_functions(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    reg.create_namespace("team-a", NamespaceLimits::tenant())
        .unwrap();
    reg.create_namespace("team-b", NamespaceLimits::tenant())
        .unwrap();
    let a = FunctionId::new("team-a", "api");
    let b = FunctionId::new("team-b", "api");
    let va = deploy(&reg, dir.path(), &a, "from a");
    let vb = deploy(&reg, dir.path(), &b, "from b");
    assert_ne!(va.id, vb.id);
    assert_eq!((va.number, vb.number), (1, 1));
    let (_, versions) = reg.function_routes(&a).unwrap();
    assert_eq!(versions[0].bundle, va.bundle);
    reg.remove(&a).unwrap();
    assert!(matches!(reg.versions(&a), Err(RegistryError::NotFound(_))));
    assert_eq!(reg.versions(&b).unwrap().len(), 1);
    assert!(matches!(
        reg.remove_namespace("team-b"),
        Err(RegistryError::Conflict(_))
    ));
    reg.remove_namespace("team-a").unwrap();
    assert!(matches!(
        reg.namespace("team-a"),
        Err(RegistryError::NoNamespace(_))
    ));
}

fn versions_are_numbered_aliases_move_and_rollback_goes_back(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "api");
    for text in ["one", "two", "three"] {
        deploy(&reg, dir.path(), &f, text);
    }
    let numbers: Vec<i64> = reg.versions(&f).unwrap().iter().map(|v| v.number).collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    let latest = |reg: &Registry| {
        reg.aliases(&f)
            .unwrap()
            .into_iter()
            .find(|a| a.name == "latest")
            .unwrap()
    };
    assert_eq!(latest(&reg).version, 3);

    let prod = reg
        .set_alias(
            &f,
            "prod",
            2,
            Some(Split {
                version: 3,
                percent: 10,
            }),
        )
        .unwrap();
    assert_eq!(
        prod.split,
        Some(Split {
            version: 3,
            percent: 10
        })
    );
    let rolled = reg.rollback(&f, "prod", None).unwrap();
    assert_eq!((rolled.version, rolled.split), (1, None));
    assert_eq!(reg.rollback(&f, "latest", Some(2)).unwrap().version, 2);
    assert!(
        reg.rollback(&f, "prod", None).is_err(),
        "nothing older than 1"
    );

    // A deploy without promotion leaves `latest` where it is.
    let (t, n) = tree(&reg, &dir.path().join("src-four"), "four");
    let v4 = reg.add_version(&f, &t, n, "ci").unwrap();
    reg.activate(&v4, false).unwrap();
    assert_eq!((v4.number, latest(&reg).version), (4, 2));
    assert_eq!(reg.version(&f, 4).unwrap().deployed_by, "ci");

    for bad in [
        reg.set_alias(&f, "prod", 9, None),
        reg.set_alias(
            &f,
            "prod",
            2,
            Some(Split {
                version: 2,
                percent: 5,
            }),
        ),
        reg.set_alias(
            &f,
            "prod",
            2,
            Some(Split {
                version: 3,
                percent: 100,
            }),
        ),
        reg.set_alias(&f, "7up", 2, None),
    ] {
        assert!(bad.is_err());
    }
    assert!(reg.remove_alias(&f, "latest").is_err());
    reg.remove_alias(&f, "prod").unwrap();
}

fn old_versions_are_pruned_but_not_those_an_alias_points_at(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "api");
    let (one, n1) = tree(&reg, &dir.path().join("src-one"), "first code");
    let first = reg.add_version(&f, &one, n1, "admin").unwrap();
    reg.activate(&first, true).unwrap();
    reg.set_alias(&f, "pinned", 1, None).unwrap();
    let (t, n) = tree(&reg, &dir.path().join("src"), "same code");
    for _ in 0..thaw_registry::VERSIONS_KEPT + 5 {
        let v = reg.add_version(&f, &t, n, "admin").unwrap();
        reg.activate(&v, true).unwrap();
    }
    let kept: Vec<i64> = reg.versions(&f).unwrap().iter().map(|v| v.number).collect();
    assert_eq!(kept.len() as i64, thaw_registry::VERSIONS_KEPT + 1);
    assert!(kept.contains(&1), "pinned by an alias");
    assert!(!kept.contains(&2));
    assert_eq!(kept[0], thaw_registry::VERSIONS_KEPT + 6);

    // Unpinned, version 1 goes at the next activation, and its code (used
    // by no other version) with it.
    let (other, n) = tree(&reg, &dir.path().join("src-other"), "other code");
    let v = reg.add_version(&f, &other, n, "admin").unwrap();
    reg.remove_alias(&f, "pinned").unwrap();
    assert_eq!(reg.activate(&v, true).unwrap(), 2, "versions 1 and 7");
    assert!(first.code_dir.is_dir());
    let garbage = reg.collect_garbage().unwrap();
    assert!(garbage.removed > 0);
    assert!(
        garbage.code_trees.contains(&first.code_dir),
        "{garbage:?} names the tree it removed"
    );
    assert!(
        !first.code_dir.exists(),
        "the code only version 1 used is freed"
    );
    assert!(v.code_dir.is_dir() && t.dir.is_dir());
}

fn a_failed_first_deploy_leaves_no_function(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "api");
    let (t, n) = tree(&reg, &dir.path().join("src"), "x");
    let v = reg.add_version(&f, &t, n, "admin").unwrap();
    reg.discard_version(&v).unwrap();
    assert!(reg.routable().unwrap().is_empty());
    assert!(matches!(reg.versions(&f), Err(RegistryError::NotFound(_))));
}

fn namespace_function_limit_holds(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let limits = NamespaceLimits {
        max_functions: 1,
        ..NamespaceLimits::tenant()
    };
    reg.create_namespace("small", limits).unwrap();
    deploy(&reg, dir.path(), &FunctionId::new("small", "one"), "1");
    let (t, n) = tree(&reg, &dir.path().join("src2"), "2");
    let err = reg
        .add_version(&FunctionId::new("small", "two"), &t, n, "admin")
        .unwrap_err();
    assert!(matches!(err, RegistryError::LimitReached(_)), "{err}");
    assert!(err.to_string().contains("max_functions"));
    // Another version of the function it has is fine.
    reg.add_version(&FunctionId::new("small", "one"), &t, n, "admin")
        .unwrap();
    let err = reg
        .add_version(&FunctionId::new("nowhere", "one"), &t, n, "admin")
        .unwrap_err();
    assert!(matches!(err, RegistryError::NoNamespace(_)));
}

fn keys_are_stored_hashed_checked_revoked_and_expire(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    reg.create_namespace("team-a", NamespaceLimits::tenant())
        .unwrap();
    let (info, text) = reg.create_key("team-a", "ci", Role::Deploy, None).unwrap();
    assert!(text.starts_with("thawk_"));
    assert_eq!(reg.authenticate(&text).unwrap().unwrap().id, info.id);
    let mut wrong = text.clone();
    wrong.pop();
    wrong.push('x');
    assert!(reg.authenticate(&wrong).unwrap().is_none());
    assert!(reg.authenticate("thawk_nothing").unwrap().is_none());
    assert!(
        reg.create_key("team-a", "ci", Role::Read, None).is_err(),
        "same name twice"
    );
    assert!(reg.create_key("nowhere", "ci", Role::Read, None).is_err());

    let (_, expired) = reg
        .create_key("team-a", "old", Role::Read, Some(1))
        .unwrap();
    assert!(reg.authenticate(&expired).unwrap().is_none());
    // An expired key's name can be given to a new key.
    let (_, renewed) = reg.create_key("team-a", "old", Role::Read, None).unwrap();
    assert!(reg.authenticate(&renewed).unwrap().is_some());

    reg.revoke_key(&info.id).unwrap();
    assert!(reg.authenticate(&text).unwrap().is_none());
    // The secret itself is in no file of the data directory.
    let secret = text.rsplit('_').next().unwrap();
    drop(reg);
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds a key's secret",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn secrets_and_env_make_versions_and_are_sealed_on_disk(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "api");
    deploy(&reg, dir.path(), &f, "code");
    let value = "s3cr3t-value-4f9a";
    let v2 = reg
        .add_config_version(
            &f,
            &ConfigChange::SetSecret("DB_PASSWORD".into(), value.into()),
            "admin",
        )
        .unwrap();
    reg.activate(&v2, true).unwrap();
    let v3 = reg
        .add_config_version(
            &f,
            &ConfigChange::SetEnv("MODE".into(), "fast".into()),
            "admin",
        )
        .unwrap();
    reg.activate(&v3, true).unwrap();
    assert_eq!((v2.number, v3.number, v3.cause.as_str()), (2, 3, "config"));
    let env = v3.environment();
    assert_eq!(env["DB_PASSWORD"], value);
    assert_eq!(env["MODE"], "fast");
    assert!(!format!("{v3:?}").contains(value));
    // A deploy of new code keeps the configuration `latest` had.
    let v4 = deploy(&reg, dir.path(), &f, "new code");
    assert_eq!(v4.environment()["DB_PASSWORD"], value);
    // Rolling back to version 1 brings back its configuration: none.
    reg.rollback(&f, "latest", Some(1)).unwrap();
    let v5 = reg
        .add_config_version(&f, &ConfigChange::SetEnv("A".into(), "1".into()), "admin")
        .unwrap();
    assert!(!v5.environment().contains_key("DB_PASSWORD"));

    assert!(reg
        .add_config_version(&f, &ConfigChange::UnsetSecret("NOPE".into()), "admin")
        .is_err());
    for bad in ["1X", "A-B", "", "THAW_TOKEN", "NODE_OPTIONS", "PATH"] {
        assert!(
            reg.add_config_version(&f, &ConfigChange::SetEnv(bad.into(), "v".into()), "admin")
                .is_err(),
            "{bad}"
        );
    }
    drop(reg);
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "{} holds the secret in clear",
            entry.display()
        );
    }
    // A registry started with another key is refused before it reads or
    // seals anything.
    let err = db
        .open_with_key(dir.path(), &"ab".repeat(32))
        .err()
        .unwrap();
    assert!(matches!(err, RegistryError::Secrets(_)), "{err}");
    assert!(err.to_string().contains("not the one"), "{err}");
    let reg = db.open(dir.path());
    assert_eq!(
        reg.version(&f, 2).unwrap().environment()["DB_PASSWORD"],
        value
    );
}

fn logs_stay_with_their_function(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    reg.create_namespace("team-b", NamespaceLimits::tenant())
        .unwrap();
    let a = FunctionId::new("default", "api");
    let b = FunctionId::new("team-b", "api");
    let va = deploy(&reg, dir.path(), &a, "a");
    let vb = deploy(&reg, dir.path(), &b, "b");
    let line = |v: i64, text: &str| LogRecord {
        seq: 0,
        version: Some(v),
        invocation: Some(1),
        stream: "stdout".into(),
        line: text.into(),
        ts_ms: 1,
    };
    reg.append_logs(&[
        line(va.id, "for a"),
        line(vb.id, "for b"),
        line(999_999, "lost"),
    ])
    .unwrap();
    let q = LogQuery {
        limit: 100,
        ..LogQuery::default()
    };
    let read = reg.logs(&a, &q).unwrap();
    assert_eq!(read[0].version, Some(va.number), "read back as its number");
    let of_a: Vec<String> = read.into_iter().map(|l| l.line).collect();
    assert_eq!(of_a, vec!["for a"]);
    let read_b = reg.logs(&b, &q).unwrap();
    assert_ne!(vb.id, vb.number, "the check below tells them apart");
    assert_eq!(read_b[0].version, Some(vb.number));
    let of_b: Vec<String> = read_b.into_iter().map(|l| l.line).collect();
    assert_eq!(of_b, vec!["for b"]);
}

/// The first release's database, as its own SQL wrote it.
const FIRST_RELEASE: &str = "
CREATE TABLE versions (id INTEGER PRIMARY KEY AUTOINCREMENT, function TEXT NOT NULL, bundle TEXT NOT NULL,
    entry TEXT NOT NULL, settings TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE INDEX versions_by_function ON versions(function, id);
CREATE TABLE functions (name TEXT PRIMARY KEY, current_version INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL);
CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, function TEXT NOT NULL, version INTEGER,
    invocation INTEGER, stream TEXT NOT NULL, line TEXT NOT NULL, ts_ms INTEGER NOT NULL);
CREATE INDEX logs_by_function ON logs(function, id);
INSERT INTO versions VALUES (4, 'echo', 'aaaa', 'index.mjs', '{\"memory\":256,\"timeout\":30,\"concurrency\":1,\"max_instances\":16,\"keep_alive\":300,\"env\":{}}', 10);
INSERT INTO versions VALUES (7, 'echo', 'bbbb', 'index.mjs', '{\"memory\":256,\"timeout\":30,\"concurrency\":1,\"max_instances\":16,\"keep_alive\":300,\"env\":{\"A\":\"1\"}}', 20);
INSERT INTO versions VALUES (8, 'other', 'cccc', 'main.js', '{\"memory\":128,\"timeout\":5,\"concurrency\":1,\"max_instances\":16,\"keep_alive\":300,\"env\":{}}', 30);
INSERT INTO functions VALUES ('echo', 7, 10, 20);
INSERT INTO functions VALUES ('other', 8, 30, 30);
INSERT INTO logs VALUES (1, 'echo', 7, 42, 'stdout', 'hello from 7', 25);
";

#[test]
fn a_first_release_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("thaw.db")).unwrap();
        conn.execute_batch(FIRST_RELEASE).unwrap();
    }
    let reg = open(dir.path());
    let routable = reg.routable().unwrap();
    let names: Vec<String> = routable.iter().map(|r| r.function.to_string()).collect();
    assert_eq!(names, vec!["default/echo", "default/other"]);
    let (id, aliases, versions) = (
        &routable[0].function,
        &routable[0].aliases,
        &routable[0].versions,
    );
    assert_eq!(aliases[0].name, "latest");
    assert_eq!(aliases[0].version, 2);
    assert_eq!(
        versions[0].id, 7,
        "version ids are kept: log lines name them"
    );
    assert_eq!(versions[0].settings.env["A"], "1");
    let numbers: Vec<i64> = reg.versions(id).unwrap().iter().map(|v| v.number).collect();
    assert_eq!(numbers, vec![2, 1]);
    let logs = reg
        .logs(
            id,
            &LogQuery {
                limit: 10,
                ..LogQuery::default()
            },
        )
        .unwrap();
    assert_eq!(logs[0].line, "hello from 7");
    // Opening again changes nothing; the next deploy is version 3.
    drop(reg);
    let reg = open(dir.path());
    let (t, n) = tree(&reg, &dir.path().join("src"), "new");
    assert_eq!(reg.add_version(id, &t, n, "admin").unwrap().number, 3);
}

#[test]
fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("thaw.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Registry::open(dir.path(), Some(KEY)).err().unwrap();
    assert!(
        matches!(err, RegistryError::TooNew { found: 99, .. }),
        "{err}"
    );
}

on_both_engines!(
    the_same_name_in_two_namespaces_is_two_functions,
    versions_are_numbered_aliases_move_and_rollback_goes_back,
    old_versions_are_pruned_but_not_those_an_alias_points_at,
    a_failed_first_deploy_leaves_no_function,
    namespace_function_limit_holds,
    keys_are_stored_hashed_checked_revoked_and_expire,
    secrets_and_env_make_versions_and_are_sealed_on_disk,
    logs_stay_with_their_function,
);

#[test]
fn a_postgres_database_from_a_newer_release_is_refused() {
    let pg = thaw_testpg::shared();
    let url = pg.new_database_url();
    let db = Db(thaw_registry::Database::Postgres(url.clone()));
    let dir = tempfile::tempdir().unwrap();
    drop(db.open(dir.path()));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute("UPDATE thaw_schema SET version = 99")
        .unwrap();
    let err = db.open_with_key(dir.path(), KEY).err().unwrap();
    assert!(
        matches!(err, RegistryError::TooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn a_postgres_registry_needs_a_secrets_key_and_names_a_bad_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = thaw_testpg::shared().new_database_url();
    let err = Registry::open_with(dir.path(), &thaw_registry::Database::Postgres(url), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("THAW_SECRETS_KEY"), "{err}");
    // Nothing listens on port 1.
    let err = Registry::open_with(
        dir.path(),
        &thaw_registry::Database::Postgres("postgres://thaw:hunter2@127.0.0.1:1/thaw".into()),
        Some(KEY),
    )
    .err()
    .unwrap();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(thaw_registry::Database::parse(Some("mysql://x")).is_err());
    assert_eq!(
        thaw_registry::Database::parse(None).unwrap(),
        thaw_registry::Database::Sqlite
    );
}
