//! Following what other workers change, when several `thaw up` share one
//! PostgreSQL registry.
//!
//! A worker's route table and quotas are copies of what the registry
//! holds. Its own changes update them as they are made (`ops.rs`); changes
//! made through another worker arrive as announcements from the registry
//! ([`Registry::watch`], PostgreSQL's LISTEN/NOTIFY), and this module reads
//! the changed function or namespace again: its routes, the code of its
//! versions (fetched from the database and built here the first time this
//! host needs it), its runtimes, its quota. One worker alone (SQLite) has
//! nothing to follow.
//!
//! [`Registry::watch`]: thaw_registry::Registry::watch

use super::{quota_of, Platform};
use crate::routes::FunctionRoutes;
use std::collections::BTreeSet;
use std::sync::Arc;
use thaw_registry::{Change, FunctionId, RegistryError, Version};

impl Platform {
    /// Starts following changes announced by the registry, until the
    /// platform goes.
    pub(crate) fn spawn_change_follower(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
        let alive = Arc::downgrade(self);
        let watching = self.registry.watch(move |change| {
            if alive.strong_count() == 0 {
                return false;
            }
            match change {
                Some(c) => tx.send(c).is_ok(),
                None => !tx.is_closed(),
            }
        });
        if watching.is_none() {
            return;
        }
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // A burst of changes (a deploy announces, then a rollback)
                // is read once.
                let mut changes = vec![first];
                while let Ok(more) = rx.try_recv() {
                    changes.push(more);
                }
                let Some(p) = platform.upgrade() else { return };
                if changes.contains(&Change::Everything) {
                    p.follow_everything().await;
                    continue;
                }
                let functions: BTreeSet<FunctionId> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::Function(f) => Some(f.clone()),
                        _ => None,
                    })
                    .collect();
                let namespaces: BTreeSet<String> = changes
                    .into_iter()
                    .filter_map(|c| match c {
                        Change::Namespace(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                for n in namespaces {
                    p.follow_namespace(&n).await;
                }
                for f in functions {
                    p.follow_function(&f).await;
                }
            }
        });
    }

    /// Reads `name`'s limits again, or forgets its quota when it went.
    async fn follow_namespace(&self, name: &str) {
        let ns = name.to_string();
        match self.blocking(move |r| r.namespace(&ns)).await {
            Ok(ns) => self.scheduler.set_quota(&ns.name, quota_of(&ns.limits)),
            Err(e) if e.code == "no_namespace" => self.scheduler.remove_quota(name),
            Err(e) => tracing::warn!("could not read namespace `{name}` again: {}", e.message),
        }
    }

    /// Reads `f`'s routes again: its code is fetched if this host has not
    /// got it, and versions no alias routes to any more drain.
    pub(crate) async fn follow_function(&self, f: &FunctionId) {
        let function = f.clone();
        let read = self.blocking(move |r| r.function_routes(&function)).await;
        let (aliases, versions) = match read {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("could not read {f} again: {}", e.message);
                return;
            }
        };
        if aliases.is_empty() {
            if self.routes.get(f).is_some() {
                self.routes.remove(f);
                self.metrics.forget(f);
                self.scheduler.retire(&f.namespace, &f.name, &[]);
            }
            return;
        }
        if let Err(e) = self.fetch_code(versions.clone()).await {
            tracing::error!("{f} cannot be served here: its code could not be fetched: {e}");
            return;
        }
        let routes = FunctionRoutes::new(aliases, versions);
        for route in routes.versions.values() {
            if let Err(e) = self.ensure_runtimes(&route.spec).await {
                tracing::warn!(
                    "{f} cannot be served here until this is fixed: {}",
                    e.message
                );
            }
        }
        let keep = routes.routed_ids();
        self.routes.set(f.clone(), routes);
        self.scheduler.retire(&f.namespace, &f.name, &keep);
    }

    /// Reads every namespace and function again (after the change feed was
    /// lost for a while, announcements may have been missed).
    async fn follow_everything(&self) {
        match self.blocking(|r| r.namespaces()).await {
            Ok(all) => {
                for ns in all {
                    self.scheduler.set_quota(&ns.name, quota_of(&ns.limits));
                }
            }
            Err(e) => tracing::warn!("could not read the namespaces again: {}", e.message),
        }
        let listed = self
            .blocking(|r| {
                Ok(r.routable()?
                    .into_iter()
                    .map(|r| r.function)
                    .collect::<BTreeSet<_>>())
            })
            .await;
        let Ok(routable) = listed else {
            tracing::warn!("could not list the functions again");
            return;
        };
        let known: BTreeSet<FunctionId> =
            self.routes.list(None).into_iter().map(|(f, _)| f).collect();
        for f in routable.union(&known) {
            self.follow_function(f).await;
        }
    }

    /// Makes sure the code trees of `versions` are on this host.
    async fn fetch_code(&self, versions: Vec<Version>) -> Result<(), RegistryError> {
        let (limits, esbuild, build) =
            (self.config.limits, self.esbuild.clone(), self.build.clone());
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || {
            fetch_code_blocking(&registry, &versions, &limits, esbuild.as_deref(), &*build)
        })
        .await
        .map_err(|e| RegistryError::Corrupt(format!("fetching code stopped: {e}")))?
    }
}

/// Makes sure the code trees of `versions` are on this host (blocking).
pub(super) fn fetch_code_blocking(
    registry: &thaw_registry::Registry,
    versions: &[Version],
    limits: &thaw_bundle::Limits,
    esbuild: Option<&std::path::Path>,
    build: &dyn thaw_bundle::BuildSandbox,
) -> Result<(), RegistryError> {
    let bundles: BTreeSet<&str> = versions.iter().map(|v| v.bundle.as_str()).collect();
    for bundle in bundles {
        registry.fetch_code_with(bundle, limits, esbuild, build)?;
    }
    Ok(())
}
