//! Facts about the machine and the software measured, for the report.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    /// Logical CPUs in /proc/cpuinfo.
    pub cores: usize,
    pub kernel: String,
    pub memory: String,
    pub node: String,
    pub thaw: String,
    pub workerd: Option<String>,
    pub deno: Option<String>,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// `/proc/loadavg` when the run began: other work on the machine
    /// skews every figure.
    pub load: String,
}

impl Machine {
    pub fn probe(
        node: &Path,
        thaw_exe: &Path,
        workerd: Option<&Path>,
        deno: Option<&Path>,
    ) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kib: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores,
            kernel,
            memory,
            node: first_line(Command::new(node).arg("--version"))
                .unwrap_or_else(|| "unknown".into()),
            thaw: thaw_version(thaw_exe),
            workerd: workerd.and_then(|w| first_line(Command::new(w).arg("--version"))),
            deno: deno.and_then(|d| first_line(Command::new(d).arg("--version"))),
            date: utc_now(),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

pub(crate) fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

/// thaw's version and the git commit of the checkout the binary was built
/// in (or of the current folder), with a note when the tree has changes.
fn thaw_version(thaw_exe: &Path) -> String {
    // The bench is built with the binary that runs it, in the same profile.
    let version = if cfg!(debug_assertions) {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (debug build: its figures are slower than a release build's)"
        )
    } else {
        env!("CARGO_PKG_VERSION")
    };
    let dirs = [
        thaw_exe
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        std::env::current_dir().ok(),
    ];
    for dir in dirs.into_iter().flatten() {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            return format!(
                "{version}, commit {commit}{}",
                if dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            );
        }
    }
    format!("{version} (not built from a git checkout)")
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = thaw_api::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        (rest / 60) % 60
    )
}
