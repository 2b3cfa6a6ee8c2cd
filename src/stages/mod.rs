//! The four custom-executor stages, end to end.
//!
//! * [`privileged`]: what `jacamar-auth` does for `config`, `prepare`, `run` and `cleanup`.
//! * [`user`]: what `jacamar` does, as the job's user, when `jacamar-auth` hands it a stage.
//! * [`prelude`]: the bash functions `jacamar` writes in front of the runner's own stage
//!   scripts to keep the job token off their command lines.
//!
//! * [`cli`]: the runner-facing sub-commands and start-up of `jacamar-auth` and
//!   `jacamar --no-auth`.
//! * [`diag`]: the diagnostics subscriber both binaries install (stderr, level filter).
//!
//! Both sides share the error type here; [`StageError::category`] decides what the job log
//! may be told (see [`crate::audit::obfuscate`]); `jacamar` sends the category of its failure
//! back over the status pipe.

pub mod cli;
mod contained;
mod contained_ch;
pub mod diag;
pub mod login_env;
pub mod prelude;
pub mod privileged;
pub mod user;

use crate::audit::obfuscate::Category;
use crate::authz::AuthError;
use crate::config::{Config, ConfigError};
use crate::fs::{FsError, JobPaths, UserInfo};
use crate::job::{JobContext, JobError};
use crate::protocol::{Account, ProtocolError};
use nix::unistd::Pid;

/// The variable of `job_env` that carries the configuration to later stages.
pub const CONFIG_ENV: &str = "JACAMAR_CI_CONFIG_STR";
/// The variable of `job_env` that names the configuration file it came from.
pub const CONFIG_PATH_ENV: &str = "JACAMAR_CI_CONFIG_PATH";

/// Everything that can make a stage fail before or around the user's script.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("no configuration: {0}")]
    NoConfig(String),
    /// The configuration cannot be run by this deployment of jacamar-auth (its account and
    /// capabilities): refused before anything of the job is read.
    #[error("{0}")]
    Deployment(String),
    #[error("{0}")]
    Job(#[from] JobError),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("failed to read the runner's script {path}: {source}")]
    Script {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("failed to start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// A failure `jacamar` reported (or its end without a report), with the category it
    /// named: the job log's sentence is about what failed, not always the directories.
    #[error("jacamar failed: {message}")]
    User { message: String, category: Category },
    /// The batch scheduler did not take the job, or `jacamar` lost track of it.
    #[error("{0}")]
    Scheduler(String),
    /// The job's image could not be run (the tool, its setup on this node).
    #[error("{0}")]
    Container(#[from] crate::container::ContainerError),
    #[error("{0}")]
    Internal(String),
}

impl StageError {
    /// What kind of failure this is, for the job log's generic message.
    pub fn category(&self) -> Category {
        match self {
            StageError::Config(_) | StageError::NoConfig(_) | StageError::Deployment(_) => {
                Category::Configuration
            }
            StageError::Job(_) | StageError::Script { .. } => Category::Environment,
            StageError::Auth(_) => Category::Authorization,
            StageError::Fs(_) => Category::Directories,
            StageError::User { category, .. } => *category,
            StageError::Scheduler(_) => Category::Scheduler,
            StageError::Container(_) => Category::Container,
            StageError::Protocol(_) | StageError::Spawn { .. } | StageError::Internal(_) => {
                Category::Internal
            }
        }
    }

    /// The full text, every problem of a configuration on its own line.
    pub fn detail(&self) -> String {
        match self {
            StageError::Config(e) => e.report(),
            other => other.to_string(),
        }
    }
}

/// The process group of a child just spawned as its group's leader: its pid. A child
/// without a pid (already reaped) is an error, never group 0 (which would be our own).
pub fn group_of(pid: Option<u32>, what: &str) -> Result<Pid, StageError> {
    pid.and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| StageError::Internal(format!("{what} ended before its pid could be read")))
}

/// The job's paths for `account`, from the configuration and the job.
pub fn job_paths(
    config: &Config,
    job: &JobContext,
    account: &Account,
) -> Result<JobPaths, StageError> {
    let user = UserInfo {
        name: account.name.clone(),
        uid: account.uid,
        gid: account.gid,
        home: account.home.clone(),
    };
    Ok(JobPaths::new(
        &config.general.data_dir,
        &user,
        &job.runner_short_token,
        job.concurrent_id,
        &job.project_path,
        job.job_id,
    )?)
}
