//! The list of every table and key jacamar-rs understands, with its type and
//! default. The validator consults it for unknown-key suggestions and checks
//! (in debug builds) that it reads only keys listed here; the tests check
//! that `configs/full.toml` and `docs/configuration.md` cover all of it.

/// The shape of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    String,
    Integer,
    Duration,
    /// A string holding a filesystem path.
    Path,
    StringArray,
    /// A string restricted to the listed values.
    Choice(&'static [&'static str]),
}

impl Kind {
    /// Human wording used in docs.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Duration => "duration string",
            Kind::Path => "path string",
            Kind::StringArray => "array of strings",
            Kind::Choice(_) => "string (choice)",
        }
    }
}

/// One key of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Dotted table name: `general`, `auth.runas`, ...
    pub table: &'static str,
    /// Key exactly as written in TOML (`tls-ca-file` keeps its dashes).
    pub key: &'static str,
    pub kind: Kind,
    /// Default as written in TOML; empty when unset means "not set".
    pub default: &'static str,
    pub required: bool,
    /// The upstream name is not known to us: this is jacamar-rs's own name.
    pub chosen_name: bool,
    /// Extra rule checked at load time, for the docs.
    pub rule: &'static str,
    /// Module whose behaviour the key drives.
    pub used_by: &'static str,
}

/// Every table, parent before child.
pub const TABLES: &[&str] = &[
    "general",
    "general.podman",
    "general.charliecloud",
    "auth",
    "auth.runas",
    "auth.logging",
    "auth.seccomp",
    "batch",
];

/// Keys that upstream Jacamar has but jacamar-rs refuses, with the reason.
pub const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "auth.seccomp",
        "plugin",
        "Go plugins are not supported by jacamar-rs; list system calls with block_calls / allow_calls instead",
    ),
    (
        "auth.seccomp",
        "plugin_path",
        "Go plugins are not supported by jacamar-rs; list system calls with block_calls / allow_calls instead",
    ),
];

/// Executor names accepted in `general.executor` (`sbatch` is an alias of `slurm`, `bsub` of
/// `lsf`, `qsub` of `cobalt`: upstream's executors page names them so; PBS has no alias).
pub const EXECUTORS: &[&str] = &[
    "shell", "slurm", "sbatch", "pbs", "flux", "lsf", "bsub", "cobalt", "qsub",
];
/// Run mechanisms accepted in `general.run_mechanism` (a job's `image:`, see `container`).
pub const RUN_MECHANISMS: &[&str] = &["podman", "charliecloud"];
pub const DOWNSCOPES: &[&str] = &["none", "setuid", "sudo"];
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error"];
/// Networks Go's `log/syslog` can dial.
pub const LOG_NETWORKS: &[&str] = &[
    "tcp",
    "tcp4",
    "tcp6",
    "udp",
    "udp4",
    "udp6",
    "unix",
    "unixgram",
    "unixpacket",
];

/// How a key is named and whether it must be set.
#[derive(Clone, Copy)]
enum Name {
    /// Upstream Jacamar's name.
    Up,
    /// jacamar-rs's own name ([`KeySpec::chosen_name`]).
    Ours,
    /// Upstream's name, and the key must be set (its default is then `""`).
    Req,
}

/// A key's `used_by` when no module acts on it: accepted so that a site's file loads, its
/// `rule` says why it has no effect.
pub const NO_EFFECT: &str = "-";

/// One row of [`KEYS`]: `name`, `table`, `key`, `kind`, `default` (as written in TOML, `""`:
/// unset), the module it drives ([`NO_EFFECT`]: none; `tests/layers.rs` checks that the module
/// reads the key), its extra `rule` (`""`: none).
const fn key(
    name: Name,
    table: &'static str,
    key: &'static str,
    kind: Kind,
    default: &'static str,
    used_by: &'static str,
    rule: &'static str,
) -> KeySpec {
    KeySpec {
        table,
        key,
        kind,
        default,
        required: matches!(name, Name::Req),
        chosen_name: matches!(name, Name::Ours),
        rule,
        used_by,
    }
}

use Kind::*;
use Name::*;

const G: &str = "general";
const GP: &str = "general.podman";
const GC: &str = "general.charliecloud";
const A: &str = "auth";
const R: &str = "auth.runas";
const L: &str = "auth.logging";
const S: &str = "auth.seccomp";
const B: &str = "batch";

const EXECUTOR: Kind = Choice(EXECUTORS);
const RUN_MECHANISM: Kind = Choice(RUN_MECHANISMS);
const DOWNSCOPE: Kind = Choice(DOWNSCOPES);
const LOG_LEVEL: Kind = Choice(LOG_LEVELS);
const LOG_NETWORK: Kind = Choice(LOG_NETWORKS);

/// Every key, grouped by table in [`TABLES`] order: its [`Name`], table, key, kind,
/// default, the module it drives and its rule.
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    // [general]
    key(Req,  G, "executor",                  EXECUTOR,    "",       "stages",     ""),
    key(Req,  G, "data_dir",                  String,      "",       "fs",         "absolute, or starting with $HOME; may contain $USER"),
    key(Up,   G, "retain_logs",               Bool,        "false",  "fs",         ""),
    key(Up,   G, "custom_build_dir",          Bool,        "false",  "fs",         ""),
    key(Up,   G, "name",                      String,      "",       "audit",      ""),
    key(Up,   G, "kill_timeout",              Duration,    "120s",   "supervisor", "> 0"),
    key(Up,   G, "shell_path",                Path,        "",       "shell",      "absolute path"),
    key(Up,   G, "job_message",               String,      "",       "stages",     ""),
    key(Up,   G, "gitlab_server",             String,      "",       "authz",      "starts with https:// or http://"),
    key(Up,   G, "tls-ca-file",               Path,        "",       "authz",      ""),
    key(Up,   G, "unrestricted_cmd_line",     Bool,        "false",  "stages",     ""),
    key(Up,   G, "static_builds_dir",         Bool,        "false",  "fs",         ""),
    key(Up,   G, "static_min_days",           Integer,     "7",      "fs",         ">= 0"),
    key(Up,   G, "group_permissions",         Bool,        "false",  "fs",         ""),
    key(Up,   G, "jwt_env_variable",          String,      "",       "authz",      "environment variable name"),
    key(Ours, G, "unlimited_stack",           Bool,        "false",  "privdrop",   ""),
    key(Up,   G, "limit_build_dir",           Bool,        "false",  "fs",         ""),
    key(Up,   G, "max_build_dir",             Integer,     "0",      "fs",         ">= 0"),
    key(Up,   G, "uncap_build_dir_cleanup",   Bool,        "false",  "fs",         ""),
    key(Up,   G, "file_lock_debug",           Bool,        "false",  "fs",         ""),
    key(Up,   G, "user_enabled_limit",        Bool,        "false",  "fs",         ""),
    key(Ours, G, "ff_custom_data_dir",        Bool,        "false",  "-",          "accepted, not implemented: no effect"),
    key(Up,   G, "ff_git_interactive",        Bool,        "false",  "-",          "no effect: credential.interactive is always set"),
    key(Up,   G, "run_mechanism",             RUN_MECHANISM, "",     "container",  "unset: a job's image is not used"),
    // [general.podman]
    key(Up,   GP, "application_path",         Path,        "",       "container",  "absolute path; unset: podman on the job's PATH"),
    key(Up,   GP, "default_image",            String,      "",       "container",  "for jobs without image:"),
    key(Up,   GP, "custom_options",           StringArray, "[]",     "container",  "podman create options; no credentials"),
    key(Ours, GP, "runtime",                  String,      "",       "container",  "unset: runc on a cgroup v1 hybrid host, else podman's default"),
    // [general.charliecloud]
    key(Up,   GC, "application_path",         Path,        "",       "container",  "absolute path of the directory holding ch-run, ch-image and ch-convert; unset: the job's PATH"),
    key(Up,   GC, "default_image",            String,      "",       "container",  "for jobs without image:"),
    // [auth]
    key(Req,  A, "downscope",                 DOWNSCOPE,   "",       "privdrop",   ""),
    key(Up,   A, "jacamar_path",              Path,        "",       "stages",     "absolute path"),
    key(Up,   A, "max_env_chars",             Integer,     "10000",  "authz",      "> 0"),
    key(Up,   A, "lists_pre_validation",      Bool,        "false",  "authz",      ""),
    key(Up,   A, "root_dir_creation",         Bool,        "false",  "stages",     ""),
    key(Up,   A, "user_allowlist",            StringArray, "[]",     "authz",      ""),
    key(Up,   A, "user_blocklist",            StringArray, "[]",     "authz",      ""),
    key(Up,   A, "groups_allowlist",          StringArray, "[]",     "authz",      ""),
    key(Up,   A, "groups_blocklist",          StringArray, "[]",     "authz",      ""),
    key(Up,   A, "shell_allowlist",           StringArray, "[]",     "authz",      ""),
    key(Up,   A, "pipeline_source_allowlist", StringArray, "[]",     "authz",      ""),
    key(Up,   A, "jwt_exp_delay",             Duration,    "5m",     "authz",      ""),
    key(Ours, A, "jwt_required_aud",          String,      "",       "authz",      ""),
    key(Up,   A, "allow_bot_accounts",        Bool,        "false",  "authz",      ""),
    key(Up,   A, "no_new_privs",              Bool,        "false",  "privdrop",   ""),
    key(Ours, A, "run_stage_allowlist",       StringArray, "[]",     "authz",      ""),
    key(Up,   A, "enforce_nologin",           Bool,        "false",  "authz",      ""),
    key(Ours, A, "ff_getent_check",           Bool,        "false",  "authz",      ""),
    key(Ours, A, "minimum_uid",               Integer,     "",       "authz",      ">= 1; unset: UID_MIN of /etc/login.defs, else 1000"),
    key(Ours, A, "allow_nologin_shells",      Bool,        "false",  "authz",      ""),
    // [auth.runas]
    key(Up,   R, "validation_script",         Path,        "",       "authz",      "absolute path; required when [auth.runas] has keys"),
    key(Up,   R, "user_variable",             String,      "",       "authz",      "environment variable name"),
    key(Up,   R, "sha256",                    String,      "",       "authz",      "64 hex digits"),
    key(Up,   R, "validation_env",            StringArray, "[]",     "authz",      "each item KEY=value"),
    // [auth.logging]
    key(Up,   L, "enabled",                   Bool,        "false",  "audit",      ""),
    key(Up,   L, "location",                  String,      "syslog", "audit",      "syslog or an absolute file path"),
    key(Up,   L, "level",                     LOG_LEVEL,   "info",   "audit",      ""),
    key(Up,   L, "network",                   LOG_NETWORK, "",       "audit",      "needs address"),
    key(Up,   L, "address",                   String,      "",       "audit",      "needs network"),
    // [auth.seccomp]
    key(Up,   S, "disabled",                  Bool,        "false",  "privdrop",   ""),
    key(Up,   S, "block_calls",               StringArray, "[]",     "privdrop",   "each item a syscall name [a-z0-9_]"),
    key(Up,   S, "block_all",                 Bool,        "false",  "privdrop",   "needs allow_calls"),
    key(Up,   S, "allow_calls",               StringArray, "[]",     "privdrop",   "each item a syscall name [a-z0-9_]"),
    key(Up,   S, "log_allowed_actions",       Bool,        "false",  "privdrop",   ""),
    key(Up,   S, "disable_no_new_privs",      Bool,        "false",  "privdrop",   ""),
    key(Ours, S, "block_with_errno",          Bool,        "false",  "privdrop",   ""),
    key(Up,   S, "limit_setuid",              Bool,        "false",  "privdrop",   ""),
    key(Up,   S, "tty_rules",                 Bool,        "false",  "privdrop",   ""),
    // [batch]
    key(Up,   B, "arguments_variable",        StringArray, "[\"SCHEDULER_PARAMETERS\"]", "batch",      "each item an environment variable name"),
    key(Up,   B, "command_delay",             Duration,    "10s",    "batch",      ""),
    key(Up,   B, "nfs_timeout",               Duration,    "30s",    "batch",      ""),
    key(Ours, B, "transient_retry_window",    Duration,    "10m",    "batch",      ""),
    key(Up,   B, "scheduler_bin",             Path,        "",       "batch",      "absolute path"),
    key(Up,   B, "env_vars",                  StringArray, "[]",     "batch",      "each item KEY=value"),
    key(Up,   B, "allow_illegal_args",        Bool,        "false",  "batch",      ""),
    key(Ours, B, "skip_cobalt_log",           Bool,        "false",  "batch",      ""),
    key(Up,   B, "lsf_job_cancellation",      Bool,        "false",  "batch",      ""),
    key(Up,   B, "default_args",              StringArray, "[]",     "batch",      ""),
    key(Up,   B, "disable_name_prefix",       Bool,        "false",  "batch",      ""),
    key(Ours, B, "ff_improved_quoting",       Bool,        "false",  "-",          "no effect: submissions are argv lists, never a shell line"),
    key(Ours, B, "queue_heartbeat",           Duration,    "2m",     "batch",      "at least 1s"),
    key(Ours, B, "resubmit_limit",            Integer,     "0",      "batch",      "0 to 10"),
    key(Ours, B, "allocation_reuse",          Bool,        "false",  "batch",      "Slurm; a job opts in with JACAMAR_REUSE_ALLOCATION=pipeline"),
    key(Ours, B, "allocation_idle_timeout",   Duration,    "5m",     "batch",      "10s to 1h"),
];

/// The spec of `table.key`, if jacamar-rs knows it.
pub fn lookup(table: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.table == table && k.key == key)
}

/// Keys of one table, in schema order.
pub fn keys_of(table: &str) -> impl Iterator<Item = &'static KeySpec> + '_ {
    KEYS.iter().filter(move |k| k.table == table)
}

/// Direct child tables of `table` (`""` for the top level).
pub fn child_tables(table: &str) -> impl Iterator<Item = &'static str> + '_ {
    TABLES
        .iter()
        .copied()
        .filter(move |t| match t.rsplit_once('.') {
            Some((parent, _)) => parent == table,
            None => table.is_empty(),
        })
}

/// Render the key reference as a Markdown table (what docs/configuration.md holds).
pub fn markdown_table() -> std::string::String {
    let mut out = std::string::String::from(
        "| Table | Key | Type | Default | Rule | Used by |\n\
         |---|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let name = if k.chosen_name {
            format!("`{}` (our name)", k.key)
        } else {
            format!("`{}`", k.key)
        };
        let ty = match k.kind {
            Choice(values) => format!("one of {}", values.join(", ")),
            other => other.describe().to_string(),
        };
        let default = if k.required {
            "**required**".to_string()
        } else if k.default.is_empty() {
            "unset".to_string()
        } else {
            format!("`{}`", k.default)
        };
        let used_by = if k.used_by == NO_EFFECT {
            "none".to_string()
        } else {
            format!("`{}`", k.used_by)
        };
        out.push_str(&format!(
            "| [{}] | {} | {} | {} | {} | {} |\n",
            k.table, name, ty, default, k.rule, used_by
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_belongs_to_a_known_table_and_is_unique() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(TABLES.contains(&k.table), "{}.{}", k.table, k.key);
            assert!(
                !KEYS[..i]
                    .iter()
                    .any(|o| o.table == k.table && o.key == k.key),
                "duplicate {}.{}",
                k.table,
                k.key
            );
            assert!(!k.used_by.is_empty(), "{}.{} has no module", k.table, k.key);
        }
    }

    #[test]
    fn child_tables_follow_dots() {
        let top: Vec<_> = child_tables("").collect();
        assert_eq!(top, ["general", "auth", "batch"]);
        let auth: Vec<_> = child_tables("auth").collect();
        assert_eq!(auth, ["auth.runas", "auth.logging", "auth.seccomp"]);
        let general: Vec<_> = child_tables("general").collect();
        assert_eq!(general, ["general.podman", "general.charliecloud"]);
    }
}
