//! Duration strings in the form Go's `time.ParseDuration` accepts, which is
//! what Jacamar admins write: `"120s"`, `"5m"`, `"1h30m"`, `"1.5h"`, `"500ms"`.
//!
//! Differences from Go: negative durations are refused (no Jacamar setting
//! means anything when negative), and the result is a [`std::time::Duration`].

use std::time::Duration;

/// Largest duration Go can represent (`math.MaxInt64` nanoseconds); we keep
/// the same ceiling so a value valid for upstream is valid here and back.
const MAX_NANOS: u128 = i64::MAX as u128;

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign
    ("\u{3bc}s", 1_000), // Greek small letter mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

const UNIT_LIST: &str = "ns, us, ms, s, m, h";

/// A duration string that is not one: a sentence without the key (callers add the key),
/// `invalid duration "<text>": <why>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {why}")]
pub struct DurationError {
    /// The string as given.
    pub text: String,
    pub why: DurationProblem,
}

/// What is wrong with a duration string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationProblem {
    #[error("negative durations are not allowed")]
    Negative,
    #[error("empty")]
    Empty,
    #[error("expected a number before the unit")]
    NoNumber,
    #[error("missing unit (use one of {UNIT_LIST})")]
    MissingUnit,
    #[error("unknown unit {0:?} (use one of {UNIT_LIST})")]
    UnknownUnit(String),
    #[error("too large")]
    TooLarge,
}

/// Parse a duration string such as `"1h30m"` or `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        text: s.to_string(),
        why,
    };
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(err(DurationProblem::Negative));
    }
    if rest.is_empty() {
        return Err(err(DurationProblem::Empty));
    }
    // Go accepts a bare "0" without a unit; nothing else may omit it.
    if rest == "0" {
        return Ok(Duration::ZERO);
    }

    let mut total: u128 = 0;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        // Optional fraction.
        let (frac_digits, after_frac) = match after_int.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(err(DurationProblem::NoNumber));
        }
        // Unit: everything up to the next digit or '.'.
        let unit_len = after_frac
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(after_frac.len());
        let (unit, after_unit) = after_frac.split_at(unit_len);
        if unit.is_empty() {
            return Err(err(DurationProblem::MissingUnit));
        }
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| err(DurationProblem::UnknownUnit(unit.to_string())))?;

        let overflow = || err(DurationProblem::TooLarge);
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse::<u128>().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_digits.is_empty() {
            // Keep at most 18 fractional digits: beyond that nothing is left
            // after scaling even for hours, and the arithmetic stays in range.
            let kept = &frac_digits[..frac_digits.len().min(18)];
            let frac: u128 = kept.parse::<u128>().map_err(|_| overflow())?;
            let denom = 10u128.pow(kept.len() as u32);
            nanos = nanos
                .checked_add(frac * scale / denom)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
        rest = after_unit;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err(DurationProblem::TooLarge))?;
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Render a duration back in Go's style (`"2m0s"` is written `"2m"` here:
/// zero components are dropped), used for defaults in docs and messages.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let total = d.as_nanos();
    let h = total / 3_600_000_000_000;
    let m = (total / 60_000_000_000) % 60;
    let s = (total / 1_000_000_000) % 60;
    let sub = total % 1_000_000_000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sub == 0 {
        if s > 0 {
            out.push_str(&format!("{s}s"));
        }
    } else if sub % 1_000_000 == 0 && s == 0 {
        out.push_str(&format!("{}ms", sub / 1_000_000));
    } else {
        let frac = format!("{sub:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_style_durations() {
        let cases: &[(&str, Duration)] = &[
            ("120s", Duration::from_secs(120)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("+10s", Duration::from_secs(10)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            (
                "2h45m30.25s",
                Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 250),
            ),
            ("10us", Duration::from_micros(10)),
            ("10\u{b5}s", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1m1m", Duration::from_secs(120)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("+", "empty"),
            ("-5s", "negative"),
            ("-0s", "negative"),
            ("10", "missing unit"),
            ("1h30", "missing unit"),
            ("5d", "unknown unit \"d\""),
            ("5 s", "unknown unit \" s\""),
            ("s", "expected a number"),
            ("1.5.5s", "missing unit"),
            ("abc", "expected a number"),
            (".s", "expected a number"),
            ("9999999999999999999999999h", "too large"),
            ("3000000h", "too large"),
        ];
        for (text, want) in cases {
            let err = parse_duration(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["2m", "10s", "30s", "5m", "1h30m", "500ms", "1.5s", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }
}
