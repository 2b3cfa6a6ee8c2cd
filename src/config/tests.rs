//! Tests of the whole pipeline: text -> Config or every problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::schema::{self, Kind, KEYS, TABLES};
use super::*;

const BASE: &str = "\
[general]
executor = \"shell\"
data_dir = \"/ecp\"

[auth]
downscope = \"none\"
";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "test.toml")
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!(
            "expected a valid config, got:\n{}\n--- text ---\n{text}",
            e.report()
        ),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected problems for:\n{text}"),
        Err(e) => e.problems,
    }
}

/// BASE with `line` added to `table` (a new header for tables BASE lacks).
fn with_key(table: &str, line: &str) -> String {
    match table {
        "general" => BASE.replacen(
            "data_dir = \"/ecp\"\n",
            &format!("data_dir = \"/ecp\"\n{line}\n"),
            1,
        ),
        "auth" => format!("{BASE}{line}\n"),
        "" => format!("{line}\n{BASE}"),
        // [auth.runas] needs a downscope that switches accounts.
        "auth.runas" => format!("{}\n[auth.runas]\n{line}\n", setuid_base()),
        other => format!("{BASE}\n[{other}]\n{line}\n"),
    }
}

/// BASE with `downscope = "setuid"` (same lines).
fn setuid_base() -> String {
    BASE.replace("downscope = \"none\"", "downscope = \"setuid\"")
}

/// 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
}

#[test]
fn defaults_of_a_minimal_file() {
    let c = ok(BASE);
    assert_eq!(
        c.general,
        General {
            executor: Executor::Shell,
            data_dir: "/ecp".into(),
            retain_logs: false,
            custom_build_dir: false,
            name: None,
            kill_timeout: Duration::from_secs(120),
            shell_path: None,
            job_message: None,
            gitlab_server: None,
            tls_ca_file: None,
            unrestricted_cmd_line: false,
            static_builds_dir: false,
            static_min_days: 7,
            group_permissions: false,
            jwt_env_variable: None,
            unlimited_stack: false,
            limit_build_dir: false,
            max_build_dir: 0,
            uncap_build_dir_cleanup: false,
            file_lock_debug: false,
            user_enabled_limit: false,
            ff_custom_data_dir: false,
            ff_git_interactive: false,
            run_mechanism: None,
            podman: Default::default(),
            charliecloud: Default::default(),
        }
    );
    assert_eq!(
        c.auth,
        Auth {
            downscope: Downscope::None,
            jacamar_path: None,
            max_env_chars: 10_000,
            lists_pre_validation: false,
            root_dir_creation: false,
            user_allowlist: vec![],
            user_blocklist: vec![],
            groups_allowlist: vec![],
            groups_blocklist: vec![],
            shell_allowlist: vec![],
            pipeline_source_allowlist: vec![],
            jwt_exp_delay: Duration::from_secs(300),
            jwt_required_aud: None,
            allow_bot_accounts: false,
            no_new_privs: false,
            run_stage_allowlist: vec![],
            enforce_nologin: false,
            ff_getent_check: false,
            minimum_uid: None,
            allow_nologin_shells: false,
            runas: None,
            logging: Logging::default(),
            seccomp: Seccomp::default(),
        }
    );
    assert_eq!(c.batch, Batch::default());
    assert_eq!(c.source, BASE);
    assert_eq!(c.source, BASE);
}

#[test]
fn default_structs_match_the_documented_defaults() {
    let l = Logging::default();
    assert!(!l.enabled);
    assert_eq!(l.location, LogLocation::Syslog);
    assert_eq!(l.level, LogLevel::Info);
    assert_eq!((l.network, l.address), (None, None));
    let b = Batch::default();
    assert_eq!(b.arguments_variable, ["SCHEDULER_PARAMETERS"]);
    assert_eq!(b.command_delay, Duration::from_secs(10));
    assert_eq!(b.nfs_timeout, Duration::from_secs(30));
    assert_eq!(Seccomp::default().block_calls, Vec::<String>::new());
    // The schema's documented defaults agree with the parsed ones.
    let c = ok(BASE);
    let durations = [
        ("general", "kill_timeout", c.general.kill_timeout),
        ("auth", "jwt_exp_delay", c.auth.jwt_exp_delay),
        ("batch", "command_delay", c.batch.command_delay),
        ("batch", "nfs_timeout", c.batch.nfs_timeout),
        (
            "batch",
            "transient_retry_window",
            c.batch.transient_retry_window,
        ),
    ];
    for (table, key, value) in durations {
        let spec = schema::lookup(table, key).expect("in schema");
        assert_eq!(parse_duration(spec.default), Ok(value), "{table}.{key}");
    }
    let ints = [
        (
            "general",
            "static_min_days",
            u64::from(c.general.static_min_days),
        ),
        (
            "general",
            "max_build_dir",
            u64::from(c.general.max_build_dir),
        ),
        ("auth", "max_env_chars", c.auth.max_env_chars as u64),
    ];
    for (table, key, value) in ints {
        let spec = schema::lookup(table, key).expect("in schema");
        assert_eq!(spec.default.parse::<u64>(), Ok(value), "{table}.{key}");
    }
    for spec in KEYS.iter().filter(|k| k.kind == Kind::Bool) {
        assert_eq!(spec.default, "false", "{}.{}", spec.table, spec.key);
    }
}

/// A value of the wrong type for `kind`, and what the message must say.
fn wrong_value(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Bool => (
            "\"yes\"",
            "expected a boolean (true or false), found string",
        ),
        Kind::Integer => ("\"7\"", "expected an integer, found string"),
        Kind::StringArray => ("\"x\"", "expected an array of strings, found string"),
        Kind::Duration => (
            "120",
            "expected a duration string such as \"30s\", found integer",
        ),
        Kind::String | Kind::Path | Kind::Choice(_) => ("42", "expected a string, found integer"),
    }
}

#[test]
fn every_type_error_names_key_and_line() {
    for spec in KEYS {
        let (value, want) = wrong_value(spec.kind);
        let mut text = with_key(spec.table, &format!("{} = {value}", spec.key));
        if spec.table == "auth.runas" && spec.key != "validation_script" {
            text.push_str("validation_script = \"/opt/runas\"\n");
        }
        if spec.table == "general" && (spec.key == "executor" || spec.key == "data_dir") {
            // Replace the valid line instead of adding a duplicate key.
            text = BASE.replacen(
                &format!("{} = ", spec.key),
                &format!("{} = {value}\n#", spec.key),
                1,
            );
        }
        if spec.table == "auth" && spec.key == "downscope" {
            text = BASE.replace("downscope = \"none\"", &format!("downscope = {value}"));
        }
        let found = problems(&text);
        let dotted = format!("{}.{}", spec.table, spec.key);
        let line = line_of(&text, &format!("{} = {value}", spec.key));
        let p = found
            .iter()
            .find(|p| p.key.as_deref() == Some(dotted.as_str()))
            .unwrap_or_else(|| panic!("{dotted}: no problem in {found:?}"));
        assert_eq!(p.line, Some(line), "{dotted}: {p:?}");
        assert!(p.message.contains(want), "{dotted}: {}", p.message);
    }
}

#[test]
fn wrong_array_item_names_index_and_its_line() {
    let text = format!("{BASE}user_blocklist = [\n  \"usr2\",\n  3,\n]\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key.as_deref(), Some("auth.user_blocklist"));
    assert_eq!(found[0].line, Some(9));
    assert!(found[0].message.contains("found integer at index 1"));
}

#[test]
fn unknown_key_in_each_table() {
    for table in TABLES {
        let mut text = with_key(table, "bogus_setting = 1");
        if *table == "auth.runas" {
            text.push_str("validation_script = \"/opt/runas\"\n");
        }
        let found = problems(&text);
        assert_eq!(found.len(), 1, "[{table}]: {found:?}");
        let dotted = format!("{table}.bogus_setting");
        assert_eq!(found[0].key.as_deref(), Some(dotted.as_str()));
        assert_eq!(found[0].line, Some(line_of(&text, "bogus_setting")));
        assert_eq!(found[0].message, format!("unknown key '{dotted}'"));
    }
}

#[test]
fn typo_of_every_key_suggests_it() {
    for spec in KEYS.iter().filter(|k| k.key.len() >= 5) {
        // Drop the second-to-last character: a typical typo.
        let mut typo: Vec<char> = spec.key.chars().collect();
        typo.remove(typo.len() - 2);
        let typo: String = typo.into_iter().collect();
        let (value, _) = wrong_value(spec.kind);
        let mut text = with_key(spec.table, &format!("{typo} = {value}"));
        if spec.table == "auth.runas" {
            text.push_str("validation_script = \"/opt/runas\"\n");
        }
        let found = problems(&text);
        let dotted = format!("{}.{typo}", spec.table);
        let p = found
            .iter()
            .find(|p| p.key.as_deref() == Some(dotted.as_str()))
            .unwrap_or_else(|| panic!("{dotted}: {found:?}"));
        assert_eq!(
            p.message,
            format!("unknown key '{dotted}' (did you mean '{}'?)", spec.key),
        );
    }
}

#[test]
fn typo_in_user_blocklist_is_named() {
    let text = format!("{BASE}user_blocklst = [\"usr2\"]\n");
    let err = parse(&text).expect_err("typo");
    assert_eq!(
        err.report(),
        "test.toml: Near line 7 (last key parsed 'auth.user_blocklst'): \
         unknown key 'auth.user_blocklst' (did you mean 'user_blocklist'?)"
    );
}

#[test]
fn unknown_tables_and_misplaced_keys() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[genral]\nname = \"x\"",
            "genral",
            "unknown table [genral] (did you mean [general]?)",
        ),
        (
            "[Auth]\nno_new_privs = true",
            "Auth",
            "unknown table [Auth]: table names are lowercase: did you mean [auth]?",
        ),
        (
            "[frobnicate]\n",
            "frobnicate",
            "unknown table [frobnicate] (known tables: [general], [auth], [batch])",
        ),
        (
            "[auth.seccom]\ndisabled = true",
            "auth.seccom",
            "unknown table [auth.seccom] (did you mean [auth.seccomp]?)",
        ),
        (
            "[auth.Logging]\nenabled = true",
            "auth.Logging",
            "table names are lowercase: did you mean [auth.logging]?",
        ),
        (
            "[general.extra]\nx = 1",
            "general.extra",
            "unknown table [general.extra]",
        ),
        (
            "[[auth.seccomp]]\ndisabled = true",
            "auth.seccomp",
            "[[auth.seccomp]] declares an array of tables; write [auth.seccomp]",
        ),
        (
            "[auth]\nrunas = \"bob\"",
            "auth.runas",
            "expected a table, found string",
        ),
    ];
    for (extra, key, want) in cases {
        let text = if extra.starts_with("[auth]") {
            BASE.replace("[auth]\n", &format!("{extra}\n"))
        } else {
            format!("{BASE}\n{extra}\n")
        };
        let found = problems(&text);
        let p = found
            .iter()
            .find(|p| p.key.as_deref() == Some(*key))
            .unwrap_or_else(|| panic!("{key}: {found:?}"));
        assert!(p.message.contains(want), "{key}: {}", p.message);
        assert!(p.line.is_some(), "{key}: {p:?}");
    }
}

#[test]
fn top_level_key_points_to_its_table() {
    let found = problems(&with_key("", "retain_logs = true"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].line, Some(1));
    assert_eq!(
        found[0].message,
        "unknown key 'retain_logs' (keys belong in a table: did you mean [general] retain_logs?)"
    );
    let found = problems(&with_key("auth", "retain_logs = true"));
    assert_eq!(
        found[0].message,
        "unknown key 'auth.retain_logs' (it belongs in [general])"
    );
}

/// A syntax error (here a missing `]`, on line 8) names its line and the last key parsed
/// before it, as upstream's messages do (raw::parse's problem, reported as is).
#[test]
fn malformed_toml_names_line_and_last_key() {
    let text = with_key(
        "auth",
        "user_allowlist = [\"usr1\"]\nuser_blocklist = [\"usr2\", \"usr3\"\n\
         groups_allowlist = [\"grp1\", \"grp2\"]",
    );
    let err = parse(&text).expect_err("malformed");
    assert_eq!(err.problems.len(), 1);
    let problem = &err.problems[0];
    assert_eq!(problem.line, Some(8), "{problem:?}");
    assert_eq!(problem.key.as_deref(), Some("auth.user_blocklist"));
    let report = err.report();
    assert!(
        report.starts_with(
            "test.toml: Near line 8 (last key parsed 'auth.user_blocklist'): invalid TOML"
        ),
        "{report}"
    );
    assert!(err.to_string().contains("Near line 8"), "{err}");
}

#[test]
fn bad_durations_name_the_key() {
    let cases = [
        ("general", "kill_timeout", "\"10\"", "missing unit"),
        ("general", "kill_timeout", "\"-5s\"", "negative"),
        ("general", "kill_timeout", "\"\"", "empty"),
        ("general", "kill_timeout", "\"0s\"", "greater than 0s"),
        ("auth", "jwt_exp_delay", "\"5 minutes\"", "unknown unit"),
        ("batch", "command_delay", "\"2d\"", "unknown unit \"d\""),
        ("batch", "nfs_timeout", "\"fast\"", "expected a number"),
        ("batch", "queue_heartbeat", "\"500ms\"", "at least 1s"),
    ];
    for (table, key, value, want) in cases {
        let text = with_key(table, &format!("{key} = {value}"));
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{key}={value}: {found:?}");
        assert_eq!(
            found[0].key.as_deref(),
            Some(format!("{table}.{key}").as_str())
        );
        assert_eq!(found[0].line, Some(line_of(&text, key)));
        assert!(found[0].message.contains(key), "{}", found[0].message);
        assert!(found[0].message.contains(want), "{}", found[0].message);
    }
    let c = ok(&with_key("general", "kill_timeout = \"1m30s\""));
    assert_eq!(c.general.kill_timeout, Duration::from_secs(90));
}

#[test]
fn resubmit_limit_is_bounded_and_named() {
    let text = with_key("batch", "resubmit_limit = 11");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key.as_deref(), Some("batch.resubmit_limit"));
    assert_eq!(found[0].line, Some(line_of(&text, "resubmit_limit")));
    assert_eq!(
        ok(&with_key("batch", "resubmit_limit = 3"))
            .batch
            .resubmit_limit,
        3
    );
    assert_eq!(ok(BASE).batch.resubmit_limit, 0);
    assert_eq!(ok(BASE).batch.queue_heartbeat, Duration::from_secs(120));
}

#[test]
fn bad_choices_list_the_allowed_values() {
    let text = BASE
        .replace("\"shell\"", "\"Shell\"")
        .replace("\"none\"", "\"root\"");
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].key.as_deref(), Some("general.executor"));
    assert!(found[0].message.contains(
        "expected one of \"shell\", \"slurm\", \"sbatch\", \"pbs\", \"flux\", \"lsf\", \"bsub\", \"cobalt\", \"qsub\" (values are lowercase)"
    ), "{}", found[0].message);
    assert_eq!(found[1].key.as_deref(), Some("auth.downscope"));
    assert!(found[1].message.contains("\"none\", \"setuid\", \"sudo\""));
    let empty = problems(
        &BASE
            .replace("\"shell\"", "\"\"")
            .replace("\"none\"", "\"\""),
    );
    assert_eq!(empty.len(), 2, "{empty:?}");
    assert!(empty[0]
        .message
        .starts_with("invalid value \"\" for executor"));
    assert!(empty[1]
        .message
        .starts_with("invalid value \"\" for downscope"));
    let level = problems(&with_key("auth.logging", "level = \"\""));
    assert_eq!(level.len(), 1, "{level:?}");
    let level = problems(&with_key("auth.logging", "level = \"verbose\""));
    assert!(level[0]
        .message
        .contains("\"debug\", \"info\", \"warn\", \"error\""));
}

#[test]
fn bsub_is_lsf() {
    let c = ok(&BASE.replace("\"shell\"", "\"bsub\""));
    assert_eq!(c.general.executor, Executor::Lsf);
    assert_eq!(c.general.executor.as_str(), "lsf");
}

#[test]
fn qsub_is_cobalt_as_upstream_names_it() {
    // Upstream's executors page: `executor = "cobalt"` or `"qsub"`; PBS is `pbs` only.
    let c = ok(&BASE.replace("\"shell\"", "\"qsub\""));
    assert_eq!(c.general.executor, Executor::Cobalt);
    assert_eq!(c.general.executor.as_str(), "cobalt");
    let found = problems(&BASE.replace("\"shell\"", "\"torque\""));
    assert_eq!(found[0].key.as_deref(), Some("general.executor"));
    assert!(
        found[0].message.contains("\"qsub\""),
        "{}",
        found[0].message
    );
}

#[test]
fn sbatch_is_slurm() {
    let c = ok(&BASE.replace("\"shell\"", "\"sbatch\""));
    assert_eq!(c.general.executor, Executor::Slurm);
    assert!(c.general.executor.is_batch());
    assert_eq!(c.general.executor.as_str(), "slurm");
}

#[test]
fn missing_required_keys() {
    type Expected = &'static [(&'static str, Option<usize>)];
    let cases: &[(&str, Expected)] = &[
        (
            "",
            &[
                ("general.executor", None),
                ("general.data_dir", None),
                ("auth.downscope", None),
            ],
        ),
        (
            "[general]\n[auth]\n",
            &[
                ("general.executor", Some(1)),
                ("general.data_dir", Some(1)),
                ("auth.downscope", Some(2)),
            ],
        ),
        (
            "[general]\nexecutor = \"shell\"\n[auth]\ndownscope = \"sudo\"\n",
            &[("general.data_dir", Some(1))],
        ),
        (
            "[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\n",
            &[("auth.downscope", None)],
        ),
        (
            "[general]\ndata_dir = \"$HOME\"\n[auth]\ndownscope = \"sudo\"\n",
            &[("general.executor", Some(1))],
        ),
    ];
    for (text, want) in cases {
        let found = problems(text);
        let got: Vec<(&str, Option<usize>)> = found
            .iter()
            .map(|p| (p.key.as_deref().unwrap_or(""), p.line))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted = want.to_vec();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "{text:?}");
        assert!(found
            .iter()
            .all(|p| p.message.contains("missing required key")));
    }
    let err =
        parse("[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\n").expect_err("no auth");
    assert_eq!(
        err.report(),
        "test.toml: key 'auth.downscope': missing required key 'downscope': there is no [auth] table (e.g. downscope = \"none\")"
    );
}

#[test]
fn many_problems_are_all_reported_in_file_order() {
    let text = "\
[general]
executor = \"slurmm\"
data_dir = \"relative/dir\"
kill_timeout = \"soon\"
static_min_days = -1
retain_logs = \"yes\"

[auth]
downscope = \"setuid\"
user_blocklst = [\"bob\"]
max_env_chars = 0

[auth.seccomp]
plugin = \"/opt/filter.so\"

[batch]
nfs_timeout = 30
";
    let err = parse(text).expect_err("many problems");
    let lines: Vec<Option<usize>> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        [2, 3, 4, 5, 6, 10, 11, 14, 17].map(Some).to_vec(),
        "{}",
        err.report()
    );
    assert_eq!(err.report().lines().count(), 9);
    assert!(err.to_string().starts_with("invalid configuration (9 problems, first shown): test.toml: Near line 2 (last key parsed 'general.executor')"));
}

#[test]
fn go_plugins_are_rejected() {
    for key in ["plugin", "plugin_path"] {
        let text = with_key("auth.seccomp", &format!("{key} = \"/opt/filter.so\""));
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].key.as_deref(),
            Some(format!("auth.seccomp.{key}").as_str())
        );
        assert!(found[0]
            .message
            .contains("Go plugins are not supported by jacamar-rs"));
        assert!(found[0].message.contains("block_calls / allow_calls"));
    }
}

/// The semantic rules' mistakes: (table, line to add, expected key, expected message
/// fragment).
const SEMANTIC_MISTAKES: &[(&str, &str, &str, &str)] = &[
    (
        "general",
        "gitlab_server = \"gitlab.example.com\"",
        "general.gitlab_server",
        "https://",
    ),
    (
        "general",
        "gitlab_server = \"https://\"",
        "general.gitlab_server",
        "https://",
    ),
    (
        "general",
        "shell_path = \"bash\"",
        "general.shell_path",
        "absolute path",
    ),
    (
        "general",
        "jwt_env_variable = \"MY-TOKEN\"",
        "general.jwt_env_variable",
        "environment variable name",
    ),
    (
        "general",
        "static_min_days = -3",
        "general.static_min_days",
        ">= 0",
    ),
    (
        "general",
        "max_build_dir = 99999999999",
        "general.max_build_dir",
        "too large",
    ),
    (
        "general",
        "max_build_dir = 1.5",
        "general.max_build_dir",
        "expected an integer, found float",
    ),
    ("auth", "max_env_chars = 0", "auth.max_env_chars", ">= 1"),
    (
        "auth",
        "jacamar_path = \"custom/bin\"",
        "auth.jacamar_path",
        "absolute path",
    ),
    (
        "auth.runas",
        "user_variable = \"TARGET\"",
        "auth.runas.validation_script",
        "missing required key",
    ),
    (
        "auth.runas",
        "validation_script = \"run.py\"",
        "auth.runas.validation_script",
        "absolute path",
    ),
    (
        "auth.runas",
        "validation_script = \"/r\"\nsha256 = \"abc\"",
        "auth.runas.sha256",
        "64 hexadecimal",
    ),
    (
        "auth.runas",
        "validation_script = \"/r\"\nvalidation_env = [\"NOEQUALS\"]",
        "auth.runas.validation_env",
        "KEY=value",
    ),
    (
        "auth.runas",
        "validation_script = \"/r\"\nvalidation_env = [\"=x\"]",
        "auth.runas.validation_env",
        "KEY=value",
    ),
    (
        "auth.runas",
        "validation_script = \"/r\"\nuser_variable = \"1ABC\"",
        "auth.runas.user_variable",
        "environment variable name",
    ),
    (
        "auth.logging",
        "location = \"logs/auth.log\"",
        "auth.logging.location",
        "syslog",
    ),
    (
        "auth.logging",
        "network = \"udp\"",
        "auth.logging.network",
        "without address",
    ),
    (
        "auth.logging",
        "address = \"localhost:514\"",
        "auth.logging.address",
        "without network",
    ),
    (
        "auth.logging",
        "network = \"http\"\naddress = \"x\"",
        "auth.logging.network",
        "\"udp\"",
    ),
    (
        "auth.seccomp",
        "block_calls = [\"Open\"]",
        "auth.seccomp.block_calls",
        "not a system call name",
    ),
    (
        "auth.seccomp",
        "block_all = true",
        "auth.seccomp.block_all",
        "every job would fail",
    ),
    (
        "auth.seccomp",
        "block_all = true\nallow_calls = []",
        "auth.seccomp.block_all",
        "every job would fail",
    ),
    (
        "batch",
        "scheduler_bin = \"bin\"",
        "batch.scheduler_bin",
        "absolute path",
    ),
    (
        "batch",
        "env_vars = [\"GPU\"]",
        "batch.env_vars",
        "KEY=value",
    ),
    (
        "batch",
        "arguments_variable = [\"SITE PARAMS\"]",
        "batch.arguments_variable",
        "environment variable name",
    ),
];

#[test]
fn semantic_rules() {
    for (table, line, key, want) in SEMANTIC_MISTAKES {
        let found = problems(&with_key(table, line));
        let p = found
            .iter()
            .find(|p| p.key.as_deref() == Some(*key))
            .unwrap_or_else(|| panic!("{line}: {found:?}"));
        assert!(p.message.contains(want), "{line}: {}", p.message);
    }
}

#[test]
fn data_dir_forms() {
    let good = [
        "$HOME",
        "$HOME/ci",
        "${HOME}/ci",
        "/abs/$USER/x",
        "/abs",
        "/store/$USER/ci",
    ];
    for dir in good {
        let c = ok(&BASE.replace("\"/ecp\"", &format!("\"{dir}\"")));
        assert_eq!(c.general.data_dir, dir);
    }
    let bad = [
        ("", "must not be empty"),
        ("  ", "must not be empty"),
        ("relative", "absolute path or start with $HOME"),
        ("$HOMEDIR/x", "absolute path or start with $HOME"),
        ("~/ci", "absolute path or start with $HOME"),
        ("/ecp/../etc", "'..'"),
    ];
    for (dir, want) in bad {
        let found = problems(&BASE.replace("\"/ecp\"", &format!("\"{dir}\"")));
        assert_eq!(found.len(), 1, "{dir}: {found:?}");
        assert_eq!(found[0].key.as_deref(), Some("general.data_dir"));
        assert_eq!(found[0].line, Some(3));
        assert!(
            found[0].message.contains(want),
            "{dir}: {}",
            found[0].message
        );
    }
}

#[test]
fn valid_subtables_are_read() {
    let text = format!(
        "{}\n[auth.runas]\nvalidation_script = \"/opt/runas\"\nsha256 = \"{}\"\nvalidation_env = [\"A=1\", \"B=x=y\", \"C=\"]\n\n[auth.logging]\nlocation = \"/var/log/jacamar.log\"\nlevel = \"warn\"\nnetwork = \"udp\"\naddress = \"localhost:514\"\n",
        setuid_base(),
        "E".repeat(64)
    );
    let c = ok(&text);
    let runas = c.auth.runas.expect("runas");
    assert_eq!(runas.validation_script, PathBuf::from("/opt/runas"));
    assert_eq!(runas.sha256.as_deref(), Some("e".repeat(64).as_str()));
    assert_eq!(
        runas.validation_env,
        [("A", "1"), ("B", "x=y"), ("C", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec()
    );
    assert_eq!(
        c.auth.logging.location,
        LogLocation::File("/var/log/jacamar.log".into())
    );
    assert_eq!(c.auth.logging.level, LogLevel::Warn);
    assert_eq!(c.auth.logging.network.as_deref(), Some("udp"));
    // Empty tables are fine and leave defaults.
    let c = ok(&format!(
        "{BASE}[auth.runas]\n[auth.logging]\n[auth.seccomp]\n[batch]\n"
    ));
    assert_eq!(c.auth.runas, None);
    assert_eq!(c.batch, Batch::default());
    // Inline tables are tables too.
    let c = ok(&format!("{BASE}seccomp = {{ limit_setuid = true }}\n"));
    assert!(c.auth.seccomp.limit_setuid);
}

/// The example blocks of upstream's configuration reference, one per table.
const UPSTREAM_EXAMPLES: &[&str] = &[
    r#"[general]
executor = "shell"
data_dir = "/ecp"
retain_logs = true
custom_build_dir = false
name = "My Jacamar Driver"
kill_timeout = "120s"
job_message = """
****************************************************************************
NOTICE TO USERS
This is an example message ....
****************************************************************************
"""
gitlab_server = "https://gitlab.example.com"
tls-ca-file = "/example/file.crt"
unrestricted_cmd_line = false
static_builds_dir = false
static_min_days = 7
group_permissions = false
jwt_env_variable = "SITE_ID_TOKEN"
"#,
    r#"[general]
limit_build_dir = true
max_build_dir = 0
uncap_build_dir_cleanup = false
file_lock_debug = false
user_enabled_limit = false
"#,
    r#"[general]
data_dir = "/store/$USER/ci"
limit_build_dir = true
"#,
    r#"[auth]
downscope = "setuid"
jacamar_path = "/custom/bin"
max_env_chars = 10000
lists_pre_validation = false
root_dir_creation = true
allow_bot_accounts = false
jwt_exp_delay = "5m"
no_new_privs = false
enforce_nologin = true
user_allowlist = ["usr1"]
user_blocklist = ["usr2", "usr3"]
groups_allowlist = ["grp1", "grp2"]
groups_blocklist = ["grp3"]
shell_allowlist = ["/bin/bash"]
pipeline_source_allowlist = ["push", "web"]
"#,
    r#"[auth.runas]
validation_script = "/custom/run-validate.py"
user_variable = "TARGET_SERVICE_USER"
sha256 = "e258d248fda94c63753607f7c4494ee0fcbe92f1a76bfdac795c9d84101eb317"
validation_env = ["DEBUG_ENV=1"]
"#,
    r#"[auth.logging]
enabled = true
location = "syslog"
level = "debug"
"#,
    r#"[auth.seccomp]
disabled = false
block_calls = ["sethostname", "sendfile"]
log_allowed_actions = false
disable_no_new_privs = false
"#,
    r#"[auth.seccomp]
limit_setuid = true
tty_rules = true
"#,
    r#"[batch]
arguments_variable = [
  "NEW_SITE_PARAMETERS", "OLD_SITE_PARAMETERS"
]
command_delay = "30s"
nfs_timeout = "1m"
scheduler_bin = "/usr/scheduler/bin"
env_vars = [
  "GPU_ENABLED=true", "EXAMPLE_MODE=debug"
]
allow_illegal_args = false
lsf_job_cancellation = false
default_args = ["--clusters=example"]
disable_name_prefix = false
"#,
    // The admin tutorial's whole file.
    r#"[general]
  executor = "shell"
  data_dir = "$HOME"
  limit_build_dir = true

[auth]
  downscope = "setuid"

[auth.logging]
  location = "/etc/gitlab-runner/logs"
  level = "debug"
"#,
];

/// Fill in what an example block leaves out so it forms a whole file.
fn complete(block: &str) -> String {
    let mut text = String::new();
    if !block.contains("[general]") {
        text.push_str("[general]\nexecutor = \"shell\"\ndata_dir = \"/ecp\"\n");
    }
    if !block.contains("[auth]") {
        // [auth.runas] needs a downscope that switches accounts.
        let downscope = if block.contains("[auth.runas]") {
            "setuid"
        } else {
            "none"
        };
        text.push_str(&format!("[auth]\ndownscope = \"{downscope}\"\n"));
    }
    let mut block = block.to_string();
    if !block.contains("executor") && block.contains("[general]") {
        block = block.replacen("[general]\n", "[general]\nexecutor = \"shell\"\n", 1);
    }
    if !block.contains("data_dir") && block.contains("[general]") {
        block = block.replacen("[general]\n", "[general]\ndata_dir = \"/ecp\"\n", 1);
    }
    text.push_str(&block);
    text
}

#[test]
fn upstream_examples_parse_cleanly() {
    for block in UPSTREAM_EXAMPLES {
        ok(&complete(block));
    }
    let c = ok(&complete(UPSTREAM_EXAMPLES[8]));
    assert_eq!(
        c.batch.arguments_variable,
        ["NEW_SITE_PARAMETERS", "OLD_SITE_PARAMETERS"]
    );
    assert_eq!(c.batch.nfs_timeout, Duration::from_secs(60));
    assert_eq!(
        c.batch.env_vars[0],
        ("GPU_ENABLED".to_string(), "true".to_string())
    );
}

#[test]
fn upstream_block_all_example_flags_the_placeholder() {
    // Upstream writes "..." as a placeholder in its block_all example.
    let text = complete(
        "[auth.seccomp]\nblock_all = true\nallow_calls = [\"read\", \"write\", \"...\"]\n",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0]
        .message
        .contains("\"...\" in allow_calls is not a system call name"));
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn every_file_under_configs_is_valid() {
    let mut seen = 0;
    let entries = std::fs::read_dir(configs_dir()).expect("configs/ exists");
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if let Err(e) = Config::from_file(&path) {
            panic!("{}", e.report());
        }
        seen += 1;
    }
    assert!(seen >= 4, "expected at least 4 configs, found {seen}");
}

#[test]
fn full_toml_sets_every_key_with_a_comment_above() {
    let path = configs_dir().join("full.toml");
    let text = std::fs::read_to_string(&path).expect("configs/full.toml");
    ok(&text);
    let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
    let lines: Vec<&str> = text.lines().collect();
    for spec in KEYS {
        let mut table = &doc;
        for part in spec.table.split('.') {
            table = table
                .get(part)
                .and_then(|v| v.as_table())
                .unwrap_or_else(|| panic!("full.toml lacks [{}]", spec.table));
        }
        assert!(
            table.contains_key(spec.key),
            "full.toml lacks {}.{}",
            spec.table,
            spec.key
        );
    }
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let is_assignment = !t.starts_with('#') && !t.starts_with('[') && t.contains(" = ");
        if is_assignment && !line.starts_with(' ') && !line.starts_with('"') {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "full.toml line {}: no comment above {t:?}",
                i + 1
            );
        }
    }
}

#[test]
fn docs_list_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let docs = std::fs::read_to_string(path).expect("docs/configuration.md");
    let table = schema::markdown_table();
    assert!(
        docs.contains(&table),
        "docs/configuration.md is out of date; its key table must be:\n{table}"
    );
}

#[test]
fn from_file_reports_unreadable_path() {
    let err = Config::from_file(Path::new("/nonexistent/jacamar.toml")).expect_err("missing");
    assert_eq!(err.origin, "/nonexistent/jacamar.toml");
    assert!(err
        .report()
        .starts_with("/nonexistent/jacamar.toml: failed to read"));
}

#[test]
fn no_panic_on_odd_input() {
    let inputs = [
        "",
        "\u{feff}",
        "[",
        "]]]",
        "= 1",
        "general = 5",
        "[general]\nexecutor = []\ndata_dir = {}\n",
        "[general]\nkill_timeout = \"\u{3bc}\"\n",
        "[general]\nkill_timeout = \"1\u{3bc}s\u{3bc}\"\n",
        "[general]\nstatic_min_days = 0xffffffffffffffff\n",
        "[general]\nstatic_min_days = -0o7\n",
        "a.b.c.d.e = 1\n",
        "[auth.runas.deeper]\nx = 1\n",
        "\r\n[general]\r\nexecutor = \"shell\"\r\n",
        "[auth]\nlogging = [1, 2]\n",
        "[general]\nexecutor = \"\"\ndata_dir = \"\"\n[auth]\ndownscope = \"\"\n",
        "[auth.runas]\nvalidation_script = \"\"\n",
    ];
    for text in inputs {
        if let Err(e) = parse(text) {
            assert!(!e.problems.is_empty(), "{text:?}");
            assert!(e.problems.iter().all(|p| !p.message.is_empty()), "{text:?}");
        }
    }
}

#[test]
fn keys_a_downscope_cannot_enforce_are_refused_with_key_and_line() {
    let runas = "[auth.runas]\nvalidation_script = \"/opt/runas\"\n";
    // (text, dotted key, line)
    let cases = [
        (format!("{BASE}{runas}"), "auth.runas", 7),
        (
            format!("{BASE}shell_allowlist = [\"/bin/bash\"]\n"),
            "auth.shell_allowlist",
            7,
        ),
        (
            format!("{BASE}ff_getent_check = true\n"),
            "auth.ff_getent_check",
            7,
        ),
        (
            BASE.replace("\"none\"", "\"sudo\"") + "no_new_privs = true\n",
            "auth.no_new_privs",
            7,
        ),
        (
            BASE.replace("\"none\"", "\"sudo\"") + "[auth.seccomp]\nlimit_setuid = true\n",
            "auth.seccomp.limit_setuid",
            8,
        ),
    ];
    for (text, key, line) in cases {
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{key}: {found:?}");
        assert_eq!(found[0].key.as_deref(), Some(key), "{found:?}");
        assert_eq!(found[0].line, Some(line), "{found:?}");
        assert!(found[0].message.contains("cannot be enforced"), "{found:?}");
    }
    // Enforceable: the same keys where they apply, lists with downscope none, a disabled
    // filter or ff_getent_check = false with sudo/none.
    ok(&format!("{}{runas}", setuid_base()));
    ok(&format!(
        "{}shell_allowlist = [\"/bin/bash\"]\nff_getent_check = true\nno_new_privs = true\n",
        setuid_base()
    ));
    ok(&format!("{BASE}user_allowlist = [\"a\"]\ngroups_blocklist = [\"g\"]\npipeline_source_allowlist = [\"push\"]\nff_getent_check = false\nshell_allowlist = []\n"));
    ok(&(BASE.replace("\"none\"", "\"sudo\"")
        + "[auth.seccomp]\ndisabled = true\nlimit_setuid = true\n"));
}

#[test]
fn minimum_uid_and_allow_nologin_shells_are_read() {
    let c = ok(&format!(
        "{BASE}minimum_uid = 500\nallow_nologin_shells = true\n"
    ));
    assert_eq!(c.auth.minimum_uid, Some(500));
    assert!(c.auth.allow_nologin_shells);
    let c = ok(BASE);
    assert_eq!(
        (c.auth.minimum_uid, c.auth.allow_nologin_shells),
        (None, false)
    );
    let found = problems(&format!("{BASE}minimum_uid = 0\n"));
    assert_eq!(found[0].key.as_deref(), Some("auth.minimum_uid"));
    assert!(found[0].message.contains(">= 1"), "{found:?}");
}

#[test]
fn container_tables_are_read_and_checked() {
    let c = ok(&format!(
        "{BASE}\n[general.podman]\napplication_path = \"/usr/bin/podman\"\ndefault_image = \"reg.example.com/g/i:1\"\ncustom_options = [\"--cpus=2\"]\nruntime = \"runc\"\n[general.charliecloud]\napplication_path = \"/usr/bin\"\n"
    ));
    assert_eq!(
        c.general.podman.application_path.as_deref(),
        Some(Path::new("/usr/bin/podman"))
    );
    assert_eq!(
        c.general.podman.default_image.as_deref(),
        Some("reg.example.com/g/i:1")
    );
    assert_eq!(c.general.podman.custom_options, ["--cpus=2"]);
    assert_eq!(c.general.podman.runtime.as_deref(), Some("runc"));
    assert_eq!(
        c.general.charliecloud.application_path.as_deref(),
        Some(Path::new("/usr/bin"))
    );
    let with = |extra: &str| BASE.replacen("[general]\n", &format!("[general]\n{extra}\n"), 1);
    let c = ok(&with("run_mechanism = \"charliecloud\""));
    assert_eq!(c.general.run_mechanism, Some(RunMechanism::Charliecloud));
    let e = Config::from_str_named(&with("run_mechanism = \"docker\""), "t")
        .unwrap_err()
        .report();
    assert!(e.contains("run_mechanism"), "{e}");
    let e = Config::from_str_named(
        &format!("{BASE}\n[general.podman]\ndefault_imag = \"x\"\napplication_path = \"podman\"\n"),
        "t",
    )
    .unwrap_err()
    .report();
    assert!(e.contains("default_image"), "unknown key suggestion: {e}");
    assert!(
        e.contains("application_path must be an absolute path"),
        "{e}"
    );
    let e = Config::from_str_named(
        &format!("{BASE}\n[general.podman]\ndefault_image = \"-v /:/h x\"\n"),
        "t",
    )
    .unwrap_err()
    .report();
    assert!(
        e.contains("default_image must be an image reference"),
        "{e}"
    );
}

/// Rootless podman maps the user namespace with the set-user-ID `newuidmap`, which
/// no_new_privs disables: `run_mechanism = "podman"` with `[auth] no_new_privs` or a seccomp
/// filter (which needs no_new_privs) would fail every job with an image; refused at load,
/// naming the key. Charliecloud's ch-run needs no set-user-ID helper.
#[test]
fn the_seccomp_refusal_names_the_key_that_turns_the_filter_on() {
    // `block_all = false` is written first but turns nothing on: the message must name
    // `limit_setuid`, the key that does (it named the first key written).
    let podman = setuid_base().replace(
        "data_dir = \"/ecp\"\n",
        "data_dir = \"/ecp\"\nrun_mechanism = \"podman\"\n",
    );
    let found = problems(&format!(
        "{podman}[auth.seccomp]\nblock_all = false\nlimit_setuid = true\n"
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].key.as_deref(),
        Some("auth.seccomp.limit_setuid"),
        "{found:?}"
    );
    assert_eq!(found[0].line, Some(10), "{found:?}");
}

#[test]
fn podman_with_no_new_privs_or_a_seccomp_filter_is_refused() {
    let general = |mech: &str| {
        setuid_base().replace(
            "data_dir = \"/ecp\"\n",
            &format!("data_dir = \"/ecp\"\nrun_mechanism = \"{mech}\"\n"),
        )
    };
    let podman = general("podman");
    for (extra, key, line) in [
        ("no_new_privs = true\n", "auth.no_new_privs", 8),
        (
            "[auth.seccomp]\nlimit_setuid = true\n",
            "auth.seccomp.limit_setuid",
            9,
        ),
    ] {
        let found = problems(&format!("{podman}{extra}"));
        assert_eq!(found.len(), 1, "{key}: {found:?}");
        assert_eq!(found[0].key.as_deref(), Some(key), "{found:?}");
        assert_eq!(found[0].line, Some(line), "{found:?}");
        for part in [
            "run_mechanism = \"podman\"",
            "newuidmap",
            "every job with an image",
        ] {
            assert!(found[0].message.contains(part), "{part}: {found:?}");
        }
    }
    ok(&podman);
    ok(&format!("{podman}no_new_privs = false\n"));
    ok(&format!(
        "{podman}[auth.seccomp]\ndisabled = true\nlimit_setuid = true\n"
    ));
    ok(&format!("{}no_new_privs = true\n", setuid_base()));
    ok(&format!("{}no_new_privs = true\n", general("charliecloud")));
}

#[test]
fn allocation_idle_timeout_is_bounded_and_named() {
    for (value, shown) in [("\"9s\"", "9s"), ("\"61m\"", "1h 1m")] {
        let text = with_key(
            "batch",
            &format!("allocation_reuse = true\nallocation_idle_timeout = {value}"),
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{value}: {found:?}");
        assert_eq!(
            found[0].key.as_deref(),
            Some("batch.allocation_idle_timeout")
        );
        assert_eq!(
            found[0].line,
            Some(line_of(&text, "allocation_idle_timeout"))
        );
        assert!(
            found[0].message.contains("between 10s and 1h") && found[0].message.contains(shown),
            "{}",
            found[0].message
        );
    }
    let c = ok(&with_key(
        "batch",
        "allocation_reuse = true\nallocation_idle_timeout = \"1h\"",
    ));
    assert!(c.batch.allocation_reuse);
    assert_eq!(c.batch.allocation_idle_timeout, Duration::from_secs(3600));
    assert!(!ok(BASE).batch.allocation_reuse);
    assert_eq!(
        ok(BASE).batch.allocation_idle_timeout,
        Duration::from_secs(300)
    );
}
