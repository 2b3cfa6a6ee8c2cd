//! Removing a job's scripts directory at cleanup, through directory descriptors only.
//!
//! Idempotent and tolerant of concurrency: whatever is already gone (`ENOENT`) counts as
//! removed, and a directory that keeps getting new entries is given up on with a warning
//! rather than an error.
//!
//! Shared file systems cache names: an NFS client (or a FUSE view with `negative_timeout`)
//! that looked a name up while it was absent keeps saying `ENOENT` for it for a while, even
//! after the file appeared and `readdir` lists it; the directory's `rmdir` then fails with
//! `ENOTEMPTY`. A round in which a listed entry's unlink said `ENOENT` and the `rmdir` said
//! `ENOTEMPTY` is taken as such a stale cache: it is retried with a short backoff (100 ms
//! doubling up to 2 s) for up to [`STALE_BOUND`], without counting against
//! [`MAX_ROUNDS`], before the warning. A directory given up on (with its warning) makes its
//! parents give up at once, so the bound is not paid again per level.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl;
use nix::sys::stat::Mode;
use nix::unistd::{self, UnlinkatFlags};

use super::paths::Anchor;
use super::secure::{diagnose_at, dir_flags, open_dir_path, DirFd};
use super::{FsError, JobPaths};

/// Deepest directory nesting removed below the job's scripts dir.
const MAX_DEPTH: usize = 64;
/// Rounds of "empty it, rmdir it" before giving up on a directory that keeps filling.
const MAX_ROUNDS: usize = 5;
/// The longest wait for a stale name cache of the file system to expire (see the module
/// doc): as long as the default `nfs_timeout`, and longer than the 10 s entry caches of the
/// docker cluster's view; NFS's negative entries go with the directory's change.
pub const STALE_BOUND: Duration = Duration::from_secs(30);
/// The first pause before retrying a directory whose name cache looks stale.
const STALE_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two such retries.
const STALE_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Remove the job's scripts directory (recursively, never following symlinks) and then the
/// empty parents up to, not including, `<base>/scripts`. Does nothing when `retain_logs`.
///
/// A missing directory is success; running twice or concurrently is fine.
pub fn cleanup_job(paths: &JobPaths, retain_logs: bool) -> Result<(), FsError> {
    if retain_logs {
        return Ok(());
    }
    let base = paths.base_dir();
    let parent_path = match paths.anchor() {
        Anchor::Fixed { path, .. } => path.as_path(),
        Anchor::Templated => base.parent().unwrap_or(Path::new("/")),
    };
    let parent = match open_dir_path(parent_path, "directory") {
        Ok(d) => d,
        Err(FsError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(base_name) = base.file_name().and_then(OsStr::to_str) else {
        return Err(FsError::refused(base, "has no usable final component"));
    };

    // Open base, scripts, runner, NNN, namespace..., project: everything but the job id.
    let comps = paths.scripts_components();
    let Some((job_name, dirs)) = comps.split_last() else {
        return Ok(());
    };
    let mut chain: Vec<DirFd> = Vec::with_capacity(dirs.len() + 1);
    let mut cur = match open_child(&parent, base_name)? {
        Some(d) => d,
        None => return Ok(()),
    };
    for name in dirs {
        let next = match open_child(&cur, name)? {
            Some(d) => d,
            None => return Ok(()),
        };
        chain.push(cur);
        cur = next;
    }
    // chain = [base, scripts, runner, NNN, ns..]; cur = project dir.
    remove_tree(&cur, OsStr::new(job_name), 0)?;
    chain.push(cur);

    // Prune empty parents: project .. runner, but never `scripts` (chain[1]) or the base.
    for i in (2..chain.len()).rev() {
        let name = &dirs[i - 1];
        match unistd::unlinkat(&chain[i - 1].fd, name.as_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => {}
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOENT | Errno::EBUSY) => break,
            Err(e) => return Err(FsError::io("remove", &chain[i].path, e)),
        }
    }
    Ok(())
}

/// Open `parent/name` as a directory without following a symlink; `None` when it is gone.
pub(crate) fn open_child(parent: &DirFd, name: &str) -> Result<Option<DirFd>, FsError> {
    let path = parent.path.join(name);
    match fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(DirFd { fd, path })),
        Err(Errno::ENOENT) => Ok(None),
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(diagnose_at(parent, name, e)),
        Err(e) => Err(FsError::io("open", path, e)),
    }
}

/// Remove `parent/name` and everything below it. A non-directory (including a symlink) is
/// unlinked, never followed.
pub(crate) fn remove_tree(parent: &DirFd, name: &OsStr, depth: usize) -> Result<(), FsError> {
    remove_tree_at(parent, name, depth).map(|_| ())
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Removed,
    /// It was not there (`ENOENT`), although the caller may have just listed it.
    Absent,
    /// Given up on, with a warning: left in place.
    Left,
}

/// [`remove_tree`], saying what became of `name`.
fn remove_tree_at(parent: &DirFd, name: &OsStr, depth: usize) -> Result<Gone, FsError> {
    let path = parent.path.join(name);
    let fd = match fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Gone::Absent),
        // Not a directory after all (unlink_entry's EPERM fallback, or a race): unlink it
        // once, with no fallback back here, so an unremovable file is an error, not a loop.
        Err(Errno::ELOOP | Errno::ENOTDIR) => return unlink_file(parent, name),
        Err(e) => return Err(FsError::io("open", path, e)),
    };
    if depth >= MAX_DEPTH {
        return Err(FsError::refused(
            path,
            format!("nested deeper than {MAX_DEPTH} directories"),
        ));
    }
    let dup = fd.try_clone().map_err(|source| FsError::Io {
        op: "duplicate descriptor of",
        path: path.clone(),
        source,
    })?;
    let this = DirFd {
        fd,
        path: path.clone(),
    };
    let mut dir = Dir::from_fd(dup).map_err(|e| FsError::io("read", &path, e))?;

    let mut rounds = 0;
    let mut stale_since: Option<Instant> = None;
    let mut pause = STALE_FIRST_PAUSE;
    while rounds < MAX_ROUNDS {
        let mut entries: Vec<(OsString, Option<Type>)> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| FsError::io("read", &path, e))?;
            let bytes = entry.file_name().to_bytes();
            if bytes != b"." && bytes != b".." {
                entries.push((OsStr::from_bytes(bytes).to_os_string(), entry.file_type()));
            }
        }
        let (mut listed_but_gone, mut child_left) = (false, false);
        for (n, t) in entries {
            let gone = if t == Some(Type::Directory) {
                remove_tree_at(&this, &n, depth + 1)?
            } else {
                unlink_entry(&this, &n, depth + 1)?
            };
            listed_but_gone |= gone == Gone::Absent;
            child_left |= gone == Gone::Left;
        }
        match unistd::unlinkat(&parent.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(Gone::Removed),
            // A subdirectory was given up on (and said so): so is this one, at once.
            Err(Errno::ENOTEMPTY | Errno::EEXIST) if child_left => return Ok(Gone::Left),
            // A listed entry said ENOENT: the file system's name cache is stale (see the
            // module doc); wait for it, bounded.
            Err(Errno::ENOTEMPTY | Errno::EEXIST) if listed_but_gone => {
                let since = *stale_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALE_BOUND {
                    tracing::warn!(
                        "cleanup gave up removing {}: the file system still lists entries \
                         that it says do not exist after {}s (a stale name cache of a shared \
                         file system?); it is left in place",
                        path.display(),
                        STALE_BOUND.as_secs()
                    );
                    return Ok(Gone::Left);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(STALE_MAX_PAUSE);
            }
            // Something was added meanwhile (a run still writing): go round again.
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => rounds += 1,
            Err(e) => return Err(FsError::io("remove", path, e)),
        }
    }
    // Said on stderr (the runner's log) by the subscriber of `stages::diag`.
    tracing::warn!(
        "cleanup gave up removing {} after {MAX_ROUNDS} rounds: it keeps receiving new \
         entries (a process of the job still writing?); it is left in place",
        path.display()
    );
    Ok(Gone::Left)
}

/// Unlink the non-directory `parent/name`: gone already is fine ([`Gone::Absent`]), any
/// other failure (an immutable file, another owner's file in a sticky directory) is an
/// error naming it.
fn unlink_file(parent: &DirFd, name: &OsStr) -> Result<Gone, FsError> {
    match unistd::unlinkat(&parent.fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(Gone::Removed),
        Err(Errno::ENOENT) => Ok(Gone::Absent),
        Err(e) => Err(FsError::io("remove", parent.path.join(name), e)),
    }
}

/// Unlink `parent/name`; a directory (EISDIR, or EPERM, which POSIX allows for one) is
/// removed as a tree.
fn unlink_entry(parent: &DirFd, name: &OsStr, depth: usize) -> Result<Gone, FsError> {
    match unistd::unlinkat(&parent.fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(Gone::Removed),
        Err(Errno::ENOENT) => Ok(Gone::Absent),
        Err(Errno::EISDIR | Errno::EPERM) => remove_tree_at(parent, name, depth),
        Err(e) => Err(FsError::io("remove", parent.path.join(name), e)),
    }
}
