//! Tests of the runner `config.toml` checks on realistic files, against a fake
//! machine holding the README's paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::config::{Config, ConfigError, Problem};

const AUTH: &str = "/opt/jacamar/bin/jacamar-auth";
const JACAMAR_TOML: &str = "/etc/gitlab-runner/jacamar.toml";

/// The README's Deployment section, where the runner snippet and the minimal
/// configuration are documented: the tests check what admins copy.
const README: &str = include_str!("../../../README.md");

/// The first ```toml block of the README that contains `needle`.
fn readme_block(needle: &str) -> String {
    let mut rest = README;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("```").unwrap_or(body.len());
        if body[..end].contains(needle) {
            return body[..end].to_string();
        }
        rest = &body[end..];
    }
    panic!("README has no ```toml block containing {needle:?}");
}

fn readme_runner() -> String {
    readme_block("[runners.custom]")
}

fn readme_jacamar() -> String {
    readme_block("\nkill_timeout")
}

struct FakeHost {
    /// path -> canonical path, or the mode of a file that is not executable.
    execs: HashMap<PathBuf, Result<PathBuf, u32>>,
    /// path -> jacamar TOML text.
    configs: HashMap<PathBuf, String>,
}

impl FakeHost {
    /// The README's machine: jacamar-auth installed, jacamar.toml as documented.
    fn readme() -> FakeHost {
        let mut host = FakeHost {
            execs: HashMap::new(),
            configs: HashMap::new(),
        };
        host.exec(AUTH, Ok(AUTH));
        host.config(JACAMAR_TOML, &readme_jacamar());
        host
    }

    fn exec(&mut self, path: &str, state: Result<&str, u32>) {
        self.execs
            .insert(PathBuf::from(path), state.map(PathBuf::from));
    }

    fn config(&mut self, path: &str, text: &str) {
        self.configs.insert(PathBuf::from(path), text.to_string());
    }
}

impl RunnerHost for FakeHost {
    fn executable(&self, path: &Path) -> Result<PathBuf, ExecProblem> {
        match self.execs.get(path) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(mode)) => Err(ExecProblem::NotExecutable(*mode)),
            None => Err(ExecProblem::NotFound),
        }
    }

    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError> {
        match self.configs.get(path) {
            Some(text) => Config::from_str_named(text, &path.display().to_string()),
            None => Err(ConfigError::new(
                path.display().to_string(),
                vec![Problem::new(
                    None,
                    None,
                    "failed to read: No such file or directory (os error 2)",
                )],
            )),
        }
    }
}

/// A registered runner's whole config.toml around the README's `[[runners]]`
/// entry: global keys, a session server and the keys registration writes,
/// none of which the check reads.
fn full_file(runner_entry: &str) -> String {
    let entry = runner_entry.replacen(
        "[[runners]]\n",
        "[[runners]]\n  name = \"hpc-login\"\n  url = \"https://gitlab.example.com/\"\n  \
         id = 42\n  token = \"glrt-SECRET\"\n  token_obtained_at = 2024-05-01T10:00:00Z\n  \
         token_expires_at = 0001-01-01T00:00:00Z\n",
        1,
    );
    format!(
        "concurrent = 5\ncheck_interval = 0\nshutdown_timeout = 0\n\n[session_server]\n  \
         session_timeout = 1800\n\n{entry}    [runners.cache]\n      MaxUploadedArchiveSize = 0\n"
    )
}

fn check(text: &str, host: &FakeHost) -> Result<Vec<RunnerSummary>, RunnerConfigError> {
    check_runner_config(text, "config.toml", host)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
}

#[test]
fn readme_snippet_passes() {
    let host = FakeHost::readme();
    let summaries = check(&readme_runner(), &host).expect("README snippet must pass");
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!(s.runner, "#1");
    assert_eq!(s.exec, PathBuf::from(AUTH));
    assert_eq!(s.configuration, PathBuf::from(JACAMAR_TOML));
    assert_eq!(s.kill_timeout, Duration::from_secs(120));
    assert_eq!(s.graceful_kill_timeout, Duration::from_secs(600));
    assert_eq!(s.force_kill_timeout, Duration::from_secs(10));
    assert!(
        s.describe()
            .contains("kill_timeout 2m + force_kill_timeout 10s <= graceful_kill_timeout 10m"),
        "{}",
        s.describe()
    );
}

#[test]
fn registered_file_with_other_keys_passes_and_names_the_runner() {
    let host = FakeHost::readme();
    let text = full_file(&readme_runner());
    let summaries = check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(summaries[0].runner, "\"hpc-login\"");
}

#[test]
fn unobfuscated_before_the_sub_command_passes() {
    let host = FakeHost::readme();
    let text = readme_runner()
        .replace("[\"config\",", "[\"-u\", \"config\",")
        .replace("[\"run\"]", "[\"--unobfuscated\", \"run\"]")
        .replace(
            "\"--configuration\", \"/etc/gitlab-runner/jacamar.toml\"]\n    graceful",
            "\"--configuration=/etc/gitlab-runner/jacamar.toml\"]\n    graceful",
        );
    assert!(text.contains("\"-u\", \"config\""), "{text}");
    assert!(text.contains("--configuration=/etc"), "{text}");
    check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
}

#[test]
fn other_executors_are_ignored() {
    let host = FakeHost::readme();
    let text = format!(
        "[[runners]]\n  name = \"docker\"\n  executor = \"docker\"\n  [runners.docker]\n    \
         image = \"alpine\"\n\n{}",
        readme_runner()
    );
    let summaries = check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].runner, "#2");
}

#[test]
fn graceful_kill_timeout_boundary_is_kill_plus_force() {
    let host = FakeHost::readme();
    // 120 s + 10 s = 130 s: exactly enough.
    let text =
        readme_runner().replace("graceful_kill_timeout = 600", "graceful_kill_timeout = 130");
    check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
    // TOML's other integer forms: 0x82 = 1_30 = 130.
    for written in ["0x82", "1_30"] {
        let text = readme_runner().replace(
            "graceful_kill_timeout = 600",
            &format!("graceful_kill_timeout = {written}"),
        );
        check(&text, &host).unwrap_or_else(|e| panic!("{written}: {}", e.report()));
    }
    let text = readme_runner().replace(
        "graceful_kill_timeout = 600",
        "graceful_kill_timeout = 0x81",
    );
    assert!(check(&text, &host).is_err(), "0x81 = 129 < 130");
    // With force_kill_timeout = 30, 130 is no longer enough; 150 is.
    let text = readme_runner().replace(
        "graceful_kill_timeout = 600",
        "graceful_kill_timeout = 130\n    force_kill_timeout = 30",
    );
    let err = check(&text, &host).expect_err("130 < 120 + 30");
    assert!(err.report().contains("= 150"), "{}", err.report());
    let text = text.replace("graceful_kill_timeout = 130", "graceful_kill_timeout = 150");
    check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
}

/// One mistake at a time in the README's snippet (or its jacamar.toml): the
/// only problem reported is on the mistaken line, names the key, says what
/// to write.
/// One mistake in the README's runner entry: `from` replaced with `to`.
struct Mistake {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    /// Text of the line the problem must point at (after the change).
    at: &'static str,
    key: &'static str,
    says: &'static str,
}

/// Each mistake of [`each_mistake_is_one_line_with_its_line_and_key`].
const MISTAKES: &[Mistake] = &[
    Mistake {
        name: "run_exec is another binary",
        from: "run_exec     = \"/opt/jacamar/bin/jacamar-auth\"",
        to: "run_exec     = \"/usr/local/bin/jacamar-auth\"",
        at: "run_exec",
        key: "runners.custom.run_exec",
        says: "does not exist",
    },
    Mistake {
        name: "prepare_exec is the job-side binary",
        from: "prepare_exec = \"/opt/jacamar/bin/jacamar-auth\"",
        to: "prepare_exec = \"/opt/jacamar/bin/jacamar\"",
        at: "prepare_exec",
        key: "runners.custom.prepare_exec",
        says: "\"/opt/jacamar/bin/jacamar-auth\"",
    },
    Mistake {
        name: "relative exec",
        from: "cleanup_exec = \"/opt/jacamar/bin/jacamar-auth\"",
        to: "cleanup_exec = \"jacamar-auth\"",
        at: "cleanup_exec",
        key: "runners.custom.cleanup_exec",
        says: "absolute path",
    },
    Mistake {
        name: "config without --configuration",
        from:
            "config_args  = [\"config\", \"--configuration\", \"/etc/gitlab-runner/jacamar.toml\"]",
        to: "config_args  = [\"config\"]",
        at: "config_args",
        key: "runners.custom.config_args",
        says: "no --configuration FILE",
    },
    Mistake {
        name: "-u after the sub-command",
        from: "config_args  = [\"config\",",
        to: "config_args  = [\"config\", \"-u\",",
        at: "config_args",
        key: "runners.custom.config_args",
        says: "move it to the front",
    },
    Mistake {
        name: "wrong sub-command",
        from: "run_args     = [\"run\"]",
        to: "run_args     = [\"prepare\"]",
        at: "run_args",
        key: "runners.custom.run_args",
        says: "needs 'run'",
    },
    Mistake {
        name: "run_args with the script",
        from: "run_args     = [\"run\"]",
        to: "run_args     = [\"run\", \"build_script\"]",
        at: "run_args",
        key: "runners.custom.run_args",
        says: "the runner appends the script path",
    },
    Mistake {
        name: "prepare given --configuration",
        from: "prepare_args = [\"prepare\"]",
        to:
            "prepare_args = [\"prepare\", \"--configuration\", \"/etc/gitlab-runner/jacamar.toml\"]",
        at: "prepare_args",
        key: "runners.custom.prepare_args",
        says: "job_env",
    },
    Mistake {
        name: "unknown global flag",
        from: "prepare_args = [\"prepare\"]",
        to: "prepare_args = [\"--debug\", \"prepare\"]",
        at: "prepare_args",
        key: "runners.custom.prepare_args",
        says: "not a global flag",
    },
    Mistake {
        name: "cleanup reads another file",
        from:
            "cleanup_args = [\"cleanup\", \"--configuration\", \"/etc/gitlab-runner/jacamar.toml\"]",
        to: "cleanup_args = [\"cleanup\", \"--configuration\", \"/etc/gitlab-runner/other.toml\"]",
        at: "cleanup_args",
        key: "runners.custom.cleanup_args",
        says: "use \"/etc/gitlab-runner/jacamar.toml\" in both",
    },
    Mistake {
        name: "missing hook",
        from: "    run_exec     = \"/opt/jacamar/bin/jacamar-auth\"\n",
        to: "",
        at: "[runners.custom]",
        key: "runners.custom.run_exec",
        says: "add run_exec = \"/opt/jacamar/bin/jacamar-auth\"",
    },
    Mistake {
        name: "args as a string",
        from: "run_args     = [\"run\"]",
        to: "run_args     = \"run\"",
        at: "run_args",
        key: "runners.custom.run_args",
        says: "write run_args = [\"run\"]",
    },
    Mistake {
        name: "graceful_kill_timeout below kill_timeout",
        from: "graceful_kill_timeout = 600",
        to: "graceful_kill_timeout = 60",
        at: "graceful_kill_timeout",
        key: "runners.custom.graceful_kill_timeout",
        says: "set graceful_kill_timeout = 130",
    },
    Mistake {
        name: "graceful_kill_timeout without room for force_kill_timeout",
        from: "graceful_kill_timeout = 600",
        to: "graceful_kill_timeout = 125",
        at: "graceful_kill_timeout",
        key: "runners.custom.graceful_kill_timeout",
        says: "+ force_kill_timeout (10s) = 2m10s exceeds",
    },
    Mistake {
        name: "graceful_kill_timeout of 0 means the default",
        from: "graceful_kill_timeout = 600",
        to: "graceful_kill_timeout = 0",
        at: "graceful_kill_timeout",
        key: "runners.custom.graceful_kill_timeout",
        says: "default of 600 s",
    },
    Mistake {
        name: "force_kill_timeout as a duration string",
        from: "graceful_kill_timeout = 600",
        to: "graceful_kill_timeout = 600\n    force_kill_timeout = \"10s\"",
        at: "force_kill_timeout",
        key: "runners.custom.force_kill_timeout",
        says: "whole number of seconds",
    },
];

#[test]
fn each_mistake_is_one_line_with_its_line_and_key() {
    for case in MISTAKES {
        let mut host = FakeHost::readme();
        // A second valid file, so that naming it is the only mistake.
        host.config("/etc/gitlab-runner/other.toml", &readme_jacamar());
        let original = readme_runner();
        assert!(
            original.contains(case.from),
            "{}: {:?} not in README",
            case.name,
            case.from
        );
        let text = original.replacen(case.from, case.to, 1);
        let err = match check(&text, &host) {
            Ok(_) => panic!("{}: passed:\n{text}", case.name),
            Err(e) => e,
        };
        assert_eq!(err.problems.len(), 1, "{}: {}", case.name, err.report());
        let p = &err.problems[0];
        assert_eq!(
            p.line,
            Some(line_of(&text, case.at)),
            "{}: {}",
            case.name,
            err.report()
        );
        assert_eq!(p.key, case.key, "{}", case.name);
        assert_eq!(p.runner.as_deref(), Some("#1"), "{}", case.name);
        assert!(
            p.message.contains(case.says),
            "{}: {}",
            case.name,
            p.message
        );
        let line = err.report();
        assert_eq!(line.lines().count(), 1, "{}: {line}", case.name);
        assert!(
            line.starts_with(&format!(
                "config.toml:{}: runner #1: {}: ",
                p.line.unwrap_or(0),
                case.key
            )),
            "{}: {line}",
            case.name
        );
    }
}

#[test]
fn kill_timeout_at_the_runner_default_is_refused() {
    let mut host = FakeHost::readme();
    host.config(
        JACAMAR_TOML,
        &readme_jacamar().replace("kill_timeout = \"120s\"", "kill_timeout = \"10m\""),
    );
    let text: String = readme_runner()
        .lines()
        .filter(|l| !l.trim_start().starts_with("graceful_kill_timeout"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("graceful_kill_timeout ="), "{text}");
    let err = check(&text, &host).expect_err("10m is not below the default 600 s");
    assert_eq!(err.problems.len(), 1, "{}", err.report());
    let p = &err.problems[0];
    assert_eq!(p.line, Some(line_of(&text, "[runners.custom]")));
    assert!(
        p.message.contains("unset: the runner's default 10m"),
        "{}",
        p.message
    );
    assert!(
        p.message.contains("add graceful_kill_timeout = 610"),
        "{}",
        p.message
    );
}

#[test]
fn invalid_or_missing_jacamar_configuration_is_reported_once() {
    let mut host = FakeHost::readme();
    host.config(
        JACAMAR_TOML,
        "[general]\nexecutor = \"shel\"\ndata_dir = \"/ecp\"\n",
    );
    let text = readme_runner();
    let err = check(&text, &host).expect_err("invalid jacamar.toml");
    assert_eq!(err.problems.len(), 1, "{}", err.report());
    let p = &err.problems[0];
    assert_eq!(p.key, "runners.custom.config_args");
    assert_eq!(p.line, Some(line_of(&text, "config_args")));
    assert!(
        p.message
            .contains("jacamar-auth validate --configuration /etc/gitlab-runner/jacamar.toml"),
        "{}",
        p.message
    );

    host.configs.clear();
    let err = check(&text, &host).expect_err("missing jacamar.toml");
    assert_eq!(err.problems.len(), 1, "{}", err.report());
    assert!(
        err.problems[0].message.contains("failed to read"),
        "{}",
        err.report()
    );
}

#[test]
fn not_executable_and_different_files() {
    let mut host = FakeHost::readme();
    host.exec(AUTH, Err(0o644));
    let err = check(&readme_runner(), &host).expect_err("not executable");
    // All four hooks name it: four lines, one per key.
    assert_eq!(err.problems.len(), 4, "{}", err.report());
    assert!(err.problems.iter().all(|p| p.message.contains("mode 0644")));

    // Two paths, one file (a symlink): fine. Two files: refused.
    let mut host = FakeHost::readme();
    host.exec("/usr/bin/jacamar-auth", Ok(AUTH));
    let text = readme_runner().replacen(
        "run_exec     = \"/opt/jacamar/bin/jacamar-auth\"",
        "run_exec     = \"/usr/bin/jacamar-auth\"",
        1,
    );
    check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
    host.exec("/usr/bin/jacamar-auth", Ok("/usr/bin/jacamar-auth"));
    let err = check(&text, &host).expect_err("two binaries");
    assert_eq!(err.problems.len(), 1, "{}", err.report());
    assert!(
        err.problems[0]
            .message
            .contains("set run_exec = \"/opt/jacamar/bin/jacamar-auth\""),
        "{}",
        err.report()
    );
}

#[test]
fn file_level_problems() {
    let host = FakeHost::readme();
    let cases: &[(&str, Option<usize>, &str)] = &[
        ("concurrent = 1\n", None, "no [[runners]] entry"),
        (
            "[[runners]]\n  name = \"d\"\n  executor = \"docker\"\n",
            None,
            "no [[runners]] entry has executor = \"custom\"",
        ),
        (
            "[[runners]]\n  name = \"c\"\n  executor = \"custom\"\n",
            Some(2),
            "without a [runners.custom] table",
        ),
        (
            // A mistyped table is that one problem, not also "without a table".
            "[[runners]]\n  name = \"c\"\n  executor = \"custom\"\n  custom = 3\n",
            Some(4),
            "expected a table ([runners.custom]), found integer",
        ),
        (
            "[[runners]]\n  executor = \"custom\"\n  [runners.custom]\n    config_exec = \"/opt/jacamar/bin/jacamar-auth\n",
            Some(4),
            "invalid TOML",
        ),
    ];
    for (text, line, says) in cases {
        let err = check(text, &host).expect_err(text);
        assert_eq!(err.problems.len(), 1, "{text}: {}", err.report());
        assert_eq!(err.problems[0].line, *line, "{text}: {}", err.report());
        assert!(
            err.problems[0].message.contains(says),
            "{text}: {}",
            err.report()
        );
    }
}

#[test]
fn every_problem_of_every_runner_is_listed_in_file_order() {
    let host = FakeHost::readme();
    let good = readme_runner();
    let bad = good
        .replace("[\"run\"]", "[\"run\", \"x\"]")
        .replace("graceful_kill_timeout = 600", "graceful_kill_timeout = 60");
    let text = format!("{bad}\n{good}\n{bad}");
    let err = check(&text, &host).expect_err("two bad runners");
    assert_eq!(err.problems.len(), 4, "{}", err.report());
    let lines: Vec<usize> = err.problems.iter().filter_map(|p| p.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    let runners: Vec<&str> = err
        .problems
        .iter()
        .filter_map(|p| p.runner.as_deref())
        .collect();
    assert_eq!(runners, ["#1", "#1", "#3", "#3"]);
}

/// The README's runner wired to `jacamar --no-auth` (upstream's way for a runner that needs
/// no account switch): every hook runs `jacamar` with `--no-auth` before the sub-command.
fn no_auth_runner() -> String {
    let text = readme_runner().replace(AUTH, "/opt/jacamar/bin/jacamar");
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().contains("_args") {
            out.push_str(&line.replacen("[\"", "[\"--no-auth\", \"", 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn no_auth_host(auth_lines: &str) -> FakeHost {
    let mut host = FakeHost::readme();
    host.exec("/opt/jacamar/bin/jacamar", Ok("/opt/jacamar/bin/jacamar"));
    host.config(
        JACAMAR_TOML,
        &readme_jacamar().replace("[auth]\n", &format!("[auth]\n{auth_lines}")),
    );
    host
}

#[test]
fn jacamar_no_auth_hooks_pass() {
    let text = no_auth_runner();
    assert!(text.contains("[\"--no-auth\", \"config\""), "{text}");
    check(&text, &no_auth_host("")).unwrap_or_else(|e| panic!("{}", e.report()));
}

#[test]
fn jacamar_no_auth_hooks_need_the_flag_everywhere_and_a_configuration_without_policy() {
    // One hook without --no-auth.
    let text = no_auth_runner().replacen("[\"--no-auth\", \"run\"]", "[\"run\"]", 1);
    let e = check(&text, &no_auth_host("")).unwrap_err();
    let report = e.report();
    assert!(
        report.contains("run_args") && report.contains("every hook must"),
        "{report}"
    );
    // The job-side binary without --no-auth at all.
    let text = no_auth_runner().replace("\"--no-auth\", ", "");
    let report = check(&text, &no_auth_host("")).unwrap_err().report();
    assert!(report.contains("is the job-side binary"), "{report}");
    // --no-auth given to jacamar-auth.
    let text = no_auth_runner().replace("/opt/jacamar/bin/jacamar\"", &format!("{AUTH}\""));
    let report = check(&text, &no_auth_host("")).unwrap_err().report();
    assert!(report.contains("a flag of jacamar"), "{report}");
    // A configuration with a policy key: every job would be refused.
    let report = check(
        &no_auth_runner(),
        &no_auth_host("user_allowlist = [\"alice\"]\n"),
    )
    .unwrap_err()
    .report();
    assert!(
        report.contains("[auth] user_allowlist") && report.contains("--no-auth"),
        "{report}"
    );
}

/// `readme_runner()` with `lines` in the `[[runners]]` table itself.
fn with_runner_keys(lines: &str) -> String {
    readme_runner().replacen(
        "  executor = \"custom\"\n",
        &format!("  executor = \"custom\"\n{lines}"),
        1,
    )
}

#[test]
fn stage_timeouts_of_newer_runners_are_read_and_shown() {
    let host = FakeHost::readme();
    let text = with_runner_keys("  prepare_timeout = \"15m\"\n  get_sources_timeout = \"1h30m\"\n");
    let summaries = check(&text, &host).unwrap_or_else(|e| panic!("{}", e.report()));
    let s = &summaries[0];
    assert_eq!(s.prepare_timeout, Some(Duration::from_secs(900)));
    assert_eq!(s.get_sources_timeout, Some(Duration::from_secs(5400)));
    assert!(
        s.describe()
            .ends_with("; prepare_timeout 15m; get_sources_timeout 1h30m)"),
        "{}",
        s.describe()
    );
    // Unset: nothing said, nothing bounded but the job timeout.
    let summaries = check(&readme_runner(), &host).unwrap();
    assert_eq!(summaries[0].prepare_timeout, None);
    assert!(!summaries[0].describe().contains("prepare_timeout"));
}

#[test]
fn stage_timeouts_the_runner_cannot_use_are_reported_on_their_line() {
    let host = FakeHost::readme();
    for (line, key, wants) in [
        (
            "  prepare_timeout = 900\n",
            "runners.prepare_timeout",
            &[
                "900 is read by the runner as nanoseconds",
                "prepare_timeout = \"15m\"",
            ][..],
        ),
        (
            "  get_sources_timeout = \"15 minutes\"\n",
            "runners.get_sources_timeout",
            &[
                "\"15 minutes\" is not a duration the runner can read",
                "refuses to load",
            ][..],
        ),
        (
            "  prepare_timeout = \"0s\"\n",
            "runners.prepare_timeout",
            &["\"0s\" is zero", "bounds the stage by the job timeout"][..],
        ),
        (
            "  get_sources_timeout = \"-5m\"\n",
            "runners.get_sources_timeout",
            &["\"-5m\" is negative"][..],
        ),
        (
            "  prepare_timeout = true\n",
            "runners.prepare_timeout",
            &["expected a duration string, found boolean"][..],
        ),
    ] {
        let text = with_runner_keys(line);
        let err = check(&text, &host).expect_err(line);
        assert_eq!(err.problems.len(), 1, "{line}: {}", err.report());
        let p = &err.problems[0];
        assert_eq!(p.key, key, "{line}");
        assert_eq!(p.line, Some(line_of(&text, line.trim())), "{line}");
        for want in wants {
            assert!(p.message.contains(want), "{line}: {}", p.message);
        }
    }
    // In [runners.custom] the runner does not read them.
    let text = readme_runner().replace(
        "    graceful_kill_timeout",
        "    prepare_timeout = \"15m\"\n    graceful_kill_timeout",
    );
    let err = check(&text, &host).expect_err("prepare_timeout in [runners.custom]");
    assert_eq!(err.problems.len(), 1, "{}", err.report());
    assert_eq!(err.problems[0].key, "runners.custom.prepare_timeout");
    assert!(
        err.problems[0].message.contains("move it there"),
        "{}",
        err.report()
    );
}
