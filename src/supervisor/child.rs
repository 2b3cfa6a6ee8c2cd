//! The children a supervisor waits for: tokio's, or one we started ourselves and wait for
//! through its pidfd.
//!
//! `jacamar-auth` (as root) starts `jacamar` with `clone3(CLONE_INTO_CGROUP)` so that it is
//! born in the job's cgroup (see `privdrop::downscope::spawn_into_cgroup` and `sys::clone`); tokio cannot start a
//! process that way, so that child is a [`PidfdChild`]. [`crate::supervisor::supervise`]
//! takes either through [`Waitable`].

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// A child process whose exit can be awaited (cancel-safe: a wait dropped before the child
/// ended takes nothing away).
pub trait Waitable {
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>>;
}

impl Waitable for tokio::process::Child {
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> {
        tokio::process::Child::wait(self)
    }
}

/// A child of ours that tokio did not spawn, waited for through its pidfd (readable once it
/// has exited) and then reaped by pid. Its pid cannot be reused before that reap.
#[derive(Debug)]
pub struct PidfdChild {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl PidfdChild {
    /// `pid` must be a child of this process that nothing else reaps, `pidfd` a pidfd of
    /// it. Needs a tokio runtime with I/O enabled.
    pub fn new(pid: i32, pidfd: OwnedFd) -> io::Result<PidfdChild> {
        let pidfd = crate::sys::pidfd::register(pidfd)?;
        Ok(PidfdChild {
            pid,
            pidfd,
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Reap the child if it has exited (`WNOHANG`).
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        let st = crate::sys::pidfd::try_wait(self.pid)?;
        self.status = st;
        Ok(st)
    }
}

impl Waitable for PidfdChild {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_reap()? {
                return Ok(st);
            }
            // Readable once the child has exited: the reap at the top of the loop then takes
            // its status (a spurious wake-up just waits again).
            self.pidfd.readable().await?.clear_ready();
        }
    }
}

/// Either kind of child.
#[derive(Debug)]
pub enum AnyChild {
    Tokio(tokio::process::Child),
    Pidfd(PidfdChild),
}

impl AnyChild {
    /// The child's pid; `None` once tokio has reaped it.
    pub fn id(&self) -> Option<u32> {
        match self {
            AnyChild::Tokio(c) => c.id(),
            AnyChild::Pidfd(c) => Some(c.id()),
        }
    }
}

impl Waitable for AnyChild {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            AnyChild::Tokio(c) => c.wait().await,
            AnyChild::Pidfd(c) => c.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pidfd::forked;

    #[tokio::test]
    async fn waits_for_the_exit_status_of_a_child_tokio_did_not_spawn() {
        let (pid, fd) = forked(7, 50);
        let mut child = PidfdChild::new(pid, fd).unwrap();
        assert_eq!(child.id(), pid as u32);
        let st = child.wait().await.unwrap();
        assert_eq!(st.code(), Some(7));
        // Reaped once; a second wait gives the same status.
        assert_eq!(child.wait().await.unwrap().code(), Some(7));
        // It was reaped, so ECHILD.
        let again = crate::sys::pidfd::try_wait(pid).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::ECHILD));
    }

    #[tokio::test]
    async fn a_dropped_wait_takes_nothing_away() {
        let (pid, fd) = forked(0, 200);
        let mut child = PidfdChild::new(pid, fd).unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), child.wait()).await;
        assert!(early.is_err(), "the child cannot have ended yet");
        assert!(child.wait().await.unwrap().success());
    }
}
