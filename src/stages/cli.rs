//! The runner-facing command line, shared by `jacamar-auth` and `jacamar --no-auth`: the four
//! hooks of `[runners.custom]` as sub-commands, and the start-up every runner-facing process
//! does before anything else.

use std::path::PathBuf;

use clap::Subcommand;

use crate::protocol::Stage;

/// One hook of `[runners.custom]`.
#[derive(Subcommand, Debug)]
pub enum StageCommand {
    /// config_exec: print the job's directories and state as JSON on stdout.
    Config {
        /// Jacamar TOML configuration file.
        #[arg(long, value_name = "FILE")]
        configuration: Option<PathBuf>,
    },
    /// prepare_exec: create the job's directories.
    Prepare {
        /// Configuration file (normally passed from config through job_env).
        #[arg(long, value_name = "FILE")]
        configuration: Option<PathBuf>,
    },
    /// run_exec: run one stage's script as the job's user.
    Run {
        /// Configuration file (normally passed from config through job_env).
        #[arg(long, value_name = "FILE")]
        configuration: Option<PathBuf>,
        /// The runner's script for this stage.
        script: PathBuf,
        /// The stage's name (prepare_script, get_sources, build_script, step_*, ...).
        stage: String,
    },
    /// cleanup_exec: remove the job's script files; safe to run several times.
    Cleanup {
        /// Jacamar TOML configuration file.
        #[arg(long, value_name = "FILE")]
        configuration: Option<PathBuf>,
    },
}

impl StageCommand {
    /// The stage to run and the `--configuration` given with it.
    pub fn into_stage(self) -> (Stage<PathBuf>, Option<PathBuf>) {
        match self {
            StageCommand::Config { configuration } => (Stage::Config, configuration),
            StageCommand::Prepare { configuration } => (Stage::Prepare, configuration),
            StageCommand::Run {
                configuration,
                script,
                stage,
            } => (
                Stage::Run {
                    name: stage,
                    script,
                },
                configuration,
            ),
            StageCommand::Cleanup { configuration } => (Stage::Cleanup, configuration),
        }
    }
}

/// What a runner-facing process does first, before it reads anything: no core dump and no
/// ptrace by its own uid while it holds the runner's environment, job tokens and (as root or
/// with capabilities) privileges (the execve of `jacamar` resets the flag for that process);
/// an empty signal mask (one inherited from a wrapper or a runner thread would hold back the
/// runner's SIGTERM, and the cancel would do nothing); every inherited descriptor
/// close-on-exec (one left open by whoever started us must never reach `jacamar` or the job).
/// The error is the sentence for the runner's log.
pub fn start_up() -> Result<(), StartUpError> {
    nix::sys::prctl::set_dumpable(false).map_err(StartUpError::Dumpable)?;
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(StartUpError::SignalMask)?;
    crate::sys::fd::cloexec_inherited_fds().map_err(StartUpError::Cloexec)
}

/// What [`start_up`] could not do.
#[derive(Debug, thiserror::Error)]
pub enum StartUpError {
    #[error("prctl(PR_SET_DUMPABLE, 0) failed: {0}")]
    Dumpable(#[source] nix::errno::Errno),
    #[error("failed to clear the inherited signal mask: {0}")]
    SignalMask(#[source] nix::errno::Errno),
    #[error("failed to mark inherited descriptors close-on-exec: {0}")]
    Cloexec(#[source] std::io::Error),
}
