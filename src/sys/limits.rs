//! The file mode mask and resource limits, and the [`ProcessState`] a child sets before
//! exec.

use super::{check, signal};

/// This process's file mode mask (read by swapping it and putting the old one back).
pub fn current_umask() -> libc::mode_t {
    // SAFETY: umask only swaps this process's file mode mask; the old one is put back.
    unsafe {
        let old = libc::umask(0o077);
        libc::umask(old);
        old
    }
}

/// This process's limits of `res` (soft and hard), `None` when they cannot be read.
pub fn getrlimit(res: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    (unsafe { libc::getrlimit(res, &mut l) } == 0).then_some(l)
}

/// Raise the soft stack limit to the hard limit (`[general] unlimited_stack`), with raw
/// syscalls only: async-signal-safe, for the child between fork and exec.
pub fn raise_stack_to_hard() -> std::io::Result<()> {
    // SAFETY: getrlimit/setrlimit on a zeroed local struct of this frame (a struct of
    // integers, for which zero is valid); no allocation.
    unsafe {
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
        ))
    }
}

/// Settings for a child, applied between fork and exec: a file mode mask, resource limits
/// and signals to ignore.
#[derive(Debug, Clone, Default)]
pub struct ProcessState {
    umask: Option<libc::mode_t>,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    ignore: Vec<i32>,
}

impl ProcessState {
    /// Set `umask` (when some), each of `limits`, and ignore each signal of `ignore`.
    pub fn new(
        umask: Option<libc::mode_t>,
        limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
        ignore: Vec<i32>,
    ) -> ProcessState {
        ProcessState {
            umask,
            limits,
            ignore,
        }
    }

    /// The file mode mask to set, if any.
    pub fn umask(&self) -> Option<libc::mode_t> {
        self.umask
    }

    /// The resource limits to set.
    pub fn limits(&self) -> &[(libc::__rlimit_resource_t, libc::rlimit)] {
        &self.limits
    }

    /// True when nothing is to be set (the child then needs no hook).
    pub fn is_empty(&self) -> bool {
        self.umask.is_none() && self.limits.is_empty() && self.ignore.is_empty()
    }

    /// Apply them to the calling process: the child, before exec. Raw syscalls only (no
    /// allocation): umask, setrlimit, sigaction.
    pub fn apply(&self) -> std::io::Result<()> {
        if let Some(m) = self.umask {
            // SAFETY: umask with an integer argument; it cannot fail.
            unsafe { libc::umask(m) };
        }
        for (res, l) in &self.limits {
            // SAFETY: setrlimit reads one struct owned by `self`, alive for the call.
            if unsafe { libc::setrlimit(*res, l) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for &s in &self.ignore {
            signal::ignore(s)?;
        }
        Ok(())
    }

    /// Have `cmd`'s child apply them between fork and exec.
    pub fn apply_before_exec(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: `apply` makes raw syscalls only (umask, setrlimit, sigaction) on data
        // built before the fork and moved into the closure; nothing allocates.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }
}
