//! The child between fork and `execve`: the pre-exec hook of a `Command`, and a spawn by
//! `clone3(CLONE_INTO_CGROUP)`.
//!
//! Everything the child does is decided and allocated before the fork (a [`ChildPlan`],
//! [`ChildFds`], an [`Exec`]); the child itself makes raw syscalls only
//! (async-signal-safe), in this order: descriptors ([`ChildFds`]), then unless sudo drops
//! privileges itself: the account ([`cred::become_account`]), the stack limit,
//! `PR_SET_NO_NEW_PRIVS`, an empty signal mask, the seccomp filter, right before `execve`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cred::{self, Credentials};
use super::fd::{self, ChildFds};
use super::seccomp::{self, Program};
use super::{limits, pidfd, signal};

/// Who the child becomes.
#[derive(Debug, Clone)]
pub enum Identity {
    /// It stays this process's account (`downscope = "none"`).
    Keep,
    /// It becomes this account (`downscope = "setuid"`).
    Become(Credentials),
    /// It runs `sudo`, which drops privileges itself: nothing but the descriptors (and, on
    /// the `clone3` path, the signal mask) is done.
    Sudo,
}

/// What the child does after its descriptors, prepared before the fork.
#[derive(Debug, Clone)]
pub struct ChildPlan {
    pub identity: Identity,
    /// Raise the soft stack limit to the hard limit.
    pub unlimited_stack: bool,
    pub no_new_privs: bool,
    pub seccomp: Option<Program>,
}

/// The child's side, between fork and exec, when it does not run `sudo`. Raw syscalls
/// only (async-signal-safe).
fn drop_privileges(p: &ChildPlan) -> std::io::Result<()> {
    if let Identity::Become(c) = &p.identity {
        cred::become_account(c)?;
    }
    if p.unlimited_stack {
        limits::raise_stack_to_hard()?;
    }
    if p.no_new_privs {
        seccomp::set_no_new_privs()?;
    }
    signal::unblock_all()?;
    if let Some(f) = &p.seccomp {
        f.install()?;
    }
    Ok(())
}

/// Have `cmd`'s child arrange `fds` and then follow `plan` between fork and exec.
pub fn prepare(cmd: &mut std::process::Command, fds: ChildFds, plan: ChildPlan) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook makes raw syscalls only (no allocation, no locks): the plans
    // were fully built before the fork and are moved into the closure. std resets the
    // signal mask and SIGPIPE itself for the hookless path.
    unsafe {
        cmd.pre_exec(move || {
            fds.arrange()?;
            if let Identity::Sudo = plan.identity {
                // sudo drops privileges itself (and closes from 5 on again: `-C 5`).
                Ok(())
            } else {
                drop_privileges(&plan)
            }
        });
    }
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
    /// profile that refuses `clone3`, ...): nothing was started; start it through a
    /// `Command` that writes the cgroup's `cgroup.procs` instead.
    Unsupported(std::io::Error),
    /// The child started and failed before `execve` (or `execve` failed): the error of
    /// the step that failed, as `spawn` would report it. The child has been reaped.
    Failed(std::io::Error),
}

/// The program a [`spawn_into_cgroup`] child executes, built before the clone.
#[derive(Debug)]
pub struct Exec<'a> {
    pub program: &'a CStr,
    pub argv: &'a [CString],
    /// The child's whole environment (`KEY=value`).
    pub envp: &'a [CString],
    /// Its stdin (moved to 0).
    pub stdin: BorrowedFd<'a>,
    /// Its stdout is its stderr.
    pub stdout_to_stderr: bool,
    /// The pipes to move to 3 and 4.
    pub pipes: Option<fd::Pipes>,
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

/// Start `exec` as a process created inside the cgroup `cgroup_dir` by
/// `clone3(CLONE_INTO_CGROUP)` (Linux 5.7): its own process group, working directory `/`,
/// its descriptors as [`ChildFds`] arranges them, then `plan`. A failure between `clone3`
/// and `execve` comes back through a close-on-exec pipe, as with std's spawn.
pub fn spawn_into_cgroup(
    plan: &ChildPlan,
    exec: &Exec<'_>,
    cgroup_dir: BorrowedFd<'_>,
) -> Result<Started, CloneError> {
    let failed = CloneError::Failed;
    let argv = null_terminated(exec.argv);
    let envp = null_terminated(exec.envp);
    let (err_r, err_w) = fd::error_pipe().map_err(failed)?;
    let child = ChildSteps {
        plan,
        fds: ChildFds::new(exec.pipes, None),
        program: exec.program,
        argv: &argv,
        envp: &envp,
        root: c"/",
        stdin: exec.stdin.as_raw_fd(),
        stdout_to_stderr: exec.stdout_to_stderr,
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
    match fd::read_child_error(&err_r) {
        None => Ok(Started { pid, pidfd }),
        Some(e) => {
            pidfd::reap(pid);
            Err(CloneError::Failed(e))
        }
    }
}

/// `execve`'s form of `strings`: their pointers, then a null one.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child of [`spawn_into_cgroup`] does, all prepared by the parent.
struct ChildSteps<'a> {
    plan: &'a ChildPlan,
    fds: ChildFds,
    program: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    root: &'a CStr,
    stdin: RawFd,
    stdout_to_stderr: bool,
    error_fd: RawFd,
}

impl ChildSteps<'_> {
    /// Between `clone3` and `execve`: what std's spawn and the hook of [`prepare`] do, in
    /// the same order: SIGPIPE back to its default (Rust ignores it, and an ignored signal
    /// stays ignored across exec), stdin and stdout, working directory, own process group,
    /// the descriptors, the privilege drop (which also empties the signal mask), `execve`.
    /// On failure the errno goes to the error pipe and the child exits 127.
    ///
    /// # Safety
    /// Only in the child of a fork-like clone of a process whose `self` is fully built.
    unsafe fn run(&self) -> ! {
        let steps = || -> std::io::Result<()> {
            signal::default_sigpipe()?;
            // SAFETY: raw syscalls on descriptors and on pointers into data the parent built
            // before the clone; nothing allocates or takes a lock.
            unsafe {
                if libc::dup2(self.stdin, 0) < 0
                    || (self.stdout_to_stderr && libc::dup2(2, 1) < 0)
                    || libc::chdir(self.root.as_ptr()) < 0
                    || libc::setpgid(0, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            self.fds.arrange()?;
            if let Identity::Sudo = self.plan.identity {
                // sudo drops privileges itself; the mask is ours to clear.
                signal::unblock_all()?;
            } else {
                drop_privileges(self.plan)?;
            }
            // SAFETY: as above; argv and envp are null-terminated arrays of pointers into
            // CStrings the parent keeps alive.
            unsafe {
                libc::execve(
                    self.program.as_ptr(),
                    self.argv.as_ptr(),
                    self.envp.as_ptr(),
                );
            }
            Err(std::io::Error::last_os_error())
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
