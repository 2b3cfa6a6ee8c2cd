//! The job's calls in the runner's order: config and prepare (retried), the `run` stages
//! (some retried, after_script and the on-failure stages as the runner runs them), cleanup.

use std::path::PathBuf;
use std::sync::Arc;

use jacamar::protocol::Stage;

use super::files::write_private;
use super::{
    describe_job_error, set_reason, CallResult, CancelKind, ConfigOutput, DriverInfo, JobError,
    Sim, DEFAULT_SHORT_TOKEN, MAX_STAGE_ATTEMPTS, MAX_STAGE_RETRY_DELAY, PREPARE_TRIES,
};
use crate::duration::format_go;
use crate::output::{job_error, job_log, job_section, job_warning, runner_log};
use crate::process::{describe_call_end, CallEnd, OutputMode};
use crate::script::{self, RunStage, ScriptInput};

impl Sim {
    pub(super) async fn config_and_prepare(&mut self) -> Result<(), JobError> {
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
    pub(super) async fn prepare_executor(&mut self) -> Result<(), JobError> {
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

    pub(super) fn write_script(
        &mut self,
        stage: RunStage,
        status: &str,
    ) -> Result<PathBuf, JobError> {
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

    pub(super) async fn run_stage(
        &mut self,
        stage: RunStage,
        status: &str,
    ) -> Result<(), JobError> {
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
    pub(super) fn stage_attempts(&self, stage: RunStage, variable: &str) -> Result<u32, JobError> {
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
    pub(super) async fn attempt_stage(
        &mut self,
        stage: RunStage,
        variable: &str,
    ) -> Result<(), JobError> {
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

    pub(super) async fn cleanup(&mut self) {
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
    pub(super) async fn stages(&mut self) -> Option<JobError> {
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
}
