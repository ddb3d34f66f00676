use std::fmt;

use crate::MAX_EXPRESSION_LEN;

/// A field of a cron expression, named the way error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// What a single value of this field looks like, for "is not ..." errors.
    fn value_forms(self) -> &'static str {
        match self {
            Field::Month => "a number (1-12) or a month name (JAN-DEC)",
            Field::DayOfWeek => "a number (0-7, 0 and 7 are Sunday) or a day name (SUN-SAT)",
            _ => "a number",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a schedule or a time zone name was refused.
///
/// Every message is meant for the person who typed the schedule (in
/// `thaw.toml` or on the command line): it names the field and the token at
/// fault, and says what would be accepted. All of these are the caller's
/// mistake, never thaw's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    #[error(
        "the schedule is empty: write five fields such as `*/5 * * * *`, or a macro such as `@daily`"
    )]
    Empty,

    #[error("the schedule is {len} bytes long; the limit is {MAX_EXPRESSION_LEN} bytes")]
    TooLong { len: usize },

    #[error(
        "the schedule contains {found:?}: a schedule is plain printable ASCII (digits, letters, spaces and `* , - / @`)"
    )]
    BadCharacter { found: char },

    #[error(
        "`{expression}` has {found} field{}; expected 5 (minute hour day-of-month month day-of-week) or 6 (a second field, then those five)",
        if *.found == 1 { "" } else { "s" }
    )]
    FieldCount { expression: String, found: usize },

    #[error(
        "`@reboot` is not supported: thaw schedules are time-based; use a schedule such as `@hourly` or `*/5 * * * *`"
    )]
    Reboot,

    #[error(
        "unknown macro `{name}`: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    UnknownMacro { name: String },

    #[error("`{name}` stands alone, but `{rest}` follows it")]
    MacroWithFields { name: String, rest: String },

    #[error("{field} field: `{token}` is out of range {min}-{max}")]
    OutOfRange {
        field: Field,
        token: String,
        min: u8,
        max: u8,
    },

    #[error("{field} field: `{token}` is not {}", .field.value_forms())]
    NotAValue { field: Field, token: String },

    #[error(
        "{field} field: `{item}` is not a value, a range or a step; write forms such as `5`, `1-5`, `*/15` or `10-50/10`"
    )]
    Malformed { field: Field, item: String },

    #[error(
        "{field} field: `{token}` is not supported: thaw schedules have no `L`, `W`, `#` or `?`; list the days instead, or use a range"
    )]
    Unsupported { field: Field, token: String },

    #[error("{field} field: `{text}` has an empty list item; separate values with single commas")]
    EmptyItem { field: Field, text: String },

    #[error("{field} field: the step in `{item}` must be 1-{max}")]
    BadStep { field: Field, item: String, max: u8 },

    #[error(
        "{field} field: the range `{item}` runs backwards; write the smaller value first (ranges do not wrap around)"
    )]
    Reversed { field: Field, item: String },

    #[error(
        "`{expression}` never fires: no date matches its day-of-month, month and day-of-week fields together"
    )]
    NeverFires { expression: String },

    #[error(
        "unknown time zone `{name}`: use an IANA name such as `Europe/Paris`, `America/New_York` or `UTC`"
    )]
    UnknownTimeZone { name: String },
}
