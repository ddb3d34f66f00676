//! Every form a field can take, and what each one fires at (in UTC).

use crate::{at, cron, ticks};
use jiff::tz::TimeZone;

#[test]
fn a_star_is_every_value() {
    assert_eq!(
        ticks("* * * * *", "2024-01-01T00:00:00", 3),
        [
            "2024-01-01T00:01:00",
            "2024-01-01T00:02:00",
            "2024-01-01T00:03:00"
        ]
    );
}

#[test]
fn a_number_is_that_value() {
    assert_eq!(
        ticks("5 * * * *", "2024-01-01T00:00:00", 2),
        ["2024-01-01T00:05:00", "2024-01-01T01:05:00"]
    );
    assert_eq!(
        ticks("05 07 * * *", "2024-01-01T00:00:00", 1),
        ["2024-01-01T07:05:00"]
    );
}

#[test]
fn a_range_is_every_value_in_it() {
    assert_eq!(
        ticks("10-12 * * * *", "2024-01-01T00:00:00", 4),
        [
            "2024-01-01T00:10:00",
            "2024-01-01T00:11:00",
            "2024-01-01T00:12:00",
            "2024-01-01T01:10:00"
        ]
    );
}

#[test]
fn a_starred_step_counts_from_the_first_value() {
    assert_eq!(
        ticks("*/20 * * * *", "2024-01-01T00:00:00", 3),
        [
            "2024-01-01T00:20:00",
            "2024-01-01T00:40:00",
            "2024-01-01T01:00:00"
        ]
    );
    // Days of month start at 1.
    assert_eq!(
        ticks("0 0 */10 * *", "2024-01-01T00:00:00", 4),
        [
            "2024-01-11T00:00:00",
            "2024-01-21T00:00:00",
            "2024-01-31T00:00:00",
            "2024-02-01T00:00:00"
        ]
    );
}

#[test]
fn a_stepped_range_stays_in_the_range() {
    assert_eq!(
        ticks("10-50/20 * * * *", "2024-01-01T00:00:00", 4),
        [
            "2024-01-01T00:10:00",
            "2024-01-01T00:30:00",
            "2024-01-01T00:50:00",
            "2024-01-01T01:10:00"
        ]
    );
    assert_eq!(
        ticks("0 9-17/4 * * *", "2024-01-01T00:00:00", 4),
        [
            "2024-01-01T09:00:00",
            "2024-01-01T13:00:00",
            "2024-01-01T17:00:00",
            "2024-01-02T09:00:00"
        ]
    );
}

#[test]
fn a_value_with_a_step_runs_to_the_end_of_the_field() {
    assert_eq!(
        ticks("5/20 * * * *", "2024-01-01T00:00:00", 4),
        [
            "2024-01-01T00:05:00",
            "2024-01-01T00:25:00",
            "2024-01-01T00:45:00",
            "2024-01-01T01:05:00"
        ]
    );
}

#[test]
fn a_list_is_any_of_its_items() {
    assert_eq!(
        ticks("0,20-21,*/30 * * * *", "2024-01-01T00:00:00", 5),
        [
            "2024-01-01T00:20:00",
            "2024-01-01T00:21:00",
            "2024-01-01T00:30:00",
            "2024-01-01T01:00:00",
            "2024-01-01T01:20:00"
        ]
    );
}

#[test]
fn month_names_in_any_case_also_in_ranges_and_steps() {
    assert_eq!(
        ticks("0 0 1 jan,Jul *", "2024-01-01T00:00:00", 2),
        ["2024-07-01T00:00:00", "2025-01-01T00:00:00"]
    );
    assert_eq!(
        ticks("0 0 1 FEB-apr *", "2024-01-01T00:00:00", 4),
        [
            "2024-02-01T00:00:00",
            "2024-03-01T00:00:00",
            "2024-04-01T00:00:00",
            "2025-02-01T00:00:00"
        ]
    );
    assert_eq!(
        ticks("0 0 1 JAN-DEC/3 *", "2024-01-01T00:00:00", 4),
        [
            "2024-04-01T00:00:00",
            "2024-07-01T00:00:00",
            "2024-10-01T00:00:00",
            "2025-01-01T00:00:00"
        ]
    );
}

#[test]
fn day_names_in_any_case_also_in_ranges() {
    // 2024-06-07 is a Friday.
    assert_eq!(
        ticks("0 12 * * MON-fri", "2024-06-07T00:00:00", 3),
        [
            "2024-06-07T12:00:00",
            "2024-06-10T12:00:00",
            "2024-06-11T12:00:00"
        ]
    );
    assert_eq!(
        ticks("0 12 * * sat,Sun", "2024-06-07T00:00:00", 3),
        [
            "2024-06-08T12:00:00",
            "2024-06-09T12:00:00",
            "2024-06-15T12:00:00"
        ]
    );
}

#[test]
fn sunday_is_both_zero_and_seven() {
    // 2024-06-09 is a Sunday.
    let sundays = ["2024-06-09T00:00:00", "2024-06-16T00:00:00"];
    assert_eq!(ticks("0 0 * * 0", "2024-06-07T00:00:00", 2), sundays);
    assert_eq!(ticks("0 0 * * 7", "2024-06-07T00:00:00", 2), sundays);
    assert_eq!(ticks("0 0 * * SUN", "2024-06-07T00:00:00", 2), sundays);
    assert_eq!(cron("0 0 * * 7"), cron("0 0 * * 0"));
    // Friday to Sunday, written with 7.
    assert_eq!(
        ticks("0 0 * * 5-7", "2024-06-06T00:00:00", 4),
        [
            "2024-06-07T00:00:00",
            "2024-06-08T00:00:00",
            "2024-06-09T00:00:00",
            "2024-06-14T00:00:00"
        ]
    );
    assert_eq!(cron("0 0 * * 0-7"), cron("0 0 * * 0-6"));
}

#[test]
fn macros_stand_for_their_schedules() {
    let cases = [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("  @Hourly\t", "0 * * * *"),
    ];
    for (name, fields) in cases {
        assert_eq!(cron(name), cron(fields), "{name}");
        assert_eq!(cron(name).to_string(), fields, "{name}");
    }
    assert_eq!(
        ticks("@weekly", "2024-06-07T00:00:00", 2),
        ["2024-06-09T00:00:00", "2024-06-16T00:00:00"]
    );
}

#[test]
fn six_fields_put_seconds_first() {
    let every_quarter_minute = cron("*/15 * * * * *");
    assert!(every_quarter_minute.has_seconds());
    assert_eq!(
        ticks("*/15 * * * * *", "2024-01-01T00:00:00", 5),
        [
            "2024-01-01T00:00:15",
            "2024-01-01T00:00:30",
            "2024-01-01T00:00:45",
            "2024-01-01T00:01:00",
            "2024-01-01T00:01:15"
        ]
    );
    assert_eq!(
        ticks("30 0 0 * * *", "2024-01-01T00:00:00", 2),
        ["2024-01-01T00:00:30", "2024-01-02T00:00:30"]
    );
    assert_eq!(
        ticks("* * * * * *", "2024-01-01T23:59:58", 3),
        [
            "2024-01-01T23:59:59",
            "2024-01-02T00:00:00",
            "2024-01-02T00:00:01"
        ]
    );
}

#[test]
fn five_fields_fire_at_second_zero() {
    let cron = cron("* * * * *");
    assert!(!cron.has_seconds());
    assert!(!crate::cron("@daily").has_seconds());
    assert_eq!(
        ticks("* * * * *", "2024-01-01T00:00:59", 1),
        ["2024-01-01T00:01:00"]
    );
}

#[test]
fn the_next_tick_is_strictly_after_the_instant_given() {
    let utc = TimeZone::UTC;
    let hourly = cron("0 * * * *");
    assert_eq!(
        hourly.next_after(at("2024-01-01T01:00:00Z"), &utc),
        Some(at("2024-01-01T02:00:00Z"))
    );
    assert_eq!(
        hourly.next_after(at("2024-01-01T00:59:59.999999999Z"), &utc),
        Some(at("2024-01-01T01:00:00Z"))
    );
    assert_eq!(
        hourly.next_after(at("2024-01-01T01:00:00.000000001Z"), &utc),
        Some(at("2024-01-01T02:00:00Z"))
    );
    let every_second = cron("* * * * * *");
    assert_eq!(
        every_second.next_after(at("2024-01-01T00:00:00.5Z"), &utc),
        Some(at("2024-01-01T00:00:01Z"))
    );
}

#[test]
fn spaces_and_tabs_separate_fields() {
    assert_eq!(cron("  */5\t*   * *  *  "), cron("*/5 * * * *"));
    assert_eq!(cron("0 0\t1 1 *"), cron("@yearly"));
}

#[test]
fn parses_with_from_str() {
    let parsed: thaw_cron::Cron = "*/5 * * * *".parse().unwrap();
    assert_eq!(parsed, cron("0-55/5 * * * *"));
    assert!("* * *".parse::<thaw_cron::Cron>().is_err());
}
