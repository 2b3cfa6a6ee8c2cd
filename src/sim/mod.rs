//! `jacamar-sim`: an emulator of the GitLab Runner's custom executor, playing the runner's part
//! against `jacamar-auth` (config, prepare, run per sub-stage, cleanup) for local testing.
//!
//! - [`job`]: the job description file and embedded defaults.
//! - [`duration`]: `10s`/`5m`/`500ms` durations.
//! - [`script`]: stage names and the generated bash scripts.
//! - [`process`]: one driver call: process group, live output, SIGTERM/SIGKILL escalation.
//! - [`runner`]: the order of calls for one job, retries, cancellation, the summary.

pub mod duration;
pub mod job;
pub mod output;
pub mod process;
pub mod runner;
pub mod script;

pub use job::JobSpec;
pub use runner::{CancelKind, Options, Summary};

/// Errors of the emulator itself (not of the job).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid duration {text:?}: {why}")]
    Duration { text: String, why: String },
    #[error("invalid job file {origin}: {why}")]
    Job { origin: String, why: String },
    #[error("invalid --var {arg:?}: {why}")]
    Var { arg: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
