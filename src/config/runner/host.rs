//! How the checks reach the machine ([`RunnerHost`]): the real file system ([`FsHost`]),
//! or a fake one in tests, so that the checks can be tested on the README's paths without
//! those files.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// What is wrong with a hook's file (after the hook's path, in messages).
#[derive(Debug, thiserror::Error)]
pub enum ExecProblem {
    #[error("does not exist")]
    NotFound,
    #[error("cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("is not a regular file")]
    NotAFile,
    /// Its permission bits (`mode & 0o7777`).
    #[error("is not executable (mode {0:04o})")]
    NotExecutable(u32),
    #[error("cannot be resolved: {0}")]
    Unresolvable(#[source] std::io::Error),
}

/// How the checks reach the machine.
pub trait RunnerHost {
    /// `Ok(canonical path)` when `path` is a regular file with an execute
    /// bit; otherwise what is wrong with it.
    fn executable(&self, path: &Path) -> Result<PathBuf, ExecProblem>;
    /// The jacamar configuration at `path`, validated.
    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsHost;

impl RunnerHost for FsHost {
    fn executable(&self, path: &Path) -> Result<PathBuf, ExecProblem> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ExecProblem::NotFound,
            _ => ExecProblem::Unreadable(e),
        })?;
        if !meta.is_file() {
            return Err(ExecProblem::NotAFile);
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(ExecProblem::NotExecutable(
                meta.permissions().mode() & 0o7777,
            ));
        }
        std::fs::canonicalize(path).map_err(ExecProblem::Unresolvable)
    }

    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::from_file(path)
    }
}
