//! Step two: the spanned document -> validated [`General`], [`Auth`] and
//! [`Batch`], collecting every problem in the file.
//!
//! Each reader reads every key of its table before building the struct, so
//! one bad value never hides the problems after it.

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;

use super::error::Problem;
use super::raw::LineIndex;
use super::section::Section;
use super::types::*;

/// `let key = s.how("key");` for each `key`: keys read into variables of their names.
macro_rules! read {
    ($s:ident.$how:ident($($key:ident),+ $(,)?)) => {
        $(let $key = $s.$how(stringify!($key));)+
    };
}

/// All validated tables, or every problem found (in file order).
pub(crate) fn validate(
    doc: &DeTable<'_>,
    lines: &LineIndex,
) -> Result<(General, Auth, Batch), Vec<Problem>> {
    let mut problems = Vec::new();
    let mut top = Section::top(doc, lines);

    let mut general_sec = top.subtable("general");
    let general = general(&mut general_sec, &mut problems);
    problems.extend(general_sec.finish());

    let mut auth_sec = top.subtable("auth");
    let mechanism = general.as_ref().and_then(|g| g.run_mechanism);
    let auth = auth(&mut auth_sec, &mut problems, mechanism);
    problems.extend(auth_sec.finish());

    let mut batch_sec = top.subtable("batch");
    let batch = batch(&mut batch_sec);
    problems.extend(batch_sec.finish());

    problems.extend(top.finish());

    match (general, auth) {
        (Some(general), Some(auth)) if problems.is_empty() => Ok((general, auth, batch)),
        _ => {
            if problems.is_empty() {
                // Every path that leaves a table unbuilt records why; keep
                // the error meaningful should one ever be missed.
                problems.push(Problem::new(None, None, "configuration is incomplete"));
            }
            // Problems without a line last; the sort is stable.
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(problems)
        }
    }
}

fn general(s: &mut Section<'_, '_>, problems: &mut Vec<Problem>) -> Option<General> {
    let executor = if s.is_present("executor") {
        s.choice("executor", Executor::NAMES)
    } else {
        s.missing("executor", " (e.g. executor = \"shell\")");
        None
    };

    let data_dir = s
        .required_string("data_dir", " (e.g. data_dir = \"$HOME\")")
        .and_then(|(dir, line)| match check_data_dir(&dir) {
            Ok(()) => Some(dir),
            Err(why) => {
                s.push(Some(line), "data_dir", why.to_string());
                None
            }
        });

    let kill_timeout = s.duration("kill_timeout", DEFAULT_KILL_TIMEOUT);
    if kill_timeout.is_zero() {
        let line = s.line_of_key("kill_timeout");
        s.push(line, "kill_timeout", "kill_timeout must be greater than 0s");
    }

    let gitlab_server = s.string_at("gitlab_server").and_then(|(url, line)| {
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match host {
            Some(host) if !host.is_empty() => Some(url),
            _ => {
                s.push(
                    Some(line),
                    "gitlab_server",
                    format!(
                        "gitlab_server must be a URL starting with https:// or http://, found \"{url}\""
                    ),
                );
                None
            }
        }
    });

    read!(s.bool(retain_logs, custom_build_dir));
    read!(s.string(name));
    let shell_path = s.path("shell_path", true);
    read!(s.string(job_message));
    let tls_ca_file = s.path("tls-ca-file", false);
    read!(s.bool(unrestricted_cmd_line, static_builds_dir));
    let static_min_days = u32_key(s, "static_min_days", DEFAULT_STATIC_MIN_DAYS);
    read!(s.bool(group_permissions));
    let jwt_env_variable = env_name(s, "jwt_env_variable");
    read!(s.bool(unlimited_stack, limit_build_dir));
    let max_build_dir = u32_key(s, "max_build_dir", 0);
    read!(s.bool(uncap_build_dir_cleanup, file_lock_debug, user_enabled_limit));
    read!(s.bool(ff_custom_data_dir, ff_git_interactive));
    let run_mechanism = s.choice("run_mechanism", RunMechanism::NAMES);
    let mut podman_sec = s.subtable("podman");
    let podman = podman(&mut podman_sec);
    problems.extend(podman_sec.finish());
    let mut ch_sec = s.subtable("charliecloud");
    let charliecloud = Charliecloud {
        application_path: ch_sec.path("application_path", true),
        default_image: image_name(&mut ch_sec, "default_image"),
    };
    problems.extend(ch_sec.finish());

    Some(General {
        executor: executor?,
        data_dir: data_dir?,
        retain_logs,
        custom_build_dir,
        name,
        kill_timeout,
        shell_path,
        job_message,
        gitlab_server,
        tls_ca_file,
        unrestricted_cmd_line,
        static_builds_dir,
        static_min_days,
        group_permissions,
        jwt_env_variable,
        unlimited_stack,
        limit_build_dir,
        max_build_dir,
        uncap_build_dir_cleanup,
        file_lock_debug,
        user_enabled_limit,
        ff_custom_data_dir,
        ff_git_interactive,
        run_mechanism,
        podman,
        charliecloud,
    })
}

/// `[general.podman]`.
fn podman(s: &mut Section<'_, '_>) -> Podman {
    let application_path = s.path("application_path", true);
    let default_image = image_name(s, "default_image");
    let custom_options = s.strings("custom_options");
    let runtime = s.string_at("runtime").and_then(|(rt, line)| {
        let ok = !rt.is_empty() && !rt.starts_with('-') && !rt.chars().any(char::is_whitespace);
        if ok {
            Some(rt)
        } else {
            s.push(
                Some(line),
                "runtime",
                format!(
                    "runtime must be an OCI runtime's name or path (e.g. \"runc\"), found \"{rt}\""
                ),
            );
            None
        }
    });
    Podman {
        application_path,
        default_image,
        custom_options,
        runtime,
    }
}

/// An image reference key: non-empty, no whitespace or control characters, not an option.
fn image_name(s: &mut Section<'_, '_>, key: &'static str) -> Option<String> {
    let (name, line) = s.string_at(key)?;
    if name.is_empty()
        || name.starts_with('-')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        s.push(
            Some(line),
            key,
            format!("{key} must be an image reference such as \"registry.example.com/group/image:tag\", found \"{}\"", name.escape_debug()),
        );
        return None;
    }
    Some(name)
}

/// `[auth]`; `mechanism` is `[general] run_mechanism` (see [`podman_needs_new_privs`]).
fn auth(
    s: &mut Section<'_, '_>,
    problems: &mut Vec<Problem>,
    mechanism: Option<RunMechanism>,
) -> Option<Auth> {
    let downscope = if s.is_present("downscope") {
        s.choice("downscope", Downscope::NAMES)
    } else {
        s.missing("downscope", " (e.g. downscope = \"none\")");
        None
    };
    let jacamar_path = s.path("jacamar_path", true);
    let max_env_chars = s.uint(
        "max_env_chars",
        DEFAULT_MAX_ENV_CHARS as u64,
        1,
        u32::MAX as u64,
    );
    read!(s.bool(lists_pre_validation, root_dir_creation));
    read!(s.strings(user_allowlist, user_blocklist));
    read!(s.strings(groups_allowlist, groups_blocklist));
    read!(s.strings(shell_allowlist, pipeline_source_allowlist));
    let jwt_exp_delay = s.duration("jwt_exp_delay", DEFAULT_JWT_EXP_DELAY);
    read!(s.string(jwt_required_aud));
    read!(s.bool(allow_bot_accounts, no_new_privs));
    read!(s.strings(run_stage_allowlist));
    read!(s.bool(enforce_nologin, ff_getent_check));
    let minimum_uid = if s.is_present("minimum_uid") {
        let n = s.uint("minimum_uid", 0, 1, u64::from(u32::MAX));
        // 0 only when the value was refused (reported).
        u32::try_from(n).ok().filter(|n| *n > 0)
    } else {
        None
    };
    let allow_nologin_shells = s.bool("allow_nologin_shells");

    let mut runas_sec = s.subtable("runas");
    // A [auth.runas] whose script has a problem still counts as set.
    let runas_present = runas_sec.is_present("validation_script");
    let runas = runas(&mut runas_sec);
    problems.extend(runas_sec.finish());

    let mut logging_sec = s.subtable("logging");
    let logging = logging(&mut logging_sec);
    problems.extend(logging_sec.finish());

    let mut seccomp_sec = s.subtable("seccomp");
    let seccomp = seccomp(&mut seccomp_sec);
    let on = InEffect {
        runas: runas.is_some() || runas_present,
        shell_allowlist: !shell_allowlist.is_empty(),
        ff_getent_check,
        no_new_privs,
        seccomp_filter: seccomp
            .filter_wanted()
            .then(|| seccomp_filter_key(&seccomp)),
    };
    if let Some(mode) = downscope {
        unenforceable(s, &mut seccomp_sec, mode, &on);
    }
    if mechanism == Some(RunMechanism::Podman) {
        podman_needs_new_privs(s, &mut seccomp_sec, &on);
    }
    problems.extend(seccomp_sec.finish());

    Some(Auth {
        downscope: downscope?,
        jacamar_path,
        max_env_chars: usize::try_from(max_env_chars).unwrap_or(DEFAULT_MAX_ENV_CHARS),
        lists_pre_validation,
        root_dir_creation,
        user_allowlist,
        user_blocklist,
        groups_allowlist,
        groups_blocklist,
        shell_allowlist,
        pipeline_source_allowlist,
        jwt_exp_delay,
        jwt_required_aud,
        allow_bot_accounts,
        no_new_privs,
        run_stage_allowlist,
        enforce_nologin,
        ff_getent_check,
        minimum_uid,
        allow_nologin_shells,
        runas,
        logging,
        seccomp,
    })
}

/// Which keys of `[auth]` are in effect, for [`unenforceable`].
struct InEffect {
    runas: bool,
    shell_allowlist: bool,
    ff_getent_check: bool,
    no_new_privs: bool,
    /// The key of `[auth.seccomp]` that turns its filter on, when it is on.
    seccomp_filter: Option<&'static str>,
}

/// Report the keys of `[auth]` that `mode` cannot enforce (docs/configuration.md, "Keys a
/// downscope cannot enforce"). With `downscope = "none"` every job runs as jacamar-auth's
/// own account, so the keys that judge *the account the job runs as* have nothing to
/// judge: `[auth.runas]`, `shell_allowlist`, `ff_getent_check`. With `downscope = "sudo"`,
/// `no_new_privs` and a seccomp filter would be applied before sudo, which they break.
/// `auth` is the `[auth]` section, `seccomp_sec` its `[auth.seccomp]` child (still open).
fn unenforceable(
    auth: &mut Section<'_, '_>,
    seccomp_sec: &mut Section<'_, '_>,
    mode: Downscope,
    on: &InEffect,
) {
    let use_other = "use downscope = \"setuid\" or \"sudo\"";
    let runs_as_runner = "with downscope = \"none\" every job runs as jacamar-auth's own account";
    if mode == Downscope::None {
        let account_keys = [
            (
                on.runas,
                "runas",
                "[auth.runas] chooses the account a job runs as",
            ),
            (
                on.shell_allowlist,
                "shell_allowlist",
                "shell_allowlist judges the shell of the account a job runs as",
            ),
            (
                on.ff_getent_check,
                "ff_getent_check",
                "ff_getent_check checks the account a job runs as",
            ),
        ];
        for (set, key, what) in account_keys {
            if set {
                let line = auth.line_of_key(key);
                auth.push(
                    line,
                    key,
                    format!("{what}, but {runs_as_runner}: it cannot be enforced; {use_other}, or remove it"),
                );
            }
        }
    }
    if mode == Downscope::Sudo {
        let why = "with downscope = \"sudo\" it would be applied before sudo, and no_new_privs \
                   disables sudo's set-user-ID; use downscope = \"setuid\"";
        refuse_no_new_privs(
            auth,
            seccomp_sec,
            on,
            format!("no_new_privs cannot be enforced: {why}"),
            format!("a seccomp filter cannot be enforced (it needs no_new_privs): {why}, or set [auth.seccomp] disabled = true"),
        );
    }
}

/// Report `[auth] no_new_privs` (message `nnp`) and a seccomp filter, which needs it
/// (message `filter`), each on the key that sets it, when in effect.
fn refuse_no_new_privs(
    auth: &mut Section<'_, '_>,
    seccomp_sec: &mut Section<'_, '_>,
    on: &InEffect,
    nnp: String,
    filter: String,
) {
    if on.no_new_privs {
        let line = auth.line_of_key("no_new_privs");
        auth.push(line, "no_new_privs", nnp);
    }
    if let Some(key) = on.seccomp_filter {
        let line = seccomp_sec.line_of_key(key);
        seccomp_sec.push(line, key, filter);
    }
}

/// The first key of `[auth.seccomp]` whose value turns its filter on, for messages (a key
/// written as `false` turns nothing on); `block_calls` if none does.
fn seccomp_filter_key(s: &Seccomp) -> &'static str {
    [
        ("block_all", s.block_all),
        ("block_calls", !s.block_calls.is_empty()),
        ("limit_setuid", s.limit_setuid),
        ("tty_rules", s.tty_rules),
        ("log_allowed_actions", s.log_allowed_actions),
    ]
    .into_iter()
    .find(|(_, on)| *on)
    .map_or("block_calls", |(k, _)| k)
}

/// Rootless podman maps its user namespace with `newuidmap`/`newgidmap`, set-user-ID root,
/// which no_new_privs disables (docs/containers-facts.md, "NoNewPrivs"): with
/// `run_mechanism = "podman"`, `[auth] no_new_privs` or a seccomp filter (which needs
/// no_new_privs) would fail every job with an image. Reported on the key that sets it.
fn podman_needs_new_privs(
    auth: &mut Section<'_, '_>,
    seccomp_sec: &mut Section<'_, '_>,
    on: &InEffect,
) {
    let why =
        "run_mechanism = \"podman\" needs the job free of no_new_privs: rootless podman maps \
               its user namespace with the set-user-ID newuidmap/newgidmap, which no_new_privs \
               disables, so every job with an image would fail";
    refuse_no_new_privs(
        auth,
        seccomp_sec,
        on,
        format!("{why}; remove no_new_privs, or unset run_mechanism"),
        format!("{why}, and a seccomp filter needs no_new_privs; set [auth.seccomp] disabled = true, or unset run_mechanism"),
    );
}

/// `[auth.runas]`: `None` when the table is absent or empty.
fn runas(s: &mut Section<'_, '_>) -> Option<RunAs> {
    if !s.has_keys() {
        return None;
    }
    let validation_script = match s.required_string(
        "validation_script",
        " (RunAs needs a validation script, e.g. validation_script = \"/opt/jacamar/runas.bash\")",
    ) {
        Some((path, _)) if path.starts_with('/') => Some(PathBuf::from(path)),
        Some((path, line)) => {
            s.push(
                Some(line),
                "validation_script",
                format!("validation_script must be an absolute path, found \"{path}\""),
            );
            None
        }
        None => None,
    };
    let user_variable = env_name(s, "user_variable");
    let sha256 = s.string_at("sha256").and_then(|(sum, line)| {
        if sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(sum.to_ascii_lowercase())
        } else {
            s.push(
                Some(line),
                "sha256",
                format!(
                    "sha256 must be 64 hexadecimal digits, found {} characters",
                    sum.chars().count()
                ),
            );
            None
        }
    });
    let validation_env = key_values(s, "validation_env");
    Some(RunAs {
        validation_script: validation_script?,
        user_variable,
        sha256,
        validation_env,
    })
}

fn logging(s: &mut Section<'_, '_>) -> Logging {
    let enabled = s.bool("enabled");
    let location = match s.string_at("location") {
        None => LogLocation::Syslog,
        Some((loc, _)) if loc == "syslog" => LogLocation::Syslog,
        Some((loc, _)) if loc.starts_with('/') => LogLocation::File(PathBuf::from(loc)),
        Some((loc, line)) => {
            s.push(
                Some(line),
                "location",
                format!("location must be \"syslog\" or an absolute file path, found \"{loc}\""),
            );
            LogLocation::Syslog
        }
    };
    let level = s.choice("level", LogLevel::NAMES).unwrap_or_default();
    let networks: Vec<(&'static str, &'static str)> = super::schema::LOG_NETWORKS
        .iter()
        .map(|n| (*n, *n))
        .collect();
    let network = s.choice("network", &networks).map(str::to_string);
    let address = s.string("address");
    if network.is_some() != address.is_some() && (network.is_some() || address.is_some()) {
        let (key, other) = if network.is_some() {
            ("network", "address")
        } else {
            ("address", "network")
        };
        // Only complain when the other key is truly absent, not merely invalid.
        if !s.is_present(other) {
            let line = s.line_of_key(key);
            s.push(
                line,
                key,
                format!("{key} is set without {other}: a remote log daemon needs both"),
            );
        }
    }
    Logging {
        enabled,
        location,
        level,
        network,
        address,
    }
}

fn seccomp(s: &mut Section<'_, '_>) -> Seccomp {
    let disabled = s.bool("disabled");
    let block_calls = syscalls(s, "block_calls");
    let block_all = s.bool("block_all");
    let allow_calls = syscalls(s, "allow_calls");
    if block_all && allow_calls.is_empty() {
        let line = s.line_of_key("block_all");
        s.push(
            line,
            "block_all",
            "block_all = true without allow_calls: every job would fail; list the permitted system calls in allow_calls",
        );
    }
    Seccomp {
        disabled,
        block_calls,
        block_all,
        allow_calls,
        log_allowed_actions: s.bool("log_allowed_actions"),
        disable_no_new_privs: s.bool("disable_no_new_privs"),
        block_with_errno: s.bool("block_with_errno"),
        limit_setuid: s.bool("limit_setuid"),
        tty_rules: s.bool("tty_rules"),
    }
}

fn batch(s: &mut Section<'_, '_>) -> Batch {
    let defaults = Batch::default();
    let arguments_variable = match s.strings_at("arguments_variable") {
        None => defaults.arguments_variable,
        Some(items) => {
            let mut names = Vec::with_capacity(items.len());
            for (name, line) in items {
                if is_env_name(&name) {
                    names.push(name);
                } else {
                    s.push(
                        Some(line),
                        "arguments_variable",
                        format!("\"{name}\" is not a valid environment variable name"),
                    );
                }
            }
            names
        }
    };
    Batch {
        arguments_variable,
        command_delay: s.duration("command_delay", defaults.command_delay),
        nfs_timeout: s.duration("nfs_timeout", defaults.nfs_timeout),
        transient_retry_window: s
            .duration("transient_retry_window", defaults.transient_retry_window),
        scheduler_bin: s.path("scheduler_bin", true),
        env_vars: key_values(s, "env_vars"),
        allow_illegal_args: s.bool("allow_illegal_args"),
        skip_cobalt_log: s.bool("skip_cobalt_log"),
        lsf_job_cancellation: s.bool("lsf_job_cancellation"),
        default_args: s.strings("default_args"),
        disable_name_prefix: s.bool("disable_name_prefix"),
        ff_improved_quoting: s.bool("ff_improved_quoting"),
        queue_heartbeat: queue_heartbeat(s, defaults.queue_heartbeat),
        resubmit_limit: u32::try_from(s.uint("resubmit_limit", 0, 0, 10)).unwrap_or(0),
        allocation_reuse: s.bool("allocation_reuse"),
        allocation_idle_timeout: allocation_idle_timeout(s, defaults.allocation_idle_timeout),
    }
}

/// `[batch] allocation_idle_timeout`: 10s to 1h (see [`MIN_ALLOCATION_IDLE_TIMEOUT`]).
fn allocation_idle_timeout(s: &mut Section<'_, '_>, default: Duration) -> Duration {
    let key = "allocation_idle_timeout";
    let d = s.duration(key, default);
    if !(MIN_ALLOCATION_IDLE_TIMEOUT..=MAX_ALLOCATION_IDLE_TIMEOUT).contains(&d) {
        let line = s.line_of_key(key);
        s.push(
            line,
            key,
            format!(
                "allocation_idle_timeout must be between 10s and 1h, found {}",
                humantime::format_duration(d)
            ),
        );
        return default;
    }
    d
}

/// `[batch] queue_heartbeat`: at least a second (a shorter one would flood the job log).
fn queue_heartbeat(s: &mut Section<'_, '_>, default: Duration) -> Duration {
    let d = s.duration("queue_heartbeat", default);
    if d < Duration::from_secs(1) {
        let line = s.line_of_key("queue_heartbeat");
        s.push(
            line,
            "queue_heartbeat",
            "queue_heartbeat must be at least 1s",
        );
        return default;
    }
    d
}

/// A `data_dir` that cannot say where jobs go on every host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadDataDir {
    #[error(
        "data_dir must be an absolute path or start with $HOME (e.g. \"/scratch/$USER/ci\" or \"$HOME\"), found \"{0}\""
    )]
    NotAbsolute(String),
    #[error("data_dir must not contain '..' components, found \"{0}\"")]
    DotDot(String),
}

/// `data_dir` must say where jobs go on every host: an absolute path or one
/// under `$HOME`. `$USER` may appear anywhere in it.
fn check_data_dir(dir: &str) -> Result<(), BadDataDir> {
    let under_home = ["$HOME", "${HOME}"]
        .iter()
        .any(|h| dir == *h || dir.strip_prefix(h).is_some_and(|r| r.starts_with('/')));
    if !dir.starts_with('/') && !under_home {
        return Err(BadDataDir::NotAbsolute(dir.to_string()));
    }
    if dir.split('/').any(|part| part == "..") {
        return Err(BadDataDir::DotDot(dir.to_string()));
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn env_name(s: &mut Section<'_, '_>, key: &'static str) -> Option<String> {
    let (name, line) = s.string_at(key)?;
    if is_env_name(&name) {
        Some(name)
    } else {
        s.push(
            Some(line),
            key,
            format!("{key} must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*), found \"{name}\""),
        );
        None
    }
}

fn u32_key(s: &mut Section<'_, '_>, key: &'static str, default: u32) -> u32 {
    let n = s.uint(key, u64::from(default), 0, u64::from(u32::MAX));
    u32::try_from(n).unwrap_or(default)
}

/// An array of `KEY=value` strings, split at the first `=`.
fn key_values(s: &mut Section<'_, '_>, key: &'static str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (item, line) in s.strings_at(key).unwrap_or_default() {
        match item.split_once('=') {
            Some((k, v)) if is_env_name(k) => out.push((k.to_string(), v.to_string())),
            _ => s.push(
                Some(line),
                key,
                format!("\"{item}\" in {key} is not of the form KEY=value with KEY an environment variable name"),
            ),
        }
    }
    out
}

/// An array of syscall names (`[a-z0-9_]+`).
fn syscalls(s: &mut Section<'_, '_>, key: &'static str) -> Vec<String> {
    let mut out = Vec::new();
    for (name, line) in s.strings_at(key).unwrap_or_default() {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            out.push(name);
        } else {
            s.push(
                Some(line),
                key,
                format!("\"{name}\" in {key} is not a system call name (letters a-z, digits and _ only)"),
            );
        }
    }
    out
}
