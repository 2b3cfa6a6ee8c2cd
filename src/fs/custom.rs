//! `custom_build_dir`: the user's own builds root, named by `CUSTOM_CI_BUILDS_DIR`.
//!
//! The path must be absolute and already exist. It is walked from `/` one component at a
//! time with `O_NOFOLLOW` (no symbolic link anywhere in it), and every directory on the way
//! must belong to root or the user and not be writable by group or others unless sticky
//! (nobody else may swap a component). The directory itself must belong to the user and be
//! writable by nobody else. Below it we create the job's unique directory (0700, or 0750 with
//! `group_permissions`).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::Mode;

use super::paths::normalize_absolute;
use super::secure::{diagnose_at, dir_flags, open_dir_path, openat_owned, perm_bits, DirFd};
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
    let p = normalize_absolute(raw).map_err(bad)?;
    if p == Path::new("/") {
        return Err(bad("it is the root directory".into()));
    }
    Ok(p)
}

/// Open the verified custom builds root (see the module documentation).
pub(crate) fn open_custom_root(root: &Path, policy: &DirPolicy) -> Result<DirFd, FsError> {
    let mut dir = open_dir_path(Path::new("/"), "root directory")?;
    check_component(&dir, policy, false)?;
    let comps: Vec<_> = root.iter().skip(1).collect();
    for (i, comp) in comps.iter().enumerate() {
        let path = dir.path.join(comp);
        let fd = match openat_owned(Some(dir.borrow()), *comp, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(FsError::Missing {
                    what: "CUSTOM_CI_BUILDS_DIR",
                    path,
                })
            }
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                return Err(diagnose_at(&dir, comp_str(comp, &path)?, e))
            }
            Err(e) => return Err(FsError::io("open", path, e)),
        };
        dir = DirFd { fd, path };
        check_component(&dir, policy, i + 1 == comps.len())?;
    }
    Ok(dir)
}

fn comp_str<'a>(comp: &'a std::ffi::OsStr, path: &Path) -> Result<&'a str, FsError> {
    comp.to_str()
        .ok_or_else(|| FsError::refused(path, "path is not valid UTF-8"))
}

fn check_component(dir: &DirFd, policy: &DirPolicy, last: bool) -> Result<(), FsError> {
    let st = dir.stat()?;
    let perm = perm_bits(&st);
    if last {
        if st.st_uid != policy.uid {
            return Err(FsError::refused(
                &dir.path,
                format!(
                    "CUSTOM_CI_BUILDS_DIR must be owned by the job's user (uid {}), found uid {}",
                    policy.uid, st.st_uid
                ),
            ));
        }
        if perm & 0o022 != 0 {
            return Err(FsError::refused(
                &dir.path,
                format!("mode {perm:04o} is writable by group or others"),
            ));
        }
        return Ok(());
    }
    if st.st_uid != 0 && st.st_uid != policy.uid {
        return Err(FsError::refused(
            &dir.path,
            format!(
                "owned by uid {}: every directory above CUSTOM_CI_BUILDS_DIR must belong to root or the job's user",
                st.st_uid
            ),
        ));
    }
    if perm & 0o022 != 0 && perm & 0o1000 == 0 {
        return Err(FsError::refused(
            &dir.path,
            format!("mode {perm:04o} is writable by group or others without the sticky bit"),
        ));
    }
    Ok(())
}
