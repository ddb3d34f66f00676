//! Writing a schedule back as a normalised expression.
//!
//! Numbers instead of names, macros spelled out, one space between fields,
//! and each field in a canonical form of its values: `*`, `*/n`, `a-b/n`,
//! or a list of values and runs (`1,5,10-20`). Reading the result back
//! gives the same schedule, and writing that gives the same text.

use std::fmt::{self, Write};

use crate::fields::Fields;
use crate::parse::{Spec, DAY_OF_MONTH, DAY_OF_WEEK, HOUR, MINUTE, MONTH, SECOND};

/// Whether a field's text must, may or must not start with `*`. Only the
/// day fields care: whether they start with `*` decides how they combine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Star {
    Required,
    Allowed,
    Forbidden,
}

impl Star {
    fn for_day_field(starred: bool) -> Star {
        if starred {
            Star::Required
        } else {
            Star::Forbidden
        }
    }
}

pub(crate) fn write_expression(
    out: &mut fmt::Formatter<'_>,
    fields: &Fields,
    has_seconds: bool,
) -> fmt::Result {
    if has_seconds {
        write_field(out, &SECOND, fields.seconds, Star::Allowed)?;
        out.write_char(' ')?;
    }
    write_field(out, &MINUTE, fields.minutes, Star::Allowed)?;
    out.write_char(' ')?;
    write_field(out, &HOUR, fields.hours, Star::Allowed)?;
    out.write_char(' ')?;
    let day_of_month = Star::for_day_field(fields.day_of_month_starred);
    write_field(out, &DAY_OF_MONTH, fields.days_of_month, day_of_month)?;
    out.write_char(' ')?;
    write_field(out, &MONTH, fields.months, Star::Allowed)?;
    out.write_char(' ')?;
    let day_of_week = Star::for_day_field(fields.day_of_week_starred);
    write_field(out, &DAY_OF_WEEK, fields.days_of_week, day_of_week)
}

fn write_field(out: &mut impl Write, spec: &Spec, set: u64, star: Star) -> fmt::Result {
    // The smallest step whose `*/n` the set holds entirely, if any. A step
    // so long that `*/n` is one value is only worth writing when the field
    // must start with `*`.
    let longest_step = match star {
        Star::Required => spec.max - spec.min + 1,
        Star::Allowed => spec.max - spec.min,
        Star::Forbidden => 0,
    };
    let starred_step = (1..=longest_step).find(|&step| {
        let stepped = stepped(spec.min, spec.max, step);
        set & stepped == stepped
    });
    match (star, starred_step) {
        (Star::Required, Some(step)) => {
            write_star(out, step)?;
            let rest = set & !stepped(spec.min, spec.max, step);
            if rest != 0 {
                out.write_char(',')?;
                write_values(out, rest)?;
            }
            Ok(())
        }
        (Star::Allowed, Some(step)) if set == stepped(spec.min, spec.max, step) => {
            write_star(out, step)
        }
        _ => write_values(out, set),
    }
}

fn write_star(out: &mut impl Write, step: u8) -> fmt::Result {
    match step {
        1 => out.write_char('*'),
        step => write!(out, "*/{step}"),
    }
}

/// The values `first`, `first + step`, ... up to `last`, as a set.
fn stepped(first: u8, last: u8, step: u8) -> u64 {
    (first..=last)
        .step_by(usize::from(step))
        .fold(0, |set, value| set | 1 << value)
}

/// Writes a non-empty set without `*`: as `a-b/n` when it is one evenly
/// spaced run of three or more values, otherwise as a list of single
/// values and `a-b` runs.
fn write_values(out: &mut impl Write, set: u64) -> fmt::Result {
    let values: Vec<u8> = (0..64u8).filter(|&v| set >> v & 1 == 1).collect();
    if let [first, second, .., last] = values[..] {
        let step = second - first;
        if step > 1 && values.windows(2).all(|pair| pair[1] - pair[0] == step) {
            return write!(out, "{first}-{last}/{step}");
        }
    }
    let mut separator = "";
    let mut rest = &values[..];
    while let [first, ..] = rest {
        let run = rest
            .iter()
            .zip(*first..)
            .take_while(|(value, expected)| **value == *expected)
            .count();
        let last = rest[run - 1];
        match run {
            1 => write!(out, "{separator}{first}")?,
            2 => write!(out, "{separator}{first},{last}")?,
            _ => write!(out, "{separator}{first}-{last}")?,
        }
        separator = ",";
        rest = &rest[run..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(spec: &Spec, set: u64, star: Star) -> String {
        let mut out = String::new();
        write_field(&mut out, spec, set, star).unwrap();
        out
    }

    fn set(values: &[u8]) -> u64 {
        values.iter().fold(0, |set, v| set | 1 << v)
    }

    #[test]
    fn whole_and_stepped_fields_use_star_forms() {
        assert_eq!(render(&MINUTE, stepped(0, 59, 1), Star::Allowed), "*");
        assert_eq!(render(&MINUTE, stepped(0, 59, 15), Star::Allowed), "*/15");
        assert_eq!(render(&MONTH, stepped(1, 12, 3), Star::Allowed), "*/3");
        assert_eq!(render(&HOUR, set(&[0]), Star::Allowed), "0");
    }

    #[test]
    fn other_sets_are_runs_and_values() {
        assert_eq!(render(&MINUTE, set(&[5]), Star::Allowed), "5");
        assert_eq!(render(&MINUTE, set(&[5, 6]), Star::Allowed), "5,6");
        assert_eq!(
            render(&MINUTE, set(&[1, 2, 3, 7, 9, 10]), Star::Allowed),
            "1-3,7,9,10"
        );
        assert_eq!(
            render(&MINUTE, set(&[5, 20, 35, 50]), Star::Allowed),
            "5-50/15"
        );
        assert_eq!(render(&MINUTE, set(&[5, 20]), Star::Allowed), "5,20");
    }

    #[test]
    fn day_fields_keep_whether_they_started_with_a_star() {
        let all_days = stepped(1, 31, 1);
        assert_eq!(render(&DAY_OF_MONTH, all_days, Star::Required), "*");
        assert_eq!(render(&DAY_OF_MONTH, all_days, Star::Forbidden), "1-31");
        let odd_days = stepped(1, 31, 2);
        assert_eq!(render(&DAY_OF_MONTH, odd_days, Star::Required), "*/2");
        assert_eq!(render(&DAY_OF_MONTH, odd_days, Star::Forbidden), "1-31/2");
        let odd_and_fourth = odd_days | 1 << 4;
        assert_eq!(
            render(&DAY_OF_MONTH, odd_and_fourth, Star::Required),
            "*/2,4"
        );
        assert_eq!(render(&DAY_OF_WEEK, set(&[0]), Star::Required), "*/7");
    }
}
