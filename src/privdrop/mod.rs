//! Privilege drop: how `jacamar` becomes the job's account. Its one job is to turn the
//! authorization's [`crate::authz::Target`] into a started process: [`downscope`] (the
//! policy of `setuid`/`sudo`/`none`, the command and the spawn into the job's cgroup) and
//! [`seccomp`] (the `[auth.seccomp]` filter, compiled before the fork).
//!
//! The raw system calls (credentials, capabilities, descriptors, `clone3`, the filter's
//! installation) are in [`crate::sys`]; this module holds no `unsafe`.
//!
//! Layering: at the auth/batch/shell layer. It may import `authz` (the [`Target`] and
//! [`AuthError`] it works from), `config` and `sys`; never `stages` or a binary.
//!
//! [`Target`]: crate::authz::Target
//! [`AuthError`]: crate::authz::AuthError

pub mod downscope;
pub mod seccomp;
