//! pidfds and reaping children by pid.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// Register `pidfd` with tokio's reactor, to await its readability (the child's exit).
/// Needs a tokio runtime with I/O enabled.
pub fn register(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, and the AsyncFd owns it (nothing
    // else can close or replace it) until it is dropped.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Reap the child `pid` if it has exited (`waitpid(WNOHANG)`, again on EINTR): its status,
/// `None` while it runs, an error (`ECHILD`) when it is not an unreaped child of ours.
pub fn try_wait(pid: i32) -> io::Result<Option<ExitStatus>> {
    let mut raw = 0;
    loop {
        // SAFETY: waitpid with a pointer to a local.
        let r = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
        if r == 0 {
            return Ok(None);
        }
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(raw)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Reap `pid` (a child of ours that failed before exec), blocking.
pub fn reap(pid: i32) {
    loop {
        // SAFETY: waitpid on our own child; no status wanted.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// A pidfd of the process `pid` (`pidfd_open`, Linux 5.3), close-on-exec.
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the returned descriptor is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// For tests: a child started with a bare fork (not by tokio) that sleeps `sleep_ms` and
/// exits with `code`, and its pidfd.
#[cfg(test)]
pub(crate) fn forked(code: i32, sleep_ms: u64) -> (i32, OwnedFd) {
    // SAFETY: the child only sleeps and exits (no allocation, no locks: nanosleep and
    // _exit are async-signal-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: (sleep_ms * 1_000_000) as libc::c_long,
        };
        // SAFETY: see above.
        unsafe {
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::_exit(code);
        }
    }
    (pid, open(pid).expect("pidfd_open"))
}
