//! Reading time zone names.

use crate::{at, cron};
use jiff::tz::TimeZone;
use thaw_cron::{parse_time_zone, CronError};

#[test]
fn iana_names_in_any_case() {
    for (name, canonical) in [
        ("Europe/Paris", "Europe/Paris"),
        ("europe/paris", "Europe/Paris"),
        ("America/New_York", "America/New_York"),
        ("Asia/Kathmandu", "Asia/Kathmandu"),
        ("Etc/GMT+5", "Etc/GMT+5"),
    ] {
        let tz = parse_time_zone(name).unwrap();
        assert_eq!(tz.iana_name(), Some(canonical), "{name}");
    }
    assert_eq!(parse_time_zone("UTC").unwrap(), TimeZone::UTC);
    assert_eq!(parse_time_zone("utc").unwrap(), TimeZone::UTC);
}

#[test]
fn the_database_is_compiled_in() {
    // The zone's rules come with thaw: a change long past is known even
    // where the host has no zone files.
    let paris = parse_time_zone("Europe/Paris").unwrap();
    assert_eq!(
        paris.to_offset(at("2024-07-01T00:00:00Z")).to_string(),
        "+02"
    );
    assert_eq!(
        paris.to_offset(at("2024-01-01T00:00:00Z")).to_string(),
        "+01"
    );
}

#[test]
fn unknown_names_are_refused() {
    for name in [
        "",
        "Mars/Olympus_Mons",
        "Europe/Pariss",
        "CEST",
        "+02:00",
        "EST5EDT,M3.2.0,M11.1.0",
        "local",
        "../../etc/passwd",
        "Europe/Paris ",
        "Etc/Unknown",
    ] {
        assert_eq!(
            parse_time_zone(name),
            Err(CronError::UnknownTimeZone { name: name.into() }),
            "{name:?}"
        );
    }
    assert_eq!(
        parse_time_zone("Europe/Pariss").unwrap_err().to_string(),
        "unknown time zone `Europe/Pariss`: use an IANA name such as `Europe/Paris`, `America/New_York` or `UTC`"
    );
    let long = "A".repeat(1000);
    let e = parse_time_zone(&long).unwrap_err();
    assert_eq!(
        e,
        CronError::UnknownTimeZone {
            name: "A".repeat(64)
        }
    );
}

#[test]
fn the_same_schedule_fires_at_different_instants_in_different_zones() {
    let nine = cron("0 9 * * *");
    let after = at("2024-06-01T00:00:00Z");
    let tokyo = parse_time_zone("Asia/Tokyo").unwrap();
    let kathmandu = parse_time_zone("Asia/Kathmandu").unwrap();
    assert_eq!(
        nine.next_after(after, &TimeZone::UTC),
        Some(at("2024-06-01T09:00:00Z"))
    );
    assert_eq!(
        nine.next_after(after, &tokyo),
        Some(at("2024-06-01T00:00:00Z") + jiff::SignedDuration::from_hours(24))
    );
    assert_eq!(
        nine.next_after(after, &kathmandu),
        Some(at("2024-06-01T09:00:00+05:45"))
    );
}
