//! `jacamar-sim`: plays GitLab Runner's part of the custom-executor protocol against
//! `jacamar-auth`, for one job, without a GitLab server (config, prepare, run per sub-stage,
//! cleanup). The emulator is this binary's own modules, outside the driver's library:
//!
//! - [`job`]: the job description file and embedded defaults.
//! - [`duration`]: `10s`/`5m`/`500ms` durations.
//! - [`script`]: stage names and the generated bash scripts.
//! - [`process`]: one driver call: process group, live output, SIGTERM/SIGKILL escalation.
//! - [`runner`]: the order of calls for one job, retries, cancellation, the summary.
//! - [`output`]: the job log and the runner's log.
//! - [`image`]: the job's `image:` and the registry credentials sent with it.
//! - [`error`]: the emulator's own errors.

#![forbid(unsafe_code)]

mod duration;
mod error;
mod image;
mod job;
mod output;
mod process;
mod runner;
mod script;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use duration::parse_duration;
use job::{parse_var, JobSpec};
use runner::{CancelKind, Options};
use script::Shape;

const AFTER_HELP: &str = "\
JOB FILE (TOML):
  name = \"build\"                      # optional, CI_JOB_NAME (default sim-job)
  stage = \"test\"                      # optional, CI_JOB_STAGE
  before_script = [\"module load gcc\"] # optional
  script = [\"make\", \"make test\"]      # required unless --script is given
  after_script = [\"echo done\"]        # optional; runs with CI_JOB_STATUS=success|failed|canceled
  timeout = \"1h\"                      # optional job timeout (default 1h)
  image = \"reg.example.com:5050/g/img:1\" # optional, the job's image: (--image overrides)
  [variables]                         # optional; become CUSTOM_ENV_<NAME> and script exports
  SITE_ID_TOKEN = \"eyJ...\"

With neither --job nor --script an embedded demo job runs.

IMAGES: --image NAME (or the job file's `image`) puts the name in the job response
(`image.name`) and sets CI_JOB_IMAGE, as the runner does; jacamar runs the user's stages in it
when its configuration sets [general] run_mechanism. --registry-credential HOST[:PORT] adds the
job response's `credentials` entry GitLab sends for its own registry (user gitlab-ci-token,
the job token as password); HOST[:PORT],USER,PASSWORD-FILE another registry's, the password
read from the file. --job-token-file FILE sets the job token (default: a fresh random one),
e.g. a local test registry's password. No secret is ever taken from the command line.

DURATIONS: 500ms, 10s, 5m, 1h, 1h30m, or a bare number of seconds.

OUTPUT: the job log (as GitLab would show it) on stdout; the runner's own log (signals sent,
cleanup's output, warnings) on stderr, each line prefixed with \"[runner log] \".

SCRIPT SHAPES (--script-shape): the bash script each stage is handed, as the runner's writer
makes it; the job's commands run in a subshell in each:
  current  runner >= 19.1: (trap 'exit 1' TERM; eval $'...') < /dev/null, and trap 'exit 1' TERM
           in the script's own shell, which on a cancel waits for the body and exits 1
  v17      runner 17.4 to 19.0: trap exit 1 TERM, then : | eval $'...'; on a cancel the script's
           shell waits for the body and exits with its status
  legacy   runner < 17.4: : | eval $'...', no trap; on a cancel the script's shell dies of the
           SIGTERM at once (143) while the body may still run

STAGE RETRIES: the job variables GET_SOURCES_ATTEMPTS, RESTORE_CACHE_ATTEMPTS and
ARTIFACT_DOWNLOAD_ATTEMPTS (1 to 10, default 1) make those stages reach the driver up to that
many times, as the runner does: clear_worktree runs before the second try of get_sources, and
after each failed try (the last one too) the runner waits --stage-retry-delay, 1.5 times longer
each time (at most 5m). An integer outside 1..10 fails the stage. EXECUTOR_JOB_SECTION_ATTEMPTS
is read by the runner for the docker executor only, so it changes nothing here.

SIGNALS: SIGINT/SIGTERM to jacamar-sim = hard cancel of the job (cleanup still runs); a second
one SIGKILLs every running call and skips cleanup (forced shutdown).

SUMMARY (--summary FILE): {\"result\": success|failed|system_failure|canceled,
  \"failure_reason\", \"exit_code\": N|null, \"message\", \"build_exit_code_file\": text|null,
  \"config\": <config JSON>|null, \"tmp_dir\", \"tmp_kept\", \"calls\": [{\"kind\", \"stage\",
  \"exit_code\", \"signal\", \"pid\", \"started_ms\", \"ended_ms\", \"signals_sent\", \"abandoned\",
  \"detached\", \"group_left_behind\"}]}   (times in ms since jacamar-sim started)

EXIT STATUS: 0 job succeeded, 1 job failed or canceled, 2 system failure or emulator error.";

/// Emulate GitLab Runner's custom executor: run one CI job through jacamar-auth
/// (config, prepare, run per sub-stage, cleanup), with the runner's environment, process
/// groups, signals, cancels and retries.
#[derive(Debug, Parser)]
#[command(name = "jacamar-sim", version, after_help = AFTER_HELP)]
struct Cli {
    /// Path of the driver (default: jacamar-auth next to this executable).
    #[arg(long, value_name = "PATH")]
    driver: Option<PathBuf>,

    /// Jacamar TOML passed to config and cleanup (default: an embedded minimal shell config
    /// written to the runner temp dir).
    #[arg(long, value_name = "FILE")]
    configuration: Option<PathBuf>,

    /// Job description (TOML, see below).
    #[arg(long, value_name = "FILE")]
    job: Option<PathBuf>,

    /// A script line; repeatable. Replaces the job file's `script`.
    #[arg(long = "script", value_name = "LINE")]
    scripts: Vec<String>,

    /// A job variable NAME=VALUE; repeatable; overrides the job file and the defaults
    /// (e.g. CI_PROJECT_PATH, CI_RUNNER_SHORT_TOKEN).
    #[arg(long = "var", value_name = "K=V")]
    vars: Vec<String>,

    /// Job timeout for the whole job (overrides the job file; default 1h).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,

    /// Cancel the job this long after build_script starts.
    #[arg(long, value_name = "DUR")]
    cancel_after: Option<String>,

    /// Kind of cancel for --cancel-after.
    #[arg(long, value_enum, default_value = "graceful")]
    cancel_kind: CancelKind,

    /// Wait between SIGTERM and SIGKILL to a call's process group (runner default 10m).
    #[arg(long, value_name = "DUR", default_value = "600s")]
    graceful_kill_timeout: String,

    /// Wait after SIGKILL before abandoning a call (runner default 10s).
    #[arg(long, value_name = "DUR", default_value = "10s")]
    force_kill_timeout: String,

    /// After a hard abort, how long to wait for the running call before starting cleanup.
    #[arg(long, value_name = "DUR", default_value = "5m")]
    hard_abort_wait: String,

    /// Delay between config+prepare tries (the runner retries up to 3 times).
    #[arg(long, value_name = "DUR", default_value = "3s")]
    retry_delay: String,

    /// Shape of the stage scripts (see SCRIPT SHAPES below).
    #[arg(long, value_enum, default_value = "current")]
    script_shape: Shape,

    /// Wait after a failed try of get_sources, restore_cache or download_artifacts (runner 18:
    /// 5s, then 1.5 times longer each try; 0s: no wait, as runner 16 and 17).
    #[arg(long, value_name = "DUR", default_value = "5s")]
    stage_retry_delay: String,

    /// Pass -u (--unobfuscated) to the driver.
    #[arg(short = 'u', long)]
    unobfuscated: bool,

    /// Write a JSON summary of the job and of every driver call to FILE.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,

    /// Keep the runner temp dir (scripts, response.json, build_exit_code) after the job.
    #[arg(long)]
    keep_tmp: bool,

    /// CI_JOB_ID.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    job_id: u64,

    /// GITLAB_USER_LOGIN (default: the current user).
    #[arg(long, value_name = "LOGIN")]
    user: Option<String>,

    /// The job's image (job response `image.name`, CI_JOB_IMAGE); overrides the job file's.
    #[arg(long, value_name = "NAME")]
    image: Option<String>,

    /// A registry credential of the job response: HOST[:PORT] (gitlab-ci-token and the job
    /// token) or HOST[:PORT],USER,PASSWORD-FILE; repeatable.
    #[arg(long = "registry-credential", value_name = "HOST[:PORT][,USER,FILE]")]
    registry_credentials: Vec<String>,

    /// Read the job token (CI_JOB_TOKEN, the response's token) from FILE's first line.
    #[arg(long, value_name = "FILE")]
    job_token_file: Option<PathBuf>,
}

fn dur(flag: &str, text: &str) -> Result<Duration> {
    parse_duration(text).with_context(|| format!("--{flag}"))
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn options(cli: Cli) -> Result<(Options, Option<PathBuf>)> {
    let driver = match cli.driver {
        Some(d) => d,
        None => std::env::current_exe()
            .context("cannot find this executable to locate jacamar-auth; use --driver")?
            .with_file_name("jacamar-auth"),
    };
    // Every call runs in the runner temp dir: make paths absolute first.
    if !driver.is_file() {
        anyhow::bail!("driver {} does not exist (use --driver)", driver.display());
    }
    let driver = std::path::absolute(&driver)
        .with_context(|| format!("cannot resolve driver path {}", driver.display()))?;
    let configuration = match &cli.configuration {
        Some(c) if !c.is_file() => anyhow::bail!("configuration {} does not exist", c.display()),
        Some(c) => Some(
            std::path::absolute(c)
                .with_context(|| format!("cannot resolve configuration path {}", c.display()))?,
        ),
        None => None,
    };
    let mut job = match &cli.job {
        Some(path) => JobSpec::load(path, cli.scripts.is_empty())?,
        None if cli.scripts.is_empty() => JobSpec::demo(),
        None => JobSpec::parse("", "<command line>", false)?,
    };
    if !cli.scripts.is_empty() {
        job.script = cli.scripts;
    }
    if let Some(name) = cli.image {
        image::check_image("--image", &name)?;
        job.image = Some(name);
    }
    let registry_credentials = cli
        .registry_credentials
        .iter()
        .map(|a| image::parse_registry_credential(a))
        .collect::<Result<Vec<_>, _>>()?;
    let job_token = cli
        .job_token_file
        .as_deref()
        .map(|f| image::read_secret("--job-token-file", f))
        .transpose()?;
    let extra_vars = cli
        .vars
        .iter()
        .map(|v| parse_var(v))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = Options {
        driver,
        configuration,
        job,
        extra_vars,
        timeout: cli
            .timeout
            .as_deref()
            .map(|t| dur("timeout", t))
            .transpose()?,
        cancel_after: cli
            .cancel_after
            .as_deref()
            .map(|t| dur("cancel-after", t))
            .transpose()?,
        cancel_kind: cli.cancel_kind,
        graceful_kill_timeout: dur("graceful-kill-timeout", &cli.graceful_kill_timeout)?,
        force_kill_timeout: dur("force-kill-timeout", &cli.force_kill_timeout)?,
        hard_abort_wait: dur("hard-abort-wait", &cli.hard_abort_wait)?,
        retry_delay: dur("retry-delay", &cli.retry_delay)?,
        shape: cli.script_shape,
        stage_retry_delay: dur("stage-retry-delay", &cli.stage_retry_delay)?,
        unobfuscated: cli.unobfuscated,
        keep_tmp: cli.keep_tmp,
        job_id: cli.job_id,
        user: cli.user.unwrap_or_else(current_user),
        registry_credentials,
        job_token,
    };
    Ok((opts, cli.summary))
}

fn run(cli: Cli) -> Result<i32> {
    let (opts, summary_path) = options(cli)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let summary = rt.block_on(runner::run_job(opts))?;
    if let Some(path) = summary_path {
        let json = serde_json::to_string_pretty(&summary).context("failed to encode summary")?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("failed to write summary {}", path.display()))?;
    }
    Ok(summary.sim_exit_code())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("jacamar-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
