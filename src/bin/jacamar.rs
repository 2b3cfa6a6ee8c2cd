//! `jacamar`: runs one stage of a CI job as the job's user.
//!
//! Not meant to be started by hand: `jacamar-auth` starts it with the two pipes of the
//! handoff protocol (see the library's `protocol` module).

use clap::{Parser, Subcommand};

/// Runs one stage of a CI job as the job's user (started by jacamar-auth).
#[derive(Parser, Debug)]
#[command(name = "jacamar", version, about, long_about = None)]
struct Cli {
    /// Descriptor on which jacamar-auth hands over the stage and sends control messages.
    #[arg(long, value_name = "FD")]
    control_fd: i32,
    /// Descriptor on which the stage's status is reported back.
    #[arg(long, value_name = "FD")]
    status_fd: i32,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
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
}

fn main() {
    // git runs us as GIT_ASKPASS with its prompt as the only argument (see auth::env).
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let [prompt] = argv.as_slice() {
        askpass(prompt);
    }
    let cli = Cli::parse();
    let _ = &cli.action;
    let fds = jacamar::protocol::inherited_fd(cli.control_fd)
        .and_then(|c| jacamar::protocol::inherited_fd(cli.status_fd).map(|s| (c, s)));
    let code = match fds {
        Ok((control, status)) => jacamar::stages::user::main(control, status),
        Err(e) => {
            eprintln!("jacamar: {e} (jacamar is started by jacamar-auth, not by hand)");
            3
        }
    };
    std::process::exit(code);
}

/// Answer git's credential prompt and exit, if `prompt` is one: the job token goes only to
/// the job's GitLab server (`JACAMAR_ASKPASS_ORIGIN`); anything else gets nothing on
/// stdout, the reason on stderr (git's, so the job log) and exit status 1, and git fails.
fn askpass(prompt: &str) {
    use jacamar::auth::env::{askpass, Askpass, ASKPASS_ORIGIN_VAR};
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
