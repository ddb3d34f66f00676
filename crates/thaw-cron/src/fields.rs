//! A parsed schedule as bit sets, and the search for matching civil times.
//!
//! Everything here is civil (wall-clock) time with no zone: which times of
//! which days match. Turning those into instants is `zone.rs`'s job.

use jiff::civil::{Date, DateTime};

/// Years after which the Gregorian calendar, weekdays included, repeats.
///
/// Whether a date matches depends only on its month, day of month and day
/// of week, so a schedule that matches no date in one such span of years
/// matches none ever, and one that does match finds its next date within it.
pub(crate) const YEARS_PER_CYCLE: i32 = 400;

/// The values each field allows, as bit sets: bit `n` set means value `n`
/// is allowed. Days of week run 0 (Sunday) to 6; 7 is folded into 0 when
/// parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fields {
    pub seconds: u64,
    pub minutes: u64,
    pub hours: u64,
    pub days_of_month: u64,
    pub months: u64,
    pub days_of_week: u64,
    /// Whether the day-of-month field was written starting with `*`.
    pub day_of_month_starred: bool,
    /// Whether the day-of-week field was written starting with `*`.
    pub day_of_week_starred: bool,
}

/// Which way a search walks through civil time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Backward,
}

impl Direction {
    /// The allowed value nearest `from` in this direction, `from` included.
    fn seek(self, allowed: u64, from: i32) -> Option<i32> {
        let candidates = match self {
            Direction::Forward if from > 63 => 0,
            Direction::Forward => allowed & (u64::MAX << from.max(0)),
            Direction::Backward if from < 0 => 0,
            Direction::Backward => allowed & (u64::MAX >> (63 - from.min(63))),
        };
        if candidates == 0 {
            return None;
        }
        Some(match self {
            Direction::Forward => candidates.trailing_zeros() as i32,
            Direction::Backward => 63 - candidates.leading_zeros() as i32,
        })
    }

    /// Where a level starts when every level above it has moved past the
    /// bound: its first value going forward, its last going backward.
    fn start(self) -> i32 {
        match self {
            Direction::Forward => 0,
            Direction::Backward => 63,
        }
    }

    fn step(self) -> i32 {
        match self {
            Direction::Forward => 1,
            Direction::Backward => -1,
        }
    }
}

// The levels of a civil time, outermost first, as the search walks them.
const YEAR: usize = 0;
const MONTH: usize = 1;
const DAY: usize = 2;
const HOUR: usize = 3;
const MINUTE: usize = 4;
const SECOND: usize = 5;

impl Fields {
    /// The days of `month` in `year` on which the schedule fires, as a bit
    /// set (bit `d` for day `d`).
    ///
    /// When both day fields are restricted (neither starts with `*`), a day
    /// matches if either field does, as in Vixie cron; otherwise it must
    /// match both, which for a plain `*` leaves the other field to decide.
    fn days(&self, year: i16, month: i8) -> u64 {
        let Ok(first) = Date::new(year, month, 1) else {
            return 0;
        };
        let length = first.days_in_month() as u32;
        let first_weekday = first.weekday().to_sunday_zero_offset() as u32;
        let by_day_of_week = (1..=length)
            .filter(|day| self.days_of_week >> ((first_weekday + day - 1) % 7) & 1 == 1)
            .fold(0u64, |days, day| days | 1 << day);
        let by_day_of_month = self.days_of_month & (((1u64 << length) - 1) << 1);
        if self.day_of_month_starred || self.day_of_week_starred {
            by_day_of_month & by_day_of_week
        } else {
            by_day_of_month | by_day_of_week
        }
    }

    /// The values allowed at `level` once the levels above it are fixed.
    fn allowed(&self, level: usize, year: i32, month: i32) -> u64 {
        match level {
            MONTH => self.months,
            // Years the search walks stay within jiff's range, -9999..=9999.
            DAY => self.days(year as i16, month as i8),
            HOUR => self.hours,
            MINUTE => self.minutes,
            SECOND => self.seconds,
            _ => unreachable!("level {level} has no field"),
        }
    }

    /// The nearest matching civil time (whole seconds) to `bound` in
    /// direction `direction`, `bound` included.
    ///
    /// `None` when there is none within [`YEARS_PER_CYCLE`] years of
    /// `bound`, or before the end of the calendar jiff supports.
    pub(crate) fn search(&self, bound: DateTime, direction: Direction) -> Option<DateTime> {
        self.search_counting_steps(bound, direction).0
    }

    /// [`Fields::search`], also saying how many steps it took.
    ///
    /// The search is an odometer over year, month, day, hour, minute and
    /// second: at each level it jumps to the nearest allowed value with one
    /// bit operation, and when a level has none left it moves the level
    /// above by one and starts over below it. So the work is a few steps per
    /// month it rejects, whatever the fields are; it never walks minute by
    /// minute.
    pub(crate) fn search_counting_steps(
        &self,
        bound: DateTime,
        direction: Direction,
    ) -> (Option<DateTime>, u32) {
        let bound = [
            i32::from(bound.year()),
            i32::from(bound.month()),
            i32::from(bound.day()),
            i32::from(bound.hour()),
            i32::from(bound.minute()),
            i32::from(bound.second()),
        ];
        let mut value = bound;
        // Whether every level above the current one still equals the bound,
        // so that the current level must not pass it.
        let mut at_bound = true;
        let mut level = MONTH;
        let mut from = bound[MONTH];
        let mut steps = 0;
        loop {
            steps += 1;
            if level == YEAR {
                value[YEAR] += direction.step();
                if (value[YEAR] - bound[YEAR]).abs() > YEARS_PER_CYCLE
                    || !(-9999..=9999).contains(&value[YEAR])
                {
                    return (None, steps);
                }
                level = MONTH;
                from = direction.start();
                continue;
            }
            let allowed = self.allowed(level, value[YEAR], value[MONTH]);
            match direction.seek(allowed, from) {
                Some(found) => {
                    at_bound = at_bound && found == bound[level];
                    value[level] = found;
                    if level == SECOND {
                        let found = DateTime::new(
                            value[YEAR] as i16,
                            value[MONTH] as i8,
                            value[DAY] as i8,
                            value[HOUR] as i8,
                            value[MINUTE] as i8,
                            value[SECOND] as i8,
                            0,
                        );
                        return (found.ok(), steps);
                    }
                    level += 1;
                    from = if at_bound {
                        bound[level]
                    } else {
                        direction.start()
                    };
                }
                None => {
                    // Nothing left at this level: move the one above along.
                    at_bound = false;
                    level -= 1;
                    from = value[level] + direction.step();
                }
            }
        }
    }

    /// Whether any date at all matches: searched over one whole calendar
    /// cycle, which settles it for every year.
    pub(crate) fn ever_fires(&self) -> bool {
        let start = DateTime::new(2000, 1, 1, 0, 0, 0, 0).expect("a valid date");
        self.search(start, Direction::Forward).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn every(values: std::ops::RangeInclusive<u32>) -> u64 {
        values.fold(0, |set, v| set | 1 << v)
    }

    fn daily_at_midnight() -> Fields {
        Fields {
            seconds: 1,
            minutes: 1,
            hours: 1,
            days_of_month: every(1..=31),
            months: every(1..=12),
            days_of_week: every(0..=6),
            day_of_month_starred: true,
            day_of_week_starred: true,
        }
    }

    #[test]
    fn seek_finds_the_nearest_allowed_value_either_way() {
        let allowed = 1 << 3 | 1 << 10 | 1 << 63;
        assert_eq!(Direction::Forward.seek(allowed, 0), Some(3));
        assert_eq!(Direction::Forward.seek(allowed, 3), Some(3));
        assert_eq!(Direction::Forward.seek(allowed, 4), Some(10));
        assert_eq!(Direction::Forward.seek(allowed, 63), Some(63));
        assert_eq!(Direction::Forward.seek(allowed, 64), None);
        assert_eq!(Direction::Backward.seek(allowed, 63), Some(63));
        assert_eq!(Direction::Backward.seek(allowed, 62), Some(10));
        assert_eq!(Direction::Backward.seek(allowed, 3), Some(3));
        assert_eq!(Direction::Backward.seek(allowed, 2), None);
        assert_eq!(Direction::Backward.seek(allowed, -1), None);
    }

    #[test]
    fn days_follow_month_length_and_leap_years() {
        let fields = daily_at_midnight();
        assert_eq!(fields.days(2024, 2), every(1..=29));
        assert_eq!(fields.days(2023, 2), every(1..=28));
        assert_eq!(fields.days(2100, 2), every(1..=28));
        assert_eq!(fields.days(2000, 2), every(1..=29));
        assert_eq!(fields.days(2024, 4), every(1..=30));
        assert_eq!(fields.days(2024, 12), every(1..=31));
    }

    #[test]
    fn days_place_weekdays_from_the_first_of_the_month() {
        // June 2024 starts on a Saturday: its Mondays are 3, 10, 17, 24.
        let mondays = Fields {
            days_of_week: 1 << 1,
            day_of_week_starred: false,
            ..daily_at_midnight()
        };
        assert_eq!(mondays.days(2024, 6), 1 << 3 | 1 << 10 | 1 << 17 | 1 << 24);
    }

    #[test]
    fn a_leap_day_schedule_takes_few_steps_even_across_a_skipped_leap_year() {
        let leap_day = Fields {
            days_of_month: 1 << 29,
            months: 1 << 2,
            day_of_month_starred: false,
            ..daily_at_midnight()
        };
        // 2100 is not a leap year: the next 29 February after 2096 is in 2104.
        let (found, steps) =
            leap_day.search_counting_steps(date(2096, 3, 1).at(0, 0, 0, 0), Direction::Forward);
        assert_eq!(found, Some(date(2104, 2, 29).at(0, 0, 0, 0)));
        assert!(steps < 100, "took {steps} steps");
        let (found, steps) =
            leap_day.search_counting_steps(date(2104, 2, 28).at(0, 0, 0, 0), Direction::Backward);
        assert_eq!(found, Some(date(2096, 2, 29).at(0, 0, 0, 0)));
        assert!(steps < 100, "took {steps} steps");
    }

    #[test]
    fn an_impossible_schedule_gives_up_after_one_cycle() {
        let thirtieth_of_february = Fields {
            days_of_month: 1 << 30,
            months: 1 << 2,
            day_of_month_starred: false,
            ..daily_at_midnight()
        };
        assert!(!thirtieth_of_february.ever_fires());
        let (found, steps) = thirtieth_of_february
            .search_counting_steps(date(2024, 1, 1).at(0, 0, 0, 0), Direction::Forward);
        assert_eq!(found, None);
        assert!(steps <= 4 * 401 + 4, "took {steps} steps");
    }

    #[test]
    fn the_search_stops_at_the_end_of_the_calendar() {
        let fields = daily_at_midnight();
        let last = date(9999, 12, 31).at(0, 0, 0, 0);
        assert_eq!(fields.search(last, Direction::Forward), Some(last));
        assert_eq!(
            fields.search(date(9999, 12, 31).at(0, 0, 1, 0), Direction::Forward),
            None
        );
        let first = date(-9999, 1, 1).at(0, 0, 0, 0);
        assert_eq!(
            fields.search(date(-9999, 1, 1).at(23, 0, 0, 0), Direction::Backward),
            Some(first)
        );
        assert_eq!(
            fields.search(date(-9999, 1, 1).at(0, 0, 0, 0), Direction::Backward),
            Some(first)
        );
    }
}
