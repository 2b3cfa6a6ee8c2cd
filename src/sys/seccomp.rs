//! A compiled seccomp filter (classic BPF) and its installation.
//!
//! The filter is compiled with libseccomp before the fork (`privdrop::seccomp::build`);
//! the child installs the resulting [`Program`] with one raw `prctl(PR_SET_SECCOMP)` right
//! before `execve` ([`Program::install`], async-signal-safe).

/// A compiled filter, ready to install in a pre-exec hook: 1 to [`MAX_INSTRUCTIONS`]
/// instructions (checked by [`Program::new`], before any fork).
#[derive(Debug, Clone)]
pub struct Program {
    filter: Vec<libc::sock_filter>,
}

/// The most instructions the kernel accepts in one classic BPF filter (`BPF_MAXINSNS`); a
/// longer one would only fail in the child, after the fork. Below `u16::MAX`, the width of
/// `sock_fprog.len`.
pub const MAX_INSTRUCTIONS: usize = 4096;

/// A filter of a length the kernel refuses (0, or over [`MAX_INSTRUCTIONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength(pub usize);

impl Program {
    /// A program of `filter`, refused when empty or longer than [`MAX_INSTRUCTIONS`].
    pub fn new(filter: Vec<libc::sock_filter>) -> Result<Program, BadLength> {
        if filter.is_empty() || filter.len() > MAX_INSTRUCTIONS {
            return Err(BadLength(filter.len()));
        }
        Ok(Program { filter })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.filter.len()
    }

    /// True for no instruction (never for a program made by [`Program::new`]).
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    /// Install the filter on the calling thread. Async-signal-safe (one `prctl`), meant for
    /// a pre-exec hook. Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn install(&self) -> std::io::Result<()> {
        // Never truncated: `new` keeps the length within MAX_INSTRUCTIONS < u16::MAX.
        let len = u16::try_from(self.filter.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        let prog = libc::sock_fprog {
            len,
            filter: self.filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `self.filter`, alive for the duration of the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Set `PR_SET_NO_NEW_PRIVS` on the calling thread (inherited, irreversible).
/// Async-signal-safe.
pub fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    super::check(rc as libc::c_long)
}

/// For the filter's tests: the exit code of a child that (with `filter`: sets no_new_privs
/// and installs it) calls `sethostname` with an over-long name, and exits 42 when that
/// failed with `EPERM`, 43 otherwise. Without the filter the kernel answers EINVAL (or
/// EPERM for non-root) and changes nothing, so this can never rename the host.
#[cfg(test)]
pub(crate) fn sethostname_in_child(filter: Option<&Program>) -> Option<i32> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/true");
    let prog = filter.cloned();
    // SAFETY: only async-signal-safe calls (prctl, sethostname, _exit) in the child; the
    // program was built before the fork and moved into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &prog {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                p.install()?;
            }
            let name = [b'x'; 1000];
            let rc = libc::sethostname(name.as_ptr().cast(), name.len());
            let e = *libc::__errno_location();
            libc::_exit(if rc == -1 && e == libc::EPERM { 42 } else { 43 });
        });
    }
    cmd.status().unwrap().code()
}
