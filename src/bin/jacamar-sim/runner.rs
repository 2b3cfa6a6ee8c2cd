//! One job, played the way GitLab Runner's custom executor plays it: config + prepare (retried),
//! `run` once per sub-stage, cleanup always; job timeout, graceful and hard cancel.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use jacamar::protocol::Stage;

use crate::duration::format_go;
use crate::error::SimError;
use crate::job::{JobSpec, DEFAULT_CONFIG, DEFAULT_TIMEOUT};
use crate::output::{job_error, job_log, job_section, job_warning, runner_log};
use crate::process::{
    self, describe_call_end, CallEnd, CallRecord, CallSpec, Finished, KillTimings, OutputMode,
    Records,
};
use crate::script::{self, RunStage, ScriptInput, Shape};

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

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SimError {
    move |source| SimError::Io { what, source }
}

/// `bytes` random bytes as hex, from the system's random source (falls back to time and pid).
fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    jacamar::hex::encode(&buf)
}

fn write_private(path: &Path, content: &[u8], mode: u32) -> Result<(), SimError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("failed to create {}", path.display())))?;
    f.write_all(content)
        .map_err(io_err(format!("failed to write {}", path.display())))
}

/// Creates `<TMPDIR>/custom-executorNNNN`, mode 0700.
fn make_tmp_dir() -> Result<PathBuf, SimError> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let n = u64::from_str_radix(&random_hex(4), 16).unwrap_or(0) % 10_000_000_000;
        let path = base.join(format!("custom-executor{n}"));
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(SimError::Io {
                    what: format!("failed to create the runner temp dir in {}", base.display()),
                    source: e,
                })
            }
        }
    }
    Err(SimError::Io {
        what: format!("failed to create the runner temp dir in {}", base.display()),
        source: last.unwrap_or_else(|| std::io::Error::other("too many collisions")),
    })
}

fn set_reason(slot: &Mutex<Option<JobError>>, hard: &CancellationToken, reason: JobError) {
    let mut r = slot.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() && !hard.is_cancelled() {
        *r = Some(reason);
    }
    drop(r);
    hard.cancel();
}

impl Sim {
    fn lookup_override(&self, key: &str) -> Option<&str> {
        self.opts
            .job
            .variables
            .iter()
            .chain(self.opts.extra_vars.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
    }

    fn project_path(&self) -> String {
        self.lookup_override("CI_PROJECT_PATH")
            .unwrap_or(DEFAULT_PROJECT_PATH)
            .trim_matches('/')
            .to_string()
    }

    /// Every CI variable of the job (defaults, then job variables, then `--var`), with
    /// CI_JOB_STATUS set to `status`.
    fn ci_variables(&self, status: &str) -> Vec<(String, String)> {
        let path = self.project_path();
        let (namespace, name) = match path.rsplit_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        let id = self.opts.job_id;
        let server = "https://gitlab.example.com";
        let mut vars: Vec<(String, String)> = vec![
            ("CI".into(), "true".into()),
            ("GITLAB_CI".into(), "true".into()),
            ("CI_JOB_ID".into(), id.to_string()),
            ("CI_JOB_NAME".into(), self.opts.job.name.clone()),
            ("CI_JOB_STAGE".into(), self.opts.job.stage.clone()),
            ("CI_JOB_TOKEN".into(), self.token.clone()),
            ("CI_JOB_TIMEOUT".into(), self.timeout.as_secs().to_string()),
            ("CI_JOB_STATUS".into(), status.into()),
            ("CI_JOB_URL".into(), format!("{server}/{path}/-/jobs/{id}")),
            ("CI_PIPELINE_ID".into(), (id / 10 + 1).to_string()),
            ("CI_PIPELINE_SOURCE".into(), "push".into()),
            ("CI_PROJECT_ID".into(), "1".into()),
            ("CI_PROJECT_PATH".into(), path.clone()),
            ("CI_PROJECT_NAMESPACE".into(), namespace),
            ("CI_PROJECT_NAME".into(), name),
            ("CI_PROJECT_URL".into(), format!("{server}/{path}")),
            ("CI_SERVER_URL".into(), server.into()),
            ("CI_SERVER_HOST".into(), "gitlab.example.com".into()),
            (
                "CI_COMMIT_SHA".into(),
                "0123456789abcdef0123456789abcdef01234567".into(),
            ),
            ("CI_COMMIT_REF_NAME".into(), "main".into()),
            ("CI_RUNNER_SHORT_TOKEN".into(), DEFAULT_SHORT_TOKEN.into()),
            ("CI_CONCURRENT_ID".into(), "0".into()),
            ("CI_CONCURRENT_PROJECT_ID".into(), "0".into()),
            ("GITLAB_USER_LOGIN".into(), self.opts.user.clone()),
        ];
        if let Some((builds, project)) = &self.dirs {
            vars.push(("CI_BUILDS_DIR".into(), builds.clone()));
            vars.push(("CI_PROJECT_DIR".into(), project.clone()));
        }
        for (k, v) in self.opts.job.variables.iter().chain(&self.opts.extra_vars) {
            match vars.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => vars.push((k.clone(), v.clone())),
            }
        }
        // The runner owns the job status.
        if let Some(e) = vars.iter_mut().find(|(k, _)| k == "CI_JOB_STATUS") {
            e.1 = status.into();
        }
        vars
    }

    fn exit_code_file(&self) -> PathBuf {
        self.tmp.join("build_exit_code")
    }

    /// The environment added to every driver call, in the runner's order.
    fn call_env(&self, status: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("TMPDIR".to_string(), self.tmp.display().to_string()),
            ("BUILD_FAILURE_EXIT_CODE".into(), "1".into()),
            ("SYSTEM_FAILURE_EXIT_CODE".into(), "2".into()),
            (
                "BUILD_EXIT_CODE_FILE".into(),
                self.exit_code_file().display().to_string(),
            ),
            (
                "JOB_RESPONSE_FILE".into(),
                self.tmp.join("response.json").display().to_string(),
            ),
        ];
        env.extend(self.job_env.iter().cloned());
        for (k, v) in self.ci_variables(status) {
            env.push((format!("CUSTOM_ENV_{k}"), v));
        }
        env.push(("CUSTOM_ENV_CI_JOB_SERVICES".into(), "[]".into()));
        env
    }

    fn response_json(&self) -> serde_json::Value {
        let vars: Vec<serde_json::Value> = self
            .ci_variables("running")
            .into_iter()
            .map(|(k, v)| {
                serde_json::json!({"key": k, "value": v, "public": k != "CI_JOB_TOKEN", "masked": k == "CI_JOB_TOKEN"})
            })
            .collect();
        let step = |name: &str, lines: Vec<String>, when: &str| {
            serde_json::json!({"name": name, "script": lines, "timeout": self.timeout.as_secs(),
                "when": when, "allow_failure": false})
        };
        let mut build = self.opts.job.before_script.clone();
        build.extend(self.opts.job.script.iter().cloned());
        let mut steps = vec![step("script", build, "on_success")];
        if !self.opts.job.after_script.is_empty() {
            steps.push(step(
                "after_script",
                self.opts.job.after_script.clone(),
                "always",
            ));
        }
        serde_json::json!({
            "id": self.opts.job_id,
            "token": self.token,
            "allow_git_fetch": true,
            "job_info": {"id": self.opts.job_id, "name": self.opts.job.name, "stage": self.opts.job.stage,
                          "project_id": 1, "project_name": self.project_path().rsplit('/').next().unwrap_or("")},
            "git_info": {"repo_url": format!("https://gitlab-ci-token:{}@gitlab.example.com/{}.git", self.token, self.project_path()),
                          "ref": "main", "sha": "0123456789abcdef0123456789abcdef01234567", "ref_type": "branch", "depth": 20},
            "runner_info": {"timeout": self.timeout.as_secs()},
            "variables": vars,
            "steps": steps,
            "image": {"name": ""},
            "services": [],
            "artifacts": [],
            "cache": [],
            "credentials": [],
            "dependencies": [],
            "features": {"trace_sections": true, "failure_reasons": ["script_failure", "runner_system_failure", "job_execution_timeout"]},
            // Runner 17+ writes the job's `run` (native steps), empty when the job has none.
            "run": "",
        })
    }

    fn abort_error(&self) -> JobError {
        self.abort_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(JobError::Canceled)
    }

    /// The driver's command line for `stage`, as the runner's `[runners.custom]` hooks give
    /// it: `config` and `cleanup` with `--configuration`, `run` with the script and the name.
    fn args(&self, stage: &Stage<PathBuf>) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if self.opts.unobfuscated {
            a.push("-u".into());
        }
        a.push(stage.hook().into());
        match stage {
            Stage::Config | Stage::Cleanup => {
                a.push("--configuration".into());
                a.push(self.config_file.clone().into_os_string());
            }
            Stage::Prepare => {}
            Stage::Run { name, script } => {
                a.push(script.clone().into_os_string());
                a.push(name.into());
            }
        }
        a
    }

    async fn call(
        &mut self,
        stage: Stage<PathBuf>,
        run_stage: Option<RunStage>,
        output: OutputMode,
        status: &str,
    ) -> CallResult {
        let cleanup = stage == Stage::Cleanup;
        let terminate = match (cleanup, run_stage) {
            (true, _) => CancellationToken::new(),
            (_, Some(RunStage::BuildScript)) => self.graceful.clone(),
            _ => self.hard.clone(),
        };
        let hook = stage.hook();
        let spec = CallSpec {
            args: self.args(&stage),
            stage,
            program: self.opts.driver.clone(),
            env: self.call_env(status),
            cwd: self.tmp.clone(),
            output,
            terminate,
            kill_now: self.kill_now.clone(),
            deadline: match (cleanup, run_stage) {
                (true, _) => Some(CLEANUP_TIMEOUT),
                (_, Some(RunStage::AfterScript)) => Some(AFTER_SCRIPT_TIMEOUT),
                _ => None,
            },
            timings: KillTimings {
                graceful_kill_timeout: self.opts.graceful_kill_timeout,
                force_kill_timeout: self.opts.force_kill_timeout,
            },
        };
        let mut running = match process::start(spec, &self.records, self.origin) {
            Ok(r) => r,
            Err(e) => {
                return CallResult::SpawnFailed(format!(
                    "failed to start {}: {e}",
                    self.opts.driver.display()
                ))
            }
        };
        let hard = self.hard.clone();
        let wait = self.opts.hard_abort_wait;
        let detach = async move {
            hard.cancelled().await;
            tokio::time::sleep(wait).await;
        };
        tokio::select! {
            r = &mut running.result => match r {
                Ok(f) => CallResult::Done(f),
                Err(_) => CallResult::SpawnFailed("the call's supervisor vanished".into()),
            },
            _ = detach, if !cleanup => {
                runner_log(&format!(
                    "{} (pid {}) still running {} after the abort; starting cleanup anyway",
                    hook, running.pid, format_go(wait)
                ));
                if let Some(r) = self.records.lock().unwrap_or_else(|p| p.into_inner()).get_mut(running.index) {
                    r.detached = true;
                }
                self.background.push((running.pid, running.handle));
                CallResult::Detached
            }
        }
    }

    /// Reads the job's exit code from BUILD_EXIT_CODE_FILE (1 if absent or not an integer).
    fn build_exit_code(&self) -> i32 {
        match std::fs::read_to_string(self.exit_code_file()) {
            Ok(text) => match text.trim().parse::<i32>() {
                Ok(n) => n,
                Err(_) => {
                    runner_log(&format!(
                        "WARNING: BUILD_EXIT_CODE_FILE holds {:?}, not an integer; using 1",
                        text.trim()
                    ));
                    1
                }
            },
            Err(_) => 1,
        }
    }

    /// Maps a call's result to the runner's view of it.
    fn verdict(&self, res: CallResult, graceful_applies: bool) -> Result<Finished, JobError> {
        if self.hard.is_cancelled() {
            return Err(self.abort_error());
        }
        if graceful_applies && self.graceful.is_cancelled() {
            return Err(JobError::Canceled);
        }
        let f = match res {
            CallResult::Done(f) => f,
            CallResult::Detached => return Err(self.abort_error()),
            CallResult::SpawnFailed(e) => return Err(JobError::System(e)),
        };
        match f.ending {
            CallEnd::Exited { code: Some(0), .. } => Ok(f),
            CallEnd::Exited { code: Some(1), .. } => Err(JobError::Build(self.build_exit_code())),
            CallEnd::Exited { code: Some(2), .. } => Err(JobError::System("exit status 2".into())),
            CallEnd::Exited { code: Some(c), .. } => Err(JobError::System(format!(
                "unknown Custom executor executable exit code {c}"
            ))),
            ref other => Err(JobError::System(describe_call_end(other))),
        }
    }

    async fn config_and_prepare(&mut self) -> Result<(), JobError> {
        let res = self
            .call(Stage::Config, None, OutputMode::CaptureStdout, "running")
            .await;
        let f = self.verdict(res, false)?;
        let text = String::from_utf8_lossy(&f.stdout);
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            JobError::System(format!("failed to parse config_exec output as JSON: {e}"))
        })?;
        self.config_json = Some(json.clone());
        let cfg: ConfigOutput = serde_json::from_value(json).map_err(|e| {
            JobError::System(format!("config_exec output has an unexpected shape: {e}"))
        })?;
        match &cfg.driver {
            Some(DriverInfo { name, version }) => job_log(&format!(
                "Using Custom executor with driver {} {}...",
                name.as_deref().unwrap_or(""),
                version.as_deref().unwrap_or("")
            )),
            None => job_log("Using Custom executor..."),
        }
        self.job_env = cfg.job_env.unwrap_or_default().into_iter().collect();
        let builds = match cfg.builds_dir {
            Some(b) if !b.is_empty() => b.trim_end_matches('/').to_string(),
            _ => {
                let d = self.tmp.join("builds").display().to_string();
                runner_log(&format!(
                    "WARNING: config_exec gave no builds_dir; using {d}"
                ));
                d
            }
        };
        let mut project = builds.clone();
        if cfg.builds_dir_is_shared.unwrap_or(false) {
            let short = self
                .lookup_override("CI_RUNNER_SHORT_TOKEN")
                .unwrap_or(DEFAULT_SHORT_TOKEN)
                .to_string();
            let cpid = self
                .lookup_override("CI_CONCURRENT_PROJECT_ID")
                .unwrap_or("0")
                .to_string();
            project = format!("{project}/{short}/{cpid}");
        }
        project = format!("{project}/{}", self.project_path());
        self.dirs = Some((builds, project));

        let res = self
            .call(Stage::Prepare, None, OutputMode::JobLog, "running")
            .await;
        self.verdict(res, false).map(|_| ())
    }

    /// config + prepare, up to three tries with cleanup after each failed one.
    /// Returns Err after cleanup has already run.
    async fn prepare_executor(&mut self) -> Result<(), JobError> {
        for attempt in 1..=PREPARE_TRIES {
            if self.hard.is_cancelled() {
                return Err(self.abort_error());
            }
            job_section("Preparing the \"custom\" executor");
            let err = match self.config_and_prepare().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.cleanup().await;
            match err {
                JobError::System(msg) if attempt < PREPARE_TRIES && !self.hard.is_cancelled() => {
                    job_error(&format!("ERROR: Preparation failed: {msg}"));
                    job_log(&format!(
                        "Will be retried in {} ...",
                        format_go(self.opts.retry_delay)
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(self.opts.retry_delay) => {}
                        _ = self.hard.cancelled() => {}
                    }
                }
                JobError::System(msg) => {
                    return Err(JobError::System(format!("prepare environment: {msg}")))
                }
                other => return Err(other),
            }
        }
        Err(JobError::System("prepare environment: out of tries".into()))
    }

    fn write_script(&mut self, stage: RunStage, status: &str) -> Result<PathBuf, JobError> {
        self.script_counter += 1;
        let (_, project) = self.dirs.clone().unwrap_or_default();
        let lines: Vec<String> = match stage {
            RunStage::BuildScript => self
                .opts
                .job
                .before_script
                .iter()
                .chain(&self.opts.job.script)
                .cloned()
                .collect(),
            RunStage::AfterScript => self.opts.job.after_script.clone(),
            _ => Vec::new(),
        };
        let vars = self.ci_variables(status);
        let text = script::generate(&ScriptInput {
            stage,
            shape: self.opts.shape,
            variables: &vars,
            project_dir: &project,
            lines: &lines,
        });
        let path = self
            .tmp
            .join(format!("script{:02}-{}", self.script_counter, stage.name()));
        write_private(&path, text.as_bytes(), 0o700)
            .map_err(|e| JobError::System(e.to_string()))?;
        Ok(path)
    }

    async fn run_stage(&mut self, stage: RunStage, status: &str) -> Result<(), JobError> {
        if self.hard.is_cancelled() {
            return Err(self.abort_error());
        }
        job_section(stage.header());
        let path = self.write_script(stage, status)?;
        let call = Stage::Run {
            name: stage.name().into(),
            script: path,
        };
        let res = self
            .call(call, Some(stage), OutputMode::JobLog, status)
            .await;
        self.verdict(res, stage == RunStage::BuildScript)
            .map(|_| ())
    }

    /// The number of tries of a retried stage, from the job variable `variable` as the
    /// runner reads it: unset means 1; a value that is not an integer is reported and means
    /// 1; an integer outside [1, 10] fails the stage.
    fn stage_attempts(&self, stage: RunStage, variable: &str) -> Result<u32, JobError> {
        let Some(raw) = self.lookup_override(variable).filter(|v| !v.is_empty()) else {
            return Ok(1);
        };
        match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_STAGE_ATTEMPTS).contains(&n) => Ok(n as u32),
            Ok(_) => Err(JobError::System(format!(
                "number of attempts out of the range [1, {MAX_STAGE_ATTEMPTS}] for stage: {}",
                stage.name()
            ))),
            Err(_) => {
                job_warning(&format!(
                    "WARNING: {variable}: expected int got {raw:?}, using default value: 1"
                ));
                Ok(1)
            }
        }
    }

    /// A stage the runner tries up to `variable` times (`GET_SOURCES_ATTEMPTS`,
    /// `RESTORE_CACHE_ATTEMPTS`, `ARTIFACT_DOWNLOAD_ATTEMPTS`), as runner 18 does: before the
    /// second try of get_sources it runs clear_worktree (a failed clear_worktree skips that
    /// try), and after every failed try (the last one too) it waits, 5 s at first
    /// (`--stage-retry-delay`), then 1.5 times longer each time, at most 5 minutes.
    /// `EXECUTOR_JOB_SECTION_ATTEMPTS` is read by the runner for the docker executor only.
    async fn attempt_stage(&mut self, stage: RunStage, variable: &str) -> Result<(), JobError> {
        let attempts = self.stage_attempts(stage, variable)?;
        let mut delay = self.opts.stage_retry_delay;
        let mut result = Ok(());
        for attempt in 0..attempts {
            if self.hard.is_cancelled() {
                return Err(self.abort_error());
            }
            result = if stage == RunStage::GetSources && attempt == 1 {
                self.run_stage(RunStage::ClearWorktree, "running").await
            } else {
                Ok(())
            };
            if result.is_ok() {
                result = self.run_stage(stage, "running").await;
                if result.is_ok() {
                    return result;
                }
            }
            if self.hard.is_cancelled() {
                return Err(self.abort_error());
            }
            if !delay.is_zero() {
                // The runner's words, in the job log, after the last try too.
                job_log(&format!("Retrying in {}", format_go(delay)));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.hard.cancelled() => {}
                }
                delay = delay.mul_f64(1.5).min(MAX_STAGE_RETRY_DELAY);
            }
        }
        result
    }

    async fn cleanup(&mut self) {
        if self.kill_now.is_cancelled() {
            runner_log("WARNING: forced shutdown: not calling cleanup");
            return;
        }
        match self
            .call(Stage::Cleanup, None, OutputMode::RunnerLog, "running")
            .await
        {
            CallResult::Done(f) => match f.ending {
                CallEnd::Exited { code: Some(0), .. } => {}
                other => runner_log(&format!(
                    "WARNING: cleanup failed ({}); job status unchanged",
                    describe_call_end(&other)
                )),
            },
            CallResult::SpawnFailed(e) => runner_log(&format!("WARNING: cleanup: {e}")),
            CallResult::Detached => {}
        }
    }

    /// The job's stages after a successful prepare; returns the job's error, if any.
    async fn stages(&mut self) -> Option<JobError> {
        if let Err(e) = self.run_stage(RunStage::PrepareScript, "running").await {
            return Some(e);
        }
        let mut err = None;
        for (stage, variable) in [
            (RunStage::GetSources, "GET_SOURCES_ATTEMPTS"),
            (RunStage::RestoreCache, "RESTORE_CACHE_ATTEMPTS"),
            (RunStage::DownloadArtifacts, "ARTIFACT_DOWNLOAD_ATTEMPTS"),
        ] {
            if let Err(e) = self.attempt_stage(stage, variable).await {
                err = Some(e);
                break;
            }
        }
        let mut cancel_timer = None;
        if err.is_none() {
            if let Some(after) = self.opts.cancel_after {
                let kind = self.opts.cancel_kind;
                let graceful = self.graceful.clone();
                let hard = self.hard.clone();
                let slot = Arc::clone(&self.abort_reason);
                cancel_timer = Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    match kind {
                        CancelKind::Graceful => {
                            runner_log("--cancel-after reached: graceful cancel of build_script");
                            graceful.cancel();
                        }
                        CancelKind::Hard => {
                            runner_log("--cancel-after reached: hard abort of the job");
                            set_reason(&slot, &hard, JobError::Canceled);
                        }
                    }
                }));
            }
            err = self.run_stage(RunStage::BuildScript, "running").await.err();
            if self.opts.cancel_kind == CancelKind::Graceful {
                if let Some(t) = cancel_timer.take() {
                    t.abort();
                }
            }
            if !self.opts.job.after_script.is_empty() && !self.hard.is_cancelled() {
                let status = match err {
                    None => "success",
                    Some(JobError::Canceled) => "canceled",
                    Some(_) => "failed",
                };
                if let Err(e) = self.run_stage(RunStage::AfterScript, status).await {
                    if !self.hard.is_cancelled() {
                        job_warning(&format!(
                            "WARNING: after_script failed, but job will continue unaffected: {}",
                            describe_job_error(&e)
                        ));
                    }
                }
            }
        }
        let ok = err.is_none();
        let archive = if ok {
            RunStage::ArchiveCache
        } else {
            RunStage::ArchiveCacheOnFailure
        };
        let upload = if ok {
            RunStage::UploadArtifactsOnSuccess
        } else {
            RunStage::UploadArtifactsOnFailure
        };
        let archive_err = self.run_stage(archive, "running").await.err();
        let upload_err = self.run_stage(upload, "running").await.err();
        let _ = self
            .run_stage(RunStage::CleanupFileVariables, "running")
            .await;
        if let Some(t) = cancel_timer {
            t.abort();
        }
        if self.hard.is_cancelled() {
            return Some(self.abort_error());
        }
        err.or(archive_err).or(upload_err)
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
    /// one is given, and response.json), the effective timeout and a fresh job token.
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
            token: format!("glcbt-sim-{}", random_hex(10)),
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
