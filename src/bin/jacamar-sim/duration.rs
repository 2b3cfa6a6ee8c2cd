//! Durations as written on the command line and in job files: the configuration's Go-style
//! syntax (`500ms`, `10s`, `1h30m`, `1.5s`; see [`jacamar::config::parse_duration`]), plus a
//! bare number meaning seconds, as the runner's own settings allow.

use std::time::Duration;

use crate::error::SimError;

/// Parses `500ms`, `10s`, `1.5m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, SimError> {
    let s = text.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    jacamar::config::parse_duration(s).map_err(|why| SimError::Duration {
        text: text.to_string(),
        why,
    })
}

/// Render a duration in Go's style for messages (`1h0m0s`, `5m30s`, `500ms`).
pub fn format_go(d: Duration) -> String {
    jacamar::config::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "10x", "1h5", "abc", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
