//! What the check gives back: the problems of a runner's file ([`RunnerConfigError`]) or,
//! for each clean custom runner, what was compared ([`RunnerSummary`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::duration::format_duration;
use crate::config::{FileProblem, Problems};

/// One problem of the runner's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerProblem {
    /// 1-based line in the runner's file, when known.
    pub line: Option<usize>,
    /// The runner's `name` (or `#N`, its 1-based place, when it has none);
    /// `None` for a problem of the file as a whole.
    pub runner: Option<String>,
    /// Dotted key concerned (`runners.custom.run_args`).
    pub key: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl RunnerProblem {
    /// `<origin>:<line>: runner "<name>": <key>: <message>` on one line.
    pub fn render(&self, origin: &str) -> String {
        let mut out = String::new();
        if !origin.is_empty() {
            out.push_str(origin);
            if let Some(line) = self.line {
                let _ = write!(out, ":{line}");
            }
            out.push_str(": ");
        } else if let Some(line) = self.line {
            let _ = write!(out, "line {line}: ");
        }
        if let Some(runner) = &self.runner {
            let _ = write!(out, "runner {runner}: ");
        }
        let _ = write!(out, "{}: {}", self.key, self.message.replace('\n', " "));
        out
    }
}

impl FileProblem for RunnerProblem {
    const SUMMARY: &'static str = "runner configuration";

    fn render(&self, origin: &str) -> String {
        RunnerProblem::render(self, origin)
    }
}

/// Every problem of one runner `config.toml`.
pub type RunnerConfigError = Problems<RunnerProblem>;

/// What was checked for one custom runner whose wiring is clean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSummary {
    /// `"name"` or `#N`.
    pub runner: String,
    pub exec: PathBuf,
    pub configuration: PathBuf,
    pub kill_timeout: Duration,
    pub graceful_kill_timeout: Duration,
    pub force_kill_timeout: Duration,
    /// `prepare_timeout` of `[[runners]]`, when set (runner 19.0+).
    pub prepare_timeout: Option<Duration>,
    /// `get_sources_timeout` of `[[runners]]`, when set (runner 19.1+).
    pub get_sources_timeout: Option<Duration>,
}

impl RunnerSummary {
    /// One line saying what was compared (and the stage timeouts read).
    pub fn describe(&self) -> String {
        let mut stage_timeouts = String::new();
        for (key, value) in [
            ("prepare_timeout", self.prepare_timeout),
            ("get_sources_timeout", self.get_sources_timeout),
        ] {
            if let Some(d) = value {
                let _ = write!(stage_timeouts, "; {key} {}", format_duration(d));
            }
        }
        format!(
            "runner {}: OK ({} with {}; kill_timeout {} + force_kill_timeout {} <= graceful_kill_timeout {}{stage_timeouts})",
            self.runner,
            self.exec.display(),
            self.configuration.display(),
            format_duration(self.kill_timeout),
            format_duration(self.force_kill_timeout),
            format_duration(self.graceful_kill_timeout),
        )
    }
}
