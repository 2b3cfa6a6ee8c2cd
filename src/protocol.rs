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
//! * **status** (child writes, parent reads): one JSON line, the [`Status`] of the stage; a
//!   `system_failure` also names its [`Category`] (`"category": "scheduler"`). The key is
//!   optional both ways: a line without it reads as [`Category::Internal`], an unknown
//!   category is read as none, and a reader that does not know the key ignores it.
//!
//! The script travels over the pipe because the runner's temp dir is 0700 and owned by the
//! runner's account: a downscoped `jacamar` could not read it, and the privileged side must
//! never write into a directory the user controls. Nothing secret goes on `jacamar`'s argv.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

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
    /// The job token `jacamar` keeps off the command lines of the runner's own stages (see
    /// [`crate::stages::prelude`]): set for a `run` stage unless `unrestricted_cmd_line`.
    /// It travels here, on the pipe, never on a command line; absent from an older
    /// `jacamar-auth`'s handoff, which then gets no prelude.
    #[serde(default)]
    pub job_token: Option<String>,
}

/// The kind of a failure of the driver, each with the sentence the job log gets for it
/// (`auth::obfuscate::public_message`). Travels on the status pipe with a `system_failure`,
/// so the job log names what failed in `jacamar` (a scheduler, not the directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Configuration,
    Authorization,
    Environment,
    Directories,
    /// The batch scheduler did not take the job, or we lost track of it.
    Scheduler,
    Internal,
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
    /// The driver could not do its part (directories, spawn, scheduler, ...); what kind of
    /// failure travels beside it on the status line (see [`write_status`]).
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
pub fn set_inheritable(fd: impl AsFd, inherit: bool) -> Result<(), ProtocolError> {
    let flags = if inherit {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(ProtocolError::Setup)
}

/// The handoff as it goes on the pipe: `HANDOFF <len>\n` and the JSON.
pub fn handoff_bytes(h: &Handoff) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(h).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let mut msg = format!("HANDOFF {}\n", body.len()).into_bytes();
    msg.extend_from_slice(&body);
    Ok(msg)
}

/// The parent's end of the control pipe, written by a task of its own so that the
/// supervisor never waits on it: a `jacamar` that never reads (sudo, PAM or NSS hanging
/// before it starts) must not make `jacamar-auth` deaf to its own signals. The task writes
/// the handoff, then each request sent to [`ControlWriter::send`], in order; it ends when
/// the writer is dropped or the pipe breaks (the child is gone and needs no more lines).
pub struct ControlWriter {
    tx: mpsc::UnboundedSender<Request>,
    delivered: Arc<AtomicBool>,
    handoff: oneshot::Receiver<Result<(), ProtocolError>>,
}

/// Where the handoff stands when the child has ended.
#[derive(Debug)]
pub enum Delivery {
    /// The whole handoff was written.
    Delivered,
    /// Writing it failed (EPIPE: the child closed its end without reading it).
    Failed(ProtocolError),
    /// It was still being written: the child never read all of it.
    Pending,
}

impl ControlWriter {
    /// Start the writer task on `fd` (needs a tokio runtime) with `h` as its first message.
    pub fn spawn(fd: OwnedFd, h: &Handoff) -> Result<ControlWriter, ProtocolError> {
        let msg = handoff_bytes(h)?;
        let mut pipe =
            tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(ProtocolError::Write)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
        let (done_tx, done_rx) = oneshot::channel();
        let delivered = Arc::new(AtomicBool::new(false));
        let flag = delivered.clone();
        tokio::spawn(async move {
            let written = async {
                pipe.write_all(&msg).await?;
                pipe.flush().await
            }
            .await
            .map_err(ProtocolError::Write);
            let ok = written.is_ok();
            flag.store(ok, Ordering::SeqCst);
            // The receiver may be gone (the stage ended): nobody needs the result then.
            let _ = done_tx.send(written);
            if !ok {
                return;
            }
            while let Some(req) = rx.recv().await {
                // A failed write means the child is gone: it needs no more lines.
                if pipe.write_all(control_line(req).as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        Ok(ControlWriter {
            tx,
            delivered,
            handoff: done_rx,
        })
    }

    /// Queue a control line (written after the handoff). A writer task that has ended (the
    /// child is gone) drops it: a child that is gone needs none.
    pub fn send(&self, req: Request) {
        let _ = self.tx.send(req);
    }

    /// Whether the whole handoff has been written.
    pub fn delivered(&self) -> bool {
        self.delivered.load(Ordering::SeqCst)
    }

    /// Where the handoff stands (call once the child has ended).
    pub fn delivery(&mut self) -> Delivery {
        match self.handoff.try_recv() {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(e)) => Delivery::Failed(e),
            Err(_) => Delivery::Pending,
        }
    }
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

/// The control line of a request (parent side).
pub fn control_line(req: Request) -> String {
    match req {
        Request::Terminate { signal, reason } => {
            let why = match reason {
                Reason::Signal(_) => "signal",
                Reason::Backstop => "backstop",
                Reason::Parent | Reason::ParentGone => "parent",
            };
            format!("TERM {} {why}\n", signal as i32)
        }
        Request::Kill { .. } => "KILL\n".to_string(),
    }
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

/// Write the status line (child side). `category` is added to a `system_failure` (and
/// ignored for any other status).
pub fn write_status(w: &mut File, s: &Status, category: Option<Category>) -> std::io::Result<()> {
    let mut value = serde_json::to_value(s).map_err(std::io::Error::other)?;
    if let (Status::SystemFailure { .. }, Some(c), Some(obj)) = (s, category, value.as_object_mut())
    {
        obj.insert("category".into(), serde_json::json!(c));
    }
    let mut line = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Parse what the child wrote on the status pipe (None: nothing usable, the child died),
/// with the category of a `system_failure` (None when absent or unknown: an older or newer
/// `jacamar`).
pub fn parse_status(bytes: &[u8]) -> Option<(Status, Option<Category>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let value: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
    let category = match value.get("category") {
        Some(c) if value.get("status").and_then(|s| s.as_str()) == Some("system_failure") => {
            serde_json::from_value(c.clone()).ok()
        }
        _ => None,
    };
    Some((serde_json::from_value(value).ok()?, category))
}

/// Take ownership of an inherited descriptor named on our command line, refusing the
/// standard streams.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, ProtocolError> {
    if fd <= 2 {
        return Err(ProtocolError::Malformed(format!(
            "descriptor {fd} is a standard stream"
        )));
    }
    // SAFETY: fcntl(F_GETFD) on a plain number only reads that descriptor's flags and fails
    // with EBADF when it is not open (there is no I/O-safe way to probe a number). `fd` is
    // adopted only once that succeeded: it is open, was inherited for us alone and named on
    // our command line by our parent, and is taken exactly once, at start-up, so the new
    // OwnedFd is its only owner.
    unsafe {
        Errno::result(libc::fcntl(fd, libc::F_GETFD)).map_err(ProtocolError::Setup)?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
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
            job_token: Some("glcbt-x".into()),
        }
    }

    #[test]
    fn handoff_roundtrip_leaves_control_lines_in_the_pipe() {
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        let h = sample();
        let h2 = h.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&handoff_bytes(&h2).unwrap()).unwrap();
            w.write_all(
                control_line(Request::Terminate {
                    signal: Signal::SIGTERM,
                    reason: Reason::Parent,
                })
                .as_bytes(),
            )
            .unwrap();
        });
        assert_eq!(read_handoff(&mut r).unwrap(), h);
        writer.join().unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "TERM 15 parent\n");
    }

    #[test]
    fn a_handoff_without_a_job_token_reads_as_none() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("job_token");
        let h: Handoff = serde_json::from_value(v).unwrap();
        assert_eq!(h.job_token, None);
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
        assert_eq!(parse_status(&v), Some((s, None)));
        assert_eq!(parse_status(b"garbage"), None);
        // The plain success line is unchanged by the Configured variant.
        assert_eq!(
            parse_status(b"{\"status\":\"success\"}\n"),
            Some((Status::Success, None))
        );
        let c = Status::Configured {
            builds_dir: "/d/builds/p_1/000".into(),
            builds_dir_is_shared: false,
        };
        let line = serde_json::to_vec(&c).unwrap();
        assert_eq!(parse_status(&line), Some((c, None)));
    }

    #[test]
    fn a_failure_carries_its_category_and_old_or_new_lines_still_parse() {
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        let failed = Status::SystemFailure {
            message: "sbatch: not found".into(),
        };
        write_status(&mut w, &failed, Some(Category::Scheduler)).unwrap();
        drop(w);
        let mut line = Vec::new();
        r.read_to_end(&mut line).unwrap();
        assert_eq!(
            parse_status(&line),
            Some((failed.clone(), Some(Category::Scheduler)))
        );
        // An older jacamar (no category), a newer one (unknown category): the status stays.
        let old = br#"{"status":"system_failure","message":"sbatch: not found"}"#;
        assert_eq!(parse_status(old), Some((failed.clone(), None)));
        let newer =
            br#"{"status":"system_failure","message":"sbatch: not found","category":"quantum"}"#;
        assert_eq!(parse_status(newer), Some((failed, None)));
        // A category is only a failure's.
        let ok = br#"{"status":"success","category":"scheduler"}"#;
        assert_eq!(parse_status(ok), Some((Status::Success, None)));
    }

    #[tokio::test]
    async fn the_control_writer_never_blocks_its_caller() {
        // Nobody reads: a handoff larger than the pipe's buffer cannot be written whole.
        let (r, w) = pipe_cloexec().unwrap();
        let mut writer = ControlWriter::spawn(w, &sample()).unwrap();
        writer.send(Request::Kill {
            reason: Reason::Parent,
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writer.delivered());
        assert!(matches!(writer.delivery(), Delivery::Pending));
        // Once the child reads, the handoff and then the queued line arrive, in order.
        let reader = std::thread::spawn(move || {
            let mut r = File::from(r);
            let h = read_handoff(&mut r).unwrap();
            let mut rest = [0u8; 5];
            r.read_exact(&mut rest).unwrap();
            (h, rest)
        });
        let (h, rest) = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(h, sample());
        assert_eq!(&rest, b"KILL\n");
        assert!(writer.delivered());
        assert!(matches!(writer.delivery(), Delivery::Delivered));
    }
}
