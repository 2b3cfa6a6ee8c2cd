//! The state machine of one batch job:
//!
//! ```text
//!  submit ──▶ waiting (poll every command_delay, state changes + heartbeat in the log)
//!    │            │ running: output tailed live          │ TERM / parent gone / backstop
//!    │            ▼                                      ▼
//!    │        finished ◀──── confirmed gone ◀── cancelling (signal TERM, plain cancel
//!    │            │                                       after kill_timeout or KILL)
//!    ▼            ▼
//!  refused    drain output (nfs_timeout) ──▶ Status (exit code, reason)
//! ```
//!
//! Every scheduler command goes through the job's [`Commands`] (one rate limiter). Errors
//! of a poll are retried with backoff for [`TRANSIENT_WINDOW`] and reported in the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::persist::Record;
use super::tail::{self, TailTiming};
use super::{args, BatchError, Commands, Final, JobState, Scheduler, Submission};
use crate::config::Config;
use crate::protocol::Status;
use crate::supervisor::{Reason, Request};

/// How long poll errors are retried before the stage is given up as a system failure.
pub const TRANSIENT_WINDOW: Duration = Duration::from_secs(300);
/// The shortest interval between two status polls (when `command_delay` is smaller).
pub const MIN_POLL: Duration = Duration::from_millis(250);
/// Heartbeat while the job waits in the queue, and while it runs.
pub const HEARTBEAT_QUEUED: Duration = Duration::from_secs(60);
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
}

/// The output file of `stage` in the scripts dir.
pub fn output_path(scripts_dir: &Path, stage: &str) -> PathBuf {
    scripts_dir.join(format!("{stage}.out"))
}

/// The job log: one writer task, so our messages and the job's lines never interleave
/// inside a line.
struct Log {
    tx: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Log {
    fn start() -> Log {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
        let writer = tokio::spawn(async move {
            let mut out = tokio::io::stdout();
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

    async fn close(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }
}

fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Poll-error bookkeeping: backoff and the transient window.
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

    /// Record a failure; returns the backoff before the next try, or None when the window
    /// is spent. Reports new messages to the log.
    async fn failed(&mut self, e: &BatchError, base: Duration, log: &Log) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        let msg = e.to_string();
        if self.last_message.as_deref() != Some(msg.as_str()) {
            log.say(format!(
                "scheduler command failed, retrying for up to {}: {msg}",
                fmt_dur(TRANSIENT_WINDOW)
            ))
            .await;
            self.last_message = Some(msg);
        }
        if since.elapsed() >= TRANSIENT_WINDOW || matches!(e, BatchError::Spawn { .. }) {
            return None;
        }
        let back = base.max(MIN_POLL) * 2u32.saturating_pow(self.attempts.min(8));
        Some(back.min(Duration::from_secs(60)))
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

/// Why the waiting loop ended.
enum Ended {
    Finished(Final),
    Cancel(Request),
    Backstop,
    Lost(String),
}

/// Submit and supervise one batch job; cancellation comes from `requests` (control pipe
/// and our own signals). Returns the stage's status; never panics on scheduler answers.
pub async fn run_batch(
    job: BatchJob<'_>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Status {
    let log = Log::start();
    let st = drive(&job, requests, &log).await;
    log.close().await;
    st
}

async fn drive(
    job: &BatchJob<'_>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Status {
    let sched = job.scheduler;
    let name = sched.name();
    let b = &job.config.batch;
    let (sched_args, source) = match args::build(job.config, job.variables, sched.illegal_args()) {
        Ok(a) => a,
        Err(e) => {
            log.say(format!("ERROR: {e}")).await;
            return Status::BuildFailure {
                exit_code: 1,
                signal: None,
                stopped: None,
            };
        }
    };
    let env = with_env_vars(job.env.clone(), &b.env_vars);
    let cmds = Commands::new(
        b.command_delay,
        b.scheduler_bin.as_deref(),
        env,
        job.workdir.clone(),
    );
    let output = output_path(&job.scripts_dir, job.stage);
    let error = sched.error_file(&output);
    for stale in std::iter::once(&output).chain(error.as_ref()) {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Status::SystemFailure {
                    message: format!(
                        "failed to remove the stale output file {}: {e}",
                        stale.display()
                    ),
                }
            }
        }
    }
    let sub = Submission {
        script: job.script.clone(),
        output: output.clone(),
        error: error.clone(),
        workdir: job.workdir.clone(),
        name: args::job_name(job.ci_job_id, job.variables, b.disable_name_prefix),
        args: sched_args,
    };
    let record = Record::in_dir(&job.scripts_dir);
    if let Err(e) = record.submitting(name, &sub.name) {
        return Status::SystemFailure {
            message: e.to_string(),
        };
    }

    // Submit (a transient failure is retried; the answer of a refused one goes to the log).
    let mut retry = Retry::new();
    let id = loop {
        match sched.submit(&cmds, &sub).await {
            Ok(id) => break id,
            Err(e) if e.is_transient() => match retry.failed(&e, b.command_delay, log).await {
                Some(back) => {
                    tokio::select! {
                        _ = tokio::time::sleep(back) => continue,
                        Some(r) = requests.recv() => {
                            log.say(format!("{name}: not submitted: {}", reason_of(&r))).await;
                            return Status::BuildFailure { exit_code: 1, signal: None, stopped: Some(reason_of(&r).to_string()) };
                        }
                    }
                }
                None => {
                    return Status::SystemFailure {
                        message: format!("failed to submit to {name}: {e}"),
                    }
                }
            },
            Err(e @ BatchError::Spawn { .. }) => {
                return Status::SystemFailure {
                    message: format!("failed to submit to {name}: {e}"),
                }
            }
            Err(e) => {
                log.say(format!("ERROR: {name} refused the job: {e}")).await;
                return Status::BuildFailure {
                    exit_code: 1,
                    signal: None,
                    stopped: None,
                };
            }
        }
    };
    if let Err(e) = record.submitted(name, &id) {
        // We cannot promise cleanup will find it: cancel now rather than leave an orphan.
        let _ = sched.cancel(&cmds, &id, false).await;
        return Status::SystemFailure {
            message: e.to_string(),
        };
    }
    let from = source
        .map(|s| format!(", arguments from {s}"))
        .unwrap_or_default();
    log.say(format!(
        "Submitted {name} job {id} ({}{from}); output: {}",
        sub.name,
        output.display()
    ))
    .await;

    let tail = tail::spawn(
        output.clone(),
        TailTiming::new(b.nfs_timeout),
        log.tx.clone(),
    );
    let err_tail = error
        .clone()
        .map(|e| tail::spawn(e, TailTiming::new(b.nfs_timeout), log.tx.clone()));
    let ended = wait(job, &cmds, &sub, &id, requests, log).await;
    let (fin, stopped) = match ended {
        Ended::Finished(f) => (Some(f), None),
        Ended::Lost(why) => {
            tail.stop_now();
            tail.finish().await;
            if let Some(t) = err_tail {
                t.stop_now();
                t.finish().await;
            }
            return Status::SystemFailure { message: format!("lost track of {name} job {id}: {why}; cleanup will cancel it if it is still queued") };
        }
        Ended::Cancel(first) => {
            let why = reason_of(&first);
            (
                cancel(job, &cmds, &id, first, requests, log).await,
                Some(why),
            )
        }
        Ended::Backstop => {
            let first = Request::Terminate {
                signal: nix::sys::signal::Signal::SIGTERM,
                reason: Reason::Backstop,
            };
            (
                cancel(job, &cmds, &id, first, requests, log).await,
                Some(Reason::Backstop),
            )
        }
    };
    tail.job_over();
    if let Some(t) = &err_tail {
        t.job_over();
    }
    let report = tail.finish().await;
    if let Some(t) = err_tail {
        let r = t.finish().await;
        if r.never_appeared {
            log.say(format!(
                "WARNING: the error file {} never appeared (waited nfs_timeout {})",
                error.as_deref().unwrap_or(Path::new("")).display(),
                fmt_dur(b.nfs_timeout)
            ))
            .await;
        }
    }
    if report.never_appeared {
        log.say(format!(
            "WARNING: the output file {} never appeared (waited nfs_timeout {})",
            output.display(),
            fmt_dur(b.nfs_timeout)
        ))
        .await;
    } else if report.missing_at_end {
        log.say(format!(
            "WARNING: the output file {} was moved away and did not come back within nfs_timeout",
            output.display()
        ))
        .await;
    }
    // Files the job left (PBS's exit code, Cobalt's log) say more than the scheduler.
    let fin = fin.map(|f| sched.final_from_files(&sub, &id).unwrap_or(f));
    if fin.is_some() {
        let _ = record.finished(&id);
    }
    status_of(name, &id, fin, stopped, log).await
}

/// The job's environment with `[batch] env_vars` on top: every scheduler command (submit,
/// polls, cancels, and cleanup's) sees the same.
fn with_env_vars(
    mut env: Vec<(String, String)>,
    vars: &[(String, String)],
) -> Vec<(String, String)> {
    for (k, v) in vars {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

fn reason_of(r: &Request) -> Reason {
    match *r {
        Request::Terminate { reason, .. } | Request::Kill { reason } => reason,
    }
}

async fn status_of(
    name: &str,
    id: &str,
    fin: Option<Final>,
    stopped: Option<Reason>,
    log: &Log,
) -> Status {
    let Some(f) = fin else {
        let why = stopped
            .map(|r| r.to_string())
            .unwrap_or_else(|| "cancel".into());
        log.say(format!("ERROR: {name} job {id} could not be confirmed gone after the cancel ({why}); cleanup will retry")).await;
        return Status::BuildFailure {
            exit_code: 1,
            signal: None,
            stopped: Some(why),
        };
    };
    if f.success() && stopped.is_none() {
        return Status::Success;
    }
    // A job we stopped failed, even if its trap exited 0.
    let code = match f.build_exit_code() {
        0 => 1,
        c => c,
    };
    let reason = f
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let sig = f
        .signal
        .map(|s| format!(", signal {s}"))
        .unwrap_or_default();
    if !f.normal_end || stopped.is_some() {
        log.say(format!(
            "{name} job {id} ended {}{reason}, exit code {}{sig}",
            f.state, f.exit_code
        ))
        .await;
    }
    Status::BuildFailure {
        exit_code: code,
        signal: None,
        stopped: match (stopped, f.normal_end) {
            (Some(r), _) => Some(r.to_string()),
            (None, false) => Some(format!("{name} job {id} ended {}{reason}", f.state)),
            (None, true) => None,
        },
    }
}

/// Wait for the job to finish, reporting queue states; returns early on a request.
async fn wait(
    job: &BatchJob<'_>,
    cmds: &Commands,
    sub: &Submission,
    id: &str,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Ended {
    let name = job.scheduler.name();
    let delay = job.config.batch.command_delay.max(MIN_POLL);
    let start = Instant::now();
    let mut next_poll = start + delay;
    let mut last: Option<JobState> = None;
    let mut next_beat = start + HEARTBEAT_QUEUED;
    let mut unknown = 0;
    let mut retry = Retry::new();
    let far = start + Duration::from_secs(100 * 365 * 86400);
    loop {
        tokio::select! {
            r = requests.recv() => match r {
                Some(r) => return Ended::Cancel(r),
                None => return Ended::Cancel(Request::Terminate { signal: nix::sys::signal::Signal::SIGTERM, reason: Reason::ParentGone }),
            },
            _ = sleep_until(job.deadline.unwrap_or(far)) => return Ended::Backstop,
            _ = sleep_until(next_beat) => {
                let what = last.as_ref().map(JobState::describe).unwrap_or_else(|| "submitted".into());
                let verb = if matches!(last, Some(JobState::Running { .. })) { "running for" } else { "waiting" };
                log.say(format!("{name} job {id} {what}, {verb} {}", fmt_dur(start.elapsed()))).await;
                next_beat = Instant::now() + if matches!(last, Some(JobState::Running { .. })) { HEARTBEAT_RUNNING } else { HEARTBEAT_QUEUED };
            }
            _ = sleep_until(next_poll) => {
                match job.scheduler.state(cmds, id).await {
                    Ok(st) => {
                        retry.ok(log).await;
                        next_poll = Instant::now() + delay;
                        match &st {
                            JobState::Finished(f) => return Ended::Finished(f.clone()),
                            JobState::Unknown => {
                                if let Some(f) = job.scheduler.final_from_files(sub, id) {
                                    return Ended::Finished(f);
                                }
                                unknown += 1;
                                if unknown >= UNKNOWN_LIMIT {
                                    return Ended::Lost(format!("{name} has no record of it after {unknown} polls"));
                                }
                                continue;
                            }
                            _ => unknown = 0,
                        }
                        let changed = last.as_ref().map(|l| l.describe() != st.describe()).unwrap_or(true);
                        if changed {
                            log.say(format!("{name} job {id} {}", st.describe())).await;
                            next_beat = Instant::now() + if matches!(st, JobState::Running { .. }) { HEARTBEAT_RUNNING } else { HEARTBEAT_QUEUED };
                        }
                        last = Some(st);
                    }
                    Err(e) => match retry.failed(&e, delay, log).await {
                        Some(back) => next_poll = Instant::now() + back,
                        None => return Ended::Lost(e.to_string()),
                    },
                }
            }
        }
    }
}

/// Cancel the job: the graceful form first (unless `first` is a kill), the plain cancel
/// after kill_timeout or on a second request, then confirm it left the queue. Returns the
/// final state if confirmed.
async fn cancel(
    job: &BatchJob<'_>,
    cmds: &Commands,
    id: &str,
    first: Request,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    log: &Log,
) -> Option<Final> {
    let sched = job.scheduler;
    let name = sched.name();
    let kill_timeout = job.config.general.kill_timeout;
    let first_reason = reason_of(&first);
    let mut forced = matches!(first, Request::Kill { .. }) || kill_timeout.is_zero();
    log.say(format!(
        "Cancelling {name} job {id} ({}){}",
        reason_of(&first),
        if forced {
            ""
        } else {
            ": asking the job to stop (SIGTERM)"
        }
    ))
    .await;
    if let Err(e) = sched.cancel(cmds, id, !forced).await {
        log.say(format!("WARNING: {e}")).await;
    }
    let start = Instant::now();
    let escalate_at = start + kill_timeout;
    let mut give_up = if forced {
        Some(Instant::now() + CONFIRM_BOUND)
    } else {
        None
    };
    let step = job
        .config
        .batch
        .command_delay
        .clamp(MIN_POLL, Duration::from_secs(1));
    let mut next_poll = Instant::now() + MIN_POLL;
    let mut requests_open = true;
    let far = start + Duration::from_secs(100 * 365 * 86400);
    loop {
        let escalate = async {
            if forced {
                std::future::pending::<()>().await
            } else {
                sleep_until(escalate_at).await
            }
        };
        tokio::select! {
            r = requests.recv(), if requests_open => {
                let Some(r) = r else { requests_open = false; continue; };
                // Our own backstop and the parent's (or a repeated cancel) are one request.
                if !forced && crate::supervisor::escalates_now(first_reason, &r) {
                    forced = true;
                    log.say(format!("Cancelling {name} job {id} now (second request)")).await;
                    if let Err(e) = sched.cancel(cmds, id, false).await { log.say(format!("WARNING: {e}")).await; }
                    give_up = Some(Instant::now() + CONFIRM_BOUND);
                }
            }
            _ = escalate => {
                forced = true;
                log.say(format!("{name} job {id} still there after kill_timeout {}: cancelling it", fmt_dur(kill_timeout))).await;
                if let Err(e) = sched.cancel(cmds, id, false).await { log.say(format!("WARNING: {e}")).await; }
                give_up = Some(Instant::now() + CONFIRM_BOUND);
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
    let b = &config.batch;
    let record = Record::in_dir(scripts_dir);
    let jobs = match record.read() {
        Ok(j) => j,
        Err(e) => return vec![e.to_string()],
    };
    let env = with_env_vars(env, &b.env_vars);
    let cmds = Commands::new(b.command_delay, b.scheduler_bin.as_deref(), env, workdir);
    let name = scheduler.name();
    let mut problems = Vec::new();
    for j in jobs.iter().filter(|j| !j.done) {
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
        println!(
            "cleanup: cancelling {name} job {} (still {})",
            j.id,
            st.describe()
        );
        if let Err(e) = scheduler.cancel(&cmds, &j.id, false).await {
            problems.push(e.to_string());
            continue;
        }
        let until = Instant::now() + CONFIRM_BOUND;
        let step = b.command_delay.clamp(MIN_POLL, Duration::from_secs(1));
        loop {
            tokio::time::sleep(step).await;
            match scheduler.state(&cmds, &j.id).await {
                Ok(st) if !st.is_active() => {
                    println!("cleanup: {name} job {} is gone ({})", j.id, st.describe());
                    let _ = record.finished(&j.id);
                    break;
                }
                _ if Instant::now() >= until => {
                    problems.push(format!(
                        "{name} job {} still listed {} after the cancel",
                        j.id,
                        fmt_dur(CONFIRM_BOUND)
                    ));
                    break;
                }
                _ => {}
            }
        }
    }
    problems
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
                let log = Log::start();
                let s = status_of("slurm", "1", Some(f), stopped, &log).await;
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
}
