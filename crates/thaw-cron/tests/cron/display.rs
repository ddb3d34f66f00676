//! The normalised expression a schedule prints as.

use crate::cron;
use thaw_cron::Cron;

#[test]
fn prints_a_normalised_expression() {
    for (written, printed) in [
        ("* * * * *", "* * * * *"),
        ("  0   0  *  *  * ", "0 0 * * *"),
        ("*/15 * * * *", "*/15 * * * *"),
        ("0-59/15 * * * *", "*/15 * * * *"),
        ("0/15 * * * *", "*/15 * * * *"),
        ("5/15 * * * *", "5-50/15 * * * *"),
        ("0-59 0-23 * 1-12 *", "* * * * *"),
        ("1,2,3,4,5 * * * *", "1-5 * * * *"),
        ("5,1,3,2,4,4 * * * *", "1-5 * * * *"),
        ("7,8,30 * * * *", "7,8,30 * * * *"),
        ("10-12,20,40-45 * * * *", "10-12,20,40-45 * * * *"),
        ("0 9-17 * * MON-FRI", "0 9-17 * * 1-5"),
        ("0 0 1 jan,JUL *", "0 0 1 */6 *"),
        ("0 0 1 feb,aug *", "0 0 1 2,8 *"),
        ("0,30 * * * *", "*/30 * * * *"),
        ("0 0 1 */3 *", "0 0 1 */3 *"),
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * 5-7", "0 0 * * 0,5,6"),
        ("0 0 * * 0-7", "0 0 * * 0-6"),
        ("0 0 * * SUN-SAT", "0 0 * * 0-6"),
        ("@daily", "0 0 * * *"),
        ("@yearly", "0 0 1 1 *"),
        ("*/10 * * * * *", "*/10 * * * * *"),
        ("0 * * * * *", "0 * * * * *"),
        ("*/60 * * * *", "0 * * * *"),
        ("0 */24 * * *", "0 0 * * *"),
    ] {
        assert_eq!(cron(written).to_string(), printed, "`{written}`");
    }
}

#[test]
fn day_fields_keep_their_leading_star_because_it_changes_their_meaning() {
    for (written, printed) in [
        ("0 0 1-31 * MON", "0 0 1-31 * 1"),
        ("0 0 * * MON", "0 0 * * 1"),
        ("0 0 */2 * MON", "0 0 */2 * 1"),
        ("0 0 1-31/2 * MON", "0 0 1-31/2 * 1"),
        ("0 0 */2,4 * 1", "0 0 */2,4 * 1"),
        ("0 0 *,4 * 1", "0 0 * * 1"),
        ("0 0 1 * */2", "0 0 1 * */2"),
        ("0 0 1 * 0-6/2", "0 0 1 * 0-6/2"),
        ("0 0 1 * */7", "0 0 1 * */7"),
        ("0 0 1 * 0", "0 0 1 * 0"),
    ] {
        assert_eq!(cron(written).to_string(), printed, "`{written}`");
    }
    // The same days of month, combined differently with Mondays.
    assert_ne!(cron("0 0 1-31 * MON"), cron("0 0 * * MON"));
}

#[test]
fn printing_then_parsing_gives_the_same_schedule() {
    for written in [
        "* * * * *",
        "*/7 */5 */3 */2 */4",
        "3-58/5 1-22/7 2-30/4 2-11/3 1-5/2",
        "0 0 */2,4,9-12 * 1",
        "0 0 1,15 * MON,FRI",
        "0 0 */30,2 * */3,1",
        "1,2,4,8,16,32 0 1 1 *",
        "59 23 31 12 6",
        "*/13 30 2 * * SAT",
        "@monthly",
    ] {
        let parsed = cron(written);
        let printed = parsed.to_string();
        let reparsed = cron(&printed);
        assert_eq!(reparsed, parsed, "`{written}` printed as `{printed}`");
        assert_eq!(reparsed.to_string(), printed, "`{written}`");
        assert_eq!(reparsed.has_seconds(), parsed.has_seconds());
    }
}

#[test]
fn debug_shows_the_expression() {
    assert_eq!(format!("{:?}", cron("@hourly")), "Cron(\"0 * * * *\")");
    assert!(Cron::parse("x").is_err());
}
