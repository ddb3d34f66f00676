//! The running platform: registry, scheduler, routing table, server.

use crate::logsink::RegistryLogSink;
use anyhow::Context as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thaw_bundle::Limits;
use thaw_registry::{Registry, Version};
use thaw_sandbox::{Driver, JailSettings, ProcessDriver, ProcessDriverConfig};
use thaw_scheduler::{FunctionSpec, PoolConfig, RuntimePool, Scheduler, SchedulerConfig};

/// The runtime shim, embedded so that a `thaw` binary is all a host needs
/// besides Node. Written to the data directory at start-up.
const SHIM_SOURCE: &str = include_str!("../../../runtime/shim/shim.mjs");

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `THAW_TOKEN`, when set.
    pub token: Option<String>,
    pub node: PathBuf,
    /// Where esbuild is, if not found by itself.
    pub esbuild: Option<PathBuf>,
    pub limits: Limits,
    /// Largest request body a function route accepts.
    pub max_request_bytes: usize,
    pub scheduler: SchedulerConfig,
    pub pool: PoolConfig,
    /// Idle instances are paused (SIGSTOP) after this long; `None` keeps
    /// them running between calls.
    pub pause_idle_after: Option<Duration>,
    pub jail: JailMode,
}

/// Whether runtimes run in a jail (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailMode {
    /// Always; `thaw up` fails where the host cannot.
    On,
    /// Never: runtimes are plain processes (development only).
    Off,
    /// Where the host can (root, namespaces, cgroups, Linux 5.12+), with a
    /// warning where it cannot.
    Auto,
}

/// First uid given to jailed instances: far above any real user.
const FIRST_JAIL_UID: u32 = 1_000_000;
const JAIL_UIDS: u32 = 65_536;

fn jail_settings(config: &Config) -> anyhow::Result<Option<JailSettings>> {
    if config.jail == JailMode::Off {
        return Ok(None);
    }
    match thaw_jail::prepare_host() {
        Ok(version) => {
            tracing::info!("runtimes run jailed (cgroup {version:?})");
            let state_dir = config.data_dir.join("jails");
            // Instances of a thaw that was killed outright are still here
            // (frozen ones even still run): end them before starting anew.
            let stale = thaw_jail::cleanup_stale(&state_dir)
                .context("could not clean up the jails of an earlier run")?;
            if stale > 0 {
                tracing::info!("cleaned up {stale} jails left by an earlier run");
            }
            let exe = std::env::current_exe().context("cannot find the thaw executable")?;
            let limits = thaw_jail::Limits {
                // Until bound, a runtime may use the most any function may;
                // binding sets the function's own limit.
                memory_bytes: 4096 * 1024 * 1024,
                pids: 256,
                ..thaw_jail::Limits::default()
            };
            Ok(Some(JailSettings {
                exe,
                state_dir,
                first_uid: FIRST_JAIL_UID,
                uids: JAIL_UIDS,
                limits,
            }))
        }
        Err(e) if config.jail == JailMode::Auto => {
            eprintln!("warning: runtimes are NOT jailed on this host: {e}");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "the jail cannot run on this host: {e} (use --jail off to run unjailed, for development only)"
        )),
    }
}

impl Config {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            data_dir,
            listen,
            token: None,
            node: PathBuf::from("node"),
            esbuild: None,
            limits: Limits::default(),
            max_request_bytes: 6 * 1024 * 1024,
            scheduler: SchedulerConfig::default(),
            pool: PoolConfig::default(),
            pause_idle_after: Some(Duration::from_secs(2)),
            jail: JailMode::Auto,
        }
    }
}

/// A deployed, serving function version.
pub struct Route {
    pub version: Version,
    pub spec: FunctionSpec,
}

pub struct Platform {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub scheduler: Arc<Scheduler>,
    pub token: String,
    pub esbuild: Option<PathBuf>,
    routes: RwLock<HashMap<String, Arc<Route>>>,
    /// Deploys run one at a time: they are rare, and this keeps a version's
    /// probe, activation and retirement of the old one in order.
    pub deploy_lock: tokio::sync::Mutex<()>,
    pub metrics: crate::metrics::Metrics,
    pub jailed: bool,
}

pub fn spec_of(version: &Version) -> FunctionSpec {
    let s = &version.settings;
    FunctionSpec {
        name: version.function.clone(),
        version: version.id,
        code_dir: version.code_dir.clone(),
        entry: version.entry.clone(),
        env: s.env.clone(),
        timeout: Duration::from_secs(s.timeout_s as u64),
        memory_mb: s.memory_mb,
        concurrency: s.concurrency,
        keep_alive: Duration::from_secs(s.keep_alive_s as u64),
        max_instances: s.max_instances,
    }
}

impl Platform {
    /// Opens the data directory and gets everything ready to serve.
    pub fn open(config: Config) -> anyhow::Result<Arc<Platform>> {
        let registry = Arc::new(Registry::open(&config.data_dir).with_context(|| {
            format!(
                "could not open the data directory {}",
                config.data_dir.display()
            )
        })?);
        let removed = registry.collect_garbage()?;
        if removed > 0 {
            tracing::info!("removed {removed} unused bundles and code trees");
        }
        let token = registry.token(config.token.clone())?;
        let shim = write_shim(&config.data_dir)?;
        let jail = jail_settings(&config)?;
        let jailed = jail.is_some();
        let driver: Arc<dyn Driver> = Arc::new(ProcessDriver::new(ProcessDriverConfig {
            node: config.node.clone(),
            shim,
            // TypeScript is bundled with inline source maps: stack traces
            // then point at the user's .ts lines.
            node_args: vec!["--enable-source-maps".into()],
            jail,
        })?);
        let sink = Arc::new(RegistryLogSink::start(registry.clone()));
        let runtimes = RuntimePool::new(driver, sink, config.pool.clone());
        runtimes.spawn_refill();
        let scheduler = Arc::new(Scheduler::new(runtimes, config.scheduler.clone()));
        let esbuild = thaw_bundle::find_esbuild(config.esbuild.as_deref());
        let mut routes = HashMap::new();
        for version in registry.current_versions()? {
            let spec = spec_of(&version);
            routes.insert(version.function.clone(), Arc::new(Route { version, spec }));
        }
        Ok(Arc::new(Platform {
            config,
            registry,
            scheduler,
            token,
            esbuild,
            routes: RwLock::new(routes),
            deploy_lock: tokio::sync::Mutex::new(()),
            metrics: Default::default(),
            jailed,
        }))
    }

    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.read().unwrap().get(name).cloned()
    }

    pub fn routes(&self) -> Vec<Arc<Route>> {
        let mut all: Vec<_> = self.routes.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.version.function.cmp(&b.version.function));
        all
    }

    /// Switches `name` to a new version: one map insert, so every request
    /// resolves to the old version or the new one.
    pub fn set_route(&self, version: Version) {
        let spec = spec_of(&version);
        let name = version.function.clone();
        let id = version.id;
        self.routes
            .write()
            .unwrap()
            .insert(name.clone(), Arc::new(Route { version, spec }));
        self.scheduler.retire(&name, Some(id));
    }

    pub fn remove_route(&self, name: &str) {
        self.routes.write().unwrap().remove(name);
        self.metrics.forget(name);
        self.scheduler.retire(name, None);
    }

    /// Ends every runtime and removes what their jails left on the host.
    pub async fn shut_down(&self) {
        self.scheduler.runtimes().close().await;
        self.scheduler.retire_all();
        if self.jailed {
            match thaw_jail::cleanup_stale(&self.config.data_dir.join("jails")) {
                Ok(_) => {}
                Err(e) => tracing::warn!("could not clean up every jail: {e}"),
            }
        }
    }

    /// Reclaims idle instances past their keep-alive, every second.
    fn spawn_reaper(self: &Arc<Self>) {
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(p) = platform.upgrade() else { return };
                p.scheduler.reap_idle(
                    |name, version| {
                        p.route(name)
                            .filter(|r| r.version.id == version)
                            .map(|r| r.spec.keep_alive)
                    },
                    p.config.pause_idle_after,
                );
            }
        });
    }
}

fn write_shim(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let hash = hex::encode(&sha2::Sha256::digest(SHIM_SOURCE.as_bytes())[..8]);
    let dir = data_dir.join("runtime").join(hash);
    let path = dir.join("shim.mjs");
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("shim.mjs.tmp");
        std::fs::write(&tmp, SHIM_SOURCE)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// Runs the platform until the process is stopped.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let platform = Platform::open(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen} (is another thaw running? pick another with --listen)"))?;
    let addr = listener.local_addr()?;
    platform.spawn_reaper();
    eprintln!(
        "thaw is up on http://{addr}  (data: {}, driver: {}{}, functions: {})",
        platform.config.data_dir.display(),
        platform.scheduler.driver_name(),
        if platform.jailed { ", jailed" } else { "" },
        platform.routes().len()
    );
    if platform.esbuild.is_none() {
        eprintln!("warning: esbuild not found: TypeScript deploys will fail until `cargo xtask setup` runs");
    }
    let app = crate::api::router(platform.clone());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("thaw is stopping");
    })
    .await?;
    platform.shut_down().await;
    Ok(())
}
