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
//! 8. [`stages::privileged`]: how the stage ended is mapped to the runner's exit codes
//!    ([`job::RunnerEnv`]).
//!
//! # Glossary
//!
//! One name per concept; the type that holds it in brackets.
//!
//! * **the runner**: GitLab Runner, whose custom executor calls our binaries, one call a stage
//!   ([`job::RunnerEnv`]: its exit codes; [`job::JobResponse`]: the job it was sent). Its
//!   `config.toml`, where it is registered, is checked by `jacamar-auth validate`
//!   ([`config::runner`]); the emulator of it is `jacamar-sim` (`src/bin/jacamar-sim/`).
//! * **stage**: one call of a hook of the runner's `[runners.custom]`: `config`, `prepare`,
//!   `run` (with the name of the run stage, `build_script`, `step_*`, ...) or `cleanup`
//!   ([`protocol::Stage`]).
//! * **job**: the CI job the stages belong to, as read from the runner's `CUSTOM_ENV_*`
//!   ([`job::JobContext`]).
//! * **jacamar-auth**: the binary the runner calls, as root or a service account with
//!   `cap_setuid,cap_setgid`: it authorizes the job and hands each stage over
//!   ([`stages::privileged`]).
//! * **jacamar**: the binary that runs a stage as the job's user ([`stages::user`]); the
//!   handoff and its status travel over two pipes ([`protocol::Handoff`], [`protocol::Status`]).
//! * **downscope**: how `jacamar-auth` becomes the job's account to start `jacamar`
//!   (`[auth] downscope`, [`config::Downscope`]; the account: [`authz::Target`]; the
//!   privilege drop: [`privdrop::downscope::Plan`]).
//! * **data_dir / base dir**: `[general] data_dir` is the root of every user's directories;
//!   a user's base dir is `<data_dir>/<user>`, owned by the user ([`fs::JobPaths::base_dir`]).
//! * **builds dir**: where the runner checks the project out (`builds_dir` of `config`'s
//!   answer, [`fs::builds::BuildsInfo`]; planned by [`fs::builds::BuildsPlan`]).
//! * **claim**: a job's hold on one of a project's concurrent build directories
//!   (`limit_build_dir`, [`fs::claim::ClaimDir`]).
//! * **executor**: `[general] executor`, the way a `run` stage's script runs: `shell`, or a
//!   batch scheduler ([`config::Executor`]).
//! * **scheduler**: a batch system (Slurm, PBS, LSF, Flux, Cobalt) and the commands it is
//!   driven with ([`batch::Scheduler`]).
//! * **batch job**: a submitted stage's job at the scheduler (what it is given:
//!   [`batch::BatchJob`]; its state machine: `batch::run::BatchRun`; its states:
//!   [`batch::JobState`], its final word [`batch::Final`]).
//! * **allocation**: the nodes a scheduler grants a batch job, where the submitted stage's
//!   script runs (the scheduler's, never ours to hold).
//! * **status class**: how a stage ended, as the runner counts it: success, build failure
//!   (`BUILD_FAILURE_EXIT_CODE`) or system failure (`SYSTEM_FAILURE_EXIT_CODE`); on the wire
//!   [`protocol::Status`] (its name: [`protocol::Status::class`]); what `jacamar-auth`
//!   makes of the status pipe: [`protocol::StatusVerdict`].
//! * **how it ended**, one type a level: a supervised process [`supervisor::ChildEnd`], a
//!   stage for the runner `stages::privileged::end::StageEnd`, a batch job
//!   [`batch::outcome::JobEnd`], an emulator's call `CallEnd` (in `jacamar-sim`).

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
pub mod container;
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
