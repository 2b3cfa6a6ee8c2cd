//! Wall-clock helpers shared by the audit log, the JWT checks, the JWKS cache and the
//! build-directory claims: Unix seconds and RFC 3339 timestamps (UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last instant RFC 3339's four-digit years can write (9999-12-31T23:59:59.999999999Z).
const LAST: Duration = Duration::new(253_402_300_799, 999_999_999);

/// `t` within what RFC 3339 can write: the epoch for a time before it, the last instant of
/// year 9999 for one after that (the formatter refuses both).
fn writable(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + d.min(LAST)
}

/// `2024-04-25T16:07:49Z` for Unix seconds (UTC; past year 9999: 9999-12-31T23:59:59Z).
pub fn rfc3339(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.min(LAST.as_secs()));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2024-04-25T16:07:49.000000000Z`: RFC 3339 in UTC with nanoseconds (the epoch for a time
/// before it; past year 9999, its last instant).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(writable(t)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1714061269), "2024-04-25T16:07:49Z");
        assert_eq!(rfc3339(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH + Duration::new(1_714_066_690, 5)),
            "2024-04-25T17:38:10.000000005Z"
        );
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.999999999Z"
        );
    }
}
