//! `thaw bench`: measures, in one run on this machine, how fast thaw
//! answers a hello-world function (cold start through the gateway, warm
//! latency and throughput) beside the same work done by a bare Node `http`
//! server (the floor), a fresh `node` process per request (the naive way),
//! Cloudflare's workerd and Deno; how fast one large response streams
//! through thaw beside a bare Node server (`streaming.rs`); whether a
//! namespace's instance limit keeps a noisy tenant from slowing another
//! one down (`tenants.rs`); how
//! much faster the microVM driver's restore is than a boot; and writes
//! `docs/benchmarks.md` and its chart `docs/benchmarks.svg`.
//!
//! This crate owns the harness: starting and stopping the systems it
//! measures (its own `thaw up` included), its HTTP client, the statistics
//! and the report. It must not reach into the platform's internals: thaw is
//! driven only through its binary, its HTTP API and what `/proc` shows of
//! its processes, so the figures are what a user of thaw would see. The one
//! exception is the microVM section (`microvm.rs`): boot against restore
//! is a property of the microvm driver's mechanism, and thaw never boots a
//! VM on a request's path, so that section drives thaw-microvm's public
//! API directly, the way the driver does. It asserts nothing about speed;
//! it reports.

mod breakdown;
mod chart;
mod cluster;
mod error;
mod http;
mod load;
mod machine;
mod microvm;
mod peers;
mod procs;
mod report;
mod results;
mod stats;
mod streaming;
mod tenants;
mod thaw;
mod wire;

pub use error::{BenchError, Result};
pub use microvm::Plan as MicrovmPlan;

use load::WarmPlan;
use results::{Figure, Report, Role, SystemResult};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Systems and sections `--skip` accepts. thaw's Lambda row and the bare
/// Node server are measured unless only the microVM section runs: without
/// them the rest of the report says nothing.
pub const SKIPPABLE: &[&str] = &[
    "thaw-fetch",
    "thaw-unjailed",
    "naive",
    "workerd",
    "deno",
    "breakdown",
    "streaming",
    "tenants",
    "cluster",
    "microvm",
];

#[derive(Debug, Clone)]
pub struct Options {
    /// The `thaw` binary whose `thaw up` is measured.
    pub thaw_exe: PathBuf,
    /// The `node` binary, for thaw's runtimes and for the Node systems.
    pub node: PathBuf,
    /// Distinct functions per system for the cold-start figures.
    pub functions: usize,
    /// Length of each warm phase (sequential, then concurrent).
    pub duration: Duration,
    /// Concurrent clients of the throughput phase.
    pub connections: usize,
    /// Pause after each of thaw's cold calls.
    pub cold_gap: Duration,
    /// The markdown report; the chart goes beside it with `.svg`.
    pub out: PathBuf,
    pub skip: Vec<String>,
    /// The folder with the peers' npm packages (`bench/`); found by itself
    /// when not given.
    pub peers_dir: Option<PathBuf>,
    /// The command as typed, for the report.
    pub command_line: String,
    /// The microVM section: boots, restores, idle VMs, the image cache.
    pub microvm: MicrovmPlan,
    /// Run the microVM section and nothing else.
    pub only_microvm: bool,
    /// MiB of the streamed response, and how many times it is fetched.
    pub stream_mib: usize,
    pub stream_runs: usize,
}

impl Options {
    pub fn new(thaw_exe: PathBuf) -> Options {
        Options {
            thaw_exe,
            node: PathBuf::from("node"),
            functions: 50,
            duration: Duration::from_secs(5),
            connections: 4,
            cold_gap: Duration::from_millis(200),
            out: PathBuf::from("docs/benchmarks.md"),
            skip: Vec::new(),
            peers_dir: None,
            command_line: "thaw bench".into(),
            microvm: MicrovmPlan::default(),
            only_microvm: false,
            stream_mib: 100,
            stream_runs: 5,
        }
    }

    /// Small numbers, for tests: every system and every phase runs, briefly.
    pub fn quick(mut self) -> Options {
        self.functions = 3;
        self.duration = Duration::from_millis(500);
        self.connections = 2;
        self.cold_gap = Duration::from_millis(50);
        self.microvm.boots = 1;
        self.microvm.restores = 2;
        self.microvm.idle_vms = 2;
        self.stream_mib = 8;
        self.stream_runs = 1;
        self
    }

    fn skips(&self, what: &str) -> bool {
        self.skip.iter().any(|s| s == what) || (self.only_microvm && what != "microvm")
    }

    fn check(&self) -> Result<()> {
        for s in &self.skip {
            if !SKIPPABLE.contains(&s.as_str()) {
                return Err(BenchError::UnknownSkip(s.clone(), SKIPPABLE.join(", ")));
            }
        }
        let bad = |what: &str| Err(error::failed(what.to_string()));
        if self.functions == 0 || self.functions > 1000 {
            return bad("--functions must be between 1 and 1000");
        }
        if self.connections == 0 || self.connections > 256 {
            return bad("--connections must be between 1 and 256");
        }
        if self.duration < Duration::from_millis(100) || self.duration > Duration::from_secs(600) {
            return bad("--duration must be between 0.1 and 600 seconds");
        }
        if self.out.extension().is_some_and(|e| e == "svg") {
            return bad("--out names the markdown report (the chart goes beside it as .svg): pick a .md path");
        }
        if self.cold_gap > Duration::from_secs(10) {
            return bad("--cold-gap must be at most 10000 ms");
        }
        let m = &self.microvm;
        if !(1..=20).contains(&m.boots) {
            return bad("--microvm-boots must be between 1 and 20 (a boot takes ~8 s under TCG)");
        }
        if !(1..=100).contains(&m.restores) {
            return bad("--microvm-restores must be between 1 and 100");
        }
        if !(1..=16).contains(&m.idle_vms) {
            return bad("--microvm-vms must be between 1 and 16");
        }
        if self.only_microvm && self.skips("microvm") {
            return bad("--only microvm and --skip microvm leave nothing to measure");
        }
        Ok(())
    }
}

/// The command as a shell would take it back, the program named `thaw`.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    let quote = |a: &str| {
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@%+".contains(&b));
        if plain {
            a.to_string()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    let mut words: Vec<String> = args.into_iter().skip(1).map(|a| quote(&a)).collect();
    words.insert(0, "thaw".into());
    words.join(" ")
}

/// Unmeasured calls before each warm phase.
pub(crate) fn warmup_for(duration: Duration) -> Duration {
    (duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

pub(crate) fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// Progress through `n` steps: the first, every tenth and the last.
pub(crate) fn progress_n(what: &str, step: &str, i: usize, n: usize) {
    if i == 1 || i == n || i.is_multiple_of(10) {
        progress(&format!("{what}: {step} {i}/{n}"));
    }
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub markdown: PathBuf,
    /// None when only the microVM section ran: the chart has nothing to show.
    pub chart: Option<PathBuf>,
}

/// Measures every system and writes the report and the chart. Installs a
/// Ctrl-C/SIGTERM handler that stops every process the bench started.
pub fn run(options: &Options) -> Result<Written> {
    options.check()?;
    procs::install_interrupt_handler();
    let started = Instant::now();
    let plan = WarmPlan {
        duration: options.duration,
        warmup: warmup_for(options.duration),
        connections: options.connections,
    };
    let n = options.functions;
    let peer_dirs = peers::peer_dirs(options.peers_dir.as_deref(), &options.thaw_exe);
    let workerd = peers::find_binary("workerd", peers::WORKERD_PATHS, &peer_dirs);
    let deno = peers::find_binary("deno", peers::DENO_PATHS, &peer_dirs);
    let machine = machine::Machine::probe(
        &options.node,
        &options.thaw_exe,
        workerd.as_deref(),
        deno.as_deref(),
    );
    let microvm_plan = &options.microvm;
    let microvm_part = if options.skips("microvm") {
        String::new()
    } else {
        format!(
            "; microVM: {} boots, {} restores, {} idle VMs",
            microvm_plan.boots, microvm_plan.restores, microvm_plan.idle_vms
        )
    };
    if options.only_microvm {
        progress(&format!(
            "measuring on {} ({} logical CPUs): the microVM section only{microvm_part}",
            machine.cpu, machine.cores
        ));
    } else {
        progress(&format!(
            "measuring on {} ({} logical CPUs), node {}: {n} cold functions per system, {:.1} s warm phases, {} clients{microvm_part}",
            machine.cpu,
            machine.cores,
            machine.node,
            options.duration.as_secs_f64(),
            options.connections
        ));
    }

    let measured = if options.only_microvm {
        Systems::none("--only microvm")
    } else {
        measure_systems(options, &plan, workerd, deno)
    };
    // After the peers (their servers are stopped by now), on a `thaw up` of
    // its own, so that nothing the other sections left running is there.
    let tenants = if options.skips("tenants") {
        let why = if options.only_microvm {
            "--only microvm"
        } else {
            "--skip tenants"
        };
        Figure::Skipped(why.into())
    } else {
        progress(&format!(
            "tenants: namespace limits under a noisy neighbour ({} clients of `quiet`, {} of `noisy` held to max_instances = {})",
            options.connections,
            tenants::NOISY_CLIENTS,
            tenants::NOISY_LIMIT
        ));
        let t = Figure::from_result(tenants::measure(&options.thaw_exe, &options.node, &plan));
        if let Some(why) = t.failure() {
            progress(&format!("tenants: failed: {why}"));
        }
        t
    };
    // Two workers sharing a scratch PostgreSQL server, on their own.
    let cluster = if options.skips("cluster") {
        let why = if options.only_microvm {
            "--only microvm"
        } else {
            "--skip cluster"
        };
        Figure::Skipped(why.into())
    } else if let Some(why) = cluster::unavailable() {
        progress(&format!("cluster: not measured: {why}"));
        Figure::Skipped(why)
    } else {
        let c = Figure::from_result(cluster::measure(&options.thaw_exe, &options.node, &plan, n));
        if let Some(why) = c.failure() {
            progress(&format!("cluster: failed: {why}"));
        }
        c
    };
    // Last, so that the VMs' CPU (all of a core each under TCG) disturbs
    // no other figure.
    let microvm = if options.skips("microvm") {
        Figure::Skipped("--skip microvm".into())
    } else {
        progress(
            "microVM driver: boot against restore, through thaw-microvm as the driver uses it",
        );
        let m = Figure::from_result(microvm::measure(
            microvm_plan,
            &options.thaw_exe,
            &options.node,
        ));
        if let Some(why) = m.failure() {
            progress(&format!("microVM: failed: {why}"));
        }
        m
    };

    let report = Report {
        command_line: options.command_line.clone(),
        thaw_driver: measured.thaw_driver,
        machine,
        functions: n,
        duration: options.duration,
        connections: options.connections,
        cold_gap: options.cold_gap,
        systems: measured.systems,
        breakdown: measured.breakdown,
        streaming: measured.streaming,
        memory: measured.memory,
        microvm,
        tenants,
        cluster,
        pool_metrics: measured.pool_metrics,
        elapsed: started.elapsed(),
    };
    let written = write(&report, &options.out)?;
    let mut failed = Vec::new();
    for s in report.systems.iter().filter(|s| s.role != Role::Peer) {
        for (phase, why) in [
            ("cold start", s.cold.failure()),
            ("warm calls", s.warm.failure()),
        ] {
            if let Some(why) = why {
                failed.push(format!("{} {phase}: {why}", s.name));
            }
        }
    }
    if let Some(why) = report.tenants.failure() {
        failed.push(format!("tenants section: {why}"));
    }
    if let Some(why) = report.streaming.failure() {
        failed.push(format!("streaming section: {why}"));
    }
    if let Some(t) = report.tenants.measured() {
        for why in t.violations() {
            progress(&format!("tenants: failed: {why}"));
            failed.push(format!("tenants section: {why}"));
        }
    }
    if let Some(why) = report.cluster.failure() {
        failed.push(format!("cluster section: {why}"));
    }
    if let Some(why) = report.microvm.failure() {
        failed.push(format!("microVM section: {why}"));
    }
    if !failed.is_empty() {
        return Err(BenchError::Incomplete {
            written: written.markdown,
            failed,
        });
    }
    Ok(written)
}

/// What the sections on thaw's process driver and its peers found.
struct Systems {
    systems: Vec<SystemResult>,
    memory: Vec<results::Memory>,
    breakdown: Figure<results::Breakdown>,
    streaming: Figure<results::Streaming>,
    pool_metrics: Vec<String>,
    /// The driver `thaw up` announced.
    thaw_driver: String,
}

impl Systems {
    fn none(why: &str) -> Systems {
        Systems {
            systems: Vec::new(),
            memory: Vec::new(),
            breakdown: Figure::Skipped(why.into()),
            streaming: Figure::Skipped(why.into()),
            pool_metrics: Vec::new(),
            thaw_driver: format!("not started ({why})"),
        }
    }
}

fn measure_systems(
    options: &Options,
    plan: &WarmPlan,
    workerd: Option<PathBuf>,
    deno: Option<PathBuf>,
) -> Systems {
    let n = options.functions;
    let mut systems = Vec::new();
    let mut memory = Vec::new();
    let mut breakdown = Figure::Skipped("--skip breakdown".into());
    let mut streaming = Figure::Skipped("--skip streaming".into());
    let mut pool_metrics = Vec::new();
    let mut thaw_driver = "not started".to_string();

    progress("thaw: starting `thaw up`");
    match thaw::Platform::start(&options.thaw_exe, &options.node, &[]) {
        Ok(platform) => {
            progress(&format!(
                "thaw: up on http://{} (driver: {})",
                platform.addr, platform.driver
            ));
            thaw_driver = platform.driver.clone();
            systems.push(thaw::measure(
                &platform,
                thaw::Style::Lambda,
                n,
                options.cold_gap,
                plan,
            ));
            memory.extend(platform.memory("thaw"));
            if !options.skips("breakdown") {
                breakdown = Figure::from_result(breakdown::measure(
                    &platform,
                    n.min(20),
                    !options.skips("thaw-fetch"),
                ));
            }
            if !options.skips("thaw-fetch") {
                systems.push(thaw::measure(
                    &platform,
                    thaw::Style::Fetch,
                    n,
                    options.cold_gap,
                    plan,
                ));
            }
            if !options.skips("streaming") {
                progress(&format!(
                    "streaming: {} MiB in one response, through thaw and from a bare Node server, {} times each",
                    options.stream_mib, options.stream_runs
                ));
                streaming = Figure::from_result(streaming::measure(
                    &platform,
                    &options.node,
                    options.stream_mib,
                    options.stream_runs,
                ));
                if let Some(why) = streaming.failure() {
                    progress(&format!("streaming: failed: {why}"));
                }
            }
            if let Some(m) = platform.metrics() {
                pool_metrics = m
                    .lines()
                    .filter(|l| l.starts_with("thaw_pool_") || l.starts_with("thaw_runtime_"))
                    .map(str::to_string)
                    .collect();
            }
            let failed = systems.iter().any(|s| {
                matches!(s.cold, Figure::Failed(_)) || matches!(s.warm, Figure::Failed(_))
            });
            if failed {
                let tail = platform.log_tail();
                if !tail.is_empty() {
                    if let Some(s) = systems.last_mut() {
                        s.notes.push(format!("thaw up's last log lines: {tail}"));
                    }
                }
            }
            progress("thaw: stopping `thaw up`");
        }
        Err(e) => {
            let why = results::error_chain(&e);
            systems.push(SystemResult {
                name: "thaw".into(),
                short: "thaw".into(),
                role: Role::Thaw,
                cold_means: String::new(),
                cold: Figure::Failed(why.clone()),
                warm: Figure::Failed(why),
                warm_is_cold: false,
                notes: Vec::new(),
            });
        }
    }

    // What the jail costs: the same Lambda function on a platform whose
    // runtimes are plain processes. Only worth a row where thaw jails.
    if !options.skips("thaw-unjailed") && thaw_driver.contains("jailed") {
        progress("thaw without the jail: starting `thaw up --jail off`");
        match thaw::Platform::start(&options.thaw_exe, &options.node, &["--jail", "off"]) {
            Ok(platform) => {
                let mut result =
                    thaw::measure(&platform, thaw::Style::Lambda, n, options.cold_gap, plan);
                result.name = "thaw (Lambda handler, no jail)".into();
                result.short = "thaw, no jail".into();
                systems.push(result);
                memory.extend(
                    platform
                        .memory("thaw, no jail")
                        .into_iter()
                        .filter(|m| m.idle_instances),
                );
                progress("thaw without the jail: stopping `thaw up`");
            }
            Err(e) => progress(&format!(
                "thaw without the jail: could not start: {}",
                results::error_chain(&e)
            )),
        }
    }

    let (floor, floor_memory) = peers::measure_server(&peers::node_server(&options.node), n, plan);
    systems.push(floor);
    memory.extend(floor_memory);

    if options.skips("naive") {
        systems.push(peers::skipped(
            "fresh node per request",
            "node per request",
            Role::Peer,
            "--skip naive".into(),
        ));
    } else {
        systems.push(peers::measure_naive(&options.node, n, plan));
    }

    let missing = |name: &str| {
        format!(
            "no {name} binary found: run `cargo xtask setup` (it installs bench/'s npm packages), \
             or pass --peers DIR with DIR/node_modules holding the `{name}` package"
        )
    };
    let peer_systems = [
        (
            "workerd",
            "Cloudflare workerd",
            "workerd",
            workerd.map(peers::workerd_server),
        ),
        (
            "deno",
            "Deno (Deno.serve)",
            "Deno",
            deno.map(peers::deno_server),
        ),
    ];
    for (key, name, short, server) in peer_systems {
        if options.skips(key) {
            systems.push(peers::skipped(
                name,
                short,
                Role::Peer,
                format!("--skip {key}"),
            ));
            continue;
        }
        match server {
            Some(server) => {
                let (result, m) = peers::measure_server(&server, n, plan);
                systems.push(result);
                memory.extend(m);
            }
            None => {
                progress(&format!("{name}: skipped, {}", missing(key)));
                systems.push(peers::skipped(name, short, Role::Peer, missing(key)));
            }
        }
    }

    Systems {
        systems,
        memory,
        breakdown,
        streaming,
        pool_metrics,
        thaw_driver,
    }
}

fn write(report: &Report, out: &Path) -> Result<Written> {
    use error::Context as _;
    let chart = (!report.systems.is_empty()).then(|| out.with_extension("svg"));
    let chart_name = chart.as_ref().map(|c| {
        c.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "benchmarks.svg".into())
    });
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .context(|| format!("could not create {}", parent.display()))?;
    }
    std::fs::write(out, report::markdown(report, chart_name.as_deref()))
        .context(|| format!("could not write {}", out.display()))?;
    if let Some(chart) = &chart {
        let report_name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::write(chart, chart::svg(report, &report_name))
            .context(|| format!("could not write {}", chart.display()))?;
        progress(&format!("wrote {} and {}", out.display(), chart.display()));
    } else {
        progress(&format!("wrote {}", out.display()));
    }
    Ok(Written {
        markdown: out.to_path_buf(),
        chart,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        let args = [
            "/x/target/release/thaw",
            "bench",
            "--out",
            "my docs/b.md",
            "--skip",
            "deno",
        ];
        assert_eq!(
            super::command_line(args.map(String::from)),
            "thaw bench --out 'my docs/b.md' --skip deno"
        );
    }
}
