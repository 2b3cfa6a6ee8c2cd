//! The raw system calls: every `unsafe` block of the library is in this module.
//!
//! Its one job is to wrap a system call (or a short sequence that must run between `fork`
//! and `execve`) in a safe function whose doc comment says what it does and whose every
//! `unsafe` block says, in a `// SAFETY:` comment, why it is sound. Every other module of
//! the crate is `#[forbid(unsafe_code)]` (see `lib.rs`).
//!
//! Layering: the very bottom. It may use std, `libc`, `nix`, `libseccomp` (and tokio's
//! `AsyncFd`, to register a pidfd), never another module of this crate. Ids handed to a
//! credential call are typed (`nix::unistd::Uid`/`Gid`).
//!
//! * [`caps`]: capability sets (capget/capset, the ambient set);
//! * [`cred`]: user, group and supplementary group ids;
//! * [`fd`]: descriptors (close-on-exec, close_range, the handoff pipes' numbers);
//! * [`signal`]: signal dispositions and the signal mask;
//! * [`limits`]: umask and resource limits;
//! * [`seccomp`]: a compiled classic BPF filter and its installation;
//! * [`clone`]: the child between fork (or `clone3(CLONE_INTO_CGROUP)`) and `execve`;
//! * [`pidfd`]: pidfds and reaping children;
//! * [`flock`]: fcntl and flock(2) lock requests.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod caps;
pub mod clone;
pub mod cred;
pub mod fd;
pub mod flock;
pub mod limits;
pub mod pidfd;
pub mod seccomp;
pub mod signal;

/// A raw syscall's return value as a `Result` (negative: the thread's errno).
/// Async-signal-safe.
pub(crate) fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
