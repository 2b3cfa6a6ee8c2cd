//! The runner's `graceful_kill_timeout` and `force_kill_timeout`, as the runner reads
//! them, against jacamar's `kill_timeout` (see the module's docs for the two comparisons).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::document::Custom;
use super::Checker;
use crate::config::duration::format_duration;
use crate::config::Config;

/// `graceful_kill_timeout` when the runner's file leaves it unset (or <= 0).
pub const RUNNER_DEFAULT_GRACEFUL_KILL_TIMEOUT: Duration = Duration::from_secs(600);
/// `force_kill_timeout` when the runner's file leaves it unset (or <= 0); the
/// runner's code default (its docs say otherwise).
pub const RUNNER_DEFAULT_FORCE_KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Checker<'_> {
    /// The runner's graceful and force kill timeouts, compared with the kill_timeout of
    /// config_args' file when it loaded.
    pub(super) fn kill_timeouts(
        &mut self,
        c: &Custom<'_>,
        config: Option<&(PathBuf, Config)>,
    ) -> (Duration, Duration) {
        let graceful = self.seconds(
            c,
            "graceful_kill_timeout",
            RUNNER_DEFAULT_GRACEFUL_KILL_TIMEOUT,
        );
        let force = self.seconds(c, "force_kill_timeout", RUNNER_DEFAULT_FORCE_KILL_TIMEOUT);
        if let Some((file, config)) = config {
            self.timing(c, file, config.general.kill_timeout, graceful, force);
        }
        (graceful, force)
    }

    /// A whole number of seconds of `[runners.custom]`, as the runner reads it.
    fn seconds(&mut self, c: &Custom<'_>, key: &str, default: Duration) -> Duration {
        let (r, custom) = (c.r, c.table);
        let Some((k, v)) = custom.get_key_value(key) else {
            return default;
        };
        let line = self.line(k.span().start);
        let dotted = format!("runners.custom.{key}");
        let default_s = default.as_secs();
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n > 0 => Duration::from_secs(n as u64),
                Ok(n) => {
                    self.problem(
                        r,
                        line,
                        &dotted,
                        format!(
                            "{n} is ignored by the runner, which then uses its default of \
                             {default_s} s: write the number of seconds you mean (> 0), or \
                             remove the key"
                        ),
                    );
                    default
                }
                Err(_) => {
                    self.problem(
                        r,
                        line,
                        &dotted,
                        format!(
                            "{i} seconds is out of range (the runner reads a 64-bit integer): \
                             write e.g. {key} = {default_s}"
                        ),
                    );
                    default
                }
            },
            other => {
                self.problem(
                    r,
                    line,
                    &dotted,
                    format!(
                        "expected a whole number of seconds, found {} (the runner refuses to \
                         load the file): write e.g. {key} = {default_s}",
                        other.type_str()
                    ),
                );
                default
            }
        }
    }

    /// The two comparisons (see the module's docs): `kill` (K, `[general] kill_timeout` of
    /// `file`) below `graceful` (G), and K + `force` (F) within G; either failing is reported
    /// at graceful_kill_timeout's line (or `[runners.custom]`'s, when it is unset).
    fn timing(
        &mut self,
        c: &Custom<'_>,
        file: &Path,
        kill: Duration,
        graceful: Duration,
        force: Duration,
    ) {
        let (r, custom) = (c.r, c.table);
        let graceful_line = custom
            .get_key_value("graceful_kill_timeout")
            .map(|(k, _)| self.line(k.span().start));
        let (line, set) = match graceful_line {
            Some(l) => (l, "set"),
            None => (r.custom_line, "add"),
        };
        let f = format_duration;
        let needed = (kill + force).as_secs_f64().ceil() as u64;
        let graceful_is = if graceful_line.is_some() {
            format!("graceful_kill_timeout ({})", f(graceful))
        } else {
            format!(
                "graceful_kill_timeout (unset: the runner's default {})",
                f(graceful)
            )
        };
        if kill >= graceful {
            self.problem(
                r,
                line,
                "runners.custom.graceful_kill_timeout",
                format!(
                    "kill_timeout ({}, [general] of {}) is not below {graceful_is}: the runner \
                     SIGKILLs jacamar-auth before jacamar kills the job, and a caps-only runner \
                     cannot reach the job's processes; {set} graceful_kill_timeout = {needed} (or \
                     lower kill_timeout)",
                    f(kill),
                    file.display()
                ),
            );
        } else if kill + force > graceful {
            self.problem(
                r,
                line,
                "runners.custom.graceful_kill_timeout",
                format!(
                    "kill_timeout ({}, [general] of {}) + force_kill_timeout ({}) = {} exceeds \
                     {graceful_is}: after its SIGKILL of the job jacamar needs time to reap it, \
                     drain its output and sweep leftovers before the runner's SIGKILL; {set} \
                     graceful_kill_timeout = {needed} (or lower kill_timeout)",
                    f(kill),
                    file.display(),
                    f(force),
                    f(kill + force)
                ),
            );
        }
    }
}
