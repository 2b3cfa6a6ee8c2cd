//! Batch schedulers: one CI job's build script becomes one scheduler job.
//!
//! Only `build_script`/`step_script` is submitted; every other stage runs on the host with
//! the shell executor. The pieces, each in its own file:
//!
//! * [`scheduler`]: what a scheduler is to the driver, a synchronous description (its
//!   commands and how their answers read); one file per scheduler: [`slurm`], [`pbs`],
//!   [`flux`], [`lsf`], [`cobalt`].
//! * [`client`]: the one async loop that runs any description's commands.
//! * [`limiter`]: one rate limiter per job for every scheduler command (`command_delay`);
//!   [`Commands`] runs them, directly (argv, never a shell).
//! * [`args`]: the submission's arguments (user variables split with shell-word rules,
//!   `default_args`, `env_vars`) and each scheduler's refused arguments.
//! * [`run`](mod@run): the state machine of one batch job, `BatchRun` (submit, wait, tail,
//!   cancel, result), and `cleanup`'s cancel.
//! * [`poller`]: one status query per user per `command_delay`, shared by every job of the
//!   user on the host through a snapshot in the user's base dir (docs/batch-polling.md).
//! * [`outcome`]: a finished job's final state classified: the user's build failure or
//!   the infrastructure's system failure, with the sentence for the log.
//! * [`persist`]: the scheduler job id, written to the job's scripts dir the moment it is
//!   known; `cleanup` cancels what is still queued or running.
//! * [`tail`]: the polling, NFS-safe tailer of the job's output file.
//! * [`wrapper`]: the script submitted, which runs the stage and outlives a cancel's TERM
//!   until the job's traps are done.

pub mod alloc;
pub mod args;
pub mod client;
pub mod cobalt;
pub mod flux;
pub mod limiter;
pub mod lsf;
pub mod outcome;
pub mod pbs;
pub mod persist;
pub mod poller;
pub mod run;
pub mod scheduler;
pub mod slurm;
pub mod tail;
pub mod wrapper;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use limiter::Commands;
pub use run::{cleanup_job, run, BatchJob};
pub use scheduler::{Scheduler, Submission};

use crate::config::Executor;

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
    Split {
        variable: String,
        why: args::SplitError,
    },
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

/// One job of a per-user listing ([`Scheduler::listing`]).
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

/// A duration for people: `5s`, `2m10s`, `1h01m`.
pub(crate) fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
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
}
