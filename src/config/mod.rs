//! Jacamar's TOML configuration: raw text -> validated [`Config`] the rest of
//! the code trusts.
//!
//! Two steps, each in its own file:
//! 1. [`raw`]: the text becomes a spanned TOML tree; a syntax error becomes
//!    one [`Problem`] naming its line and the last key parsed before it.
//! 2. [`validate`] (with [`section`]): every table is walked by hand against
//!    [`schema`], so that *every* problem in the file is collected: unknown
//!    tables and keys (with a suggestion), wrong types, bad durations, bad
//!    choices, missing required keys and semantic rules.
//!
//! Durations use Go's syntax ([`parse_duration`]).

mod duration;
mod error;
mod raw;
pub mod runner;
pub mod schema;
mod section;
mod types;
mod validate;

use std::path::Path;

pub use duration::{format_duration, parse_duration, DurationError, DurationProblem};
pub use error::{ConfigError, FileProblem, Problem, Problems};
pub use types::{
    Auth, Batch, Charliecloud, Downscope, Executor, General, LogLevel, LogLocation, Logging,
    Podman, RunAs, RunMechanism, Seccomp,
};

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub general: General,
    pub auth: Auth,
    pub batch: Batch,
    /// The TOML text it was parsed from (handed to later stages through `job_env`).
    pub source: String,
}

impl Config {
    /// Read and validate the file at `path`; problems are reported against
    /// the path as written.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                origin.clone(),
                vec![Problem::new(None, None, format!("failed to read: {e}"))],
            )
        })?;
        Config::from_str_named(&text, &origin)
    }

    /// Validate `text`; `origin` names it in messages (a path, `<stdin>`, ...).
    pub fn from_str_named(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = raw::parse(text).map_err(|p| ConfigError::new(origin, vec![p]))?;
        let lines = raw::LineIndex::new(text);
        let (general, auth, batch) =
            validate::validate(&doc, &lines).map_err(|ps| ConfigError::new(origin, ps))?;
        Ok(Config {
            general,
            auth,
            batch,
            source: text.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
