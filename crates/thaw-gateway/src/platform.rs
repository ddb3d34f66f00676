//! The running platform: registry, scheduler, route table, drivers.
//!
//! [`Platform`] keeps its parts private; what callers can do with it are
//! the operations in `platform/ops.rs` (deploy, rollback, invoke ...),
//! each checked against the caller's key. This file opens it: the data
//! directory, the drivers and their pools of runtimes, one per driver and
//! Node line.

mod calls;
mod follow;
mod membership;
mod ops;
mod stats;
mod triggers;

pub use ops::DeployOptions;

use crate::errors::{invoke_error, ApiError};
use crate::logsink::RegistryLogSink;
use crate::metrics::Metrics;
use crate::routes::{FunctionRoutes, RouteTable};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thaw_bundle::Limits;
use thaw_node::Line;
use thaw_registry::Registry;
use thaw_sandbox::{
    Driver, JailSettings, JailedBuild, LogSink, ProcessDriver, ProcessDriverConfig,
};
use thaw_scheduler::{
    FunctionSpec, InvokeError, PoolConfig, Quota, RuntimePool, Scheduler, SchedulerConfig,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `THAW_TOKEN`, when set: the admin token.
    pub token: Option<String>,
    /// `THAW_SECRETS_KEY`, when set: the key secrets are encrypted with
    /// (64 hex digits); else `DATA_DIR/secrets.key`.
    pub secrets_key: Option<String>,
    /// Where the registry's records are: `thaw.db` in the data directory,
    /// or a PostgreSQL database shared by several workers.
    pub database: thaw_registry::Database,
    /// The address other workers reach this one at (`http://10.0.0.2:8787`);
    /// by default the address it listens on, when that is a specific one.
    pub advertise: Option<String>,
    pub node: PathBuf,
    /// Where esbuild is, if not found by itself.
    pub esbuild: Option<PathBuf>,
    pub limits: Limits,
    /// Largest request body a function route accepts.
    pub max_request_bytes: usize,
    pub scheduler: SchedulerConfig,
    /// What all instances together may hold; `None` in a field: from the
    /// host (`HostBudget::of_this_host`).
    pub host_budget: HostBudget,
    pub pool: PoolConfig,
    /// Idle instances are paused (SIGSTOP) after this long; `None` keeps
    /// them running between calls.
    pub pause_idle_after: Option<Duration>,
    pub jail: JailMode,
    /// Where runtimes run.
    pub driver: DriverKind,
    /// microVM images are built and cached here; `None`: `<data>/images`.
    pub image_cache: Option<PathBuf>,
    /// Runtimes run this shim instead of the one built into thaw (tests
    /// use it to stand for a runtime upgrade).
    pub shim: Option<PathBuf>,
    /// The microVM guest's kernel (docs/microvm.md, "The guest image").
    pub guest_kernel: thaw_microvm::GuestKernel,
}

/// The sandbox every runtime of this platform runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// A jailed Node process per instance.
    Process,
    /// A QEMU microVM per instance, restored from a snapshot (docs/microvm.md).
    Microvm,
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

/// Processes one jailed instance may run (its cgroup's pids limit).
pub const PIDS_PER_INSTANCE: u32 = 256;

/// What every instance together may hold on this host: the sum of their
/// memory limits, and of their PIDs limits. Past it a cold start first
/// ends the least recently used idle instance, else gets `503 host_budget`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostBudget {
    /// MiB; default: 90 % of the host's memory (`MemTotal`).
    pub memory_mb: Option<u64>,
    /// PIDs; default: half of `kernel.pid_max`.
    pub pids: Option<u64>,
}

impl HostBudget {
    /// The budget with the host's defaults filled in, as a scheduler quota.
    pub fn resolve(&self) -> Quota {
        let memory_mb = self.memory_mb.unwrap_or_else(|| {
            let total_kib = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MemTotal:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .unwrap_or(4 << 20);
            total_kib / 1024 * 9 / 10
        });
        let pids = self.pids.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(32_768)
                / 2
        });
        Quota {
            max_instances: (pids / u64::from(PIDS_PER_INSTANCE)).min(u64::from(u32::MAX)) as u32,
            max_memory_mb: memory_mb,
        }
    }
}

/// First uid given to jailed instances: far above any real user. Process
/// runtimes take the first range, VMs the next, so that no two live
/// instances of either driver share a uid.
const FIRST_JAIL_UID: u32 = 1_000_000;
const JAIL_UIDS: u32 = 65_536;

/// Where each driver keeps its jails, under the data directory. Apart, so
/// that opening one driver (which cleans up its jails of an earlier run)
/// never touches the live instances of the other.
const PROCESS_JAILS: &str = "jails";
const VM_JAILS: &str = "vm-jails";
/// Where TypeScript builds keep their jails, apart for the same reason.
const BUILD_JAILS: &str = "build-jails";

/// The uid (and gid) esbuild runs as in a build's jail: the first past both
/// instance ranges, never an instance's (each driver cycles through every
/// uid of its range, the last one too). One is enough: deploys, and so
/// builds, run one at a time under the deploy lock.
const BUILD_UID: u32 = FIRST_JAIL_UID + 2 * JAIL_UIDS;

/// Where TypeScript builds run: in a jail of their own when the platform
/// jails its runtimes (docs/security.md, "The TypeScript build"), else on
/// the host.
fn build_sandbox(
    config: &Config,
    jailed: bool,
) -> anyhow::Result<Arc<dyn thaw_bundle::BuildSandbox>> {
    if !jailed {
        return Ok(Arc::new(thaw_bundle::HostBuild));
    }
    let state_dir = config.data_dir.join(BUILD_JAILS);
    thaw_jail::cleanup_stale(&state_dir)
        .context("could not clean up the build jails of an earlier run")?;
    Ok(Arc::new(JailedBuild::new(JailSettings {
        exe: std::env::current_exe().context("cannot find the thaw executable")?,
        state_dir,
        first_uid: BUILD_UID,
        uids: 1,
        limits: JailedBuild::default_limits(),
    })))
}

/// The jails of each driver's runtimes, prepared once per start. A second
/// pool of a driver (another Node line) shares the first one's jails: the
/// same directory and range of uids, and one numbering, so that no two
/// live runtimes share a jail id or a uid, and opening it does not take
/// the first pool's live jails for left-overs of an earlier run.
struct Jails {
    prepared: std::sync::Mutex<std::collections::HashMap<DriverKind, Option<JailSettings>>>,
    /// Numbers every process runtime, whichever its line.
    process_numbering: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Jails {
    /// The numbering starts at a random place in the uid range: a uid's
    /// process limit counts across the host, so two `thaw up` on one host
    /// (or test platforms side by side) rarely give their runtimes the
    /// same uid.
    fn default() -> Jails {
        Jails {
            prepared: Default::default(),
            process_numbering: Arc::new(std::sync::atomic::AtomicU64::new(u64::from(
                rand::random::<u16>(),
            ))),
        }
    }
}

impl Jails {
    /// `kind`'s jail settings (`None`: unjailed), prepared at the first call.
    fn settings(&self, config: &Config, kind: DriverKind) -> anyhow::Result<Option<JailSettings>> {
        let mut prepared = self.prepared.lock().unwrap();
        if let Some(settings) = prepared.get(&kind) {
            return Ok(settings.clone());
        }
        let settings = jail_settings(config, kind)?;
        prepared.insert(kind, settings.clone());
        Ok(settings)
    }
}

fn jail_settings(config: &Config, kind: DriverKind) -> anyhow::Result<Option<JailSettings>> {
    if config.jail == JailMode::Off {
        return Ok(None);
    }
    let (dir, first_uid, what) = match kind {
        DriverKind::Process => (PROCESS_JAILS, FIRST_JAIL_UID, "runtimes"),
        DriverKind::Microvm => (VM_JAILS, FIRST_JAIL_UID + JAIL_UIDS, "VMMs (QEMU)"),
    };
    match thaw_jail::prepare_host() {
        Ok(version) => {
            tracing::info!("{what} run jailed (cgroup {version:?})");
            let state_dir = config.data_dir.join(dir);
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
                // binding sets the function's own limit. (A VM's jail
                // replaces it with guest RAM plus QEMU's own needs.)
                memory_bytes: 4096 * 1024 * 1024,
                pids: PIDS_PER_INSTANCE,
                ..thaw_jail::Limits::default()
            };
            Ok(Some(JailSettings {
                exe,
                state_dir,
                first_uid,
                uids: JAIL_UIDS,
                limits,
            }))
        }
        Err(e) if config.jail == JailMode::Auto => {
            eprintln!("warning: {what} are NOT jailed on this host: {e}");
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
            secrets_key: None,
            database: thaw_registry::Database::Sqlite,
            advertise: None,
            node: PathBuf::from("node"),
            esbuild: None,
            limits: Limits::default(),
            max_request_bytes: 6 * 1024 * 1024,
            scheduler: SchedulerConfig::default(),
            host_budget: HostBudget::default(),
            pool: PoolConfig::default(),
            pause_idle_after: Some(Duration::from_secs(2)),
            jail: JailMode::Auto,
            driver: DriverKind::Process,
            image_cache: None,
            shim: None,
            guest_kernel: thaw_microvm::GuestKernel::default(),
        }
    }
}

/// What `Platform::upgrade_runtime` did for one pool of runtimes.
#[derive(Debug)]
pub struct RuntimeUpgrade {
    pub driver: &'static str,
    /// The pool's Node line.
    pub runtime: String,
    pub change: thaw_sandbox::RuntimeChange,
    /// Waiting runtimes of the old runtime that were killed.
    pub replaced: usize,
}

pub struct Platform {
    config: Config,
    registry: Arc<Registry>,
    scheduler: Arc<Scheduler>,
    /// The admin token.
    token: String,
    esbuild: Option<PathBuf>,
    /// Where esbuild runs (jailed when runtimes are).
    build: Arc<dyn thaw_bundle::BuildSandbox>,
    routes: RouteTable,
    /// Changes to what serves (deploys, aliases, configuration) run one at
    /// a time: they are rare, and this keeps a version's probe, activation
    /// and the retirement of what it replaces in order.
    deploy_lock: tokio::sync::Mutex<()>,
    metrics: Metrics,
    jailed: bool,
    /// The driver and how it runs, for `thaw up`'s first line
    /// (`process`, `microvm, tcg`).
    driver_summary: String,
    /// The runtime shim every driver runs (replaced by `upgrade_runtime`).
    shim: RwLock<PathBuf>,
    /// The Node line of `--node`: functions that name none run on it.
    default_line: Line,
    sink: Arc<dyn LogSink>,
    /// Every driver's jails (prepared by the first pool of that driver).
    jails: Jails,
    /// Held while a pool of runtimes is being opened (a function's own
    /// driver or line) or upgraded.
    opening_driver: tokio::sync::Mutex<()>,
    /// Wakes the async worker: a call was accepted or an attempt ended.
    async_wake: Arc<tokio::sync::Notify>,
    /// Every provisioned floor was met once since start.
    provisioned_once: std::sync::atomic::AtomicBool,
    /// This worker's id: random, new at each start; it marks the async
    /// calls it runs.
    worker_id: String,
    /// Membership and homes, when workers share a PostgreSQL registry.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

fn quota_of(limits: &thaw_registry::NamespaceLimits) -> Quota {
    Quota {
        max_instances: limits.max_instances,
        max_memory_mb: u64::from(limits.max_memory_mb),
    }
}

/// What the platform starts from: the registry, the admin token, the
/// namespaces and what is routable.
type Opened = (
    Arc<Registry>,
    String,
    Vec<thaw_registry::Namespace>,
    Vec<thaw_registry::Routable>,
);

fn open_registry(config: &Config) -> anyhow::Result<Opened> {
    let registry = Arc::new(
        Registry::open_with(
            &config.data_dir,
            &config.database,
            config.secrets_key.as_deref(),
        )
        .with_context(|| match &config.database {
            thaw_registry::Database::Sqlite => format!(
                "could not open the data directory {}",
                config.data_dir.display()
            ),
            thaw_registry::Database::Postgres(url) => format!(
                "could not open the registry in {}",
                thaw_registry::redact_database_url(url)
            ),
        })?,
    );
    let removed = registry.collect_garbage()?.removed;
    if removed > 0 {
        tracing::info!("removed {removed} unused bundles and code trees");
    }
    let token = registry.token(config.token.clone())?;
    let namespaces = registry.namespaces()?;
    let routable = registry.routable()?;
    Ok((registry, token, namespaces, routable))
}

impl Platform {
    /// Opens the data directory and gets everything ready to serve; with
    /// the microvm driver that includes the guest image and the template.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Platform>> {
        let (registry, token, namespaces, routable) = {
            let config = config.clone();
            // The registry blocks (PostgreSQL's client has its own
            // runtime): never on the async threads.
            tokio::task::spawn_blocking(move || open_registry(&config)).await??
        };
        let shim = runtime_shim(&config)?;
        let default_line = thaw_node::version_of(&config.node)
            .map(|v| v.line())
            .with_context(|| {
                format!(
                    "cannot tell which Node line {} is (set --node or THAW_NODE to Node.js 20 or newer)",
                    config.node.display()
                )
            })?;
        let jails = Jails::default();
        let lines: Vec<String> = thaw_node::serving(&thaw_node::runtimes_dir(&config.data_dir))
            .iter()
            .map(|i| format!("{} ({})", i.version.line(), i.version))
            .collect();
        tracing::info!(
            "Node lines: {default_line} by default (--node), installed: {}",
            if lines.is_empty() {
                "none".to_string()
            } else {
                lines.join(", ")
            }
        );
        let opened = open_driver(
            config.driver,
            &config,
            &jails,
            &shim,
            &default_node(&config),
        )
        .await?;
        let sink: Arc<dyn LogSink> = Arc::new(RegistryLogSink::start(registry.clone()));
        let runtimes = RuntimePool::new(
            opened.driver,
            default_line.name(),
            sink.clone(),
            pool_config(config.driver, &config.pool, false),
        );
        runtimes.spawn_refill();
        let mut scheduler_config = config.scheduler.clone();
        let host = config.host_budget.resolve();
        tracing::info!(
            "host budget: {} instances ({} PIDs each), {} MiB of instance memory",
            host.max_instances,
            PIDS_PER_INSTANCE,
            host.max_memory_mb
        );
        scheduler_config.host = Some(host);
        let scheduler = Arc::new(Scheduler::new(runtimes, scheduler_config));
        let esbuild = thaw_bundle::find_esbuild(config.esbuild.as_deref());
        let build = build_sandbox(&config, opened.jailed)?;
        for ns in namespaces {
            scheduler.set_quota(&ns.name, quota_of(&ns.limits));
        }
        // Versions deployed through another worker sharing the registry
        // have their code fetched and built here before anything routes
        // to them.
        let routable = {
            let (registry, limits, esbuild, build) = (
                registry.clone(),
                config.limits,
                esbuild.clone(),
                build.clone(),
            );
            tokio::task::spawn_blocking(move || {
                routable
                    .into_iter()
                    .filter(|r| {
                        let fetched = follow::fetch_code_blocking(
                            &registry,
                            &r.versions,
                            &limits,
                            esbuild.as_deref(),
                            &*build,
                        );
                        if let Err(e) = &fetched {
                            eprintln!(
                                "warning: {} cannot be served here: its code could not be fetched: {e}",
                                r.function
                            );
                        }
                        fetched.is_ok()
                    })
                    .collect::<Vec<_>>()
            })
            .await?
        };
        let routes = RouteTable::default();
        for r in routable {
            routes.set(r.function, FunctionRoutes::new(r.aliases, r.versions));
        }
        let worker_id = hex::encode(rand::random::<[u8; 8]>());
        let registry_engine = registry.engine();
        let secrets_key = config.secrets_key.clone();
        let platform = Arc::new(Platform {
            config,
            registry,
            scheduler,
            token,
            esbuild,
            build,
            routes,
            deploy_lock: tokio::sync::Mutex::new(()),
            metrics: Default::default(),
            jailed: opened.jailed,
            driver_summary: opened.summary,
            shim: RwLock::new(shim),
            default_line,
            jails,
            sink,
            opening_driver: tokio::sync::Mutex::new(()),
            async_wake: Arc::new(tokio::sync::Notify::new()),
            provisioned_once: Default::default(),
            cluster: match (registry_engine, &secrets_key) {
                (thaw_registry::Engine::Postgres, Some(key)) => Some(Arc::new(
                    crate::cluster::Cluster::new(worker_id.clone(), key),
                )),
                _ => None,
            },
            worker_id,
        });
        // Functions deployed with another `driver` or `runtime` need its
        // runtimes too.
        for (function, routes) in platform.routes.list(None) {
            for route in routes.versions.values() {
                if let Err(e) = platform.ensure_runtimes(&route.spec).await {
                    eprintln!(
                        "warning: {function} cannot be served until this is fixed: {}",
                        e.message
                    );
                }
            }
        }
        // What the first cold start of each routed version would otherwise
        // wait for (the process driver's image of its code), in the
        // background.
        let routed: Vec<_> = platform
            .routes
            .list(None)
            .into_iter()
            .flat_map(|(_, routes)| routes.versions.values().cloned().collect::<Vec<_>>())
            .collect();
        let scheduler = platform.scheduler.clone();
        tokio::spawn(async move {
            for route in &routed {
                scheduler.prepare(&route.spec).await;
            }
        });
        Ok(platform)
    }

    /// Opens the pool of runtimes `spec` runs on if this platform has none
    /// yet: the driver and Node line it names in thaw.toml (`driver`,
    /// `runtime`), with a small pool of its own. A line that is not
    /// installed, or that its driver cannot run, is refused with what to do.
    async fn ensure_runtimes(&self, spec: &FunctionSpec) -> Result<(), ApiError> {
        if self.scheduler.has_runtimes(spec) {
            return Ok(());
        }
        let _opening = self.opening_driver.lock().await;
        if self.scheduler.has_runtimes(spec) {
            return Ok(());
        }
        let (driver, line) = self.scheduler.runtime_of(spec);
        let unavailable = |message: String| invoke_error(&InvokeError::Unavailable(message));
        let kind = DriverKind::from_name(&driver)
            .ok_or_else(|| unavailable(format!("this platform has no driver {driver:?}")))?;
        let node = self.node_of(kind, &line)?;
        let shim = self.shim.read().unwrap().clone();
        let opened = open_driver(kind, &self.config, &self.jails, &shim, &node)
            .await
            .map_err(|e| unavailable(format!("could not start the {driver} driver: {e:#}")))?;
        eprintln!(
            "functions with driver = {driver:?} and runtime = {line:?} run under {}",
            opened.summary
        );
        let runtimes = RuntimePool::new(
            opened.driver,
            line,
            self.sink.clone(),
            pool_config(kind, &self.config.pool, true),
        );
        runtimes.spawn_refill();
        self.scheduler.add_runtimes(runtimes);
        Ok(())
    }

    /// The `node` a pool of `kind` runs for `line`: `--node` for the
    /// default line, else the newest release of the line installed under
    /// the data directory, looked up anew each time (installing a line or
    /// a release of it needs no restart).
    fn node_of(&self, kind: DriverKind, line: &str) -> Result<NodeBinary, ApiError> {
        if line == self.default_line.name() {
            let node = default_node(&self.config);
            // Functions pinned to the default line must not move to
            // another major version with a host's package upgrade.
            let found = thaw_node::version_of(&node.path).map_err(|e| e.to_string());
            return match found {
                Ok(version) if version.line() == self.default_line => Ok(node),
                Ok(version) => Err(format!(
                    "{} is Node {version} now, and this platform's default line is {}: the default line cannot change while thaw runs; restart thaw up",
                    node.path.display(),
                    self.default_line
                )),
                Err(e) => Err(e),
            }
            .map_err(|e| invoke_error(&InvokeError::Unavailable(e)));
        }
        let refused = |code, message: String| ApiError::bad_request(code, message);
        let parsed =
            Line::parse(line).map_err(|e| refused("runtime_unsupported", e.to_string()))?;
        if kind == DriverKind::Microvm {
            return Err(refused(
                "runtime_unsupported",
                format!(
                    "runtime = {line:?}: the microvm driver runs {} only, the Node its guest image holds (thaw up --node); use driver = \"process\" for {line}, or leave runtime out",
                    self.default_line
                ),
            ));
        }
        let runtimes_dir = thaw_node::runtimes_dir(&self.config.data_dir);
        let installed = thaw_node::newest(&runtimes_dir, parsed).ok_or_else(|| {
            refused(
                "runtime_not_installed",
                format!(
                    "runtime = {line:?} is not installed on this platform (its default is {}): run `thaw runtime install {line}` on its host, then deploy again",
                    self.default_line
                ),
            )
        })?;
        Ok(NodeBinary {
            path: installed.node,
            in_jail: Some(PathBuf::from(LINE_NODE_IN_JAIL)),
        })
    }

    /// Switches every pool to the runtime on the host now (the shim:
    /// `--shim`'s file read again, or the built-in one; its line's Node:
    /// `--node` found again, or the newest release of the line installed;
    /// for VMs the image and template made from them). Where it changed,
    /// waiting runtimes are replaced; bound ones keep serving their
    /// function and drain as they go idle (keep_alive), and the instances
    /// that follow them start from the new runtime. No function is
    /// redeployed.
    pub async fn upgrade_runtime(&self) -> anyhow::Result<Vec<RuntimeUpgrade>> {
        let _opening = self.opening_driver.lock().await;
        let shim = runtime_shim(&self.config)?;
        *self.shim.write().unwrap() = shim.clone();
        let mut done: Vec<RuntimeUpgrade> = Vec::new();
        for pool in self.scheduler.all_runtimes() {
            let driver = pool.driver().name();
            let runtime = pool.runtime().to_string();
            let kind = DriverKind::from_name(driver).unwrap_or(self.config.driver);
            let upgraded = match self.node_of(kind, &runtime) {
                Ok(node) => pool
                    .driver()
                    .upgrade_runtime(&shim, &node.path)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            let change = match upgraded {
                Ok(change) => change,
                Err(e) => {
                    let upgraded: Vec<String> = done
                        .iter()
                        .map(|u| format!("{} {}", u.driver, u.runtime))
                        .collect();
                    anyhow::bail!(
                        "the {driver} driver's {runtime} runtimes: {e} (upgraded before them: {})",
                        if upgraded.is_empty() {
                            "none".to_string()
                        } else {
                            upgraded.join(", ")
                        }
                    );
                }
            };
            let replaced = if change.changed() {
                // Provisioned instances run the old runtime: new ones
                // replace them (the provisioner), then the old ones end.
                self.scheduler.renew_provisioned();
                pool.flush()
            } else {
                0
            };
            tracing::info!(
                "{runtime} runtime of the {driver} driver: {} -> {} ({replaced} waiting runtimes replaced)",
                change.before,
                change.after
            );
            done.push(RuntimeUpgrade {
                driver,
                runtime,
                change,
                replaced,
            });
        }
        Ok(done)
    }

    /// Tells every driver that the code trees the registry just removed are
    /// gone, so that what they hold for them (images on loop devices) goes.
    fn forget_code(&self, garbage: &thaw_registry::Garbage) {
        for pool in self.scheduler.all_runtimes() {
            for tree in &garbage.code_trees {
                pool.driver().forget_code(tree);
            }
        }
    }

    /// Ends every runtime and removes what their jails left on the host.
    pub async fn shut_down(&self) {
        if let Some(cluster) = &self.cluster {
            // Give the lease up at once: the other workers take this one's
            // functions now rather than when the lease would have lapsed.
            cluster.leave();
            let _no_renewal = cluster.renewing.lock().await;
            let (registry, me) = (self.registry.clone(), cluster.me().to_string());
            match tokio::task::spawn_blocking(move || registry.leave(&me, thaw_registry::now_ms()))
                .await
            {
                Ok(Ok(())) => tracing::info!("worker {} left the cluster", cluster.me()),
                Ok(Err(e)) => tracing::warn!("could not give this worker's lease up: {e}"),
                Err(e) => tracing::warn!("could not give this worker's lease up: {e}"),
            }
        }
        for runtimes in self.scheduler.all_runtimes() {
            runtimes.close().await;
        }
        self.scheduler.retire_all();
        // Either driver may have jailed instances, whichever the platform's
        // is (a function's thaw.toml may ask for the other).
        for dir in [PROCESS_JAILS, VM_JAILS, BUILD_JAILS] {
            let dir = self.config.data_dir.join(dir);
            if dir.exists() {
                if let Err(e) = thaw_jail::cleanup_stale(&dir) {
                    tracing::warn!("could not clean up every jail: {e}");
                }
            }
        }
    }

    /// Reclaims idle instances past their keep-alive, every second.
    /// Versions no alias routes to (reached by number) keep their
    /// function's `latest` keep-alive.
    pub(crate) fn spawn_reaper(self: &Arc<Self>) {
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(p) = platform.upgrade() else { return };
                p.scheduler.reap_idle(
                    |namespace, name, version| {
                        let routes = p
                            .routes
                            .get(&thaw_registry::FunctionId::new(namespace, name))?;
                        match routes.versions.values().find(|r| r.version.id == version) {
                            Some(route) => Some((route.spec.keep_alive, route.spec.min_instances)),
                            // Reached by number only: not provisioned.
                            None => Some((routes.latest()?.spec.keep_alive, 0)),
                        }
                    },
                    p.config.pause_idle_after,
                );
            }
        });
    }

    /// Keeps every routed version's `min_instances` bound and warm: once
    /// a second, starts what is missing (after a deploy, a crash, or a
    /// runtime upgrade). The first round that finds every floor met makes
    /// the platform ready ([`Platform::readiness`]), with the pools filled.
    pub(crate) fn spawn_provisioner(self: &Arc<Self>) {
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // A floor that cannot be met is said once, not every second.
            let mut warned: std::collections::HashSet<(thaw_registry::FunctionId, i64)> =
                Default::default();
            loop {
                tick.tick().await;
                let Some(p) = platform.upgrade() else { return };
                let mut met = true;
                for (function, routes) in p.routes.list(None) {
                    for route in routes.versions.values() {
                        if route.spec.min_instances == 0 {
                            continue;
                        }
                        let key = (function.clone(), route.version.number);
                        match p.scheduler.provision(&route.spec).await {
                            Ok(_) => {
                                warned.remove(&key);
                            }
                            Err(e) => {
                                met = false;
                                if warned.insert(key) {
                                    tracing::warn!(
                                        "{function} version {}: min_instances = {} not met: {e}",
                                        route.version.number,
                                        route.spec.min_instances
                                    );
                                }
                            }
                        }
                    }
                }
                if met {
                    p.provisioned_once
                        .store(true, std::sync::atomic::Ordering::Release);
                }
            }
        });
    }

    /// Whether this host is ready for traffic: every pool of pre-started
    /// runtimes has once held its target, and every provisioned floor has
    /// once been met since start. It stays ready after (a burst that takes
    /// the pool's runtimes does not make it unready); the reasons when not.
    /// Membership and homes, when workers share a PostgreSQL registry.
    pub(crate) fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut waiting = Vec::new();
        for pool in self.scheduler.all_runtimes() {
            if !pool.filled() {
                let s = pool.snapshot();
                waiting.push(format!(
                    "the {} driver's {} pool: {} of {} runtimes started",
                    pool.driver().name(),
                    pool.runtime(),
                    s.idle,
                    s.target
                ));
            }
        }
        if !self
            .provisioned_once
            .load(std::sync::atomic::Ordering::Acquire)
        {
            waiting.push("functions' min_instances: not all started yet".into());
        }
        if let Some(c) = self.cluster.as_ref().filter(|c| !c.serving()) {
            waiting.push(format!(
                "worker {}: its lease in the registry could not be renewed; it serves no calls",
                c.me()
            ));
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }
}

impl DriverKind {
    /// The driver of this name (`Driver::name`, thaw.toml's `driver`).
    pub fn from_name(name: &str) -> Option<DriverKind> {
        match name {
            "process" => Some(DriverKind::Process),
            "microvm" => Some(DriverKind::Microvm),
            _ => None,
        }
    }
}

/// Where a line's binary appears inside a runtime's jail: one fixed path,
/// so that no mount names the data directory (the default line's `node`
/// stays at its host path).
const LINE_NODE_IN_JAIL: &str = "/usr/local/bin/node";

/// The `node` a pool runs.
struct NodeBinary {
    /// On the host: a program on `PATH` or a path.
    path: PathBuf,
    /// Where a jail shows it; `None`: at its host path.
    in_jail: Option<PathBuf>,
}

/// The default line's `node`: `--node`, found on `PATH` anew.
fn default_node(config: &Config) -> NodeBinary {
    NodeBinary {
        path: thaw_sandbox::which(&config.node).unwrap_or_else(|| config.node.clone()),
        in_jail: None,
    }
}

/// A driver ready to start runtimes.
struct OpenedDriver {
    driver: Arc<dyn Driver>,
    jailed: bool,
    /// `process` or `microvm, tcg`.
    summary: String,
}

/// Opens a driver of `kind` whose runtimes run `node` (the process
/// driver's; a VM's Node is the guest image's, made from `config.node`).
async fn open_driver(
    kind: DriverKind,
    config: &Config,
    jails: &Jails,
    shim: &Path,
    node: &NodeBinary,
) -> anyhow::Result<OpenedDriver> {
    Ok(match kind {
        DriverKind::Process => {
            let jail = jails.settings(config, DriverKind::Process)?;
            let jailed = jail.is_some();
            let driver = ProcessDriver::new(ProcessDriverConfig {
                node: node.path.clone(),
                node_in_jail: node.in_jail.clone(),
                numbering: jails.process_numbering.clone(),
                shim: shim.to_path_buf(),
                // TypeScript is bundled with inline source maps: stack
                // traces then point at the user's .ts lines.
                node_args: vec!["--enable-source-maps".into()],
                jail,
            })?;
            if let Some(why) = driver.without_images() {
                eprintln!(
                    "warning: code and the runtime are bound from the data directory, so functions \
                     can read its paths in /proc/self/mountinfo: {why}"
                );
            }
            OpenedDriver {
                driver: Arc::new(driver),
                jailed,
                summary: "process".into(),
            }
        }
        DriverKind::Microvm => {
            let driver = open_microvm(config, jails, shim.to_path_buf()).await?;
            let jailed = driver.is_jailed();
            let summary = format!(
                "microvm, {}",
                match driver.accel().accel {
                    thaw_microvm::Accel::Kvm => "kvm",
                    thaw_microvm::Accel::Tcg => "tcg",
                }
            );
            OpenedDriver {
                driver: Arc::new(driver),
                jailed,
                summary,
            }
        }
    })
}

/// The pool settings for a driver's runtimes; `extra` for a pool only
/// some functions use (thaw.toml's `driver` or `runtime`): at most one
/// runtime waits while nothing cold-starts, and its runtimes together
/// get a quarter of the memory budget (the pool still grows with the rate
/// of cold starts, as every pool does).
fn pool_config(kind: DriverKind, base: &PoolConfig, extra: bool) -> PoolConfig {
    let mut pool = base.clone();
    if kind == DriverKind::Microvm {
        // A restore takes a core for a while under TCG: one at a time, so
        // that refilling never crowds out calls being served.
        pool.parallel_starts = 1;
    }
    if extra {
        pool.min_idle = pool.min_idle.min(1);
        pool.memory_budget /= 4;
    }
    pool
}

/// The microvm driver, with its set-up shown on stderr step by step.
async fn open_microvm(
    config: &Config,
    jails: &Jails,
    shim: PathBuf,
) -> anyhow::Result<thaw_microvm::MicrovmDriver> {
    let run_dir = {
        // Socket paths are limited to 107 bytes: a deep data directory
        // gets a run directory under /tmp instead.
        let beside = config.data_dir.join("vms");
        if beside.as_os_str().len() <= 60 {
            beside
        } else {
            std::env::temp_dir().join(format!("thaw-vms-{}", std::process::id()))
        }
    };
    // What VMs of an earlier run left (a thaw killed outright).
    let _ = std::fs::remove_dir_all(&run_dir);
    let microvm = thaw_microvm::MicrovmConfig {
        data_dir: config.data_dir.clone(),
        images_dir: config
            .image_cache
            .clone()
            .unwrap_or_else(|| config.data_dir.join("images")),
        agent: thaw_microvm::find_agent(
            &std::env::current_exe().context("cannot find the thaw executable")?,
        )?,
        shim,
        node: thaw_sandbox::which(&config.node).with_context(|| {
            format!(
                "{} not found (set THAW_NODE to Node.js 20's path)",
                config.node.display()
            )
        })?,
        run_dir,
        jail: jails.settings(config, DriverKind::Microvm)?,
        kernel: config.guest_kernel.clone(),
    };
    let driver = thaw_microvm::MicrovmDriver::open(
        &microvm,
        Arc::new(|step: &thaw_microvm::SetupProgress| eprintln!("{step}")),
    )
    .await
    .context("could not get the microVM runtime ready")?;
    let probe = driver.accel();
    if probe.accel == thaw_microvm::Accel::Tcg {
        eprintln!(
            "warning: KVM cannot run a standard guest here: using TCG, much slower ({})",
            probe.reason
        );
    }
    Ok(driver)
}

/// `thaw image build`: gets the microVM runtime of `config` ready without
/// serving: the guest image (built or found in the cache), the KVM/TCG
/// probe and the runtime's template (snapshot). Returns a summary line.
pub async fn build_microvm_runtime(config: Config) -> anyhow::Result<String> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "could not create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let shim = runtime_shim(&config)?;
    let driver = open_microvm(&config, &Jails::default(), shim).await?;
    let template = driver.template();
    Ok(format!(
        "image {} (kernel {}, initramfs {} MiB), {} template in {}",
        template.image.id,
        template.image.kernel_release,
        template.image.initramfs_bytes >> 20,
        match template.accel {
            thaw_microvm::Accel::Kvm => "KVM",
            thaw_microvm::Accel::Tcg => "TCG",
        },
        template.dir.display()
    ))
}

/// The shim runtimes run: the one given with `--shim`, else the one built
/// into thaw, written to the data directory.
fn runtime_shim(config: &Config) -> anyhow::Result<PathBuf> {
    match &config.shim {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the shim {}", path.display()))?;
            thaw_sandbox::write_shim(&config.data_dir, &source)
        }
        None => thaw_sandbox::write_builtin_shim(&config.data_dir),
    }
    .with_context(|| {
        format!(
            "could not write the runtime shim under {}",
            config.data_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_only_some_functions_use_are_small() {
        let base = PoolConfig {
            min_idle: 2,
            max_idle: 16,
            memory_budget: 512 << 20,
            parallel_starts: 2,
        };
        let main = pool_config(DriverKind::Process, &base, false);
        assert_eq!((main.min_idle, main.memory_budget), (2, 512 << 20));
        let line = pool_config(DriverKind::Process, &base, true);
        assert_eq!(
            (line.min_idle, line.max_idle, line.memory_budget),
            (1, 16, 128 << 20)
        );
        let vm = pool_config(DriverKind::Microvm, &base, true);
        assert_eq!((vm.min_idle, vm.parallel_starts), (1, 1));
    }

    #[test]
    fn the_host_budget_counts_pids_by_instance() {
        let set = HostBudget {
            memory_mb: Some(2048),
            pids: Some(1024),
        }
        .resolve();
        assert_eq!((set.max_instances, set.max_memory_mb), (4, 2048));
        let found = HostBudget::default().resolve();
        assert!(
            found.max_memory_mb > 0 && found.max_instances > 0,
            "{found:?}"
        );
    }
}
