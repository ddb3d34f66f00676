//! The ticks that fell while thaw was down.

use crate::{at, cron, wall, zone};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use thaw_cron::Missed;

#[test]
fn an_empty_or_backwards_span_has_no_ticks() {
    let utc = TimeZone::UTC;
    let every_minute = cron("* * * * *");
    let t = at("2024-01-01T00:00:00Z");
    assert_eq!(every_minute.missed(t, t, &utc), Missed::default());
    assert_eq!(
        every_minute.missed(t, at("2023-01-01T00:00:00Z"), &utc),
        Missed {
            latest: None,
            count: 0
        }
    );
}

#[test]
fn a_span_without_a_tick() {
    let utc = TimeZone::UTC;
    let missed =
        cron("@yearly").missed(at("2024-01-01T00:00:00Z"), at("2024-12-31T23:59:59Z"), &utc);
    assert_eq!(missed, Missed::default());
}

#[test]
fn the_span_excludes_its_start_and_includes_its_end() {
    let utc = TimeZone::UTC;
    let every_five_minutes = cron("*/5 * * * *");
    let missed =
        every_five_minutes.missed(at("2024-01-01T00:00:00Z"), at("2024-01-01T01:00:00Z"), &utc);
    assert_eq!(
        missed,
        Missed {
            latest: Some(at("2024-01-01T01:00:00Z")),
            count: 12
        }
    );
    let missed = every_five_minutes.missed(
        at("2024-01-01T00:00:00.000000001Z"),
        at("2024-01-01T00:59:59.999999999Z"),
        &utc,
    );
    assert_eq!(
        missed,
        Missed {
            latest: Some(at("2024-01-01T00:55:00Z")),
            count: 11
        }
    );
}

#[test]
fn a_rare_schedule_over_a_century() {
    let utc = TimeZone::UTC;
    let missed =
        cron("0 0 29 2 *").missed(at("2000-01-01T00:00:00Z"), at("2100-01-01T00:00:00Z"), &utc);
    assert_eq!(
        missed,
        Missed {
            latest: Some(at("2096-02-29T00:00:00Z")),
            count: 25
        }
    );
}

#[test]
fn every_second_over_a_year_stops_counting_at_the_cap() {
    let utc = TimeZone::UTC;
    let until = at("2024-06-30T12:34:56.789Z");
    let missed = cron("* * * * * *").missed(at("2023-06-30T00:00:00Z"), until, &utc);
    assert_eq!(
        missed,
        Missed {
            latest: Some(at("2024-06-30T12:34:56Z")),
            count: Missed::COUNT_CAP
        }
    );
}

#[test]
fn just_under_the_cap_counts_exactly() {
    let utc = TimeZone::UTC;
    let every_second = cron("* * * * * *");
    let after = at("2024-01-01T00:00:00Z");
    let cap = Missed::COUNT_CAP as i64;
    let below = every_second.missed(after, after + SignedDuration::from_secs(cap - 1), &utc);
    assert_eq!(below.count, Missed::COUNT_CAP - 1);
    let at_cap = every_second.missed(after, after + SignedDuration::from_secs(cap), &utc);
    assert_eq!(at_cap.count, Missed::COUNT_CAP);
    assert_eq!(at_cap.latest, Some(after + SignedDuration::from_secs(cap)));
    let above = every_second.missed(after, after + SignedDuration::from_secs(cap + 1), &utc);
    assert_eq!(above.count, Missed::COUNT_CAP);
    assert_eq!(
        above.latest,
        Some(after + SignedDuration::from_secs(cap + 1))
    );
}

#[test]
fn every_minute_over_decades() {
    let utc = TimeZone::UTC;
    let missed =
        cron("* * * * *").missed(at("1990-01-01T00:00:00Z"), at("2030-01-01T00:00:30Z"), &utc);
    assert_eq!(missed.count, Missed::COUNT_CAP);
    assert_eq!(missed.latest, Some(at("2030-01-01T00:00:00Z")));
}

/// [`Cron::missed`] both when it counts every tick and when it stops at the
/// cap and searches back from the end.
fn latest_both_ways(expression: &str, tz: &TimeZone, until: Timestamp) -> (String, String) {
    let cron = cron(expression);
    let short = cron.missed(until - SignedDuration::from_hours(3), until, tz);
    assert!(short.count < Missed::COUNT_CAP);
    let long = cron.missed(until - SignedDuration::from_hours(24 * 400), until, tz);
    assert_eq!(long.count, Missed::COUNT_CAP, "`{expression}` in {tz:?}");
    (
        wall(tz, short.latest.unwrap()),
        wall(tz, long.latest.unwrap()),
    )
}

#[test]
fn the_latest_tick_when_the_span_ends_in_repeated_time() {
    let tz = zone("America/New_York");
    // The clocks went back at 02:00 EDT; it is now 01:30 EST. The last
    // tick was the last minute before they went back.
    let latest = latest_both_ways("* * * * *", &tz, at("2024-11-03T01:30:00-05:00"));
    assert_eq!(latest.0, "2024-11-03T01:59:00-04");
    assert_eq!(latest.1, "2024-11-03T01:59:00-04");
    // Now is the first 01:30 EDT: that minute has just fired.
    let latest = latest_both_ways("* * * * *", &tz, at("2024-11-03T01:30:00-04:00"));
    assert_eq!(latest.0, "2024-11-03T01:30:00-04");
    assert_eq!(latest.1, "2024-11-03T01:30:00-04");
    let latest = latest_both_ways("*/7 * * * * *", &tz, at("2024-11-03T01:00:00-05:00"));
    assert_eq!(latest.0, "2024-11-03T01:59:56-04");
    assert_eq!(latest.1, "2024-11-03T01:59:56-04");
}

#[test]
fn the_latest_tick_when_the_span_ends_at_a_jump_forward() {
    let tz = zone("Europe/Berlin");
    let latest = latest_both_ways("*/10 * * * *", &tz, at("2024-03-31T03:00:00+02:00"));
    assert_eq!(latest.0, "2024-03-31T03:00:00+02");
    assert_eq!(latest.1, "2024-03-31T03:00:00+02");
    let latest = latest_both_ways(
        "*/10 * * * *",
        &tz,
        at("2024-03-31T03:00:00+02:00") - SignedDuration::from_secs(1),
    );
    assert_eq!(latest.0, "2024-03-31T01:50:00+01");
    assert_eq!(latest.1, "2024-03-31T01:50:00+01");
}
