//! Each way a schedule is refused, and the message its author reads.

use thaw_cron::{Cron, CronError, Field};

fn error(expression: &str) -> CronError {
    match Cron::parse(expression) {
        Ok(cron) => panic!("`{expression}` parsed as `{cron}`"),
        Err(e) => e,
    }
}

fn message(expression: &str) -> String {
    error(expression).to_string()
}

#[test]
fn out_of_range_values_name_the_field_and_the_range() {
    assert_eq!(
        message("61 * * * *"),
        "minute field: `61` is out of range 0-59"
    );
    assert_eq!(
        message("60 * * * * *"),
        "second field: `60` is out of range 0-59"
    );
    assert_eq!(
        message("0 24 * * *"),
        "hour field: `24` is out of range 0-23"
    );
    assert_eq!(
        message("0 0 0 * *"),
        "day-of-month field: `0` is out of range 1-31"
    );
    assert_eq!(
        message("0 0 32 * *"),
        "day-of-month field: `32` is out of range 1-31"
    );
    assert_eq!(
        message("0 0 * 13 *"),
        "month field: `13` is out of range 1-12"
    );
    assert_eq!(
        message("0 0 * 0 *"),
        "month field: `0` is out of range 1-12"
    );
    assert_eq!(
        message("0 0 * * 8"),
        "day-of-week field: `8` is out of range 0-7"
    );
    assert_eq!(
        message("1-99999999999999999999 * * * *"),
        "minute field: `99999999999999999999` is out of range 0-59"
    );
    assert_eq!(
        error("0 0 * * 8"),
        CronError::OutOfRange {
            field: Field::DayOfWeek,
            token: "8".into(),
            min: 0,
            max: 7
        }
    );
}

#[test]
fn unknown_words_say_what_a_value_looks_like() {
    assert_eq!(message("5x * * * *"), "minute field: `5x` is not a number");
    assert_eq!(
        message("0 0 * * MONDAY"),
        "day-of-week field: `MONDAY` is not a number (0-7, 0 and 7 are Sunday) or a day name (SUN-SAT)"
    );
    assert_eq!(
        message("0 0 1 Janvier *"),
        "month field: `Janvier` is not a number (1-12) or a month name (JAN-DEC)"
    );
    // Names belong to their own field.
    assert_eq!(
        message("0 0 * MON *"),
        "month field: `MON` is not a number (1-12) or a month name (JAN-DEC)"
    );
    assert_eq!(
        message("JAN * * * *"),
        "minute field: `JAN` is not a number"
    );
}

#[test]
fn malformed_items_show_the_whole_item() {
    for (expression, field, item) in [
        ("1-2-3 * * * *", "minute", "1-2-3"),
        ("- * * * *", "minute", "-"),
        ("1- * * * *", "minute", "1-"),
        ("-1 * * * *", "minute", "-1"),
        ("*/ * * * *", "minute", "*/"),
        ("/5 * * * *", "minute", "/5"),
        ("1/2/3 * * * *", "minute", "1/2/3"),
        ("*/x * * * *", "minute", "*/x"),
        ("** * * * *", "minute", "**"),
        ("*-5 * * * *", "minute", "*-5"),
        ("0 0 1.5 * *", "day-of-month", "1.5"),
        ("0 0 * * !1", "day-of-week", "!1"),
    ] {
        assert_eq!(
            message(expression),
            format!(
                "{field} field: `{item}` is not a value, a range or a step; write forms such as `5`, `1-5`, `*/15` or `10-50/10`"
            ),
            "{expression}"
        );
    }
}

#[test]
fn other_dialects_specials_are_not_supported() {
    let unsupported = |field: &str, token: &str| {
        format!(
            "{field} field: `{token}` is not supported: thaw schedules have no `L`, `W`, `#` or `?`; list the days instead, or use a range"
        )
    };
    assert_eq!(message("0 0 L * *"), unsupported("day-of-month", "L"));
    assert_eq!(message("0 0 l * *"), unsupported("day-of-month", "l"));
    assert_eq!(message("0 0 LW * *"), unsupported("day-of-month", "LW"));
    assert_eq!(message("0 0 15W * *"), unsupported("day-of-month", "15W"));
    assert_eq!(message("0 0 L-3 * *"), unsupported("day-of-month", "L"));
    assert_eq!(message("0 0 ? * MON"), unsupported("day-of-month", "?"));
    assert_eq!(message("0 0 * * 5L"), unsupported("day-of-week", "5L"));
    assert_eq!(message("0 0 * * 5#3"), unsupported("day-of-week", "5#3"));
    assert_eq!(
        message("0 0 * * MON#1"),
        unsupported("day-of-week", "MON#1")
    );
    assert_eq!(message("0 0 1 * ?"), unsupported("day-of-week", "?"));
}

#[test]
fn empty_list_items() {
    for (expression, text) in [
        ("1,,2 * * * *", "1,,2"),
        (", * * * *", ","),
        ("1, * * * *", "1,"),
        (",1 * * * *", ",1"),
    ] {
        assert_eq!(
            message(expression),
            format!(
                "minute field: `{text}` has an empty list item; separate values with single commas"
            )
        );
    }
}

#[test]
fn steps_must_fit_the_field() {
    assert_eq!(
        message("*/0 * * * *"),
        "minute field: the step in `*/0` must be 1-60"
    );
    assert_eq!(
        message("0 0-23/0 * * *"),
        "hour field: the step in `0-23/0` must be 1-24"
    );
    assert_eq!(
        message("*/61 * * * *"),
        "minute field: the step in `*/61` must be 1-60"
    );
    assert_eq!(
        message("0 0 * * */8"),
        "day-of-week field: the step in `*/8` must be 1-7"
    );
    assert_eq!(
        message("0 0 * */300 *"),
        "month field: the step in `*/300` must be 1-12"
    );
    // The longest step allowed leaves only the first value.
    assert_eq!(Cron::parse("*/60 * * * *"), Cron::parse("0 * * * *"));
}

#[test]
fn ranges_must_run_forwards() {
    assert_eq!(
        message("0 5-2 * * *"),
        "hour field: the range `5-2` runs backwards; write the smaller value first (ranges do not wrap around)"
    );
    assert_eq!(
        message("0 0 * * FRI-MON"),
        "day-of-week field: the range `FRI-MON` runs backwards; write the smaller value first (ranges do not wrap around)"
    );
    assert_eq!(
        message("0 0 * DEC-JAN *"),
        "month field: the range `DEC-JAN` runs backwards; write the smaller value first (ranges do not wrap around)"
    );
    assert!(Cron::parse("0 5-5 * * *").is_ok());
}

#[test]
fn field_counts() {
    assert_eq!(
        message("* * * *"),
        "`* * * *` has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (a second field, then those five)"
    );
    assert_eq!(
        message("*"),
        "`*` has 1 field; expected 5 (minute hour day-of-month month day-of-week) or 6 (a second field, then those five)"
    );
    assert_eq!(
        error("* * * * * * *"),
        CronError::FieldCount {
            expression: "* * * * * * *".into(),
            found: 7
        }
    );
    assert_eq!(
        error("0 0 1 1 * 2024"),
        CronError::OutOfRange {
            field: Field::DayOfWeek,
            token: "2024".into(),
            min: 0,
            max: 7
        }
    );
}

#[test]
fn empty_schedules() {
    for expression in ["", "   ", "\t\n"] {
        assert_eq!(error(expression), CronError::Empty);
    }
    assert_eq!(
        message(""),
        "the schedule is empty: write five fields such as `*/5 * * * *`, or a macro such as `@daily`"
    );
}

#[test]
fn macros() {
    assert_eq!(
        message("@reboot"),
        "`@reboot` is not supported: thaw schedules are time-based; use a schedule such as `@hourly` or `*/5 * * * *`"
    );
    assert_eq!(error("@REBOOT"), CronError::Reboot);
    assert_eq!(
        message("@fortnightly"),
        "unknown macro `@fortnightly`: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    );
    assert_eq!(
        message("@"),
        "unknown macro `@`: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    );
    assert_eq!(
        message("@daily 0 0 * * *"),
        "`@daily` stands alone, but `0 0 * * *` follows it"
    );
    assert_eq!(
        message("@hourly\tnow"),
        "`@hourly` stands alone, but `now` follows it"
    );
    // A macro is not a field.
    assert_eq!(
        message("0 @daily * * *"),
        "hour field: `@daily` is not a value, a range or a step; write forms such as `5`, `1-5`, `*/15` or `10-50/10`"
    );
}

#[test]
fn overlong_schedules() {
    let long = format!("{} * * * *", "0,".repeat(130) + "0");
    assert!(long.len() > 256);
    assert_eq!(
        message(&long),
        format!(
            "the schedule is {} bytes long; the limit is 256 bytes",
            long.len()
        )
    );
    // A long schedule within the limit is fine.
    let within = format!("{} * * * *", "0,".repeat(100) + "0");
    assert!(within.len() <= 256);
    assert!(Cron::parse(&within).is_ok());
}

#[test]
fn only_printable_ascii() {
    assert_eq!(
        message("0 0 * * lundi\u{e9}"),
        "the schedule contains 'é': a schedule is plain printable ASCII (digits, letters, spaces and `* , - / @`)"
    );
    assert_eq!(
        error("0\u{a0}0 * * *"),
        CronError::BadCharacter { found: '\u{a0}' }
    );
    assert_eq!(
        error("0 0 * * *\0"),
        CronError::BadCharacter { found: '\0' }
    );
    assert_eq!(error("０ 0 * * *"), CronError::BadCharacter { found: '０' });
}

#[test]
fn schedules_that_never_fire() {
    for expression in [
        "0 0 30 2 *",
        "0 0 31 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30,31 FEB *",
        // Both fields must match when one starts with `*`: 31 February never
        // falls on a Sunday.
        "0 0 31 2 */7",
    ] {
        assert_eq!(
            message(expression),
            format!(
                "`{expression}` never fires: no date matches its day-of-month, month and day-of-week fields together"
            )
        );
    }
    // Rare is not never.
    for expression in ["0 0 29 2 *", "0 0 29 2 */7", "0 0 30 2 MON", "0 0 */30 2 *"] {
        assert!(Cron::parse(expression).is_ok(), "{expression}");
    }
}

#[test]
fn errors_are_errors() {
    let e: Box<dyn std::error::Error> = Box::new(error("61 * * * *"));
    assert_eq!(e.to_string(), "minute field: `61` is out of range 0-59");
}
