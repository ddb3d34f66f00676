//! `thaw bench --quick`: every system runs and the report holds a row of
//! figures for each; the microVM section alone, under real QEMU, holds its
//! figures too. Nothing here asserts on speed: the figures only have to be
//! there.

#[path = "../../thaw-microvm/tests/support/agent.rs"]
mod microvm_support;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

const THAW: &str = env!("CARGO_BIN_EXE_thaw");

/// One bench at a time: the VMs of one would take the CPU of the other.
static ONE_BENCH: Mutex<()> = Mutex::new(());

/// "5.33 ms", "795 µs", "1.50 s".
fn is_duration(cell: &str) -> bool {
    let Some((number, unit)) = cell.trim().split_once(' ') else {
        return false;
    };
    number.parse::<f64>().is_ok() && ["µs", "ms", "s"].contains(&unit)
}

/// The cells of the table row whose first cell is `name`.
fn row<'a>(section: &'a str, name: &str) -> Vec<&'a str> {
    let line = section
        .lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{section}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

fn section<'a>(md: &'a str, title: &str) -> &'a str {
    let start = md
        .find(&format!("## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{md}"));
    let rest = &md[start + 3..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// `thaw bench ARGS --out OUT` (one at a time), with `env`; its stderr.
fn bench(args: &[&str], out: &Path, env: &[(&str, &Path)]) -> String {
    let _one = ONE_BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let run = Command::new(THAW)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .env_remove("THAW_DATA_DIR")
        .env_remove("THAW_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "thaw bench failed:\n{stderr}");
    stderr
}

#[test]
fn quick_bench_writes_a_row_of_figures_per_system() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.md");
    // The data directory of this host, where a copy of the report is kept
    // for the dashboard.
    let data = tempfile::tempdir().unwrap();
    let stderr = bench(
        &["--quick", "--skip", "microvm"],
        &out,
        &[("THAW_DATA_DIR", data.path())],
    );
    assert!(
        stderr.contains("[bench] thaw (Lambda handler) cold: first call 3/3"),
        "{stderr}"
    );

    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("thaw bench --quick --skip microvm --out"),
        "the exact command is in the report"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("bench/report.md")).unwrap(),
        md,
        "a copy is kept in the data directory"
    );
    assert!(section(&md, "microVM driver: boot against restore")
        .contains("Not measured (skipped: --skip microvm)."));
    let svg = std::fs::read_to_string(dir.path().join("b.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // workerd and Deno come from bench/'s npm packages; where `cargo xtask
    // setup` installed them they must be measured, else skipped with a note.
    let peers_installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/node_modules/.package-lock.json")
        .exists();
    // Where thaw jails its runtimes, the bench also measures it without the
    // jail, to show what the jail costs.
    let jailed = md.contains("process, jailed");
    let systems = [
        ("thaw (Lambda handler)", true),
        ("thaw (fetch handler)", true),
        ("thaw (Lambda handler, no jail)", jailed),
        ("bare Node http server", true),
        ("fresh node per request", true),
        ("Cloudflare workerd", peers_installed),
        ("Deno (Deno.serve)", peers_installed),
    ];
    let cold = section(&md, "Cold start");
    let warm = section(&md, "Warm calls");
    for (name, required) in systems {
        if name.contains("no jail") && !jailed {
            assert!(
                !cold.contains(name),
                "an unjailed row only where thaw jails"
            );
            continue;
        }
        let c = row(cold, name);
        let warm_name = if name == "fresh node per request" {
            "fresh node per request (every call cold)"
        } else {
            name
        };
        let w = row(warm, warm_name);
        if !required && c[5].starts_with("skipped") {
            assert!(w[7].starts_with("skipped"), "{w:?}");
            continue;
        }
        assert!(
            c[1..4].iter().all(|x| is_duration(x)),
            "cold p50/p90/p99 of {name}: {c:?}"
        );
        assert!(
            w[1..3].iter().all(|x| is_duration(x)),
            "warm p50/p99 of {name}: {w:?}"
        );
        assert!(w[4].parse::<f64>().is_ok(), "requests/s of {name}: {w:?}");
    }
    let thaw_cold = row(cold, "thaw (Lambda handler)");
    assert!(thaw_cold[4].contains("confirmed cold"), "{thaw_cold:?}");

    let targets = section(&md, "Targets");
    let verdicts = targets.matches(" met |").count() + targets.matches(" **missed** |").count();
    let thaw_rows = if jailed { 3 } else { 2 };
    assert_eq!(
        verdicts,
        4 * thaw_rows,
        "four targets for each thaw row:\n{targets}"
    );
    for part in [
        "Where the cold path spends its time",
        "Idle memory (PSS)",
        "Machine",
    ] {
        section(&md, part);
    }
    // Namespace limits under a noisy neighbour: quiet's figures in both
    // phases, noisy refused for its limit and served within it. Speed is
    // not checked; what the section fails on is.
    assert!(
        stderr.contains("[bench] tenants: B. quiet, 2 clients"),
        "{stderr}"
    );
    let tenants = section(&md, "Namespace limits: a noisy neighbour");
    for phase in ["A. alone", "B. while noisy is hammered"] {
        let p = row(tenants, phase);
        assert!(
            p[1..3].iter().all(|x| is_duration(x)),
            "quiet p50/p99 in {phase}: {p:?}"
        );
        assert!(p[3].parse::<f64>().is_ok(), "requests/s in {phase}: {p:?}");
        assert!(p[4].parse::<u64>().unwrap() > 0, "{p:?}");
        assert_eq!(p[5], "0", "quiet's failed calls in {phase}: {p:?}");
    }
    let ratios = row(tenants, "B ÷ A");
    assert!(ratios[1..4].iter().all(|x| x.ends_with('×')), "{ratios:?}");
    let count = |name: &str| -> u64 { row(tenants, name)[1].parse().unwrap() };
    assert!(count("429 `namespace_limit`: refused for its limit") > 0);
    assert!(count("200: served by its instances") > 0);
    assert!(
        tenants.contains("The limit held: noisy was refused"),
        "{tenants}"
    );
    assert!(!tenants.contains("**Failed**"), "{tenants}");
    let cpu = row(tenants, "together");
    assert!(cpu[1].parse::<f64>().is_ok(), "{cpu:?}");

    // One large response, through thaw and from the bare server: both
    // measured (8 MiB with --quick), whatever their speed.
    let streaming = section(&md, "Streaming one large response");
    assert!(streaming.contains("One response of 8 MiB"), "{streaming}");
    for name in [
        "thaw (fetch handler, ReadableStream body)",
        "bare Node http server",
    ] {
        let r = row(streaming, name);
        assert!(r[1..3].iter().all(|x| is_duration(x)), "{r:?}");
        assert!(r[3].ends_with(" MiB/s"), "{r:?}");
    }

    // Two workers sharing a scratch PostgreSQL server (installed by
    // `cargo xtask setup`): both landings measured without a failed call,
    // and every call of the rounds answered.
    let cluster = section(&md, "Many hosts: the forwarding hop and warm hits");
    for landing in ["the function's home", "the other worker, which forwards it"] {
        let l = row(cluster, landing);
        assert!(l[1..3].iter().all(|x| is_duration(x)), "{l:?}");
        assert!(l[3].parse::<f64>().unwrap() > 0.0, "{l:?}");
        assert_eq!(l[4], "0", "failed calls landing on {landing}: {l:?}");
    }
    assert!(cluster.contains("warm hit ratio"), "{cluster}");

    let memory = section(&md, "Idle memory (PSS)");
    assert!(
        memory.contains("| thaw: idle function instances"),
        "{memory}"
    );
    assert!(section(&md, "Machine").contains("| CPU |"));
}

/// `--only microvm`: boots and restores real VMs (TCG here), with the
/// image cache thaw-microvm's tests use, and writes the section alone.
#[test]
fn the_microvm_section_alone_sets_boot_beside_restore() {
    let agent = microvm_support::agent_binary();
    let cache = microvm_support::data_dir().join("images");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.md");
    let stderr = bench(
        &[
            "--quick",
            "--only",
            "microvm",
            "--microvm-cache",
            cache.to_str().unwrap(),
        ],
        &out,
        &[("THAW_AGENT", &agent)],
    );
    assert!(stderr.contains("[bench] microVM: boot 1/1"), "{stderr}");
    assert!(
        !dir.path().join("m.svg").exists(),
        "no chart without the systems"
    );

    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("thaw bench --quick --only microvm --microvm-cache"),
        "{md}"
    );
    assert!(
        !md.contains("## Cold start"),
        "only the microVM section ran"
    );
    let m = section(&md, "microVM driver: boot against restore");
    for (step, samples) in [
        ("**boot to first answer**", "1"),
        ("**restore to first answer**", "2"),
    ] {
        let line = m
            .lines()
            .find(|l| l.starts_with(&format!("| {step}")))
            .unwrap_or_else(|| panic!("no row for {step} in:\n{m}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(is_duration(cells[1]), "{cells:?}");
        assert_eq!(cells[3], samples, "{cells:?}");
    }
    assert!(
        m.contains("Boot ÷ restore, to the first answer at p50: **"),
        "{m}"
    );
    let vms = row(
        m,
        "microVM: idle restored VMs (QEMU with a 512 MiB guest, paused after one answer)",
    );
    assert_eq!(vms[1], "2", "{vms:?}");
    assert!(vms[2].ends_with(" MiB"), "{vms:?}");
}
