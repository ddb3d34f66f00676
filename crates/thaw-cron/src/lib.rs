//! The schedule arithmetic of thaw's cron triggers: reading a cron
//! expression and a time zone name, and saying when the schedule fires.
//!
//! It owns the syntax of schedules, their error messages, and the rules for
//! daylight-saving changes. It is pure computation: it does no I/O and
//! never reads the clock, so callers pass every instant in (thaw stores
//! schedules in its database and asks this crate when each fires next).
//! Running the triggers, and what to do about ticks missed while thaw was
//! down, belong to the caller; [`Cron::missed`] gives it the facts.
//!
//! ```
//! use jiff::Timestamp;
//! use thaw_cron::{parse_time_zone, Cron};
//!
//! let cron = Cron::parse("30 9 * * mon-fri")?;
//! let paris = parse_time_zone("Europe/Paris")?;
//! let after: Timestamp = "2024-06-07T08:00:00Z".parse()?; // a Friday
//! let next = cron.next_after(after, &paris).unwrap();
//! assert_eq!(next.to_string(), "2024-06-10T07:30:00Z"); // Monday, 09:30 in Paris
//! assert_eq!(cron.to_string(), "30 9 * * 1-5");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Searches work on civil (wall-clock) time, jumping field by field, and
//! convert to instants at the end, so finding the next firing of even a
//! rare schedule (`0 0 29 2 *`) takes a few steps per month skipped.
//!
#![doc = include_str!("../SYNTAX.md")]

mod error;
mod fields;
mod format;
mod parse;
mod zone;

use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

pub use error::{CronError, Field};
pub use zone::parse_time_zone;

use fields::{Direction, Fields};

/// The longest schedule accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 256;

/// A parsed schedule: when a cron trigger fires.
///
/// Equal schedules print the same (see [`Cron`]'s `Display`), and printing
/// then parsing gives back an equal schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cron {
    fields: Fields,
    has_seconds: bool,
}

impl Cron {
    /// Reads a schedule: five fields, six with a leading second field, or
    /// a macro such as `@daily`. Refuses schedules that can never fire,
    /// such as `0 0 30 2 *`.
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let parsed = parse::parse(expression)?;
        if !parsed.fields.ever_fires() {
            return Err(CronError::NeverFires {
                expression: expression.trim().to_owned(),
            });
        }
        Ok(Cron {
            fields: parsed.fields,
            has_seconds: parsed.has_seconds,
        })
    }

    /// Whether the schedule was written with a leading second field; if
    /// not, it fires at second 0 of its minutes.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The first instant strictly after `after` at which the schedule fires
    /// in `tz`.
    ///
    /// `None` only past the end of the calendar (the year 9999): schedules
    /// that never fire are refused by [`Cron::parse`].
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.ticks_after(after, tz).next()
    }

    /// Every instant strictly after `after` at which the schedule fires in
    /// `tz`, in order. Each step costs what one [`Cron::next_after`] does.
    pub fn ticks_after<'a>(&'a self, after: Timestamp, tz: &'a TimeZone) -> Ticks<'a> {
        Ticks {
            fields: &self.fields,
            tz,
            bound: zone::first_civil_after(tz, after),
            last: after,
        }
    }

    /// The ticks of the schedule in `tz` that fall in `(after, until]`: for
    /// thaw to decide what to fire on catching up after downtime, with
    /// `after` the last tick it handled and `until` now.
    ///
    /// The work is bounded whatever the span: the count stops at
    /// [`Missed::COUNT_CAP`], and the latest tick is then found by searching
    /// back from `until`.
    pub fn missed(&self, after: Timestamp, until: Timestamp, tz: &TimeZone) -> Missed {
        let mut missed = Missed::default();
        for tick in self
            .ticks_after(after, tz)
            .take_while(|&tick| tick <= until)
            .take(Missed::COUNT_CAP as usize)
        {
            missed.latest = Some(tick);
            missed.count += 1;
        }
        if missed.count == Missed::COUNT_CAP {
            missed.latest = self.last_at_or_before(until, tz);
        }
        missed
    }

    /// The latest instant at or before `until` at which the schedule fires
    /// in `tz`.
    fn last_at_or_before(&self, until: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut bound = zone::last_civil_at_or_before(tz, until)?;
        loop {
            let civil = self.fields.search(bound, Direction::Backward)?;
            let instant = zone::firing_instant(tz, civil)?;
            if instant <= until {
                return Some(instant);
            }
            // `last_civil_at_or_before` rules this out; stepping back one
            // second keeps the answer right should a zone's rules surprise.
            bound = civil.checked_sub(SignedDuration::from_secs(1)).ok()?;
        }
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Cron, CronError> {
        Cron::parse(expression)
    }
}

/// The normalised expression: numbers rather than names, macros spelled
/// out, single spaces, and each field in a canonical form (`@daily` and
/// `0 0 * * 7` print as `0 0 * * *` and `0 0 * * 0`).
impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format::write_expression(f, &self.fields, self.has_seconds)
    }
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.to_string())
    }
}

/// The ticks of a schedule in a span of time, from [`Cron::missed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Missed {
    /// The latest tick in the span, if there was any.
    pub latest: Option<Timestamp>,
    /// How many ticks fell in the span, counted up to [`Missed::COUNT_CAP`]:
    /// a count equal to the cap means at least that many.
    pub count: u64,
}

impl Missed {
    /// Where [`Missed::count`] stops counting.
    pub const COUNT_CAP: u64 = 10_000;
}

/// The instants a schedule fires at, in order, from [`Cron::ticks_after`].
#[derive(Debug, Clone)]
pub struct Ticks<'a> {
    fields: &'a Fields,
    tz: &'a TimeZone,
    /// The earliest civil time that can still fire; `None` once past the
    /// end of the calendar.
    bound: Option<DateTime>,
    /// The last instant returned (or the starting one): each tick is
    /// strictly later.
    last: Timestamp,
}

impl Iterator for Ticks<'_> {
    type Item = Timestamp;

    fn next(&mut self) -> Option<Timestamp> {
        while let Some(bound) = self.bound {
            let Some(civil) = self.fields.search(bound, Direction::Forward) else {
                self.bound = None;
                break;
            };
            let Some(instant) = zone::firing_instant(self.tz, civil) else {
                self.bound = None;
                break;
            };
            if instant > self.last {
                self.last = instant;
                self.bound = zone::first_civil_after(self.tz, instant);
                return Some(instant);
            }
            // `first_civil_after` rules this out; stepping on one second
            // keeps the answer right should a zone's rules surprise.
            self.bound = civil.checked_add(SignedDuration::from_secs(1)).ok();
        }
        None
    }
}

impl FusedIterator for Ticks<'_> {}
