//! Starting one driver call the way the runner does, streaming its output, and escalating
//! SIGTERM -> SIGKILL -> abandon on the call's whole process group.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use jacamar::protocol::Stage;

use crate::output::{job_log_bytes, runner_log, runner_log_bytes};

/// How long to keep reading a call's pipes after it exited (a descendant may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);
/// Upper bound on captured `config` stdout.
const CAPTURE_LIMIT: u64 = 4 * 1024 * 1024;

/// Where a call's stdout goes (stderr always goes to the same log as stdout, except that
/// `Capture` sends stderr to the job log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// stdout and stderr into the job log.
    JobLog,
    /// stdout captured (config's JSON), stderr into the job log.
    CaptureStdout,
    /// stdout and stderr into the runner log only (cleanup).
    RunnerLog,
}

/// One entry of the summary's `calls` list.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// The hook (`config`, `prepare`, `run`, `cleanup`).
    pub kind: &'static str,
    /// A `run` stage's name.
    pub stage: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub pid: u32,
    /// Milliseconds since the emulator started.
    pub started_ms: u64,
    /// Milliseconds since the emulator started; null while the call has not been seen to end.
    pub ended_ms: Option<u64>,
    /// Signals the emulator sent to the call's process group, in order ("TERM", "KILL").
    pub signals_sent: Vec<String>,
    /// The call did not exit within force_kill_timeout after SIGKILL and was abandoned.
    pub abandoned: bool,
    /// Cleanup was started while this call was still running (hard abort wait expired).
    pub detached: bool,
    /// Processes of the call's group were still alive after the leader exited.
    pub group_left_behind: bool,
}

/// The shared list of call records.
pub type Records = Arc<Mutex<Vec<CallRecord>>>;

/// Escalation timings.
#[derive(Debug, Clone, Copy)]
pub struct KillTimings {
    pub graceful_kill_timeout: Duration,
    pub force_kill_timeout: Duration,
}

/// Everything needed to start one call.
pub struct CallSpec {
    /// The stage called (a `run` stage with the path of its script).
    pub stage: Stage<PathBuf>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the emulator's own environment, in order (a later duplicate wins).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub output: OutputMode,
    /// Cancelled => SIGTERM to the group, then escalation.
    pub terminate: CancellationToken,
    /// Cancelled => SIGKILL to the group at once.
    pub kill_now: CancellationToken,
    /// If set, the call gets `terminate` treatment after this long (cleanup's own timeout).
    pub deadline: Option<Duration>,
    pub timings: KillTimings,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Abandoned,
    WaitFailed(String),
}

/// The result of a finished call.
#[derive(Debug)]
pub struct Finished {
    pub ending: CallEnd,
    pub stdout: Vec<u8>,
}

/// A started call.
pub struct Running {
    pub pid: u32,
    pub index: usize,
    pub result: oneshot::Receiver<Finished>,
    pub handle: JoinHandle<()>,
}

/// Milliseconds since `origin`.
pub fn ms_since(origin: StdInstant) -> u64 {
    origin.elapsed().as_millis() as u64
}

/// Starts a call as the leader of its own process group with stdin from /dev/null.
pub fn start(spec: CallSpec, records: &Records, origin: StdInstant) -> std::io::Result<Running> {
    let mut child = spawn(&spec)?;
    let pid = child.id().unwrap_or(0);
    let index = record_start(records, &spec, pid, origin);
    let label = match &spec.stage {
        Stage::Run { name, .. } => format!("run {name} (pid {pid})"),
        other => format!("{} (pid {pid})", other.hook()),
    };
    let pipes = read_output(&mut child, spec.output);

    let (tx, rx) = oneshot::channel();
    let watch = Watch {
        pid,
        index,
        label,
        origin,
        records: Arc::clone(records),
    };
    let handle = tokio::spawn(watch.run(child, spec, pipes, tx));
    Ok(Running {
        pid,
        index,
        result: rx,
        handle,
    })
}

/// Spawns the call's program in its own process group, stdin from /dev/null, stdout and
/// stderr piped.
fn spawn(spec: &CallSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.spawn()
}

/// Appends the started call's record; its index in `records`.
fn record_start(records: &Records, spec: &CallSpec, pid: u32, origin: StdInstant) -> usize {
    let mut recs = records.lock().unwrap_or_else(|p| p.into_inner());
    recs.push(CallRecord {
        kind: spec.stage.hook(),
        stage: match &spec.stage {
            Stage::Run { name, .. } => Some(name.clone()),
            _ => None,
        },
        exit_code: None,
        signal: None,
        pid,
        started_ms: ms_since(origin),
        ended_ms: None,
        signals_sent: Vec::new(),
        abandoned: false,
        detached: false,
        group_left_behind: false,
    });
    recs.len() - 1
}

/// A task reading one of the call's pipes; it returns what it captured.
type PipeTask = Option<JoinHandle<Vec<u8>>>;

/// Starts reading the call's stdout and stderr as `mode` says: `[stdout, stderr]`.
fn read_output(child: &mut Child, mode: OutputMode) -> [PipeTask; 2] {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    match mode {
        OutputMode::JobLog => [
            stdout.map(|s| tokio::spawn(forward_lines(s, Sink::JobLog))),
            stderr.map(|s| tokio::spawn(forward_lines(s, Sink::JobLog))),
        ],
        OutputMode::RunnerLog => [
            stdout.map(|s| tokio::spawn(forward_lines(s, Sink::RunnerLog))),
            stderr.map(|s| tokio::spawn(forward_lines(s, Sink::RunnerLog))),
        ],
        OutputMode::CaptureStdout => [
            stdout.map(|s| tokio::spawn(capture(s))),
            stderr.map(|s| tokio::spawn(forward_lines(s, Sink::JobLog))),
        ],
    }
}

/// One started call, watched until it ends.
struct Watch {
    pid: u32,
    index: usize,
    label: String,
    origin: StdInstant,
    records: Records,
}

impl Watch {
    /// Supervises the call to its end, then drains its pipes, records how it ended and sends
    /// the result (logged instead when nobody waits for it any more).
    async fn run(
        self,
        mut child: Child,
        spec: CallSpec,
        pipes: [PipeTask; 2],
        tx: oneshot::Sender<Finished>,
    ) {
        let (pid, label) = (self.pid, &self.label);
        let ending = supervise(&mut child, pid, &spec, &self.records, self.index, label).await;
        let stdout = self.drain(pipes).await;
        let left_behind = group_still_alive(pid).await;
        if left_behind && matches!(ending, CallEnd::Exited { .. }) {
            runner_log(&format!(
                "WARNING: {label}: processes of its group are still alive after it exited"
            ));
        }
        self.record_end(&ending, left_behind);
        let describe = describe_call_end(&ending);
        if tx.send(Finished { ending, stdout }).is_err() {
            // Nobody waits any more: cleanup was started without this call (hard abort).
            runner_log(&format!("detached {label} finally ended: {describe}"));
        }
    }

    /// Waits at most [`PIPE_GRACE`] for each pipe; stdout's bytes. Pipes still open then
    /// (a descendant holds them, a leak to report) are abandoned with a warning.
    async fn drain(&self, pipes: [PipeTask; 2]) -> Vec<u8> {
        let mut stdout_bytes = Vec::new();
        let mut leaked = false;
        for (i, task) in pipes.into_iter().enumerate() {
            let Some(mut task) = task else { continue };
            match tokio::time::timeout(PIPE_GRACE, &mut task).await {
                Ok(Ok(bytes)) => {
                    if i == 0 {
                        stdout_bytes = bytes;
                    }
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    task.abort();
                    leaked = true;
                }
            }
        }
        if leaked {
            runner_log(&format!(
                "WARNING: {}: output pipes still open {}s after the call ended \
                 (a descendant holds them); stopped reading",
                self.label,
                PIPE_GRACE.as_secs()
            ));
        }
        stdout_bytes
    }

    /// Fills in the call's record: exit code or signal, end time, abandoned, left behind.
    fn record_end(&self, ending: &CallEnd, left_behind: bool) {
        let (code, signal) = match ending {
            CallEnd::Exited { code, signal } => (*code, *signal),
            _ => (None, None),
        };
        let mut recs = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = recs.get_mut(self.index) {
            r.exit_code = code;
            r.signal = signal;
            r.ended_ms = Some(ms_since(self.origin));
            r.abandoned = *ending == CallEnd::Abandoned;
            r.group_left_behind = left_behind;
        }
    }
}

/// Text for an ending, for logs.
pub fn describe_call_end(ending: &CallEnd) -> String {
    match ending {
        CallEnd::Exited {
            code: Some(code), ..
        } => format!("exit status {code}"),
        CallEnd::Exited {
            signal: Some(sig), ..
        } => match Signal::try_from(*sig) {
            Ok(s) => format!("killed by signal {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        CallEnd::Exited { .. } => "ended".to_string(),
        CallEnd::Abandoned => "abandoned (still alive after SIGKILL)".to_string(),
        CallEnd::WaitFailed(e) => format!("wait failed: {e}"),
    }
}

/// Whether any non-zombie process of the group `pgid` is still alive, polled for a short while
/// (members just killed need a moment to die). Zombies waiting for a slow reaper do not count.
async fn group_still_alive(pgid: u32) -> bool {
    if pgid == 0 {
        return false;
    }
    for _ in 0..10 {
        if !live_members(pgid) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Whether a live (not zombie) member of the process group is left: read from /proc
/// ([`jacamar::supervisor::procfs`]); without /proc, asks kill(2).
fn live_members(pgid: u32) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return killpg(Pid::from_raw(pgid as i32), None).is_ok();
    }
    jacamar::supervisor::procfs::all_processes()
        .iter()
        .any(|p| p.pgid == pgid as i32 && !p.zombie)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

fn send(pid: u32, sig: Signal, label: &str, records: &Records, index: usize) {
    if pid == 0 {
        return;
    }
    let res = killpg(Pid::from_raw(pid as i32), sig);
    runner_log(&format!(
        "sending {} to the process group of {label}{}",
        sig.as_str(),
        match res {
            Ok(()) => String::new(),
            Err(e) => format!(" failed: {e}"),
        }
    ));
    let mut recs = records.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = recs.get_mut(index) {
        r.signals_sent
            .push(sig.as_str().trim_start_matches("SIG").to_string());
    }
}

/// The state machine of one call: exit, SIGTERM on request, SIGKILL after the graceful
/// timeout (or at once on `kill_now`), abandon after the force timeout.
async fn supervise(
    child: &mut Child,
    pid: u32,
    spec: &CallSpec,
    records: &Records,
    index: usize,
    label: &str,
) -> CallEnd {
    let mut termed = false;
    let mut kill_at: Option<Instant> = None;
    let mut abandon_at: Option<Instant> = None;
    let deadline = spec.deadline.map(|d| Instant::now() + d);
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(st) => CallEnd::Exited { code: st.code(), signal: st.signal() },
                    Err(e) => CallEnd::WaitFailed(e.to_string()),
                };
            }
            _ = spec.kill_now.cancelled(), if abandon_at.is_none() => {
                send(pid, Signal::SIGKILL, label, records, index);
                abandon_at = Some(Instant::now() + spec.timings.force_kill_timeout);
            }
            _ = spec.terminate.cancelled(), if !termed => {
                termed = true;
                send(pid, Signal::SIGTERM, label, records, index);
                kill_at = Some(Instant::now() + spec.timings.graceful_kill_timeout);
            }
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() && !termed => {
                runner_log(&format!("{label} exceeded its timeout"));
                termed = true;
                send(pid, Signal::SIGTERM, label, records, index);
                kill_at = Some(Instant::now() + spec.timings.graceful_kill_timeout);
            }
            _ = sleep_until(kill_at.unwrap_or_else(far_future)), if kill_at.is_some() && abandon_at.is_none() => {
                send(pid, Signal::SIGKILL, label, records, index);
                abandon_at = Some(Instant::now() + spec.timings.force_kill_timeout);
            }
            _ = sleep_until(abandon_at.unwrap_or_else(far_future)), if abandon_at.is_some() => {
                runner_log(&format!(
                    "WARNING: {label} still alive {:?} after SIGKILL; abandoning it",
                    spec.timings.force_kill_timeout
                ));
                return CallEnd::Abandoned;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Sink {
    JobLog,
    RunnerLog,
}

/// Forwards a pipe line by line, as lines arrive.
async fn forward_lines<R: AsyncRead + Unpin>(pipe: R, sink: Sink) -> Vec<u8> {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => match sink {
                Sink::JobLog => job_log_bytes(&line),
                Sink::RunnerLog => runner_log_bytes(&line),
            },
        }
    }
    Vec::new()
}

/// Captures a pipe (bounded).
async fn capture<R: AsyncRead + Unpin>(pipe: R) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = pipe.take(CAPTURE_LIMIT).read_to_end(&mut buf).await;
    buf
}
