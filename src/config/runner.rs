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

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::duration::format_duration;
use super::error::ConfigError;
use super::raw::{self, LineIndex};
use super::Config;

/// `graceful_kill_timeout` when the runner's file leaves it unset (or <= 0).
pub const RUNNER_DEFAULT_GRACEFUL_KILL_TIMEOUT: Duration = Duration::from_secs(600);
/// `force_kill_timeout` when the runner's file leaves it unset (or <= 0); the
/// runner's code default (its docs say otherwise).
pub const RUNNER_DEFAULT_FORCE_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The path the README and the packages install `jacamar-auth` to, used in hints.
const INSTALLED_AUTH: &str = "/opt/jacamar/bin/jacamar-auth";

/// What [`RunnerHost::executable`] says of a path that does not exist.
pub const NOT_FOUND: &str = "does not exist";

/// The configuration path shown in the documented `*_args` of hints.
const ARGS_PLACEHOLDER: &str = "/etc/gitlab-runner/jacamar.toml";

/// The four hooks, in the order the runner calls them.
const HOOKS: [Hook; 4] = [Hook::Config, Hook::Prepare, Hook::Run, Hook::Cleanup];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Config,
    Prepare,
    Run,
    Cleanup,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Config => "config",
            Hook::Prepare => "prepare",
            Hook::Run => "run",
            Hook::Cleanup => "cleanup",
        }
    }

    /// `<hook>_args`, the key of its arguments in `[runners.custom]`.
    fn args_key(self) -> String {
        format!("{}_args", self.name())
    }

    fn takes_configuration(self) -> bool {
        matches!(self, Hook::Config | Hook::Cleanup)
    }

    /// The documented `*_args`, as TOML.
    fn documented_args(self, configuration: &str) -> String {
        if self.takes_configuration() {
            format!(
                "[\"{}\", \"--configuration\", \"{configuration}\"]",
                self.name()
            )
        } else {
            format!("[\"{}\"]", self.name())
        }
    }
}

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

/// Every problem of one runner `config.toml`.
#[derive(Debug, thiserror::Error)]
#[error("{}", summary(.origin, .problems))]
pub struct RunnerConfigError {
    pub origin: String,
    pub problems: Vec<RunnerProblem>,
}

impl RunnerConfigError {
    /// Every problem on its own line, in file order.
    pub fn report(&self) -> String {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|p| p.render(&self.origin))
            .collect();
        lines.join("\n")
    }
}

fn summary(origin: &str, problems: &[RunnerProblem]) -> String {
    match problems {
        [] => format!("runner configuration {origin}: unknown problem"),
        [only] => format!("runner configuration: {}", only.render(origin)),
        [first, rest @ ..] => format!(
            "runner configuration ({} problems, first shown): {}",
            rest.len() + 1,
            first.render(origin)
        ),
    }
}

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

/// How the checks reach the machine.
pub trait RunnerHost {
    /// `Ok(canonical path)` when `path` is a regular file with an execute
    /// bit; otherwise what is wrong with it.
    fn executable(&self, path: &Path) -> Result<PathBuf, String>;
    /// The jacamar configuration at `path`, validated.
    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsHost;

impl RunnerHost for FsHost {
    fn executable(&self, path: &Path) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NOT_FOUND.to_string(),
            _ => format!("cannot be read: {e}"),
        })?;
        if !meta.is_file() {
            return Err("is not a regular file".to_string());
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "is not executable (mode {:04o})",
                meta.permissions().mode() & 0o7777
            ));
        }
        std::fs::canonicalize(path).map_err(|e| format!("cannot be resolved: {e}"))
    }

    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::from_file(path)
    }
}

/// Read and check the runner's file at `path` on the real file system.
pub fn check_runner_config_file(path: &Path) -> Result<Vec<RunnerSummary>, RunnerConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RunnerConfigError {
        origin: origin.clone(),
        problems: vec![RunnerProblem {
            line: None,
            runner: None,
            key: "config.toml".to_string(),
            message: format!("cannot read the runner's configuration: {e}"),
        }],
    })?;
    check_runner_config(&text, &origin, &FsHost)
}

/// Check the runner's `config.toml` text; `origin` names it in messages.
pub fn check_runner_config(
    text: &str,
    origin: &str,
    host: &dyn RunnerHost,
) -> Result<Vec<RunnerSummary>, RunnerConfigError> {
    let err = |problems| RunnerConfigError {
        origin: origin.to_string(),
        problems,
    };
    let doc = raw::parse(text).map_err(|p| {
        err(vec![RunnerProblem {
            line: p.line,
            runner: None,
            key: p.key.unwrap_or_else(|| "config.toml".to_string()),
            message: p.message,
        }])
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
        Err(err(problems))
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Checker<'a> {
    lines: &'a LineIndex,
    host: &'a dyn RunnerHost,
    problems: Vec<RunnerProblem>,
}

/// One `[[runners]]` entry being checked.
struct Runner<'t, 'i> {
    /// For messages: `"name"` or `#N`.
    label: String,
    /// The `[[runners]]` table itself.
    table: &'t DeTable<'i>,
    /// Line of its first key (or of the entry).
    line: usize,
    custom: Option<&'t DeTable<'i>>,
    /// `custom` is there but is not a table (already reported as such).
    custom_mistyped: bool,
    /// Line of the `[runners.custom]` header (or of the runner, when absent).
    custom_line: usize,
}

/// A hook's `*_exec` once checked: its value, line and resolved file.
struct Exec {
    hook: Hook,
    value: String,
    line: usize,
    resolved: PathBuf,
}

/// A hook's `*_args` once read.
struct Args {
    configuration: Option<(String, usize)>,
}

impl<'a> Checker<'a> {
    fn push(&mut self, line: Option<usize>, runner: Option<&str>, key: &str, message: String) {
        self.problems.push(RunnerProblem {
            line,
            runner: runner.map(str::to_string),
            key: key.to_string(),
            message,
        });
    }

    fn line(&self, offset: usize) -> usize {
        self.lines.line(offset)
    }

    fn document(&mut self, doc: &DeTable<'_>) -> Vec<RunnerSummary> {
        let Some((key, value)) = doc.get_key_value("runners") else {
            self.push(
                None,
                None,
                "runners",
                "no [[runners]] entry: register a runner with executor = \"custom\" first"
                    .to_string(),
            );
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            let line = self.line(key.span().start);
            self.push(
                Some(line),
                None,
                "runners",
                format!(
                    "expected an array of tables ([[runners]]), found {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut summaries = Vec::new();
        let mut customs = 0;
        for (index, item) in items.iter().enumerate() {
            let DeValue::Table(table) = item.get_ref() else {
                let line = self.line(item.span().start);
                self.push(
                    Some(line),
                    None,
                    "runners",
                    format!(
                        "entry #{} is {}, not a table: write it as a [[runners]] table",
                        index + 1,
                        item.get_ref().type_str()
                    ),
                );
                continue;
            };
            if !self.is_custom(table, index) {
                continue;
            }
            customs += 1;
            let runner = self.runner(table, item, index);
            if let Some(summary) = self.custom_runner(&runner) {
                summaries.push(summary);
            }
        }
        if customs == 0 && self.problems.is_empty() {
            self.push(
                None,
                None,
                "runners.executor",
                "no [[runners]] entry has executor = \"custom\": nothing runs jacamar-auth"
                    .to_string(),
            );
        }
        summaries
    }

    /// `executor = "custom"`? A wrong type is reported and counts as no.
    fn is_custom(&mut self, table: &DeTable<'_>, index: usize) -> bool {
        match table.get_key_value("executor") {
            Some((_, v)) => match v.get_ref() {
                DeValue::String(s) => s.as_ref() == "custom",
                other => {
                    let line = self.line(v.span().start);
                    self.push(
                        Some(line),
                        Some(&format!("#{}", index + 1)),
                        "runners.executor",
                        format!("expected a string, found {}", other.type_str()),
                    );
                    false
                }
            },
            None => false,
        }
    }

    fn runner<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        item: &Value<'i>,
        index: usize,
    ) -> Runner<'t, 'i> {
        let label = match table.get("name").map(|v| v.get_ref()) {
            Some(DeValue::String(s)) if !s.is_empty() => format!("{:?}", s.as_ref()),
            _ => format!("#{}", index + 1),
        };
        let line = table
            .iter()
            .map(|(k, _)| k.span().start)
            .min()
            .map(|o| self.line(o))
            .unwrap_or_else(|| self.line(item.span().start));
        let (custom, custom_line) = match table.get_key_value("custom") {
            Some((k, v)) => match v.get_ref() {
                DeValue::Table(t) => (Some(t), self.line(k.span().start)),
                other => {
                    let l = self.line(k.span().start);
                    self.push(
                        Some(l),
                        Some(&label),
                        "runners.custom",
                        format!(
                            "expected a table ([runners.custom]), found {}",
                            other.type_str()
                        ),
                    );
                    (None, l)
                }
            },
            None => (None, line),
        };
        Runner {
            label,
            table,
            line,
            custom,
            custom_mistyped: custom.is_none() && table.contains_key("custom"),
            custom_line,
        }
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
        let (first, exec_ok) = self.execs(r, custom, no_auth);
        let configurations = self.configurations(r, custom, no_auth);
        self.cleanup_reads_config_file(r, &configurations);
        let config = self.load_configurations(r, &configurations);
        let (graceful, force) = self.kill_timeouts(r, custom, config.as_ref());
        if let (true, Some((file, c))) = (no_auth, config.as_ref()) {
            self.no_auth_configuration(r, file, c);
        }
        let (prepare_timeout, get_sources_timeout) = self.stage_timeouts(r, custom);

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

    /// Report a custom runner without a `[runners.custom]` table.
    fn missing_custom(&mut self, r: &Runner<'_, '_>) {
        self.push(
            Some(r.line),
            Some(&r.label),
            "runners.custom",
            format!(
                "executor = \"custom\" without a [runners.custom] table: add one with the \
                 four hooks config_exec, prepare_exec, run_exec and cleanup_exec = \
                 \"{INSTALLED_AUTH}\" and their *_args"
            ),
        );
    }

    /// The four `*_exec`: present, absolute, executable, all the same file. Returns the
    /// first hook's resolved executable and whether all four passed.
    fn execs(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        no_auth: bool,
    ) -> (Option<Exec>, bool) {
        let mut first: Option<Exec> = None;
        let mut exec_ok = true;
        for hook in HOOKS {
            let Some(exec) = self.exec(r, custom, hook, first.as_ref(), no_auth) else {
                exec_ok = false;
                continue;
            };
            match &first {
                None => first = Some(exec),
                Some(f) => exec_ok &= self.same_exec(r, f, &exec),
            }
        }
        (first, exec_ok)
    }

    /// One hook's `*_exec` checked and resolved; `None` once a problem was reported (a
    /// missing key suggests `first`'s path, or the installed one).
    fn exec(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        hook: Hook,
        first: Option<&Exec>,
        no_auth: bool,
    ) -> Option<Exec> {
        let key = format!("{}_exec", hook.name());
        let dotted = format!("runners.custom.{key}");
        let Some((value, line)) = self.string(r, custom, &key) else {
            let suggestion = first.map_or(INSTALLED_AUTH, |f| f.value.as_str());
            if !custom.contains_key(key.as_str()) {
                self.push(
                    Some(r.custom_line),
                    Some(&r.label),
                    &dotted,
                    format!(
                        "missing: jacamar-auth runs all four hooks; add {key} = \"{suggestion}\""
                    ),
                );
            }
            return None;
        };
        if let Some(message) = exec_path_problem(&value, no_auth) {
            self.push(Some(line), Some(&r.label), &dotted, message);
            return None;
        }
        let resolved = self.resolve_exec(r, &dotted, &value, line)?;
        Some(Exec {
            hook,
            value,
            line,
            resolved,
        })
    }

    /// The hook's file as the host resolves it; a missing or unusable file is reported.
    fn resolve_exec(
        &mut self,
        r: &Runner<'_, '_>,
        dotted: &str,
        value: &str,
        line: usize,
    ) -> Option<PathBuf> {
        match self.host.executable(Path::new(value)) {
            Ok(p) => Some(p),
            Err(why) => {
                let fix = if why == NOT_FOUND {
                    "install jacamar-auth there (the jacamar-rs packages put it in \
                     /opt/jacamar/bin) or fix the path"
                } else {
                    "give it mode 0755 root:root (runner as root) or 0750 \
                     root:gitlab-runner (the caps flavour), or fix the path"
                };
                self.push(
                    Some(line),
                    Some(&r.label),
                    dotted,
                    format!("\"{value}\" {why}: {fix}"),
                );
                None
            }
        }
    }

    /// Whether `exec` resolves to the same file as `first`; a different one is reported.
    fn same_exec(&mut self, r: &Runner<'_, '_>, first: &Exec, exec: &Exec) -> bool {
        if first.resolved == exec.resolved {
            return true;
        }
        let key = format!("{}_exec", exec.hook.name());
        let (value, first_value) = (&exec.value, &first.value);
        self.push(
            Some(exec.line),
            Some(&r.label),
            &format!("runners.custom.{key}"),
            format!(
                "\"{value}\" differs from {}_exec \"{first_value}\": all four \
                 hooks must run the same jacamar-auth; set {key} = \"{first_value}\"",
                first.hook.name()
            ),
        );
        false
    }

    /// The four `*_args` checked; the `--configuration FILE`s they give, with hook and line.
    fn configurations(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        no_auth: bool,
    ) -> Vec<(Hook, String, usize)> {
        let mut configurations = Vec::new();
        for hook in HOOKS {
            let args = self.args(r, custom, hook, no_auth);
            if let Some((file, line)) = args.configuration {
                configurations.push((hook, file, line));
            }
        }
        configurations
    }

    /// Whether cleanup_args names config_args' file; a different one is reported.
    fn cleanup_reads_config_file(
        &mut self,
        r: &Runner<'_, '_>,
        configurations: &[(Hook, String, usize)],
    ) {
        let find = |hook| configurations.iter().find(|(h, _, _)| *h == hook);
        let (Some((_, cfg, _)), Some((_, clean, clean_line))) =
            (find(Hook::Config), find(Hook::Cleanup))
        else {
            return;
        };
        if cfg != clean {
            self.push(
                Some(*clean_line),
                Some(&r.label),
                "runners.custom.cleanup_args",
                format!(
                    "--configuration \"{clean}\" differs from config_args' \"{cfg}\": cleanup \
                     must read the file the job was configured with; use \"{cfg}\" in both"
                ),
            );
        }
    }

    /// Each distinct `--configuration FILE`, checked once; config_args' file, when it loads.
    fn load_configurations(
        &mut self,
        r: &Runner<'_, '_>,
        configurations: &[(Hook, String, usize)],
    ) -> Option<(PathBuf, Config)> {
        let mut config = None;
        let mut checked = HashSet::new();
        for (hook, file, line) in configurations {
            if !checked.insert(file.clone()) {
                continue;
            }
            let key = format!("runners.custom.{}_args", hook.name());
            if let Some(c) = self.load_configuration(r, &key, file, *line) {
                if *hook == Hook::Config {
                    config = Some((PathBuf::from(file), c));
                }
            }
        }
        config
    }

    /// `jacamar --no-auth` hooks: their configuration must let jobs run without an account
    /// switch and without authorization (`downscope = "none"`, none of the `[auth]` keys
    /// that judge the GitLab user), else every job would be refused.
    fn no_auth_configuration(&mut self, r: &Runner<'_, '_>, file: &Path, c: &Config) {
        let mut problems = Vec::new();
        if c.auth.downscope != crate::config::Downscope::None {
            problems.push(format!(
                "[auth] downscope = \"{}\" in {}: `jacamar --no-auth` never switches accounts, \
                 so every job would be refused; set downscope = \"none\" or run the hooks \
                 through jacamar-auth",
                c.auth.downscope.as_str(),
                file.display()
            ));
        }
        for key in c.auth.policy_keys_set() {
            problems.push(format!(
                "[auth] {key} in {}: `jacamar --no-auth` does not authorize jobs, so every \
                 job would be refused; remove it or run the hooks through jacamar-auth",
                file.display()
            ));
        }
        for message in problems {
            self.push(
                Some(r.custom_line),
                Some(&r.label),
                "runners.custom.config_args",
                message,
            );
        }
    }

    /// One `--configuration FILE`: absolute and a valid jacamar configuration, else reported.
    fn load_configuration(
        &mut self,
        r: &Runner<'_, '_>,
        key: &str,
        file: &str,
        line: usize,
    ) -> Option<Config> {
        if !Path::new(file).is_absolute() {
            self.push(
                Some(line),
                Some(&r.label),
                key,
                format!(
                    "--configuration \"{file}\" is relative, and the runner starts every hook \
                     in its own temporary directory: give the absolute path"
                ),
            );
            return None;
        }
        match self.host.jacamar_config(Path::new(file)) {
            Ok(c) => Some(c),
            Err(e) => {
                let first = e.problems.first().map(|p| p.render("")).unwrap_or_default();
                let count = e.problems.len();
                self.push(
                    Some(line),
                    Some(&r.label),
                    key,
                    format!(
                        "--configuration \"{file}\" is not a valid jacamar configuration \
                         ({count} problem{}, first: {first}): fix it (jacamar-auth validate \
                         --configuration {file})",
                        if count == 1 { "" } else { "s" }
                    ),
                );
                None
            }
        }
    }

    /// The runner's graceful and force kill timeouts, compared with the kill_timeout of
    /// config_args' file when it loaded.
    fn kill_timeouts(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        config: Option<&(PathBuf, Config)>,
    ) -> (Duration, Duration) {
        let graceful = self.seconds(
            r,
            custom,
            "graceful_kill_timeout",
            RUNNER_DEFAULT_GRACEFUL_KILL_TIMEOUT,
        );
        let force = self.seconds(
            r,
            custom,
            "force_kill_timeout",
            RUNNER_DEFAULT_FORCE_KILL_TIMEOUT,
        );
        if let Some((file, c)) = config {
            self.timing(r, custom, file, c.general.kill_timeout, graceful, force);
        }
        (graceful, force)
    }

    /// A non-empty string key of `[runners.custom]` with its line; a wrong
    /// type is reported.
    fn string(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        key: &str,
    ) -> Option<(String, usize)> {
        let (k, v) = custom.get_key_value(key)?;
        let line = self.line(k.span().start);
        match v.get_ref() {
            DeValue::String(s) if s.is_empty() => {
                self.push(
                    Some(line),
                    Some(&r.label),
                    &format!("runners.custom.{key}"),
                    format!("is empty: set {key} = \"{INSTALLED_AUTH}\""),
                );
                None
            }
            DeValue::String(s) => Some((s.to_string(), line)),
            other => {
                self.push(
                    Some(line),
                    Some(&r.label),
                    &format!("runners.custom.{key}"),
                    format!(
                        "expected a string, found {}: set {key} = \"{INSTALLED_AUTH}\"",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// Check `<hook>_args` against the documented form; the `--configuration FILE` it gives.
    fn args(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        hook: Hook,
        no_auth: bool,
    ) -> Args {
        let mut out = Args {
            configuration: None,
        };
        let Some((words, line)) = self.arg_words(r, custom, hook) else {
            return out;
        };
        if no_auth && !leading_flags(custom, hook).contains(&NO_AUTH) {
            let message = format!(
                "another hook runs `jacamar --no-auth`: every hook must; put \"{NO_AUTH}\" \
                 first in {}",
                hook.args_key()
            );
            self.args_problem(r, hook, line, message);
        }
        let Some(after) = self.sub_command(r, hook, &words, line) else {
            return out;
        };
        out.configuration = self.after_sub_command(r, hook, after);
        if hook.takes_configuration() && out.configuration.is_none() {
            let key = hook.args_key();
            self.args_problem(
                r,
                hook,
                line,
                format!(
                    "no --configuration FILE: {} must be given the jacamar configuration; write \
                     {key} = {}",
                    hook.name(),
                    hook.documented_args(ARGS_PLACEHOLDER)
                ),
            );
        }
        out
    }

    /// Report a problem of `<hook>_args` at `line`.
    fn args_problem(&mut self, r: &Runner<'_, '_>, hook: Hook, line: usize, message: String) {
        let dotted = format!("runners.custom.{}", hook.args_key());
        self.push(Some(line), Some(&r.label), &dotted, message);
    }

    /// `<hook>_args` as words with their lines, and the key's line; a missing key, a value
    /// that is not an array, or an item that is not a string is reported and gives `None`.
    fn arg_words(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        hook: Hook,
    ) -> Option<(Vec<(String, usize)>, usize)> {
        let key = hook.args_key();
        let documented = hook.documented_args(ARGS_PLACEHOLDER);
        let Some((k, v)) = custom.get_key_value(key.as_str()) else {
            let dotted = format!("runners.custom.{key}");
            self.push(
                Some(r.custom_line),
                Some(&r.label),
                &dotted,
                format!("missing: jacamar-auth needs its sub-command; add {key} = {documented}"),
            );
            return None;
        };
        let line = self.line(k.span().start);
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            let message =
                format!("expected an array of strings, found {found}: write {key} = {documented}");
            self.args_problem(r, hook, line, message);
            return None;
        };
        let mut words = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let l = self.line(item.span().start);
            match item.get_ref() {
                DeValue::String(s) => words.push((s.to_string(), l)),
                other => {
                    let found = other.type_str();
                    let message =
                        format!("item {i} is {found}, not a string: write {key} = {documented}");
                    self.args_problem(r, hook, l, message);
                    return None;
                }
            }
        }
        Some((words, line))
    }

    /// The words after `[-u ...] <hook>`; a missing or wrong sub-command (or an unknown
    /// flag before it) is reported at its line (the key's `line` when absent) and gives `None`.
    fn sub_command<'w>(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        words: &'w [(String, usize)],
        line: usize,
    ) -> Option<&'w [(String, usize)]> {
        let key = hook.args_key();
        let documented = hook.documented_args(ARGS_PLACEHOLDER);
        let start = words
            .iter()
            .position(|(w, _)| !is_global_flag(w))
            .unwrap_or(words.len());
        let Some((sub, sub_line)) = words.get(start) else {
            let message = format!(
                "no sub-command: jacamar-auth needs '{}'; write {key} = {documented}",
                hook.name()
            );
            self.args_problem(r, hook, line, message);
            return None;
        };
        if sub == hook.name() {
            return Some(&words[start + 1..]);
        }
        let message = if sub.starts_with('-') {
            format!(
                "'{sub}' before the sub-command is not a global flag of jacamar-auth (only \
                 -u/--unobfuscated is; jacamar also takes --no-auth): write {key} = {documented}"
            )
        } else {
            format!(
                "the sub-command is '{sub}' but the {} hook needs '{}': write {key} = {documented}",
                hook.name(),
                hook.name()
            )
        };
        self.args_problem(r, hook, *sub_line, message);
        None
    }

    /// The words after the sub-command: only `--configuration FILE` (or `=FILE`) belongs
    /// there; anything else is reported. The FILE kept, with its line.
    fn after_sub_command(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        words: &[(String, usize)],
    ) -> Option<(String, usize)> {
        let key = hook.args_key();
        let mut configuration = None;
        let mut after = words.iter();
        while let Some((w, l)) = after.next() {
            if is_global_flag(w) {
                let message = format!(
                    "'{w}' comes after the sub-command '{}': global flags go before it; \
                     move it to the front ([\"{w}\", \"{}\", ...])",
                    hook.name(),
                    hook.name()
                );
                self.args_problem(r, hook, *l, message);
                continue;
            }
            let value = if w == "--configuration" {
                match after.next() {
                    Some((file, fl)) if !file.starts_with('-') && !file.is_empty() => {
                        Some((file.clone(), *fl))
                    }
                    _ => {
                        let message = format!(
                            "'--configuration' has no file after it: write {key} = {}",
                            hook.documented_args(ARGS_PLACEHOLDER)
                        );
                        self.args_problem(r, hook, *l, message);
                        continue;
                    }
                }
            } else {
                w.strip_prefix("--configuration=")
                    .map(|file| (file.to_string(), *l))
            };
            match value {
                Some((file, fl)) => self.configuration_arg(r, hook, &mut configuration, file, fl),
                None => self.unexpected_arg(r, hook, w, *l),
            }
        }
        configuration
    }

    /// A `--configuration FILE`: kept when the hook takes one and none is kept yet; a
    /// second one, or one given to prepare or run, is reported.
    fn configuration_arg(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        configuration: &mut Option<(String, usize)>,
        file: String,
        line: usize,
    ) {
        let key = hook.args_key();
        let message = if !hook.takes_configuration() {
            format!(
                "'--configuration {file}' is not passed to {}: that stage reads the \
                 configuration config handed over through job_env; write {key} = {}",
                hook.name(),
                hook.documented_args(ARGS_PLACEHOLDER)
            )
        } else if configuration.is_some() {
            format!(
                "'--configuration' is given twice: keep one ({key} = {})",
                hook.documented_args(&file)
            )
        } else {
            *configuration = Some((file, line));
            return;
        };
        self.args_problem(r, hook, line, message);
    }

    /// Report a word after the sub-command that jacamar-auth does not take there.
    fn unexpected_arg(&mut self, r: &Runner<'_, '_>, hook: Hook, word: &str, line: usize) {
        let why = if hook == Hook::Run {
            "the runner appends the script path and the stage name itself"
        } else {
            "jacamar-auth does not take it here"
        };
        let message = format!(
            "unexpected argument '{word}' ({why}): write {} = {}",
            hook.args_key(),
            hook.documented_args(ARGS_PLACEHOLDER)
        );
        self.args_problem(r, hook, line, message);
    }

    /// A whole number of seconds of `[runners.custom]`, as the runner reads it.
    fn seconds(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        key: &str,
        default: Duration,
    ) -> Duration {
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
                    self.push(
                        Some(line),
                        Some(&r.label),
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
                    self.push(
                        Some(line),
                        Some(&r.label),
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
                self.push(
                    Some(line),
                    Some(&r.label),
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

    /// `prepare_timeout` and `get_sources_timeout` of `[[runners]]`, each checked (see
    /// [`Checker::stage_timeout`]); either key in `[runners.custom]` is reported.
    fn stage_timeouts(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
    ) -> (Option<Duration>, Option<Duration>) {
        for key in STAGE_TIMEOUTS {
            if let Some((k, _)) = custom.get_key_value(key) {
                let line = self.line(k.span().start);
                self.push(
                    Some(line),
                    Some(&r.label),
                    &format!("runners.custom.{key}"),
                    format!(
                        "is not read in [runners.custom]: the runner (19.0 and later) reads \
                         {key} from the [[runners]] table itself; move it there"
                    ),
                );
            }
        }
        (
            self.stage_timeout(r, STAGE_TIMEOUTS[0]),
            self.stage_timeout(r, STAGE_TIMEOUTS[1]),
        )
    }

    /// One stage timeout of `[[runners]]` as the runner reads it (a Go duration string;
    /// a bare integer is nanoseconds): its value when it bounds the stage, `None` when
    /// unset; a value the runner cannot read, reads as nanoseconds, or ignores (<= 0) is
    /// reported.
    fn stage_timeout(&mut self, r: &Runner<'_, '_>, key: &str) -> Option<Duration> {
        let (k, v) = r.table.get_key_value(key)?;
        let line = self.line(k.span().start);
        let problem = match v.get_ref() {
            DeValue::String(text) => match stage_timeout_value(text) {
                Ok(d) => return Some(d),
                Err(why) => why,
            },
            DeValue::Integer(i) => format!(
                "{} is read by the runner as nanoseconds, not seconds: write a duration \
                 string, e.g. {key} = \"15m\"",
                i.as_str()
            ),
            other => format!(
                "expected a duration string, found {} (the runner refuses to load the \
                 file): write e.g. {key} = \"15m\"",
                other.type_str()
            ),
        };
        self.push(
            Some(line),
            Some(&r.label),
            &format!("runners.{key}"),
            problem,
        );
        None
    }

    fn timing(
        &mut self,
        r: &Runner<'_, '_>,
        custom: &DeTable<'_>,
        file: &Path,
        kill: Duration,
        graceful: Duration,
        force: Duration,
    ) {
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
            self.push(
                Some(line),
                Some(&r.label),
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
            self.push(
                Some(line),
                Some(&r.label),
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

/// The stage timeouts of `[[runners]]` newer runners read, in the order they apply.
const STAGE_TIMEOUTS: [&str; 2] = ["prepare_timeout", "get_sources_timeout"];

/// A stage timeout's string as the runner reads it (Go's `time.ParseDuration`): the
/// duration, or why the runner cannot use it.
fn stage_timeout_value(text: &str) -> Result<Duration, String> {
    let ignored = "the runner ignores a value <= 0 and bounds the stage by the job \
                   timeout: give a positive duration (e.g. \"15m\") or remove the key";
    if let Some(rest) = text.strip_prefix('-') {
        // Go accepts a negative duration; ours are never negative.
        return match super::duration::parse_duration(rest) {
            Ok(_) => Err(format!("\"{text}\" is negative: {ignored}")),
            Err(why) => Err(unreadable(text, &why)),
        };
    }
    match super::duration::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("\"{text}\" is zero: {ignored}")),
        Ok(d) => Ok(d),
        Err(why) => Err(unreadable(text, &why)),
    }
}

/// Why the runner refuses a duration string it cannot parse.
fn unreadable(text: &str, why: &str) -> String {
    format!(
        "\"{text}\" is not a duration the runner can read ({why}), so it refuses to load \
         the file: write e.g. \"15m\" or \"1h30m\""
    )
}

/// What is wrong with a hook's path before its file is looked at: not absolute, the
/// job-side `jacamar` named without `--no-auth` in the hooks' arguments, or `--no-auth`
/// given to something else than `jacamar`.
fn exec_path_problem(value: &str, no_auth: bool) -> Option<String> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return Some(format!(
            "\"{value}\" is not an absolute path: give jacamar-auth's full path \
             (e.g. \"{INSTALLED_AUTH}\")"
        ));
    }
    let is_jacamar = path.file_name().and_then(|n| n.to_str()) == Some("jacamar");
    if is_jacamar && !no_auth {
        return Some(format!(
            "\"{value}\" is the job-side binary: the hooks run jacamar-auth, \
             e.g. \"{}\" (or, for a runner that needs no account switch, `jacamar` with \
             \"{NO_AUTH}\" first in every hook's arguments)",
            path.with_file_name("jacamar-auth").display()
        ));
    }
    if no_auth && !is_jacamar {
        return Some(format!(
            "\"{value}\" is given \"{NO_AUTH}\", a flag of jacamar (the hooks without \
             authorization), not of jacamar-auth: run \"{}\", or drop \"{NO_AUTH}\"",
            path.with_file_name("jacamar").display()
        ));
    }
    None
}

/// `jacamar`'s flag for running the hooks without jacamar-auth (upstream's name).
const NO_AUTH: &str = "--no-auth";

fn is_unobfuscated(word: &str) -> bool {
    word == "-u" || word == "--unobfuscated"
}

/// A flag that goes before the sub-command: `-u`/`--unobfuscated`, and `--no-auth`.
fn is_global_flag(word: &str) -> bool {
    is_unobfuscated(word) || word == NO_AUTH
}

/// The string items of `<hook>_args` before the first one that is not a global flag
/// (nothing when the key is missing or not an array of strings: reported elsewhere).
fn leading_flags<'c>(custom: &'c DeTable<'_>, hook: Hook) -> Vec<&'c str> {
    let Some(DeValue::Array(items)) = custom.get(hook.args_key().as_str()).map(|v| v.get_ref())
    else {
        return Vec::new();
    };
    items
        .iter()
        .map_while(|i| match i.get_ref() {
            DeValue::String(s) if is_global_flag(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
