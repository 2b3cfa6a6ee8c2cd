//! Jacamar's TOML configuration: raw text -> validated [`Config`] the rest of the code trusts.
//!
//! STUB: the public API below is the contract; the implementation is being written.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which executor runs the job scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    Shell,
    Slurm,
    Pbs,
    Flux,
    Lsf,
    Cobalt,
}

/// How jacamar-auth drops privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Downscope {
    None,
    Setuid,
    Sudo,
}

/// `[general]`
#[derive(Debug, Clone, PartialEq)]
pub struct General {
    pub executor: Executor,
    /// As written (may hold `$HOME` / `$USER`); expanded by `fs`.
    pub data_dir: String,
    pub retain_logs: bool,
    pub custom_build_dir: bool,
    pub name: Option<String>,
    pub kill_timeout: Duration,
    pub shell_path: Option<PathBuf>,
    pub job_message: Option<String>,
    pub gitlab_server: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub unrestricted_cmd_line: bool,
    pub static_builds_dir: bool,
    pub static_min_days: u32,
    pub group_permissions: bool,
    pub jwt_env_variable: Option<String>,
    pub unlimited_stack: bool,
    pub limit_build_dir: bool,
    pub max_build_dir: u32,
    pub uncap_build_dir_cleanup: bool,
    pub file_lock_debug: bool,
    pub user_enabled_limit: bool,
    pub ff_custom_data_dir: bool,
}

/// `[auth]` (stub subset)
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub downscope: Downscope,
    pub jacamar_path: Option<PathBuf>,
    pub logging: Logging,
}

/// `[auth.logging]` (stub subset)
#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub enabled: bool,
    pub location: String,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub general: General,
    pub auth: Auth,
    /// The TOML text it was parsed from (handed to later stages through `job_env`).
    pub source: String,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// Every problem of one configuration file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {origin}: {}", .problems.first().map(|p| p.message.as_str()).unwrap_or("unknown problem"))]
pub struct ConfigError {
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem on its own line (stub).
    pub fn report(&self) -> String {
        self.to_string()
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            problems: vec![Problem {
                line: None,
                key: None,
                message: format!("failed to read: {e}"),
            }],
        })?;
        Config::from_str_named(&text, &path.display().to_string())
    }

    pub fn from_str_named(_text: &str, origin: &str) -> Result<Config, ConfigError> {
        Err(ConfigError {
            origin: origin.to_string(),
            problems: vec![],
        })
    }
}
