//! The audit log of jacamar-auth: one JSON object per event, to a file or to syslog; and
//! ([`obfuscate`]) what the job log may say about a failure instead of its full reason.
//!
//! Layering: at the auth/batch/shell layer. It may import `config`, `protocol`, `clock` and
//! `hex`; never `authz`, `privdrop`, `stages` or a binary.
//!
//! Fields: `time` (RFC 3339, UTC), `level`, `msg`, `job`, `runner`, `stage`, `pid`,
//! `hostname`, `error_id` when the job log got an obfuscated message with that id, and on a
//! successful authorization `account` (the local account the job runs as) and `login`.
//!
//! Destinations (`[auth.logging]`): syslog (`/dev/log`, facility authpriv) by default, a
//! file, or a remote log daemon (`network` + `address`: tcp/udp/unix variants), one JSON
//! object per event (syslog-framed for syslog and the network). `level` drops events below it.
//!
//! A file is opened with `O_NOFOLLOW | O_APPEND | O_CLOEXEC | O_NONBLOCK` and created mode
//! 0600. It must be a regular file owned by jacamar-auth's effective uid (a symlink, a FIFO,
//! a directory or another account's file is refused, never written); an existing file
//! readable or writable by others, or writable by its group, loses those bits (a log made
//! by an older version was 0644); group read stays for an administrator's log group. The
//! directory holding it is the administrator's and is trusted. Every write failure is an
//! [`AuditError`]: the caller fails the stage.

pub mod obfuscate;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
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

/// An event that could not be written to its sink.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to write the audit log {path}: {why}")]
    File {
        path: PathBuf,
        #[source]
        why: FileProblem,
    },
    #[error("failed to send the audit event to syslog (/dev/log): {0}")]
    Syslog(std::io::Error),
    #[error("failed to send the audit event to {network} {address}: {source}")]
    Network {
        network: String,
        address: String,
        source: std::io::Error,
    },
}

/// The local syslog daemon's socket, where [`Sink::Syslog`] sends.
const SYSLOG_SOCKET: &str = "/dev/log";

/// Write an event to `sink`.
pub fn record(sink: &Sink, ev: &Event<'_>) -> Result<(), AuditError> {
    record_via(sink, ev, Path::new(SYSLOG_SOCKET))
}

/// [`record`], with `syslog` as the syslog daemon's socket (a test's own listener).
fn record_via(sink: &Sink, ev: &Event<'_>, syslog: &Path) -> Result<(), AuditError> {
    let line = render(ev);
    match sink {
        Sink::Nowhere => Ok(()),
        Sink::File(path) => append_line(path, &line).map_err(|why| AuditError::File {
            path: path.clone(),
            why,
        }),
        Sink::Syslog => UnixDatagram::unbound()
            .and_then(|s| s.send_to(syslog_frame(ev.level, &line).as_bytes(), syslog))
            .map(|_| ())
            .map_err(AuditError::Syslog),
        Sink::Network { network, address } => {
            send_network(network, address, &syslog_frame(ev.level, &line)).map_err(|source| {
                AuditError::Network {
                    network: network.clone(),
                    address: address.clone(),
                    source,
                }
            })
        }
    }
}

/// Why the audit file could not be written (see the module's rules).
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("it is a symbolic link; refusing to follow it")]
    Symlink,
    /// Opening, reading the metadata of or writing the file failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("it is not a regular file")]
    NotAFile,
    #[error("it is owned by uid {uid}, not by jacamar-auth's uid {me}")]
    Owner { uid: u32, me: u32 },
    /// Its permission bits (`mode & 0o7777`) gave others access, which could not be removed.
    #[error("failed to remove the access of others (mode {mode:o}): {source}")]
    Chmod { mode: u32, source: std::io::Error },
}

/// Append `line` and a newline to the audit file `path` (see the module's rules).
fn append_line(path: &Path, line: &str) -> Result<(), FileProblem> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FileProblem::Symlink,
            _ => FileProblem::Io(e),
        })?;
    let m = f.metadata().map_err(FileProblem::Io)?;
    if !m.file_type().is_file() {
        return Err(FileProblem::NotAFile);
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(FileProblem::Owner { uid: m.uid(), me });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o027 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & !0o027))
            .map_err(|source| FileProblem::Chmod { mode, source })?;
    }
    (&f).write_all(format!("{line}\n").as_bytes())
        .map_err(FileProblem::Io)
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
        record(&Sink::File(path.clone()), &ev).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["job"], 9);
        assert_eq!(v["error_id"], "0123456789ab");
        assert_eq!(v["stage"], "prepare_exec");
    }

    /// The event every sink test sends: an authorization (INFO).
    fn authorized() -> Event<'static> {
        Event {
            level: Level::Info,
            msg: "authorized",
            job: Some(1),
            runner: Some("tstrunnr"),
            stage: "config_exec",
            error_id: None,
            account: Some("alice"),
            login: Some("alice"),
            name: Some("site-runner"),
        }
    }

    /// Check that `got` is exactly `<86>jacamar-auth[<our pid>]: <json>` and `end` (the
    /// newline of stream sinks, nothing for datagrams), with the JSON of [`authorized`]
    /// (only its `time` is not known in advance).
    fn assert_framed(got: &[u8], end: &str) {
        let text = String::from_utf8(got.to_vec()).unwrap();
        let prefix = format!("<86>jacamar-auth[{}]: ", std::process::id());
        let json = text
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix(end))
            .unwrap_or_else(|| panic!("not {prefix:?} + JSON + {end:?}: {text:?}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let time = v["time"].as_str().unwrap().to_string();
        assert!(time.len() == 30 && time.ends_with('Z'), "{time}");
        let host = nix::unistd::gethostname().unwrap();
        let want = json!({
            "time": time, "level": "INFO", "msg": "authorized", "job": 1,
            "runner": "tstrunnr", "stage": "config_exec", "pid": std::process::id(),
            "hostname": host.to_string_lossy(), "account": "alice", "login": "alice",
            "name": "site-runner",
        });
        assert_eq!(v, want, "{text:?}");
        // One compact line, as rendered: nothing but the JSON between prefix and end.
        assert_eq!(json, want.to_string(), "{text:?}");
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn udp_sink_gets_one_syslog_framed_datagram() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(WAIT).unwrap();
        let sink = Sink::Network {
            network: "udp".into(),
            address: server.local_addr().unwrap().to_string(),
        };
        record(&sink, &authorized()).unwrap();
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_framed(&buf[..n], "");
    }

    /// What a stream listener receives from one [`record`] of [`authorized`] to `network`
    /// `address`, up to the sender's close; `accept` takes the connection.
    fn one_stream<C: std::io::Read>(
        network: &str,
        address: String,
        accept: impl FnOnce() -> C,
    ) -> Vec<u8> {
        let sink = Sink::Network {
            network: network.into(),
            address,
        };
        let sender = std::thread::spawn(move || record(&sink, &authorized()));
        let mut got = Vec::new();
        accept().read_to_end(&mut got).unwrap();
        sender.join().unwrap().unwrap();
        got
    }

    #[test]
    fn tcp_sink_sends_one_framed_line_and_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let got = one_stream("tcp", address, || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(WAIT).unwrap();
            conn
        });
        assert_framed(&got, "\n");
    }

    #[test]
    fn unix_stream_sink_sends_one_framed_line_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let got = one_stream("unix", path.display().to_string(), || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(WAIT).unwrap();
            conn
        });
        assert_framed(&got, "\n");
    }

    #[test]
    fn unixgram_sink_sends_one_framed_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(WAIT).unwrap();
        let sink = Sink::Network {
            network: "unixgram".into(),
            address: path.display().to_string(),
        };
        record(&sink, &authorized()).unwrap();
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_framed(&buf[..n], "");
    }

    /// The syslog sink, against a datagram socket standing in for /dev/log (this machine
    /// has no syslog daemon; binding /dev/log itself would reach into every other test).
    #[test]
    fn syslog_sink_sends_one_framed_datagram_to_the_log_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-log");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(WAIT).unwrap();
        record_via(&Sink::Syslog, &authorized(), &path).unwrap();
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_framed(&buf[..n], "");
        // Nobody listening: a clear error, never a silent loss.
        drop(server);
        let e = record_via(&Sink::Syslog, &authorized(), &path).unwrap_err();
        assert!(matches!(e, AuditError::Syslog(_)), "{e}");
        assert!(e.to_string().contains("syslog (/dev/log)"), "{e}");
    }

    #[test]
    fn a_sink_without_a_listener_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = gone.local_addr().unwrap().to_string();
        drop(gone);
        for (network, address) in [
            ("tcp", tcp),
            ("unix", dir.path().join("none.sock").display().to_string()),
            (
                "unixgram",
                dir.path().join("none.sock").display().to_string(),
            ),
        ] {
            let sink = Sink::Network {
                network: network.into(),
                address: address.clone(),
            };
            let e = record(&sink, &authorized()).unwrap_err().to_string();
            assert!(e.contains(network) && e.contains(&address), "{e}");
        }
    }

    #[test]
    fn file_sink_refuses_symlinks_fifos_and_tightens_a_wide_mode() {
        let dir = tempfile::tempdir().unwrap();
        let ev = Event {
            level: Level::Info,
            msg: "m",
            job: None,
            runner: None,
            stage: "config_exec",
            error_id: None,
            account: None,
            login: None,
            name: None,
        };
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "v").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = record(&Sink::File(link.clone()), &ev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link") && e.contains("link.log"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "v");
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(record(&Sink::File(fifo), &ev).is_err());
        let e = record(&Sink::File(dir.path().to_path_buf()), &ev).unwrap_err();
        assert!(e.to_string().contains(&dir.path().display().to_string()));
        let wide = dir.path().join("old.log");
        std::fs::write(&wide, "").unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o666)).unwrap();
        record(&Sink::File(wide.clone()), &ev).unwrap();
        let mode = std::fs::metadata(&wide).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn levels_filter() {
        use crate::config::LogLevel;
        assert!(passes(Level::Error, LogLevel::Warn));
        assert!(!passes(Level::Info, LogLevel::Warn));
        assert!(passes(Level::Debug, LogLevel::Debug));
    }
}
