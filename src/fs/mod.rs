//! The job's directories and script files, created by `jacamar` as the CI user.
//!
//! Layout under the admin's `data_dir` (see [`JobPaths`]):
//!
//! ```text
//! <base>/builds/<runner>/<NNN>[/<namespace>/<project>]   builds_dir (+ project_dir)
//! <base>/cache/<runner>/<NNN>                             cache_dir
//! <base>/scripts/<runner>/<NNN>/<namespace>/<project>/<job id>/<stage>.bash
//! ```
//!
//! `<base>` is `<data_dir>/<user>`, `<home>/.jacamar-ci` when `data_dir = "$HOME"`,
//! or the expanded path when `data_dir` already names the user (`/store/$USER/ci`).
//!
//! Everything is created through an `openat` chain of directory descriptors opened with
//! `O_NOFOLLOW`, so no symbolic link below the admin's directory is ever followed. Existing
//! directories with the wrong owner, mode or type are refused, never "fixed".
//!
//! * `paths`: computing and validating the paths (no I/O).
//! * `secure`: creating and verifying directories, writing scripts.
//! * `cleanup`: removing a job's scripts directory.
//! * [`builds`]: where the builds dir goes (`limit_build_dir`, `static_builds_dir`,
//!   `custom_build_dir`, a `group_permissions` change) and what cleanup removes; built on:
//! * [`claim`]: claiming concurrent build directories with fcntl locks (`limit_build_dir`).
//! * [`lock`]: the non-blocking fcntl lock those claims (and the batch status poller) take.
//! * `custom`: verifying the user's `CUSTOM_CI_BUILDS_DIR`.
//! * `static_dirs`: removing old static build directories.
//! * `walk`: opening a path from `/` that only trusted owners can redirect
//!   (`CUSTOM_CI_BUILDS_DIR`, and `data_dir` for `root_dir_creation`).

use std::path::PathBuf;

pub mod builds;
pub mod claim;
mod cleanup;
mod custom;
pub mod lock;
mod paths;
mod secure;
mod static_dirs;
mod walk;

#[cfg(test)]
mod tests;

pub use cleanup::cleanup_job;
pub use paths::{validate_project_path, validate_segment, JobPaths, SegmentKind};
pub use secure::{
    check_base_dir, create_base_dir_for_user, ensure_job_dirs, read_job_file, remove_job_file,
    write_job_file, write_script,
};

/// Name of the directory created in the user's home when `data_dir = "$HOME"`.
pub const HOME_BASE_NAME: &str = ".jacamar-ci";
/// Mode of every directory we create (and require of the base dir and its three children).
pub const DIR_MODE: u32 = 0o700;
/// [`DIR_MODE`] when `group_permissions` is enabled.
pub const GROUP_DIR_MODE: u32 = 0o750;
/// Mode of stage script files.
pub const SCRIPT_MODE: u32 = 0o700;

/// The target user's passwd entry, as resolved by the caller (never from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Ownership and permission rules for the directories we create or accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirPolicy {
    /// The uid that must own the base dir and everything below it.
    pub uid: u32,
    /// `group_permissions`: directories are 0750 instead of 0700.
    pub group_permissions: bool,
}

impl DirPolicy {
    /// The exact mode required of (and given to) our directories.
    pub fn dir_mode(&self) -> u32 {
        if self.group_permissions {
            GROUP_DIR_MODE
        } else {
            DIR_MODE
        }
    }
}

/// Everything that can go wrong in this module. Messages name the offending path or value.
#[derive(thiserror::Error, Debug)]
pub enum FsError {
    /// A user-controllable value (token, project path, stage, user name, home) is unusable.
    #[error("refusing {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// The configured `data_dir` cannot be turned into a path.
    #[error("refusing data_dir {value:?}: {reason}")]
    InvalidDataDir { value: String, reason: String },
    /// An existing file system object is unsafe to use (symlink, owner, mode, type).
    #[error("refusing {}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    /// A directory that must already exist does not.
    #[error("failed to find {what} {}: it does not exist", path.display())]
    Missing { what: &'static str, path: PathBuf },
    /// `limit_build_dir`: every allowed directory stayed claimed for as long as we could wait.
    #[error("timed out after {waited_secs}s waiting for a free build directory in {}: all {max} directories (max_build_dir) are claimed by other jobs", path.display())]
    ClaimTimeout {
        path: PathBuf,
        max: u32,
        waited_secs: u64,
    },
    /// `limit_build_dir`: a later stage found no claim of this job (it expired and was taken,
    /// or config_exec did not claim).
    #[error("no build directory in {} is claimed by job {job_id} (did config_exec claim one, or did the claim expire?)", path.display())]
    NotClaimed { path: PathBuf, job_id: u64 },
    /// A system call failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FsError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, errno: nix::errno::Errno) -> Self {
        FsError::Io {
            op,
            path: path.into(),
            source: std::io::Error::from(errno),
        }
    }

    pub(crate) fn refused(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        FsError::Refused {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
