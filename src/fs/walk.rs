//! Opening an absolute directory path that nobody but its trusted owners can redirect.
//!
//! The path is walked from `/` one component at a time with `O_NOFOLLOW`: a symbolic link
//! anywhere in it is refused, never resolved. Every directory *above* the last one must
//! belong to one of the trusted owners and must not be writable by group or others unless it
//! has the sticky bit (in a sticky directory nobody may rename or remove another's entry);
//! otherwise its owner, or anyone who may write to it, could swap the next component for a
//! symbolic link between our check and our use. The last directory is returned open, with
//! no check of its own: each caller applies its rule ([`check_trusted`] when it is the same).
//!
//! Callers: `custom_build_dir` (`CUSTOM_CI_BUILDS_DIR`, trusted owners root and the job's
//! user) and `[auth] root_dir_creation` (`data_dir`, trusted owner root only).

use std::ffi::OsStr;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl;
use nix::sys::stat::Mode;

use super::secure::{diagnose_at, dir_flags, open_dir_path, perm_bits, DirFd};
use super::FsError;

/// Who may own the directories of a path, and how to say so.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trust<'a> {
    /// The uids allowed to own a directory on the path.
    pub(crate) owners: &'a [u32],
    /// The configuration key or variable the path comes from (`CUSTOM_CI_BUILDS_DIR`).
    pub(crate) what: &'static str,
    /// The rule, for messages: "every directory above X must belong to root".
    pub(crate) rule: &'static str,
}

/// Open the absolute, normalized `path` (see the module documentation). `Missing` names
/// [`Trust::what`] and the first component that does not exist.
pub(crate) fn open_trusted_path(path: &Path, trust: &Trust<'_>) -> Result<DirFd, FsError> {
    let mut dir = open_dir_path(Path::new("/"), "root directory")?;
    for comp in path.iter().skip(1) {
        check_trusted(&dir, trust)?;
        let next = dir.path.join(comp);
        let fd = match fcntl::openat(dir.borrow(), comp, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(FsError::Missing {
                    what: trust.what,
                    path: next,
                })
            }
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                return Err(explain_link(
                    diagnose_at(&dir, comp_str(comp, &next)?, e),
                    trust,
                ))
            }
            Err(e) => return Err(FsError::io("open", next, e)),
        };
        dir = DirFd { fd, path: next };
    }
    Ok(dir)
}

/// `dir` belongs to a trusted owner and is not writable by group or others without the
/// sticky bit.
pub(crate) fn check_trusted(dir: &DirFd, trust: &Trust<'_>) -> Result<(), FsError> {
    let st = dir.stat()?;
    if !trust.owners.contains(&st.st_uid) {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(st.st_uid))
            .ok()
            .flatten()
            .map(|u| format!(" ({})", u.name))
            .unwrap_or_default();
        return Err(FsError::refused(
            &dir.path,
            format!("owned by uid {}{name}: {}", st.st_uid, trust.rule),
        ));
    }
    let perm = perm_bits(&st);
    if perm & 0o022 != 0 && perm & 0o1000 == 0 {
        return Err(FsError::refused(
            &dir.path,
            format!(
                "mode {perm:04o} is writable by group or others without the sticky bit: \
                 they could replace its entries with symbolic links and redirect {}",
                trust.what
            ),
        ));
    }
    Ok(())
}

/// A symbolic link found on the path: say that links are not followed in this value.
fn explain_link(err: FsError, trust: &Trust<'_>) -> FsError {
    match err {
        FsError::Refused { path, reason } if reason == "is a symbolic link" => FsError::Refused {
            path,
            reason: format!(
                "is a symbolic link; symbolic links are not followed in {}: give the path without them",
                trust.what
            ),
        },
        other => other,
    }
}

fn comp_str<'a>(comp: &'a OsStr, path: &Path) -> Result<&'a str, FsError> {
    comp.to_str()
        .ok_or_else(|| FsError::refused(path, "path is not valid UTF-8"))
}
