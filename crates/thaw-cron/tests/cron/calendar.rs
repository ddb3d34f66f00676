//! Month lengths, leap years, the two day fields, and the ends of time.

use crate::{at, cron, ticks};
use jiff::tz::TimeZone;

#[test]
fn leap_days_come_every_four_years_but_not_in_2100() {
    assert_eq!(
        ticks("0 0 29 2 *", "2024-03-01T00:00:00", 3),
        [
            "2028-02-29T00:00:00",
            "2032-02-29T00:00:00",
            "2036-02-29T00:00:00"
        ]
    );
    assert_eq!(
        ticks("0 0 29 2 *", "2096-03-01T00:00:00", 2),
        ["2104-02-29T00:00:00", "2108-02-29T00:00:00"]
    );
    // 2000 was a leap year: divisible by 400.
    assert_eq!(
        ticks("0 0 29 2 *", "1999-01-01T00:00:00", 1),
        ["2000-02-29T00:00:00"]
    );
}

#[test]
fn a_leap_day_on_a_sunday_is_rare_but_found() {
    // `*/7` is only Sunday, and starts with `*`: both day fields must match.
    assert_eq!(
        ticks("0 0 29 2 */7", "2004-03-01T00:00:00", 4),
        [
            "2032-02-29T00:00:00",
            "2060-02-29T00:00:00",
            "2088-02-29T00:00:00",
            "2128-02-29T00:00:00"
        ]
    );
}

#[test]
fn days_a_month_lacks_are_skipped() {
    assert_eq!(
        ticks("0 0 31 * *", "2024-01-31T00:00:00", 4),
        [
            "2024-03-31T00:00:00",
            "2024-05-31T00:00:00",
            "2024-07-31T00:00:00",
            "2024-08-31T00:00:00"
        ]
    );
    assert_eq!(
        ticks("0 0 30 * *", "2024-01-30T00:00:00", 2),
        ["2024-03-30T00:00:00", "2024-04-30T00:00:00"]
    );
    assert_eq!(
        ticks("0 0 29-31 * *", "2023-01-31T00:00:00", 2),
        ["2023-03-29T00:00:00", "2023-03-30T00:00:00"]
    );
    assert_eq!(
        ticks("0 0 29-31 * *", "2024-01-31T00:00:00", 2),
        ["2024-02-29T00:00:00", "2024-03-29T00:00:00"]
    );
}

#[test]
fn the_last_tick_of_a_year_rolls_into_the_next() {
    assert_eq!(
        ticks("59 23 31 12 *", "2024-06-01T00:00:00", 2),
        ["2024-12-31T23:59:00", "2025-12-31T23:59:00"]
    );
    assert_eq!(
        ticks("0 0 1 1 *", "2024-12-31T23:59:59", 1),
        ["2025-01-01T00:00:00"]
    );
}

#[test]
fn both_day_fields_restricted_means_either_matches() {
    // Every Friday, and every 13th. September 2024 starts on a Sunday.
    assert_eq!(
        ticks("0 0 13 * FRI", "2024-09-01T00:00:00", 7),
        [
            "2024-09-06T00:00:00",
            "2024-09-13T00:00:00",
            "2024-09-20T00:00:00",
            "2024-09-27T00:00:00",
            "2024-10-04T00:00:00",
            "2024-10-11T00:00:00",
            "2024-10-13T00:00:00"
        ]
    );
    // A day-of-month that lists every day makes every day match.
    assert_eq!(
        ticks("0 0 1-31 * MON", "2024-09-01T00:00:00", 2),
        ["2024-09-02T00:00:00", "2024-09-03T00:00:00"]
    );
    // Mondays of February, and 30 February, which does not exist.
    assert_eq!(
        ticks("0 0 30 2 MON", "2024-01-01T00:00:00", 5),
        [
            "2024-02-05T00:00:00",
            "2024-02-12T00:00:00",
            "2024-02-19T00:00:00",
            "2024-02-26T00:00:00",
            "2025-02-03T00:00:00"
        ]
    );
}

#[test]
fn a_starred_day_field_leaves_the_other_to_decide() {
    // 2024-09-02 is a Monday.
    assert_eq!(
        ticks("0 0 * * MON", "2024-09-01T00:00:00", 2),
        ["2024-09-02T00:00:00", "2024-09-09T00:00:00"]
    );
    assert_eq!(
        ticks("0 0 13 * *", "2024-09-01T00:00:00", 2),
        ["2024-09-13T00:00:00", "2024-10-13T00:00:00"]
    );
}

#[test]
fn a_stepped_starred_day_field_must_match_too() {
    // Odd days of the month that are Mondays: 9, 23 September; 7, 21 October.
    assert_eq!(
        ticks("0 0 */2 * MON", "2024-09-01T00:00:00", 4),
        [
            "2024-09-09T00:00:00",
            "2024-09-23T00:00:00",
            "2024-10-07T00:00:00",
            "2024-10-21T00:00:00"
        ]
    );
    // The 1st of the month when it is a Sunday, Tuesday, Thursday or Saturday.
    assert_eq!(
        ticks("0 0 1 * */2", "2024-08-31T00:00:00", 3),
        [
            "2024-09-01T00:00:00",
            "2024-10-01T00:00:00",
            "2024-12-01T00:00:00"
        ]
    );
}

#[test]
fn the_calendar_ends_in_9999() {
    let utc = TimeZone::UTC;
    let yearly = cron("@yearly");
    assert_eq!(
        yearly.next_after(at("9998-06-01T00:00:00Z"), &utc),
        Some(at("9999-01-01T00:00:00Z"))
    );
    assert_eq!(yearly.next_after(at("9999-01-01T00:00:00Z"), &utc), None);
    let mut ticks = yearly.ticks_after(at("9998-06-01T00:00:00Z"), &utc);
    assert!(ticks.next().is_some());
    assert_eq!(ticks.next(), None);
    assert_eq!(ticks.next(), None);
}

#[test]
fn the_calendar_starts_in_minus_9999() {
    let utc = TimeZone::UTC;
    let daily = cron("@daily");
    let start = jiff::Timestamp::MIN;
    let first = daily
        .next_after(start, &utc)
        .expect("a tick after the start");
    assert!(first > start);
    assert_eq!(utc.to_datetime(first).year(), -9999);
}

#[test]
fn rare_schedules_take_little_work() {
    // Thousands of searches that each skip years finish in no time, as
    // each skips a month in a few steps.
    let utc = TimeZone::UTC;
    let leap_sunday = cron("0 0 29 2 */7");
    let mut after = at("2000-01-01T00:00:00Z");
    for _ in 0..200 {
        after = leap_sunday.next_after(after, &utc).unwrap();
    }
    assert!(utc.to_datetime(after).year() > 7000);
}
