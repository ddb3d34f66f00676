//! The in-memory route table: for every function, its aliases and the
//! versions they point at, ready to schedule.
//!
//! A function's entry is replaced whole (one map insert) after the
//! transaction that changed its aliases committed, so a request resolves
//! against the old entry or the new one, never a mix; a call in flight
//! keeps the version it resolved to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thaw_registry::{Alias, FunctionId, Version, LATEST};
use thaw_scheduler::FunctionSpec;

/// A version ready to serve.
pub struct Route {
    pub version: Version,
    pub spec: FunctionSpec,
}

impl Route {
    pub fn new(version: Version) -> Route {
        let s = &version.settings;
        let spec = FunctionSpec {
            namespace: version.function.namespace.clone(),
            name: version.function.name.clone(),
            version: version.id,
            code_dir: version.code_dir.clone(),
            entry: version.entry.clone(),
            env: version.environment(),
            timeout: Duration::from_secs(s.timeout_s as u64),
            memory_mb: s.memory_mb,
            concurrency: s.concurrency,
            max_body_bytes: u64::from(s.max_body_mb) * 1024 * 1024,
            keep_alive: Duration::from_secs(s.keep_alive_s as u64),
            max_instances: s.max_instances,
            min_instances: s.min_instances,
            driver: s.driver.clone(),
            runtime: s.runtime.clone(),
        };
        Route { version, spec }
    }
}

/// What a URL asks of a function: `name`, `name@prod` or `name@7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    Alias(String),
    Version(i64),
}

/// Splits `name@qualifier`; without one, `latest` is meant.
pub fn parse_target(segment: &str) -> (&str, Qualifier) {
    match segment.split_once('@') {
        Some((name, q)) => match q.parse::<i64>() {
            Ok(n) => (name, Qualifier::Version(n)),
            Err(_) => (name, Qualifier::Alias(q.to_string())),
        },
        None => (segment, Qualifier::Alias(LATEST.to_string())),
    }
}

/// One function's aliases and the versions they route to.
pub struct FunctionRoutes {
    pub aliases: BTreeMap<String, Alias>,
    /// By version number.
    pub versions: HashMap<i64, Arc<Route>>,
}

impl FunctionRoutes {
    pub fn new(aliases: Vec<Alias>, versions: Vec<Version>) -> FunctionRoutes {
        FunctionRoutes {
            aliases: aliases.into_iter().map(|a| (a.name.clone(), a)).collect(),
            versions: versions
                .into_iter()
                .map(|v| (v.number, Arc::new(Route::new(v))))
                .collect(),
        }
    }

    /// The version `latest` points at.
    pub fn latest(&self) -> Option<&Arc<Route>> {
        let alias = self.aliases.get(LATEST)?;
        self.versions.get(&alias.version)
    }

    /// The version an alias sends this call to: with a split, the second
    /// version gets `percent` of calls, by a uniform draw in 0..100 per call.
    pub fn pick(&self, alias: &str, draw: impl FnOnce() -> u32) -> Option<&Arc<Route>> {
        self.versions
            .get(&pick_number(self.aliases.get(alias)?, draw))
    }

    /// Ids of the versions some alias routes to: the others drain.
    pub fn routed_ids(&self) -> Vec<i64> {
        self.versions.values().map(|r| r.version.id).collect()
    }
}

fn pick_number(alias: &Alias, draw: impl FnOnce() -> u32) -> i64 {
    match alias.split {
        Some(split) if draw() < u32::from(split.percent) => split.version,
        _ => alias.version,
    }
}

#[derive(Default)]
pub struct RouteTable {
    functions: RwLock<HashMap<FunctionId, Arc<FunctionRoutes>>>,
}

impl RouteTable {
    pub fn get(&self, f: &FunctionId) -> Option<Arc<FunctionRoutes>> {
        self.functions.read().unwrap().get(f).cloned()
    }

    pub fn set(&self, f: FunctionId, routes: FunctionRoutes) {
        self.functions.write().unwrap().insert(f, Arc::new(routes));
    }

    pub fn remove(&self, f: &FunctionId) {
        self.functions.write().unwrap().remove(f);
    }

    /// Every function of `namespace` (all with `None`), sorted.
    pub fn list(&self, namespace: Option<&str>) -> Vec<(FunctionId, Arc<FunctionRoutes>)> {
        let mut all: Vec<_> = self
            .functions
            .read()
            .unwrap()
            .iter()
            .filter(|(f, _)| namespace.is_none_or(|ns| f.namespace == ns))
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn count(&self, namespace: &str) -> usize {
        self.functions
            .read()
            .unwrap()
            .keys()
            .filter(|f| f.namespace == namespace)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_registry::Split;

    #[test]
    fn targets_name_an_alias_or_a_version() {
        assert_eq!(
            parse_target("api"),
            ("api", Qualifier::Alias("latest".into()))
        );
        assert_eq!(
            parse_target("api@prod"),
            ("api", Qualifier::Alias("prod".into()))
        );
        assert_eq!(parse_target("api@7"), ("api", Qualifier::Version(7)));
    }

    #[test]
    fn a_split_sends_its_share_to_the_second_version() {
        let alias = Alias {
            name: "prod".into(),
            version: 2,
            split: Some(Split {
                version: 3,
                percent: 10,
            }),
            updated_ms: 0,
        };
        let picks: Vec<i64> = (0..100).map(|d| pick_number(&alias, || d)).collect();
        assert_eq!(picks.iter().filter(|n| **n == 3).count(), 10);
        assert_eq!(picks.iter().filter(|n| **n == 2).count(), 90);
        let plain = Alias {
            split: None,
            ..alias
        };
        assert_eq!(pick_number(&plain, || 0), 2);
    }
}
