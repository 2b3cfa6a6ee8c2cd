//! The audit log of jacamar-auth: one JSON object per event, to a file or to syslog.
//!
//! Fields: `time` (RFC 3339, UTC), `level`, `msg`, `job`, `runner`, `stage`, `pid`,
//! `hostname`, and `error_id` when the job log got an obfuscated message with that id.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Syslog,
    File(PathBuf),
    Nowhere,
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// One audit event.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub level: Level,
    pub msg: &'a str,
    pub job: Option<u64>,
    pub runner: Option<&'a str>,
    pub stage: &'a str,
    pub error_id: Option<&'a str>,
}

/// Render an event as one JSON line (no trailing newline).
pub fn render(ev: &Event<'_>) -> String {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v = json!({
        "time": rfc3339(SystemTime::now()),
        "level": match ev.level { Level::Info => "INFO", Level::Error => "ERROR" },
        "msg": ev.msg,
        "job": ev.job,
        "runner": ev.runner,
        "stage": ev.stage,
        "pid": std::process::id(),
        "hostname": hostname,
    });
    if let Some(id) = ev.error_id {
        v["error_id"] = json!(id);
    }
    v.to_string()
}

/// Write an event to `sink`. Returns false when it could not be written.
pub fn record(sink: &Sink, ev: &Event<'_>) -> bool {
    let line = render(ev);
    match sink {
        Sink::Nowhere => true,
        Sink::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .is_ok(),
        Sink::Syslog => {
            // LOG_AUTHPRIV (10) * 8 + severity (3 err, 6 info).
            let pri = 80 + if ev.level == Level::Error { 3 } else { 6 };
            let msg = format!("<{pri}>jacamar-auth[{}]: {line}", std::process::id());
            UnixDatagram::unbound()
                .and_then(|s| s.send_to(msg.as_bytes(), "/dev/log"))
                .is_ok()
        }
    }
}

/// Format a time as RFC 3339 in UTC with nanoseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_714_066_690);
        assert_eq!(rfc3339(t), "2024-04-25T17:38:10.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn file_sink_gets_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let ev = Event {
            level: Level::Error,
            msg: "refusing /ecp/alice: mode 0777",
            job: Some(9),
            runner: Some("abc"),
            stage: "prepare_exec",
            error_id: Some("0123456789ab"),
        };
        assert!(record(&Sink::File(path.clone()), &ev));
        let text = std::fs::read_to_string(path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["job"], 9);
        assert_eq!(v["error_id"], "0123456789ab");
        assert_eq!(v["stage"], "prepare_exec");
    }
}
