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
use thaw_sandbox::{Driver, ProcessDriver, ProcessDriverConfig};
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
        let driver: Arc<dyn Driver> = Arc::new(ProcessDriver::new(ProcessDriverConfig {
            node: config.node.clone(),
            shim,
            // TypeScript is bundled with inline source maps: stack traces
            // then point at the user's .ts lines.
            node_args: vec!["--enable-source-maps".into()],
        }));
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
        "thaw is up on http://{addr}  (data: {}, driver: {}, functions: {})",
        platform.config.data_dir.display(),
        platform.scheduler.driver_name(),
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
    Ok(())
}
