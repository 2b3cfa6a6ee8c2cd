//! One job, played the way GitLab Runner's custom executor plays it: config + prepare (retried),
//! `run` once per sub-stage, cleanup always; job timeout, graceful and hard cancel.
//!
//! * this module: the job's state (`Sim`), its start, its end and its summary;
//! * `stages`: the calls in the runner's order, with its retries;
//! * `call`: one driver call and what its end means for the job;
//! * `env`: the CI variables, the environment and the job response every call gets;
//! * `files`: the runner's temp dir and the private files in it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::duration::format_go;
use crate::error::SimError;
use crate::job::{JobSpec, DEFAULT_CONFIG, DEFAULT_TIMEOUT};
use crate::output::{job_error, job_log, runner_log};
use crate::process::{CallRecord, Finished, Records};
use crate::script::Shape;

/// How many times the runner tries config+prepare.
const PREPARE_TRIES: u32 = 3;
/// cleanup_exec's own timeout (the runner's default cleanup_exec_timeout), not shortened by cancel.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(3600);
/// The runner's default after_script timeout.
const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// The most tries the runner makes of a retried stage (`GET_SOURCES_ATTEMPTS`, ...).
const MAX_STAGE_ATTEMPTS: i64 = 10;
/// The longest wait between tries of a stage (the runner's backoff maximum).
const MAX_STAGE_RETRY_DELAY: Duration = Duration::from_secs(300);
/// The runner's `CI_RUNNER_SHORT_TOKEN` unless overridden with `--var`.
pub const DEFAULT_SHORT_TOKEN: &str = "simrunnr";
/// Default `CI_PROJECT_PATH`.
pub const DEFAULT_PROJECT_PATH: &str = "demo-group/demo-project";

/// Which kind of cancel `--cancel-after` performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CancelKind {
    /// Runner 16.9+: SIGTERM only to build_script; after_script and the on-failure stages still run.
    Graceful,
    /// SIGTERM to the current call, later stages skipped, cleanup after at most --hard-abort-wait.
    Hard,
}

/// Everything the emulator needs for one job.
#[derive(Debug, Clone)]
pub struct Options {
    pub driver: PathBuf,
    pub configuration: Option<PathBuf>,
    pub job: JobSpec,
    /// `--var` pairs, applied after the job's own variables.
    pub extra_vars: Vec<(String, String)>,
    /// Overrides the job file's timeout.
    pub timeout: Option<Duration>,
    pub cancel_after: Option<Duration>,
    pub cancel_kind: CancelKind,
    pub graceful_kill_timeout: Duration,
    pub force_kill_timeout: Duration,
    pub hard_abort_wait: Duration,
    pub retry_delay: Duration,
    /// The shape of the stage scripts.
    pub shape: Shape,
    /// The first wait after a failed try of a retried stage (x1.5 per try, at most 5 min).
    pub stage_retry_delay: Duration,
    pub unobfuscated: bool,
    pub keep_tmp: bool,
    pub job_id: u64,
    pub user: String,
    /// The job response's `credentials` of type `registry`.
    pub registry_credentials: Vec<crate::image::RegistryCredential>,
    /// The job token (`--job-token-file`); None: a fresh random one.
    pub job_token: Option<String>,
}

/// The JSON written by `--summary`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// "success", "failed", "system_failure" or "canceled".
    pub result: &'static str,
    /// GitLab's failure reason: script_failure, runner_system_failure, job_execution_timeout,
    /// canceled; null on success.
    pub failure_reason: Option<&'static str>,
    /// The job's exit code: 0 on success, N for a script failure, null otherwise.
    pub exit_code: Option<i32>,
    /// The last line of the job log.
    pub message: String,
    /// Content of `$BUILD_EXIT_CODE_FILE` at the end of the job, or null if absent.
    pub build_exit_code_file: Option<String>,
    /// The JSON printed by config (last try), or null.
    pub config: Option<serde_json::Value>,
    pub calls: Vec<CallRecord>,
    pub tmp_dir: String,
    /// Whether the temp dir was kept (`--keep-tmp`).
    pub tmp_kept: bool,
}

impl Summary {
    /// The emulator's exit code: 0 success, 1 failed or canceled, 2 system failure.
    pub fn sim_exit_code(&self) -> i32 {
        match self.result {
            "success" => 0,
            "system_failure" => 2,
            _ => 1,
        }
    }
}

/// Why the job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobError {
    Build(i32),
    System(String),
    Canceled,
    Timeout,
}

#[derive(Debug, Default, Deserialize)]
struct DriverInfo {
    name: Option<String>,
    version: Option<String>,
}

/// The fields of config_exec's JSON the emulator acts on; the others (`cache_dir`,
/// `hostname`) are ignored.
#[derive(Debug, Default, Deserialize)]
struct ConfigOutput {
    builds_dir: Option<String>,
    builds_dir_is_shared: Option<bool>,
    driver: Option<DriverInfo>,
    job_env: Option<BTreeMap<String, String>>,
}

enum CallResult {
    Done(Finished),
    Detached,
    SpawnFailed(String),
}

struct Sim {
    opts: Options,
    timeout: Duration,
    origin: StdInstant,
    tmp: PathBuf,
    config_file: PathBuf,
    records: Records,
    hard: CancellationToken,
    /// Child of `hard`: cancelled by a graceful cancel or by any hard abort.
    graceful: CancellationToken,
    kill_now: CancellationToken,
    abort_reason: Arc<Mutex<Option<JobError>>>,
    background: Vec<(u32, JoinHandle<()>)>,
    token: String,
    config_json: Option<serde_json::Value>,
    job_env: Vec<(String, String)>,
    dirs: Option<(String, String)>,
    script_counter: usize,
}

mod call;
mod env;
mod files;
mod stages;

use files::{io_err, make_tmp_dir, random_hex, write_private};

fn set_reason(slot: &Mutex<Option<JobError>>, hard: &CancellationToken, reason: JobError) {
    let mut r = slot.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() && !hard.is_cancelled() {
        *r = Some(reason);
    }
    drop(r);
    hard.cancel();
}

impl Sim {
    fn abort_error(&self) -> JobError {
        self.abort_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(JobError::Canceled)
    }

    fn finish_message(&self, err: &Option<JobError>) -> String {
        match err {
            None => "Job succeeded".to_string(),
            Some(JobError::Timeout) => format!(
                "ERROR: Job failed: execution took longer than {} seconds",
                format_go(self.timeout)
            ),
            Some(e) => format!("ERROR: Job failed{}", describe_job_error_tail(e)),
        }
    }
}

fn describe_job_error(e: &JobError) -> String {
    match e {
        JobError::Build(n) => format!("exit code {n}"),
        JobError::System(m) => m.clone(),
        JobError::Canceled => "canceled".into(),
        JobError::Timeout => "job timeout".into(),
    }
}

fn describe_job_error_tail(e: &JobError) -> String {
    match e {
        JobError::System(m) => format!(" (system failure): {m}"),
        other => format!(": {}", describe_job_error(other)),
    }
}

/// Runs one job against the driver and returns its summary.
pub async fn run_job(opts: Options) -> Result<Summary, SimError> {
    let origin = StdInstant::now();
    let hard = CancellationToken::new();
    let kill_now = CancellationToken::new();
    let abort_reason = Arc::new(Mutex::new(None));

    // Signals first, before anything is spawned.
    let signal_task = spawn_signal_handler(&hard, &kill_now, &abort_reason)?;
    let mut sim = Sim::setup(opts, origin, hard, kill_now, abort_reason)?;
    let timeout_task = spawn_timeout(sim.timeout, &sim.hard, &sim.abort_reason);
    sim.log_start();

    let err = sim.execute(&timeout_task).await;
    let message = sim.log_finish(&err);
    sim.wait_background().await;
    signal_task.abort();
    Ok(sim.into_summary(err, message))
}

/// Handles SIGINT/SIGTERM: the first one aborts the job (hard cancel), a second one
/// SIGKILLs every call.
fn spawn_signal_handler(
    hard: &CancellationToken,
    kill_now: &CancellationToken,
    abort_reason: &Arc<Mutex<Option<JobError>>>,
) -> Result<JoinHandle<()>, SimError> {
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(io_err("failed to install a SIGINT handler".into()))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(io_err("failed to install a SIGTERM handler".into()))?;
    let hard = hard.clone();
    let kill_now = kill_now.clone();
    let slot = Arc::clone(abort_reason);
    Ok(tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
            };
            seen += 1;
            if seen == 1 {
                runner_log(&format!(
                    "received {name}: aborting the job (hard cancel); send it again to SIGKILL every call"
                ));
                set_reason(&slot, &hard, JobError::Canceled);
            } else {
                runner_log(&format!("received {name} again: forced shutdown"));
                kill_now.cancel();
            }
        }
    }))
}

/// Aborts the job (hard cancel, reason timeout) once `timeout` has passed.
fn spawn_timeout(
    timeout: Duration,
    hard: &CancellationToken,
    abort_reason: &Arc<Mutex<Option<JobError>>>,
) -> JoinHandle<()> {
    let hard = hard.clone();
    let slot = Arc::clone(abort_reason);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        runner_log(&format!("job timeout of {} reached", format_go(timeout)));
        set_reason(&slot, &hard, JobError::Timeout);
    })
}

/// The job's result, GitLab failure reason and exit code for the summary.
fn outcome(err: &Option<JobError>) -> (&'static str, Option<&'static str>, Option<i32>) {
    match err {
        None => ("success", None, Some(0)),
        Some(JobError::Build(n)) => ("failed", Some("script_failure"), Some(*n)),
        Some(JobError::System(_)) => ("system_failure", Some("runner_system_failure"), None),
        Some(JobError::Canceled) => ("canceled", Some("canceled"), None),
        Some(JobError::Timeout) => ("failed", Some("job_execution_timeout"), None),
    }
}

impl Sim {
    /// The runner's state for one job: its temp dir (with the default configuration unless
    /// one is given, and response.json), the effective timeout and the job token (a fresh one
    /// unless `--job-token-file` gave it).
    fn setup(
        opts: Options,
        origin: StdInstant,
        hard: CancellationToken,
        kill_now: CancellationToken,
        abort_reason: Arc<Mutex<Option<JobError>>>,
    ) -> Result<Sim, SimError> {
        let tmp = make_tmp_dir()?;
        let config_file = match &opts.configuration {
            Some(p) => p.clone(),
            None => {
                let p = tmp.join("jacamar-sim-default.toml");
                write_private(&p, DEFAULT_CONFIG.as_bytes(), 0o600)?;
                p
            }
        };
        let timeout = opts.timeout.or(opts.job.timeout).unwrap_or(DEFAULT_TIMEOUT);
        let graceful = hard.child_token();
        let token = opts
            .job_token
            .clone()
            .unwrap_or_else(|| format!("glcbt-sim-{}", random_hex(10)));
        let sim = Sim {
            opts,
            timeout,
            origin,
            tmp: tmp.clone(),
            config_file,
            records: Arc::new(Mutex::new(Vec::new())),
            hard,
            graceful,
            kill_now,
            abort_reason,
            background: Vec::new(),
            token,
            config_json: None,
            job_env: Vec::new(),
            dirs: None,
            script_counter: 0,
        };
        let response = serde_json::to_vec_pretty(&sim.response_json()).unwrap_or_default();
        write_private(&tmp.join("response.json"), &response, 0o600)?;
        Ok(sim)
    }

    /// The job log's opening lines and the runner log's temp dir line.
    fn log_start(&self) {
        job_log(&format!(
            "Running with jacamar-sim {} (GitLab Runner custom executor emulator)",
            env!("CARGO_PKG_VERSION")
        ));
        job_log(&format!(
            "  on jacamar-sim {}, driver {}",
            DEFAULT_SHORT_TOKEN,
            self.opts.driver.display()
        ));
        runner_log(&format!("runner temp dir {}", self.tmp.display()));
    }

    /// prepare, then (when it succeeded) the stages and cleanup; the job timeout stops
    /// counting before cleanup. The job's error, if any.
    async fn execute(&mut self, timeout_task: &JoinHandle<()>) -> Option<JobError> {
        let err = match self.prepare_executor().await {
            Err(e) => Some(e),
            Ok(()) => {
                let err = self.stages().await;
                timeout_task.abort();
                self.cleanup().await;
                err
            }
        };
        timeout_task.abort();
        err
    }

    /// The job log's last line (green on success, an error otherwise), returned.
    fn log_finish(&self, err: &Option<JobError>) -> String {
        let message = self.finish_message(err);
        match err {
            None => job_log(&format!("\x1b[32;1m{message}\x1b[0;m")),
            Some(_) => job_error(&message),
        }
        message
    }

    /// Waits for the detached calls still dying after a hard abort.
    async fn wait_background(&mut self) {
        if self.background.is_empty() {
            return;
        }
        let pids: Vec<String> = self.background.iter().map(|(p, _)| p.to_string()).collect();
        runner_log(&format!(
            "waiting for {} detached call(s) still dying (pid {})",
            pids.len(),
            pids.join(", ")
        ));
        for (_, handle) in self.background.drain(..) {
            let _ = handle.await;
        }
    }

    /// The summary of the finished job; removes the temp dir unless `--keep-tmp`.
    fn into_summary(mut self, err: Option<JobError>, message: String) -> Summary {
        let (result, failure_reason, exit_code) = outcome(&err);
        let build_exit_code_file = std::fs::read_to_string(self.exit_code_file()).ok();
        let calls = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tmp = &self.tmp;
        let keep = self.opts.keep_tmp;
        if keep {
            runner_log(&format!("keeping runner temp dir {}", tmp.display()));
        } else if let Err(e) = std::fs::remove_dir_all(tmp) {
            runner_log(&format!("WARNING: failed to remove {}: {e}", tmp.display()));
        }
        Summary {
            result,
            failure_reason,
            exit_code,
            message,
            build_exit_code_file,
            config: self.config_json.take(),
            calls,
            tmp_dir: tmp.display().to_string(),
            tmp_kept: keep,
        }
    }
}
