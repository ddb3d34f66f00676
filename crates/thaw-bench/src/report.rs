//! The markdown report: the tables, the targets, the breakdown, memory,
//! the exact command and the machine.

use crate::load::Warm;
use crate::results::{
    Breakdown, Cluster, Cold, Figure, Memory, Microvm, PoolTakes, Report, Role, SystemResult,
    Tenants,
};
use std::fmt::Write as _;
use std::time::Duration;

/// The budgets of DESIGN.md and issue 3.
pub const COLD_P50_TARGET: Duration = Duration::from_millis(3);
pub const COLD_P99_TARGET: Duration = Duration::from_millis(10);
pub const WARM_OVERHEAD_TARGET: Duration = Duration::from_micros(100);
pub const THROUGHPUT_TARGET: f64 = 0.80;
/// The microvm driver's goal: a restore answers this many times sooner
/// than a boot.
pub const MICROVM_SPEEDUP_TARGET: f64 = 10.0;

/// A duration for people: µs below a millisecond, ms below a second.
pub fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn why_not<T>(f: &Figure<T>) -> String {
    match f {
        Figure::Measured(_) => String::new(),
        Figure::Skipped(why) => format!("skipped: {why}"),
        Figure::Failed(why) => format!("failed: {}", why.replace('|', "\\|")),
    }
}

/// The bare Node server's warm figures, which the ratios are taken against.
fn floor(r: &Report) -> Option<&Warm> {
    r.systems
        .iter()
        .find(|s| s.role == Role::Floor)
        .and_then(|s| s.warm.measured())
}

/// Warm p50 over the floor's, in signed µs.
fn over_floor(w: &Warm, floor: &Warm) -> f64 {
    (w.latency.p50.as_secs_f64() - floor.latency.p50.as_secs_f64()) * 1e6
}

/// A share of the floor's throughput, in %.
fn percent(share: f64) -> String {
    if share < 0.1 {
        format!("{:.2} %", share * 100.0)
    } else {
        format!("{:.0} %", share * 100.0)
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// The report; `chart_file` is linked when there is a chart (there is
/// none when only the microVM section ran).
pub fn markdown(r: &Report, chart_file: Option<&str>) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    match chart_file {
        Some(chart_file) => {
            let _ = writeln!(
                w,
                "Measured by `thaw bench` on {}, every system in one run on the machine below, \
                 over loopback only. This file and [{chart_file}]({chart_file}) are written by that command: \
                 run it again rather than editing them.\n",
                r.machine.date
            );
        }
        None => {
            let _ = writeln!(
                w,
                "Measured by `thaw bench` on {}, in one run on the machine below: the microVM section \
                 only. This file is written by that command: run it again rather than editing it.\n",
                r.machine.date
            );
        }
    }
    let _ = writeln!(w, "```sh\n{}\n```\n", r.command_line);
    if let Some(chart_file) = chart_file {
        let _ = writeln!(
            w,
            "![cold start and warm call latency, and throughput]({chart_file})\n"
        );
    }
    if !r.systems.is_empty() {
        targets(w, r);
        cold_table(w, r);
        warm_table(w, r);
        breakdown(w, r);
        streaming(w, r);
        memory(w, r);
        tenants(w, r);
        cluster(w, r);
    }
    microvm(w, r);
    machine(w, r);
    if !r.systems.is_empty() {
        method(w, r);
    }
    notes(w, r);
    md
}

fn targets(w: &mut String, r: &Report) {
    let thaws: Vec<&SystemResult> = r.systems.iter().filter(|s| s.role == Role::Thaw).collect();
    if thaws.is_empty() {
        return;
    }
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(
        w,
        "The budgets of DESIGN.md (issue 3), for the `process` driver on a 2-core machine.\n"
    );
    let _ = write!(w, "| target |");
    for s in &thaws {
        let _ = write!(w, " {} |", s.name);
    }
    let _ = write!(w, "\n| --- |");
    for _ in &thaws {
        let _ = write!(w, " --- |");
    }
    let _ = writeln!(w);
    let floor = floor(r);
    type Cell<'a> = &'a dyn Fn(&SystemResult) -> Option<String>;
    let rows: [(&str, Cell); 4] = [
        ("cold start p50 ≤ 3 ms", &|s| {
            let c = s.cold.measured()?;
            Some(format!(
                "{} {}",
                human(c.summary.p50),
                verdict(c.summary.p50 <= COLD_P50_TARGET)
            ))
        }),
        ("cold start p99 ≤ 10 ms", &|s| {
            let c = s.cold.measured()?;
            Some(format!(
                "{} {}",
                human(c.summary.p99),
                verdict(c.summary.p99 <= COLD_P99_TARGET)
            ))
        }),
        ("warm call p50 ≤ 100 µs over bare Node", &|s| {
            let (t, f) = (s.warm.measured()?, floor?);
            let over = over_floor(t, f);
            Some(format!(
                "{} {}",
                signed(t.latency.p50, f.latency.p50),
                verdict(over <= WARM_OVERHEAD_TARGET.as_secs_f64() * 1e6)
            ))
        }),
        ("throughput ≥ 80 % of bare Node", &|s| {
            let (t, f) = (s.warm.measured()?, floor?);
            let share = t.rps / f.rps;
            Some(format!(
                "{} {}",
                percent(share),
                verdict(share >= THROUGHPUT_TARGET)
            ))
        }),
    ];
    for (target, figure) in rows {
        let _ = write!(w, "| {target} |");
        for s in &thaws {
            let _ = write!(
                w,
                " {} |",
                figure(s).unwrap_or_else(|| "not measured".into())
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "| idle instance memory (PSS) | see [Idle memory](#idle-memory-pss) |{}\n",
        " |".repeat(thaws.len() - 1)
    );
}

fn cold_table(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## Cold start\n");
    let _ = writeln!(
        w,
        "The first call of a function that has nothing running for it, over {} distinct functions \
         per system, one at a time.\n",
        r.functions
    );
    let _ = writeln!(w, "| system | p50 | p90 | p99 | samples | what is timed |");
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | --- |");
    for s in &r.systems {
        match &s.cold {
            Figure::Measured(Cold {
                summary,
                attempted,
                confirmed,
                ..
            }) => {
                let samples = match confirmed {
                    Some(c) => format!("{} ({c} of {attempted} confirmed cold)", summary.n),
                    None => format!("{}", summary.n),
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {samples} | {} |",
                    s.name,
                    human(summary.p50),
                    human(summary.p90),
                    human(summary.p99),
                    s.cold_means
                );
            }
            other => {
                let _ = writeln!(w, "| {} | – | – | – | – | {} |", s.name, why_not(other));
            }
        }
    }
    let _ = writeln!(w);
}

fn warm_table(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## Warm calls\n");
    let _ = writeln!(
        w,
        "Latency: one client calling back to back on one keep-alive connection for {:.1} s. \
         Throughput: {} clients, one keep-alive connection each, calling back to back for {:.1} s. \
         Ratios are against the bare Node server.\n",
        r.duration.as_secs_f64(),
        r.connections,
        r.duration.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "| system | p50 | p99 | p50 over bare Node | requests/s | of bare Node's | calls timed | failed calls |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let floor = floor(r);
    for s in &r.systems {
        match &s.warm {
            Figure::Measured(warm) => {
                let (over, share) = match floor {
                    Some(f) if s.role != Role::Floor => (
                        signed(warm.latency.p50, f.latency.p50),
                        percent(warm.rps / f.rps),
                    ),
                    Some(_) => ("0 (the floor)".into(), "100 %".into()),
                    None => ("–".into(), "–".into()),
                };
                let name = if s.warm_is_cold {
                    format!("{} (every call cold)", s.name)
                } else {
                    s.name.clone()
                };
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {over} | {:.0} | {share} | {} | {} |",
                    human(warm.latency.p50),
                    human(warm.latency.p99),
                    warm.rps,
                    warm.latency.n,
                    warm.errors
                );
            }
            other => {
                let _ = writeln!(
                    w,
                    "| {} | – | – | – | – | – | – | {} |",
                    s.name,
                    why_not(other)
                );
            }
        }
    }
    let _ = writeln!(w);
}

/// A section's heading, and its figures, or a line saying why there are
/// none.
fn heading<'a, T>(w: &mut String, title: &str, f: &'a Figure<T>) -> Option<&'a T> {
    let _ = writeln!(w, "## {title}\n");
    if f.measured().is_none() {
        let _ = writeln!(w, "Not measured ({}).\n", why_not(f));
    }
    f.measured()
}

fn breakdown(w: &mut String, r: &Report) {
    let Some(b) = heading(w, "Where the cold path spends its time", &r.breakdown) else {
        return;
    };
    let _ = writeln!(
        w,
        "The bench starts a runtime by hand {} times, with the command line and environment of a \
         runtime the running `thaw up` started (`{}`), speaks the wire protocol to it and times \
         each step; it waits 250 ms between `ready` and `init`, as a runtime taken from a pool \
         has waited. Then it sets the steps beside the cold and warm calls measured above through \
         the gateway (Lambda handler).\n",
        b.ready.n,
        b.command.replace('`', "'")
    );
    if b.jailed {
        let _ = writeln!(
            w,
            "thaw runs its runtimes in a jail here; the bench starts Node with the shim outside it, so \
             steps 1 to 3 leave out what the jail costs (its setup, and its view of the files), and the \
             rest below counts it with the gateway and the scheduler.\n"
        );
    }
    let _ = writeln!(w, "| step | p50 | p99 |");
    let _ = writeln!(w, "| --- | ---: | ---: |");
    let row = |w: &mut String, what: &str, p50: Duration, p99: Duration| {
        let _ = writeln!(w, "| {what} | {} | {} |", human(p50), human(p99));
    };
    row(w, "1. start Node with the shim until it sends `ready` (a pre-started runtime takes this off the call)", b.ready.p50, b.ready.p99);
    row(
        w,
        "2. `init` → `init_ok`: attach the function, import its module (Lambda handler)",
        b.init.p50,
        b.init.p99,
    );
    row(
        w,
        "3. `invoke` → `result`: the first call in a fresh runtime (Lambda handler)",
        b.first_invoke.p50,
        b.first_invoke.p99,
    );
    if let Some((init, invoke)) = &b.fetch {
        row(w, "2. the same with the fetch handler", init.p50, init.p99);
        row(
            w,
            "3. the same with the fetch handler",
            invoke.p50,
            invoke.p99,
        );
    }
    let sum = b.ready.p50 + b.init.p50 + b.first_invoke.p50;
    let _ = writeln!(w, "| 1 + 2 + 3 at p50: a cold start that starts Node on the call's path, before any gateway | {} | |", human(sum));
    let thaw = r
        .systems
        .iter()
        .find(|s| s.role == Role::Thaw && s.cold.measured().is_some());
    let Some(thaw) = thaw else {
        let _ = writeln!(w);
        return;
    };
    let cold = thaw.cold.measured().expect("found above").summary;
    row(
        w,
        &format!("cold call through the gateway, {}", thaw.name),
        cold.p50,
        cold.p99,
    );
    let warm = thaw.warm.measured().map(|x| x.latency);
    if let Some(warm) = warm {
        row(
            w,
            &format!("warm call through the gateway, {}", thaw.name),
            warm.p50,
            warm.p99,
        );
    }
    let _ = writeln!(w);
    let attach = b.init.p50 + b.first_invoke.p50;
    if cold.p50 < b.ready.p50 {
        let _ = write!(
            w,
            "At p50 the cold call ({}) takes less than starting Node with the shim does ({}): the runtime \
             was started before the call came. What is left on the path is attaching the code and the \
             first call ({} for steps 2 and 3)",
            human(cold.p50),
            human(b.ready.p50),
            human(attach),
        );
        if cold.p50 >= attach {
            let _ = writeln!(
                w,
                " plus the gateway, the scheduler and the hand-over ({}).",
                minus(cold.p50, attach)
            );
        } else {
            let _ = writeln!(
                w,
                ", though done by hand they take longer than the whole cold call: the platform's \
                 runtimes are readier than the ones started here, so the rest cannot be split out."
            );
        }
    } else {
        let _ = writeln!(
            w,
            "At p50 the cold call ({}) takes at least as long as starting Node with the shim ({}): Node is \
             started on the call's path. Taking a pre-started runtime instead would leave steps 2 and 3 \
             ({}) plus what the gateway and the scheduler add ({} here, beyond steps 1 to 3).",
            human(cold.p50),
            human(b.ready.p50),
            human(attach),
            minus(cold.p50, sum)
        );
    }
    if let Some(warm) = warm {
        let _ = writeln!(
            w,
            "A warm call's whole round trip through the gateway is {} at p50, so the cold start itself \
             costs about {} over a warm call.",
            human(warm.p50),
            minus(cold.p50, warm.p50)
        );
    }
    if cold.p50 > COLD_P50_TARGET {
        let rest = cold.p50.saturating_sub(attach);
        let steps = [
            ("attaching the code (step 2)", b.init.p50),
            ("the first call in the runtime (step 3)", b.first_invoke.p50),
            (
                "the gateway, the scheduler and the hand-over (the rest)",
                rest,
            ),
        ];
        let (what, largest) = steps.iter().max_by_key(|(_, d)| *d).expect("three steps");
        let _ = writeln!(
            w,
            "To meet the 3 ms p50 budget the cold path must lose {}; its largest part is {what}, {} at p50.",
            human(cold.p50 - COLD_P50_TARGET),
            human(*largest)
        );
    }
    let fetch_cold = r
        .systems
        .iter()
        .filter(|s| s.role == Role::Thaw)
        .filter_map(|s| s.cold.measured())
        .nth(1);
    if let (Some((init, invoke)), Some(fetch_cold)) = (&b.fetch, fetch_cold) {
        let _ = writeln!(
            w,
            "\nWith the fetch handler, steps 2 and 3 take {} at p50 (the Lambda handler: {}), and its cold \
             call through the gateway {}.",
            human(init.p50 + invoke.p50),
            human(attach),
            human(fetch_cold.summary.p50)
        );
    }
    for s in r.systems.iter().filter(|s| s.role == Role::Thaw) {
        if let Some(PoolTakes { hits, misses }) = s.cold.measured().and_then(|c| c.pool_takes) {
            let _ = writeln!(
                w,
                "\n{}: of the {} cold starts during its first calls, {hits} took a pre-started runtime from \
                 the pool and {misses} started Node on the call's path (`thaw_pool_takes_total` in `/metrics`).",
                s.name,
                hits + misses
            );
        }
    }
    if !r.pool_metrics.is_empty() {
        let _ = writeln!(
            w,
            "\nThe platform's pool at the end of the run (`/metrics`):\n\n```\n{}\n```",
            r.pool_metrics.join("\n")
        );
    }
    let _ = writeln!(w);
}

/// `a - b` for people, signed only when negative.
/// Title of the streaming section.
pub const STREAMING_TITLE: &str = "Streaming one large response";

fn streaming(w: &mut String, r: &Report) {
    let Some(s) = heading(w, STREAMING_TITLE, &r.streaming) else {
        return;
    };
    let _ = writeln!(
        w,
        "One response of {} MiB, fetched whole over a fresh loopback connection and read as fast as it \
         comes: thaw's fetch handler returns a `ReadableStream` of 256 KiB chunks; the bare Node server \
         writes the same chunks with backpressure. Median of the runs.\n",
        s.mib
    );
    let _ = writeln!(
        w,
        "| system | time to first byte | whole response | throughput |\n| --- | ---: | ---: | ---: |"
    );
    for row in &s.rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.0} MiB/s |",
            row.system,
            human(row.first_byte),
            human(row.whole),
            row.mib_per_s(s.mib)
        );
    }
    if let [thaw, bare] = &s.rows[..] {
        let _ = writeln!(
            w,
            "\nthaw streams at {} of the bare server's rate; its time to first byte is {} against the server's.",
            percent(thaw.mib_per_s(s.mib) / bare.mib_per_s(s.mib).max(1e-9)),
            signed(thaw.first_byte, bare.first_byte)
        );
    }
    let _ = writeln!(w);
}

fn minus(a: Duration, b: Duration) -> String {
    signed(a, b).trim_start_matches('+').to_string()
}

/// `a - b` for people, with its sign.
fn signed(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", human(a - b))
    } else {
        format!("−{}", human(b - a))
    }
}

fn memory(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## Idle memory (PSS)\n");
    let _ = writeln!(
        w,
        "Proportional set size from `/proc/PID/smaps_rollup`: private pages plus a fair share of pages \
         shared with other processes (Node's code pages are shared by every runtime), measured while idle \
         after the warm phase.\n"
    );
    let _ = writeln!(
        w,
        "| processes | count | PSS each (median) | min – max | total |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: |");
    for m in &r.memory {
        match Spread::of(&m.pss) {
            None => {
                let _ = writeln!(w, "| {} | 0 | – | – | – |", m.what);
            }
            Some(p) => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} – {} | {} |",
                    m.what,
                    p.count,
                    mib(p.median),
                    mib(p.min),
                    mib(p.max),
                    mib(p.total)
                );
            }
        }
    }
    let _ = writeln!(w);
}

/// `b / a` as a factor: "1.07×".
fn ratio(b: f64, a: f64) -> String {
    if a <= 0.0 {
        return "–".into();
    }
    format!("{:.2}×", b / a)
}

/// The title of the tenants section, which the tests look for.
pub const TENANTS_TITLE: &str = "Namespace limits: a noisy neighbour";

fn tenants(w: &mut String, r: &Report) {
    let Some(t) = heading(w, TENANTS_TITLE, &r.tenants) else {
        return;
    };
    let Tenants {
        clients,
        noisy_clients,
        noisy_limit,
        noisy_work,
        duration,
        warmup,
        alone,
        beside,
        noisy,
    } = t;
    let work = human(*noisy_work);
    let _ = writeln!(
        w,
        "The claim (docs/api.md, \"Limits per namespace\"): a tenant asking for more instances than its \
         limit gets `429 namespace_limit`, while another tenant's calls keep their latency.\n"
    );
    let _ = writeln!(
        w,
        "The bench starts a `thaw up` of its own for this section and, as the admin, makes two namespaces \
         through the API, `noisy` with `max_instances = {noisy_limit}` and `quiet` with the defaults, and a \
         deploy key for each; each key deploys its tenant's function with `PUT /v1/functions/{{name}}`, into \
         the key's own namespace. quiet's (`/ns/quiet/fn/hello/`) is the hello-world Lambda handler of the \
         sections above. noisy's (`/ns/noisy/fn/work/`) awaits a {work} timer before it answers: each call \
         holds its instance for {work} without using the CPU. The limit counts instances, and a call held on \
         a timer asks for them as a busy one does; a busy loop would also let noisy's {noisy_limit} instances \
         (each may use a core) take {noisy_limit} cores, which on a small host measures the machine running \
         out of CPU rather than the limit.\n"
    );
    let _ = writeln!(
        w,
        "- **A, quiet alone**: {clients} clients, one keep-alive connection each, call quiet back to back for \
         {:.1} s, after {:.1} s of unmeasured calls that start one instance per client. p50 and p99 are over \
         every call of every client; requests/s counts good answers.\n\
         - **B, quiet beside noisy**: the same, while {noisy_clients} clients call noisy back to back, from \
         the start of quiet's unmeasured calls to the end of its measured ones; noisy's answers are counted \
         while quiet is measured. At most {noisy_limit} of noisy's calls can hold an instance; the others are \
         refused at once and their clients call again, so most of noisy's calls are answered by the gateway \
         alone. The bench's client threads run on the same machine as thaw.\n\n\
         It runs with the command at the top of this page: `--duration` sets the length of each measured \
         phase, `--connections` quiet's clients, and `--skip tenants` leaves the section out.\n",
        duration.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "| quiet (namespace `quiet`, default limits) | p50 | p99 | requests/s | calls timed | failed calls |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (phase, p) in [("A. alone", alone), ("B. while noisy is hammered", beside)] {
        let _ = writeln!(
            w,
            "| {phase} | {} | {} | {:.0} | {} | {} |",
            human(p.latency.p50),
            human(p.latency.p99),
            p.rps,
            p.latency.n,
            p.failed
        );
    }
    let secs = |d: Duration| d.as_secs_f64();
    let _ = writeln!(
        w,
        "| B ÷ A | {} | {} | {} | | |\n",
        ratio(secs(beside.latency.p50), secs(alone.latency.p50)),
        ratio(secs(beside.latency.p99), secs(alone.latency.p99)),
        ratio(beside.rps, alone.rps)
    );
    let _ = writeln!(
        w,
        "| noisy's answers during B (namespace `noisy`, max_instances = {noisy_limit}, {noisy_clients} clients) | answers | per second | share |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
    let total = noisy.total();
    let per_second = |n: u64| format!("{:.0}", n as f64 / noisy.seconds.max(1e-9));
    let share = |n: u64| {
        if total == 0 {
            "–".to_string()
        } else {
            percent(n as f64 / total as f64)
        }
    };
    for (what, n) in [
        ("200: served by its instances", noisy.ok),
        (
            "429 `namespace_limit`: refused for its limit",
            noisy.limited,
        ),
        ("other", noisy.other),
        ("all", total),
    ] {
        let _ = writeln!(w, "| {what} | {n} | {} | {} |", per_second(n), share(n));
    }
    let _ = writeln!(w);
    let cores = r.machine.cores;
    let _ = writeln!(
        w,
        "| CPU while quiet was measured, in cores (this host has {cores}) | A | B |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: |");
    let (a, b) = (&alone.cpu, &beside.cpu);
    for (what, a, b) in [
        (
            "thaw up itself (gateway, scheduler, registry)",
            a.thaw_up,
            b.thaw_up,
        ),
        (
            "the runtimes thaw up started (both tenants' instances, pre-started runtimes, jails)",
            a.runtimes,
            b.runtimes,
        ),
        ("the bench (its client threads)", a.bench, b.bench),
        (
            "together",
            a.thaw_up + a.runtimes + a.bench,
            b.thaw_up + b.runtimes + b.bench,
        ),
    ] {
        let _ = writeln!(w, "| {what} | {a:.2} | {b:.2} |");
    }
    let _ = writeln!(w);
    let most = noisy_work.as_secs_f64().recip() * f64::from(*noisy_limit);
    let _ = write!(
        w,
        "{noisy_limit} instances each holding a call for {work} serve at most {most:.0} calls/s; noisy's \
         200s came at {}/s. ",
        per_second(noisy.ok)
    );
    match noisy.peak_instances {
        Some(peak) => {
            let _ = writeln!(
                w,
                "`GET /v1/namespaces/noisy`, asked every {} ms during B ({} answers), counted at most \
                 {peak} instances of noisy (its limit: {noisy_limit}).",
                crate::tenants::POLL_EVERY.as_millis(),
                noisy.polls
            );
        }
        None => {
            let _ = writeln!(
                w,
                "`GET /v1/namespaces/noisy` did not answer during B, so noisy's instances were not counted."
            );
        }
    }
    if let Some(first) = &noisy.first_other {
        let _ = writeln!(
            w,
            "The first of noisy's other answers: {}.",
            first.replace('|', "\\|")
        );
    }
    let violations = t.violations();
    if violations.is_empty() {
        let instances = noisy
            .peak_instances
            .map(|p| format!(", ran at most {p} instances at once"))
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "\nThe limit held: noisy was refused {} calls ({} of its answers){instances}, and every call of \
             quiet answered 200 `hello world`. The bench fails this section when noisy gets no 429, runs more \
             instances than its limit, or quiet gets any other answer; it asserts nothing about speed.\n",
            noisy.limited,
            share(noisy.limited)
        );
    } else {
        let _ = writeln!(w, "\n**Failed**:\n");
        for v in violations {
            let _ = writeln!(w, "- {}", v.replace('|', "\\|"));
        }
        let _ = writeln!(w);
    }
}

/// The title of the cluster section, which the tests look for.
pub const CLUSTER_TITLE: &str = "Many hosts: the forwarding hop and warm hits";

fn cluster(w: &mut String, r: &Report) {
    let Some(c) = heading(w, CLUSTER_TITLE, &r.cluster) else {
        return;
    };
    let Cluster {
        home,
        forwarded,
        functions,
        rounds,
        calls,
        warm,
        away_from_home,
    } = c;
    let _ = writeln!(
        w,
        "Two `thaw up` workers share one PostgreSQL registry (a scratch server the bench starts from the \
         host's packages), both on this machine's loopback (docs/cluster.md). Each function has a home \
         worker; a call landing on the other one is forwarded there over a kept-alive connection. The \
         hello-world Lambda handler is called by one client through its home and through the other \
         worker in turn (one call each, back to back, each on its keep-alive connection: latency), then by \
         several clients through each for throughput, as the warm rows above are measured. Between \
         hosts, add the network's round trip to the hop.\n"
    );
    let _ = writeln!(
        w,
        "| the call lands on | p50 | p99 | requests/s ({} clients) | failed calls |",
        home.connections
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: |");
    for (what, m) in [
        ("the function's home", home),
        ("the other worker, which forwards it", forwarded),
    ] {
        let _ = writeln!(
            w,
            "| {what} | {} | {} | {:.0} | {} |",
            human(m.latency.p50),
            human(m.latency.p99),
            m.rps,
            m.errors
        );
    }
    let secs = |d: Duration| d.as_secs_f64();
    let _ = writeln!(
        w,
        "| forwarded ÷ home | {} | {} | {} | |\n",
        ratio(secs(forwarded.latency.p50), secs(home.latency.p50)),
        ratio(secs(forwarded.latency.p99), secs(home.latency.p99)),
        ratio(forwarded.rps, home.rps)
    );
    let _ = writeln!(
        w,
        "The hop costs {} at p50 ({} at p99). Then {functions} functions, deployed through both workers, \
         were called once each and {rounds} more rounds through the two workers in turn: {warm} of those \
         {calls} calls found a warm instance (warm hit ratio {:.4}), and {away_from_home} were served by \
         another worker than the first call's.\n",
        signed(forwarded.latency.p50, home.latency.p50),
        signed(forwarded.latency.p99, home.latency.p99),
        c.warm_ratio()
    );
}

/// PSS figures of processes of one kind, in bytes.
struct Spread {
    count: usize,
    /// The lower median.
    median: u64,
    mean: u64,
    min: u64,
    max: u64,
    total: u64,
}

impl Spread {
    fn of(pss: &[u64]) -> Option<Spread> {
        if pss.is_empty() {
            return None;
        }
        let mut sorted = pss.to_vec();
        sorted.sort_unstable();
        let total: u64 = sorted.iter().sum();
        Some(Spread {
            count: sorted.len(),
            median: sorted[(sorted.len() - 1) / 2],
            mean: total / sorted.len() as u64,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            total,
        })
    }
}

fn microvm(w: &mut String, r: &Report) {
    let Some(m) = heading(w, "microVM driver: boot against restore", &r.microvm) else {
        return;
    };
    let _ = writeln!(
        w,
        "thaw's `microvm` driver never boots a VM on a request's path: it restores one from the \
         runtime's template, then attaches the function's code (`docs/microvm.md`). Since no \
         call through the platform ever boots, the bench drives thaw-microvm's public API directly, \
         the way the driver does: it boots {} VMs from scratch and restores {} from a template made \
         in the same run, one at a time, each until it answers its first call (`init` of the Lambda \
         hello function, then one call of `GET /` over the protocol port). Then it restores {} VMs \
         side by side, lets each answer once, pauses them (as thaw pauses an idle instance) and reads \
         the PSS of each QEMU process.\n",
        m.boot_answer.n,
        m.restore_answer.n,
        m.idle_pss.len()
    );
    let _ = writeln!(w, "| step | p50 | min – max | samples |");
    let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
    let row = |w: &mut String, what: &str, s: &crate::stats::Summary| {
        let _ = writeln!(
            w,
            "| {what} | {} | {} – {} | {} |",
            human(s.p50),
            human(s.min),
            human(s.max),
            s.n
        );
    };
    row(
        w,
        "boot: QEMU started until the runtime's `ready`",
        &m.boot_ready,
    );
    row(
        w,
        "**boot to first answer** (the hello function is in the image: a booted VM has no code drive)",
        &m.boot_answer,
    );
    row(
        w,
        "restore: QEMU started from the template until the guest runs again (`cont`, clock set)",
        &m.restore_running,
    );
    row(
        w,
        "restore: and the function's EROFS image attached and mounted at `/code`",
        &m.restore_attached,
    );
    row(
        w,
        "**restore to first answer** (and `ready`, `init`, the first call)",
        &m.restore_answer,
    );
    let _ = writeln!(
        w,
        "| the template, made once: one boot, then the snapshot ({} KiB of device state) | {} | | 1 |\n",
        m.template_state_bytes >> 10,
        human(m.template_made)
    );
    let speedup = m.speedup();
    let _ = writeln!(
        w,
        "Boot ÷ restore, to the first answer at p50: **{speedup:.1}×** (the goal: at least {MICROVM_SPEEDUP_TARGET:.0}×, {}).\n",
        verdict(speedup >= MICROVM_SPEEDUP_TARGET)
    );
    let _ = writeln!(
        w,
        "| processes | count | PSS each (median) | mean | min – max | a VM's median over this |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let vms = Spread::of(&m.idle_pss);
    let spread_row = |w: &mut String, what: &str, p: &Spread, ratio: &str| {
        let _ = writeln!(
            w,
            "| {what} | {} | {} | {} | {} – {} | {ratio} |",
            p.count,
            mib(p.median),
            mib(p.mean),
            mib(p.min),
            mib(p.max)
        );
    };
    if let Some(vms) = &vms {
        spread_row(
            w,
            &format!(
                "microVM: idle restored VMs (QEMU with a {} MiB guest, paused after one answer)",
                m.guest_memory_mib
            ),
            vms,
            "",
        );
    }
    for instances in r.memory.iter().filter(|x| x.idle_instances) {
        if let (Some(vms), Some(p)) = (&vms, Spread::of(&instances.pss)) {
            let ratio = format!("{:.1}×", vms.median as f64 / p.median.max(1) as f64);
            spread_row(w, &process_driver(instances), &p, &ratio);
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Accelerator: {} ({}). QEMU {}. Guest image {} (kernel {}, {} initramfs), {} MiB of guest RAM; {}.\n",
        m.accel,
        m.accel_reason.replace('|', "\\|"),
        m.jail.replace('|', "\\|"),
        m.image_id,
        m.kernel_release,
        mib(m.initramfs_bytes),
        m.guest_memory_mib,
        m.qemu
    );
}

/// An idle-instances row of the memory table, named for the microVM
/// section: "thaw: idle function instances (...)" under the process driver.
fn process_driver(m: &Memory) -> String {
    match m.what.split_once(": ") {
        Some((system, rest)) => format!("{system}, process driver: {rest}"),
        None => m.what.clone(),
    }
}

fn machine(w: &mut String, r: &Report) {
    let m = &r.machine;
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n| --- | --- |");
    let _ = writeln!(w, "| CPU | {} |", m.cpu);
    let _ = writeln!(w, "| logical CPUs | {} |", m.cores);
    let _ = writeln!(w, "| memory | {} |", m.memory);
    let _ = writeln!(w, "| kernel | Linux {} |", m.kernel);
    let _ = writeln!(w, "| Node.js | {} |", m.node);
    let _ = writeln!(w, "| thaw | {} |", m.thaw);
    if !r.systems.is_empty() {
        let _ = writeln!(
            w,
            "| thaw's driver, as `thaw up` announced it | {} |",
            r.thaw_driver
        );
        let _ = writeln!(
            w,
            "| workerd | {} |",
            m.workerd.as_deref().unwrap_or("not found")
        );
        let _ = writeln!(w, "| Deno | {} |", m.deno.as_deref().unwrap_or("not found"));
    }
    let _ = writeln!(
        w,
        "| load average at the start (1, 5, 15 min) | {} |",
        m.load
    );
    let _ = writeln!(w, "| run took | {:.0} s |\n", r.elapsed.as_secs_f64());
}

fn method(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## How it is measured\n");
    let _ = writeln!(
        w,
        "- Every system answers `GET /` (thaw: `GET /fn/NAME/`) with the 11-byte text `hello world`; \
         every answer's status and body are checked.\n\
         - The client is the bench's own HTTP/1.1 client in Rust over loopback TCP (`TCP_NODELAY`): \
         a sample is the wall time from writing the request to reading the last byte of the body.\n\
         - thaw: the bench starts its own `thaw up` (the `thaw` binary that runs the bench) on a scratch \
         data directory and a free loopback port and deploys through the HTTP API, like `thaw deploy`. \
         Cold: {n} functions are deployed with `keep_alive = 0`; the bench waits until `GET /v1/functions` \
         shows none of them running, waits 1 s more, then calls each once on a new connection (opened \
         before the timer starts), {gap} ms apart; a call counts as cold only if the platform says so \
         (`x-thaw-start: cold`). Warm: a function deployed with default settings.\n\
         - bare Node, Deno and workerd: cold is the time from spawning a new server process (its own \
         script or worker) to the end of its first answer, found by connecting every 0.1 ms until \
         the port accepts: these systems start a new function no faster than that here. workerd and \
         Deno are the native binaries of their npm packages (`bench/package.json`).\n\
         - fresh node per request: `node handler.js` runs a Lambda-style handler and prints its body; \
         the time is spawn to exit. Every call is cold, so its warm figures repeat the measurement.\n\
         - Before each warm phase, {warmup:.1} s of unmeasured calls; the thaw warm phase starts new \
         instances there (one per concurrent client) so that none starts while measured.\n\
         - Percentiles are nearest-rank over all samples of the phase; no sample is dropped.",
        n = r.functions,
        gap = r.cold_gap.as_millis(),
        warmup = crate::warmup_for(r.duration).as_secs_f64(),
    );
    let _ = writeln!(w);
}

fn notes(w: &mut String, r: &Report) {
    let with_notes: Vec<&SystemResult> = r.systems.iter().filter(|s| !s.notes.is_empty()).collect();
    if with_notes.is_empty() {
        return;
    }
    let _ = writeln!(w, "## Notes\n");
    for s in with_notes {
        for n in &s.notes {
            let _ = writeln!(w, "- {}: {n}", s.name);
        }
    }
    let _ = writeln!(w);
}

/// The microVM section in one line, for the chart's caption.
pub fn microvm_line(m: &Microvm) -> String {
    let pss = Spread::of(&m.idle_pss)
        .map(|p| format!(" · idle restored VM {} PSS (median)", mib(p.median)))
        .unwrap_or_default();
    format!(
        "boot to first answer {} · restore to first answer {} · {:.1}× (p50){pss}",
        human(m.boot_answer.p50),
        human(m.restore_answer.p50),
        m.speedup()
    )
}

/// Breakdown steps, for the chart's caption.
pub fn breakdown_line(b: &Breakdown) -> String {
    format!(
        "runtime start {} · attach code {} · first call {} (p50)",
        human(b.ready.p50),
        human(b.init.p50),
        human(b.first_invoke.p50)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::stats::Summary;

    const MIB: u64 = 1 << 20;

    fn summary(ms: &[u64]) -> Summary {
        let samples: Vec<Duration> = ms.iter().map(|m| Duration::from_millis(*m)).collect();
        Summary::of(&samples).unwrap()
    }

    fn microvm(boots: &[u64], restores: &[u64]) -> Microvm {
        Microvm {
            accel: "TCG".into(),
            accel_reason: "/dev/kvm is there but a probe VM did not boot under it".into(),
            jail: "ran in thaw's jail".into(),
            qemu: "QEMU emulator version 7.2.0".into(),
            image_id: "0123abcd".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            initramfs_bytes: 104 * MIB,
            guest_memory_mib: 512,
            boot_ready: summary(&[7_600, 7_900, 8_100]),
            boot_answer: summary(boots),
            template_made: Duration::from_millis(10_400),
            template_state_bytes: 61 << 10,
            restore_running: summary(&[97, 120, 141]),
            restore_attached: summary(&[205, 240, 276]),
            restore_answer: summary(restores),
            idle_pss: vec![94 * MIB, 90 * MIB, 96 * MIB, 92 * MIB],
        }
    }

    /// A report of the microVM section alone, as `--only microvm` writes.
    fn microvm_only(microvm: Figure<Microvm>, memory: Vec<Memory>) -> Report {
        Report {
            command_line: "thaw bench --only microvm".into(),
            thaw_driver: "not started (--only microvm)".into(),
            machine: Machine {
                cpu: "AMD EPYC".into(),
                cores: 2,
                kernel: "6.1.0".into(),
                memory: "23.5 GiB".into(),
                node: "v20.20.2".into(),
                thaw: "0.1.0".into(),
                workerd: None,
                deno: None,
                date: "2026-11-22 17:08 UTC".into(),
                load: "0.5 0.5 0.5".into(),
            },
            functions: 50,
            duration: Duration::from_secs(5),
            connections: 4,
            cold_gap: Duration::from_millis(200),
            systems: Vec::new(),
            breakdown: Figure::Skipped("--only microvm".into()),
            streaming: Figure::Skipped("--only microvm".into()),
            memory,
            microvm,
            tenants: Figure::Skipped("--only microvm".into()),
            cluster: Figure::Skipped("--only microvm".into()),
            pool_metrics: Vec::new(),
            elapsed: Duration::from_secs(60),
        }
    }

    fn section<'a>(md: &'a str, title: &str) -> &'a str {
        let start = md.find(&format!("## {title}\n")).expect("the section");
        let rest = &md[start + 3..];
        &rest[..rest.find("\n## ").unwrap_or(rest.len())]
    }

    #[test]
    fn the_microvm_section_sets_boot_beside_restore() {
        let instances = Memory {
            what: "thaw: idle function instances (Node + shim + the hello function, after the warm phase)"
                .into(),
            pss: vec![23 * MIB, 22 * MIB],
            idle_instances: true,
        };
        let other = Memory {
            what: "thaw up itself (gateway, scheduler, registry)".into(),
            pss: vec![7 * MIB],
            idle_instances: false,
        };
        let r = microvm_only(
            Figure::Measured(microvm(
                &[8_100, 8_500, 9_700],
                &[800, 810, 820, 830, 840, 850, 860],
            )),
            vec![instances, other],
        );
        let md = markdown(&r, None);
        assert!(md.contains("the microVM section only"), "{md}");
        assert!(md.contains("```sh\nthaw bench --only microvm\n```"));
        assert!(
            !md.contains(".svg") && !md.contains("## Cold start") && !md.contains("## Targets")
        );
        let m = section(&md, "microVM driver: boot against restore");
        assert!(
            m.contains("| **boot to first answer** (the hello function is in the image: a booted VM has no code drive) | 8.50 s | 8.10 s – 9.70 s | 3 |"),
            "{m}"
        );
        assert!(
            m.contains("| **restore to first answer** (and `ready`, `init`, the first call) | 830.0 ms | 800.0 ms – 860.0 ms | 7 |"),
            "{m}"
        );
        // 8.50 s / 830 ms
        assert!(m.contains("**10.2×** (the goal: at least 10×, met)"), "{m}");
        assert!(
            m.contains("| microVM: idle restored VMs (QEMU with a 512 MiB guest, paused after one answer) | 4 | 92.0 MiB | 93.0 MiB | 90.0 MiB – 96.0 MiB |  |"),
            "{m}"
        );
        assert!(
            m.contains("| thaw, process driver: idle function instances (Node + shim + the hello function, after the warm phase) | 2 | 22.0 MiB | 22.5 MiB | 22.0 MiB – 23.0 MiB | 4.2× |"),
            "{m}"
        );
        assert!(
            !m.contains("thaw up itself"),
            "only idle instances go beside the VMs"
        );
        assert!(m.contains("Accelerator: TCG (/dev/kvm is there"), "{m}");
        assert!(md.contains("## Machine"));
        assert_eq!(
            microvm_line(r.microvm.measured().unwrap()),
            "boot to first answer 8.50 s · restore to first answer 830.0 ms · 10.2× (p50) · idle restored VM 92.0 MiB PSS (median)"
        );
    }

    #[test]
    fn the_microvm_section_says_when_the_goal_is_missed_or_why_not_measured() {
        let slow = microvm_only(
            Figure::Measured(microvm(&[8_000], &[1_000, 1_100, 1_200])),
            Vec::new(),
        );
        let m = markdown(&slow, None);
        assert!(
            m.contains("**7.3×** (the goal: at least 10×, **missed**)"),
            "{m}"
        );
        let skipped = microvm_only(Figure::Skipped("--skip microvm".into()), Vec::new());
        assert!(markdown(&skipped, None).contains(
            "## microVM driver: boot against restore\n\nNot measured (skipped: --skip microvm)."
        ));
        let failed = microvm_only(Figure::Failed("no thaw-agent | here".into()), Vec::new());
        assert!(markdown(&failed, None).contains("Not measured (failed: no thaw-agent \\| here)."));
    }

    fn tenants(limited: u64, quiet_failed: u64, peak: Option<u32>) -> Tenants {
        use crate::results::{Noisy, TenantPhase};
        let phase = |ms: &[u64], rps: f64| TenantPhase {
            latency: Summary::of(
                &ms.iter()
                    .map(|m| Duration::from_micros(*m))
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
            rps,
            failed: 0,
            first_failure: None,
            cpu: crate::results::Cpu {
                thaw_up: 0.5,
                runtimes: 0.25,
                bench: 0.125,
            },
        };
        let mut beside = phase(&[500, 600, 700, 2_000], 3_000.0);
        if quiet_failed > 0 {
            beside.failed = quiet_failed;
            beside.first_failure = Some("answered 429 | \"x\"".into());
        }
        Tenants {
            clients: 4,
            noisy_clients: 16,
            noisy_limit: 2,
            noisy_work: Duration::from_millis(20),
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            alone: phase(&[400, 500, 600, 1_000], 4_000.0),
            beside,
            noisy: Noisy {
                ok: 450,
                limited,
                other: 0,
                first_other: None,
                seconds: 5.0,
                peak_instances: peak,
                polls: 20,
            },
        }
    }

    fn warm_of(p50_us: u64, p99_us: u64, rps: f64) -> Warm {
        let samples: Vec<Duration> = [p50_us; 98]
            .into_iter()
            .chain([p99_us, p99_us])
            .map(Duration::from_micros)
            .collect();
        Warm {
            latency: Summary::of(&samples).unwrap(),
            rps,
            connections: 4,
            errors: 0,
        }
    }

    #[test]
    fn the_cluster_section_sets_forwarded_beside_home() {
        let mut r = microvm_only(Figure::Skipped("--skip microvm".into()), Vec::new());
        r.cluster = Figure::Measured(Cluster {
            home: warm_of(300, 900, 5000.0),
            forwarded: warm_of(450, 1800, 4000.0),
            functions: 50,
            rounds: 5,
            calls: 250,
            warm: 249,
            away_from_home: 1,
        });
        let mut md = String::new();
        super::cluster(&mut md, &r);
        assert!(md.starts_with(&format!("## {CLUSTER_TITLE}\n")), "{md}");
        assert!(
            md.contains("| the function's home | 300 µs | 900 µs | 5000 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| the other worker, which forwards it | 450 µs | 1.80 ms | 4000 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| forwarded ÷ home | 1.50× | 2.00× | 0.80× | |"),
            "{md}"
        );
        assert!(
            md.contains("The hop costs +150 µs at p50 (+900 µs at p99)"),
            "{md}"
        );
        assert!(
            md.contains(
                "249 of those 250 calls found a warm instance (warm hit ratio 0.9960), and 1 were"
            ),
            "{md}"
        );

        r.cluster = Figure::Skipped("no PostgreSQL server in /usr/lib/postgresql".into());
        let mut md = String::new();
        super::cluster(&mut md, &r);
        assert!(
            md.contains("Not measured (skipped: no PostgreSQL server"),
            "{md}"
        );
    }

    #[test]
    fn the_tenants_section_sets_b_beside_a_and_counts_noisy_s_answers() {
        let mut r = microvm_only(Figure::Skipped("--skip microvm".into()), Vec::new());
        let mut md = String::new();
        r.tenants = Figure::Measured(tenants(49_550, 0, Some(2)));
        super::tenants(&mut md, &r);
        assert!(md.starts_with(&format!("## {TENANTS_TITLE}\n")), "{md}");
        assert!(
            md.contains("| A. alone | 500 µs | 1.00 ms | 4000 | 4 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| B. while noisy is hammered | 600 µs | 2.00 ms | 3000 | 4 | 0 |"),
            "{md}"
        );
        assert!(md.contains("| B ÷ A | 1.20× | 2.00× | 0.75× | | |"), "{md}");
        assert!(md.contains("in cores (this host has 2) | A | B |"), "{md}");
        assert!(md.contains("| together | 0.88 | 0.88 |"), "{md}");
        assert!(
            md.contains("| 200: served by its instances | 450 | 90 | 0.90 % |"),
            "{md}"
        );
        assert!(
            md.contains("| 429 `namespace_limit`: refused for its limit | 49550 | 9910 | 99 % |"),
            "{md}"
        );
        assert!(md.contains("| all | 50000 | 10000 | 100 % |"), "{md}");
        assert!(
            md.contains("serve at most 100 calls/s; noisy's 200s came at 90/s."),
            "{md}"
        );
        assert!(
            md.contains("counted at most 2 instances of noisy (its limit: 2)"),
            "{md}"
        );
        assert!(
            md.contains("The limit held: noisy was refused 49550 calls"),
            "{md}"
        );
        assert!(!md.contains("**Failed**"), "{md}");

        let mut md = String::new();
        r.tenants = Figure::Measured(tenants(0, 3, Some(3)));
        super::tenants(&mut md, &r);
        assert!(md.contains("**Failed**"), "{md}");
        assert!(
            md.contains("- noisy (max_instances = 2) got no 429 namespace_limit"),
            "{md}"
        );
        assert!(
            md.contains("- quiet beside noisy (phase B): 3 call(s) did not answer 200 hello world; the first: answered 429 \\| \"x\""),
            "{md}"
        );
        assert!(
            md.contains("- noisy ran 3 instances at once, over its max_instances of 2"),
            "{md}"
        );
        assert_eq!(r.tenants.measured().unwrap().violations().len(), 3);

        r.tenants = Figure::Skipped("--skip tenants".into());
        let mut md = String::new();
        super::tenants(&mut md, &r);
        assert!(
            md.contains("Not measured (skipped: --skip tenants)."),
            "{md}"
        );
        let only = microvm_only(Figure::Skipped("--skip microvm".into()), Vec::new());
        assert!(
            !markdown(&only, None).contains(TENANTS_TITLE),
            "no tenants section without the systems"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_micros(57)), "57 µs");
        assert_eq!(human(Duration::from_micros(2_345)), "2.35 ms");
        assert_eq!(human(Duration::from_micros(45_670)), "45.7 ms");
        assert_eq!(human(Duration::from_millis(1_500)), "1.50 s");
    }
}
