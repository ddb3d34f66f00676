//! Daylight-saving changes: skipped times fire once when the clocks jump,
//! repeated times fire once on their first occurrence.

use crate::{at, cron, ticks_in, wall, zone};

// America/New_York, 2024: 02:00 EST becomes 03:00 EDT on 10 March, and
// 02:00 EDT becomes 01:00 EST on 3 November.
const NEW_YORK: &str = "America/New_York";
// Europe/Berlin, 2024: 02:00 CET becomes 03:00 CEST on 31 March, and
// 03:00 CEST becomes 02:00 CET on 27 October.
const BERLIN: &str = "Europe/Berlin";

#[test]
fn new_york_a_skipped_time_fires_when_the_clocks_jump() {
    assert_eq!(
        ticks_in("30 2 * * *", NEW_YORK, "2024-03-09T12:00:00-05:00", 3),
        [
            "2024-03-10T03:00:00-04",
            "2024-03-11T02:30:00-04",
            "2024-03-12T02:30:00-04"
        ]
    );
}

#[test]
fn new_york_several_skipped_times_fire_once_together() {
    assert_eq!(
        ticks_in("*/15 2 * * *", NEW_YORK, "2024-03-10T00:00:00-05:00", 2),
        ["2024-03-10T03:00:00-04", "2024-03-11T02:00:00-04"]
    );
    // 02:00 and 02:30 are skipped; 03:00 is when the clocks land: one tick.
    assert_eq!(
        ticks_in("0,30 2,3 * * *", NEW_YORK, "2024-03-10T00:00:00-05:00", 3),
        [
            "2024-03-10T03:00:00-04",
            "2024-03-10T03:30:00-04",
            "2024-03-11T02:00:00-04"
        ]
    );
}

#[test]
fn new_york_hourly_and_every_second_across_spring_forward() {
    assert_eq!(
        ticks_in("0 * * * *", NEW_YORK, "2024-03-10T00:30:00-05:00", 3),
        [
            "2024-03-10T01:00:00-05",
            "2024-03-10T03:00:00-04",
            "2024-03-10T04:00:00-04"
        ]
    );
    assert_eq!(
        ticks_in("* * * * * *", NEW_YORK, "2024-03-10T01:59:58-05:00", 3),
        [
            "2024-03-10T01:59:59-05",
            "2024-03-10T03:00:00-04",
            "2024-03-10T03:00:01-04"
        ]
    );
    assert_eq!(
        ticks_in("59 1 * * *", NEW_YORK, "2024-03-10T00:00:00-05:00", 1),
        ["2024-03-10T01:59:00-05"]
    );
}

#[test]
fn new_york_a_repeated_time_fires_on_its_first_occurrence_only() {
    assert_eq!(
        ticks_in("30 1 * * *", NEW_YORK, "2024-11-02T12:00:00-04:00", 2),
        ["2024-11-03T01:30:00-04", "2024-11-04T01:30:00-05"]
    );
    assert_eq!(
        ticks_in("*/15 * * * *", NEW_YORK, "2024-11-03T00:50:00-04:00", 6),
        [
            "2024-11-03T01:00:00-04",
            "2024-11-03T01:15:00-04",
            "2024-11-03T01:30:00-04",
            "2024-11-03T01:45:00-04",
            "2024-11-03T02:00:00-05",
            "2024-11-03T02:15:00-05"
        ]
    );
    assert_eq!(
        ticks_in("0 * * * *", NEW_YORK, "2024-11-03T00:30:00-04:00", 3),
        [
            "2024-11-03T01:00:00-04",
            "2024-11-03T02:00:00-05",
            "2024-11-03T03:00:00-05"
        ]
    );
    assert_eq!(
        ticks_in("*/20 * * * * *", NEW_YORK, "2024-11-03T01:59:30-04:00", 3),
        [
            "2024-11-03T01:59:40-04",
            "2024-11-03T02:00:00-05",
            "2024-11-03T02:00:20-05"
        ]
    );
}

#[test]
fn new_york_asking_during_the_repeat_skips_what_already_fired() {
    let tz = zone(NEW_YORK);
    let quarter_hours = cron("*/15 * * * *");
    for after in [
        // The clocks have just gone back.
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T01:10:00-05:00",
        "2024-11-03T01:59:59.5-05:00",
        // The last moment before they go back.
        "2024-11-03T01:59:59.999999999-04:00",
    ] {
        let next = quarter_hours.next_after(at(after), &tz).unwrap();
        assert_eq!(wall(&tz, next), "2024-11-03T02:00:00-05", "after {after}");
    }
    let daily = cron("30 1 * * *");
    let next = daily
        .next_after(at("2024-11-03T01:10:00-05:00"), &tz)
        .unwrap();
    assert_eq!(wall(&tz, next), "2024-11-04T01:30:00-05");
    let next = daily
        .next_after(at("2024-11-03T01:10:00-04:00"), &tz)
        .unwrap();
    assert_eq!(wall(&tz, next), "2024-11-03T01:30:00-04");
}

#[test]
fn berlin_spring_forward() {
    assert_eq!(
        ticks_in("30 2 * * *", BERLIN, "2024-03-30T12:00:00+01:00", 2),
        ["2024-03-31T03:00:00+02", "2024-04-01T02:30:00+02"]
    );
    assert_eq!(
        ticks_in("0 * * * *", BERLIN, "2024-03-31T00:30:00+01:00", 3),
        [
            "2024-03-31T01:00:00+01",
            "2024-03-31T03:00:00+02",
            "2024-03-31T04:00:00+02"
        ]
    );
    assert_eq!(
        ticks_in("0 */10 2 * * *", BERLIN, "2024-03-31T01:59:00+01:00", 2),
        ["2024-03-31T03:00:00+02", "2024-04-01T02:00:00+02"]
    );
}

#[test]
fn berlin_fall_back() {
    assert_eq!(
        ticks_in("30 2 * * *", BERLIN, "2024-10-26T12:00:00+02:00", 2),
        ["2024-10-27T02:30:00+02", "2024-10-28T02:30:00+01"]
    );
    assert_eq!(
        ticks_in("0 * * * *", BERLIN, "2024-10-27T00:30:00+02:00", 4),
        [
            "2024-10-27T01:00:00+02",
            "2024-10-27T02:00:00+02",
            "2024-10-27T03:00:00+01",
            "2024-10-27T04:00:00+01"
        ]
    );
    assert_eq!(
        ticks_in("*/30 2 * * *", BERLIN, "2024-10-27T00:00:00+02:00", 3),
        [
            "2024-10-27T02:00:00+02",
            "2024-10-27T02:30:00+02",
            "2024-10-28T02:00:00+01"
        ]
    );
}

#[test]
fn half_hour_changes_in_lord_howe() {
    // Clocks go from 02:00 to 02:30 on 6 October 2024, and from 02:00 back
    // to 01:30 on 7 April 2024.
    const LORD_HOWE: &str = "Australia/Lord_Howe";
    assert_eq!(
        ticks_in("15 2 * * *", LORD_HOWE, "2024-10-05T12:00:00+10:30", 2),
        ["2024-10-06T02:30:00+11", "2024-10-07T02:15:00+11"]
    );
    assert_eq!(
        ticks_in("*/20 1 * * *", LORD_HOWE, "2024-04-07T00:30:00+11:00", 4),
        [
            "2024-04-07T01:00:00+11",
            "2024-04-07T01:20:00+11",
            "2024-04-07T01:40:00+11",
            "2024-04-08T01:00:00+10:30"
        ]
    );
}

#[test]
fn changes_at_midnight_in_santiago() {
    // Clocks go from 00:00 to 01:00 on 8 September 2024, and from 00:00
    // back to 23:00 the night of 6 April 2024.
    const SANTIAGO: &str = "America/Santiago";
    assert_eq!(
        ticks_in("0 0 * * *", SANTIAGO, "2024-09-07T12:00:00-04:00", 2),
        ["2024-09-08T01:00:00-03", "2024-09-09T00:00:00-03"]
    );
    assert_eq!(
        ticks_in("0 23 * * *", SANTIAGO, "2024-04-06T12:00:00-03:00", 2),
        ["2024-04-06T23:00:00-03", "2024-04-07T23:00:00-04"]
    );
    assert_eq!(
        ticks_in("0 0 * * *", SANTIAGO, "2024-04-06T12:00:00-03:00", 1),
        ["2024-04-07T00:00:00-04"]
    );
}

#[test]
fn a_whole_skipped_day_in_samoa_fires_once_when_it_ends() {
    // Samoa went from the end of 29 December 2011 straight to 31 December.
    assert_eq!(
        ticks_in("0 12 * * *", "Pacific/Apia", "2011-12-29T00:00:00-10:00", 3),
        [
            "2011-12-29T12:00:00-10",
            "2011-12-31T00:00:00+14",
            "2011-12-31T12:00:00+14"
        ]
    );
    assert_eq!(
        ticks_in(
            "0 9 30 12 *",
            "Pacific/Apia",
            "2011-01-01T00:00:00-10:00",
            1
        ),
        ["2011-12-31T00:00:00+14"]
    );
}

#[test]
fn firings_strictly_increase_through_a_year_of_changes() {
    for name in [NEW_YORK, BERLIN, "Australia/Lord_Howe"] {
        let tz = zone(name);
        for expression in ["*/10 * * * *", "30 2 * * *", "0 1-3 * * *"] {
            let cron = cron(expression);
            let start = at("2024-01-01T00:00:00Z");
            let end = at("2025-01-01T00:00:00Z");
            let mut last = start;
            let mut seen = std::collections::HashSet::new();
            for tick in cron.ticks_after(start, &tz).take_while(|&t| t < end) {
                assert!(tick > last, "{name} `{expression}`: {tick} after {last}");
                let civil = tz.to_datetime(tick);
                assert!(seen.insert(civil), "{name} `{expression}`: {civil} twice");
                last = tick;
            }
        }
    }
}
