//! The validated configuration: plain data the rest of jacamar-rs trusts.

use std::path::PathBuf;
use std::time::Duration;

/// A config enum and its words: the enum, with `NAMES` (every word that selects a variant,
/// its canonical name first then its aliases: what `Section::choice` reads) and `as_str`
/// (the canonical name).
macro_rules! str_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal $(| $alias:literal)*,)+
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every name that selects a variant, with the variant.
            pub const NAMES: &'static [(&'static str, $name)] = &[
                $(($word, $name::$variant), $(($alias, $name::$variant),)*)+
            ];

            /// The canonical name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }
    };
}

str_enum! {
    /// Which executor runs the job scripts (`sbatch` selects slurm, `bsub` lsf, `qsub` cobalt).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Executor {
        Shell = "shell",
        Slurm = "slurm" | "sbatch",
        Pbs = "pbs",
        Flux = "flux",
        Lsf = "lsf" | "bsub",
        Cobalt = "cobalt" | "qsub",
    }
}

impl Auth {
    /// The keys of `[auth]` that judge the GitLab user and are set: each needs a verified
    /// identity to be applied.
    pub fn policy_keys_set(&self) -> Vec<&'static str> {
        [
            ("user_allowlist", !self.user_allowlist.is_empty()),
            ("user_blocklist", !self.user_blocklist.is_empty()),
            ("groups_allowlist", !self.groups_allowlist.is_empty()),
            ("groups_blocklist", !self.groups_blocklist.is_empty()),
            ("shell_allowlist", !self.shell_allowlist.is_empty()),
            (
                "pipeline_source_allowlist",
                !self.pipeline_source_allowlist.is_empty(),
            ),
            ("runas", self.runas.is_some()),
            ("allow_bot_accounts", self.allow_bot_accounts),
            ("jwt_required_aud", self.jwt_required_aud.is_some()),
            ("ff_getent_check", self.ff_getent_check),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

impl Executor {
    /// True for the executors that submit to a batch scheduler.
    pub fn is_batch(self) -> bool {
        self != Executor::Shell
    }
}

str_enum! {
    /// `run_mechanism`: the tool that runs a job's `image:` (see `crate::container`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RunMechanism {
        Podman = "podman",
        Charliecloud = "charliecloud",
    }
}

/// `[general.podman]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Podman {
    /// The podman binary; `None`: `podman` on the job's PATH.
    pub application_path: Option<PathBuf>,
    pub default_image: Option<String>,
    /// Extra `podman create` arguments the admin sets.
    pub custom_options: Vec<String>,
    /// `--runtime` (our key); `None`: chosen from the host (see `crate::container`).
    pub runtime: Option<String>,
}

/// `[general.charliecloud]` (accepted; the mechanism itself is not there yet).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Charliecloud {
    /// The directory holding `ch-run` and `ch-image`; `None`: found on the job's PATH.
    pub application_path: Option<PathBuf>,
    pub default_image: Option<String>,
}

str_enum! {
    /// How jacamar-auth drops privileges.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Downscope {
        None = "none",
        Setuid = "setuid",
        Sudo = "sudo",
    }
}

/// `[general]`
#[derive(Debug, Clone, PartialEq)]
pub struct General {
    /// `[general] executor`: what runs the job scripts (required).
    pub executor: Executor,
    /// `[general] data_dir`: base directory of every job's files (required), as written
    /// (may hold `$HOME` / `$USER`); expanded by `fs`.
    pub data_dir: String,
    /// `[general] retain_logs`: keep executor and scheduler generated files after the job
    /// (default false).
    pub retain_logs: bool,
    /// `[general] custom_build_dir`: users may pick their build directory through
    /// `CUSTOM_CI_BUILDS_DIR` (default false).
    pub custom_build_dir: bool,
    /// `[general] name`: this instance's name in jacamar-auth's logs (default unset).
    pub name: Option<String>,
    /// `[general] kill_timeout`: grace between passing a signal on and SIGKILL (default 120s).
    pub kill_timeout: Duration,
    /// `[general] shell_path`: the bash that runs job scripts (default unset: found on PATH).
    pub shell_path: Option<PathBuf>,
    /// `[general] job_message`: printed at the start of every job (default unset).
    pub job_message: Option<String>,
    /// `[general] gitlab_server`: the GitLab URL trusted for the id_token's keys, over the
    /// job response's (default unset).
    pub gitlab_server: Option<String>,
    /// `[general] tls-ca-file` (with dashes): CA certificates for HTTPS requests (default
    /// unset).
    pub tls_ca_file: Option<PathBuf>,
    /// `[general] unrestricted_cmd_line`: job tokens allowed on the command line of runner
    /// generated scripts; no askpass is installed (default false).
    pub unrestricted_cmd_line: bool,
    /// `[general] static_builds_dir`: one kept build directory per job (default false).
    pub static_builds_dir: bool,
    /// `[general] static_min_days`: days a static build directory is kept; 0: never removed
    /// (default 7).
    pub static_min_days: u32,
    /// `[general] group_permissions`: data directories 0750 instead of 0700 (default false).
    pub group_permissions: bool,
    /// `[general] jwt_env_variable`: the CI variable holding the job's id_token (default
    /// unset).
    pub jwt_env_variable: Option<String>,
    /// `[general] unlimited_stack` (our name): raise the stack limit to the hard limit
    /// (default false).
    pub unlimited_stack: bool,
    /// `[general] limit_build_dir`: build directories claimed through lock files (default
    /// false).
    pub limit_build_dir: bool,
    /// `[general] max_build_dir`: most claimed build directories a project may have; 0: no
    /// cap (default 0).
    pub max_build_dir: u32,
    /// `[general] uncap_build_dir_cleanup`: cleanup removes every stale build directory,
    /// not at most one (default false).
    pub uncap_build_dir_cleanup: bool,
    /// `[general] file_lock_debug`: write the build directory claims as JSON lines (default
    /// false).
    pub file_lock_debug: bool,
    /// `[general] user_enabled_limit`: `limit_build_dir` only for projects setting
    /// `JACAMAR_LIMIT_BUILD_DIR` (default false).
    pub user_enabled_limit: bool,
    /// `[general] ff_custom_data_dir` (our name): users may choose their own data directory
    /// (default false).
    pub ff_custom_data_dir: bool,
    /// `[general] ff_git_interactive` (default false): upstream's switch for git's
    /// `credential.interactive`; the driver always sets it when it manages git's credentials
    /// (see `jobenv::askpass_env`), so it changes nothing.
    pub ff_git_interactive: bool,
    /// `run_mechanism`: `None` runs every job on the host, `image:` or not.
    pub run_mechanism: Option<RunMechanism>,
    pub podman: Podman,
    pub charliecloud: Charliecloud,
}

/// `[auth]`. Lists are empty when not set.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub downscope: Downscope,
    pub jacamar_path: Option<PathBuf>,
    pub max_env_chars: usize,
    pub lists_pre_validation: bool,
    pub root_dir_creation: bool,
    pub user_allowlist: Vec<String>,
    pub user_blocklist: Vec<String>,
    pub groups_allowlist: Vec<String>,
    pub groups_blocklist: Vec<String>,
    pub shell_allowlist: Vec<String>,
    pub pipeline_source_allowlist: Vec<String>,
    pub jwt_exp_delay: Duration,
    pub jwt_required_aud: Option<String>,
    pub allow_bot_accounts: bool,
    pub no_new_privs: bool,
    pub run_stage_allowlist: Vec<String>,
    pub enforce_nologin: bool,
    pub ff_getent_check: bool,
    /// `minimum_uid`: the lowest uid a job may run as with setuid/sudo; `None` means
    /// `UID_MIN` of /etc/login.defs (1000 when it is absent or unreadable).
    pub minimum_uid: Option<u32>,
    /// `allow_nologin_shells`: accounts with a nologin shell may run jobs (setuid/sudo).
    pub allow_nologin_shells: bool,
    /// Present only when `[auth.runas]` has at least one key.
    pub runas: Option<RunAs>,
    pub logging: Logging,
    pub seccomp: Seccomp,
}

/// `[auth.runas]`
#[derive(Debug, Clone, PartialEq)]
pub struct RunAs {
    pub validation_script: PathBuf,
    pub user_variable: Option<String>,
    /// Lowercase hex digest of the script, when set.
    pub sha256: Option<String>,
    /// `KEY=value` items split at the first `=`.
    pub validation_env: Vec<(String, String)>,
}

/// Where `[auth.logging]` writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogLocation {
    #[default]
    Syslog,
    File(PathBuf),
}

str_enum! {
    /// `[auth.logging] level`
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum LogLevel {
        Debug = "debug",
        #[default]
        Info = "info",
        Warn = "warn",
        Error = "error",
    }
}

/// `[auth.logging]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Logging {
    pub enabled: bool,
    pub location: LogLocation,
    pub level: LogLevel,
    /// `udp`, `tcp`, `unix`, ... for a remote log daemon; with `address`.
    pub network: Option<String>,
    pub address: Option<String>,
}

/// `[auth.seccomp]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seccomp {
    pub disabled: bool,
    pub block_calls: Vec<String>,
    pub block_all: bool,
    pub allow_calls: Vec<String>,
    pub log_allowed_actions: bool,
    pub disable_no_new_privs: bool,
    /// Return an errno from blocked calls instead of killing the thread.
    pub block_with_errno: bool,
    pub limit_setuid: bool,
    pub tty_rules: bool,
}

impl Seccomp {
    /// Whether these settings ask for a filter at all (jacamar-auth builds one from them).
    pub fn filter_wanted(&self) -> bool {
        !self.disabled
            && (self.block_all
                || !self.block_calls.is_empty()
                || self.limit_setuid
                || self.tty_rules
                || self.log_allowed_actions)
    }
}

/// `[batch]`
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub arguments_variable: Vec<String>,
    pub command_delay: Duration,
    pub nfs_timeout: Duration,
    /// How long a scheduler that is only unreachable or busy (its transient errors) is
    /// retried before the stage fails as a system failure.
    pub transient_retry_window: Duration,
    pub scheduler_bin: Option<PathBuf>,
    /// `KEY=value` items split at the first `=`.
    pub env_vars: Vec<(String, String)>,
    pub allow_illegal_args: bool,
    pub skip_cobalt_log: bool,
    pub lsf_job_cancellation: bool,
    pub default_args: Vec<String>,
    pub disable_name_prefix: bool,
    pub ff_improved_quoting: bool,
    /// How often the job log says a queued job is still waiting (our name).
    pub queue_heartbeat: Duration,
    /// Resubmissions after the infrastructure ended a job (preemption, node or boot
    /// failure); 0: none (our name).
    pub resubmit_limit: u32,
    /// A pipeline's opted-in jobs share one allocation (our name; docs/allocations.md).
    pub allocation_reuse: bool,
    /// How long a shared allocation stays alive with no CI job using it (our name).
    pub allocation_idle_timeout: Duration,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            arguments_variable: vec!["SCHEDULER_PARAMETERS".to_string()],
            command_delay: Duration::from_secs(10),
            nfs_timeout: Duration::from_secs(30),
            transient_retry_window: Duration::from_secs(600),
            scheduler_bin: None,
            env_vars: Vec::new(),
            allow_illegal_args: false,
            skip_cobalt_log: false,
            lsf_job_cancellation: false,
            default_args: Vec::new(),
            disable_name_prefix: false,
            ff_improved_quoting: false,
            queue_heartbeat: Duration::from_secs(120),
            resubmit_limit: 0,
            allocation_reuse: false,
            allocation_idle_timeout: DEFAULT_ALLOCATION_IDLE_TIMEOUT,
        }
    }
}

/// Defaults that have no single obvious home.
/// `[batch] allocation_idle_timeout`: its default and its bounds (the holder checks every
/// idle/10, at least 2 s: a shorter timeout could not be honoured; an hour is the most a
/// site should keep idle nodes for a pipeline).
pub(crate) const DEFAULT_ALLOCATION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const MIN_ALLOCATION_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_ALLOCATION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const DEFAULT_STATIC_MIN_DAYS: u32 = 7;
pub(crate) const DEFAULT_MAX_ENV_CHARS: usize = 10_000;
pub(crate) const DEFAULT_JWT_EXP_DELAY: Duration = Duration::from_secs(300);
