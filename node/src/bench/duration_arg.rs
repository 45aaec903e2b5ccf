//! Durations on the command line: `10s`, `500ms`, `2m`, `1.5s`.

use std::time::Duration;

/// Longest duration a benchmark option accepts (one day): a typo such as
/// `10000h` is refused instead of running for a year.
pub const MAX_BENCH_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a duration argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationArgError {
    /// No number in front of the unit.
    #[error(
        "{text:?}: expected a number followed by a unit (ns, us, ms, s, m, h), e.g. 10s or 500ms"
    )]
    NoNumber {
        /// What was given.
        text: String,
    },
    /// A bare number: seconds or milliseconds would be a guess.
    #[error("{text:?}: missing unit (write e.g. 10s or 500ms)")]
    MissingUnit {
        /// What was given.
        text: String,
    },
    /// A unit that is not one of ns, us, ms, s, m, h.
    #[error("{text:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// What was given.
        text: String,
        /// The unit part.
        unit: String,
    },
    /// Longer than [`MAX_BENCH_DURATION`].
    #[error("{text:?}: longer than the {}-hour limit", MAX_BENCH_DURATION.as_secs() / 3600)]
    TooLong {
        /// What was given.
        text: String,
    },
}

/// Parses `<number><unit>`; the number may have a fraction, the unit is
/// one of `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` (a bare number is refused:
/// seconds or milliseconds would be a guess).
pub fn parse_duration(text: &str) -> Result<Duration, DurationArgError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationArgError::NoNumber { text: text.into() })?;
    let unit_secs = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(DurationArgError::MissingUnit { text: text.into() }),
        other => {
            return Err(DurationArgError::UnknownUnit {
                text: text.into(),
                unit: other.into(),
            });
        }
    };
    let secs = value * unit_secs;
    if !secs.is_finite() || secs > MAX_BENCH_DURATION.as_secs_f64() {
        return Err(DurationArgError::TooLong { text: text.into() });
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_would_be_a_guess_or_a_typo() {
        assert!(matches!(
            parse_duration("10"),
            Err(DurationArgError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationArgError::NoNumber { .. })
        ));
        assert!(matches!(
            parse_duration("10 sec"),
            Err(DurationArgError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationArgError::NoNumber { .. })
        ));
        assert!(matches!(
            parse_duration("1000h"),
            Err(DurationArgError::TooLong { .. })
        ));
    }
}
