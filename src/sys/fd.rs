//! Descriptors: what a child keeps across exec (the handoff pipes at 3 and 4, nothing
//! else), close-on-exec marking (`close_range(CLOSE_RANGE_CLOEXEC)` or `fcntl`), the error
//! pipe of a raw spawn, and adopting an inherited descriptor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The two pipes of the handoff protocol, as open in the parent.
#[derive(Debug, Clone, Copy)]
pub struct Pipes {
    pub control: RawFd,
    pub status: RawFd,
}

/// Where the child finds the pipes once the hook has moved them (`--control-fd 3
/// --status-fd 4`); every descriptor from [`FIRST_CLOSED`] on is closed.
pub const CONTROL_FD: RawFd = 3;
pub const STATUS_FD: RawFd = 4;
/// The first descriptor the child closes (with pipes: after 3 and 4; without: after 2).
const FIRST_CLOSED: RawFd = 5;

/// Everything the child's hook does to its descriptors, decided before the fork.
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    pipes: Option<Pipes>,
    /// `cgroup.procs` of the job's cgroup, opened for writing: the child writes "0" to it
    /// (moving itself) before anything else.
    cgroup_procs: Option<RawFd>,
    /// The highest descriptor open before the fork: the bound of the close loop when the
    /// kernel has no `close_range` with `CLOSE_RANGE_CLOEXEC` (before Linux 5.11); `None`
    /// where it has one (then its failure fails the spawn).
    highest_open: Option<RawFd>,
}

impl ChildFds {
    /// Move `pipes` to 3 and 4 (without: keep nothing above 2), after writing "0" to
    /// `cgroup_procs` when given. Call right before the fork.
    pub fn new(pipes: Option<Pipes>, cgroup_procs: Option<RawFd>) -> ChildFds {
        ChildFds {
            pipes,
            cgroup_procs,
            highest_open: highest_open_fd(),
        }
    }

    /// The child's descriptors, between fork and exec (raw syscalls only): join the cgroup,
    /// move the pipes to 3 and 4 through free descriptors above both (never a fixed number,
    /// which could be one of the pipes), then mark everything from 5 on (from 3 on without
    /// pipes) close-on-exec, so the exec closes it.
    ///
    /// Marked, not closed: std's own close-on-exec pipe, through which the child reports a
    /// failure of the steps that follow (a `setgroups` refused for want of CAP_SETGID) to
    /// `spawn`, is among them and must stay open until the exec. Closed here, a later
    /// failure aborted the child ("fatal runtime error") and the parent saw only a SIGABRT.
    pub(super) fn arrange(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls (write, fcntl, dup2) on integer descriptors of this
        // process, between fork and exec: no pointer but a static byte string, no
        // allocation, nothing async-signal-unsafe.
        unsafe {
            if let Some(procs) = self.cgroup_procs {
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        let first_closed = match self.pipes {
            Some(p) => {
                // SAFETY: as above. F_DUPFD returns the lowest free descriptor >= 5:
                // distinct from both pipes and from 3 and 4, so no dup2 below overwrites a
                // pipe not yet moved. dup2 clears close-on-exec on the new descriptor.
                unsafe {
                    let c = libc::fcntl(p.control, libc::F_DUPFD, FIRST_CLOSED);
                    let s = libc::fcntl(p.status, libc::F_DUPFD, FIRST_CLOSED);
                    if c < 0 || s < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::dup2(c, CONTROL_FD) < 0 || libc::dup2(s, STATUS_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                FIRST_CLOSED
            }
            None => 3,
        };
        cloexec_from(
            first_closed,
            self.highest_open
                .map(|h| h.max(self.cgroup_procs.unwrap_or(0))),
        )
    }
}

/// The highest descriptor open now (read from /proc before a fork; 1023 if unreadable),
/// needed only where `close_range(CLOSE_RANGE_CLOEXEC)` is missing: elsewhere `None`, and
/// the scan of `/proc/self/fd` (0.08 ms of every stage here) is not made.
fn highest_open_fd() -> Option<RawFd> {
    if close_range_cloexec_works() {
        return None;
    }
    Some(
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
                    .max()
                    .unwrap_or(2)
            })
            .unwrap_or(1023),
    )
}

/// Whether this kernel has `close_range` with `CLOSE_RANGE_CLOEXEC` (Linux 5.11): asked on
/// a range no descriptor can be in.
fn close_range_cloexec_works() -> bool {
    // SAFETY: close_range on the range [u32::MAX, u32::MAX], which holds no open descriptor:
    // nothing changes, only the answer (0, or ENOSYS/EINVAL) matters.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
    }
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: 0 or -1 (errno set). Async-signal-safe.
fn close_range_cloexec(first: RawFd) -> libc::c_long {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    }
}

/// Set `FD_CLOEXEC` on `fd` when it is open (EBADF is ignored). Async-signal-safe.
fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an integer descriptor; a closed one answers EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Mark every descriptor from `first` on close-on-exec: `close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11), or where the kernel lacks it (ENOSYS before 5.9,
/// EINVAL for the flag before 5.11) `fcntl(F_SETFD)` on each up to `highest` (everything
/// opened after that was close-on-exec already). Without `highest` (the kernel was found to
/// have it) a failure is the error: nothing may stay open by default. Async-signal-safe.
fn cloexec_from(first: RawFd, highest: Option<RawFd>) -> std::io::Result<()> {
    if close_range_cloexec(first) == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let Some(highest) = highest else {
        return Err(err);
    };
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    for fd in first..=highest {
        set_cloexec(fd);
    }
    Ok(())
}

/// Mark every descriptor from 3 on close-on-exec. `jacamar-auth` calls it first thing, so a
/// descriptor left open by whatever started it (a wrapper script, socket activation) never
/// reaches `jacamar` or the job, even on the hookless `posix_spawn` path.
pub fn cloexec_inherited_fds() -> std::io::Result<()> {
    if close_range_cloexec(3) == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    // Older kernels: walk /proc/self/fd (the listing's own descriptor is skipped by the
    // EBADF of F_GETFD once it is closed, and is close-on-exec anyway).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        set_cloexec(fd);
    }
    Ok(())
}

/// A close-on-exec pipe whose write end is above the descriptors a child rearranges
/// (0-4), so that no `dup2` of the child's can replace it.
pub(super) fn error_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open descriptor; the new one is ours to own.
    let high = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` was just returned by fcntl and is owned by nothing else.
    Ok((r, unsafe { OwnedFd::from_raw_fd(high) }))
}

/// The child's error, if it wrote one before exiting: EOF (the exec closed the pipe) means
/// it is running the new program.
pub(super) fn read_child_error(r: &OwnedFd) -> Option<std::io::Error> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read into the unfilled tail of a local buffer.
        let n = unsafe {
            libc::read(
                r.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Some(std::io::Error::last_os_error()),
        }
    }
    match got {
        0 => None,
        4 => Some(std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf))),
        _ => Some(std::io::Error::other(
            "the child's error report was cut short",
        )),
    }
}

/// Take ownership of the inherited descriptor `fd` once `fcntl(F_GETFD)` shows it open.
///
/// For a descriptor named on our command line by our parent and taken exactly once, at
/// start-up (the caller refuses the standard streams): then the new `OwnedFd` is its only
/// owner.
pub fn adopt_inherited(fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) on a plain number only reads that descriptor's flags and fails
    // with EBADF when it is not open (there is no I/O-safe way to probe a number). `fd` is
    // adopted only once that succeeded: it is open, was inherited for us alone and named on
    // our command line by our parent, and is taken exactly once, at start-up, so the new
    // OwnedFd is its only owner.
    unsafe {
        nix::errno::Errno::result(libc::fcntl(fd, libc::F_GETFD))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Have `cmd`'s child clear `FD_CLOEXEC` on `fd` between fork and exec, so the program it
/// runs (a script's interpreter) can open it as `/proc/self/fd/N`.
pub fn keep_open_across_exec(cmd: &mut std::process::Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl is async-signal-safe; it only clears FD_CLOEXEC on an integer
    // descriptor of the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
