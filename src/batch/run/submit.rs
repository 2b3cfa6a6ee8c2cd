//! The submission: its arguments checked, stale files of an earlier try removed, the job
//! submitted (transient failures retried with backoff), its id recorded for `cleanup`.

use std::path::PathBuf;

use tokio::time::Instant;

use super::wait::Retry;
use super::{output_path, reason_of, BatchRun, Requests};
use crate::batch::outcome::{failed, system_failure};
use crate::batch::scheduler::Submission;
use crate::batch::{args, wrapper, BatchError};
use crate::protocol::Status;
use crate::supervisor::Reason;

/// Why a run ended before its job could be supervised: a build failure (the job's own
/// doing) or a system failure (ours or the scheduler's).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The user's scheduler arguments were refused, or could not be split.
    #[error(transparent)]
    Arguments(BatchError),
    /// The scheduler refused the job.
    #[error("{name} refused the job: {source}")]
    Refused {
        name: &'static str,
        source: BatchError,
    },
    /// A cancellation request came while a transient failure was being retried.
    #[error("{name}: not submitted: {reason}")]
    NotSubmitted { name: &'static str, reason: Reason },
    /// The submit command could not be run, or failed past `transient_retry_window`.
    #[error("failed to submit to {name}: {source}")]
    Submit {
        name: &'static str,
        source: BatchError,
    },
    /// An earlier try's file could not be removed.
    #[error("failed to remove the stale output file {}: {source}", path.display())]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The job's record could not be written.
    #[error(transparent)]
    Record(BatchError),
    /// The files of the pipeline's shared allocation (lock, record, lease) failed.
    #[error("{0}")]
    Allocation(String),
}

impl RunError {
    /// The stage's status: a build failure for what the job asked for, a system failure
    /// (with this error as its message) for what failed under it.
    pub fn status(&self) -> Status {
        match self {
            RunError::Arguments(_) | RunError::Refused { .. } => failed(None),
            RunError::NotSubmitted { reason, .. } => failed(Some(reason.to_string())),
            RunError::Submit { .. }
            | RunError::Stale { .. }
            | RunError::Record(_)
            | RunError::Allocation(_) => system_failure(self.to_string()),
        }
    }

    /// The job log's line for it: the build failures are told there (a system failure's
    /// message reaches the runner with the status).
    pub fn log_line(&self) -> Option<String> {
        match self {
            RunError::Arguments(_) | RunError::Refused { .. } => Some(format!("ERROR: {self}")),
            RunError::NotSubmitted { .. } => Some(self.to_string()),
            RunError::Submit { .. }
            | RunError::Stale { .. }
            | RunError::Record(_)
            | RunError::Allocation(_) => None,
        }
    }
}

impl BatchRun<'_> {
    /// The submission: the scheduler arguments checked, stale output files of an earlier
    /// try removed, and the record told a submission is under way. Returns it with where
    /// the user's arguments came from.
    pub(super) fn prepare(&self) -> Result<(Submission, Option<String>), RunError> {
        let (job, sched) = (self.job, self.job.scheduler);
        let b = &self.config.batch;
        let (args, source) = args::build(self.config, job.variables, sched.illegal_args())
            .map_err(RunError::Arguments)?;
        let output = output_path(&job.scripts_dir, job.stage);
        let sub = Submission {
            script: job.script.clone(),
            error: sched.error_file(&output),
            output,
            workdir: job.workdir.clone(),
            name: args::job_name(job.ci_job_id, job.variables, b.disable_name_prefix),
            args,
        };
        self.remove_stale(&sub)?;
        self.record
            .submitting(sched.name(), &sub.name)
            .map_err(RunError::Record)?;
        Ok((sub, source))
    }

    /// Remove the output (and error) file of an earlier try, so the tail starts afresh,
    /// and the files saying how that try ended (the exit file, the scheduler's own: see
    /// [`Scheduler::end_files`](crate::batch::Scheduler::end_files)), so its end is never taken for this one's.
    pub(super) fn remove_stale(&self, sub: &Submission) -> Result<(), RunError> {
        let exit = wrapper::exit_path(&sub.output);
        let own = self.job.scheduler.end_files(&sub.output);
        let stale = [&sub.output, &exit]
            .into_iter()
            .chain(sub.error.as_ref())
            .chain(own.iter());
        for path in stale {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RunError::Stale {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The submission of one try: `sub` with the scheduler's deadline arguments in front
    /// (see [`Scheduler::deadline_args`](crate::batch::Scheduler::deadline_args)); its notes go to the log when `say` (once per
    /// job, not per retry). The deadline is the CI job's end plus `kill_timeout`: the
    /// runner's timeout reaches us at the CI job's end and a running job then gets our
    /// graceful cancel, whose grace the scheduler's own deadline kill (after its short
    /// KillWait) must not cut short.
    async fn with_deadline(&self, sub: &Submission, say: bool) -> Submission {
        let Some(end) = self.job.ci_end else {
            return sub.clone();
        };
        let left = end.saturating_duration_since(Instant::now());
        let grace = self.config.general.kill_timeout;
        let (extra, notes) = self.job.scheduler.deadline_args(&sub.args, left, grace);
        if say {
            for n in notes {
                self.log.say(n).await;
            }
        }
        let mut this = sub.clone();
        this.args = extra.into_iter().chain(sub.args.iter().cloned()).collect();
        this
    }

    /// After the transient failure `e`: wait out `retry`'s backoff, or end the stage when
    /// the failures have lasted `transient_retry_window` (`Submit`) or a request comes
    /// meanwhile (`NotSubmitted`).
    pub(super) async fn back_off(
        &self,
        retry: &mut Retry,
        e: BatchError,
        requests: &mut Requests,
    ) -> Result<(), RunError> {
        let name = self.name();
        let Some(back) = retry.failed(&e, self.log).await else {
            return Err(RunError::Submit { name, source: e });
        };
        tokio::select! {
            _ = tokio::time::sleep(back) => Ok(()),
            Some(r) = requests.recv() => Err(RunError::NotSubmitted { name, reason: reason_of(&r) }),
        }
    }

    /// Submit the job and record its id. A transient failure is retried with backoff for
    /// `transient_retry_window` (a request meanwhile ends the stage unsubmitted).
    pub(super) async fn submit(
        &self,
        sub: &Submission,
        requests: &mut Requests,
    ) -> Result<String, RunError> {
        let name = self.name();
        let b = &self.config.batch;
        let mut retry = Retry::new(b.command_delay, b.transient_retry_window);
        let id = loop {
            let this = self.with_deadline(sub, retry.attempts == 0).await;
            let e = match self.client().submit(&this).await {
                Ok(id) => break id,
                Err(e) => e,
            };
            if !e.is_transient() {
                return Err(match e {
                    BatchError::Spawn { .. } => RunError::Submit { name, source: e },
                    e => RunError::Refused { name, source: e },
                });
            }
            self.back_off(&mut retry, e, requests).await?;
        };
        if let Err(e) = self.record.submitted(name, &id) {
            // We cannot promise cleanup will find it: cancel now rather than leave an orphan.
            self.log
                .warn_if(self.client().cancel(&id, false).await)
                .await;
            return Err(RunError::Record(e));
        }
        Ok(id)
    }
}
