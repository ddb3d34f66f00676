//! The chart: hand-written SVG, three panels side by side. Cold-start and
//! warm-call latency as grouped p50/p99 bars on one shared log scale, and
//! throughput on a linear one.

use crate::report::human;
use crate::results::{Report, Role, SystemResult};
use std::fmt::Write as _;
use std::time::Duration;

const WIDTH: f64 = 1140.0;
const HEIGHT: f64 = 560.0;
const PANEL_TOP: f64 = 110.0;
const PANEL_HEIGHT: f64 = 280.0;
const PANEL_LEFT: f64 = 70.0;
const PANEL_WIDTH: f64 = 300.0;
const PANEL_GAP: f64 = 75.0;

/// Dark (p50) and light (p99) colours of a system's bars.
fn colours(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Thaw => ("#d9480f", "#ffa94d"),
        Role::Floor => ("#343a40", "#adb5bd"),
        Role::Peer => ("#1864ab", "#74c0fc"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

enum Scale {
    /// Powers of ten of microseconds, bottom and top.
    Log {
        low: i32,
        high: i32,
    },
    Linear {
        top: f64,
    },
}

impl Scale {
    /// Height of a bar for `v` (µs for Log), 0..=PANEL_HEIGHT.
    fn height(&self, v: f64) -> f64 {
        match *self {
            Scale::Log { low, high } => {
                let f = (v.max(1e-3).log10() - low as f64) / (high - low) as f64;
                f.clamp(0.0, 1.0) * PANEL_HEIGHT
            }
            Scale::Linear { top } => (v / top).clamp(0.0, 1.0) * PANEL_HEIGHT,
        }
    }
}

/// One group of bars: a system, with up to two values and a label per bar.
struct Group<'a> {
    system: &'a SystemResult,
    bars: Vec<(f64, String)>,
    /// Shown instead of bars when there are none.
    missing: &'static str,
}

fn latency_groups<'a>(
    systems: &'a [SystemResult],
    pick: impl Fn(&SystemResult) -> Option<(Duration, Duration)>,
) -> Vec<Group<'a>> {
    systems
        .iter()
        .map(|s| Group {
            system: s,
            bars: pick(s)
                .map(|(p50, p99)| {
                    vec![
                        (p50.as_secs_f64() * 1e6, human(p50)),
                        (p99.as_secs_f64() * 1e6, human(p99)),
                    ]
                })
                .unwrap_or_default(),
            missing: missing_word(s),
        })
        .collect()
}

fn missing_word(s: &SystemResult) -> &'static str {
    match (&s.cold, &s.warm) {
        (crate::results::Figure::Skipped(_), _) => "skipped",
        (_, crate::results::Figure::Failed(_)) | (crate::results::Figure::Failed(_), _) => "failed",
        _ => "n/a",
    }
}

fn panel(svg: &mut String, index: usize, title: &str, groups: &[Group], scale: &Scale) {
    let left = PANEL_LEFT + index as f64 * (PANEL_WIDTH + PANEL_GAP);
    let bottom = PANEL_TOP + PANEL_HEIGHT;
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="panel">{}</text>"#,
        left,
        PANEL_TOP - 14.0,
        escape(title)
    );
    // Axis and grid.
    match *scale {
        Scale::Log { low, high } => {
            for e in low..=high {
                let y = bottom - scale.height(10f64.powi(e));
                let label = match e {
                    e if e < 3 => format!("{} µs", 10i64.pow(e.max(0) as u32)),
                    e if e < 6 => format!("{} ms", 10i64.pow((e - 3) as u32)),
                    e => format!("{} s", 10i64.pow((e - 6) as u32)),
                };
                let _ = writeln!(
                    svg,
                    r#"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick">{label}</text>"#,
                    left + PANEL_WIDTH,
                    left - 6.0,
                    y + 4.0
                );
            }
        }
        Scale::Linear { top } => {
            // `top` is 1, 2 or 5 times a power of ten: ticks on round numbers.
            let leading = top / 10f64.powf(top.log10().floor());
            let steps = if (leading - 2.0).abs() < 1e-9 { 4 } else { 5 };
            for i in 0..=steps {
                let v = top * i as f64 / steps as f64;
                let y = bottom - scale.height(v);
                let _ = writeln!(
                    svg,
                    r#"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
                    left + PANEL_WIDTH,
                    left - 6.0,
                    y + 4.0,
                    thousands(v)
                );
            }
        }
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{left:.1}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" class="axis"/>"#,
        left + PANEL_WIDTH
    );
    let slot = PANEL_WIDTH / groups.len().max(1) as f64;
    for (i, g) in groups.iter().enumerate() {
        let centre = left + slot * (i as f64 + 0.5);
        let (dark, light) = colours(g.system.role);
        if g.bars.is_empty() {
            let _ = writeln!(
                svg,
                r#"<text x="{centre:.1}" y="{:.1}" class="missing" transform="rotate(-90 {centre:.1} {:.1})">{}</text>"#,
                bottom - 6.0,
                bottom - 6.0,
                g.missing
            );
        }
        let bar_width = (slot * 0.8 / g.bars.len().max(1) as f64).min(22.0);
        let start = centre - bar_width * g.bars.len() as f64 / 2.0;
        for (j, (value, label)) in g.bars.iter().enumerate() {
            let h = scale.height(*value).max(1.0);
            let x = start + bar_width * j as f64;
            let fill = if j == 0 { dark } else { light };
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"><title>{}: {}</title></rect>"#,
                bottom - h,
                bar_width - 1.0,
                escape(&g.system.name),
                escape(label)
            );
            let tx = x + bar_width / 2.0 + 3.0;
            let ty = bottom - h - 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="{tx:.1}" y="{ty:.1}" class="value" transform="rotate(-90 {tx:.1} {ty:.1})">{}</text>"#,
                escape(label)
            );
        }
        let ly = bottom + 14.0;
        let name = if g.system.warm_is_cold && index > 0 {
            format!("{} *", g.system.short)
        } else {
            g.system.short.clone()
        };
        let _ = writeln!(
            svg,
            r#"<text x="{centre:.1}" y="{ly:.1}" class="name{}" transform="rotate(-35 {centre:.1} {ly:.1})">{}</text>"#,
            if g.system.role == Role::Thaw {
                " thaw"
            } else {
                ""
            },
            escape(&name)
        );
    }
}

/// 12345 → "12 345".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

pub fn svg(r: &Report, report_name: &str) -> String {
    let cold = latency_groups(&r.systems, |s| {
        s.cold.measured().map(|c| (c.summary.p50, c.summary.p99))
    });
    let warm = latency_groups(&r.systems, |s| {
        s.warm.measured().map(|w| (w.latency.p50, w.latency.p99))
    });
    let rps: Vec<Group> = r
        .systems
        .iter()
        .map(|s| Group {
            system: s,
            bars: s
                .warm
                .measured()
                .map(|w| vec![(w.rps, format!("{}/s", thousands(w.rps)))])
                .unwrap_or_default(),
            missing: missing_word(s),
        })
        .collect();
    let all_us: Vec<f64> = cold
        .iter()
        .chain(warm.iter())
        .flat_map(|g| g.bars.iter().map(|b| b.0))
        .collect();
    let low = all_us
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor() as i32;
    let high = (all_us.iter().copied().fold(1.0, f64::max).log10().ceil() as i32).max(low + 1);
    // Room above the tallest bar for its label.
    let log = Scale::Log {
        low: low.min(1),
        high: high + 1,
    };
    let top_rps = rps
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.0))
        .fold(0.0, f64::max);
    let linear = Scale::Linear {
        top: nice_ceiling(top_rps * 1.25),
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        svg,
        "<style>\n\
         .title {{ font-size: 18px; font-weight: bold; fill: #212529; }}\n\
         .sub {{ font-size: 12px; fill: #495057; }}\n\
         .panel {{ font-size: 14px; font-weight: bold; fill: #212529; }}\n\
         .tick {{ font-size: 10px; fill: #495057; text-anchor: end; }}\n\
         .value {{ font-size: 9px; fill: #212529; }}\n\
         .name {{ font-size: 11px; fill: #212529; text-anchor: end; }}\n\
         .name.thaw {{ font-weight: bold; fill: #d9480f; }}\n\
         .missing {{ font-size: 10px; fill: #868e96; font-style: italic; }}\n\
         .grid {{ stroke: #e9ecef; stroke-width: 1; }}\n\
         .axis {{ stroke: #495057; stroke-width: 1; }}\n\
         </style>"
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="30" class="title">thaw bench: a hello-world function, cold and warm, against its peers</text>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="50" class="sub">{} · {} logical CPUs · Linux {} · Node {} · thaw {} · {}</text>"#,
        escape(&r.machine.cpu),
        r.machine.cores,
        escape(&r.machine.kernel),
        escape(&r.machine.node),
        escape(&r.machine.thaw),
        escape(&r.machine.date)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="20" y="62" width="12" height="12" fill="#495057"/><text x="38" y="72" class="sub">p50 (darker bar)</text><rect x="150" y="62" width="12" height="12" fill="#ced4da"/><text x="168" y="72" class="sub">p99 (lighter bar)</text><text x="290" y="72" class="sub">orange: thaw · grey: bare Node http server (the floor) · blue: the others · latency on a log scale</text>"##
    );
    panel(
        &mut svg,
        0,
        &format!("Cold start, first call ({} functions)", r.functions),
        &cold,
        &log,
    );
    panel(
        &mut svg,
        1,
        "Warm call, one client in sequence",
        &warm,
        &log,
    );
    panel(
        &mut svg,
        2,
        &format!("Throughput, requests/s ({} clients)", r.connections),
        &rps,
        &linear,
    );
    let mut foot = HEIGHT - 16.0;
    if r.systems.iter().any(|s| s.warm_is_cold) {
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{foot:.1}" class="sub">* every call starts a new node process: its warm figures are cold starts too.</text>"#
        );
        foot -= 16.0;
    }
    if let crate::results::Figure::Measured(m) = &r.microvm {
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{foot:.1}" class="sub">thaw microVM driver ({}): {}.</text>"#,
            escape(&m.accel),
            escape(&crate::report::microvm_line(m))
        );
        foot -= 16.0;
    }
    if let crate::results::Figure::Measured(b) = &r.breakdown {
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{foot:.1}" class="sub">thaw cold path, by hand: {}. Details and the exact command: {}.</text>"#,
            escape(&crate::report::breakdown_line(b)),
            escape(report_name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_helpers() {
        assert_eq!(thousands(1234567.0), "1 234 567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(nice_ceiling(12_500.0), 20_000.0);
        assert_eq!(nice_ceiling(40_000.0), 50_000.0);
        let s = Scale::Log { low: 1, high: 4 };
        assert_eq!(s.height(10.0), 0.0);
        assert_eq!(s.height(10_000.0), PANEL_HEIGHT);
    }
}
