//! jacamar-rs: a GitLab Runner custom-executor driver for HPC centres.
//!
//! The data's path through one stage, top to bottom:
//!
//! 1. [`job`]: the runner's environment is read into a [`job::JobContext`].
//! 2. [`config`]: the TOML file is parsed into a validated [`config::Config`].
//! 3. [`authz`]: the privileged side decides who runs the job ([`authz::Target`]); [`privdrop`]
//!    starts `jacamar` as that account (raw system calls in [`sys`]).
//! 4. [`protocol`]: the privileged side hands the stage to `jacamar` over a pipe.
//! 5. [`fs`]: `jacamar`, as the user, creates the job's directories and script file.
//! 6. [`shell`] / [`batch`]: the script is turned into a command.
//! 7. [`supervisor`]: the command runs under one state machine (signals, timeouts, sweeping).
//! 8. [`stages::privileged`]: the outcome is mapped to the runner's exit codes ([`job::RunnerEnv`]).

// Every `unsafe` block says why it is sound (CI denies warnings); all of them are in `sys`,
// every other module forbids unsafe code.
#![warn(clippy::undocumented_unsafe_blocks)]

/// What `--version` prints after the program's name: the version, then a `Version: <x>` line
/// as upstream Jacamar prints it (Spack and site scripts find installs with
/// `Version:\s*(\S+)`).
pub const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nVersion: ",
    env!("CARGO_PKG_VERSION")
);

#[forbid(unsafe_code)]
pub mod audit;
#[forbid(unsafe_code)]
pub mod authz;
#[forbid(unsafe_code)]
pub mod batch;
#[forbid(unsafe_code)]
pub mod clock;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod fs;
#[forbid(unsafe_code)]
pub mod hex;
#[forbid(unsafe_code)]
pub mod job;
#[forbid(unsafe_code)]
pub mod jobenv;
#[forbid(unsafe_code)]
pub mod privdrop;
#[forbid(unsafe_code)]
pub mod protocol;
#[forbid(unsafe_code)]
pub mod shell;
#[forbid(unsafe_code)]
pub mod stages;
#[forbid(unsafe_code)]
pub mod supervisor;
pub mod sys;
#[forbid(unsafe_code)]
#[cfg(test)]
pub(crate) mod test_support;
#[forbid(unsafe_code)]
pub mod text;
