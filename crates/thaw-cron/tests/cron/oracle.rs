//! A brute-force check: walk instants one second or one minute at a time,
//! watch the wall clock, and fire whenever it reaches or jumps over a
//! matching time it has not shown before. `next_after`, `ticks_after` and
//! `missed` must agree with that walk, from any instant.

use crate::{at, cron, zone};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use thaw_cron::{Cron, Missed};

/// A schedule matched the slow, obvious way: one flag per value.
struct Naive {
    seconds: Vec<bool>,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days_of_month: Vec<bool>,
    months: Vec<bool>,
    days_of_week: Vec<bool>,
    either_day: bool,
}

const NAMES: [(&str, &str); 19] = [
    ("JAN", "1"),
    ("FEB", "2"),
    ("MAR", "3"),
    ("APR", "4"),
    ("MAY", "5"),
    ("JUN", "6"),
    ("JUL", "7"),
    ("AUG", "8"),
    ("SEP", "9"),
    ("OCT", "10"),
    ("NOV", "11"),
    ("DEC", "12"),
    ("SUN", "0"),
    ("MON", "1"),
    ("TUE", "2"),
    ("WED", "3"),
    ("THU", "4"),
    ("FRI", "5"),
    ("SAT", "6"),
];

impl Naive {
    fn new(expression: &str) -> Naive {
        let mut upper = expression.to_ascii_uppercase();
        for (name, number) in NAMES {
            upper = upper.replace(name, number);
        }
        let mut fields: Vec<&str> = upper.split_whitespace().collect();
        if fields.len() == 5 {
            fields.insert(0, "0");
        }
        let flags = |text: &str, low: u32, high: u32| {
            let mut flags = vec![false; 8 + high as usize];
            for item in text.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((range, step)) => (range, step.parse().unwrap()),
                    None => (item, 1),
                };
                let (first, last) = if range == "*" {
                    (low, high)
                } else if let Some((a, b)) = range.split_once('-') {
                    (a.parse().unwrap(), b.parse().unwrap())
                } else if item.contains('/') {
                    (range.parse().unwrap(), high)
                } else {
                    (range.parse().unwrap(), range.parse().unwrap())
                };
                let mut value = first;
                while value <= last {
                    flags[value as usize] = true;
                    value += step;
                }
            }
            flags
        };
        let mut days_of_week = flags(fields[5], 0, 6);
        days_of_week[0] |= days_of_week[7];
        Naive {
            seconds: flags(fields[0], 0, 59),
            minutes: flags(fields[1], 0, 59),
            hours: flags(fields[2], 0, 23),
            days_of_month: flags(fields[3], 1, 31),
            months: flags(fields[4], 1, 12),
            days_of_week,
            either_day: !fields[3].starts_with('*') && !fields[5].starts_with('*'),
        }
    }

    fn matches(&self, t: DateTime) -> bool {
        let on_day_of_month = self.days_of_month[t.day() as usize];
        let on_day_of_week = self.days_of_week[t.weekday().to_sunday_zero_offset() as usize];
        let on_day = if self.either_day {
            on_day_of_month || on_day_of_week
        } else {
            on_day_of_month && on_day_of_week
        };
        on_day
            && self.seconds[t.second() as usize]
            && self.minutes[t.minute() as usize]
            && self.hours[t.hour() as usize]
            && self.months[t.month() as usize]
    }
}

/// Every firing in `(start, end]`, found by walking instants `step` apart
/// (`start` on a whole step) and watching the wall clock.
fn walk(
    naive: &Naive,
    tz: &TimeZone,
    start: Timestamp,
    end: Timestamp,
    step: i64,
) -> Vec<Timestamp> {
    let step = SignedDuration::from_secs(step);
    let mut fired = Vec::new();
    // The furthest the wall clock has been.
    let mut furthest = tz.to_datetime(start);
    let mut instant = start + step;
    while instant <= end {
        let wall = tz.to_datetime(instant);
        if wall > furthest {
            // Every wall-clock time the clock has now reached or jumped over.
            let mut passed = furthest + step;
            while passed <= wall && !naive.matches(passed) {
                passed += step;
            }
            if passed <= wall {
                fired.push(instant);
            }
            furthest = wall;
        }
        instant += step;
    }
    fired
}

/// A small deterministic random number generator (splitmix64).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An instant in `[start, end)`, to the nanosecond, often on a whole
    /// second or minute where ticks are.
    fn instant(&mut self, start: Timestamp, end: Timestamp) -> Timestamp {
        let span = (end - start).as_secs().max(1) as u64;
        let mut offset = SignedDuration::from_secs((self.next() % span) as i64);
        match self.next() % 4 {
            0 => offset = SignedDuration::from_secs(offset.as_secs() / 60 * 60),
            1 => {}
            _ => offset += SignedDuration::from_nanos((self.next() % 1_000_000_000) as i64),
        }
        start + offset
    }
}

/// Checks one schedule in one zone over `(start, end]` against the walk.
fn check(expression: &str, tz_name: &str, start: Timestamp, end: Timestamp, seed: u64) {
    let cron: Cron = cron(expression);
    let tz = zone(tz_name);
    let step = if cron.has_seconds() { 1 } else { 60 };
    let expected = walk(&Naive::new(expression), &tz, start, end, step);
    let context = format!("`{expression}` in {tz_name} over ({start}, {end}]");

    let ticks: Vec<Timestamp> = cron
        .ticks_after(start, &tz)
        .take_while(|&tick| tick <= end)
        .collect();
    assert_eq!(ticks, expected, "{context}");

    let mut random = Random(seed);
    let mut previous: Option<(Timestamp, Timestamp)> = None;
    let mut afters: Vec<Timestamp> = (0..300).map(|_| random.instant(start, end)).collect();
    afters.sort();
    for after in afters {
        let next = cron.next_after(after, &tz).expect("a next tick");
        assert!(next > after, "{context}: {next} not after {after}");
        let first_expected = expected[expected.partition_point(|&t| t <= after)..].first();
        match first_expected {
            Some(&first) => assert_eq!(next, first, "{context}: after {after}"),
            None => assert!(next > end, "{context}: after {after} got {next}"),
        }
        if let Some((previous_after, previous_next)) = previous {
            assert!(
                next >= previous_next,
                "{context}: after {after} got {next}, but after {previous_after} got {previous_next}"
            );
        }
        previous = Some((after, next));
    }

    for pair in 0..60 {
        // Mostly spans of up to an hour; a few long ones, which for the
        // busiest schedules pass the cap on counting.
        let from = random.instant(start, end);
        let until = if pair % 10 == 0 {
            random.instant(from, end)
        } else {
            random.instant(from, from + SignedDuration::from_hours(1))
        }
        .min(end);
        let missed = cron.missed(from, until, &tz);
        let in_span: Vec<&Timestamp> = expected
            .iter()
            .filter(|&&t| from < t && t <= until)
            .collect();
        // Past the cap, the count stops but the latest tick is still found.
        let count = (in_span.len() as u64).min(Missed::COUNT_CAP);
        assert_eq!(missed.count, count, "{context}: ({from}, {until}]");
        assert_eq!(
            missed.latest,
            in_span.last().copied().copied(),
            "{context}: ({from}, {until}]"
        );
    }
}

const FIVE_FIELDS: [&str; 14] = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "59 1 * * *",
    "0,30 2,3 * * *",
    "*/15 1-3 * * *",
    "0 0 * * *",
    "45 23 * * *",
    "5 2 8-14 * SUN",
    "5 2 */2 * SUN",
    "10 1,2 1,10,27,31 * MON,SAT",
    "0 12 * FEB,MAR,OCT,NOV *",
    "*/20 0-4 * * 0,6",
];

const SIX_FIELDS: [&str; 6] = [
    "* * * * * *",
    "*/7 * * * * *",
    "30 30 2 * * *",
    "0 */20 1-3 * * *",
    "59 59 1 * * *",
    "15,45 0 * * * *",
];

/// Checks every schedule around each instant in `around` (typically a
/// change of offset): minute schedules over three days, second schedules
/// over eight hours.
fn check_zone(tz_name: &str, around: &[&str]) {
    for (index, centre) in around.iter().enumerate() {
        let centre = at(centre);
        for (number, expression) in FIVE_FIELDS.iter().enumerate() {
            let half = SignedDuration::from_hours(36);
            check(
                expression,
                tz_name,
                centre - half,
                centre + half,
                (index * 100 + number) as u64,
            );
        }
        for (number, expression) in SIX_FIELDS.iter().enumerate() {
            let half = SignedDuration::from_hours(4);
            check(
                expression,
                tz_name,
                centre - half,
                centre + half,
                (index * 100 + 50 + number) as u64,
            );
        }
    }
}

#[test]
fn agrees_with_the_walk_in_utc_around_a_leap_day() {
    check_zone("UTC", &["2024-02-29T12:00:00Z", "2023-12-31T23:00:00Z"]);
}

#[test]
fn agrees_with_the_walk_in_new_york() {
    check_zone(
        "America/New_York",
        &["2024-03-10T07:00:00Z", "2024-11-03T06:00:00Z"],
    );
}

#[test]
fn agrees_with_the_walk_in_berlin() {
    check_zone(
        "Europe/Berlin",
        &["2024-03-31T01:00:00Z", "2024-10-27T01:00:00Z"],
    );
}

#[test]
fn agrees_with_the_walk_in_lord_howe() {
    // Half-hour changes: 2024-04-07 02:00 back to 01:30, 2024-10-06 02:00
    // forward to 02:30.
    check_zone(
        "Australia/Lord_Howe",
        &["2024-04-06T15:00:00Z", "2024-10-05T15:30:00Z"],
    );
}

#[test]
fn agrees_with_the_walk_in_santiago() {
    // Changes at midnight.
    check_zone(
        "America/Santiago",
        &["2024-04-07T03:00:00Z", "2024-09-08T04:00:00Z"],
    );
}
