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
//!
//! This file is the policy (which mode, which arguments, what the child must do); the
//! child's raw system calls are in `crate::sys` (`clone`, `cred`, `caps`, `fd`, `signal`,
//! `limits`, `seccomp`).

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::seccomp;
use crate::authz::{AuthError, Target};
use crate::config::{Config, Downscope};
use crate::sys::clone::{self, ChildPlan, Exec, Identity};
use crate::sys::cred::Credentials;
use crate::sys::fd::ChildFds;

/// Where `sudo` is looked for.
pub const SUDO: &str = "/usr/bin/sudo";

/// Everything the child needs, prepared before the fork.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Downscope,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
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
        uid: Uid::from_raw(target.account.uid),
        gid: Gid::from_raw(target.account.gid),
        groups: target.groups.iter().map(|&g| Gid::from_raw(g)).collect(),
        no_new_privs,
        seccomp: filter,
        unlimited_stack: config.general.unlimited_stack,
    })
}

pub use crate::sys::clone::{CloneError, Started};
pub use crate::sys::fd::{cloexec_inherited_fds, Pipes, CONTROL_FD, STATUS_FD};

impl Plan {
    /// What the child does after its descriptors (built before the fork).
    fn child(&self) -> ChildPlan {
        ChildPlan {
            identity: match self.mode {
                Downscope::None => Identity::Keep,
                Downscope::Setuid => {
                    Identity::Become(Credentials::new(self.uid, self.gid, &self.groups))
                }
                Downscope::Sudo => Identity::Sudo,
            },
            unlimited_stack: self.unlimited_stack,
            no_new_privs: self.no_new_privs,
            seccomp: self.seccomp.clone(),
        }
    }
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
        let fds = ChildFds::new(pipes, cgroup_procs);
        clone::prepare(cmd.as_std_mut(), fds, plan.child());
    }
    cmd
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

/// Start what [`command`] describes (same program, arguments, descriptors and privilege
/// drop; its own process group, stdin `/dev/null`, working directory `/`, exactly `env`)
/// as a process created inside the cgroup `cgroup_dir` by `clone3(CLONE_INTO_CGROUP)`
/// (Linux 5.7), instead of one that moves itself there by writing `cgroup.procs`.
///
/// Why: a move between cgroups takes the kernel's cgroup threadgroup lock for writing,
/// which waits for an RCU grace period: 5-40 ms per stage on the project's machine (median
/// 17 ms), against nothing for a process created inside (BENCHMARKS.md, "What was changed
/// for the per-stage time"). The child between `clone3` and `execve` does what the hook of
/// [`command`] does, with raw syscalls only (`sys::clone`).
pub fn spawn_into_cgroup(
    plan: &Plan,
    launch: &Launch<'_>,
    cgroup_dir: BorrowedFd<'_>,
) -> Result<Started, CloneError> {
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
    let mut argv: Vec<CString> = Vec::new();
    let program = if plan.mode == Downscope::Sudo {
        for a in [SUDO, "-n", "-C", "5", "-u", launch.user, "--"] {
            argv.push(cstr(a.as_bytes())?);
        }
        argv.push(cstr(launch.exe.as_os_str().as_bytes())?);
        cstr(SUDO.as_bytes())?
    } else {
        argv.push(cstr(launch.exe.as_os_str().as_bytes())?);
        cstr(launch.exe.as_os_str().as_bytes())?
    };
    if launch.pipes.is_some() {
        for a in [
            "--control-fd",
            &CONTROL_FD.to_string(),
            "--status-fd",
            &STATUS_FD.to_string(),
        ] {
            argv.push(cstr(a.as_bytes())?);
        }
    }
    for a in launch.args {
        argv.push(cstr(a.as_bytes())?);
    }
    let mut envp = Vec::with_capacity(launch.env.len());
    for (k, v) in launch.env {
        envp.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let dev_null = std::fs::File::open("/dev/null").map_err(failed)?;
    let exec = Exec {
        program: &program,
        argv: &argv,
        envp: &envp,
        stdin: dev_null.as_fd(),
        stdout_to_stderr: launch.stdout_to_stderr,
        pipes: launch.pipes,
    };
    clone::spawn_into_cgroup(&plan.child(), &exec, cgroup_dir)
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
            uid: nix::unistd::getuid(),
            gid: nix::unistd::getgid(),
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
