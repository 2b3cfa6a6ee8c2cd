//! `jacamar-auth`: the GitLab Runner custom-executor entry point.
//!
//! Wire it into the runner's `[runners.custom]` hooks: `config`, `prepare`, `run`, `cleanup`.

// No unsafe code: the raw system calls are in the library's `sys` module.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use jacamar::config::runner;
use jacamar::stages::cli::{self, StageCommand};
use jacamar::stages::privileged::{self, Options};

/// GitLab Runner custom-executor driver for HPC: authorizes the job, downscopes to the
/// user's account and runs each stage through jacamar.
#[derive(Parser, Debug)]
#[command(name = "jacamar-auth", version = jacamar::VERSION_TEXT, about, long_about = None)]
struct Cli {
    /// Show full error details in the job log (by default they go to the audit log only).
    #[arg(short = 'u', long, global = true)]
    unobfuscated: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Stage(StageCommand),
    /// Check a configuration file and/or the runner's config.toml wiring; print every
    /// problem, one a line; exit 0 only when everything given is clean.
    #[command(group(clap::ArgGroup::new("input").required(true).multiple(true)
        .args(["configuration", "runner_config"])))]
    Validate {
        /// Jacamar TOML configuration file.
        #[arg(long, value_name = "FILE")]
        configuration: Option<PathBuf>,
        /// The GitLab Runner's config.toml: checks every `executor = "custom"` runner's
        /// hooks, arguments, jacamar configuration and kill timeouts.
        #[arg(long, value_name = "FILE")]
        runner_config: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = cli::start_up() {
        eprintln!("Error encountered during job: {e}");
        std::process::exit(system_failure_exit_code());
    }
    // Diagnostics go to stderr only: config's stdout is the runner's JSON.
    jacamar::stages::diag::install();
    let cli = Cli::parse();
    let (stage, configuration) = match cli.command {
        Command::Validate {
            configuration,
            runner_config,
        } => std::process::exit(validate(configuration.as_deref(), runner_config.as_deref())),
        Command::Stage(stage) => stage.into_stage(),
    };
    let code = privileged::main(Options {
        unobfuscated: cli.unobfuscated,
        configuration,
        stage,
        no_auth: false,
    });
    std::process::exit(code);
}

/// The runner's `SYSTEM_FAILURE_EXIT_CODE`, 2 without one.
fn system_failure_exit_code() -> i32 {
    jacamar::job::RunnerEnv::from_env().system_failure_exit_code
}

/// Print every problem of each file given; 0 when all are clean, 1 otherwise.
fn validate(configuration: Option<&Path>, runner_config: Option<&Path>) -> i32 {
    let mut code = 0;
    if let Some(path) = configuration {
        code |= validate_configuration(path);
    }
    if let Some(path) = runner_config {
        code |= validate_runner_config(path);
    }
    code
}

fn validate_configuration(path: &Path) -> i32 {
    match privileged::validate_file(path) {
        Ok(config) => {
            let problems = privileged::deployment_problems(&config);
            if problems.is_empty() {
                println!("{}: OK", path.display());
                return 0;
            }
            for p in &problems {
                println!("{}: {p}", path.display());
            }
            eprintln!("{} problem(s) in {}", problems.len(), path.display());
            1
        }
        Err(e) => {
            println!("{}", e.report());
            eprintln!("{} problem(s) in {}", e.problems.len(), path.display());
            1
        }
    }
}

fn validate_runner_config(path: &Path) -> i32 {
    match runner::check_runner_config_file(path) {
        Ok(runners) => {
            for r in &runners {
                println!("{}: {}", path.display(), r.describe());
            }
            0
        }
        Err(e) => {
            println!("{}", e.report());
            eprintln!("{} problem(s) in {}", e.problems.len(), path.display());
            1
        }
    }
}
