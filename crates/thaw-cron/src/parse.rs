//! Reading a cron expression into [`Fields`].

use crate::error::{CronError, Field};
use crate::fields::Fields;
use crate::MAX_EXPRESSION_LEN;

/// What one field accepts.
pub(crate) struct Spec {
    pub field: Field,
    pub min: u8,
    /// The last value `*` and `a/n` reach.
    pub max: u8,
    /// The largest number accepted as written: 7 for day-of-week, which
    /// means Sunday like 0; `max` everywhere else.
    max_written: u8,
    /// Names accepted for `min`, `min + 1`, ...
    names: &'static [&'static str],
}

impl Spec {
    /// How many values `*` covers, which bounds a step.
    fn span(&self) -> u8 {
        self.max - self.min + 1
    }
}

pub(crate) const SECOND: Spec = Spec {
    field: Field::Second,
    min: 0,
    max: 59,
    max_written: 59,
    names: &[],
};
pub(crate) const MINUTE: Spec = Spec {
    field: Field::Minute,
    min: 0,
    max: 59,
    max_written: 59,
    names: &[],
};
pub(crate) const HOUR: Spec = Spec {
    field: Field::Hour,
    min: 0,
    max: 23,
    max_written: 23,
    names: &[],
};
pub(crate) const DAY_OF_MONTH: Spec = Spec {
    field: Field::DayOfMonth,
    min: 1,
    max: 31,
    max_written: 31,
    names: &[],
};
pub(crate) const MONTH: Spec = Spec {
    field: Field::Month,
    min: 1,
    max: 12,
    max_written: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
pub(crate) const DAY_OF_WEEK: Spec = Spec {
    field: Field::DayOfWeek,
    min: 0,
    max: 6,
    max_written: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// A schedule as read, before it is checked to ever fire.
pub(crate) struct Parsed {
    pub fields: Fields,
    pub has_seconds: bool,
}

/// Reads `expression`: five or six fields, or one macro.
pub(crate) fn parse(expression: &str) -> Result<Parsed, CronError> {
    if expression.len() > MAX_EXPRESSION_LEN {
        return Err(CronError::TooLong {
            len: expression.len(),
        });
    }
    if let Some(found) = expression
        .chars()
        .find(|c| !c.is_ascii() || (c.is_ascii_control() && !c.is_ascii_whitespace()))
    {
        return Err(CronError::BadCharacter { found });
    }
    let text = expression.trim();
    if text.is_empty() {
        return Err(CronError::Empty);
    }
    if text.starts_with('@') {
        return parse_macro(text);
    }
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let (second, rest) = match words.len() {
        5 => ("0", &words[..]),
        6 => (words[0], &words[1..]),
        found => {
            return Err(CronError::FieldCount {
                expression: text.to_owned(),
                found,
            })
        }
    };
    let [minute, hour, day_of_month, month, day_of_week] = rest else {
        unreachable!("five fields remain after the optional second");
    };
    Ok(Parsed {
        fields: Fields {
            seconds: parse_field(&SECOND, second)?,
            minutes: parse_field(&MINUTE, minute)?,
            hours: parse_field(&HOUR, hour)?,
            days_of_month: parse_field(&DAY_OF_MONTH, day_of_month)?,
            months: parse_field(&MONTH, month)?,
            days_of_week: parse_field(&DAY_OF_WEEK, day_of_week)?,
            day_of_month_starred: day_of_month.starts_with('*'),
            day_of_week_starred: day_of_week.starts_with('*'),
        },
        has_seconds: words.len() == 6,
    })
}

fn parse_macro(text: &str) -> Result<Parsed, CronError> {
    let (name, rest) = text
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((text, ""));
    let expansion = match name.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err(CronError::Reboot),
        _ => {
            return Err(CronError::UnknownMacro {
                name: name.to_owned(),
            })
        }
    };
    let rest = rest.trim();
    if !rest.is_empty() {
        return Err(CronError::MacroWithFields {
            name: name.to_owned(),
            rest: rest.to_owned(),
        });
    }
    parse(expansion)
}

/// Reads one field: a comma-separated list of items.
fn parse_field(spec: &Spec, text: &str) -> Result<u64, CronError> {
    text.split(',').try_fold(0, |set, item| {
        if item.is_empty() {
            return Err(CronError::EmptyItem {
                field: spec.field,
                text: text.to_owned(),
            });
        }
        Ok(set | parse_item(spec, item)?)
    })
}

/// Reads one item of a list: `*`, `a`, `a-b`, `*/n`, `a-b/n` or `a/n`.
fn parse_item(spec: &Spec, item: &str) -> Result<u64, CronError> {
    if item.contains(['#', '?']) {
        return Err(CronError::Unsupported {
            field: spec.field,
            token: item.to_owned(),
        });
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(spec, item, step)?)),
        None => (item, None),
    };
    let (first, last) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((first, last)) = range.split_once('-') {
        (value(spec, item, first)?, value(spec, item, last)?)
    } else {
        let first = value(spec, item, range)?;
        match step {
            Some(_) => (first, spec.max.max(first)),
            None => (first, first),
        }
    };
    if first > last {
        return Err(CronError::Reversed {
            field: spec.field,
            item: item.to_owned(),
        });
    }
    let set = (first..=last)
        .step_by(usize::from(step.unwrap_or(1)))
        // Day-of-week 7 is Sunday, stored as 0.
        .map(|value| if value > spec.max { spec.min } else { value })
        .fold(0u64, |set, value| set | 1 << value);
    Ok(set)
}

fn parse_step(spec: &Spec, item: &str, step: &str) -> Result<u8, CronError> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CronError::Malformed {
            field: spec.field,
            item: item.to_owned(),
        });
    }
    step.parse::<u8>()
        .ok()
        .filter(|step| (1..=spec.span()).contains(step))
        .ok_or_else(|| CronError::BadStep {
            field: spec.field,
            item: item.to_owned(),
            max: spec.span(),
        })
}

/// Reads one value: a number or, in the month and day-of-week fields, a
/// three-letter name in any case.
fn value(spec: &Spec, item: &str, token: &str) -> Result<u8, CronError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CronError::Malformed {
            field: spec.field,
            item: item.to_owned(),
        });
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return token
            .parse::<u8>()
            .ok()
            .filter(|value| (spec.min..=spec.max_written).contains(value))
            .ok_or_else(|| CronError::OutOfRange {
                field: spec.field,
                token: token.to_owned(),
                min: spec.min,
                max: spec.max_written,
            });
    }
    if let Some(index) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        return Ok(spec.min + index as u8);
    }
    if is_last_or_weekday(token) {
        return Err(CronError::Unsupported {
            field: spec.field,
            token: token.to_owned(),
        });
    }
    Err(CronError::NotAValue {
        field: spec.field,
        token: token.to_owned(),
    })
}

/// Whether `token` is one of the `L` ("last") or `W` ("nearest weekday")
/// forms other cron dialects have: `L`, `LW`, `5L`, `15W`.
fn is_last_or_weekday(token: &str) -> bool {
    let upper = token.to_ascii_uppercase();
    if upper == "LW" {
        return true;
    }
    match upper.strip_suffix(['L', 'W']) {
        Some(number) => number.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}
