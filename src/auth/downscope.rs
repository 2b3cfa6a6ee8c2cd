//! Building the command that starts `jacamar` as the job's account.
//!
//! * `setuid`: `jacamar` is started directly; the forked child (single-threaded between
//!   `fork` and `execve`) drops privileges with raw syscalls only, in this order:
//!   `setgroups(user's groups)`, `setresgid(g,g,g)`, `setresuid(u,u,u)`, clear every
//!   capability set (a caps-only service account would keep CAP_SETUID/SETGID otherwise),
//!   verify uid/gid/capabilities, `PR_SET_NO_NEW_PRIVS` when configured, empty signal mask,
//!   then the seccomp filter (compiled before the fork) right before `execve`.
//!   Everything that allocates or reads NSS (the account, its groups, the filter) is done
//!   before the fork, in [`plan`].
//! * `sudo`: `sudo -n -C 5 -u <user> -- <jacamar> --control-fd 3 --status-fd 4 ...`.
//!   Needs the sudoers lines of README.md ("Privilege boundary").
//! * `none`: `jacamar` runs as jacamar-auth's account; `no_new_privs` and seccomp still apply.
//!
//! In every mode the child is in the job's cgroup when there is one (created there by
//! [`spawn_into_cgroup`], or joining it first thing in [`command`]'s hook), moves the two
//! pipes to descriptors 3 and 4 and closes every other descriptor from 3 on (see
//! [`command`] for the one hookless exception).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{caps, seccomp, AuthError, Target};
use crate::config::{Config, Downscope};

/// Where `sudo` is looked for.
pub const SUDO: &str = "/usr/bin/sudo";

/// Everything the child needs, prepared before the fork.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Downscope,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub no_new_privs: bool,
    pub seccomp: Option<seccomp::Program>,
    /// `[general] unlimited_stack`: raise the soft stack limit to the hard limit.
    pub unlimited_stack: bool,
}

/// Decide what the child will do for `target` under `config`.
pub fn plan(config: &Config, target: &Target) -> Result<Plan, AuthError> {
    let a = &config.auth;
    let filter = seccomp::build(&a.seccomp, target.account.uid, target.account.gid)?;
    let no_new_privs = a.no_new_privs || (filter.is_some() && !a.seccomp.disable_no_new_privs);
    if filter.is_some() && !no_new_privs {
        return Err(AuthError::Seccomp(
            "[auth.seccomp] disable_no_new_privs = true cannot work: once the job's account is \
             set, loading a filter needs no_new_privs (the job holds no CAP_SYS_ADMIN); remove \
             disable_no_new_privs or set [auth] no_new_privs = true"
                .into(),
        ));
    }
    if target.downscope == Downscope::Sudo && (no_new_privs || filter.is_some()) {
        return Err(AuthError::Downscope(
            "downscope = \"sudo\" cannot be combined with no_new_privs or a seccomp filter: \
             both would be applied before sudo, and no_new_privs disables sudo's set-user-ID; \
             use downscope = \"setuid\" for them"
                .into(),
        ));
    }
    if target.downscope != Downscope::None && target.account.uid == 0 {
        return Err(AuthError::Downscope(format!(
            "refusing to run a job as {} (uid 0)",
            target.account.name
        )));
    }
    Ok(Plan {
        mode: target.downscope,
        uid: target.account.uid,
        gid: target.account.gid,
        groups: target.groups.clone(),
        no_new_privs,
        seccomp: filter,
        unlimited_stack: config.general.unlimited_stack,
    })
}

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
struct FdPlan {
    pipes: Option<Pipes>,
    /// `cgroup.procs` of the job's cgroup, opened for writing: the child writes "0" to it
    /// (moving itself) before anything else.
    cgroup_procs: Option<RawFd>,
    /// The highest descriptor open before the fork: the bound of the close loop when the
    /// kernel has no `close_range` with `CLOSE_RANGE_CLOEXEC` (before Linux 5.11); `None`
    /// where it has one (then its failure fails the spawn).
    highest_open: Option<RawFd>,
}

/// The command that starts `jacamar` (`exe`) with `args`.
///
/// With `pipes`, the control and status pipes become descriptors 3 and 4 of the child
/// (`--control-fd 3 --status-fd 4` precede `args`); without, the child keeps no descriptor
/// above 2 (the `jacamar signal` helper). Every other descriptor is closed by the exec
/// (the hook marks it close-on-exec, whatever its flag was). With `cgroup_procs` (an open
/// `cgroup.procs`), the child first moves itself into that cgroup.
///
/// The one exception, for speed: `downscope = "none"` with nothing else to do in the child
/// (no cgroup, no_new_privs, seccomp or stack limit) uses no hook, so that std can use
/// `posix_spawn`; the pipes keep their numbers, and the other inherited descriptors are
/// close-on-exec since [`cloexec_inherited_fds`] ran at start-up.
pub fn command(
    plan: &Plan,
    user: &str,
    exe: &Path,
    pipes: Option<Pipes>,
    cgroup_procs: Option<RawFd>,
    args: &[String],
) -> tokio::process::Command {
    let plan = plan.clone();
    let fds = FdPlan {
        pipes,
        cgroup_procs,
        highest_open: highest_open_fd(),
    };
    let nothing_to_do = plan.mode == Downscope::None
        && cgroup_procs.is_none()
        && !plan.no_new_privs
        && !plan.unlimited_stack
        && plan.seccomp.is_none();
    let mut cmd;
    if plan.mode == Downscope::Sudo {
        cmd = tokio::process::Command::new(SUDO);
        cmd.args(["-n", "-C", "5", "-u", user, "--"]).arg(exe);
    } else {
        cmd = tokio::process::Command::new(exe);
    }
    match pipes {
        Some(p) if nothing_to_do => {
            cmd.arg("--control-fd")
                .arg(p.control.to_string())
                .arg("--status-fd")
                .arg(p.status.to_string());
        }
        Some(_) => {
            cmd.arg("--control-fd")
                .arg(CONTROL_FD.to_string())
                .arg("--status-fd")
                .arg(STATUS_FD.to_string());
        }
        None => {}
    }
    cmd.args(args);
    if !nothing_to_do {
        // SAFETY: the hook makes raw syscalls only (no allocation, no locks): the plans
        // were fully built before the fork and are moved into the closure. std resets the
        // signal mask and SIGPIPE itself for the hookless path.
        unsafe {
            cmd.pre_exec(move || {
                arrange_fds(&fds)?;
                if plan.mode == Downscope::Sudo {
                    // sudo drops privileges itself (and closes from 5 on again: `-C 5`).
                    Ok(())
                } else {
                    drop_privileges(&plan)
                }
            });
        }
    }
    cmd
}

/// A child started by [`spawn_into_cgroup`]: its pid and a pidfd of it.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Why [`spawn_into_cgroup`] started nothing.
#[derive(Debug)]
pub enum CloneError {
    /// `clone3(CLONE_INTO_CGROUP)` itself was refused (a kernel before 5.7, a seccomp
    /// profile that refuses `clone3`, ...): nothing was started; use [`command`] with the
    /// cgroup's `cgroup.procs` instead.
    Unsupported(std::io::Error),
    /// The child started and failed before `execve` (or `execve` failed): the error of
    /// the step that failed, as `spawn` would report it. The child has been reaped.
    Failed(std::io::Error),
}

/// The environment, output and arguments of the child, besides what [`Plan`] says.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub user: &'a str,
    pub exe: &'a Path,
    pub pipes: Option<Pipes>,
    pub args: &'a [String],
    /// The child's whole environment.
    pub env: &'a [(String, String)],
    /// The child's stdout is our stderr (`config`: our stdout is the runner's JSON).
    pub stdout_to_stderr: bool,
}

/// `clone3`'s argument (`struct clone_args`, `CLONE_ARGS_SIZE_VER2`: with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Start what [`command`] describes (same program, arguments, descriptors and privilege
/// drop; its own process group, stdin `/dev/null`, working directory `/`, exactly `env`)
/// as a process created inside the cgroup `cgroup_dir` by `clone3(CLONE_INTO_CGROUP)`
/// (Linux 5.7), instead of one that moves itself there by writing `cgroup.procs`.
///
/// Why: a move between cgroups takes the kernel's cgroup threadgroup lock for writing,
/// which waits for an RCU grace period: 5-40 ms per stage on the project's machine (median
/// 17 ms), against nothing for a process created inside (BENCHMARKS.md, "What was changed
/// for the per-stage time"). The child between `clone3` and `execve` does what the hook of
/// [`command`] does, with raw syscalls only; a failure there comes back through a
/// close-on-exec pipe, as with std's spawn.
pub fn spawn_into_cgroup(
    plan: &Plan,
    launch: &Launch<'_>,
    cgroup_dir: BorrowedFd<'_>,
) -> Result<Started, CloneError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let failed = CloneError::Failed;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| {
            failed(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a NUL byte in an argument or variable",
            ))
        })
    };
    // Everything the child needs, built before the clone (the child must not allocate).
    let mut argv_owned: Vec<CString> = Vec::new();
    let program = if plan.mode == Downscope::Sudo {
        for a in [SUDO, "-n", "-C", "5", "-u", launch.user, "--"] {
            argv_owned.push(cstr(a.as_bytes())?);
        }
        argv_owned.push(cstr(launch.exe.as_os_str().as_bytes())?);
        cstr(SUDO.as_bytes())?
    } else {
        argv_owned.push(cstr(launch.exe.as_os_str().as_bytes())?);
        cstr(launch.exe.as_os_str().as_bytes())?
    };
    if launch.pipes.is_some() {
        for a in [
            "--control-fd",
            &CONTROL_FD.to_string(),
            "--status-fd",
            &STATUS_FD.to_string(),
        ] {
            argv_owned.push(cstr(a.as_bytes())?);
        }
    }
    for a in launch.args {
        argv_owned.push(cstr(a.as_bytes())?);
    }
    let mut envp_owned = Vec::with_capacity(launch.env.len());
    for (k, v) in launch.env {
        envp_owned.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let argv: Vec<*const libc::c_char> = argv_owned
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = envp_owned
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let root = cstr(b"/")?;
    let dev_null = std::fs::File::open("/dev/null").map_err(failed)?;
    let (err_r, err_w) = error_pipe().map_err(failed)?;
    let fds = FdPlan {
        pipes: launch.pipes,
        cgroup_procs: None,
        highest_open: highest_open_fd(),
    };
    let child = ChildSteps {
        plan,
        fds,
        program: &program,
        argv: &argv,
        envp: &envp,
        root: &root,
        stdin: dev_null.as_raw_fd(),
        stdout_to_stderr: launch.stdout_to_stderr,
        error_fd: err_w.as_raw_fd(),
    };

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address
    // space with one thread, and runs only `child.run()` (raw syscalls on data built above,
    // no allocation, no locks) until execve or _exit. `args` and `pidfd` outlive the call.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the child of the clone above; `run` never returns.
        unsafe { child.run() }
    }
    if pid < 0 {
        return Err(CloneError::Unsupported(std::io::Error::last_os_error()));
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new descriptor (close-on-exec) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(err_w);
    match read_child_error(&err_r) {
        None => Ok(Started { pid, pidfd }),
        Some(e) => {
            reap(pid);
            Err(CloneError::Failed(e))
        }
    }
}

/// A close-on-exec pipe whose write end is above the descriptors the child rearranges
/// (0-4), so that no `dup2` of the child's can replace it.
fn error_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
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
fn read_child_error(r: &OwnedFd) -> Option<std::io::Error> {
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

/// Reap `pid` (a child of ours that failed before exec), blocking.
fn reap(pid: i32) {
    loop {
        // SAFETY: waitpid on our own child; no status wanted.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// What the child of [`spawn_into_cgroup`] does, all prepared by the parent.
struct ChildSteps<'a> {
    plan: &'a Plan,
    fds: FdPlan,
    program: &'a std::ffi::CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    root: &'a std::ffi::CStr,
    stdin: RawFd,
    stdout_to_stderr: bool,
    error_fd: RawFd,
}

impl ChildSteps<'_> {
    /// Between `clone3` and `execve`: what std's spawn and the hook of [`command`] do, in
    /// the same order: SIGPIPE back to its default (Rust ignores it, and an ignored signal
    /// stays ignored across exec), stdin and stdout, working directory, own process group,
    /// the descriptors, the privilege drop (which also empties the signal mask), `execve`.
    /// On failure the errno goes to the error pipe and the child exits 127.
    ///
    /// # Safety
    /// Only in the child of a fork-like clone of a process whose `self` is fully built.
    unsafe fn run(&self) -> ! {
        let steps = || -> std::io::Result<()> {
            // SAFETY: raw syscalls on descriptors and on pointers into data the parent built
            // before the clone; nothing allocates or takes a lock.
            unsafe {
                if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
                    || libc::dup2(self.stdin, 0) < 0
                    || (self.stdout_to_stderr && libc::dup2(2, 1) < 0)
                    || libc::chdir(self.root.as_ptr()) < 0
                    || libc::setpgid(0, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                arrange_fds(&self.fds)?;
                if self.plan.mode == Downscope::Sudo {
                    // sudo drops privileges itself; the mask is ours to clear.
                    let mut empty: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut empty);
                    check(libc::syscall(
                        libc::SYS_rt_sigprocmask,
                        libc::SIG_SETMASK,
                        &empty as *const libc::sigset_t,
                        std::ptr::null_mut::<libc::sigset_t>(),
                        std::mem::size_of::<libc::c_ulong>(),
                    ))?;
                } else {
                    drop_privileges(self.plan)?;
                }
                libc::execve(
                    self.program.as_ptr(),
                    self.argv.as_ptr(),
                    self.envp.as_ptr(),
                );
                Err(std::io::Error::last_os_error())
            }
        };
        let code = match steps() {
            Ok(()) => libc::EINVAL,
            Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
        }
        .to_ne_bytes();
        // SAFETY: write a local buffer to the error pipe, then exit without running any
        // of the parent's atexit handlers or destructors.
        unsafe {
            libc::write(self.error_fd, code.as_ptr().cast(), code.len());
            libc::_exit(127)
        }
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

/// The child's descriptors, between fork and exec (raw syscalls only): join the cgroup,
/// move the pipes to 3 and 4 through free descriptors above both (never a fixed number,
/// which could be one of the pipes), then mark everything from 5 on (from 3 on without
/// pipes) close-on-exec, so the exec closes it.
///
/// Marked, not closed: std's own close-on-exec pipe, through which the child reports a
/// failure of the steps that follow (a `setgroups` refused for want of CAP_SETGID) to
/// `spawn`, is among them and must stay open until the exec. Closed here, a later failure
/// aborted the child ("fatal runtime error") and the parent saw only a SIGABRT.
fn arrange_fds(f: &FdPlan) -> std::io::Result<()> {
    // SAFETY: plain syscalls (write, fcntl, dup2, close_range/close) on integer descriptors
    // of this process, between fork and exec: no pointer but a static byte string, no
    // allocation, nothing async-signal-unsafe.
    unsafe {
        if let Some(procs) = f.cgroup_procs {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let first_closed = match f.pipes {
            Some(p) => {
                // F_DUPFD returns the lowest free descriptor >= 5: distinct from both pipes
                // and from 3 and 4, so no dup2 below overwrites a pipe not yet moved.
                let c = libc::fcntl(p.control, libc::F_DUPFD, FIRST_CLOSED);
                let s = libc::fcntl(p.status, libc::F_DUPFD, FIRST_CLOSED);
                if c < 0 || s < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(c, CONTROL_FD) < 0 || libc::dup2(s, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                FIRST_CLOSED
            }
            None => 3,
        };
        cloexec_from(
            first_closed,
            f.highest_open.map(|h| h.max(f.cgroup_procs.unwrap_or(0))),
        )
    }
}

/// Mark every descriptor from `first` on close-on-exec: `close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11), or where the kernel lacks it (ENOSYS before 5.9,
/// EINVAL for the flag before 5.11) `fcntl(F_SETFD)` on each up to `highest` (everything
/// opened after that was close-on-exec already). Without `highest` (the kernel was found to
/// have it) a failure is the error: nothing may stay open by default.
fn cloexec_from(first: RawFd, highest: Option<RawFd>) -> std::io::Result<()> {
    // SAFETY: close_range/fcntl on integer descriptors; async-signal-safe.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
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
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Mark every descriptor from 3 on close-on-exec. `jacamar-auth` calls it first thing, so a
/// descriptor left open by whatever started it (a wrapper script, socket activation) never
/// reaches `jacamar` or the job, even on the hookless `posix_spawn` path.
pub fn cloexec_inherited_fds() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11) only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
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
        // SAFETY: fcntl on an integer descriptor; EBADF (closed meanwhile) is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The child's side, between fork and exec. Raw syscalls only (async-signal-safe).
fn drop_privileges(p: &Plan) -> std::io::Result<()> {
    // SAFETY: plain syscalls with integer arguments or pointers into `p` (its group list)
    // and into locals of this frame, all alive until exec; no allocation between fork and
    // exec.
    unsafe {
        if p.mode == Downscope::Setuid {
            check(libc::syscall(
                libc::SYS_setgroups,
                p.groups.len(),
                p.groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid))?;
            check(libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid))?;
            caps::clear_all()?;
            // Verify: every uid and gid is the target's and no capability is left.
            let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
            check(libc::syscall(
                libc::SYS_getresuid,
                &mut r as *mut u32,
                &mut e as *mut u32,
                &mut s as *mut u32,
            ))?;
            if (r, e, s) != (p.uid, p.uid, p.uid) {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            check(libc::syscall(
                libc::SYS_getresgid,
                &mut r as *mut u32,
                &mut e as *mut u32,
                &mut s as *mut u32,
            ))?;
            if (r, e, s) != (p.gid, p.gid, p.gid) || !caps::all_empty()? {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        if p.unlimited_stack {
            let mut lim: libc::rlimit = std::mem::zeroed();
            check(libc::syscall(
                libc::SYS_getrlimit,
                libc::RLIMIT_STACK,
                &mut lim as *mut libc::rlimit,
            ))?;
            lim.rlim_cur = lim.rlim_max;
            check(libc::syscall(
                libc::SYS_setrlimit,
                libc::RLIMIT_STACK,
                &lim as *const libc::rlimit,
            ))?;
        }
        if p.no_new_privs {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        ))?;
        if let Some(f) = &p.seccomp {
            f.install()?;
        }
    }
    Ok(())
}

/// The sudoers lines a deployment needs for `downscope = "sudo"` (documented in README.md):
/// the service account may run exactly `jacamar` as any account but root, without a
/// password, keeping descriptors 3 and 4, without a pty.
pub fn sudoers_lines(service_account: &str, jacamar: &Path) -> String {
    let j = jacamar.display();
    format!(
        "Defaults!{j} closefrom_override, !use_pty, !requiretty\n\
         {service_account} ALL=(ALL,!root) NOPASSWD: {j}\n"
    )
}

/// Describe a spawn failure of the helper for the audit log.
pub fn spawn_error(plan: &Plan, user: &str, exe: &Path, e: &std::io::Error) -> String {
    let what: PathBuf = if plan.mode == Downscope::Sudo {
        PathBuf::from(SUDO)
    } else {
        exe.to_path_buf()
    };
    let hint = if plan.mode == Downscope::Setuid
        && e.raw_os_error() == Some(libc::EPERM)
        && !nix::unistd::geteuid().is_root()
    {
        " (jacamar-auth is not root: does its file still carry cap_setuid,cap_setgid=ep? \
         `jacamar-auth validate --configuration FILE` as this account checks it)"
    } else {
        ""
    };
    format!(
        "failed to start {} as {user} (uid {}, gid {}, downscope {}): {e}{hint}",
        what.display(),
        plan.uid,
        plan.gid,
        plan.mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::cgroup::JobCgroup;
    use crate::supervisor::{PidfdChild, Waitable};

    fn none_plan() -> Plan {
        Plan {
            mode: Downscope::None,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: Vec::new(),
            no_new_privs: false,
            seccomp: None,
            unlimited_stack: false,
        }
    }

    /// A job cgroup (root, cgroup v2); None when the test is skipped.
    fn cgroup() -> Option<JobCgroup> {
        if !crate::test_support::require_root() {
            return None;
        }
        let cg = JobCgroup::create().expect("create the job cgroup");
        crate::test_support::require(cg.is_some(), "this test needs a cgroup v2 hierarchy")
            .then_some(())?;
        cg
    }

    /// One test: the job cgroup's name is per process (`jacamar-rs.<pid>.<start time>`).
    #[tokio::test]
    #[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
    async fn a_child_cloned_into_the_cgroup_runs_there_as_spawn_would_start_it() {
        let Some(cg) = cgroup() else { return };
        a_child_that_cannot_exec_reports_the_error_and_is_reaped(&cg);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "{{ cat /proc/self/cgroup; pwd; ps -o pgid= -p $$; echo $$; env; }} > {}; exit 5",
            out.display()
        );
        let args = ["-c".to_string(), script];
        let env = [
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("ONLY_THIS".to_string(), "yes".to_string()),
        ];
        let launch = Launch {
            user: "nobody",
            exe: Path::new("/bin/sh"),
            pipes: None,
            args: &args,
            env: &env,
            stdout_to_stderr: false,
        };
        let started = match spawn_into_cgroup(&none_plan(), &launch, cg.dir_fd()) {
            Ok(s) => s,
            Err(CloneError::Unsupported(e)) => {
                panic!("clone3(CLONE_INTO_CGROUP) refused on this kernel: {e}")
            }
            Err(CloneError::Failed(e)) => panic!("the child failed: {e}"),
        };
        let pid = started.pid;
        let mut child = PidfdChild::new(started.pid, started.pidfd).unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(5));
        let text = std::fs::read_to_string(&out).unwrap();
        let name = cg.path().file_name().unwrap().to_str().unwrap().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "not in {name}: {text}"
        );
        assert!(lines.contains(&"/"), "working directory: {text}");
        // Its own process group, led by itself.
        let pgid_line = lines
            .iter()
            .position(|l| *l == "/")
            .map(|i| lines[i + 1].trim())
            .unwrap();
        assert_eq!(pgid_line, pid.to_string(), "{text}");
        assert!(text.contains("ONLY_THIS=yes"), "{text}");
        assert!(
            !text.contains("CARGO"),
            "the environment is exactly the one given: {text}"
        );
        cg.remove().unwrap();
    }

    fn a_child_that_cannot_exec_reports_the_error_and_is_reaped(cg: &JobCgroup) {
        let launch = Launch {
            user: "nobody",
            exe: Path::new("/nonexistent/jacamar"),
            pipes: None,
            args: &[],
            env: &[],
            stdout_to_stderr: false,
        };
        match spawn_into_cgroup(&none_plan(), &launch, cg.dir_fd()) {
            Err(CloneError::Failed(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}")
            }
            Err(CloneError::Unsupported(e)) => panic!("clone3 refused: {e}"),
            Ok(s) => panic!("started {}", s.pid),
        }
        // Reaped: nothing is left in the cgroup.
        assert!(!cg.populated().unwrap());
    }
}
