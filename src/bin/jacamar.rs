//! `jacamar`: runs one stage of a CI job as the job's user.
//!
//! Not meant to be started by hand: `jacamar-auth` starts it with the two pipes of the
//! handoff protocol (see the library's `protocol` module).

// No unsafe code: the raw system calls are in the library's `sys` module.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use jacamar::stages::cli::StageCommand;

/// Runs one stage of a CI job as the job's user (started by jacamar-auth).
#[derive(Parser, Debug)]
#[command(name = "jacamar", version = jacamar::VERSION_TEXT, about, long_about = None)]
struct Cli {
    /// Descriptor on which jacamar-auth hands over the stage and sends control messages
    /// (required by every action but `signal`).
    #[arg(long, value_name = "FD")]
    control_fd: Option<i32>,
    /// Descriptor on which the stage's status is reported back (as --control-fd).
    #[arg(long, value_name = "FD")]
    status_fd: Option<i32>,
    /// Run the runner's hooks directly, without jacamar-auth and without authorization
    /// (`jacamar --no-auth config|prepare|run|cleanup ...`; see `jacamar --no-auth --help`).
    #[arg(long)]
    no_auth: bool,
    #[command(subcommand)]
    command: Command,
}

/// `jacamar`'s sub-commands: the stage named on its command line (the handoff's stage is
/// the one run), and its helpers.
#[derive(Subcommand, Debug)]
enum Command {
    /// Decide (claim, verify) the job's builds directory for config_exec.
    Config,
    /// Create the job's directories.
    Prepare,
    /// Run a stage's script (the script itself arrives on the control descriptor).
    Run {
        /// The runner's stage name (for process listings; the handoff is authoritative).
        stage: String,
    },
    /// Remove the job's script files.
    Cleanup,
    /// Record the login shell's state for the later stages of a JACAMAR_BASH_PROFILE_ONCE job
    /// (run by the job's first stage, inside its login shell).
    #[command(hide = true)]
    CaptureEnv {
        /// Where the state goes (created 0600 or replaced; a symbolic link is refused).
        output: std::path::PathBuf,
    },
    /// Send a signal to processes of the job (jacamar-auth runs this as the job's user when
    /// it may not signal them itself: a caps-only service account). Every pid is tried;
    /// exit 0 when each was signalled or was already gone, 1 otherwise.
    Signal {
        /// Signal name (KILL, SIGKILL, TERM, ...).
        signal: String,
        /// Process ids (positive).
        #[arg(required = true)]
        pids: Vec<i32>,
    },
}

/// `jacamar --no-auth`: the runner's hooks without jacamar-auth, for a runner that runs as an
/// ordinary account and needs no account switch (upstream's name). No authorization: every
/// job runs as this account; root, capabilities, `downscope` other than "none" and the
/// `[auth]` keys that judge the GitLab user are refused (see `privileged::no_auth_problems`).
#[derive(Parser, Debug)]
#[command(
    name = "jacamar --no-auth",
    version = jacamar::VERSION_TEXT,
    about = "The runner's hooks without jacamar-auth and without authorization: every job runs \
             as this (non-root, unprivileged) account, with [auth] downscope = \"none\"",
    long_about = None
)]
struct NoAuthCli {
    /// Run the runner's hooks directly, without jacamar-auth and without authorization.
    #[arg(long, required = true)]
    no_auth: bool,
    /// Show full error details in the job log (by default they go to the audit log only).
    #[arg(short = 'u', long, global = true)]
    unobfuscated: bool,
    #[command(subcommand)]
    command: StageCommand,
}

/// `--no-auth` among the global flags (before the sub-command).
fn no_auth_requested(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| a.to_str().is_some_and(|s| s.starts_with('-')))
        .any(|a| a == "--no-auth")
}

fn no_auth_main() -> i32 {
    if let Err(e) = jacamar::stages::cli::start_up() {
        eprintln!("Error encountered during job: {e}");
        return jacamar::job::RunnerEnv::from_env().system_failure_exit_code;
    }
    jacamar::stages::diag::install();
    let cli = NoAuthCli::parse();
    let (stage, configuration) = cli.command.into_stage();
    jacamar::stages::privileged::main_no_auth(jacamar::stages::privileged::Options {
        unobfuscated: cli.unobfuscated,
        configuration,
        stage,
        no_auth: true,
    })
}

fn main() {
    // First of all: not dumpable. We run as the job's user, and so does the job: a dumpable
    // jacamar could be ptraced by it, or have its status pipe taken with pidfd_getfd to
    // forge the stage's status or flood jacamar-auth. The kernel still lets us read our own
    // /proc entries; the job's shell is dumpable again after its execve. (Harmless for
    // `signal`; good for askpass, which holds the job token.)
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("jacamar: prctl(PR_SET_DUMPABLE, 0) failed: {e}");
        std::process::exit(jacamar::protocol::EXIT_NOT_REPORTED);
    }
    if no_auth_requested(&std::env::args_os().collect::<Vec<_>>()) {
        std::process::exit(no_auth_main());
    }
    // Diagnostics on stderr (stdout is git's answer for askpass).
    jacamar::stages::diag::install();
    // git runs us as GIT_ASKPASS with its prompt as the only argument (see jobenv).
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let [prompt] = argv.as_slice() {
        askpass(prompt);
    }
    let cli = Cli::parse();
    if let Command::Signal { signal, pids } = &cli.command {
        std::process::exit(signal_pids(signal, pids));
    }
    if let Command::CaptureEnv { output } = &cli.command {
        if let Err(e) = jacamar::stages::login_env::capture_to(output) {
            eprintln!("jacamar capture-env: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let (Some(control_fd), Some(status_fd)) = (cli.control_fd, cli.status_fd) else {
        eprintln!("jacamar: --control-fd and --status-fd are required (jacamar is started by jacamar-auth, not by hand)");
        std::process::exit(jacamar::protocol::EXIT_NOT_REPORTED);
    };
    let fds = jacamar::protocol::inherited_fd(control_fd)
        .and_then(|c| jacamar::protocol::inherited_fd(status_fd).map(|s| (c, s)));
    let code = match fds {
        Ok((control, status)) => jacamar::stages::user::main(control, status),
        Err(e) => {
            eprintln!("jacamar: {e} (jacamar is started by jacamar-auth, not by hand)");
            jacamar::protocol::EXIT_NOT_REPORTED
        }
    };
    std::process::exit(code);
}

/// `jacamar signal SIG PID...`: signal each pid; ESRCH (already gone) counts as done.
fn signal_pids(name: &str, pids: &[i32]) -> i32 {
    use nix::sys::signal::{kill, Signal};
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig: Signal = match full.parse() {
        Ok(s) => s,
        Err(_) => {
            eprintln!("jacamar signal: unknown signal {name:?}");
            return 2;
        }
    };
    let mut code = 0;
    for &pid in pids {
        if pid <= 0 {
            eprintln!("jacamar signal: refusing pid {pid} (only single processes are signalled)");
            code = 1;
            continue;
        }
        match kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                eprintln!(
                    "jacamar signal: failed to send {} to {pid}: {e}",
                    sig.as_str()
                );
                code = 1;
            }
        }
    }
    code
}

/// Answer git's credential prompt and exit, if `prompt` is one: the job token goes only to
/// the job's GitLab server (`JACAMAR_ASKPASS_ORIGIN`); anything else gets nothing on
/// stdout, the reason on stderr (git's, so the job log) and exit status 1, and git fails.
/// The variable is trusted because no CI variable can set it: jacamar-auth refuses a job
/// whose CI variables name it (`jobenv::check_reserved`), so only the handoff or the
/// job's own script does.
fn askpass(prompt: &str) {
    use jacamar::jobenv::{askpass, Askpass, ASKPASS_ORIGIN_VAR};
    use std::io::Write;
    let token = std::env::var("CI_JOB_TOKEN").ok();
    let origin = std::env::var(ASKPASS_ORIGIN_VAR).ok();
    match askpass(prompt, token.as_deref(), origin.as_deref()) {
        Askpass::NotAPrompt => {}
        Askpass::Answer(answer) => {
            let mut out = std::io::stdout().lock();
            let code = match writeln!(out, "{answer}").and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("jacamar (GIT_ASKPASS): failed to answer git: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Askpass::Refuse(why) => {
            eprintln!("jacamar (GIT_ASKPASS): {why}");
            std::process::exit(1);
        }
    }
}
