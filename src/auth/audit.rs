//! The audit log of jacamar-auth: one JSON object per event, to a file or to syslog.
//!
//! Fields: `time` (RFC 3339, UTC), `level`, `msg`, `job`, `runner`, `stage`, `pid`,
//! `hostname`, `error_id` when the job log got an obfuscated message with that id, and on a
//! successful authorization `account` (the local account the job runs as) and `login`.
//!
//! Destinations (`[auth.logging]`): syslog (`/dev/log`, facility authpriv) by default, a
//! file, or a remote log daemon (`network` + `address`: tcp/udp/unix variants), one JSON
//! object per event (syslog-framed for syslog and the network). `level` drops events below it.

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::json;

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Syslog,
    File(PathBuf),
    /// A remote log daemon: `network` is tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixgram
    /// or unixpacket; `address` is `host:port` or a socket path.
    Network {
        network: String,
        address: String,
    },
    Nowhere,
}

/// Where `[auth.logging]` sends events (nowhere unless `enabled`).
pub fn sink_of(c: &crate::config::Config) -> Sink {
    use crate::config::LogLocation;
    let l = &c.auth.logging;
    if !l.enabled {
        return Sink::Nowhere;
    }
    if let (Some(network), Some(address)) = (&l.network, &l.address) {
        return Sink::Network {
            network: network.clone(),
            address: address.clone(),
        };
    }
    match &l.location {
        LogLocation::Syslog => Sink::Syslog,
        LogLocation::File(path) => Sink::File(path.clone()),
    }
}

/// Whether an event of `level` passes the configured threshold.
pub fn passes(level: Level, threshold: crate::config::LogLevel) -> bool {
    use crate::config::LogLevel as L;
    let rank = |l: Level| match l {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warn => 2,
        Level::Error => 3,
    };
    let min = match threshold {
        L::Debug => 0,
        L::Info => 1,
        L::Warn => 2,
        L::Error => 3,
    };
    rank(level) >= min
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
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
    /// The local account the job was authorized to run as (success events).
    pub account: Option<&'a str>,
    /// The verified GitLab login (success events).
    pub login: Option<&'a str>,
    /// `[general] name` of this runner's configuration, when set.
    pub name: Option<&'a str>,
}

/// Render an event as one JSON line (no trailing newline).
pub fn render(ev: &Event<'_>) -> String {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v = json!({
        "time": rfc3339(SystemTime::now()),
        "level": match ev.level {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        },
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
    if let Some(a) = ev.account {
        v["account"] = json!(a);
    }
    if let Some(l) = ev.login {
        v["login"] = json!(l);
    }
    if let Some(n) = ev.name {
        v["name"] = json!(n);
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
        Sink::Syslog => UnixDatagram::unbound()
            .and_then(|s| s.send_to(syslog_frame(ev.level, &line).as_bytes(), "/dev/log"))
            .is_ok(),
        Sink::Network { network, address } => {
            send_network(network, address, &syslog_frame(ev.level, &line)).is_ok()
        }
    }
}

/// `<pri>jacamar-auth[pid]: line` with facility LOG_AUTHPRIV (10).
fn syslog_frame(level: Level, line: &str) -> String {
    let severity = match level {
        Level::Debug => 7,
        Level::Info => 6,
        Level::Warn => 4,
        Level::Error => 3,
    };
    format!(
        "<{}>jacamar-auth[{}]: {line}",
        80 + severity,
        std::process::id()
    )
}

fn send_network(network: &str, address: &str, msg: &str) -> std::io::Result<()> {
    use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
    let timeout = Some(std::time::Duration::from_secs(5));
    match network {
        "tcp" | "tcp4" | "tcp6" => {
            let addr = address
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
            let mut s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
            s.set_write_timeout(timeout)?;
            s.write_all(format!("{msg}\n").as_bytes())
        }
        "udp" | "udp4" | "udp6" => {
            let bind = if network == "udp6" || address.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            UdpSocket::bind(bind)?
                .send_to(msg.as_bytes(), address)
                .map(|_| ())
        }
        "unixgram" => UnixDatagram::unbound()?
            .send_to(msg.as_bytes(), address)
            .map(|_| ()),
        // A stream socket; SOCK_SEQPACKET is not in std, a stream connect fails clearly on it.
        "unix" | "unixpacket" => {
            let mut s = UnixStream::connect(address)?;
            s.set_write_timeout(timeout)?;
            s.write_all(format!("{msg}\n").as_bytes())
        }
        other => Err(std::io::Error::other(format!("unknown network {other}"))),
    }
}

/// Format a time as RFC 3339 in UTC with nanoseconds.
pub use crate::clock::rfc3339_nanos as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

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
            account: None,
            login: None,
            name: None,
        };
        assert!(record(&Sink::File(path.clone()), &ev));
        let text = std::fs::read_to_string(path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["job"], 9);
        assert_eq!(v["error_id"], "0123456789ab");
        assert_eq!(v["stage"], "prepare_exec");
    }

    #[test]
    fn udp_sink_gets_a_syslog_framed_json_line() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let sink = Sink::Network {
            network: "udp".into(),
            address: server.local_addr().unwrap().to_string(),
        };
        let ev = Event {
            level: Level::Info,
            msg: "authorized",
            job: Some(1),
            runner: None,
            stage: "config_exec",
            error_id: None,
            account: Some("alice"),
            login: Some("alice"),
            name: Some("site-runner"),
        };
        assert!(record(&sink, &ev));
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("<86>jacamar-auth["), "{text}");
        let json = &text[text.find('{').unwrap()..];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["account"], "alice");
    }

    #[test]
    fn levels_filter() {
        use crate::config::LogLevel;
        assert!(passes(Level::Error, LogLevel::Warn));
        assert!(!passes(Level::Info, LogLevel::Warn));
        assert!(passes(Level::Debug, LogLevel::Debug));
    }
}
