//! Credentials: becoming the job's account (uid, gid, supplementary groups) in the child,
//! between fork and exec, with raw syscalls only.

use nix::unistd::{Gid, Uid};

use super::{caps, check};

/// The account a child becomes, prepared before the fork (the group list is allocated
/// here, never in the child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<libc::gid_t>,
}

impl Credentials {
    /// `uid`, `gid` and the supplementary groups `groups`.
    pub fn new(uid: Uid, gid: Gid, groups: &[Gid]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        }
    }
}

/// Become `c` for good, in this order: `setgroups(c's groups)`, `setresgid(g,g,g)`,
/// `setresuid(u,u,u)`, clear every capability set (a caps-only service account would keep
/// CAP_SETUID/SETGID otherwise), then verify: every uid and gid is the target's and no
/// capability is left (`EPERM` otherwise). Raw syscalls only: async-signal-safe, meant for
/// the child between fork and exec.
pub fn become_account(c: &Credentials) -> std::io::Result<()> {
    let (uid, gid) = (c.uid.as_raw(), c.gid.as_raw());
    // SAFETY: plain syscalls with integer arguments, or a pointer into `c.groups` (alive and
    // of the given length for the call); no allocation.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            c.groups.len(),
            c.groups.as_ptr(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    caps::clear_all()?;
    // Verify: every uid and gid is the target's and no capability is left.
    if getres(libc::SYS_getresuid)? != (uid, uid, uid) {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    if getres(libc::SYS_getresgid)? != (gid, gid, gid) || !caps::all_empty()? {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// The real, effective and saved ids of `getresuid` or `getresgid` (`nr`, either syscall's
/// number). Async-signal-safe.
fn getres(nr: libc::c_long) -> std::io::Result<(u32, u32, u32)> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: getresuid/getresgid (the only callers' `nr`) write three u32 locals of this
    // frame (uid_t and gid_t are u32).
    check(unsafe {
        libc::syscall(
            nr,
            &mut r as *mut u32,
            &mut e as *mut u32,
            &mut s as *mut u32,
        )
    })?;
    Ok((r, e, s))
}
