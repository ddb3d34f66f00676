//! thaw-cron through its public API: syntax, errors, printing, calendars,
//! daylight saving, missed ticks, and a brute-force comparison.

mod calendar;
mod display;
mod dst;
mod errors;
mod missed;
mod oracle;
mod syntax;
mod zones;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use thaw_cron::{parse_time_zone, Cron};

pub fn cron(expression: &str) -> Cron {
    Cron::parse(expression).unwrap_or_else(|e| panic!("`{expression}` should parse: {e}"))
}

pub fn zone(name: &str) -> TimeZone {
    parse_time_zone(name).unwrap_or_else(|e| panic!("{e}"))
}

/// An instant written in RFC 3339, such as `2024-03-10T01:00:00-05:00`.
pub fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` is not an instant: {e}"))
}

/// How an instant reads on the wall clock of `tz`, with the offset in force:
/// `2024-03-10T03:00:00-04`.
pub fn wall(tz: &TimeZone, instant: Timestamp) -> String {
    format!("{}{}", tz.to_datetime(instant), tz.to_offset(instant))
}

/// The first `n` ticks of `expression` in zone `zone_name` after `after`,
/// as wall-clock times with offsets.
pub fn ticks_in(expression: &str, zone_name: &str, after: &str, n: usize) -> Vec<String> {
    let tz = zone(zone_name);
    cron(expression)
        .ticks_after(at(after), &tz)
        .take(n)
        .map(|tick| wall(&tz, tick))
        .collect()
}

/// The first `n` ticks of `expression` in UTC after `after` (a UTC time
/// written without its `Z`), as civil times.
pub fn ticks(expression: &str, after: &str, n: usize) -> Vec<String> {
    let tz = TimeZone::UTC;
    cron(expression)
        .ticks_after(at(&format!("{after}Z")), &tz)
        .take(n)
        .map(|tick| tz.to_datetime(tick).to_string())
        .collect()
}
