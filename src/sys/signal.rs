//! Signal dispositions and the signal mask. Every function here is async-signal-safe.

use super::check;

/// Empty this thread's signal mask (`rt_sigprocmask(SIG_SETMASK, {})`): what std's spawn
/// does in the child, done by our own children between fork and exec.
pub fn unblock_all() -> std::io::Result<()> {
    // SAFETY: sigemptyset fills a local set; rt_sigprocmask reads it (the kernel's sigset
    // size, one c_ulong) and writes no old mask (null). No allocation.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        ))
    }
}

/// Put `SIGPIPE` back to its default action (Rust ignores it, and an ignored signal stays
/// ignored across exec).
pub fn default_sigpipe() -> std::io::Result<()> {
    // SAFETY: signal(2) with a constant disposition (no handler function of ours).
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process ignores `sig` (false when the query fails).
pub fn is_ignored(sig: i32) -> bool {
    // SAFETY: a query only (no new action), into a zeroed struct we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Ignore `sig` from now on (`SIG_IGN`; survives exec).
pub fn ignore(sig: i32) -> std::io::Result<()> {
    // SAFETY: sigaction reads a zeroed local struct whose action is SIG_IGN (no handler
    // function); no old action is written.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_IGN;
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
