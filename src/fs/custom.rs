//! `custom_build_dir`: the user's own builds root, named by `CUSTOM_CI_BUILDS_DIR`.
//!
//! The path must be absolute and already exist. It is walked from `/` by `walk` (no
//! symbolic link anywhere in it), and every directory on the way must belong to root or the
//! user and not be writable by group or others unless sticky (nobody else may swap a
//! component). The directory itself must belong to the user and be
//! writable by nobody else. Below it we create the job's unique directory (0700, or 0750 with
//! `group_permissions`).

use std::path::{Path, PathBuf};

use super::paths::normalize_absolute;
use super::secure::{perm_bits, DirFd};
use super::walk::{open_trusted_path, Trust};
use super::{DirPolicy, FsError};

/// Check the text of `CUSTOM_CI_BUILDS_DIR` (no I/O): absolute, no `.`/`..`, no `$`.
pub(crate) fn parse_custom_root(raw: &str) -> Result<PathBuf, FsError> {
    let bad = |reason: String| FsError::InvalidValue {
        what: "CUSTOM_CI_BUILDS_DIR",
        value: raw.to_string(),
        reason,
    };
    if raw.contains('$') {
        return Err(bad(
            "it contains '$'; variables are not expanded, give the absolute path".into(),
        ));
    }
    let p = normalize_absolute(raw).map_err(|r| bad(r.to_string()))?;
    if p == Path::new("/") {
        return Err(bad("it is the root directory".into()));
    }
    Ok(p)
}

/// Open the verified custom builds root (see the module documentation).
pub(crate) fn open_custom_root(root: &Path, policy: &DirPolicy) -> Result<DirFd, FsError> {
    let trust = Trust {
        owners: &[0, policy.uid],
        what: "CUSTOM_CI_BUILDS_DIR",
        rule: "every directory above CUSTOM_CI_BUILDS_DIR must belong to root or the job's user",
    };
    let dir = open_trusted_path(root, &trust)?;
    let uid = policy.uid;
    let st = dir.owned_by(uid, |found| {
        format!(
            "CUSTOM_CI_BUILDS_DIR must be owned by the job's user (uid {uid}), found uid {found}"
        )
    })?;
    let perm = perm_bits(&st);
    if perm & 0o022 != 0 {
        return Err(FsError::refused(
            &dir.path,
            format!("mode {perm:04o} is writable by group or others"),
        ));
    }
    Ok(dir)
}
