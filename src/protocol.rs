//! The channel across the privilege boundary: `jacamar-auth` -> `jacamar`.
//!
//! Two pipes, passed to `jacamar` as inherited file descriptors named on its command line
//! (`--control-fd N --status-fd M`):
//!
//! * **control** (parent writes, child reads): first `HANDOFF <len>\n` and `len` bytes of
//!   JSON ([`Handoff`]: the stage, the script's content, the configuration, the job), then
//!   zero or more control lines: `TERM <signo> <why>\n` (forward this signal to the job;
//!   `why` is `signal`, `backstop` or `parent`) or `KILL\n`. **EOF means the parent is gone** (it was SIGKILLed, or crashed): the child
//!   ends the job as if it had been sent `TERM 15`.
//! * **status** (child writes, parent reads): one JSON line, the [`Status`] of the stage.
//!
//! The script travels over the pipe because the runner's temp dir is 0700 and owned by the
//! runner's account: a downscoped `jacamar` could not read it, and the privileged side must
//! never write into a directory the user controls. Nothing secret goes on `jacamar`'s argv.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::job::JobContext;
use crate::supervisor::{Reason, Request};

/// Largest handoff accepted (scripts of the runner carry every CI variable).
pub const MAX_HANDOFF: usize = 256 * 1024 * 1024;

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("failed to read the handoff from jacamar-auth: {0}")]
    Read(std::io::Error),
    #[error("failed to write the handoff to jacamar: {0}")]
    Write(std::io::Error),
    #[error("malformed handoff from jacamar-auth: {0}")]
    Malformed(String),
    #[error("failed to set up the channel to jacamar: {0}")]
    Setup(nix::Error),
}

/// The local account the job runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
    pub shell: std::path::PathBuf,
}

impl Account {
    /// Where the job's commands start: the account's home, or `/` when it has none.
    pub fn workdir(&self) -> std::path::PathBuf {
        if self.home.is_dir() {
            self.home.clone()
        } else {
            "/".into()
        }
    }
}

/// What `jacamar` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `config_exec`: decide the job's builds dir as the user (claim one with
    /// `limit_build_dir`, verify `CUSTOM_CI_BUILDS_DIR`); answered with [`Status::Configured`].
    Config,
    /// Create the job's directories.
    Prepare,
    /// Write the stage's script into the user's script dir and run it.
    Run { stage: String, script: String },
    /// Remove the job's script files (unless retain_logs). Idempotent.
    Cleanup,
}

/// Everything `jacamar` needs, decided by the privileged side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub action: Action,
    /// The configuration's TOML text; `jacamar` re-validates it.
    pub config_toml: String,
    pub job: JobContext,
    pub account: Account,
    /// The job's environment, built from an allowlist (never inherited wholesale).
    pub env: Vec<(String, String)>,
    /// Backstop, as milliseconds since the Unix epoch.
    pub deadline_unix_ms: Option<u64>,
}

/// How a stage ended, as `jacamar` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Success,
    /// The user's script failed: `exit_code` is what goes to `$BUILD_EXIT_CODE_FILE`.
    BuildFailure {
        exit_code: i32,
        /// Set when the script was killed by a signal.
        signal: Option<i32>,
        /// Set when we stopped it (and why).
        stopped: Option<String>,
    },
    /// The driver could not do its part (directories, spawn, ...).
    SystemFailure {
        message: String,
    },
    /// [`Action::Config`] succeeded: what `config_exec` prints for the runner.
    Configured {
        builds_dir: std::path::PathBuf,
        builds_dir_is_shared: bool,
    },
}

/// Create a pipe with close-on-exec set on both ends.
pub fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), ProtocolError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ProtocolError::Setup)
}

/// Let `fd` be inherited across exec (or not).
pub fn set_inheritable(fd: RawFd, inherit: bool) -> Result<(), ProtocolError> {
    let flags = if inherit {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(ProtocolError::Setup)
}

/// Write the handoff (parent side).
pub fn write_handoff(w: &mut File, h: &Handoff) -> Result<(), ProtocolError> {
    let body = serde_json::to_vec(h).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let mut msg = format!("HANDOFF {}\n", body.len()).into_bytes();
    msg.extend_from_slice(&body);
    w.write_all(&msg).map_err(ProtocolError::Write)?;
    w.flush().map_err(ProtocolError::Write)
}

/// Read the handoff (child side). Reads exactly the handoff, nothing after it, so the
/// control lines that follow stay in the pipe for [`control_requests`].
pub fn read_handoff(r: &mut File) -> Result<Handoff, ProtocolError> {
    let mut header = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    loop {
        let n = r.read(&mut byte).map_err(ProtocolError::Read)?;
        if n == 0 {
            return Err(ProtocolError::Malformed("EOF before the handoff".into()));
        }
        if byte[0] == b'\n' {
            break;
        }
        header.push(byte[0]);
        if header.len() > 64 {
            return Err(ProtocolError::Malformed("handoff header too long".into()));
        }
    }
    let header = String::from_utf8_lossy(&header);
    let len: usize = header
        .strip_prefix("HANDOFF ")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= MAX_HANDOFF)
        .ok_or_else(|| ProtocolError::Malformed(format!("bad header {header:?}")))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(ProtocolError::Read)?;
    serde_json::from_slice(&body).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Send a control line (parent side). Errors are ignored: a child that is gone needs none.
pub fn send_control(w: &mut File, req: Request) {
    let line = match req {
        Request::Terminate { signal, reason } => {
            let why = match reason {
                Reason::Signal(_) => "signal",
                Reason::Backstop => "backstop",
                Reason::Parent | Reason::ParentGone => "parent",
            };
            format!("TERM {} {why}\n", signal as i32)
        }
        Request::Kill { .. } => "KILL\n".to_string(),
    };
    let _ = w.write_all(line.as_bytes());
}

/// Parse one control line.
pub fn parse_control(line: &str) -> Option<Request> {
    let line = line.trim();
    if line == "KILL" {
        return Some(Request::Kill {
            reason: Reason::Parent,
        });
    }
    let mut words = line.strip_prefix("TERM ")?.split_whitespace();
    let n: i32 = words.next()?.parse().ok()?;
    let signal = Signal::try_from(n).ok()?;
    let reason = match words.next() {
        Some("signal") => Reason::Signal(signal),
        Some("backstop") => Reason::Backstop,
        _ => Reason::Parent,
    };
    Some(Request::Terminate { signal, reason })
}

/// Turn the rest of the control pipe into requests (child side). EOF becomes
/// `Terminate(SIGTERM, ParentGone)`.
pub fn control_requests(
    fd: OwnedFd,
    tx: mpsc::UnboundedSender<Request>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    Ok(tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(req) = parse_control(&line) {
                        if tx.send(req).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = tx.send(Request::Terminate {
                        signal: Signal::SIGTERM,
                        reason: Reason::ParentGone,
                    });
                    return;
                }
            }
        }
    }))
}

/// Write the status line (child side).
pub fn write_status(w: &mut File, s: &Status) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Parse what the child wrote on the status pipe (None: nothing usable, the child died).
pub fn parse_status(bytes: &[u8]) -> Option<Status> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str(text.lines().next()?).ok()
}

/// Take ownership of an inherited descriptor named on our command line, refusing the
/// standard streams.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, ProtocolError> {
    if fd <= 2 {
        return Err(ProtocolError::Malformed(format!(
            "descriptor {fd} is a standard stream"
        )));
    }
    fcntl(fd, FcntlArg::F_GETFD).map_err(ProtocolError::Setup)?;
    // SAFETY: `fd` is open (F_GETFD succeeded), was inherited for us alone and named on our
    // command line by our parent, and is taken exactly once, at start-up.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The raw number of a descriptor, for the command line.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        Handoff {
            action: Action::Run {
                stage: "build_script".into(),
                script: "echo hi\n".repeat(100_000),
            },
            config_toml: "[general]\n".into(),
            job: JobContext {
                job_id: 7,
                runner_short_token: "abc".into(),
                concurrent_id: 0,
                project_path: "g/p".into(),
                job_timeout: None,
                user_login: None,
                pipeline_source: None,
                server_url: None,
                job_status: None,
                no_bash_profile: false,
                etc_profile_only: false,
                build_dirs: Default::default(),
                batch_variables: Default::default(),
            },
            account: Account {
                name: "u".into(),
                uid: 1,
                gid: 1,
                home: "/h".into(),
                shell: "/bin/bash".into(),
            },
            env: vec![("PATH".into(), "/bin".into())],
            deadline_unix_ms: Some(5),
        }
    }

    #[test]
    fn handoff_roundtrip_leaves_control_lines_in_the_pipe() {
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        let h = sample();
        let h2 = h.clone();
        let writer = std::thread::spawn(move || {
            write_handoff(&mut w, &h2).unwrap();
            send_control(
                &mut w,
                Request::Terminate {
                    signal: Signal::SIGTERM,
                    reason: Reason::Parent,
                },
            );
        });
        assert_eq!(read_handoff(&mut r).unwrap(), h);
        writer.join().unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "TERM 15 parent\n");
    }

    #[test]
    fn control_lines() {
        assert!(matches!(
            parse_control("TERM 2"),
            Some(Request::Terminate {
                signal: Signal::SIGINT,
                reason: Reason::Parent,
            })
        ));
        assert!(matches!(
            parse_control("TERM 15 backstop"),
            Some(Request::Terminate {
                reason: Reason::Backstop,
                ..
            })
        ));
        assert!(matches!(
            parse_control("TERM 15 signal"),
            Some(Request::Terminate {
                reason: Reason::Signal(Signal::SIGTERM),
                ..
            })
        ));
        assert!(matches!(parse_control("KILL"), Some(Request::Kill { .. })));
        assert_eq!(parse_control("TERM 999"), None);
        assert_eq!(parse_control("rm -rf /"), None);
    }

    #[test]
    fn malformed_handoffs_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"HANDOFF x\n",
            b"HANDOFF 5\n{}",
            b"HELLO\n",
            b"HANDOFF 2\n{]",
        ] {
            let (r, w) = pipe_cloexec().unwrap();
            let (mut r, mut w) = (File::from(r), File::from(w));
            w.write_all(bad).unwrap();
            drop(w);
            assert!(read_handoff(&mut r).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_roundtrip() {
        let s = Status::BuildFailure {
            exit_code: 3,
            signal: None,
            stopped: None,
        };
        let mut v = Vec::new();
        v.extend(serde_json::to_vec(&s).unwrap());
        v.push(b'\n');
        assert_eq!(parse_status(&v), Some(s));
        assert_eq!(parse_status(b"garbage"), None);
        // The plain success line is unchanged by the Configured variant.
        assert_eq!(
            parse_status(b"{\"status\":\"success\"}\n"),
            Some(Status::Success)
        );
        let c = Status::Configured {
            builds_dir: "/d/builds/p_1/000".into(),
            builds_dir_is_shared: false,
        };
        let line = serde_json::to_vec(&c).unwrap();
        assert_eq!(parse_status(&line), Some(c));
    }
}
