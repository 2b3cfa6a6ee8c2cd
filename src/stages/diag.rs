//! Diagnostics of both binaries: `tracing` events, one line each on stderr.
//!
//! stderr is where the runner looks: `jacamar-auth`'s reaches the job log (the runner's log
//! for `cleanup`), and `jacamar`'s is `jacamar-auth`'s. stdout is never written, so
//! `config`'s stdout stays the runner's JSON.
//!
//! * `JACAMAR_RS_LOG`: the filter, in `RUST_LOG` syntax (`warn`, `jacamar::batch=debug`, ...);
//!   `warn` when unset or empty. An invalid filter is reported (as a warning) and `warn` used.
//! * `JACAMAR_RS_LOG_FORMAT=json`: JSON lines instead of text.
//!
//! Both are read from the driver's environment (the runner's account), never from the job:
//! `jacamar-auth` passes them on to `jacamar` ([`passed_env`]). Installing costs a filter
//! parse and one allocation, no thread and no I/O.
//!
//! Messages meant for the CI user (the runner's `Error encountered during job:` line, the
//! notices of the build-directory features) are the job log's text, written as they are;
//! events are for what the driver itself has to say (a cleanup that gave up, a sweep that
//! left survivors, a cgroup that could not be made).

use tracing_subscriber::EnvFilter;

/// The variable holding the filter.
pub const LOG_VAR: &str = "JACAMAR_RS_LOG";
/// The variable selecting the format (`json`, else text).
pub const FORMAT_VAR: &str = "JACAMAR_RS_LOG_FORMAT";
/// The filter without `JACAMAR_RS_LOG`.
pub const DEFAULT_FILTER: &str = "warn";

/// Install the subscriber for this process (the first call wins; later ones do nothing).
pub fn install() {
    let spec = std::env::var(LOG_VAR).ok().filter(|s| !s.trim().is_empty());
    let (filter, invalid) = match spec.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (EnvFilter::new(DEFAULT_FILTER), Some(e.to_string())),
        None => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time();
    // Err only when a subscriber is already set (a second call): that one stays.
    let _ = if std::env::var(FORMAT_VAR).as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Some(e) = invalid {
        tracing::warn!("{LOG_VAR} is not a valid filter ({e}); using {DEFAULT_FILTER:?}");
    }
}

/// The diagnostics variables of our own environment, for `jacamar`'s (whose environment is
/// otherwise cleared).
pub fn passed_env() -> Vec<(&'static str, String)> {
    [LOG_VAR, FORMAT_VAR]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k, v)))
        .collect()
}
