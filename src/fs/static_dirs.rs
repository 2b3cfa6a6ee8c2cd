//! `static_builds_dir` / `static_min_days`: removing old static build directories.
//!
//! Static directories are `<builds root>/static/<project-name>_<id>/<job id>`: one per job,
//! kept after the job. Cleanup removes those whose modification time is more than
//! `static_min_days` days ago, oldest first, never the current job's, and removes a project
//! directory left empty. `static_min_days = 0` keeps them forever.

use std::ffi::OsStr;
use std::path::PathBuf;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{self, SFlag};
use nix::unistd::{self, UnlinkatFlags};

use super::claim::unix_now;
use super::cleanup::{open_child, remove_tree};
use super::secure::{file_type, DirFd};
use super::FsError;

/// Seconds in a day.
const DAY: u64 = 86_400;

/// Subdirectories (name, type from readdir) of `dir`.
fn subdirs(dir: &DirFd) -> Result<Vec<String>, FsError> {
    let dup = dir.fd.try_clone().map_err(|source| FsError::Io {
        op: "duplicate descriptor of",
        path: dir.path.clone(),
        source,
    })?;
    let mut d = Dir::from_fd(dup).map_err(|e| FsError::io("read", &dir.path, e))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| FsError::io("read", &dir.path, e))?;
        let Ok(name) = e.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        if matches!(e.file_type(), Some(Type::Directory) | None) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Remove static job directories older than `min_days` below `static_dir`, except
/// `keep` (`<project key>/<job id>` of the current job), at most `*budget` (decremented).
pub(crate) fn remove_old(
    static_dir: &DirFd,
    min_days: u32,
    keep: (&str, &str),
    budget: &mut usize,
) -> Result<Vec<PathBuf>, FsError> {
    let mut removed = Vec::new();
    if min_days == 0 || *budget == 0 {
        return Ok(removed);
    }
    let cutoff = unix_now().saturating_sub(u64::from(min_days) * DAY);
    // (mtime, project dir index, job name)
    let mut candidates: Vec<(i64, usize, String)> = Vec::new();
    let mut projects: Vec<DirFd> = Vec::new();
    for project in subdirs(static_dir)? {
        let Some(pdir) = open_child(static_dir, &project)? else {
            continue;
        };
        for job in subdirs(&pdir)? {
            if project == keep.0 && job == keep.1 {
                continue;
            }
            let Ok(st) = stat::fstatat(&pdir.fd, job.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if file_type(&st) == SFlag::S_IFDIR && (st.st_mtime.max(0) as u64) < cutoff {
                candidates.push((st.st_mtime, projects.len(), job));
            }
        }
        projects.push(pdir);
    }
    candidates.sort();
    let mut touched = Vec::new();
    for (_, idx, job) in candidates {
        if *budget == 0 {
            break;
        }
        let pdir = &projects[idx];
        remove_tree(pdir, OsStr::new(&job), 0)?;
        removed.push(pdir.path.join(&job));
        touched.push(idx);
        *budget -= 1;
    }
    // A project directory left empty goes too (not the current job's).
    touched.sort_unstable();
    touched.dedup();
    for idx in touched {
        let pdir = &projects[idx];
        let Some(name) = pdir.path.file_name().and_then(OsStr::to_str) else {
            continue;
        };
        if name == keep.0 {
            continue;
        }
        match unistd::unlinkat(&static_dir.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOENT | Errno::EBUSY) => {}
            Err(e) => return Err(FsError::io("remove", &pdir.path, e)),
        }
    }
    Ok(removed)
}
