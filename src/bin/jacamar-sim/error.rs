//! The emulator's own errors (not the job's).

/// Errors of the emulator itself (not of the job).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid duration {text:?}: {why}")]
    /// `why` already says what is wrong (and is not a source: `{e:#}` would repeat it).
    Duration {
        text: String,
        why: jacamar::config::DurationError,
    },
    #[error("invalid job file {origin}: {why}")]
    Job { origin: String, why: String },
    #[error("invalid --var {arg:?}: {why}")]
    Var { arg: String, why: String },
    #[error("invalid {flag} {arg:?}: {why}")]
    Arg {
        flag: &'static str,
        arg: String,
        why: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A CI variable name that is not one.
#[derive(Debug, thiserror::Error)]
#[error("invalid variable name {0:?} (use letters, digits and _)")]
pub struct BadVarName(pub String);
