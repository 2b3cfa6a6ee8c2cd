//! The state machine of one batch job:
//!
//! ```text
//!  submit ──▶ waiting (poll every command_delay, state changes + heartbeat in the log)
//!    ▲  │         │ running: output tailed live          │ TERM / parent gone / backstop
//!    │  │         ▼                                      ▼
//!    │  │     finished ◀──── confirmed gone ◀── cancelling (signal TERM, plain cancel
//!    │  │         │                                       after kill_timeout or KILL;
//!    │  ▼         ▼                                       plain at once if still queued)
//!    │ refused  drain output (nfs_timeout) ──▶ outcome (see outcome.rs) ──▶ Status
//!    └──────────────── resubmit (preempted, node/boot failure; resubmit_limit) ◀┘
//! ```
//!
//! Queue-aware waiting: while the job is queued the log shows its state, reason and
//! expected start on every change and every `[batch] queue_heartbeat` (default 2m); while
//! it runs, every [`HEARTBEAT_RUNNING`]. A job still queued at the CI job's end (`ci_end`:
//! the run call's start plus `CI_JOB_TIMEOUT`) is removed from the queue with the plain
//! cancel: "waited 58m in the queue (Priority), never started". A cancel of a job never
//! seen running (last state queued) is the plain cancel at once: a scheduler's signal form
//! (`scancel --signal=TERM --full`) does nothing to a job that has no processes.
//!
//! Every scheduler command goes through the job's [`Commands`] (one rate limiter); status
//! polls go through the job's [`Poller`] (one query per user per period). Errors of a poll
//! are retried with backoff for `[batch] transient_retry_window`: one line in the log when
//! the scheduler starts failing, one when it answers again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::outcome::{self, system_failure, Seen};
use super::persist::Record;
use super::poller::{JobRef, Poller};
use super::tail::{self, Tail, TailTiming};
use super::{args, BatchError, Commands, Final, JobState, Scheduler, Submission};
use crate::config::Config;
use crate::protocol::Status;
use crate::supervisor::{Reason, Request};
use crate::text::sanitize;

/// The shortest interval between two status polls (when `command_delay` is smaller).
pub const MIN_POLL: Duration = Duration::from_millis(250);
/// Heartbeat while the job runs (while it is queued: `[batch] queue_heartbeat`).
pub const HEARTBEAT_RUNNING: Duration = Duration::from_secs(300);
/// After the plain cancel, how long to wait for the job to leave the queue.
pub const CONFIRM_BOUND: Duration = Duration::from_secs(60);
/// Polls for a job the scheduler does not know (yet) before we call it lost.
const UNKNOWN_LIMIT: u32 = 5;

/// Everything one batch job needs.
pub struct BatchJob<'a> {
    pub config: &'a Config,
    pub scheduler: &'a dyn Scheduler,
    /// The job's scripts dir: the record, the wrapper script and the output live here.
    pub scripts_dir: PathBuf,
    pub stage: &'a str,
    /// The wrapper script already written (see [`super::wrapper::wrapper_script`]).
    pub script: PathBuf,
    /// The job's environment (scheduler commands get it; the scheduler passes it on).
    pub env: Vec<(String, String)>,
    /// CI variables captured for the batch executor (`arguments_variable`, name prefix).
    pub variables: &'a BTreeMap<String, String>,
    pub ci_job_id: u64,
    pub workdir: PathBuf,
    /// Our backstop.
    pub deadline: Option<Instant>,
    /// The job's status polls, shared with the user's other jobs (see [`Poller`]).
    pub poller: Poller,
    /// The CI job's end (`CI_JOB_TIMEOUT` from the run call's start): given to the
    /// scheduler as the job's deadline; a job still queued then never started.
    pub ci_end: Option<Instant>,
}

/// The output file of `stage` in the scripts dir.
pub fn output_path(scripts_dir: &Path, stage: &str) -> PathBuf {
    scripts_dir.join(format!("{stage}.out"))
}

/// Start tailing an output file to the job log: [`tail::spawn`] for real jobs. The state
/// machine's unit tests use a tail that ends at once: a tailer's blocking thread would hold
/// tokio's paused clock still.
pub(crate) type SpawnTail = fn(PathBuf, TailTiming, mpsc::Sender<Vec<u8>>) -> Tail;

/// The job log: one writer task, so our messages and the job's lines never interleave
/// inside a line.
struct Log {
    tx: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Log {
    /// A log written to `out` (our stdout for real jobs). A failed write is not retried:
    /// the job log is the only place to report it.
    fn to<W: AsyncWrite + Unpin + Send + 'static>(mut out: W) -> Log {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let _ = out.write_all(&line).await;
                // Flush when nothing else is waiting: live, without a syscall per line.
                if rx.is_empty() {
                    let _ = out.flush().await;
                }
            }
            let _ = out.flush().await;
        });
        Log { tx, writer }
    }

    async fn say(&self, msg: impl AsRef<str>) {
        let _ = self
            .tx
            .send(format!("{}\n", msg.as_ref()).into_bytes())
            .await;
    }

    async fn warn_if(&self, r: Result<(), BatchError>) {
        if let Err(e) = r {
            self.say(format!("WARNING: {e}")).await;
        }
    }

    async fn close(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// A duration for people: `5s`, `2m10s`, `1h01m`.
pub(crate) fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Poll-error bookkeeping: backoff and the transient window (`transient_retry_window`).
struct Retry {
    since: Option<Instant>,
    attempts: u32,
    last_message: Option<String>,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            since: None,
            attempts: 0,
            last_message: None,
        }
    }

    /// Record a failure; returns the backoff before the next try (`base` doubled per
    /// failure, at most 60 s), or None when failures have lasted `window` (or the command
    /// cannot be started at all). The first failure of a run of them goes to the log, the
    /// others do not (a controller restart is one line, and one when it answers again).
    async fn failed(
        &mut self,
        e: &BatchError,
        base: Duration,
        window: Duration,
        log: &Log,
    ) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if self.last_message.is_none() {
            let msg = e.to_string();
            log.say(format!(
                "scheduler command failed, retrying with backoff for up to {} (transient_retry_window): {msg}",
                fmt_dur(window)
            ))
            .await;
            self.last_message = Some(msg);
        }
        if since.elapsed() >= window || matches!(e, BatchError::Spawn { .. }) {
            return None;
        }
        let back = base.max(MIN_POLL) * 2u32.saturating_pow(self.attempts.min(8));
        Some(back.min(Duration::from_secs(60)))
    }

    /// How long the current run of failures has lasted.
    fn failing_for(&self) -> Duration {
        self.since.map(|s| s.elapsed()).unwrap_or_default()
    }

    async fn ok(&mut self, log: &Log) {
        if let Some(since) = self.since.take() {
            log.say(format!(
                "scheduler answering again after {}",
                fmt_dur(since.elapsed())
            ))
            .await;
        }
        self.attempts = 0;
        self.last_message = None;
    }
}

/// Why the waiting loop ended. Our backstop is a cancel request like the others.
enum Ended {
    Finished(Final),
    Cancel(Request),
    Lost(String),
    /// Still queued at the CI job's end.
    NeverStarted,
}

/// What the waiting loop saw of one scheduler job.
struct Watch {
    /// When it was submitted.
    start: Instant,
    /// When it was first seen running.
    ran_at: Option<Instant>,
    /// Its last state.
    last: Option<JobState>,
    /// The scheduler's last reason (or state word) while it was queued.
    queue_reason: Option<String>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            start: Instant::now(),
            ran_at: None,
            last: None,
            queue_reason: None,
        }
    }

    /// Take in a polled state that is still active.
    fn saw(&mut self, st: &JobState) {
        match st {
            JobState::Running { .. } => {
                self.ran_at.get_or_insert_with(Instant::now);
            }
            JobState::Queued { state, reason, .. } => {
                self.queue_reason = Some(reason.clone().unwrap_or_else(|| state.clone()));
            }
            _ => {}
        }
    }

    /// Not seen running as of the last poll (never polled, queued, or requeued): the
    /// job has no processes a signal could reach.
    fn queued(&self) -> bool {
        !matches!(self.last, Some(JobState::Running { .. }))
    }

    /// How long it waited in the queue (until now, if it never ran).
    fn queued_for(&self) -> Duration {
        self.ran_at.unwrap_or_else(Instant::now) - self.start
    }

    fn seen<'a>(&self, name: &'a str, id: &'a str) -> Seen<'a> {
        Seen {
            name,
            id,
            ran: self.ran_at.is_some(),
            queued_for: self.queued_for(),
            queue_reason: self.queue_reason.clone(),
        }
    }

    fn never_started(&self) -> String {
        outcome::never_started(self.queued_for(), self.queue_reason.as_deref())
    }
}

/// Submit and supervise one batch job; cancellation comes from `requests` (control pipe
/// and our own signals). Returns the stage's status; never panics on scheduler answers.
pub async fn run_batch(
    job: BatchJob<'_>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Status {
    let log = Log::to(tokio::io::stdout());
    let st = drive(&job, tail::spawn, requests, &log).await;
    log.close().await;
    st
}

/// The job's [`Commands`]: `[batch]` rate and `scheduler_bin`, the job's environment with
/// `env_vars` on top, in `workdir`.
fn commands(config: &Config, env: Vec<(String, String)>, workdir: PathBuf) -> Commands {
    let b = &config.batch;
    let env = args::with_env_vars(env, &b.env_vars);
    Commands::new(b.command_delay, b.scheduler_bin.as_deref(), env, workdir)
}

/// The whole life of one batch job: prepare, submit, wait (or cancel), drain the output,
/// and the stage's status; a job the infrastructure ended is submitted again up to
/// `[batch] resubmit_limit` times, with a line in the log each time.
async fn drive(
    job: &BatchJob<'_>,
    spawn_tail: SpawnTail,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Status {
    let (sub, source) = match prepare(job, log).await {
        Ok(s) => s,
        Err(st) => return st,
    };
    let mut cmds = commands(job.config, job.env.clone(), job.workdir.clone());
    cmds.notify_to(&log.tx);
    let record = Record::in_dir(&job.scripts_dir);
    let limit = job.config.batch.resubmit_limit;
    let mut resubmits = 0;
    loop {
        let id = match submit(job, &cmds, &sub, &record, requests, log).await {
            Ok(id) => id,
            Err(st) => return st,
        };
        let (st, resubmit) =
            one_job(job, spawn_tail, &cmds, &sub, &source, &id, requests, log).await;
        if !resubmit || resubmits >= limit {
            return st;
        }
        resubmits += 1;
        log.say(format!(
            "Resubmitting the job ({resubmits} of resubmit_limit {limit}) after {} job {id} ended as above",
            job.scheduler.name()
        ))
        .await;
        if let Err(e) = remove_stale(job.scheduler, &sub) {
            return e;
        }
    }
}

/// Supervise the submitted job `id` to its end: wait (or cancel), drain the output, and
/// the stage's status with whether a resubmission may help.
#[allow(clippy::too_many_arguments)]
async fn one_job(
    job: &BatchJob<'_>,
    spawn_tail: SpawnTail,
    cmds: &Commands,
    sub: &Submission,
    source: &Option<String>,
    id: &str,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> (Status, bool) {
    let name = job.scheduler.name();
    let from = source
        .as_ref()
        .map(|s| format!(", arguments from {s}"))
        .unwrap_or_default();
    log.say(format!(
        "Submitted {name} job {id} ({}{from}); output: {}",
        sub.name,
        sub.output.display()
    ))
    .await;
    let nfs_timeout = job.config.batch.nfs_timeout;
    let tails = Tails::start(spawn_tail, sub, id, nfs_timeout, log);
    let mut watch = Watch::new();
    let (fin, stopped) = match wait(job, cmds, sub, id, &mut watch, requests, log).await {
        Ended::Finished(f) => (Some(f), None),
        Ended::Lost(why) => {
            tails.stop_now().await;
            let message = format!("lost track of {name} job {id}: {why}; cleanup will cancel it if it is still queued");
            log.say(format!("ERROR: {message}")).await;
            return (system_failure(message), false);
        }
        Ended::NeverStarted => {
            let msg = watch.never_started();
            log.say(format!(
                "{name} job {id} {msg}: the CI job's time is up, removing it from the queue"
            ))
            .await;
            let fin = remove_queued(job.scheduler, cmds, id, job.config, log).await;
            tails.drain(nfs_timeout, log).await;
            if fin.is_some() {
                log.warn_if(Record::in_dir(&job.scripts_dir).finished(id))
                    .await;
                return (failed(Some(format!("{name} job {id} {msg}"))), false);
            }
            return status_of(name, id, None, Some(Reason::Backstop), &watch, log).await;
        }
        Ended::Cancel(first) => {
            let why = reason_of(&first);
            // Queued as of the last poll: ask once more, it may have started since.
            if watch.queued() {
                if let Ok(st @ JobState::Running { .. }) = job.scheduler.state(cmds, id).await {
                    watch.saw(&st);
                    watch.last = Some(st);
                }
            }
            let queued = watch.queued();
            if queued {
                log.say(format!(
                    "{name} job {id} never started ({})",
                    watch.never_started()
                ))
                .await;
            }
            (
                cancel(job, cmds, id, first, queued, requests, log).await,
                Some(why),
            )
        }
    };
    tails.drain(nfs_timeout, log).await;
    // Files the job left (PBS's exit code, Cobalt's log) say more than the scheduler.
    let fin = fin.map(|f| job.scheduler.final_from_files(sub, id).unwrap_or(f));
    if fin.is_some() {
        log.warn_if(Record::in_dir(&job.scripts_dir).finished(id))
            .await;
    }
    status_of(name, id, fin, stopped, &watch, log).await
}

/// A build failure with exit code 1.
fn failed(stopped: Option<String>) -> Status {
    Status::BuildFailure {
        exit_code: 1,
        signal: None,
        stopped,
    }
}

/// The submission: the scheduler arguments checked (a refused one fails the build), stale
/// output files of an earlier try removed, and the record told a submission is under way.
/// Returns it with where the user's arguments came from, or the stage's status.
async fn prepare(job: &BatchJob<'_>, log: &Log) -> Result<(Submission, Option<String>), Status> {
    let sched = job.scheduler;
    let b = &job.config.batch;
    let (args, source) = match args::build(job.config, job.variables, sched.illegal_args()) {
        Ok(a) => a,
        Err(e) => {
            log.say(format!("ERROR: {e}")).await;
            return Err(failed(None));
        }
    };
    let output = output_path(&job.scripts_dir, job.stage);
    let error = sched.error_file(&output);
    let sub = Submission {
        script: job.script.clone(),
        output,
        error,
        workdir: job.workdir.clone(),
        name: args::job_name(job.ci_job_id, job.variables, b.disable_name_prefix),
        args,
    };
    remove_stale(sched, &sub)?;
    let record = Record::in_dir(&job.scripts_dir);
    match record.submitting(sched.name(), &sub.name) {
        Ok(()) => Ok((sub, source)),
        Err(e) => Err(system_failure(e.to_string())),
    }
}

/// Remove the output (and error) file of an earlier try, so the tail starts afresh, and the
/// files saying how that try ended (the exit file, the scheduler's own: see
/// [`Scheduler::end_files`]), so its end is never taken for this one's.
fn remove_stale(sched: &dyn Scheduler, sub: &Submission) -> Result<(), Status> {
    let exit = super::wrapper::exit_path(&sub.output);
    let own = sched.end_files(&sub.output);
    for stale in [&sub.output, &exit]
        .into_iter()
        .chain(sub.error.as_ref())
        .chain(own.iter())
    {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(system_failure(format!(
                    "failed to remove the stale output file {}: {e}",
                    stale.display()
                )))
            }
        }
    }
    Ok(())
}

/// The submission of one try: `sub` with the scheduler's deadline arguments in front (see
/// [`Scheduler::deadline_args`]); its notes go to the log when `say` (once per job, not per
/// retry). The deadline is the CI job's end plus `kill_timeout`: the runner's timeout
/// reaches us at the CI job's end and a running job then gets our graceful cancel, whose
/// grace the scheduler's own deadline kill (after its short KillWait) must not cut short.
async fn with_deadline(job: &BatchJob<'_>, sub: &Submission, say: bool, log: &Log) -> Submission {
    let Some(end) = job.ci_end else {
        return sub.clone();
    };
    let left = end.saturating_duration_since(Instant::now());
    let grace = job.config.general.kill_timeout;
    let (extra, notes) = job.scheduler.deadline_args(&sub.args, left, grace);
    if say {
        for n in notes {
            log.say(n).await;
        }
    }
    let mut this = sub.clone();
    this.args = extra.into_iter().chain(sub.args.iter().cloned()).collect();
    this
}

/// Submit the job and record its id. A transient failure is retried with backoff for
/// `transient_retry_window` (a request meanwhile ends the stage unsubmitted); the answer of a
/// refusal goes to the log. `Err`: the stage's status.
async fn submit(
    job: &BatchJob<'_>,
    cmds: &Commands,
    sub: &Submission,
    record: &Record,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Result<String, Status> {
    let sched = job.scheduler;
    let name = sched.name();
    let system = |e: &BatchError| system_failure(format!("failed to submit to {name}: {e}"));
    let mut retry = Retry::new();
    let id = loop {
        let this = with_deadline(job, sub, retry.attempts == 0, log).await;
        let e = match sched.submit(cmds, &this).await {
            Ok(id) => break id,
            Err(e) => e,
        };
        if !e.is_transient() {
            if matches!(e, BatchError::Spawn { .. }) {
                return Err(system(&e));
            }
            log.say(format!("ERROR: {name} refused the job: {e}")).await;
            return Err(failed(None));
        }
        let b = &job.config.batch;
        let Some(back) = retry
            .failed(&e, b.command_delay, b.transient_retry_window, log)
            .await
        else {
            return Err(system(&e));
        };
        tokio::select! {
            _ = tokio::time::sleep(back) => {}
            Some(r) = requests.recv() => {
                log.say(format!("{name}: not submitted: {}", reason_of(&r))).await;
                return Err(failed(Some(reason_of(&r).to_string())));
            }
        }
    };
    if let Err(e) = record.submitted(name, &id) {
        // We cannot promise cleanup will find it: cancel now rather than leave an orphan.
        log.warn_if(sched.cancel(cmds, &id, false).await).await;
        return Err(system_failure(e.to_string()));
    }
    Ok(id)
}

/// The tails of the job's output file and of its error file, when the scheduler keeps one.
struct Tails {
    output: (PathBuf, Tail),
    error: Option<(PathBuf, Tail)>,
    /// The job's exit file and id: the output file's final size (the tailer's completion
    /// fact, see [`tail`]).
    exit: (PathBuf, String),
}

impl Tails {
    fn start(
        spawn: SpawnTail,
        sub: &Submission,
        id: &str,
        nfs_timeout: Duration,
        log: &Log,
    ) -> Tails {
        let start = |p: &PathBuf| {
            let tail = spawn(p.clone(), TailTiming::new(nfs_timeout), log.tx.clone());
            (p.clone(), tail)
        };
        Tails {
            output: start(&sub.output),
            error: sub.error.as_ref().map(start),
            exit: (super::wrapper::exit_path(&sub.output), id.to_string()),
        }
    }

    /// Stop at once, without waiting for late output.
    async fn stop_now(self) {
        for (_, t) in std::iter::once(self.output).chain(self.error) {
            t.stop_now();
            t.finish().await;
        }
    }

    /// The job is over: drain both files (up to `nfs_timeout` for one not there yet, or for
    /// the output's bytes the exit file counts) and say in the log which never appeared,
    /// went away, or arrived short.
    async fn drain(self, nfs_timeout: Duration, log: &Log) {
        let (output, tail) = self.output;
        let (exit, id) = self.exit;
        tail.job_over_expecting(Box::new(move || {
            super::wrapper::read_exit_file(&exit, &id).and_then(|r| r.output_bytes)
        }));
        if let Some((_, t)) = &self.error {
            t.job_over();
        }
        let report = tail.finish().await;
        if let Some((error, t)) = self.error {
            if t.finish().await.never_appeared {
                log.say(format!(
                    "WARNING: the error file {} never appeared (waited nfs_timeout {})",
                    error.display(),
                    fmt_dur(nfs_timeout)
                ))
                .await;
            }
        }
        if report.never_appeared {
            log.say(format!(
                "WARNING: the output file {} never appeared (waited nfs_timeout {})",
                output.display(),
                fmt_dur(nfs_timeout)
            ))
            .await;
        } else if report.missing_at_end {
            log.say(format!(
                "WARNING: the output file {} was moved away and did not come back within nfs_timeout",
                output.display()
            ))
            .await;
        } else if let Some((got, of)) = report.short() {
            log.say(format!(
                "WARNING: only {got} of the {of} bytes the job wrote to its output file {} arrived within nfs_timeout {}: the end of its output is missing from this log",
                output.display(),
                fmt_dur(nfs_timeout)
            ))
            .await;
        }
    }
}

fn reason_of(r: &Request) -> Reason {
    match *r {
        Request::Terminate { reason, .. } | Request::Kill { reason } => reason,
    }
}

/// The stage's status from the job's end (`None`: a cancel not confirmed) and, when we
/// cancelled it, why (a job we stopped failed, even if its trap exited 0), classified by
/// [`outcome::classify`]; with whether a resubmission may help (never after our cancel).
async fn status_of(
    name: &str,
    id: &str,
    fin: Option<Final>,
    stopped: Option<Reason>,
    watch: &Watch,
    log: &Log,
) -> (Status, bool) {
    let Some(f) = fin else {
        let why = stopped
            .map(|r| r.to_string())
            .unwrap_or_else(|| "cancel".into());
        log.say(format!("ERROR: {name} job {id} could not be confirmed gone after the cancel ({why}); cleanup will retry")).await;
        return (failed(Some(why)), false);
    };
    let o = outcome::classify(&f, &watch.seen(name, id));
    if o.cause == outcome::Cause::Success && stopped.is_none() {
        return (Status::Success, false);
    }
    if stopped.is_some() || !f.normal_end {
        let text = match (&stopped, &o.message) {
            (None, Some(m)) => m.clone(),
            _ => format!(
                "{name} job {id} ended {}",
                JobState::Finished(f.clone()).describe()
            ),
        };
        // A system failure has no exit code of the job's own (Slurm says 0:0 for a node
        // failure): "(exit code 0)" after "a system failure" would only mislead.
        if o.cause == outcome::Cause::Infrastructure && stopped.is_none() {
            log.say(text).await;
        } else {
            log.say(format!("{text} (exit code {})", f.exit_code)).await;
        }
    }
    let resubmit = o.resubmit && stopped.is_none();
    (
        outcome::status(&o, stopped.map(|r| r.to_string())),
        resubmit,
    )
}

/// The heartbeat period while the job is in `st`.
fn heartbeat(config: &Config, st: Option<&JobState>) -> Duration {
    match st {
        Some(JobState::Running { .. }) => HEARTBEAT_RUNNING,
        _ => config.batch.queue_heartbeat,
    }
}

/// What one poll of [`wait`] found.
enum Poll {
    /// Still queued or running, in this state.
    Active(JobState),
    /// Not known to the scheduler this time.
    Unknown,
    Over(Ended),
}

/// Wait for the job to finish, polling its state every `command_delay` (at least
/// [`MIN_POLL`]), reporting state changes (expected start included) and a heartbeat into
/// `watch`'s log; returns early on a request, at the CI job's end while the job was never
/// seen running ([`Ended::NeverStarted`]), or at our backstop `deadline` (a cancel with
/// [`Reason::Backstop`]).
async fn wait(
    job: &BatchJob<'_>,
    cmds: &Commands,
    sub: &Submission,
    id: &str,
    watch: &mut Watch,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Ended {
    let name = job.scheduler.name();
    let delay = job.config.batch.command_delay.max(MIN_POLL);
    let start = watch.start;
    let mut next_poll = start + delay;
    let mut next_beat = start + heartbeat(job.config, None);
    let mut unknown = 0;
    let mut retry = Retry::new();
    let far = start + Duration::from_secs(100 * 365 * 86400);
    loop {
        let never_ran = watch.ran_at.is_none();
        tokio::select! {
            r = requests.recv() => return Ended::Cancel(r.unwrap_or(Request::Terminate {
                signal: nix::sys::signal::Signal::SIGTERM,
                reason: Reason::ParentGone,
            })),
            _ = sleep_until(job.deadline.unwrap_or(far)) => return Ended::Cancel(Request::Terminate {
                signal: nix::sys::signal::Signal::SIGTERM,
                reason: Reason::Backstop,
            }),
            _ = sleep_until(job.ci_end.unwrap_or(far)), if never_ran => {
                // Ask once more: it may have started since the last poll.
                match poll(job, cmds, sub, id, &mut retry, log).await {
                    Ok(Poll::Over(end)) => return end,
                    Ok(Poll::Active(st)) if matches!(st, JobState::Running { .. }) => {
                        log.say(format!("{name} job {id} {}", st.describe())).await;
                        watch.saw(&st);
                        watch.last = Some(st);
                        next_beat = Instant::now() + HEARTBEAT_RUNNING;
                    }
                    _ => return Ended::NeverStarted,
                }
            }
            _ = sleep_until(next_beat) => {
                let what = watch.last.as_ref().map(JobState::describe).unwrap_or_else(|| "submitted".into());
                let verb = if watch.queued() { "waiting" } else { "running for" };
                log.say(format!("{name} job {id} {what}, {verb} {}", fmt_dur(start.elapsed()))).await;
                next_beat = Instant::now() + heartbeat(job.config, watch.last.as_ref());
            }
            _ = sleep_until(next_poll) => {
                let poll = poll(job, cmds, sub, id, &mut retry, log).await;
                next_poll = Instant::now() + delay;
                match poll {
                    Err(back) => next_poll = Instant::now() + back,
                    Ok(Poll::Over(end)) => return end,
                    Ok(Poll::Unknown) => {
                        unknown += 1;
                        if unknown >= UNKNOWN_LIMIT {
                            return Ended::Lost(format!("{name} has no record of it after {unknown} polls"));
                        }
                    }
                    Ok(Poll::Active(st)) => {
                        unknown = 0;
                        watch.saw(&st);
                        if watch.last.as_ref().map(JobState::describe) != Some(st.describe()) {
                            log.say(format!("{name} job {id} {}", st.describe())).await;
                            next_beat = Instant::now() + heartbeat(job.config, Some(&st));
                        }
                        watch.last = Some(st);
                    }
                }
            }
        }
    }
}

/// One status poll of [`wait`], through the job's [`Poller`]. `Err`: it failed and the next
/// try is after this backoff (failures lasting `transient_retry_window` end the wait as
/// lost: a system failure naming the scheduler and its error). A job the scheduler does not
/// know but whose files tell its end (Cobalt's log) is over.
async fn poll(
    job: &BatchJob<'_>,
    cmds: &Commands,
    sub: &Submission,
    id: &str,
    retry: &mut Retry,
    log: &Log,
) -> Result<Poll, Duration> {
    let delay = job.config.batch.command_delay.max(MIN_POLL);
    let exit_file = super::wrapper::exit_path(&sub.output);
    let me = JobRef {
        id,
        exit_file: &exit_file,
    };
    match job.poller.state(job.scheduler, cmds, delay, &me).await {
        Ok(st) => {
            retry.ok(log).await;
            Ok(match st {
                JobState::Finished(f) => Poll::Over(Ended::Finished(f)),
                JobState::Unknown => match job.scheduler.final_from_files(sub, id) {
                    Some(f) => Poll::Over(Ended::Finished(f)),
                    None => Poll::Unknown,
                },
                st => Poll::Active(st),
            })
        }
        Err(e) => {
            let window = job.config.batch.transient_retry_window;
            match retry.failed(&e, delay, window, log).await {
                Some(back) => Err(back),
                None => Ok(Poll::Over(Ended::Lost(format!(
                    "{} failing for {} (transient_retry_window): {e}",
                    job.scheduler.name(),
                    fmt_dur(retry.failing_for())
                )))),
            }
        }
    }
}

/// Remove a job that never started: the plain cancel at once, then confirm it left the
/// queue (for up to [`CONFIRM_BOUND`]). Returns its final state if confirmed.
async fn remove_queued(
    sched: &dyn Scheduler,
    cmds: &Commands,
    id: &str,
    config: &Config,
    log: &Log,
) -> Option<Final> {
    let name = sched.name();
    let start = Instant::now();
    log.warn_if(sched.cancel(cmds, id, false).await).await;
    let step = config
        .batch
        .command_delay
        .clamp(MIN_POLL, Duration::from_secs(1));
    let st = confirm_gone(sched, cmds, id, step).await?;
    log.say(format!(
        "{name} job {id} left the queue after {}",
        fmt_dur(start.elapsed())
    ))
    .await;
    Some(match st {
        JobState::Finished(f) => f,
        _ => Final::ended("CANCELLED", 0, None, Some("no record left".into())),
    })
}

/// Cancel the job: the graceful form first (unless `first` is a kill, or the job is
/// `queued`: never seen running, so no signal can reach it, and the plain cancel goes at
/// once), the plain cancel after kill_timeout or on a second request, then confirm it left
/// the queue (for up to [`CONFIRM_BOUND`] after the plain cancel). Returns the final state
/// if confirmed.
async fn cancel(
    job: &BatchJob<'_>,
    cmds: &Commands,
    id: &str,
    first: Request,
    queued: bool,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Option<Final> {
    let sched = job.scheduler;
    let name = sched.name();
    let kill_timeout = job.config.general.kill_timeout;
    let first_reason = reason_of(&first);
    let forced = matches!(first, Request::Kill { .. }) || kill_timeout.is_zero() || queued;
    let how = if queued {
        ": removing it from the queue"
    } else if forced {
        ""
    } else {
        ": asking the job to stop (SIGTERM)"
    };
    log.say(format!("Cancelling {name} job {id} ({first_reason}){how}"))
        .await;
    log.warn_if(sched.cancel(cmds, id, !forced).await).await;
    let start = Instant::now();
    // Set once the plain cancel is sent: the bound of the confirmation.
    let mut give_up = forced.then(|| Instant::now() + CONFIRM_BOUND);
    let step = job
        .config
        .batch
        .command_delay
        .clamp(MIN_POLL, Duration::from_secs(1));
    let mut next_poll = Instant::now() + MIN_POLL;
    let mut requests_open = true;
    let far = start + Duration::from_secs(100 * 365 * 86400);
    loop {
        let plain = |why: String| async move {
            log.say(why).await;
            log.warn_if(sched.cancel(cmds, id, false).await).await;
            Some(Instant::now() + CONFIRM_BOUND)
        };
        tokio::select! {
            r = requests.recv(), if requests_open => {
                let Some(r) = r else { requests_open = false; continue; };
                // Our own backstop and the parent's (or a repeated cancel) are one request.
                if give_up.is_none() && crate::supervisor::escalates_now(first_reason, &r) {
                    give_up = plain(format!("Cancelling {name} job {id} now (second request)")).await;
                }
            }
            _ = sleep_until(start + kill_timeout), if give_up.is_none() => {
                give_up = plain(format!("{name} job {id} still there after kill_timeout {}: cancelling it", fmt_dur(kill_timeout))).await;
            }
            _ = sleep_until(give_up.unwrap_or(far)) => return None,
            _ = sleep_until(next_poll) => {
                next_poll = Instant::now() + step;
                match sched.state(cmds, id).await {
                    Ok(JobState::Finished(f)) => {
                        log.say(format!("{name} job {id} left the queue after {}", fmt_dur(start.elapsed()))).await;
                        return Some(f);
                    }
                    Ok(JobState::Unknown) => {
                        return Some(Final::ended("CANCELLED", 0, None, Some("no record left".into())));
                    }
                    Ok(_) => {}
                    Err(e) => log.say(format!("WARNING: {e}")).await,
                }
            }
        }
    }
}

/// `cleanup`: cancel every recorded job of this CI job that is still queued or running,
/// and confirm each left the queue (bounded). Returns the problems, if any, as text; the
/// caller removes the job's directory afterwards either way.
pub async fn cleanup_job(
    config: &Config,
    scheduler: &dyn Scheduler,
    scripts_dir: &Path,
    env: Vec<(String, String)>,
    workdir: PathBuf,
) -> Vec<String> {
    let record = Record::in_dir(scripts_dir);
    let name = scheduler.name();
    // The record is in the job's scripts dir: only ids of the scheduler's own form pass.
    let read = match record.read(name, &|id| scheduler.valid_id(id)) {
        Ok(r) => r,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems: Vec<String> = read
        .refused
        .iter()
        .map(|r| {
            format!(
                "{}: {r}: skipped, no command is given it",
                record.path().display()
            )
        })
        .collect();
    let cmds = commands(config, env, workdir);
    for j in read.jobs.iter().filter(|j| !j.done) {
        let st = match scheduler.state(&cmds, &j.id).await {
            Ok(st) => st,
            Err(e) => {
                // Unknown state: cancel anyway, a cancel of a finished job is harmless.
                problems.push(e.to_string());
                JobState::Running {
                    state: "UNKNOWN".into(),
                }
            }
        };
        if !st.is_active() {
            continue;
        }
        // The scheduler's words may carry what the job put there (a Flux exception note).
        println!(
            "cleanup: cancelling {name} job {} (still {})",
            j.id,
            sanitize(&st.describe())
        );
        if let Err(e) = scheduler.cancel(&cmds, &j.id, false).await {
            problems.push(e.to_string());
            continue;
        }
        let step = config
            .batch
            .command_delay
            .clamp(MIN_POLL, Duration::from_secs(1));
        match confirm_gone(scheduler, &cmds, &j.id, step).await {
            Some(st) => {
                println!(
                    "cleanup: {name} job {} is gone ({})",
                    j.id,
                    sanitize(&st.describe())
                );
                if let Err(e) = record.finished(&j.id) {
                    problems.push(e.to_string());
                }
            }
            None => problems.push(format!(
                "{name} job {} still listed {} after the cancel",
                j.id,
                fmt_dur(CONFIRM_BOUND)
            )),
        }
    }
    problems
}

/// Poll every `step` until job `id` is no longer active (its last state), for up to
/// [`CONFIRM_BOUND`] (`None`).
async fn confirm_gone(
    scheduler: &dyn Scheduler,
    cmds: &Commands,
    id: &str,
    step: Duration,
) -> Option<JobState> {
    let until = Instant::now() + CONFIRM_BOUND;
    loop {
        tokio::time::sleep(step).await;
        match scheduler.state(cmds, id).await {
            Ok(st) if !st.is_active() => return Some(st),
            _ if Instant::now() >= until => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(fmt_dur(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_dur(Duration::from_secs(130)), "2m10s");
        assert_eq!(fmt_dur(Duration::from_secs(3700)), "1h01m");
    }

    #[test]
    fn exit_codes_of_final_states() {
        let st = |f: Final, stopped: Option<Reason>| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let log = Log::to(tokio::io::sink());
                let (s, _) = status_of("slurm", "1", Some(f), stopped, &Watch::new(), &log).await;
                log.close().await;
                s
            })
        };
        assert_eq!(st(Final::exited("COMPLETED", 0), None), Status::Success);
        assert!(matches!(
            st(Final::exited("FAILED", 7), None),
            Status::BuildFailure {
                exit_code: 7,
                stopped: None,
                ..
            }
        ));
        let s = st(
            Final::ended("TIMEOUT", 0, Some(15), Some("TimeLimit".into())),
            None,
        );
        let Status::BuildFailure {
            exit_code, stopped, ..
        } = s
        else {
            panic!()
        };
        assert_eq!(exit_code, 143);
        assert!(stopped.unwrap().contains("TIMEOUT (TimeLimit)"));
        let s = st(Final::exited("COMPLETED", 0), Some(Reason::Parent));
        assert!(matches!(s, Status::BuildFailure { exit_code: 1, .. }));
    }

    /// `cleanup_job` against a scheduler that records the id of every call: a forged line of
    /// the job's record gives no id to any call and is reported escaped; the valid ids are
    /// asked about and the active one is cancelled.
    #[tokio::test(start_paused = true)]
    async fn cleanup_gives_no_forged_id_to_the_scheduler() {
        use std::sync::Mutex;

        #[derive(Default)]
        struct Ids(Mutex<Vec<String>>);
        impl Scheduler for Ids {
            fn name(&self) -> &'static str {
                "slurm"
            }
            fn illegal_args(&self) -> &'static [args::Illegal] {
                &[]
            }
            fn valid_id(&self, id: &str) -> bool {
                super::super::slurm::valid_id(id)
            }
            fn submit<'a>(
                &'a self,
                _: &'a Commands,
                _: &'a Submission,
            ) -> crate::batch::BoxFuture<'a, Result<String, BatchError>> {
                Box::pin(async { Ok("1".to_string()) })
            }
            fn state<'a>(
                &'a self,
                _: &'a Commands,
                id: &'a str,
            ) -> crate::batch::BoxFuture<'a, Result<JobState, BatchError>> {
                let cancelled = self.0.lock().unwrap().contains(&format!("cancel {id}"));
                self.0.lock().unwrap().push(format!("state {id}"));
                Box::pin(async move {
                    Ok(match (id, cancelled) {
                        ("41", false) => JobState::Running {
                            state: "RUNNING".into(),
                        },
                        ("41", true) => {
                            JobState::Finished(Final::ended("CANCELLED", 0, None, None))
                        }
                        _ => JobState::Unknown,
                    })
                })
            }
            fn cancel<'a>(
                &'a self,
                _: &'a Commands,
                id: &'a str,
                _: bool,
            ) -> crate::batch::BoxFuture<'a, Result<(), BatchError>> {
                self.0.lock().unwrap().push(format!("cancel {id}"));
                Box::pin(async { Ok(()) })
            }
        }

        let text =
            "[general]\nexecutor = \"slurm\"\ndata_dir = \"/ecp\"\n[auth]\ndownscope = \"none\"\n";
        let config = Config::from_str_named(text, "test.toml").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(super::super::persist::FILE_NAME),
            "job slurm 41\njob slurm --uid=0\njob slurm 4\x1b[31m2\njob slurm -u alice\njob slurm 43\n",
        )
        .unwrap();
        let sched = Ids::default();
        let problems = cleanup_job(
            &config,
            &sched,
            dir.path(),
            vec![],
            dir.path().to_path_buf(),
        )
        .await;
        let calls = sched.0.lock().unwrap().clone();
        assert!(
            calls
                .iter()
                .all(|c| c.ends_with(" 41") || c.ends_with(" 43")),
            "{calls:?}"
        );
        assert!(calls.contains(&"cancel 41".to_string()), "{calls:?}");
        assert!(calls.contains(&"state 43".to_string()), "{calls:?}");
        let text = problems.join("\n");
        assert_eq!(problems.len(), 3, "{text}");
        assert!(
            text.contains("\"--uid=0\" is not a slurm job id")
                && text.contains("\"4\\u{1b}[31m2\" is not a slurm job id")
                && text.contains("\"job slurm -u alice\"")
                && !text.contains('\x1b'),
            "{text}"
        );
    }

    mod machine {
        //! The state machine on tokio's paused clock, against an in-memory scheduler that
        //! answers from a script and records every call with its (virtual) time. The tails
        //! end at once (a tailer's blocking thread would hold the paused clock).

        use super::*;
        use crate::supervisor::Request;
        use nix::sys::signal::Signal;
        use std::sync::Mutex;

        /// One call the machine made: when (since the start), and what.
        type Calls = Vec<(Duration, String)>;
        /// The scheduler's answer to a status poll, given every call so far.
        type Answer = Box<dyn Fn(&Calls) -> Result<JobState, BatchError> + Send + Sync>;

        struct Fake {
            t0: Instant,
            calls: Mutex<Calls>,
            answer: Answer,
        }

        impl Fake {
            fn new(
                answer: impl Fn(&Calls) -> Result<JobState, BatchError> + Send + Sync + 'static,
            ) -> Fake {
                Fake {
                    t0: Instant::now(),
                    calls: Mutex::default(),
                    answer: Box::new(answer),
                }
            }

            fn record(&self, what: &str) {
                let at = self.t0.elapsed();
                self.calls.lock().unwrap().push((at, what.to_string()));
            }

            fn calls(&self) -> Calls {
                self.calls.lock().unwrap().clone()
            }

            /// The times of the calls named `what`.
            fn times(&self, what: &str) -> Vec<Duration> {
                self.calls()
                    .into_iter()
                    .filter(|(_, w)| w == what)
                    .map(|(t, _)| t)
                    .collect()
            }
        }

        impl Scheduler for Fake {
            fn name(&self) -> &'static str {
                "fake"
            }
            fn illegal_args(&self) -> &'static [args::Illegal] {
                &[]
            }
            fn valid_id(&self, id: &str) -> bool {
                crate::batch::is_decimal_id(id)
            }
            fn submit<'a>(
                &'a self,
                _: &'a Commands,
                _: &'a Submission,
            ) -> crate::batch::BoxFuture<'a, Result<String, BatchError>> {
                self.record("submit");
                Box::pin(async { Ok("42".to_string()) })
            }
            fn state<'a>(
                &'a self,
                _: &'a Commands,
                _: &'a str,
            ) -> crate::batch::BoxFuture<'a, Result<JobState, BatchError>> {
                let answer = (self.answer)(&self.calls());
                self.record("state");
                Box::pin(async move { answer })
            }
            fn cancel<'a>(
                &'a self,
                _: &'a Commands,
                _: &'a str,
                graceful: bool,
            ) -> crate::batch::BoxFuture<'a, Result<(), BatchError>> {
                self.record(if graceful {
                    "cancel graceful"
                } else {
                    "cancel plain"
                });
                Box::pin(async { Ok(()) })
            }
        }

        fn running() -> Result<JobState, BatchError> {
            Ok(JobState::Running {
                state: "RUNNING".into(),
            })
        }
        fn pending() -> Result<JobState, BatchError> {
            Ok(JobState::Queued {
                state: "PENDING".into(),
                reason: Some("Resources".into()),
                expected_start: None,
            })
        }
        fn cancelled() -> Result<JobState, BatchError> {
            Ok(JobState::Finished(Final::ended(
                "CANCELLED",
                0,
                Some(15),
                None,
            )))
        }
        fn sent(calls: &Calls, what: &str) -> bool {
            calls.iter().any(|(_, w)| w == what)
        }
        fn polls(calls: &Calls) -> usize {
            calls.iter().filter(|(_, w)| w == "state").count()
        }

        fn no_tail(_: PathBuf, _: TailTiming, _: mpsc::Sender<Vec<u8>>) -> Tail {
            Tail::idle()
        }

        /// Run the machine against `fake` with `[general] kill_timeout` 30s and `batch`
        /// (the `[batch]` table's lines); `requests` arrive at their times; `deadline` is our
        /// backstop. Returns the status and the job log.
        async fn run(
            fake: &Fake,
            batch: &str,
            deadline: Option<Duration>,
            requests: Vec<(Duration, Request)>,
        ) -> (Status, String) {
            run_ci(fake, batch, deadline, None, requests).await
        }

        /// [`run`] with the CI job's end `ci_end` after the start.
        async fn run_ci(
            fake: &Fake,
            batch: &str,
            deadline: Option<Duration>,
            ci_end: Option<Duration>,
            requests: Vec<(Duration, Request)>,
        ) -> (Status, String) {
            let text = format!("[general]\nexecutor = \"slurm\"\ndata_dir = \"/ecp\"\nkill_timeout = \"30s\"\n\n[auth]\ndownscope = \"none\"\n\n[batch]\n{batch}\n");
            let config = Config::from_str_named(&text, "test.toml").unwrap();
            let dir = tempfile::tempdir().unwrap();
            let variables = BTreeMap::new();
            let job = BatchJob {
                config: &config,
                scheduler: fake,
                scripts_dir: dir.path().to_path_buf(),
                stage: "build_script",
                script: dir.path().join("build_script-batch"),
                env: vec![],
                variables: &variables,
                ci_job_id: 7,
                workdir: dir.path().to_path_buf(),
                deadline: deadline.map(|d| fake.t0 + d),
                poller: crate::batch::poller::Poller::unshared(),
                ci_end: ci_end.map(|d| fake.t0 + d),
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let t0 = fake.t0;
            let sender = tokio::spawn(async move {
                for (at, r) in requests {
                    sleep_until(t0 + at).await;
                    tx.send(r).unwrap();
                }
                // Keep the channel open: its end means "jacamar-auth went away".
                std::future::pending::<()>().await
            });
            let (w, mut r) = tokio::io::duplex(1 << 20);
            let log = Log::to(w);
            let st = drive(&job, no_tail, &mut rx, &log).await;
            log.close().await;
            sender.abort();
            let mut text = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut text)
                .await
                .unwrap();
            (st, String::from_utf8(text).unwrap())
        }

        const S: fn(u64) -> Duration = Duration::from_secs;

        #[tokio::test(start_paused = true)]
        async fn polls_no_more_than_once_per_command_delay() {
            // Running for 100 s, then done.
            let fake = Fake::new(|c| {
                if polls(c) < 10 {
                    running()
                } else {
                    Ok(JobState::Finished(Final::exited("COMPLETED", 0)))
                }
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            assert_eq!(st, Status::Success, "{log}");
            let t = fake.times("state");
            assert_eq!(t.len(), 11, "{t:?}");
            for w in t.windows(2) {
                assert!(
                    w[1] - w[0] >= S(10),
                    "two polls within command_delay: {t:?}"
                );
            }
            assert!(log.contains("fake job 42 RUNNING"), "{log}");
            // Below the floor, polls are MIN_POLL apart.
            let fake = Fake::new(|c| {
                if polls(c) < 10 {
                    running()
                } else {
                    Ok(JobState::Finished(Final::exited("COMPLETED", 0)))
                }
            });
            let (st, _) = run(&fake, "command_delay = \"0s\"", None, vec![]).await;
            assert_eq!(st, Status::Success);
            let t = fake.times("state");
            for w in t.windows(2) {
                assert!(w[1] - w[0] >= MIN_POLL, "{t:?}");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_pending_job_is_removed_with_the_plain_cancel_at_once() {
            // The signal form does nothing to a job without processes: only the plain
            // cancel removes it.
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    pending()
                }
            });
            let parent = Request::Terminate {
                signal: Signal::SIGTERM,
                reason: Reason::Parent,
            };
            let (st, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(12), parent)]).await;
            let Status::BuildFailure {
                exit_code, stopped, ..
            } = st
            else {
                panic!("{st:?}\n{log}")
            };
            assert_eq!(exit_code, 143);
            assert_eq!(stopped.as_deref(), Some("cancelled by jacamar-auth"));
            assert_eq!(fake.times("cancel plain"), [S(12)], "{:?}", fake.calls());
            assert!(
                fake.times("cancel graceful").is_empty(),
                "{:?}",
                fake.calls()
            );
            assert!(log.contains("fake job 42 PENDING (Resources)"), "{log}");
            assert!(log.contains("fake job 42 never started (waited 12s in the queue (Resources), never started)"), "{log}");
            assert!(log.contains("Cancelling fake job 42 (cancelled by jacamar-auth): removing it from the queue"), "{log}");
            assert!(log.contains("fake job 42 left the queue after"), "{log}");
            // Cancelled before the first poll: never seen running either.
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    pending()
                }
            });
            let (_, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(2), parent)]).await;
            assert_eq!(fake.times("cancel plain"), [S(2)], "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_requeued_job_is_cancelled_as_a_queued_one() {
            // Ran, then back in the queue (node failure, requeue): the plain cancel.
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else if polls(c) < 3 {
                    running()
                } else {
                    pending()
                }
            });
            let term = Request::Terminate {
                signal: Signal::SIGTERM,
                reason: Reason::Signal(Signal::SIGTERM),
            };
            let (_, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(30), term)]).await;
            assert_eq!(fake.times("cancel plain"), [S(30)], "{log}");
            assert!(fake.times("cancel graceful").is_empty(), "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn queued_heartbeat_shows_state_reason_and_expected_start() {
            // Pending (BeginTime) with an expected start until 90 s, then running, done at 130 s.
            let fake = Fake::new(|c| match polls(c) {
                0..=8 => Ok(JobState::Queued {
                    state: "PENDING".into(),
                    reason: Some("BeginTime".into()),
                    expected_start: Some("2030-01-01T10:00:00".into()),
                }),
                9..=12 => running(),
                _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
            });
            let (st, log) = run(
                &fake,
                "command_delay = \"10s\"\nqueue_heartbeat = \"25s\"",
                None,
                vec![],
            )
            .await;
            assert_eq!(st, Status::Success, "{log}");
            let what = "fake job 42 PENDING (BeginTime), expected start 2030-01-01T10:00:00";
            // The change once, at the first poll (10 s); then a beat 25 s after it, and so on.
            assert_eq!(log.matches(&format!("{what}\n")).count(), 1, "{log}");
            let beats: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with(&format!("{what}, waiting")))
                .collect();
            assert_eq!(
                beats,
                [
                    format!("{what}, waiting 35s"),
                    format!("{what}, waiting 1m00s"),
                    format!("{what}, waiting 1m25s"),
                ],
                "{log}"
            );
            assert!(log.contains("fake job 42 RUNNING\n"), "{log}");
            // Running: the running heartbeat (5 min), none within 30 s.
            assert!(!log.contains("running for"), "{log}");
            // Default: 2m.
            let fake = Fake::new(|c| {
                if polls(c) < 30 {
                    pending()
                } else {
                    Ok(JobState::Finished(Final::exited("COMPLETED", 0)))
                }
            });
            let (_, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            assert_eq!(
                log.matches("PENDING (Resources), waiting").count(),
                2,
                "{log}"
            );
            assert!(log.contains("PENDING (Resources), waiting 2m10s"), "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_job_still_queued_at_the_ci_end_never_started() {
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    Ok(JobState::Queued {
                        state: "PENDING".into(),
                        reason: Some("Priority".into()),
                        expected_start: None,
                    })
                }
            });
            let (st, log) = run_ci(
                &fake,
                "command_delay = \"10s\"",
                Some(S(3600 + 600)),
                Some(S(3600)),
                vec![],
            )
            .await;
            assert_eq!(
                st,
                Status::BuildFailure {
                    exit_code: 1,
                    signal: None,
                    stopped: Some(
                        "fake job 42 waited 1h00m in the queue (Priority), never started".into()
                    )
                },
                "{log}"
            );
            assert_eq!(fake.times("cancel plain"), [S(3600)], "{log}");
            assert!(fake.times("cancel graceful").is_empty(), "{log}");
            assert!(
                log.contains("fake job 42 waited 1h00m in the queue (Priority), never started: the CI job's time is up, removing it from the queue"),
                "{log}"
            );
            assert!(log.contains("fake job 42 left the queue after"), "{log}");
            // A job that started before the CI end is left to finish (the runner's timeout
            // and our backstop stop it otherwise).
            let fake = Fake::new(|c| match polls(c) {
                0..=1 => pending(),
                2..=9 => running(),
                _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
            });
            let (st, log) =
                run_ci(&fake, "command_delay = \"10s\"", None, Some(S(40)), vec![]).await;
            assert_eq!(st, Status::Success, "{log}");
            assert!(fake.times("cancel plain").is_empty(), "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn infrastructure_failures_are_system_failures_and_may_be_resubmitted() {
            // Every submission: running at the first poll, NODE_FAIL at the second.
            let node_fail = |c: &Calls| {
                let since_submit = c
                    .iter()
                    .rev()
                    .take_while(|(_, w)| w != "submit")
                    .filter(|(_, w)| w == "state")
                    .count();
                let submits = c.iter().filter(|(_, w)| w == "submit").count();
                match (since_submit, submits) {
                    (0, _) => running(),
                    (_, 3) => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
                    _ => Ok(JobState::Finished(Final::ended(
                        "NODE_FAIL",
                        0,
                        None,
                        Some("NodeDown".into()),
                    ))),
                }
            };
            // Off by default: one submission, a system failure with the explicit message.
            let fake = Fake::new(node_fail);
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            let Status::SystemFailure { message, .. } = st else {
                panic!("{st:?}\n{log}")
            };
            assert_eq!(
                message,
                "fake job 42 ended NODE_FAIL (NodeDown): a node of the job failed (a system failure)"
            );
            assert!(log.contains(&message), "{log}");
            assert_eq!(fake.times("submit").len(), 1);
            // With a budget of 2: the third submission completes.
            let fake = Fake::new(node_fail);
            let (st, log) = run(
                &fake,
                "command_delay = \"10s\"\nresubmit_limit = 2",
                None,
                vec![],
            )
            .await;
            assert_eq!(st, Status::Success, "{log}");
            assert_eq!(fake.times("submit").len(), 3, "{log}");
            assert!(
                log.contains("Resubmitting the job (1 of resubmit_limit 2)"),
                "{log}"
            );
            assert!(
                log.contains("Resubmitting the job (2 of resubmit_limit 2)"),
                "{log}"
            );
            // A budget of 1 is spent: the second NODE_FAIL is the system failure.
            let fake = Fake::new(node_fail);
            let (st, _) = run(
                &fake,
                "command_delay = \"10s\"\nresubmit_limit = 1",
                None,
                vec![],
            )
            .await;
            assert!(matches!(st, Status::SystemFailure { .. }), "{st:?}");
            assert_eq!(fake.times("submit").len(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn a_running_job_gets_the_plain_cancel_at_kill_timeout() {
            // The job's traps outlive the TERM: only the plain cancel ends it.
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    running()
                }
            });
            let term = Request::Terminate {
                signal: Signal::SIGTERM,
                reason: Reason::Signal(Signal::SIGTERM),
            };
            let (st, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(100), term)]).await;
            let Status::BuildFailure { stopped, .. } = st else {
                panic!("{st:?}\n{log}")
            };
            assert_eq!(stopped.as_deref(), Some("received SIGTERM"));
            assert_eq!(fake.times("cancel graceful"), [S(100)]);
            let plain = fake.times("cancel plain");
            assert_eq!(plain, [S(130)], "{:?}", fake.calls());
            // Polled while waiting for it to go, never faster than MIN_POLL.
            let during: Vec<Duration> = fake
                .times("state")
                .into_iter()
                .filter(|t| *t > S(100))
                .collect();
            assert!(during.len() >= 2, "{during:?}");
            for w in during.windows(2) {
                assert!(w[1] - w[0] >= MIN_POLL, "{during:?}");
            }
            assert!(
                log.contains("still there after kill_timeout 30s: cancelling it"),
                "{log}"
            );
            // A second signal of ours escalates at once.
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    running()
                }
            });
            let int = Request::Terminate {
                signal: Signal::SIGINT,
                reason: Reason::Signal(Signal::SIGINT),
            };
            let (_, log) = run(
                &fake,
                "command_delay = \"5s\"",
                None,
                vec![(S(100), term), (S(105), int)],
            )
            .await;
            assert_eq!(fake.times("cancel plain"), [S(105)], "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn the_backstop_cancels_at_the_deadline() {
            let fake = Fake::new(|c| {
                if sent(c, "cancel plain") {
                    cancelled()
                } else {
                    running()
                }
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", Some(S(3600)), vec![]).await;
            let Status::BuildFailure { stopped, .. } = st else {
                panic!("{st:?}\n{log}")
            };
            assert_eq!(
                stopped.as_deref(),
                Some("job exceeded its maximum duration")
            );
            assert_eq!(fake.times("cancel graceful"), [S(3600)]);
            assert_eq!(fake.times("cancel plain"), [S(3630)]);
            // Heartbeats while it ran.
            assert!(log.contains("fake job 42 RUNNING, running for 5m"), "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_transient_status_error_is_retried_with_backoff() {
            let fake = Fake::new(|c| match polls(c) {
                0 => running(),
                1..=3 => Err(BatchError::Transient {
                    command: "scontrol".into(),
                    message: "Socket timed out".into(),
                }),
                4 => running(),
                _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            assert_eq!(st, Status::Success, "{log}");
            let t = fake.times("state");
            // Backoff after the 1st, 2nd, 3rd failure: 20 s, 40 s, then the 60 s cap.
            let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
            assert_eq!(gaps[1..4], [S(20), S(40), S(60)], "{t:?}");
            assert_eq!(
                log.matches("scheduler command failed, retrying").count(),
                1,
                "{log}"
            );
            assert!(
                log.contains("scheduler answering again after 2m00s"),
                "{log}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn transient_errors_past_the_window_are_a_system_failure() {
            // The controller goes away after the first poll and never comes back; the
            // messages vary as it does.
            let fake = Fake::new(|c| match polls(c) {
                0 => running(),
                n => Err(BatchError::Transient {
                    command: "squeue --me".into(),
                    message: if n % 2 == 0 {
                        "Socket timed out".into()
                    } else {
                        "Unable to contact slurm controller".into()
                    },
                }),
            });
            let batch = "command_delay = \"10s\"\ntransient_retry_window = \"3m\"";
            let (st, log) = run(&fake, batch, None, vec![]).await;
            let Status::SystemFailure { message, .. } = st else {
                panic!("{st:?}\n{log}")
            };
            assert!(message.contains("fake failing for 3m"), "{message}");
            assert!(
                message.contains("squeue --me failed (transient)"),
                "{message}"
            );
            assert_eq!(
                log.matches("scheduler command failed").count(),
                1,
                "one line when it starts failing: {log}"
            );
            assert!(
                log.contains("retrying with backoff for up to 3m00s (transient_retry_window)"),
                "{log}"
            );
            // Not before the window: the last poll is at or after 3 minutes of failures.
            let t = fake.times("state");
            assert!(t[t.len() - 1] - t[1] >= S(180), "{t:?}");
            assert!(t[t.len() - 1] - t[1] < S(180 + 61), "{t:?}");
            // Inside the window nothing fails: the default window is ten minutes.
            let fake = Fake::new(|c| match polls(c) {
                0 => running(),
                1..=9 => Err(BatchError::Transient {
                    command: "squeue --me".into(),
                    message: "Socket timed out".into(),
                }),
                _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            assert_eq!(st, Status::Success, "{log}");
            let t = fake.times("state");
            // 20 s, 40 s, then 60 s apart: eight minutes of failures.
            assert!(t[t.len() - 1] - t[1] >= S(8 * 60), "{t:?}");
            assert_eq!(log.matches("scheduler answering again").count(), 1, "{log}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_job_that_vanished_from_the_queue_is_lost() {
            let fake = Fake::new(|c| {
                if polls(c) < 2 {
                    running()
                } else {
                    Ok(JobState::Unknown)
                }
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            let Status::SystemFailure { message, .. } = st else {
                panic!("{st:?}\n{log}")
            };
            assert!(
                message
                    .contains("lost track of fake job 42: fake has no record of it after 5 polls"),
                "{message}"
            );
            assert_eq!(fake.times("state").len(), 2 + UNKNOWN_LIMIT as usize);
            assert!(fake.times("cancel plain").is_empty());
        }

        #[tokio::test(start_paused = true)]
        async fn final_states_map_to_the_stage_status() {
            let end = |f: Final| {
                let fake = Fake::new(move |c| {
                    if polls(c) < 1 {
                        running()
                    } else {
                        Ok(JobState::Finished(f.clone()))
                    }
                });
                async move { run(&fake, "command_delay = \"10s\"", None, vec![]).await }
            };
            let (st, _) = end(Final::exited("FAILED", 7)).await;
            assert_eq!(
                st,
                Status::BuildFailure {
                    exit_code: 7,
                    signal: None,
                    stopped: None
                }
            );
            let (st, log) = end(Final::ended(
                "TIMEOUT",
                0,
                Some(15),
                Some("TimeLimit".into()),
            ))
            .await;
            let timeout = "fake job 42 ended TIMEOUT (TimeLimit): it reached the time limit it asked for; ask for more (e.g. --time in SCHEDULER_PARAMETERS)";
            assert_eq!(
                st,
                Status::BuildFailure {
                    exit_code: 143,
                    signal: None,
                    stopped: Some(timeout.into())
                }
            );
            assert!(log.contains(&format!("{timeout} (exit code 143)")), "{log}");
            let (st, log) = end(Final::ended("NODE_FAIL", 0, None, None)).await;
            assert!(matches!(st, Status::SystemFailure { .. }), "{st:?}\n{log}");
            // Slurm's 0:0 of a node failure is not shown as the job's exit code.
            assert!(!log.contains("(exit code"), "{log}");
            let (st, log) = end(Final::ended("CANCELLED", 0, Some(15), None)).await;
            assert!(
                matches!(&st, Status::BuildFailure { exit_code: 143, stopped: Some(s), .. } if s.contains("cancelled outside this CI job")),
                "{st:?}\n{log}"
            );
            // DEADLINE of a job that never ran: the never-started message.
            let fake = Fake::new(|c| {
                if polls(c) < 3 {
                    pending()
                } else {
                    Ok(JobState::Finished(Final::ended(
                        "DEADLINE",
                        0,
                        None,
                        Some("DeadLine".into()),
                    )))
                }
            });
            let (st, log) = run(&fake, "command_delay = \"10s\"", None, vec![]).await;
            assert!(
                matches!(&st, Status::BuildFailure { exit_code: 1, stopped: Some(s), .. }
                    if s == "fake job 42: waited 40s in the queue (Resources), never started (the scheduler removed it at the CI job's deadline)"),
                "{st:?}\n{log}"
            );
        }
    }
}
