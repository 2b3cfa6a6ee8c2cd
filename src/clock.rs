//! Wall-clock helpers shared by the audit log, the JWT checks, the JWKS cache and the
//! build-directory claims: Unix seconds and RFC 3339 timestamps (UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2024-04-25T16:07:49Z` for Unix seconds (UTC).
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d) = civil_date((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2024-04-25T16:07:49.000000000Z`: RFC 3339 in UTC with nanoseconds (the epoch for a time
/// before it).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let whole = rfc3339(d.as_secs());
    format!("{}.{:09}Z", whole.trim_end_matches('Z'), d.subsec_nanos())
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian calendar, Howard
/// Hinnant's civil-from-days algorithm).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    }
}
