//! Civil times to instants in a time zone, under thaw's daylight-saving
//! rules, and reading time zone names.
//!
//! The rule behind every function here: a matching civil time fires at the
//! first instant the zone's wall clock reaches it or jumps past it. So a
//! time in a spring-forward gap fires when the gap ends, and a time the
//! clocks repeat when falling back fires on its first occurrence only. That
//! mapping from civil time to instant never goes backwards, which is what
//! lets the searches in `lib.rs` work on civil time and convert at the end.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::CronError;

/// The longest time zone name accepted; IANA names are far shorter.
const MAX_TIME_ZONE_NAME_LEN: usize = 64;

/// Reads an IANA time zone name such as `Europe/Paris`, `America/New_York`
/// or `UTC`, in any ASCII case, from the time zone database compiled into
/// thaw (so it does not depend on the host having `/usr/share/zoneinfo`).
///
/// Fixed offsets (`+02:00`) and POSIX TZ strings (`EST5EDT,M3.2.0,M11.1.0`)
/// are not accepted: a named zone follows its region's daylight-saving
/// changes, which is what a schedule in local time wants.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, CronError> {
    let unknown = || CronError::UnknownTimeZone {
        name: name.chars().take(MAX_TIME_ZONE_NAME_LEN).collect(),
    };
    if name.is_empty() || name.len() > MAX_TIME_ZONE_NAME_LEN {
        return Err(unknown());
    }
    match jiff::tz::db().get(name) {
        // `Etc/Unknown` is the database's name for "no zone", not a place.
        Ok(tz) if !tz.is_unknown() => Ok(tz),
        _ => Err(unknown()),
    }
}

/// The instant at which civil time `civil` fires in `tz`.
pub(crate) fn firing_instant(tz: &TimeZone, civil: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok(),
        // The first occurrence is with the offset in force before the change.
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok(),
        // Read with the later offset, `civil` names an instant just before
        // the change; the clocks jump past `civil` at that change.
        AmbiguousOffset::Gap { after, .. } => transition_after(tz, after.to_timestamp(civil).ok()?),
    }
}

/// The earliest civil time (whole seconds) that can fire strictly after
/// `instant`: every civil time before it fires at or before `instant`.
pub(crate) fn first_civil_after(tz: &TimeZone, instant: Timestamp) -> Option<DateTime> {
    if let Some(end) = end_of_repeat(tz, instant) {
        return Some(end);
    }
    whole_second(tz.to_datetime(instant))
        .checked_add(SignedDuration::from_secs(1))
        .ok()
}

/// The latest civil time (whole seconds) that fires at or before `instant`:
/// every civil time after it fires after `instant`.
pub(crate) fn last_civil_at_or_before(tz: &TimeZone, instant: Timestamp) -> Option<DateTime> {
    if let Some(end) = end_of_repeat(tz, instant) {
        return end.checked_sub(SignedDuration::from_secs(1)).ok();
    }
    Some(whole_second(tz.to_datetime(instant)))
}

/// When `instant` falls in the second pass of civil times that the clocks
/// repeat (after falling back), the civil time at which the repetition
/// ends. Civil times before it already fired on their first pass.
fn end_of_repeat(tz: &TimeZone, instant: Timestamp) -> Option<DateTime> {
    let civil = tz.to_datetime(instant);
    let AmbiguousOffset::Fold { before, .. } = tz.to_ambiguous_timestamp(civil).offset() else {
        return None;
    };
    let first_pass = before.to_timestamp(civil).ok()?;
    if first_pass >= instant {
        return None;
    }
    let fall_back = transition_after(tz, first_pass).filter(|&at| at <= instant)?;
    // At the change the wall clock reads the end of the repeated stretch
    // under the old offset and its start under the new one.
    Some(before.to_datetime(fall_back))
}

/// The first change of offset in `tz` strictly after `instant`.
fn transition_after(tz: &TimeZone, instant: Timestamp) -> Option<Timestamp> {
    tz.following(instant)
        .next()
        .map(|transition| transition.timestamp())
}

fn whole_second(civil: DateTime) -> DateTime {
    civil
        .with()
        .subsec_nanosecond(0)
        .build()
        .expect("dropping the fraction of a second keeps a valid civil time")
}
