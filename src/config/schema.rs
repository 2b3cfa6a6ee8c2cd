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

const fn key(table: &'static str, key: &'static str, kind: Kind) -> KeySpec {
    KeySpec {
        table,
        key,
        kind,
        default: "",
        required: false,
        chosen_name: false,
        rule: "",
        used_by: "",
    }
}

impl KeySpec {
    const fn default(mut self, default: &'static str) -> Self {
        self.default = default;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn chosen(mut self) -> Self {
        self.chosen_name = true;
        self
    }
    const fn rule(mut self, rule: &'static str) -> Self {
        self.rule = rule;
        self
    }
    const fn used_by(mut self, module: &'static str) -> Self {
        self.used_by = module;
        self
    }
}

use Kind::*;

const G: &str = "general";
const A: &str = "auth";
const R: &str = "auth.runas";
const L: &str = "auth.logging";
const S: &str = "auth.seccomp";
const B: &str = "batch";

const ABS: &str = "absolute path";
const ENV: &str = "environment variable name";
const KV: &str = "each item KEY=value";
const SYSCALL: &str = "each item a syscall name [a-z0-9_]";

/// Every key, grouped by table in [`TABLES`] order.
pub const KEYS: &[KeySpec] = &[
    // [general]
    key(G, "executor", Choice(EXECUTORS))
        .required()
        .used_by("stages"),
    key(G, "data_dir", String)
        .required()
        .rule("absolute, or starting with $HOME; may contain $USER")
        .used_by("fs"),
    key(G, "retain_logs", Bool).default("false").used_by("fs"),
    key(G, "custom_build_dir", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "name", String).used_by("auth"),
    key(G, "kill_timeout", Duration)
        .default("120s")
        .rule("> 0")
        .used_by("supervisor"),
    key(G, "shell_path", Path).rule(ABS).used_by("shell"),
    key(G, "job_message", String).used_by("stages"),
    key(G, "gitlab_server", String)
        .rule("starts with https:// or http://")
        .used_by("auth"),
    key(G, "tls-ca-file", Path).used_by("auth"),
    key(G, "unrestricted_cmd_line", Bool)
        .default("false")
        .used_by("shell"),
    key(G, "static_builds_dir", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "static_min_days", Integer)
        .default("7")
        .rule(">= 0")
        .used_by("fs"),
    key(G, "group_permissions", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "jwt_env_variable", String).rule(ENV).used_by("auth"),
    key(G, "unlimited_stack", Bool)
        .default("false")
        .chosen()
        .used_by("auth"),
    key(G, "limit_build_dir", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "max_build_dir", Integer)
        .default("0")
        .rule(">= 0")
        .used_by("fs"),
    key(G, "uncap_build_dir_cleanup", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "file_lock_debug", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "user_enabled_limit", Bool)
        .default("false")
        .used_by("fs"),
    key(G, "ff_custom_data_dir", Bool)
        .default("false")
        .chosen()
        .used_by("fs"),
    key(G, "ff_git_interactive", Bool)
        .default("false")
        .used_by("auth"),
    // [auth]
    key(A, "downscope", Choice(DOWNSCOPES))
        .required()
        .used_by("auth"),
    key(A, "jacamar_path", Path).rule(ABS).used_by("auth"),
    key(A, "max_env_chars", Integer)
        .default("10000")
        .rule("> 0")
        .used_by("auth"),
    key(A, "lists_pre_validation", Bool)
        .default("false")
        .used_by("auth"),
    key(A, "root_dir_creation", Bool)
        .default("false")
        .used_by("auth"),
    key(A, "user_allowlist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "user_blocklist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "groups_allowlist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "groups_blocklist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "shell_allowlist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "pipeline_source_allowlist", StringArray)
        .default("[]")
        .used_by("auth"),
    key(A, "jwt_exp_delay", Duration)
        .default("5m")
        .used_by("auth"),
    key(A, "jwt_required_aud", String).chosen().used_by("auth"),
    key(A, "allow_bot_accounts", Bool)
        .default("false")
        .used_by("auth"),
    key(A, "no_new_privs", Bool)
        .default("false")
        .used_by("auth"),
    key(A, "run_stage_allowlist", StringArray)
        .default("[]")
        .chosen()
        .used_by("auth"),
    key(A, "enforce_nologin", Bool)
        .default("false")
        .used_by("auth"),
    key(A, "ff_getent_check", Bool)
        .default("false")
        .chosen()
        .used_by("auth"),
    key(A, "minimum_uid", Integer)
        .rule(">= 1; unset: UID_MIN of /etc/login.defs, else 1000")
        .chosen()
        .used_by("auth"),
    key(A, "allow_nologin_shells", Bool)
        .default("false")
        .chosen()
        .used_by("auth"),
    // [auth.runas]
    key(R, "validation_script", Path)
        .rule("absolute path; required when [auth.runas] has keys")
        .used_by("auth"),
    key(R, "user_variable", String).rule(ENV).used_by("auth"),
    key(R, "sha256", String)
        .rule("64 hex digits")
        .used_by("auth"),
    key(R, "validation_env", StringArray)
        .default("[]")
        .rule(KV)
        .used_by("auth"),
    // [auth.logging]
    key(L, "enabled", Bool).default("false").used_by("auth"),
    key(L, "location", String)
        .default("syslog")
        .rule("syslog or an absolute file path")
        .used_by("auth"),
    key(L, "level", Choice(LOG_LEVELS))
        .default("info")
        .used_by("auth"),
    key(L, "network", Choice(LOG_NETWORKS))
        .rule("needs address")
        .used_by("auth"),
    key(L, "address", String)
        .rule("needs network")
        .used_by("auth"),
    // [auth.seccomp]
    key(S, "disabled", Bool).default("false").used_by("auth"),
    key(S, "block_calls", StringArray)
        .default("[]")
        .rule(SYSCALL)
        .used_by("auth"),
    key(S, "block_all", Bool)
        .default("false")
        .rule("needs allow_calls")
        .used_by("auth"),
    key(S, "allow_calls", StringArray)
        .default("[]")
        .rule(SYSCALL)
        .used_by("auth"),
    key(S, "log_allowed_actions", Bool)
        .default("false")
        .used_by("auth"),
    key(S, "disable_no_new_privs", Bool)
        .default("false")
        .used_by("auth"),
    key(S, "block_with_errno", Bool)
        .default("false")
        .chosen()
        .used_by("auth"),
    key(S, "limit_setuid", Bool)
        .default("false")
        .used_by("auth"),
    key(S, "tty_rules", Bool).default("false").used_by("auth"),
    // [batch]
    key(B, "arguments_variable", StringArray)
        .default("[\"SCHEDULER_PARAMETERS\"]")
        .rule("each item an environment variable name")
        .used_by("batch"),
    key(B, "command_delay", Duration)
        .default("10s")
        .used_by("batch"),
    key(B, "nfs_timeout", Duration)
        .default("30s")
        .used_by("batch"),
    key(B, "transient_retry_window", Duration)
        .default("10m")
        .chosen()
        .used_by("batch"),
    key(B, "scheduler_bin", Path).rule(ABS).used_by("batch"),
    key(B, "env_vars", StringArray)
        .default("[]")
        .rule(KV)
        .used_by("batch"),
    key(B, "allow_illegal_args", Bool)
        .default("false")
        .used_by("batch"),
    key(B, "skip_cobalt_log", Bool)
        .default("false")
        .chosen()
        .used_by("batch"),
    key(B, "lsf_job_cancellation", Bool)
        .default("false")
        .used_by("batch"),
    key(B, "default_args", StringArray)
        .default("[]")
        .used_by("batch"),
    key(B, "disable_name_prefix", Bool)
        .default("false")
        .used_by("batch"),
    key(B, "ff_improved_quoting", Bool)
        .default("false")
        .chosen()
        .used_by("batch"),
    key(B, "queue_heartbeat", Duration)
        .default("2m")
        .chosen()
        .rule("at least 1s")
        .used_by("batch"),
    key(B, "resubmit_limit", Integer)
        .default("0")
        .chosen()
        .rule("0 to 10")
        .used_by("batch"),
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
        out.push_str(&format!(
            "| [{}] | {} | {} | {} | {} | `{}` |\n",
            k.table, name, ty, default, k.rule, k.used_by
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
        assert_eq!(child_tables("general").count(), 0);
    }
}
