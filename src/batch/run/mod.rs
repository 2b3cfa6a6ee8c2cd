//! The state machine of one batch job, `BatchRun`:
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
//! Its steps, each in its own file: `submit.rs` (the submission prepared, submitted,
//! recorded), `wait.rs` (the waiting loop and its polls), `cancel.rs` (cancelling, removing
//! a job that never started, and `cleanup`'s cancel), `log.rs` (the job log and the tails of
//! the job's output into it). The unit tests run the machine on tokio's paused clock against
//! an in-memory scheduler (`tests.rs`).
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

mod alloc;
mod cancel;
mod log;
mod submit;
mod wait;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::Client;
use super::outcome::{self, Verdict};
use super::persist::Record;
use super::poller::Poller;
use super::scheduler::{Scheduler, Submission};
use super::tail::{self, Tail, TailTiming};
use super::{args, Commands, Final, JobState};
use crate::config::Config;
use crate::protocol::Status;
use crate::supervisor::{Reason, Request};

pub use cancel::{cleanup_job, Shared};
pub use submit::RunError;

use log::{Log, Tails};
use wait::{Ended, Watch};

/// The shortest interval between two status polls (when `command_delay` is smaller).
pub const MIN_POLL: Duration = Duration::from_millis(250);
/// Heartbeat while the job runs (while it is queued: `[batch] queue_heartbeat`).
pub const HEARTBEAT_RUNNING: Duration = Duration::from_secs(300);
/// After the plain cancel, how long to wait for the job to leave the queue.
pub const CONFIRM_BOUND: Duration = Duration::from_secs(60);
/// Polls for a job the scheduler does not know (yet) before we call it lost.
const UNKNOWN_LIMIT: u32 = 5;

/// Cancellation requests of one run: the control pipe's and our own signals'. A closed
/// channel means `jacamar-auth` went away.
pub type Requests = mpsc::UnboundedReceiver<Request>;

/// What a batch run is given: one submitted stage of one CI job.
pub struct BatchJob<'a> {
    pub config: &'a Config,
    pub scheduler: &'a dyn Scheduler,
    /// The job's scripts dir: the record, the wrapper script and the output live here.
    pub scripts_dir: PathBuf,
    pub stage: &'a str,
    /// The wrapper script already written (see [`Scheduler::wrapper`]).
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
    /// The user's base dir: a pipeline's shared allocation is found there
    /// (`.jacamar-alloc`, see [`super::alloc`]).
    pub base_dir: PathBuf,
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

/// Submit and supervise one batch job; cancellation comes from `requests` (control pipe
/// and our own signals). Returns the stage's status; never panics on scheduler answers.
pub async fn run(job: BatchJob<'_>, requests: &mut Requests) -> Status {
    let log = Log::to(tokio::io::stdout());
    let cmds = commands(job.config, job.env.clone(), job.workdir.clone());
    let st = BatchRun::start(&job, cmds, &log, tail::spawn)
        .drive(requests)
        .await;
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

/// One batch job under way: what every step of the machine shares.
pub(crate) struct BatchRun<'a> {
    job: &'a BatchJob<'a>,
    config: &'a Config,
    /// The job's scheduler commands (see [`BatchRun::client`]).
    cmds: Commands,
    /// The job log (our lines and the job's output).
    log: &'a Log,
    /// The job's record of scheduler job ids (for `cleanup`).
    record: Record,
    spawn_tail: SpawnTail,
}

impl<'a> BatchRun<'a> {
    /// A run of `job` through `cmds`, logging to `log` (the commands tell their stalls
    /// there too), its output tailed by `spawn_tail`.
    pub(crate) fn start(
        job: &'a BatchJob<'a>,
        mut cmds: Commands,
        log: &'a Log,
        spawn_tail: SpawnTail,
    ) -> BatchRun<'a> {
        cmds.notify_to(log.sender());
        BatchRun {
            job,
            config: job.config,
            cmds,
            log,
            record: Record::in_dir(&job.scripts_dir),
            spawn_tail,
        }
    }

    /// The job's scheduler, through the job's commands.
    fn client(&self) -> Client<'_> {
        Client::new(self.job.scheduler, &self.cmds)
    }

    fn name(&self) -> &'static str {
        self.job.scheduler.name()
    }

    /// The whole life of one batch job: prepare, submit, wait (or cancel), drain the output,
    /// and the stage's status; a job the infrastructure ended is submitted again up to
    /// `[batch] resubmit_limit` times, with a line in the log each time.
    pub(crate) async fn drive(&self, requests: &mut Requests) -> Status {
        match self.submit_and_supervise(requests).await {
            Ok(st) => st,
            Err(e) => {
                if let Some(line) = e.log_line() {
                    self.log.say(line).await;
                }
                e.status()
            }
        }
    }

    async fn submit_and_supervise(&self, requests: &mut Requests) -> Result<Status, RunError> {
        let (sub, source) = self.prepare()?;
        if let Some((pipeline, steps)) = self.reuse().await {
            match super::alloc::AllocDir::open(&self.job.base_dir) {
                Ok(dir) => {
                    return self
                        .in_allocation(&dir, &sub, source.as_deref(), &pipeline, steps, requests)
                        .await
                }
                Err(e) => {
                    let e = crate::text::sanitize(&e.to_string()).into_owned();
                    self.log
                        .say(format!("WARNING: {e}; this job runs as its own batch job"))
                        .await;
                }
            }
        }
        let limit = self.config.batch.resubmit_limit;
        let mut resubmits = 0;
        loop {
            let id = self.submit(&sub, requests).await?;
            let v = self.supervise(&sub, source.as_deref(), &id, requests).await;
            if !v.resubmit || resubmits >= limit {
                return Ok(v.status);
            }
            resubmits += 1;
            self.log
                .say(format!(
                    "Resubmitting the job ({resubmits} of resubmit_limit {limit}) after {} job {id} ended as above",
                    self.name()
                ))
                .await;
            self.remove_stale(&sub)?;
        }
    }

    /// Supervise the submitted job `id` to its end: wait (or cancel), drain the output, and
    /// the stage's status with whether a resubmission may help.
    async fn supervise(
        &self,
        sub: &Submission,
        source: Option<&str>,
        id: &str,
        requests: &mut Requests,
    ) -> Verdict {
        let from = arguments_from(source);
        self.log
            .say(format!(
                "Submitted {} job {id} ({}{from}); output: {}",
                self.name(),
                sub.name,
                sub.output.display()
            ))
            .await;
        let nfs_timeout = self.config.batch.nfs_timeout;
        let tails = Tails::start(self.spawn_tail, sub, id, nfs_timeout, self.log);
        let mut watch = Watch::new();
        let (fin, stopped) = match self.wait(sub, id, &mut watch, requests).await {
            Ended::Finished(f) => (Some(f), None),
            Ended::Lost(why) => {
                tails.stop_now().await;
                return self.lost(id, &why).await;
            }
            Ended::NeverStarted => return self.never_started(id, &watch, tails).await,
            // Only a watch made to stop there ends so (a shared allocation's).
            Ended::Started => {
                tails.stop_now().await;
                return self.lost(id, "the wait ended when it started").await;
            }
            Ended::Cancel(first) => {
                let why = reason_of(&first);
                let fin = self.cancel_for(id, first, &mut watch, requests).await;
                (fin, Some(why))
            }
        };
        tails.drain(nfs_timeout, self.log).await;
        // Files the job left (PBS's exit code, Cobalt's log) say more than the scheduler.
        let fin = fin.map(|f| self.job.scheduler.final_from_files(sub, id).unwrap_or(f));
        if fin.is_some() {
            self.log.warn_if(self.record.finished(id)).await;
        }
        self.verdict(id, fin.as_ref(), stopped, &watch).await
    }

    /// The job vanished from the scheduler (or the scheduler from us): a system failure.
    async fn lost(&self, id: &str, why: &str) -> Verdict {
        let message = format!(
            "lost track of {} job {id}: {why}; cleanup will cancel it if it is still queued",
            self.name()
        );
        self.log.say(format!("ERROR: {message}")).await;
        Verdict::of(outcome::system_failure(message))
    }

    /// Still queued at the CI job's end: removed from the queue, a build failure.
    async fn never_started(&self, id: &str, watch: &Watch, tails: Tails) -> Verdict {
        let (name, msg) = (self.name(), watch.never_started());
        self.log
            .say(format!(
                "{name} job {id} {msg}: the CI job's time is up, removing it from the queue"
            ))
            .await;
        let fin = self.remove_queued(id).await;
        tails.drain(self.config.batch.nfs_timeout, self.log).await;
        if fin.is_none() {
            return self.verdict(id, None, Some(Reason::Backstop), watch).await;
        }
        self.log.warn_if(self.record.finished(id)).await;
        Verdict::of(outcome::failed(Some(format!("{name} job {id} {msg}"))))
    }

    /// The verdict on job `id` (see [`outcome::verdict`]), its line said in the log.
    async fn verdict(
        &self,
        id: &str,
        fin: Option<&Final>,
        stopped: Option<Reason>,
        watch: &Watch,
    ) -> Verdict {
        let v = outcome::verdict(fin, stopped, &watch.seen(self.name(), id));
        if let Some(line) = &v.line {
            self.log.say(line).await;
        }
        v
    }

    /// Cancel job `id` for the request `first`; `watch` as of the last poll. Returns its
    /// final state if it was confirmed gone.
    async fn cancel_for(
        &self,
        id: &str,
        first: Request,
        watch: &mut Watch,
        requests: &mut Requests,
    ) -> Option<Final> {
        // Queued as of the last poll: ask once more, it may have started since.
        if watch.queued() {
            if let Ok(st @ JobState::Running { .. }) = self.client().state(id).await {
                watch.saw(&st);
                watch.last = Some(st);
            }
        }
        let queued = watch.queued();
        if queued {
            self.log
                .say(format!(
                    "{} job {id} never started ({})",
                    self.name(),
                    watch.never_started()
                ))
                .await;
        }
        self.cancel(id, first, queued, requests).await
    }

    /// The interval of the confirmation polls after a cancel: `command_delay`, between
    /// [`MIN_POLL`] and a second.
    fn confirm_step(&self) -> Duration {
        confirm_step(self.config)
    }
}

/// `, arguments from SCHEDULER_PARAMETERS` for the submission line, when the user gave any.
fn arguments_from(source: Option<&str>) -> String {
    source
        .map(|s| format!(", arguments from {s}"))
        .unwrap_or_default()
}

/// Why `r` asks the job to stop.
fn reason_of(r: &Request) -> Reason {
    match *r {
        Request::Terminate { reason, .. } | Request::Kill { reason } => reason,
    }
}

/// [`BatchRun::confirm_step`] of `config`.
fn confirm_step(config: &Config) -> Duration {
    config
        .batch
        .command_delay
        .clamp(MIN_POLL, Duration::from_secs(1))
}
