//! Durations on the command line (`--timeout`, `--kill-grace`).
//!
//! ```text
//! duration = number [unit]          ; no space in between
//! number   = 1*DIGIT ["." 1*DIGIT]
//! unit     = "ms" / "s" / "m" / "h" ; none: milliseconds
//! ```
//!
//! A bare number is milliseconds, as before units existed, so `250` and
//! `250ms` are the same. The value must come to a whole number of
//! milliseconds (the protocol's unit) that fits in a `u64`: `1.5s` is fine,
//! `1.5ms` is refused rather than silently rounded.

use std::fmt;
use std::time::Duration;

/// Why a duration was refused; the `Display` text is what the user sees
/// after clap's `invalid value '…' for '--timeout <DURATION>': `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    Empty,
    NotANumber,
    UnknownUnit,
    FinerThanAMillisecond,
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            DurationError::Empty => "empty",
            DurationError::NotANumber => "not a number",
            DurationError::UnknownUnit => "unknown unit",
            DurationError::FinerThanAMillisecond => "not a whole number of milliseconds",
            DurationError::TooLarge => "too large",
        };
        write!(
            f,
            "{why}; expected a number with an optional unit ms, s, m or h \
             (250ms, 10s, 1.5s, 2m, 1h; a bare number is milliseconds)"
        )
    }
}

impl std::error::Error for DurationError {}

/// Decimals beyond this many cannot come to whole milliseconds with any
/// unit (an hour is 3.6e6 ms), and keep the arithmetic inside `u128`.
const MAX_DECIMALS: usize = 18;

/// Parses `250ms`, `10s`, `1.5s`, `2m`, `1h`, `0` or a bare number of
/// milliseconds.
///
/// # Errors
/// A [`DurationError`] saying what is wrong; nothing is rounded.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ms: u128 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ if number.is_empty() => return Err(DurationError::NotANumber),
        _ => return Err(DurationError::UnknownUnit),
    };
    let (whole, decimals) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || (number.contains('.') && !digits_only(decimals)) {
        return Err(DurationError::NotANumber);
    }
    let decimals = decimals.trim_end_matches('0');
    if decimals.len() > MAX_DECIMALS {
        return Err(DurationError::FinerThanAMillisecond);
    }
    let scale = 10u128.pow(decimals.len() as u32);
    // Leading zeros cannot overflow anything; more than 39 other digits do.
    let whole: u128 = whole.trim_start_matches('0').parse::<u128>().or_else(|_| {
        if whole.bytes().all(|b| b == b'0') {
            Ok(0)
        } else {
            Err(DurationError::TooLarge)
        }
    })?;
    let fraction: u128 = if decimals.is_empty() {
        0
    } else {
        decimals.parse().map_err(|_| DurationError::NotANumber)?
    };
    let scaled = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or(DurationError::TooLarge)?;
    if scaled % scale != 0 {
        return Err(DurationError::FinerThanAMillisecond);
    }
    let ms = u64::try_from(scaled / scale).map_err(|_| DurationError::TooLarge)?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Result<Duration, DurationError> {
        Ok(Duration::from_millis(n))
    }

    #[test]
    fn every_documented_form() {
        for (text, want) in [
            ("0", ms(0)),
            ("0ms", ms(0)),
            ("0s", ms(0)),
            ("0.0s", ms(0)),
            ("250", ms(250)),
            ("250ms", ms(250)),
            ("10s", ms(10_000)),
            ("1.5s", ms(1_500)),
            ("0.25s", ms(250)),
            ("1.500s", ms(1_500)),
            ("0.001s", ms(1)),
            ("2m", ms(120_000)),
            ("1.5m", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("0.5h", ms(1_800_000)),
            ("007s", ms(7_000)),
            ("18446744073709551615", ms(u64::MAX)),
            ("18446744073709551615ms", ms(u64::MAX)),
        ] {
            assert_eq!(parse_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn bad_values_say_why() {
        use DurationError::*;
        for (text, want) in [
            ("", Empty),
            ("soon", NotANumber),
            ("s", NotANumber),
            ("-1", NotANumber),
            ("+1s", NotANumber),
            (" 1s", NotANumber),
            (".5s", NotANumber),
            ("1.s", NotANumber),
            ("1..5s", NotANumber),
            ("1.2.3s", NotANumber),
            ("10x", UnknownUnit),
            ("10 s", UnknownUnit),
            ("10S", UnknownUnit),
            ("10sec", UnknownUnit),
            ("1d", UnknownUnit),
            ("1.5ms", FinerThanAMillisecond),
            ("1.5", FinerThanAMillisecond),
            ("0.0001s", FinerThanAMillisecond),
            ("0.0000000000000000001h", FinerThanAMillisecond),
            ("18446744073709551616", TooLarge),
            ("18446744073709551615s", TooLarge),
            ("99999999999999999999999999999999999999999h", TooLarge),
        ] {
            assert_eq!(parse_duration(text), Err(want), "{text:?}");
        }
        let message = DurationError::UnknownUnit.to_string();
        assert!(message.contains("250ms, 10s, 1.5s, 2m, 1h"), "{message}");
    }
}
