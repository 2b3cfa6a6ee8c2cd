//! Batch schedulers: one CI job's build script becomes one scheduler job.
//!
//! Only `build_script`/`step_script` is submitted; every other stage runs on the host with
//! the shell executor. The pieces, each in its own file:
//!
//! * [`args`]: the submission's arguments (user variables split with shell-word rules,
//!   `default_args`, `env_vars`) and each scheduler's refused arguments.
//! * [`limiter`]: one rate limiter per job for every scheduler command (`command_delay`);
//!   [`Commands`] runs them, directly (argv, never a shell).
//! * [`persist`]: the scheduler job id, written to the job's scripts dir the moment it is
//!   known; `cleanup` cancels what is still queued or running.
//! * [`tail`]: the polling, NFS-safe tailer of the job's output file.
//! * [`wrapper`]: the script submitted, which runs the stage and outlives a cancel's TERM
//!   until the job's traps are done.
//! * [`executor`]: the state machine of one batch job (submit, wait, tail, cancel, result).
//! * [`poller`]: one status query per user per `command_delay`, shared by every job of the
//!   user on the host through a snapshot in the user's base dir (docs/batch-polling.md).
//! * [`outcome`]: a finished job's final state classified: the user's build failure or
//!   the infrastructure's system failure, with the sentence for the log.
//! * One file per scheduler: [`slurm`], [`pbs`], [`flux`], [`lsf`], [`cobalt`].

pub mod args;
pub mod cobalt;
pub mod executor;
pub mod flux;
pub mod limiter;
pub mod lsf;
pub mod outcome;
pub mod pbs;
pub mod persist;
pub mod poller;
pub mod slurm;
pub mod tail;
pub mod wrapper;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use executor::{cleanup_job, run_batch, BatchJob};
pub use limiter::Commands;

use crate::config::Executor;

/// A boxed future: the [`Scheduler`] trait is used as `dyn Scheduler`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a finished job ended, as the scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Final {
    /// The scheduler's own word for the end state (`COMPLETED`, `TIMEOUT`, ...).
    pub state: String,
    /// The script's exit code, 128 + N for a death by signal N the scheduler reports
    /// without a code (see [`exit_code_of`]); 0 when it reports neither.
    pub exit_code: i32,
    /// The scheduler's reason, when it gives one (`TimeLimit`, `NonZeroExitCode`, ...).
    pub reason: Option<String>,
    /// True when the state is the scheduler's "ended normally" state (the exit code decides).
    pub normal_end: bool,
}

/// The exit code of a script that ended with `code` or by `signal`: the code, or 128 + the
/// signal when the code is 0 (as a shell reports a death by signal; saturated, for a
/// scheduler's answer that is no signal number).
pub fn exit_code_of(code: i32, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (0, Some(s)) => 128i32.saturating_add(s),
        (c, _) => c,
    }
}

impl Final {
    /// A job that ended on its own: success if the code is 0.
    pub fn exited(state: &str, exit_code: i32) -> Final {
        Final {
            state: state.to_string(),
            exit_code,
            reason: None,
            normal_end: true,
        }
    }

    /// A job the scheduler ended (time limit, cancel, node failure, ...): a failure, even
    /// with exit code 0.
    pub fn ended(state: &str, code: i32, signal: Option<i32>, reason: Option<String>) -> Final {
        Final {
            state: state.to_string(),
            exit_code: exit_code_of(code, signal),
            reason,
            normal_end: false,
        }
    }

    pub fn success(&self) -> bool {
        self.normal_end && self.exit_code == 0
    }
}

/// A scheduler's view of one submitted job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    /// Waiting in the queue (or held, suspended, requeued): `state` is the scheduler's word.
    Queued {
        state: String,
        reason: Option<String>,
        /// When the scheduler expects the job to start (Slurm's `squeue --start`), as the
        /// scheduler prints it; `None` when it does not say (or was not asked).
        expected_start: Option<String>,
    },
    /// Running (or finishing: the scheduler has not given the final word yet).
    Running { state: String },
    /// Over, with the final word.
    Finished(Final),
    /// The scheduler has no record of the job (yet, or any more).
    Unknown,
}

impl JobState {
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Queued { .. } | JobState::Running { .. })
    }

    /// A short text for the job log: `PENDING (Resources)`, with `, expected start T`
    /// when the scheduler gave one.
    pub fn describe(&self) -> String {
        match self {
            JobState::Queued {
                state,
                reason,
                expected_start,
            } => {
                let mut s = match reason {
                    Some(r) => format!("{state} ({r})"),
                    None => state.clone(),
                };
                if let Some(t) = expected_start {
                    s.push_str(&format!(", expected start {t}"));
                }
                s
            }
            JobState::Running { state } => state.clone(),
            JobState::Finished(f) => match &f.reason {
                Some(r) => format!("{} ({r})", f.state),
                None => f.state.clone(),
            },
            JobState::Unknown => "unknown to the scheduler".to_string(),
        }
    }
}

/// Failures talking to a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("failed to run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// The command ran and failed in a way that retrying may fix (controller restarting,
    /// timeouts, connection refused).
    #[error("{command} failed (transient): {message}")]
    Transient { command: String, message: String },
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    #[error("refusing scheduler argument {arg:?}: {why} (set allow_illegal_args in [batch] to permit it)")]
    IllegalArgument { arg: String, why: String },
    #[error("failed to split {variable}: {why}")]
    Split { variable: String, why: String },
    #[error("failed to read the scheduler's answer to {command}: {why}")]
    Parse { command: String, why: String },
    #[error("failed to record the scheduler job id in {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to prepare the batch job: {0}")]
    Setup(String),
}

impl BatchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BatchError::Transient { .. })
    }
}

/// What a submission needs: the script, where its output goes, its name and arguments.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The script to submit (with whatever header the scheduler needs).
    pub script: PathBuf,
    /// The output file the driver tails (stdout and stderr of the job).
    pub output: PathBuf,
    /// The scheduler's error file, when it keeps one apart (Cobalt).
    pub error: Option<PathBuf>,
    /// The job's working directory.
    pub workdir: PathBuf,
    /// The job's name.
    pub name: String,
    /// `default_args` followed by the user's arguments, already checked.
    pub args: Vec<String>,
}

/// Submit, query, cancel: what the batch executor needs of a scheduler.
///
/// Every command goes through `cmds` (and so through the job's rate limiter).
pub trait Scheduler: Send + Sync {
    /// The scheduler's name for the job log (`slurm`).
    fn name(&self) -> &'static str;
    /// Arguments the driver controls: refused in user arguments unless allowed.
    fn illegal_args(&self) -> &'static [args::Illegal];
    /// The script submitted: by default [`wrapper::wrapper_script`] with no header, which
    /// runs `command` (the user's shell running the stage script) and outlives a cancel's
    /// TERM until the job's traps are done, and writes the exit-status file
    /// [`wrapper::exit_path`]. `output` is the file the driver tails.
    fn wrapper(&self, output: &Path, command: &[String]) -> String {
        wrapper::wrapper_script("", command, "", output, &wrapper::exit_path(output))
    }
    /// The job's separate error file, when the scheduler keeps stderr apart (Cobalt): it is
    /// tailed to the job log along with `output`.
    fn error_file(&self, _output: &Path) -> Option<PathBuf> {
        None
    }
    /// Arguments that tell the scheduler the CI job ends `left` from now and the job must
    /// be gone `grace` later (Slurm's `--deadline`), given the user's `args`, and notes for
    /// the job log (what was added, or a warning and why nothing was). Default: nothing
    /// (the scheduler has no such notion here).
    fn deadline_args(
        &self,
        _args: &[String],
        _left: std::time::Duration,
        _grace: std::time::Duration,
    ) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }
    /// Whether `id` has the form of a job id this scheduler's submit command prints, the
    /// only form the driver records (each scheduler's `parse_submit` keeps to it). Ids read
    /// back from the job's record, which the job can write, are checked with it before any
    /// command gets one: an id that fails (`--uid=0`, an escape sequence) is reported and
    /// skipped (see [`persist`]).
    fn valid_id(&self, id: &str) -> bool;
    /// Submit the job; returns the scheduler's job id.
    fn submit<'a>(
        &'a self,
        cmds: &'a Commands,
        sub: &'a Submission,
    ) -> BoxFuture<'a, Result<String, BatchError>>;
    /// The job's current state.
    fn state<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>>;
    /// Ask the scheduler to end the job; `graceful`: deliver SIGTERM to the job and let it
    /// run its traps (the scheduler's "signal" form), otherwise the plain cancel.
    fn cancel<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
        graceful: bool,
    ) -> BoxFuture<'a, Result<(), BatchError>>;
    /// Whether [`Scheduler::user_jobs`] lists the user's jobs in one command: then the jobs
    /// of one user share one poll (see [`poller`]); otherwise each job asks
    /// [`Scheduler::state`].
    fn lists_user_jobs(&self) -> bool {
        false
    }
    /// Every job of the user running us, in one per-user command (never a multi-id query of
    /// the live queue), by id. Final states may be listed without their exit code
    /// ([`Listed::code_unknown`]).
    fn user_jobs<'a>(
        &'a self,
        _cmds: &'a Commands,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Listed>, BatchError>> {
        let name = self.name();
        Box::pin(async move {
            Err(BatchError::Setup(format!(
                "{name} has no per-user status query"
            )))
        })
    }
    /// The key of job `id` in [`Scheduler::user_jobs`]'s listing and in the poll directory
    /// (want files): `id` itself by default. A scheduler whose listing prints ids in
    /// another form than its submit command (PBS's tables truncate `123.server`, Flux's
    /// `ƒ` ids are keyed by their decimal form) maps them here; [`Scheduler::accounting`]
    /// and [`Scheduler::state`] must accept the key as a job id.
    fn listing_id(&self, id: &str) -> String {
        id.to_string()
    }
    /// The states of jobs that left the listing, from the scheduler's accounting, in one
    /// command for all of `ids` where the scheduler allows it; ids it does not know are
    /// missing from the answer. The default asks [`Scheduler::state`] per id.
    fn accounting<'a>(
        &'a self,
        cmds: &'a Commands,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, JobState>, BatchError>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            for id in ids {
                match self.state(cmds, id).await? {
                    JobState::Unknown => {}
                    st => {
                        out.insert(id.clone(), st);
                    }
                }
            }
            Ok(out)
        })
    }
    /// `f` (the scheduler's final word) with the exit code `code` the job's exit file holds.
    fn with_exit_code(&self, f: &Final, code: i32) -> Final {
        Final {
            exit_code: code,
            ..f.clone()
        }
    }
    /// Read the final state from files the scheduler leaves (Cobalt's `.cobaltlog`), once
    /// the job has left the queue. `None`: no such file, ask [`Scheduler::state`].
    fn final_from_files(&self, _sub: &Submission, _id: &str) -> Option<Final> {
        None
    }
    /// The files beside `output` that [`Scheduler::final_from_files`] reads and the
    /// scheduler itself writes (Cobalt's log, which it appends to): removed with the stale
    /// output before every submission, so the job's end is never read from an earlier
    /// submission's (the stage called again, a resubmission).
    fn end_files(&self, _output: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The name of the account running us (the job's user): the `USER` of per-user listings
/// (`qstat -u`, `bjobs -u`, `flux jobs --user`) that have no "me" form. `None` when the
/// passwd database has no entry for our uid (then the scheduler polls per job).
pub fn running_user() -> Option<&'static str> {
    static USER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    })
    .as_deref()
}

/// [`running_user`] for a per-user listing by `command` (for the error: `qstat -u`), which
/// is only asked for when [`Scheduler::lists_user_jobs`] found a name.
pub fn listing_user(command: &str) -> Result<&'static str, BatchError> {
    running_user()
        .ok_or_else(|| BatchError::Setup(format!("no user name for {command} (no passwd entry)")))
}

/// Run a scheduler's per-user listing and read it with `parse`. An answer for which
/// `empty` holds (the scheduler's words for "you have no jobs", said with a failure by
/// some) is an empty listing; any other failure is classified by `failure`.
pub(crate) async fn list_command(
    cmds: &Commands,
    tool: &str,
    args: &[String],
    failure: fn(&str, &[String], &limiter::CmdOutput) -> BatchError,
    empty: impl Fn(&limiter::CmdOutput) -> bool,
    parse: impl Fn(&str) -> BTreeMap<String, Listed>,
) -> Result<BTreeMap<String, Listed>, BatchError> {
    let out = cmds.run(tool, args).await?;
    if out.stdout.trim().is_empty() && empty(&out) {
        return Ok(BTreeMap::new());
    }
    if !out.success() {
        return Err(failure(tool, args, &out));
    }
    Ok(parse(&out.stdout))
}

/// A listed job: its state, the exit code unknown when `code_unknown`.
pub(crate) fn listed(state: JobState, code_unknown: bool) -> Listed {
    let expected_start = match &state {
        JobState::Queued { expected_start, .. } => expected_start.clone(),
        _ => None,
    };
    Listed {
        state,
        code_unknown,
        expected_start,
    }
}

/// One job of a per-user listing ([`Scheduler::user_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub state: JobState,
    /// The state is final but the listing has no exit code (`squeue`): it comes from the
    /// job's exit file, or the scheduler's own per-job answer.
    pub code_unknown: bool,
    /// When the scheduler expects a queued job to start, as it prints it (Slurm's `%S`).
    pub expected_start: Option<String>,
}

/// The scheduler for a batch `executor`.
pub fn scheduler_for(
    executor: Executor,
    batch: &crate::config::Batch,
) -> Result<Box<dyn Scheduler>, BatchError> {
    match executor {
        Executor::Slurm => Ok(Box::new(slurm::Slurm)),
        Executor::Pbs => Ok(Box::new(pbs::Pbs)),
        Executor::Flux => Ok(Box::new(flux::Flux)),
        Executor::Lsf => Ok(Box::new(lsf::Lsf {
            job_cancellation: batch.lsf_job_cancellation,
        })),
        Executor::Cobalt => Ok(Box::new(cobalt::Cobalt {
            skip_log: batch.skip_cobalt_log,
        })),
        Executor::Shell => Err(BatchError::Setup(
            "the shell executor submits nothing to a scheduler".into(),
        )),
    }
}

/// Whether `stage` is submitted to the scheduler (the others run on the host).
pub fn is_submitted_stage(stage: &str) -> bool {
    matches!(stage, "build_script" | "step_script")
}

/// A failed scheduler command as an error: its stderr (or exit status) as the message;
/// `Transient` (retried with backoff) when `transient` says the scheduler's daemon is only
/// busy or restarting, `Command` otherwise. Each scheduler knows its own words for that.
pub(crate) fn command_failure(
    tool: &str,
    args: &[String],
    out: &limiter::CmdOutput,
    transient: bool,
) -> BatchError {
    let e = out.stderr.trim();
    let message = if e.is_empty() {
        format!("exit status {:?}", out.code)
    } else {
        e.to_string()
    };
    let command = limiter::display(tool, args);
    if transient {
        BatchError::Transient { command, message }
    } else {
        BatchError::Command { command, message }
    }
}

/// [`command_failure`], transient when the stderr holds one of the scheduler's `words` for
/// a daemon that is busy, restarting or unreachable.
pub(crate) fn failure_by_words(
    words: &[&str],
    tool: &str,
    args: &[String],
    out: &limiter::CmdOutput,
) -> BatchError {
    let transient = words.iter().any(|w| out.stderr.contains(w));
    command_failure(tool, args, out, transient)
}

/// Run a scheduler's submit command and read the job id from its stdout with `parse`.
pub(crate) async fn submit_command(
    cmds: &Commands,
    tool: &str,
    args: &[String],
    failure: fn(&str, &[String], &limiter::CmdOutput) -> BatchError,
    parse: fn(&str) -> Option<String>,
) -> Result<String, BatchError> {
    let out = cmds.run(tool, args).await?;
    if !out.success() {
        return Err(failure(tool, args, &out));
    }
    parse(&out.stdout).ok_or_else(|| BatchError::Parse {
        command: tool.to_string(),
        why: format!("no job id in {:?}", out.stdout.trim()),
    })
}

/// Run a scheduler's status command for one job and read its answer. `unknown` is asked
/// first: the scheduler has no record of the job (some say so with success, some with a
/// failure); otherwise a failed command is classified by `failure`, and the stdout of a
/// successful one is read by `parse` (`None`: [`BatchError::Parse`]).
pub(crate) async fn state_command(
    cmds: &Commands,
    tool: &str,
    args: &[String],
    failure: fn(&str, &[String], &limiter::CmdOutput) -> BatchError,
    unknown: impl Fn(&limiter::CmdOutput) -> bool,
    parse: impl Fn(&str) -> Option<JobState>,
) -> Result<JobState, BatchError> {
    let out = cmds.run(tool, args).await?;
    if unknown(&out) {
        return Ok(JobState::Unknown);
    }
    if !out.success() {
        return Err(failure(tool, args, &out));
    }
    parse(&out.stdout).ok_or_else(|| BatchError::Parse {
        command: limiter::display(tool, args),
        why: format!("no job state in {:?}", out.stdout.trim()),
    })
}

/// Run a scheduler's cancel command. Success, or an answer for which `gone` holds (the job
/// already ended or is unknown), is `Ok`; anything else is classified by `failure`.
pub(crate) async fn cancel_command(
    cmds: &Commands,
    tool: &str,
    args: &[String],
    failure: fn(&str, &[String], &limiter::CmdOutput) -> BatchError,
    gone: fn(&str) -> bool,
) -> Result<(), BatchError> {
    let out = cmds.run(tool, args).await?;
    if out.success() || gone(&out.stderr) {
        Ok(())
    } else {
        Err(failure(tool, args, &out))
    }
}

/// A decimal job id: 1 to 20 ASCII digits (Slurm, LSF and Cobalt ids, the sequence number
/// of a PBS id, a Flux id in decimal).
pub fn is_decimal_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Owned arguments from string literals.
pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `path` as text for a command line (lossy for non-UTF-8 paths, which our layout never makes).
pub fn path_arg(path: &Path) -> String {
    path.display().to_string()
}
