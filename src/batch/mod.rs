//! Batch schedulers: one CI job's build script becomes one scheduler job.
//!
//! The contract every scheduler implements is [`Scheduler`]; each scheduler lives in its own
//! file. Only `build_script`/`step_script` is submitted; every other stage runs on the host
//! with the shell executor.

use std::path::Path;

/// A scheduler's view of one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending {
        reason: Option<String>,
    },
    Running,
    Completed {
        exit_code: i32,
    },
    Failed {
        state: String,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
    Unknown,
}

/// Failures talking to a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("failed to run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    #[error("refusing scheduler argument {arg:?}: {why}")]
    IllegalArgument { arg: String, why: String },
}

/// Submit, query, cancel: what the batch executor needs of a scheduler.
pub trait Scheduler {
    /// Submit `script`, writing its output to `output`; returns the scheduler's job id.
    fn submit(&self, script: &Path, output: &Path, args: &[String]) -> Result<String, BatchError>;
    /// The job's current state.
    fn state(&self, id: &str) -> Result<JobState, BatchError>;
    /// Ask the scheduler to end the job (`graceful`: deliver SIGTERM first).
    fn cancel(&self, id: &str, graceful: bool) -> Result<(), BatchError>;
}
