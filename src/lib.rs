//! jacamar-rs: a GitLab Runner custom-executor driver for HPC centres.
//!
//! The data's path through one stage, top to bottom:
//!
//! 1. [`job`]: the runner's environment is read into a [`job::JobContext`].
//! 2. [`config`]: the TOML file is parsed into a validated [`config::Config`].
//! 3. [`auth`]: the privileged side decides who runs the job ([`auth::Target`]).
//! 4. [`protocol`]: the privileged side hands the stage to `jacamar` over a pipe.
//! 5. [`fs`]: `jacamar`, as the user, creates the job's directories and script file.
//! 6. [`shell`] / [`batch`]: the script is turned into a command.
//! 7. [`supervisor`]: the command runs under one state machine (signals, timeouts, sweeping).
//! 8. [`stages::privileged`]: the outcome is mapped to the runner's exit codes ([`job::RunnerEnv`]).

// Every `unsafe` block says why it is sound (CI denies warnings).
#![warn(clippy::undocumented_unsafe_blocks)]

/// What `--version` prints after the program's name: the version, then a `Version: <x>` line
/// as upstream Jacamar prints it (Spack and site scripts find installs with
/// `Version:\s*(\S+)`).
pub const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nVersion: ",
    env!("CARGO_PKG_VERSION")
);

pub mod auth;
pub mod batch;
pub mod clock;
pub mod config;
pub mod fs;
pub mod hex;
pub mod job;
pub mod protocol;
pub mod shell;
pub mod stages;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod test_support;
pub mod text;
