//! The one async loop every scheduler runs through: a [`Scheduler`] description's commands
//! run through the job's [`Commands`] (its rate limiter), their answers read by the
//! description, failures classified in the scheduler's words.

use std::collections::BTreeMap;

use super::limiter::CmdOutput;
use super::scheduler::{Accounting, Cmd, Query, Read, Scheduler, States, Submission};
use super::{BatchError, Commands, JobState, Listed};

/// A scheduler and the commands of one job (or of `cleanup`): submit, ask, cancel.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub sched: &'a dyn Scheduler,
    pub cmds: &'a Commands,
}

impl<'a> Client<'a> {
    pub fn new(sched: &'a dyn Scheduler, cmds: &'a Commands) -> Client<'a> {
        Client { sched, cmds }
    }

    /// The scheduler's name (`slurm`).
    pub fn name(&self) -> &'static str {
        self.sched.name()
    }

    /// Submit the job; returns the scheduler's job id.
    pub async fn submit(&self, sub: &Submission) -> Result<String, BatchError> {
        let cmd = self.sched.submit(sub);
        let out = self.run(&cmd).await?;
        if !out.success() {
            return Err(self.failure(&cmd, &out));
        }
        self.sched
            .parse_submit(&out.stdout)
            .ok_or_else(|| BatchError::Parse {
                command: cmd.tool.to_string(),
                why: format!("no job id in {:?}", out.stdout.trim()),
            })
    }

    /// Job `id`'s state ([`Scheduler::state`]'s commands in turn).
    pub async fn state(&self, id: &str) -> Result<JobState, BatchError> {
        let answer = self.ask(self.sched.state(id), "job state").await?;
        Ok(answer.unwrap_or(JobState::Unknown))
    }

    /// End job `id` ([`Scheduler::cancel`]): done when the command succeeds or says the job
    /// is already gone ([`Scheduler::gone`]).
    pub async fn cancel(&self, id: &str, graceful: bool) -> Result<(), BatchError> {
        let cmd = self.sched.cancel(id, graceful);
        let out = self.run(&cmd).await?;
        if out.success() || self.sched.gone(&out.stderr) {
            Ok(())
        } else {
            Err(self.failure(&cmd, &out))
        }
    }

    /// Whether the scheduler lists the user's jobs in one command ([`Scheduler::listing`]).
    pub fn lists_user_jobs(&self) -> bool {
        self.sched.listing().is_some()
    }

    /// Every job of the user, by id ([`Scheduler::listing`]).
    pub async fn user_jobs(&self) -> Result<BTreeMap<String, Listed>, BatchError> {
        let Some(query) = self.sched.listing() else {
            let name = self.name();
            return Err(BatchError::Setup(format!(
                "{name} has no per-user status query"
            )));
        };
        Ok(self
            .ask(vec![query], "job listing")
            .await?
            .unwrap_or_default())
    }

    /// The states of `ids` (jobs that left the listing) from the scheduler's accounting
    /// ([`Scheduler::accounting`]); ids it does not know are missing from the answer.
    pub async fn accounting(&self, ids: &[String]) -> Result<States, BatchError> {
        let mut found = States::new();
        for step in 0.. {
            let missing: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| !found.contains_key(*id))
                .collect();
            if missing.is_empty() {
                break;
            }
            match self.sched.accounting(&missing, step) {
                Accounting::Done => break,
                Accounting::PerJob => {
                    for id in missing {
                        match self.state(id).await? {
                            JobState::Unknown => {}
                            st => {
                                found.insert(id.to_string(), st);
                            }
                        }
                    }
                    break;
                }
                Accounting::Ask(query) => {
                    let answer = self.ask(vec![query], "job state").await?;
                    for (id, st) in answer.unwrap_or_default() {
                        if missing.contains(&id.as_str()) {
                            found.entry(id).or_insert(st);
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Ask `queries` in turn (see [`Scheduler::state`]): the first answer, or `None` when
    /// every one said [`Read::Next`]. `what` names the answer in a parse error.
    async fn ask<T>(
        &self,
        queries: Vec<Query<'_, T>>,
        what: &str,
    ) -> Result<Option<T>, BatchError> {
        for q in queries {
            let out = self.run(&q.cmd).await?;
            match (q.read)(&out) {
                Read::Got(t) => return Ok(Some(t)),
                Read::Next => {}
                Read::Failed => return Err(self.failure(&q.cmd, &out)),
                Read::Unreadable => {
                    return Err(BatchError::Parse {
                        command: q.cmd.display(),
                        why: format!("no {what} in {:?}", out.stdout.trim()),
                    })
                }
            }
        }
        Ok(None)
    }

    async fn run(&self, cmd: &Cmd) -> Result<CmdOutput, BatchError> {
        self.cmds.run(cmd.tool, &cmd.args).await
    }

    /// A failed command as an error: its stderr (or exit status) as the message;
    /// `Transient` (retried with backoff) when the scheduler's words say its daemon is only
    /// busy or restarting ([`Scheduler::transient`]), `Command` otherwise.
    fn failure(&self, cmd: &Cmd, out: &CmdOutput) -> BatchError {
        failure(cmd, out, self.sched.transient(&out.stderr))
    }
}

/// [`Client::failure`] with the classification given.
fn failure(cmd: &Cmd, out: &CmdOutput, transient: bool) -> BatchError {
    let e = out.stderr.trim();
    let message = if e.is_empty() {
        format!("exit status {:?}", out.code)
    } else {
        e.to_string()
    };
    let command = cmd.display();
    if transient {
        BatchError::Transient { command, message }
    } else {
        BatchError::Command { command, message }
    }
}
