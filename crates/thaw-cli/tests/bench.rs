//! `thaw bench --quick`: every system runs and the report holds a row of
//! figures for each. Nothing here asserts on speed: the figures only have
//! to be there.

use std::path::Path;
use std::process::Command;

const THAW: &str = env!("CARGO_BIN_EXE_thaw");

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

#[test]
fn quick_bench_writes_a_row_of_figures_per_system() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.md");
    let run = Command::new(THAW)
        .args(["bench", "--quick", "--out"])
        .arg(&out)
        .env_remove("THAW_DATA_DIR")
        .env_remove("THAW_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "thaw bench failed:\n{stderr}");
    assert!(
        stderr.contains("[bench] thaw (Lambda handler) cold: first call 3/3"),
        "{stderr}"
    );

    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("thaw bench --quick --out"),
        "the exact command is in the report"
    );
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
    let memory = section(&md, "Idle memory (PSS)");
    assert!(
        memory.contains("| thaw: idle function instances"),
        "{memory}"
    );
    assert!(section(&md, "Machine").contains("| CPU |"));
}
