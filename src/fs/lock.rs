//! Whole-file fcntl locks taken without blocking: the build-directory claims
//! ([`super::claim`]) and the election of the shared batch status poller
//! (`crate::batch::poller`) both take them here.
//!
//! An open-file-description lock (`F_OFD_SETLK`) is tried first: it belongs to the open
//! file, so two descriptors of one process exclude each other, and NFS honours it like a
//! POSIX lock. Where the file system does not support those (`EINVAL`), a classic POSIX
//! lock (`F_SETLK`) is taken instead.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// Try to take a whole-file lock of `kind` on `fd` without blocking: `Ok(false)` when
/// another holds it.
pub fn try_lock(fd: BorrowedFd<'_>, kind: libc::c_int) -> nix::Result<bool> {
    let fl = crate::sys::flock::whole_file(kind);
    let res = match fcntl(fd, FcntlArg::F_OFD_SETLK(&fl)) {
        Err(Errno::EINVAL) => fcntl(fd, FcntlArg::F_SETLK(&fl)),
        other => other,
    };
    match res {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The lock file at `path` (created 0600 if needed, never through a symbolic link) opened
/// and write-locked ([`try_lock`]), or `None` when another holds the lock. The lock lasts
/// as long as the returned file is open.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    match try_lock(f.as_fd(), libc::F_WRLCK)? {
        true => Ok(Some(f)),
        false => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_is_refused_until_the_first_is_closed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.lock");
        let held = try_lock_file(&path).unwrap().expect("the first takes it");
        assert!(try_lock_file(&path).unwrap().is_none(), "held by the first");
        let other = File::open(&path).unwrap();
        assert!(!try_lock(other.as_fd(), libc::F_RDLCK).unwrap());
        drop(held);
        assert!(try_lock_file(&path).unwrap().is_some());
        // Never through a symbolic link.
        std::os::unix::fs::symlink(&path, d.path().join("link")).unwrap();
        assert!(try_lock_file(&d.path().join("link")).is_err());
    }
}
