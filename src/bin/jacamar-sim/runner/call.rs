//! One driver call as the runner makes it: its command line, its cancellation and
//! deadline, and what its end means for the job.

use std::ffi::OsString;
use std::path::PathBuf;

use jacamar::protocol::Stage;
use tokio_util::sync::CancellationToken;

use super::{CallResult, JobError, Sim, AFTER_SCRIPT_TIMEOUT, CLEANUP_TIMEOUT};
use crate::duration::format_go;
use crate::output::runner_log;
use crate::process::{
    self, describe_call_end, CallEnd, CallSpec, Finished, KillTimings, OutputMode,
};
use crate::script::RunStage;

impl Sim {
    /// The driver's command line for `stage`, as the runner's `[runners.custom]` hooks give
    /// it: `config` and `cleanup` with `--configuration`, `run` with the script and the name.
    pub(super) fn args(&self, stage: &Stage<PathBuf>) -> Vec<OsString> {
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

    pub(super) async fn call(
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
    pub(super) fn build_exit_code(&self) -> i32 {
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
    pub(super) fn verdict(
        &self,
        res: CallResult,
        graceful_applies: bool,
    ) -> Result<Finished, JobError> {
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
}
