//! The GitLab Runner's `config.toml`, checked against the wiring this driver
//! needs (`jacamar-auth validate --runner-config FILE`).
//!
//! Only the keys that matter here are read; every other key of the runner's
//! file is ignored. For each `[[runners]]` with `executor = "custom"`:
//!
//! - the four hooks `config_exec`, `prepare_exec`, `run_exec`, `cleanup_exec`
//!   are absolute paths of one and the same executable file (`jacamar-auth`);
//! - `config_args` is `[-u] config --configuration FILE`, `cleanup_args`
//!   `[-u] cleanup --configuration FILE` with the same FILE, which exists and
//!   validates; `prepare_args` is `[-u] prepare` and `run_args` `[-u] run`
//!   (the runner appends the script path and the stage name); `-u`
//!   (`--unobfuscated`) comes before the sub-command;
//! - timing, with `K` = `[general] kill_timeout` of that FILE (jacamar's
//!   SIGKILL of the job, counted from the runner's SIGTERM), `G` =
//!   `graceful_kill_timeout` (the runner's SIGKILL of jacamar-auth, counted
//!   from the same SIGTERM; 600 s when unset) and `F` = `force_kill_timeout`
//!   (how long the runner waits for a SIGKILLed hook before it abandons it;
//!   10 s when unset). Two comparisons: `K < G`, and `K + F <= G`: after its
//!   SIGKILL, jacamar still reaps the job, drains its output (up to 2 s) and
//!   sweeps leftovers (up to 5 s), and gets for that at least the time the
//!   runner itself grants a SIGKILLed process, so jacamar-auth has returned
//!   before the runner's SIGKILL arrives. The runner reads both as whole
//!   seconds and replaces a value <= 0 with its default: such a value is
//!   reported too.
//! - `prepare_timeout` (runner 19.0: config_exec, prepare_exec and the prepare
//!   script) and `get_sources_timeout` (runner 19.1), keys of `[[runners]]`, are
//!   Go duration strings (`"15m"`): a bare integer (read as nanoseconds), a
//!   value the runner cannot parse (it refuses the whole file) or one <= 0 (the
//!   runner then uses the job timeout) is reported, and so is either key in
//!   `[runners.custom]`, where the runner does not read it. Neither is compared
//!   with jacamar's own timeouts: how long config and prepare take depends on the
//!   site (a `limit_build_dir` wait, a slow file system), not on a setting.
//!
//! The file system is reached through [`RunnerHost`], so that the checks can
//! be tested on the README's paths without those files.
//!
//! One module a job: [`report`] (what the check gives back), [`host`] (how it reaches the
//! machine), [`document`] (the file and its `[[runners]]`), [`hook`] (the four hooks and
//! their flags), [`exec`] (the hooks' `*_exec`), [`args`] (their `*_args`),
//! [`configuration`] (the jacamar configurations they name), [`kill`] (the kill timeouts)
//! and [`stage_timeouts`] (`prepare_timeout`, `get_sources_timeout`).

mod args;
mod configuration;
mod document;
mod exec;
mod hook;
mod host;
mod kill;
mod report;
mod stage_timeouts;

use std::path::{Path, PathBuf};

use super::raw::{self, LineIndex};
use document::{Custom, Runner};
use hook::{leading_flags, HOOKS, NO_AUTH};

pub use host::{ExecProblem, FsHost, RunnerHost};
pub use kill::{RUNNER_DEFAULT_FORCE_KILL_TIMEOUT, RUNNER_DEFAULT_GRACEFUL_KILL_TIMEOUT};
pub use report::{RunnerConfigError, RunnerProblem, RunnerSummary};

/// Read and check the runner's file at `path` on the real file system.
pub fn check_runner_config_file(path: &Path) -> Result<Vec<RunnerSummary>, RunnerConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        RunnerConfigError::new(
            origin.clone(),
            vec![RunnerProblem {
                line: None,
                runner: None,
                key: "config.toml".to_string(),
                message: format!("cannot read the runner's configuration: {e}"),
            }],
        )
    })?;
    check_runner_config(&text, &origin, &FsHost)
}

/// Check the runner's `config.toml` text; `origin` names it in messages.
pub fn check_runner_config(
    text: &str,
    origin: &str,
    host: &dyn RunnerHost,
) -> Result<Vec<RunnerSummary>, RunnerConfigError> {
    let doc = raw::parse(text).map_err(|p| {
        RunnerConfigError::new(
            origin,
            vec![RunnerProblem {
                line: p.line,
                runner: None,
                key: p.key.unwrap_or_else(|| "config.toml".to_string()),
                message: p.message,
            }],
        )
    })?;
    let lines = LineIndex::new(text);
    let mut checker = Checker {
        lines: &lines,
        host,
        problems: Vec::new(),
    };
    let summaries = checker.document(&doc);
    let mut problems = checker.problems;
    if problems.is_empty() {
        Ok(summaries)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(RunnerConfigError::new(origin, problems))
    }
}

/// The check of one file: what it reads the file with, and the problems found so far.
/// Each module adds the methods of its part of the check.
struct Checker<'a> {
    lines: &'a LineIndex,
    host: &'a dyn RunnerHost,
    problems: Vec<RunnerProblem>,
}

impl Checker<'_> {
    fn push(&mut self, line: Option<usize>, runner: Option<&str>, key: &str, message: String) {
        self.problems.push(RunnerProblem {
            line,
            runner: runner.map(str::to_string),
            key: key.to_string(),
            message,
        });
    }

    /// A problem of the runner `r` at `line`.
    fn problem(&mut self, r: &Runner<'_, '_>, line: usize, key: &str, message: String) {
        self.push(Some(line), Some(&r.label), key, message);
    }

    fn line(&self, offset: usize) -> usize {
        self.lines.line(offset)
    }

    /// Check one custom runner's `[runners.custom]`; its summary when nothing is wrong.
    fn custom_runner(&mut self, r: &Runner<'_, '_>) -> Option<RunnerSummary> {
        let before = self.problems.len();
        let Some(custom) = r.custom else {
            if !r.custom_mistyped {
                self.missing_custom(r);
            }
            return None;
        };
        let no_auth = HOOKS
            .iter()
            .any(|&h| leading_flags(custom, h).contains(&NO_AUTH));
        let c = Custom {
            r,
            table: custom,
            no_auth,
        };
        let (first, exec_ok) = self.execs(&c);
        let configurations = self.configurations(&c);
        self.cleanup_reads_config_file(r, &configurations);
        let config = self.load_configurations(r, &configurations);
        let (graceful, force) = self.kill_timeouts(&c, config.as_ref());
        if let (true, Some((file, c))) = (no_auth, config.as_ref()) {
            self.no_auth_configuration(r, file, c);
        }
        let (prepare_timeout, get_sources_timeout) = self.stage_timeouts(&c);

        if self.problems.len() != before || !exec_ok {
            return None;
        }
        let (first, (configuration, c)) = (first?, config?);
        Some(RunnerSummary {
            runner: r.label.clone(),
            exec: PathBuf::from(first.value),
            configuration,
            kill_timeout: c.general.kill_timeout,
            graceful_kill_timeout: graceful,
            force_kill_timeout: force,
            prepare_timeout,
            get_sources_timeout,
        })
    }
}

#[cfg(test)]
mod tests;
