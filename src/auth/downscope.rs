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
//! * `sudo`: `sudo -n -C 5 -u <user> -- <jacamar> --control-fd 3 --status-fd 4 ...`; the
//!   child moves the two pipes to descriptors 3 and 4 (sudo closes everything from 5 on).
//!   Needs the sudoers lines of README.md ("Privilege boundary").
//! * `none`: `jacamar` runs as jacamar-auth's account; `no_new_privs` and seccomp still apply.

use std::os::fd::RawFd;
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

/// The command that starts `jacamar` (`exe`) with `args` after the descriptor options, the
/// control and status pipes inherited as `--control-fd`/`--status-fd`.
pub fn command(
    plan: &Plan,
    user: &str,
    exe: &Path,
    control: RawFd,
    status: RawFd,
    args: &[String],
) -> tokio::process::Command {
    let plan = plan.clone();
    let mut cmd;
    match plan.mode {
        Downscope::Sudo => {
            cmd = tokio::process::Command::new(SUDO);
            cmd.args(["-n", "-C", "5", "-u", user, "--"])
                .arg(exe)
                .args(["--control-fd", "3", "--status-fd", "4"])
                .args(args);
            // SAFETY: dup2/close are async-signal-safe; no allocation happens in the child.
            unsafe {
                cmd.pre_exec(move || {
                    // Move both pipes out of the way first, then to 3 and 4.
                    for (from, tmp) in [(control, 100), (status, 101)] {
                        if libc::dup2(from, tmp) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (tmp, to) in [(100, 3), (101, 4)] {
                        if libc::dup2(tmp, to) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::close(tmp);
                    }
                    Ok(())
                });
            }
        }
        Downscope::Setuid | Downscope::None => {
            cmd = tokio::process::Command::new(exe);
            cmd.arg("--control-fd")
                .arg(control.to_string())
                .arg("--status-fd")
                .arg(status.to_string())
                .args(args);
            // With nothing to change in the child, no hook: std can then use posix_spawn
            // (vfork) instead of fork, which is cheaper for every stage. std resets the
            // signal mask and SIGPIPE itself.
            let nothing_to_do = plan.mode == Downscope::None
                && !plan.no_new_privs
                && !plan.unlimited_stack
                && plan.seccomp.is_none();
            if !nothing_to_do {
                // SAFETY: the hook makes raw syscalls only (no allocation, no locks): the
                // plan was fully built before the fork and is moved into the closure.
                unsafe {
                    cmd.pre_exec(move || drop_privileges(&plan));
                }
            }
        }
    }
    cmd
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
    // SAFETY (whole block): plain syscalls with integer arguments or pointers into `p`,
    // which lives until exec.
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
    format!(
        "failed to start {} as {user} (uid {}, gid {}, downscope {}): {e}",
        what.display(),
        plan.uid,
        plan.gid,
        plan.mode.as_str()
    )
}
