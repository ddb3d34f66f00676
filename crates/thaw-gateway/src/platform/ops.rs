//! The operations of the control plane: each checks its caller, does one
//! thing to the registry, the route table or the scheduler, and answers
//! with a typed view of `thaw-api`.
//!
//! Changes to what serves (deploy, configuration, aliases, rollback,
//! remove) hold the deploy lock, commit to the registry first, and then
//! replace the function's route table entry in one insert: the next
//! request sees the change, calls in flight finish where they started,
//! and instances of versions no alias routes to any more are retired.

use super::{quota_of, Platform};
use crate::auth::{Caller, Need};
use crate::errors::{invoke_error, ApiError};
use crate::routes::{FunctionRoutes, Qualifier, Route};
use axum::http::StatusCode;
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_api as view;
use thaw_registry::{
    Alias, ConfigChange, FunctionId, KeyInfo, LogQuery, Namespace, NamespaceLimits, Registry,
    RegistryError, Role, Split, Version, LATEST,
};
use thaw_sandbox::{InvokeOutcome, LogLine, RequestBody};
use thaw_scheduler::{Invocation, InvokeError};

/// How a deploy goes live.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// Point `latest` at the new version (the default).
    pub promote: bool,
}

/// Largest value of one secret or variable.
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The public URL of a function through an alias (`latest`: none) or a
/// version number, under `base` (`http://host:port`).
pub fn function_url(base: &str, f: &FunctionId, qualifier: Option<&str>) -> String {
    let target = match qualifier {
        None | Some(LATEST) => f.name.clone(),
        Some(q) => format!("{}@{q}", f.name),
    };
    if f.namespace == thaw_registry::DEFAULT_NAMESPACE {
        format!("{base}/fn/{target}")
    } else {
        format!("{base}/ns/{}/fn/{target}", f.namespace)
    }
}

fn limits_view(l: &NamespaceLimits) -> view::Limits {
    view::Limits {
        max_functions: l.max_functions,
        max_instances: l.max_instances,
        max_memory_mb: l.max_memory_mb,
        max_deploy_bytes: l.max_deploy_bytes,
        max_queued: l.max_queued,
    }
}

fn patched(mut l: NamespaceLimits, p: &view::LimitsPatch) -> Result<NamespaceLimits, ApiError> {
    l.max_functions = p.max_functions.unwrap_or(l.max_functions);
    l.max_instances = p.max_instances.unwrap_or(l.max_instances);
    l.max_memory_mb = p.max_memory_mb.unwrap_or(l.max_memory_mb);
    l.max_deploy_bytes = p.max_deploy_bytes.unwrap_or(l.max_deploy_bytes);
    l.max_queued = p.max_queued.unwrap_or(l.max_queued);
    if l.max_functions == 0
        || l.max_instances == 0
        || l.max_memory_mb < 64
        || l.max_deploy_bytes < 1024
        || l.max_queued == 0
    {
        return Err(ApiError::bad_request(
            "bad_limits",
            "limits must allow something: max_functions and max_instances at least 1, max_memory_mb at least 64, max_deploy_bytes at least 1024, max_queued at least 1",
        ));
    }
    Ok(l)
}

fn key_view(k: &KeyInfo) -> view::KeyView {
    view::KeyView {
        id: k.id.clone(),
        name: k.name.clone(),
        namespace: k.namespace.clone(),
        role: k.role.as_str().to_string(),
        created_ms: k.created_ms,
        expires_ms: k.expires_ms,
        revoked_ms: k.revoked_ms,
    }
}

fn alias_view(base: &str, f: &FunctionId, a: &Alias) -> view::AliasView {
    view::AliasView {
        name: a.name.clone(),
        version: a.version,
        split: a.split.map(|s| view::SplitView {
            version: s.version,
            percent: s.percent,
        }),
        url: function_url(base, f, Some(&a.name)),
        updated_ms: a.updated_ms,
    }
}

pub fn log_view(l: &LogLine) -> view::LogLineView {
    view::LogLineView {
        stream: l.stream.as_str().to_string(),
        line: l.line.clone(),
        ts_ms: l.ts_ms as i64,
        seq: None,
        version: None,
        invocation: l.invocation,
    }
}

impl Platform {
    /// Runs a registry call off the async threads.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || f(&registry))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }

    pub(crate) fn started_line(&self, addr: SocketAddr) -> String {
        format!(
            "thaw is up on http://{addr}  (data: {}, driver: {}{}, runtime: {}, functions: {})",
            self.config.data_dir.display(),
            self.driver_summary,
            if self.jailed { ", jailed" } else { "" },
            self.default_line,
            self.routes.list(None).len()
        )
    }

    pub(crate) fn can_build_typescript(&self) -> bool {
        self.esbuild.is_some()
    }

    /// Largest request body a function route or `invoke` accepts.
    pub fn max_request_bytes(&self) -> usize {
        self.config.max_request_bytes
    }

    /// The caller a bearer token names: the admin token, or a live key.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing, wrong, revoked or expired API key: send `Authorization: Bearer <key>`; \
                 the CLI reads THAW_TOKEN or the `token` file in the data directory",
            )
        };
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        if thaw_registry::same_secret(token.as_bytes(), self.token.as_bytes()) {
            return Ok(Caller::Admin);
        }
        let text = token.to_string();
        match self.blocking(move |r| r.authenticate(&text)).await? {
            Some(key) => Ok(Caller::Key(key)),
            None => Err(unauthorized()),
        }
    }

    pub fn whoami(&self, caller: &Caller) -> view::Whoami {
        view::Whoami {
            role: caller.role().to_string(),
            namespace: match caller {
                Caller::Admin => None,
                Caller::Key(k) => Some(k.namespace.clone()),
            },
            name: caller.name(),
        }
    }

    // ---- namespaces ----

    fn namespace_view(&self, ns: &Namespace) -> view::NamespaceView {
        let (instances, memory_mb) = self.scheduler.usage(&ns.name);
        view::NamespaceView {
            name: ns.name.clone(),
            created_ms: ns.created_ms,
            limits: limits_view(&ns.limits),
            functions: self.routes.count(&ns.name),
            instances,
            memory_mb,
        }
    }

    pub async fn create_namespace(
        &self,
        caller: &Caller,
        req: view::CreateNamespace,
    ) -> Result<view::NamespaceView, ApiError> {
        caller.allow(&req.name, Need::Admin)?;
        let limits = patched(NamespaceLimits::tenant(), &req.limits)?;
        let ns = self
            .blocking(move |r| r.create_namespace(&req.name, limits))
            .await?;
        self.scheduler.set_quota(&ns.name, quota_of(&ns.limits));
        Ok(self.namespace_view(&ns))
    }

    pub async fn namespaces(&self, caller: &Caller) -> Result<view::NamespaceList, ApiError> {
        caller.allow("", Need::Admin)?;
        let all = self.blocking(|r| r.namespaces()).await?;
        Ok(view::NamespaceList {
            namespaces: all.iter().map(|ns| self.namespace_view(ns)).collect(),
        })
    }

    pub async fn namespace(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<view::NamespaceView, ApiError> {
        caller.allow(name, Need::Read)?;
        let name = name.to_string();
        let ns = self.blocking(move |r| r.namespace(&name)).await?;
        Ok(self.namespace_view(&ns))
    }

    pub async fn set_limits(
        &self,
        caller: &Caller,
        name: &str,
        patch: view::LimitsPatch,
    ) -> Result<view::NamespaceView, ApiError> {
        caller.allow(name, Need::Admin)?;
        let limits = patched(self.existing_namespace(name).await?.limits, &patch)?;
        let n = name.to_string();
        let ns = self
            .blocking(move |r| r.set_namespace_limits(&n, limits))
            .await?;
        self.scheduler.set_quota(&ns.name, quota_of(&ns.limits));
        Ok(self.namespace_view(&ns))
    }

    /// The namespace, or `no_namespace` where it does not exist.
    async fn existing_namespace(&self, namespace: &str) -> Result<Namespace, ApiError> {
        let ns = namespace.to_string();
        self.blocking(move |r| r.namespace(&ns)).await
    }

    pub async fn remove_namespace(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<view::Removed, ApiError> {
        caller.allow(name, Need::Admin)?;
        let _changing = self.deploy_lock.lock().await;
        let n = name.to_string();
        self.blocking(move |r| r.remove_namespace(&n)).await?;
        self.scheduler.remove_quota(name);
        Ok(view::Removed {
            removed: name.to_string(),
        })
    }

    // ---- keys ----

    pub async fn create_key(
        &self,
        caller: &Caller,
        req: view::CreateKey,
    ) -> Result<view::CreatedKey, ApiError> {
        caller.allow(&req.namespace, Need::Admin)?;
        let role = Role::parse(&req.role).ok_or_else(|| {
            ApiError::bad_request(
                "bad_role",
                format!(
                    "`{}` is not a role: deploy, invoke or read",
                    req.role.escape_debug()
                ),
            )
        })?;
        let expires_ms = req
            .expires_in_s
            .map(|s| {
                i64::try_from(s)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .and_then(|ms| thaw_registry::now_ms().checked_add(ms))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid",
                            format!("expires_in_s = {s} is too far in the future"),
                        )
                    })
            })
            .transpose()?;
        let (info, token) = self
            .blocking(move |r| r.create_key(&req.namespace, &req.name, role, expires_ms))
            .await?;
        Ok(view::CreatedKey {
            key: key_view(&info),
            token,
        })
    }

    pub async fn keys(
        &self,
        caller: &Caller,
        namespace: Option<String>,
    ) -> Result<view::KeyList, ApiError> {
        caller.allow("", Need::Admin)?;
        if let Some(ns) = &namespace {
            self.existing_namespace(ns).await?;
        }
        let keys = self.blocking(move |r| r.keys(namespace.as_deref())).await?;
        Ok(view::KeyList {
            keys: keys.iter().map(key_view).collect(),
        })
    }

    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<view::KeyView, ApiError> {
        caller.allow("", Need::Admin)?;
        let id = id.to_string();
        let info = self.blocking(move |r| r.revoke_key(&id)).await?;
        Ok(key_view(&info))
    }

    // ---- functions ----

    fn function_view(
        &self,
        base: &str,
        f: &FunctionId,
        routes: &FunctionRoutes,
    ) -> Option<view::FunctionView> {
        let latest = routes.latest()?;
        let v = &latest.version;
        let s = self.scheduler.stats(&f.namespace, &f.name);
        Some(view::FunctionView {
            namespace: f.namespace.clone(),
            name: f.name.clone(),
            url: function_url(base, f, None),
            version: v.number,
            bundle: v.bundle.clone(),
            entry: v.entry.clone(),
            settings: serde_json::to_value(&v.settings).unwrap_or_default(),
            deployed_ms: v.created_ms,
            deployed_by: v.deployed_by.clone(),
            aliases: routes
                .aliases
                .values()
                .map(|a| alias_view(base, f, a))
                .collect(),
            env_names: v.env.keys().cloned().collect(),
            secret_names: v.secrets.names().into_iter().map(|(k, _)| k).collect(),
            instances: view::Instances {
                busy: s.busy,
                idle: s.idle,
                paused: s.paused,
                starting: s.starting,
                waiting: s.waiting,
            },
        })
    }

    fn routes_of(&self, f: &FunctionId) -> Result<Arc<FunctionRoutes>, ApiError> {
        self.routes
            .get(f)
            .ok_or_else(|| ApiError::not_found(&f.name))
    }

    pub async fn list_functions(
        &self,
        caller: &Caller,
        namespace: &str,
        base: &str,
    ) -> Result<view::FunctionList, ApiError> {
        caller.allow(namespace, Need::Read)?;
        self.existing_namespace(namespace).await?;
        Ok(view::FunctionList {
            functions: self
                .routes
                .list(Some(namespace))
                .iter()
                .filter_map(|(f, r)| self.function_view(base, f, r))
                .collect(),
        })
    }

    pub fn function(
        &self,
        caller: &Caller,
        f: &FunctionId,
        base: &str,
    ) -> Result<view::FunctionView, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let routes = self.routes_of(f)?;
        self.function_view(base, f, &routes)
            .ok_or_else(|| ApiError::not_found(&f.name))
    }

    /// The largest archive `caller` may deploy into `namespace`, checked
    /// before the body is read.
    pub async fn deploy_limit(&self, caller: &Caller, namespace: &str) -> Result<usize, ApiError> {
        caller.allow(namespace, Need::Deploy)?;
        let ns = namespace.to_string();
        let limits = self.blocking(move |r| r.namespace(&ns)).await?.limits;
        Ok(limits
            .max_deploy_bytes
            .min(self.config.limits.max_archive_bytes) as usize)
    }

    /// Stores the archive as a new version of `f` and lets it serve once
    /// its code loaded in a runtime. Until then, and if any step fails,
    /// what served before keeps serving.
    pub async fn deploy(
        &self,
        caller: &Caller,
        f: &FunctionId,
        archive: bytes::Bytes,
        options: DeployOptions,
        base: &str,
    ) -> Result<view::FunctionView, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        thaw_bundle::validate_name(&f.name)
            .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        if archive.is_empty() {
            return Err(ApiError::bad_request(
                "empty_archive",
                "the request body is empty: send the folder as a tar.gz (thaw deploy does this)",
            ));
        }
        let _changing = self.deploy_lock.lock().await;
        let (limits, esbuild, build, function, by) = (
            self.config.limits,
            self.esbuild.clone(),
            self.build.clone(),
            f.clone(),
            caller.name(),
        );
        let stored = self
            .blocking(move |r| {
                let ns = r.namespace(&function.namespace)?;
                let tree = r.store_code_with(&archive, &limits, esbuild.as_deref(), &*build)?;
                if tree.settings.memory_mb > ns.limits.max_memory_mb {
                    return Err(RegistryError::LimitReached(format!(
                        "the function asks for memory = {} MiB, more than namespace `{}` may hold at once (max_memory_mb = {})",
                        tree.settings.memory_mb, ns.name, ns.limits.max_memory_mb
                    )));
                }
                let (min, memory) = (tree.settings.min_instances, tree.settings.memory_mb);
                if min > ns.limits.max_instances
                    || u64::from(min) * u64::from(memory) > u64::from(ns.limits.max_memory_mb)
                {
                    return Err(RegistryError::LimitReached(format!(
                        "the function asks for min_instances = {min} of {memory} MiB, more than namespace `{}` may hold at once (max_instances = {}, max_memory_mb = {})",
                        ns.name, ns.limits.max_instances, ns.limits.max_memory_mb
                    )));
                }
                Ok((tree, archive.len() as u64))
            })
            .await?;
        let host = self.scheduler.host_budget();
        if let Some(host) = host.filter(|h| h.never_fits(stored.0.settings.memory_mb)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "host_budget",
                format!(
                    "the function asks for memory = {} MiB, more than this host's budget for all instances together ({} MiB, thaw up --host-memory-mb)",
                    stored.0.settings.memory_mb, host.max_memory_mb
                ),
            ));
        }
        let function = f.clone();
        let version = self
            .blocking(move |r| r.add_version(&function, &stored.0, stored.1, &by))
            .await?;
        self.release(version, options.promote).await?;
        self.function(&Caller::Admin, f, base)
    }

    /// Sets or removes one variable or secret of `f`: a new version, with
    /// `latest`'s code, that serves once it loaded.
    pub async fn configure(
        &self,
        caller: &Caller,
        f: &FunctionId,
        change: ConfigChange,
        base: &str,
    ) -> Result<view::FunctionView, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        if let ConfigChange::SetEnv(_, v) | ConfigChange::SetSecret(_, v) = &change {
            if v.len() > MAX_VALUE_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("a value is at most {MAX_VALUE_BYTES} bytes"),
                ));
            }
        }
        let _changing = self.deploy_lock.lock().await;
        let (function, by) = (f.clone(), caller.name());
        let version = self
            .blocking(move |r| r.add_config_version(&function, &change, &by))
            .await?;
        self.release(version, true).await?;
        self.function(&Caller::Admin, f, base)
    }

    /// Loads `version` in one runtime, then activates it. Hold the deploy
    /// lock.
    async fn release(&self, version: Version, promote: bool) -> Result<(), ApiError> {
        let route = Route::new(version.clone());
        let loaded = match self.ensure_runtimes(&route.spec).await {
            Ok(()) => self
                .scheduler
                .start_idle(&route.spec)
                .await
                .map_err(|e| match e {
                    InvokeError::InitFailed { message, stack } => ApiError::bad_request(
                        "init_failed",
                        format!(
                            "the code failed to load, so the previous version keeps serving: {message}"
                        ),
                    )
                    .with(serde_json::json!({ "stack": stack })),
                    other => invoke_error(&other),
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = loaded {
            self.scheduler.retire_version(version.id);
            let discarded = version.clone();
            let _ = self.blocking(move |r| r.discard_version(&discarded)).await;
            return Err(e);
        }
        let activated = version.clone();
        let garbage = self
            .blocking(move |r| {
                // Under the deploy lock no code is being stored: the code
                // only pruned versions used can go now.
                if r.activate(&activated, promote)? > 0 {
                    return r.collect_garbage();
                }
                Ok(Default::default())
            })
            .await?;
        self.forget_code(&garbage);
        self.refresh(&version.function).await
    }

    /// Reads `f`'s aliases again and swaps its route table entry; the
    /// versions no alias routes to any more drain.
    async fn refresh(&self, f: &FunctionId) -> Result<(), ApiError> {
        let function = f.clone();
        let (aliases, versions) = self.blocking(move |r| r.function_routes(&function)).await?;
        let routes = FunctionRoutes::new(aliases, versions);
        let keep = routes.routed_ids();
        self.routes.set(f.clone(), routes);
        self.scheduler.retire(&f.namespace, &f.name, &keep);
        Ok(())
    }

    pub async fn remove_function(
        &self,
        caller: &Caller,
        f: &FunctionId,
    ) -> Result<view::Removed, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let _changing = self.deploy_lock.lock().await;
        let function = f.clone();
        // Under the deploy lock no code is being stored: the code only this
        // function used can go with it.
        let garbage = self
            .blocking(move |r| {
                r.remove(&function)?;
                Ok(r.collect_garbage().unwrap_or_else(|e| {
                    tracing::warn!("could not remove the code of a removed function: {e}");
                    Default::default()
                }))
            })
            .await?;
        self.routes.remove(f);
        self.metrics.forget(f);
        self.scheduler.retire(&f.namespace, &f.name, &[]);
        self.forget_code(&garbage);
        Ok(view::Removed {
            removed: f.name.clone(),
        })
    }

    pub async fn versions(
        &self,
        caller: &Caller,
        f: &FunctionId,
        base: &str,
    ) -> Result<view::VersionList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let function = f.clone();
        let (versions, aliases) = self
            .blocking(move |r| Ok((r.versions(&function)?, r.aliases(&function)?)))
            .await?;
        let pointing = |n: i64| -> Vec<String> {
            let mut out = Vec::new();
            for a in &aliases {
                if a.version == n {
                    out.push(match a.split {
                        Some(s) => format!("{}:{}%", a.name, 100 - u32::from(s.percent)),
                        None => a.name.clone(),
                    });
                }
                if let Some(s) = a.split.filter(|s| s.version == n) {
                    out.push(format!("{}:{}%", a.name, s.percent));
                }
            }
            out
        };
        Ok(view::VersionList {
            function: f.name.clone(),
            versions: versions
                .iter()
                .map(|v| view::VersionView {
                    number: v.number,
                    bundle: v.bundle.clone(),
                    archive_bytes: v.archive_bytes,
                    deployed_by: v.deployed_by.clone(),
                    cause: v.cause.clone(),
                    created_ms: v.created_ms,
                    url: function_url(base, f, Some(&v.number.to_string())),
                    aliases: pointing(v.number),
                })
                .collect(),
        })
    }

    pub fn aliases(
        &self,
        caller: &Caller,
        f: &FunctionId,
        base: &str,
    ) -> Result<view::AliasList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let routes = self.routes_of(f)?;
        Ok(view::AliasList {
            aliases: routes
                .aliases
                .values()
                .map(|a| alias_view(base, f, a))
                .collect(),
        })
    }

    pub async fn set_alias(
        &self,
        caller: &Caller,
        f: &FunctionId,
        alias: &str,
        req: view::SetAlias,
        base: &str,
    ) -> Result<view::AliasView, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let _changing = self.deploy_lock.lock().await;
        let (function, name) = (f.clone(), alias.to_string());
        let split = req.split.map(|s| Split {
            version: s.version,
            percent: s.percent,
        });
        let set = self
            .blocking(move |r| r.set_alias(&function, &name, req.version, split))
            .await?;
        self.refresh(f).await?;
        Ok(alias_view(base, f, &set))
    }

    pub async fn remove_alias(
        &self,
        caller: &Caller,
        f: &FunctionId,
        alias: &str,
    ) -> Result<view::Removed, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let _changing = self.deploy_lock.lock().await;
        let (function, name) = (f.clone(), alias.to_string());
        self.blocking(move |r| r.remove_alias(&function, &name))
            .await?;
        self.refresh(f).await?;
        Ok(view::Removed {
            removed: alias.to_string(),
        })
    }

    pub async fn rollback(
        &self,
        caller: &Caller,
        f: &FunctionId,
        req: view::Rollback,
        base: &str,
    ) -> Result<view::AliasView, ApiError> {
        caller.allow(&f.namespace, Need::Deploy)?;
        let _changing = self.deploy_lock.lock().await;
        let function = f.clone();
        let alias = req.alias.unwrap_or_else(|| LATEST.to_string());
        let set = self
            .blocking(move |r| r.rollback(&function, &alias, req.to))
            .await?;
        self.refresh(f).await?;
        Ok(alias_view(base, f, &set))
    }

    fn latest_version(&self, f: &FunctionId) -> Result<Arc<Route>, ApiError> {
        self.routes_of(f)?
            .latest()
            .cloned()
            .ok_or_else(|| ApiError::not_found(&f.name))
    }

    pub fn secrets(&self, caller: &Caller, f: &FunctionId) -> Result<view::SecretList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let latest = self.latest_version(f)?;
        Ok(view::SecretList {
            function: f.name.clone(),
            version: latest.version.number,
            secrets: latest
                .version
                .secrets
                .names()
                .into_iter()
                .map(|(name, updated_ms)| view::SecretView { name, updated_ms })
                .collect(),
        })
    }

    pub fn env(&self, caller: &Caller, f: &FunctionId) -> Result<view::EnvList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let latest = self.latest_version(f)?;
        Ok(view::EnvList {
            function: f.name.clone(),
            version: latest.version.number,
            env: latest.version.env.clone(),
        })
    }

    pub async fn logs(
        &self,
        caller: &Caller,
        f: &FunctionId,
        query: LogQuery,
    ) -> Result<view::LogList, ApiError> {
        caller.allow(&f.namespace, Need::Read)?;
        let after = query.after;
        let function = f.clone();
        let records = self.blocking(move |r| r.logs(&function, &query)).await?;
        let next = records.last().map(|r| r.seq).or(after).unwrap_or(0);
        Ok(view::LogList {
            logs: records
                .into_iter()
                .map(|r| view::LogLineView {
                    stream: r.stream,
                    line: r.line,
                    ts_ms: r.ts_ms,
                    seq: Some(r.seq),
                    version: r.version,
                    invocation: r.invocation,
                })
                .collect(),
            next,
        })
    }

    // ---- calls ----

    /// The version a call of `f` with `qualifier` goes to.
    pub async fn resolve(
        &self,
        f: &FunctionId,
        qualifier: &Qualifier,
    ) -> Result<Arc<Route>, ApiError> {
        let routes = self.routes_of(f)?;
        match qualifier {
            Qualifier::Alias(alias) => routes
                .pick(alias, || rand::random::<u32>() % 100)
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("`{}` has no alias `{alias}`", f.name),
                    )
                }),
            Qualifier::Version(n) => {
                if let Some(route) = routes.versions.get(n) {
                    return Ok(route.clone());
                }
                let (function, n) = (f.clone(), *n);
                let version = self.blocking(move |r| r.version(&function, n)).await?;
                let route = Route::new(version);
                self.ensure_runtimes(&route.spec).await?;
                Ok(Arc::new(route))
            }
        }
    }

    /// Runs one call on `route`'s version, until the head of its answer
    /// (the body streams); with the outcome and how long it took counted
    /// in the metrics by [`Platform::record`].
    pub async fn call(
        &self,
        route: &Route,
        payload: thaw_protocol::Payload,
        body: RequestBody,
    ) -> Result<Invocation, InvokeError> {
        self.scheduler.invoke(&route.spec, payload, body).await
    }

    /// [`Platform::call`] with the answer read whole.
    pub async fn call_buffered(
        &self,
        route: &Route,
        payload: thaw_protocol::Payload,
        body: Vec<u8>,
    ) -> Result<Invocation<Vec<u8>>, InvokeError> {
        let body = if body.is_empty() {
            RequestBody::Empty
        } else {
            RequestBody::Full(body.into())
        };
        self.scheduler
            .invoke_buffered(&route.spec, payload, body)
            .await
    }

    /// Counts one call of `route`'s function: how it ended (`ok`,
    /// `handler_error` or the error code thaw answered with), whether it
    /// started its instance (`None`: it reached none), and how long it took.
    /// A call that ends after its function was removed is not counted, so
    /// that no metric of it comes back (for a later function of the name).
    pub fn record(&self, route: &Route, outcome: &'static str, cold: Option<bool>, took: Duration) {
        if self.routes.get(&route.version.function).is_none() {
            return;
        }
        self.metrics
            .record(&route.version.function, outcome, cold, took);
    }

    /// `POST .../invoke`: the body is the event, any JSON value.
    pub async fn invoke(
        &self,
        caller: &Caller,
        f: &FunctionId,
        qualifier: &Qualifier,
        event: serde_json::Value,
    ) -> Result<view::InvokeResult, ApiError> {
        caller.allow(&f.namespace, Need::Invoke)?;
        let route = self.resolve(f, qualifier).await?;
        let started = Instant::now();
        let result = self
            .call_buffered(&route, thaw_protocol::Payload::Event(event), Vec::new())
            .await;
        let (outcome, cold) = match &result {
            Ok(inv) => (
                match inv.outcome {
                    InvokeOutcome::Reply(_) => "ok",
                    InvokeOutcome::HandlerError { .. } => "handler_error",
                },
                Some(inv.cold),
            ),
            Err(e) => (invoke_error(e).code, None),
        };
        self.record(&route, outcome, cold, started.elapsed());
        let inv = match result {
            Ok(inv) => inv,
            Err(e) => {
                let logs: Vec<serde_json::Value> = match &e {
                    InvokeError::Timeout { logs, .. } | InvokeError::Crashed { logs, .. } => logs
                        .iter()
                        .map(|l| serde_json::to_value(log_view(l)).unwrap_or_default())
                        .collect(),
                    _ => Vec::new(),
                };
                return Err(invoke_error(&e).with(serde_json::json!({ "logs": logs })));
            }
        };
        let mut out = view::InvokeResult {
            namespace: f.namespace.clone(),
            function: f.name.clone(),
            version: route.version.number,
            invocation: inv.id,
            cold: inv.cold,
            logs: inv.logs.iter().map(log_view).collect(),
            status: None,
            headers: None,
            body: None,
            body_base64: None,
            error: None,
        };
        match inv.outcome {
            InvokeOutcome::Reply(reply) => {
                out.status = Some(reply.status);
                out.headers = Some(reply.headers);
                match String::from_utf8(reply.body) {
                    Ok(text) => out.body = Some(text),
                    Err(e) => {
                        out.body_base64 =
                            Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
                    }
                }
            }
            InvokeOutcome::HandlerError {
                name,
                message,
                stack,
                ..
            } => {
                out.error = Some(view::HandlerErrorView {
                    code: "handler_error".into(),
                    name,
                    message,
                    stack,
                });
            }
        }
        Ok(out)
    }

    // ---- the platform ----

    /// Prometheus text: every namespace for the admin, one for its keys.
    pub async fn metrics_text(
        &self,
        caller: &Caller,
        namespace: Option<&str>,
    ) -> Result<String, ApiError> {
        match namespace {
            None => caller.allow("", Need::Admin)?,
            Some(ns) => {
                caller.allow(ns, Need::Read)?;
                self.existing_namespace(ns).await?;
            }
        }
        let functions: Vec<(FunctionId, thaw_scheduler::PoolStats)> = self
            .routes
            .list(namespace)
            .into_iter()
            .map(|(f, _)| {
                let stats = self.scheduler.stats(&f.namespace, &f.name);
                (f, stats)
            })
            .collect();
        let pool = namespace
            .is_none()
            .then(|| self.scheduler.runtimes().snapshot());
        let mut queues = self.blocking(|r| r.queue_depths()).await?;
        queues.retain(|q| namespace.is_none_or(|ns| q.namespace == ns));
        let mut text = crate::metrics::render(&self.metrics, namespace, &functions, &queues, pool);
        if let Some(cluster) = self.cluster.as_ref().filter(|_| namespace.is_none()) {
            text.push_str(&cluster.render_metrics());
        }
        Ok(text)
    }

    pub async fn upgrade_runtime_op(
        &self,
        caller: &Caller,
    ) -> Result<view::RuntimeUpgradeView, ApiError> {
        caller.allow("", Need::Admin)?;
        let done = self.upgrade_runtime().await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "upgrade_failed",
                format!("the runtime was not upgraded: {e:#}"),
            )
        })?;
        Ok(view::RuntimeUpgradeView {
            drivers: done
                .iter()
                .map(|u| view::DriverUpgrade {
                    driver: u.driver.to_string(),
                    runtime: u.runtime.clone(),
                    before: u.change.before.clone(),
                    after: u.change.after.clone(),
                    changed: u.change.changed(),
                    replaced_waiting: u.replaced,
                })
                .collect(),
        })
    }
}
