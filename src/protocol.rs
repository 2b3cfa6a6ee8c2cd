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
//! * **status** (child writes, parent reads): exactly one JSON line, the [`Status`] of the
//!   stage; a `system_failure` also names its [`Category`] (`"category": "scheduler"`). The
//!   key is optional both ways: a line without it reads as [`Category::Internal`], an unknown
//!   category is read as none, and a reader that does not know the key ignores it. Having
//!   written it, `jacamar` exits with the code of that status ([`exit_code_of`]): 0 for
//!   `success` and `configured`, [`EXIT_BUILD_FAILURE`] (10) for `build_failure`,
//!   [`EXIT_SYSTEM_FAILURE`] (11) for `system_failure`; [`EXIT_NOT_REPORTED`] (3) when it
//!   could not write one.
//!
//! The script travels over the pipe because the runner's temp dir is 0700 and owned by the
//! runner's account: a downscoped `jacamar` could not read it, and the privileged side must
//! never write into a directory the user controls. Nothing secret goes on `jacamar`'s argv.
//!
//! # What the job's side can send, and its bounds
//!
//! `jacamar` runs as the job's user, so the job's processes share its uid. `jacamar` makes
//! itself non-dumpable first thing (`src/bin/jacamar.rs`): a process of that uid can then
//! neither ptrace it nor take its descriptors with `pidfd_getfd` (reopening them through
//! `/proc/<pid>/fd` is refused anyway: the pipes belong to `jacamar-auth`'s account, mode
//! 0600). Whatever still reaches `jacamar-auth` is held to:
//!
//! * the status pipe is read up to [`MAX_STATUS`] (64 KiB) and no further ([`read_status`]):
//!   a longer status is a system failure saying so, and `jacamar-auth` never holds more than
//!   the bound whatever is written;
//! * a status counts only when it is consistent with what `jacamar-auth` saw itself
//!   ([`verdict`]): exactly one line, a [`Status`], and `jacamar` exited with that status's
//!   code. Two lines (a forged one and `jacamar`'s), something that is not a status, or a
//!   status `jacamar`'s exit contradicts (a `success` line from a `jacamar` that exited 10 or
//!   was killed by a signal) make the stage a system failure: the status channel was
//!   tampered with or is inconsistent. Nothing on the pipe at all is the older "ended without
//!   reporting a status". While `jacamar-auth` was stopping the job (cancel, backstop) and
//!   `jacamar` was killed by a signal, its status is not used: the stage is the stop's build
//!   failure, never a success.
//!
//! In the other direction (`jacamar` reading what `jacamar-auth` wrote), control lines are
//! read up to [`MAX_CONTROL_LINE`] bytes: a longer one is refused (skipped, its bytes never
//! buffered); the handoff's header is at most 64 bytes, its body at most [`MAX_HANDOFF`]
//! (refused by the writer beyond that) and buffered only as it arrives.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::job::JobContext;
use crate::supervisor::{Exit, Reason, Request};

/// Largest handoff accepted (scripts of the runner carry every CI variable).
pub const MAX_HANDOFF: usize = 256 * 1024 * 1024;
/// Largest status `jacamar-auth` reads (a real one is a line of at most a few KiB: a system
/// failure's message is cut to fit, see [`write_status`]).
pub const MAX_STATUS: usize = 64 * 1024;
/// Largest control line `jacamar` accepts (the longest real one, `TERM 15 backstop`, has 16
/// bytes before its newline).
pub const MAX_CONTROL_LINE: usize = 128;
/// `jacamar`'s exit code after reporting a `build_failure` (`success` and `configured`: 0).
pub const EXIT_BUILD_FAILURE: i32 = 10;
/// `jacamar`'s exit code after reporting a `system_failure`.
pub const EXIT_SYSTEM_FAILURE: i32 = 11;
/// `jacamar`'s exit code when it could not report a status (or was not started right).
pub const EXIT_NOT_REPORTED: i32 = 3;

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
    #[error(
        "the stage handed to jacamar is {0} bytes, more than the limit of {MAX_HANDOFF} \
         (the runner's script is too large)"
    )]
    TooLarge(usize),
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

/// The stage being run: one hook of the runner's `[runners.custom]`, the same for
/// `jacamar-auth` (from its command line), `jacamar` (in the [`Handoff`]) and the emulator.
///
/// `S` is how a `run` stage's script is held: its path, as the runner names it on
/// `jacamar-auth`'s command line (`Stage<PathBuf>`), or its content, as it travels to
/// `jacamar` in the handoff (`Stage<String>`, the default). On the pipe a stage is
/// `{"action": "config" | "prepare" | "run" | "cleanup"}`, a `run` with `"stage"` (its
/// name) and `"script"` (the content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Stage<S = String> {
    /// `config_exec`: decide the job's builds dir as the user (claim one with
    /// `limit_build_dir`, verify `CUSTOM_CI_BUILDS_DIR`); answered with [`Status::Configured`].
    Config,
    /// `prepare_exec`: create the job's directories.
    Prepare,
    /// `run_exec`: write the stage's script into the user's script dir and run it.
    Run {
        /// The runner's name of the stage (`prepare_script`, `build_script`, `step_*`, ...).
        #[serde(rename = "stage")]
        name: String,
        script: S,
    },
    /// `cleanup_exec`: remove the job's script files (unless retain_logs). Idempotent.
    Cleanup,
}

impl<S> Stage<S> {
    /// The sub-command of the hook (`config`, `prepare`, `run`, `cleanup`).
    pub fn hook(&self) -> &'static str {
        match self {
            Stage::Config => "config",
            Stage::Prepare => "prepare",
            Stage::Run { .. } => "run",
            Stage::Cleanup => "cleanup",
        }
    }

    /// The runner's name of the stage, as logs know it (`config_exec`, `build_script`, ...).
    pub fn name(&self) -> &str {
        match self {
            Stage::Config => "config_exec",
            Stage::Prepare => "prepare_exec",
            Stage::Run { name, .. } => name,
            Stage::Cleanup => "cleanup_exec",
        }
    }

    /// The same stage with its script turned into another form (a path into its content).
    pub fn try_map_script<T, E>(self, f: impl FnOnce(S) -> Result<T, E>) -> Result<Stage<T>, E> {
        Ok(match self {
            Stage::Config => Stage::Config,
            Stage::Prepare => Stage::Prepare,
            Stage::Run { name, script } => Stage::Run {
                name,
                script: f(script)?,
            },
            Stage::Cleanup => Stage::Cleanup,
        })
    }
}

/// Everything `jacamar` needs, decided by the privileged side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The stage (`"action"` on the pipe).
    #[serde(rename = "action")]
    pub stage: Stage,
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
    /// The job response's `image:` for a `run` stage with a `run_mechanism` (unchecked
    /// here: `crate::container` checks it before it reaches a tool).
    #[serde(default)]
    pub image: Option<crate::job::JobImage>,
    /// The job response's registry credentials for the same stages; on the pipe only.
    #[serde(default)]
    pub registry_credentials: Vec<crate::job::RegistryCredential>,
}

/// The kind of a failure of the driver, each with the sentence the job log gets for it
/// (`audit::obfuscate::public_message`). Travels on the status pipe with a `system_failure`,
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
    /// The job's image could not be run on this node (the tool, its setup).
    Container,
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
    /// [`Stage::Config`] succeeded: what `config_exec` prints for the runner.
    Configured {
        builds_dir: std::path::PathBuf,
        builds_dir_is_shared: bool,
    },
}

impl Status {
    /// The status's name on the wire (`success`, `build_failure`, ...).
    pub fn class(&self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::BuildFailure { .. } => "build_failure",
            Status::SystemFailure { .. } => "system_failure",
            Status::Configured { .. } => "configured",
        }
    }
}

impl Status {
    /// The status of a `run` stage whose script ended with `exit`; `stopped` is why we
    /// stopped it, if we did: then the stage failed even if the script's trap exited 0. A
    /// script killed by signal `s` failed with the shell's code for it, `128 + s`.
    pub fn of_exit(exit: Exit, stopped: Option<String>) -> Status {
        match (exit, stopped) {
            (Exit::Code(0), None) => Status::Success,
            (Exit::Code(c), stopped) => Status::BuildFailure {
                exit_code: if c == 0 { 1 } else { c },
                signal: None,
                stopped,
            },
            (Exit::Signal(s), stopped) => Status::BuildFailure {
                exit_code: 128 + s,
                signal: Some(s),
                stopped,
            },
        }
    }
}

/// The code `jacamar` exits with once it has reported `s` (see the module's doc).
pub fn exit_code_of(s: &Status) -> i32 {
    match s {
        Status::Success | Status::Configured { .. } => 0,
        Status::BuildFailure { .. } => EXIT_BUILD_FAILURE,
        Status::SystemFailure { .. } => EXIT_SYSTEM_FAILURE,
    }
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
    if body.len() > MAX_HANDOFF {
        return Err(ProtocolError::TooLarge(body.len()));
    }
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
    // Buffered as it arrives: a header alone never makes us allocate its length.
    let mut body = Vec::with_capacity(len.min(1024 * 1024));
    r.take(len as u64)
        .read_to_end(&mut body)
        .map_err(ProtocolError::Read)?;
    if body.len() < len {
        return Err(ProtocolError::Malformed(format!(
            "EOF after {} of the handoff's {len} bytes",
            body.len()
        )));
    }
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

/// How a read of one line with a bound ended ([`read_line_bounded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// A line (without its newline) is in the buffer; a last line without a newline counts.
    Line,
    /// The line was longer than the bound: its bytes were consumed up to its newline (or
    /// EOF) and dropped, never buffered; the buffer is empty.
    TooLong,
    /// End of input.
    Eof,
}

/// Read one `\n`-terminated line into `line` (cleared first), keeping at most `max` bytes:
/// a longer line is consumed and dropped ([`LineRead::TooLong`]). Memory stays within `max`
/// plus the reader's own buffer whatever the writer sends.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    line.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => LineRead::TooLong,
                (false, true) => LineRead::Eof,
                (false, false) => LineRead::Line,
            });
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let part = &avail[..newline.unwrap_or(avail.len())];
        if !too_long && line.len() + part.len() > max {
            too_long = true;
            line.clear();
        }
        if !too_long {
            line.extend_from_slice(part);
        }
        let used = part.len() + usize::from(newline.is_some());
        r.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// Turn the rest of the control pipe into requests (child side). EOF becomes
/// `Terminate(SIGTERM, ParentGone)`. A line longer than [`MAX_CONTROL_LINE`] is refused
/// (never buffered) with a warning, like any line that is not a request.
pub fn control_requests(
    fd: OwnedFd,
    tx: mpsc::UnboundedSender<Request>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    Ok(tokio::spawn(async move {
        let mut rx = tokio::io::BufReader::new(rx);
        let mut line = Vec::with_capacity(MAX_CONTROL_LINE);
        loop {
            match read_line_bounded(&mut rx, MAX_CONTROL_LINE, &mut line).await {
                Ok(LineRead::Line) => {
                    let req = std::str::from_utf8(&line).ok().and_then(parse_control);
                    if let Some(req) = req {
                        if tx.send(req).is_err() {
                            return;
                        }
                    }
                }
                Ok(LineRead::TooLong) => tracing::warn!(
                    "jacamar: refused a control line longer than {MAX_CONTROL_LINE} bytes"
                ),
                Ok(LineRead::Eof) | Err(_) => {
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
/// ignored for any other status). A `system_failure` whose message would make the line
/// longer than [`MAX_STATUS`] has its message cut (and says so): the reader stops there.
pub fn write_status(w: &mut File, s: &Status, category: Option<Category>) -> std::io::Result<()> {
    let mut line = status_line(s, category)?;
    if line.len() > MAX_STATUS {
        if let Status::SystemFailure { message } = s {
            let mut cut = MAX_STATUS / 2;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            let short = Status::SystemFailure {
                message: format!("{} ... (cut at {cut} bytes)", &message[..cut]),
            };
            line = status_line(&short, category)?;
        }
    }
    w.write_all(&line)
}

/// The status line of `s`, its newline included.
fn status_line(s: &Status, category: Option<Category>) -> std::io::Result<Vec<u8>> {
    let mut value = serde_json::to_value(s).map_err(std::io::Error::other)?;
    if let (Status::SystemFailure { .. }, Some(c), Some(obj)) = (s, category, value.as_object_mut())
    {
        obj.insert("category".into(), serde_json::json!(c));
    }
    let mut line = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// What was read from a pipe with a bound ([`read_bounded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    /// Everything written until EOF, at most the bound.
    Complete(Vec<u8>),
    /// More than the bound was written: reading stopped there, what was read is dropped.
    TooLong,
}

/// Read `r` to EOF, but never more than `max` bytes: the buffer grows only with what
/// arrives and never beyond `max` + 1 bytes; past that, reading stops ([`Bounded::TooLong`]).
pub async fn read_bounded<R: AsyncRead + Unpin>(mut r: R, max: usize) -> std::io::Result<Bounded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // buf.len() <= max here: one more byte than the bound is enough to know.
        let want = (max + 1 - buf.len()).min(chunk.len());
        let n = r.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Bounded::Complete(buf));
        }
        buf.reserve_exact(n);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            return Ok(Bounded::TooLong);
        }
    }
}

/// Read the status pipe (parent side), up to [`MAX_STATUS`]. Returning closes our end: a
/// writer that goes on past the bound gets EPIPE.
pub async fn read_status(fd: OwnedFd) -> std::io::Result<Bounded> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    read_bounded(rx, MAX_STATUS).await
}

/// Why what was written on the status pipe is not one status: what is wrong, never what
/// was written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0} lines were written on the status pipe, where jacamar writes one")]
    Lines(usize),
    #[error("what was written on the status pipe is not JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    #[error("what was written on the status pipe is not a status ({0})")]
    NotAStatus(#[source] serde_json::Error),
}

/// Parse what the child wrote on the status pipe: exactly one line (its newline optional),
/// a [`Status`], with the category of a `system_failure` (None when absent or unknown: an
/// older or newer `jacamar`).
pub fn parse_status(bytes: &[u8]) -> Result<(Status, Option<Category>), StatusError> {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if line.contains(&b'\n') {
        return Err(StatusError::Lines(line.split(|&b| b == b'\n').count()));
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(StatusError::NotJson)?;
    let category = match value.get("category") {
        Some(c) if value.get("status").and_then(|s| s.as_str()) == Some("system_failure") => {
            serde_json::from_value(c.clone()).ok()
        }
        _ => None,
    };
    let status = serde_json::from_value(value).map_err(StatusError::NotAStatus)?;
    Ok((status, category))
}

/// What `jacamar-auth` makes of the status pipe, given how `jacamar` ended ([`verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusVerdict {
    /// Nothing was written: `jacamar` ended without reporting a status.
    Silent,
    /// One status line, consistent with `jacamar`'s exit.
    Reported(Status, Option<Category>),
    /// Not one status consistent with `jacamar`'s exit (too long, more than one line, not a
    /// status, or a status its exit contradicts): the channel was tampered with or is
    /// inconsistent. The text says which, never what was written.
    Inconsistent(String),
}

/// Check what was read on the status pipe against how `jacamar` ended (see the module's
/// doc): a status counts only when it is the one line on the pipe and `jacamar` exited
/// with its code ([`exit_code_of`]).
pub fn verdict(read: &Bounded, exit: Exit) -> StatusVerdict {
    let bytes = match read {
        Bounded::TooLong => {
            return StatusVerdict::Inconsistent(format!(
                "the status was too long (more than {MAX_STATUS} bytes)"
            ))
        }
        Bounded::Complete(b) if b.is_empty() => return StatusVerdict::Silent,
        Bounded::Complete(b) => b,
    };
    let (status, category) = match parse_status(bytes) {
        Ok(s) => s,
        Err(why) => return StatusVerdict::Inconsistent(why.to_string()),
    };
    let code = exit_code_of(&status);
    if exit == Exit::Code(code) {
        return StatusVerdict::Reported(status, category);
    }
    let how = match exit {
        Exit::Code(c) => format!("exited with code {c}"),
        Exit::Signal(s) => match Signal::try_from(s) {
            Ok(sig) => format!("was killed by {}", sig.as_str()),
            Err(_) => format!("was killed by signal {s}"),
        },
    };
    StatusVerdict::Inconsistent(format!(
        "the status says {} (exit code {code}) but jacamar {how}",
        status.class()
    ))
}

/// Take ownership of an inherited descriptor named on our command line, refusing the
/// standard streams.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, ProtocolError> {
    if fd <= 2 {
        return Err(ProtocolError::Malformed(format!(
            "descriptor {fd} is a standard stream"
        )));
    }
    crate::sys::fd::adopt_inherited(fd).map_err(ProtocolError::Setup)
}

/// The raw number of a descriptor, for the command line.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripts_exit_maps_to_one_status() {
        assert_eq!(Status::of_exit(Exit::Code(0), None), Status::Success);
        let failed = |exit_code, signal, stopped: Option<&str>| Status::BuildFailure {
            exit_code,
            signal,
            stopped: stopped.map(str::to_string),
        };
        assert_eq!(Status::of_exit(Exit::Code(7), None), failed(7, None, None));
        // A stopped script failed, even when its trap exited 0.
        let why = Some("backstop".to_string());
        assert_eq!(
            Status::of_exit(Exit::Code(0), why.clone()),
            failed(1, None, Some("backstop"))
        );
        assert_eq!(
            Status::of_exit(Exit::Signal(libc::SIGKILL), None),
            failed(137, Some(9), None)
        );
        assert_eq!(
            Status::of_exit(Exit::Signal(libc::SIGTERM), why),
            failed(143, Some(15), Some("backstop"))
        );
        for (st, code) in [
            (Status::Success, 0),
            (failed(7, None, None), EXIT_BUILD_FAILURE),
            (
                Status::SystemFailure {
                    message: "x".into(),
                },
                EXIT_SYSTEM_FAILURE,
            ),
        ] {
            assert_eq!(exit_code_of(&st), code, "{st:?}");
        }
    }

    #[test]
    fn a_stage_keeps_its_wire_encoding() {
        let run: Stage = Stage::Run {
            name: "build_script".into(),
            script: "echo hi\n".into(),
        };
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "run", "stage": "build_script", "script": "echo hi\n"})
        );
        for (stage, word) in [
            (Stage::<String>::Config, "config"),
            (Stage::Prepare, "prepare"),
            (Stage::Cleanup, "cleanup"),
        ] {
            assert_eq!(stage.hook(), word);
            let json = serde_json::to_value(&stage).unwrap();
            assert_eq!(json, serde_json::json!({ "action": word }));
            assert_eq!(serde_json::from_value::<Stage>(json).unwrap(), stage);
        }
        assert_eq!(run.name(), "build_script");
        assert_eq!(Stage::<String>::Prepare.name(), "prepare_exec");
        let h = sample();
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["action"]["action"], "run");
        assert_eq!(json["action"]["stage"], "build_script");
    }

    fn sample() -> Handoff {
        Handoff {
            stage: Stage::Run {
                name: "build_script".into(),
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
                bash_profile_once: false,
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
            image: None,
            registry_credentials: Vec::new(),
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
        assert_eq!(parse_status(&v).ok(), Some((s, None)));
        assert!(parse_status(b"garbage").is_err());
        // The plain success line is unchanged by the Configured variant.
        assert_eq!(
            parse_status(b"{\"status\":\"success\"}\n").ok(),
            Some((Status::Success, None))
        );
        let c = Status::Configured {
            builds_dir: "/d/builds/p_1/000".into(),
            builds_dir_is_shared: false,
        };
        let line = serde_json::to_vec(&c).unwrap();
        assert_eq!(parse_status(&line).ok(), Some((c, None)));
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
            parse_status(&line).ok(),
            Some((failed.clone(), Some(Category::Scheduler)))
        );
        // An older jacamar (no category), a newer one (unknown category): the status stays.
        let old = br#"{"status":"system_failure","message":"sbatch: not found"}"#;
        assert_eq!(parse_status(old).ok(), Some((failed.clone(), None)));
        let newer =
            br#"{"status":"system_failure","message":"sbatch: not found","category":"quantum"}"#;
        assert_eq!(parse_status(newer).ok(), Some((failed, None)));
        // A category is only a failure's.
        let ok = br#"{"status":"success","category":"scheduler"}"#;
        assert_eq!(parse_status(ok).ok(), Some((Status::Success, None)));
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

    /// A writer thread that writes `total` bytes (in 64 KiB pieces) into `w` and returns how
    /// many it wrote and the error that stopped it, if any.
    fn flood(w: OwnedFd, total: usize) -> std::thread::JoinHandle<(usize, Option<std::io::Error>)> {
        std::thread::spawn(move || {
            let mut w = File::from(w);
            let piece = vec![b'x'; 64 * 1024];
            let mut written = 0;
            while written < total {
                if let Err(e) = w.write_all(&piece) {
                    return (written, Some(e));
                }
                written += piece.len();
            }
            (written, None)
        })
    }

    #[tokio::test]
    async fn the_status_is_read_up_to_its_bound_and_no_further() {
        // 64 MiB offered: reading stops after the bound, and the writer then gets EPIPE.
        let (r, w) = pipe_cloexec().unwrap();
        let writer = flood(w, 64 * 1024 * 1024);
        assert_eq!(read_status(r).await.unwrap(), Bounded::TooLong);
        let (written, err) = tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(std::io::ErrorKind::BrokenPipe),
            "the writer was not stopped"
        );
        // What was written is what the pipe holds plus what we read: nowhere near 64 MiB.
        assert!(
            written <= MAX_STATUS + 1024 * 1024,
            "{written} bytes written"
        );
        // Exactly the bound is still a complete read; one byte more is not.
        for (len, complete) in [(MAX_STATUS, true), (MAX_STATUS + 1, false)] {
            let (r, w) = pipe_cloexec().unwrap();
            let writer = std::thread::spawn(move || File::from(w).write_all(&vec![b'{'; len]));
            let got = read_status(r).await.unwrap();
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            match got {
                Bounded::Complete(b) => assert!(complete && b.len() == len, "{len}"),
                Bounded::TooLong => assert!(!complete, "{len}"),
            }
        }
    }

    #[tokio::test]
    async fn a_bounded_read_never_holds_more_than_its_bound() {
        let data = vec![b'y'; 10_000];
        let got = read_bounded(&data[..], 9_999).await.unwrap();
        assert_eq!(got, Bounded::TooLong);
        let got = read_bounded(&data[..], 10_000).await.unwrap();
        let Bounded::Complete(b) = got else {
            panic!("a read of exactly the bound is complete")
        };
        assert_eq!(b.len(), 10_000);
        assert!(b.capacity() <= 10_001, "capacity {}", b.capacity());
    }

    fn line_of(s: &Status) -> Vec<u8> {
        let mut v = serde_json::to_vec(s).unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn two_status_lines_are_refused() {
        let forged = b"{\"status\":\"success\"}\n".to_vec();
        let real = line_of(&Status::BuildFailure {
            exit_code: 7,
            signal: None,
            stopped: None,
        });
        let both = [forged.clone(), real].concat();
        let err = parse_status(&both).unwrap_err().to_string();
        assert!(err.contains("2 lines"), "{err}");
        assert!(!err.contains("success"), "the error quotes the pipe: {err}");
        assert!(matches!(
            verdict(&Bounded::Complete(both), Exit::Code(EXIT_BUILD_FAILURE)),
            StatusVerdict::Inconsistent(_)
        ));
        // A line glued to the next without its newline is not a status either.
        let glued = b"{\"status\":\"success\"}{\"status\":\"success\"}\n".to_vec();
        assert!(matches!(
            verdict(&Bounded::Complete(glued), Exit::Code(0)),
            StatusVerdict::Inconsistent(_)
        ));
    }

    #[test]
    fn a_status_counts_only_when_jacamars_exit_agrees() {
        let build = Status::BuildFailure {
            exit_code: 7,
            signal: None,
            stopped: None,
        };
        let system = Status::SystemFailure {
            message: "no".into(),
        };
        let configured = Status::Configured {
            builds_dir: "/b".into(),
            builds_dir_is_shared: false,
        };
        let cases = [
            (Status::Success, Exit::Code(0), true),
            (configured.clone(), Exit::Code(0), true),
            (build.clone(), Exit::Code(EXIT_BUILD_FAILURE), true),
            (system.clone(), Exit::Code(EXIT_SYSTEM_FAILURE), true),
            // A forged success: jacamar itself ended otherwise.
            (Status::Success, Exit::Code(EXIT_BUILD_FAILURE), false),
            (Status::Success, Exit::Signal(libc::SIGKILL), false),
            (Status::Success, Exit::Code(EXIT_NOT_REPORTED), false),
            (configured, Exit::Signal(libc::SIGTERM), false),
            (build, Exit::Code(0), false),
            (system, Exit::Code(0), false),
        ];
        for (status, exit, ok) in cases {
            let got = verdict(&Bounded::Complete(line_of(&status)), exit);
            if ok {
                assert_eq!(got, StatusVerdict::Reported(status, None), "{exit:?}");
            } else {
                let StatusVerdict::Inconsistent(why) = got else {
                    panic!("{status:?} with {exit:?} was accepted: {got:?}")
                };
                assert!(why.contains(status.class()), "{why}");
            }
        }
        let StatusVerdict::Inconsistent(why) = verdict(
            &Bounded::Complete(line_of(&Status::Success)),
            Exit::Signal(libc::SIGKILL),
        ) else {
            unreachable!()
        };
        assert!(why.contains("was killed by SIGKILL"), "{why}");
        // Nothing at all is no status; too much is a refusal that says so.
        assert_eq!(
            verdict(&Bounded::Complete(Vec::new()), Exit::Signal(9)),
            StatusVerdict::Silent
        );
        let StatusVerdict::Inconsistent(why) = verdict(&Bounded::TooLong, Exit::Code(0)) else {
            unreachable!()
        };
        assert!(why.contains("too long"), "{why}");
    }

    #[test]
    fn a_huge_failure_message_is_cut_to_fit_the_bound() {
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        let writer = std::thread::spawn(move || {
            let huge = Status::SystemFailure {
                message: "é".repeat(MAX_STATUS),
            };
            write_status(&mut w, &huge, Some(Category::Directories)).unwrap();
        });
        let mut line = Vec::new();
        r.read_to_end(&mut line).unwrap();
        writer.join().unwrap();
        assert!(line.len() <= MAX_STATUS, "{} bytes", line.len());
        let StatusVerdict::Reported(Status::SystemFailure { message }, category) =
            verdict(&Bounded::Complete(line), Exit::Code(EXIT_SYSTEM_FAILURE))
        else {
            panic!("the cut status does not read back")
        };
        assert!(
            message.ends_with("(cut at 32768 bytes)"),
            "{}",
            &message[message.len() - 40..]
        );
        assert_eq!(category, Some(Category::Directories));
    }

    #[tokio::test]
    async fn an_over_long_control_line_is_refused_not_buffered() {
        let mut input = vec![b'x'; 1024 * 1024];
        input.extend_from_slice(b"\nTERM 15 signal\nKILL");
        let mut r = tokio::io::BufReader::new(&input[..]);
        let mut line = Vec::new();
        let got = read_line_bounded(&mut r, MAX_CONTROL_LINE, &mut line).await;
        assert_eq!(got.unwrap(), LineRead::TooLong);
        assert!(line.capacity() <= MAX_CONTROL_LINE, "{}", line.capacity());
        let got = read_line_bounded(&mut r, MAX_CONTROL_LINE, &mut line).await;
        assert_eq!(
            (got.unwrap(), &line[..]),
            (LineRead::Line, &b"TERM 15 signal"[..])
        );
        // A last line without its newline still counts, then EOF.
        let got = read_line_bounded(&mut r, MAX_CONTROL_LINE, &mut line).await;
        assert_eq!((got.unwrap(), &line[..]), (LineRead::Line, &b"KILL"[..]));
        let got = read_line_bounded(&mut r, MAX_CONTROL_LINE, &mut line).await;
        assert_eq!(got.unwrap(), LineRead::Eof);
        // Exactly the bound is a line.
        let exact = [vec![b'y'; MAX_CONTROL_LINE], b"\n".to_vec()].concat();
        let mut r = tokio::io::BufReader::new(&exact[..]);
        let got = read_line_bounded(&mut r, MAX_CONTROL_LINE, &mut line).await;
        assert_eq!(
            (got.unwrap(), line.len()),
            (LineRead::Line, MAX_CONTROL_LINE)
        );
    }

    #[tokio::test]
    async fn control_requests_skip_an_over_long_line_and_keep_reading() {
        let (r, w) = pipe_cloexec().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            w.write_all(&vec![b'T'; 4 * 1024 * 1024]).unwrap();
            w.write_all(b"\nKILL\n").unwrap();
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = control_requests(r, tx).unwrap();
        assert!(matches!(rx.recv().await, Some(Request::Kill { .. })));
        // Then EOF: the parent is gone.
        assert!(matches!(
            rx.recv().await,
            Some(Request::Terminate {
                reason: Reason::ParentGone,
                ..
            })
        ));
        task.await.unwrap();
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn a_handoff_header_alone_is_not_trusted_with_its_length() {
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        w.write_all(format!("HANDOFF {MAX_HANDOFF}\n{{}}").as_bytes())
            .unwrap();
        drop(w);
        let err = read_handoff(&mut r).unwrap_err().to_string();
        assert!(err.contains("EOF after 2 of"), "{err}");
        let (r, w) = pipe_cloexec().unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        w.write_all(format!("HANDOFF {}\n", MAX_HANDOFF + 1).as_bytes())
            .unwrap();
        drop(w);
        assert!(read_handoff(&mut r).is_err());
    }
}
