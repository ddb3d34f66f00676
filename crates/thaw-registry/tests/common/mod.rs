//! Helpers shared by the registry's tests: a registry in a scratch
//! directory, on either engine, and real deploys into it.
//!
//! [`on_both_engines!`] makes each test it holds twice: once on an SQLite
//! file, once on a database of its own in a real PostgreSQL server
//! ([`thaw_testpg::shared`]), so the same behaviour is checked on both.

#![allow(dead_code)]

use std::path::Path;
use thaw_registry::{Database, FunctionId, Registry, Version};

pub const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The database one test runs on: opening it again (a restart) finds the
/// same records.
pub struct Db(pub Database);

impl Db {
    pub fn sqlite() -> Db {
        Db(Database::Sqlite)
    }

    pub fn postgres() -> Db {
        Db(Database::Postgres(thaw_testpg::shared().new_database_url()))
    }

    pub fn open(&self, dir: &Path) -> Registry {
        let reg = self.open_with_key(dir, KEY).unwrap();
        let engine = match self.0 {
            Database::Sqlite => thaw_registry::Engine::Sqlite,
            Database::Postgres(_) => thaw_registry::Engine::Postgres,
        };
        assert_eq!(reg.engine(), engine);
        reg
    }

    pub fn open_with_key(
        &self,
        dir: &Path,
        key: &str,
    ) -> Result<Registry, thaw_registry::RegistryError> {
        Registry::open_with(dir, &self.0, Some(key))
    }
}

/// For each test function `name(db: Db)`, the tests `on_sqlite::name` and
/// `on_postgres::name`, each given a fresh [`Db`] of its engine.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test]
            fn $name() {
                super::$name($crate::common::Db::sqlite())
            })*
        }
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name($crate::common::Db::postgres())
            })*
        }
    };
}

/// A registry on an SQLite file (tests of the one engine).
pub fn open(dir: &Path) -> Registry {
    Registry::open(dir, Some(KEY)).unwrap()
}

/// Deploys a one-file function answering `text` as `f`'s new `latest`.
pub fn deploy(reg: &Registry, dir: &Path, f: &FunctionId, text: &str) -> Version {
    deploy_with(reg, dir, f, text, None)
}

/// As [`deploy`], with a `thaw.toml`.
pub fn deploy_with(
    reg: &Registry,
    dir: &Path,
    f: &FunctionId,
    text: &str,
    toml: Option<&str>,
) -> Version {
    let src = dir.join(format!("src-{}-{}-{text}", f.namespace, f.name));
    std::fs::create_dir_all(&src).unwrap();
    if let Some(toml) = toml {
        std::fs::write(src.join("thaw.toml"), toml).unwrap();
    }
    std::fs::write(
        src.join("index.mjs"),
        format!("export const handler = async () => ({{ statusCode: 200, body: {text:?} }});\n"),
    )
    .unwrap();
    let limits = thaw_bundle::Limits::default();
    let packed = thaw_bundle::pack_dir(&src, &limits).unwrap();
    let tree = reg.store_code(&packed.archive, &limits, None).unwrap();
    let v = reg
        .add_version(f, &tree, packed.archive.len() as u64, "admin")
        .unwrap();
    reg.activate(&v, true).unwrap();
    v
}
