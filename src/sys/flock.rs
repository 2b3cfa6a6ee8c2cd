//! Lock requests: fcntl record locks and flock(2) locks.

use std::os::fd::{AsRawFd, BorrowedFd};

/// A whole-file lock request of `kind` (`F_RDLCK`, `F_WRLCK`), for `F_OFD_SETLK`/`F_SETLK`.
pub fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all-zero is a valid
    // value; the fields that matter are set right below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

/// Try to take an exclusive flock(2) lock on `fd` without waiting (`LOCK_EX | LOCK_NB`):
/// `Ok(true)` when taken, `Ok(false)` when another open file description holds a lock on the
/// file (`EWOULDBLOCK`), the error otherwise. An interrupted call is retried.
///
/// flock(2), not fcntl: this is the lock `flock(1)` takes, so a shell script and the driver
/// exclude each other; the two kinds do not (docs/allocations-facts.md, addendum). The lock
/// belongs to the open file description: closing the last descriptor of it releases it, so a
/// caller that owns the `File` needs no explicit unlock.
pub fn try_exclusive(fd: BorrowedFd<'_>) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock(2) only reads its two integer arguments; `fd` is a descriptor that
        // is open for the whole call (a `BorrowedFd` cannot outlive its owner).
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}
