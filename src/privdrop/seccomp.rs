//! `[auth.seccomp]`: a system-call filter for the job, built with libseccomp.
//!
//! libseccomp allocates, so the filter is compiled to a classic BPF program *before* the
//! fork ([`build`]); the child installs that program with one raw `prctl(PR_SET_SECCOMP)`
//! right before `execve` ([`Program::install`], async-signal-safe). The filter is inherited
//! by `jacamar` and everything the job starts.
//!
//! * default action: allow (`log_allowed_actions`: log and allow); `block_all`: block;
//! * `block_calls`: blocked, unless also in `allow_calls` (which takes precedence);
//! * `block_all` + `allow_calls`: only those are allowed;
//! * blocking kills the process (`SIGSYS`), or with `block_with_errno` the call fails with
//!   `EPERM`;
//! * `limit_setuid`: `setuid`/`setreuid`/`setresuid`/`setfsuid` with any id other than the
//!   job's uid are blocked (a `-1` "unchanged" argument too), same for the gid calls;
//! * `tty_rules`: `ioctl(fd, TIOCSTI)` and `ioctl(fd, TIOCLINUX)` (pushing input into a
//!   terminal) are blocked.
//!
//! There are no default filters: with none of the keys above set, no filter is loaded.

use std::io::{Read, Seek};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::authz::AuthError;
use crate::config::Seccomp;
use crate::sys::seccomp::BadLength;

pub use crate::sys::seccomp::{Program, MAX_INSTRUCTIONS};

/// Whether the configuration asks for a filter.
pub fn wanted(cfg: &Seccomp) -> bool {
    !cfg.disabled
        && (cfg.block_all
            || !cfg.block_calls.is_empty()
            || cfg.limit_setuid
            || cfg.tty_rules
            || cfg.log_allowed_actions)
}

fn err(e: impl std::fmt::Display) -> AuthError {
    AuthError::Seccomp(e.to_string())
}

fn syscall(name: &str, key: &str) -> Result<ScmpSyscall, AuthError> {
    ScmpSyscall::from_name(name).map_err(|_| {
        AuthError::Seccomp(format!(
            "unknown system call {name:?} in [auth.seccomp] {key}"
        ))
    })
}

/// Compile the filter for a job running as `uid:gid`; `None` when no filter is wanted.
pub fn build(cfg: &Seccomp, uid: u32, gid: u32) -> Result<Option<Program>, AuthError> {
    if !wanted(cfg) {
        return Ok(None);
    }
    let block = if cfg.block_with_errno {
        ScmpAction::Errno(libc::EPERM)
    } else {
        ScmpAction::KillProcess
    };
    let allow = if cfg.log_allowed_actions {
        ScmpAction::Log
    } else {
        ScmpAction::Allow
    };
    let default = if cfg.block_all { block } else { allow };
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    if cfg.block_all {
        for name in &cfg.allow_calls {
            ctx.add_rule(allow, syscall(name, "allow_calls")?)
                .map_err(err)?;
        }
    } else {
        for name in cfg
            .block_calls
            .iter()
            .filter(|n| !cfg.allow_calls.contains(n))
        {
            ctx.add_rule(block, syscall(name, "block_calls")?)
                .map_err(err)?;
        }
        if cfg.limit_setuid {
            let ids: [(&str, u32, usize); 8] = [
                ("setuid", uid, 1),
                ("setfsuid", uid, 1),
                ("setreuid", uid, 2),
                ("setresuid", uid, 3),
                ("setgid", gid, 1),
                ("setfsgid", gid, 1),
                ("setregid", gid, 2),
                ("setresgid", gid, 3),
            ];
            for (name, id, nargs) in ids {
                let sc = syscall(name, "limit_setuid")?;
                for arg in 0..nargs as u32 {
                    let cmp = ScmpArgCompare::new(arg, ScmpCompareOp::NotEqual, id as u64);
                    ctx.add_rule_conditional(block, sc, &[cmp]).map_err(err)?;
                }
            }
        }
        if cfg.tty_rules {
            let ioctl = syscall("ioctl", "tty_rules")?;
            for req in [libc::TIOCSTI, libc::TIOCLINUX] {
                let cmp = ScmpArgCompare::new(1, ScmpCompareOp::MaskedEqual(0xffff_ffff), req);
                ctx.add_rule_conditional(block, ioctl, &[cmp])
                    .map_err(err)?;
            }
        }
    }
    program(export(&ctx)?).map(Some)
}

/// The filter as BPF instructions (through a memfd: libseccomp 2.5 exports to a descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, AuthError> {
    let fd = memfd_create(c"jacamar-seccomp", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| err(format!("memfd_create: {}", std::io::Error::from(e))))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(err)?;
    file.rewind().map_err(err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(err(format!(
            "libseccomp exported {} bytes, not a BPF program",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// A program of `filter`, refused (with what to change) when empty or longer than
/// [`MAX_INSTRUCTIONS`].
pub fn program(filter: Vec<libc::sock_filter>) -> Result<Program, AuthError> {
    Program::new(filter).map_err(|BadLength(len)| {
        err(format!(
            "the filter has {len} BPF instructions; the kernel accepts 1 to {MAX_INSTRUCTIONS} \
             (block or allow fewer calls: block_calls, allow_calls)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Seccomp {
        Seccomp::default()
    }

    #[test]
    fn nothing_configured_means_no_filter() {
        assert!(build(&cfg(), 1000, 1000).unwrap().is_none());
        let mut c = cfg();
        c.block_calls = vec!["sethostname".into()];
        c.disabled = true;
        assert!(build(&c, 1000, 1000).unwrap().is_none());
    }

    #[test]
    fn every_option_compiles() {
        let mut c = cfg();
        c.block_calls = vec!["sethostname".into(), "sendfile".into()];
        c.limit_setuid = true;
        c.tty_rules = true;
        c.block_with_errno = true;
        assert!(build(&c, 1000, 1000).unwrap().unwrap().len() > 4);
        let mut c = cfg();
        c.block_all = true;
        c.allow_calls = vec!["read".into(), "write".into(), "exit_group".into()];
        c.log_allowed_actions = true;
        assert!(!build(&c, 1000, 1000).unwrap().unwrap().is_empty());
    }

    #[test]
    fn a_filter_the_kernel_would_refuse_is_refused_before_any_fork() {
        let insn = libc::sock_filter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: 0x7fff_0000, // SECCOMP_RET_ALLOW
        };
        assert!(program(vec![insn; MAX_INSTRUCTIONS]).is_ok());
        for n in [0, MAX_INSTRUCTIONS + 1, u16::MAX as usize + 1] {
            let e = program(vec![insn; n]).unwrap_err().to_string();
            assert!(e.contains(&format!("has {n} BPF instructions")), "{e}");
            assert!(e.contains("4096"), "{e}");
        }
    }

    #[test]
    fn unknown_call_is_named() {
        let mut c = cfg();
        c.block_calls = vec!["no_such_call".into()];
        let e = build(&c, 1, 1).unwrap_err().to_string();
        assert!(
            e.contains("no_such_call") && e.contains("block_calls"),
            "{e}"
        );
    }

    #[test]
    fn installed_filter_blocks_in_a_child() {
        // Fork a child that installs an errno filter on sethostname and reports the errno.
        let mut c = cfg();
        c.block_calls = vec!["sethostname".into()];
        c.block_with_errno = true;
        let p = build(&c, 0, 0).unwrap().unwrap();
        assert_eq!(
            crate::sys::seccomp::sethostname_in_child(Some(&p)),
            Some(42)
        );
    }

    /// The control case of [`installed_filter_blocks_in_a_child`]: without the filter the
    /// same call does not give EPERM (as root), so that test can fail.
    #[test]
    #[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
    fn without_the_filter_the_call_is_not_refused_with_eperm() {
        if !crate::test_support::require(
            nix::unistd::geteuid().is_root(),
            "the control case (no filter, no EPERM) needs root",
        ) {
            return;
        }
        assert_eq!(crate::sys::seccomp::sethostname_in_child(None), Some(43));
    }
}
