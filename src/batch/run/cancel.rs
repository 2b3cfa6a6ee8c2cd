//! Ending a job: the cancel of a running job (graceful first, plain after `kill_timeout` or
//! a second request), the removal of a job that never started, and `cleanup`'s cancel of
//! every recorded job still queued or running. Each waits, bounded, for the job to leave
//! the queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::{commands, confirm_step, reason_of, BatchRun, Requests, CONFIRM_BOUND, MIN_POLL};
use crate::batch::alloc::{AllocDir, Key};
use crate::batch::client::Client;
use crate::batch::persist::Record;
use crate::batch::scheduler::{Scheduler, Steps};
use crate::batch::{fmt_dur, Final, JobState};
use crate::config::Config;
use crate::supervisor::Request;
use crate::text::sanitize;

/// What a job that left the queue without a word of its end ended as.
fn no_record_left() -> Final {
    Final::ended("CANCELLED", 0, None, Some("no record left".into()))
}

impl BatchRun<'_> {
    /// Remove a job that never started: the plain cancel at once, then confirm it left the
    /// queue (for up to [`CONFIRM_BOUND`]). Returns its final state if confirmed.
    pub(super) async fn remove_queued(&self, id: &str) -> Option<Final> {
        let start = Instant::now();
        let client = self.client();
        self.log.warn_if(client.cancel(id, false).await).await;
        let st = confirm_gone(client, id, self.confirm_step()).await?;
        self.say_left(id, start).await;
        Some(match st {
            JobState::Finished(f) => f,
            _ => no_record_left(),
        })
    }

    /// `slurm job 42 left the queue after 3s`.
    async fn say_left(&self, id: &str, start: Instant) {
        let took = fmt_dur(start.elapsed());
        self.log
            .say(format!(
                "{} job {id} left the queue after {took}",
                self.name()
            ))
            .await;
    }

    /// The plain cancel, after saying `why`; returns the bound of its confirmation.
    async fn plain_cancel(&self, id: &str, why: String) -> Option<Instant> {
        self.log.say(why).await;
        self.log
            .warn_if(self.client().cancel(id, false).await)
            .await;
        Some(Instant::now() + CONFIRM_BOUND)
    }

    /// Cancel the job: the graceful form first (unless `first` is a kill, or the job is
    /// `queued`: never seen running, so no signal can reach it, and the plain cancel goes
    /// at once), the plain cancel after kill_timeout or on a second request, then confirm it
    /// left the queue (for up to [`CONFIRM_BOUND`] after the plain cancel). Returns the
    /// final state if confirmed.
    pub(super) async fn cancel(
        &self,
        id: &str,
        first: Request,
        queued: bool,
        requests: &mut Requests,
    ) -> Option<Final> {
        let name = self.name();
        let kill_timeout = self.config.general.kill_timeout;
        let first_reason = reason_of(&first);
        let forced = matches!(first, Request::Kill { .. }) || kill_timeout.is_zero() || queued;
        let how = if queued {
            ": removing it from the queue"
        } else if forced {
            ""
        } else {
            ": asking the job to stop (SIGTERM)"
        };
        self.log
            .say(format!("Cancelling {name} job {id} ({first_reason}){how}"))
            .await;
        self.log
            .warn_if(self.client().cancel(id, !forced).await)
            .await;
        let start = Instant::now();
        // Set once the plain cancel is sent: the bound of the confirmation.
        let mut give_up = forced.then(|| Instant::now() + CONFIRM_BOUND);
        let mut next_poll = Instant::now() + MIN_POLL;
        let mut requests_open = true;
        let far = super::wait::never(start);
        loop {
            tokio::select! {
                r = requests.recv(), if requests_open => {
                    let Some(r) = r else { requests_open = false; continue; };
                    // Our own backstop and the parent's (or a repeated cancel) are one request.
                    if give_up.is_none() && crate::supervisor::escalates_now(first_reason, &r) {
                        give_up = self.plain_cancel(id, format!("Cancelling {name} job {id} now (second request)")).await;
                    }
                }
                _ = sleep_until(start + kill_timeout), if give_up.is_none() => {
                    let why = format!("{name} job {id} still there after kill_timeout {}: cancelling it", fmt_dur(kill_timeout));
                    give_up = self.plain_cancel(id, why).await;
                }
                _ = sleep_until(give_up.unwrap_or(far)) => return None,
                _ = sleep_until(next_poll) => {
                    next_poll = Instant::now() + self.confirm_step();
                    match self.client().state(id).await {
                        Ok(JobState::Finished(f)) => {
                            self.say_left(id, start).await;
                            return Some(f);
                        }
                        Ok(JobState::Unknown) => return Some(no_record_left()),
                        Ok(_) => {}
                        Err(e) => self.log.say(format!("WARNING: {e}")).await,
                    }
                }
            }
        }
    }
}

/// Poll every `step` until job `id` is no longer active (its last state), for up to
/// [`CONFIRM_BOUND`] (`None`).
async fn confirm_gone(client: Client<'_>, id: &str, step: Duration) -> Option<JobState> {
    let until = Instant::now() + CONFIRM_BOUND;
    loop {
        tokio::time::sleep(step).await;
        match client.state(id).await {
            Ok(st) if !st.is_active() => return Some(st),
            _ if Instant::now() >= until => return None,
            _ => {}
        }
    }
}

/// `cleanup`: cancel every recorded job of this CI job that is still queued or running,
/// and confirm each left the queue (bounded). Returns the problems, if any, as text; the
/// caller removes the job's directory afterwards either way.
pub async fn cleanup_job(
    config: &Config,
    scheduler: &dyn Scheduler,
    scripts_dir: &Path,
    shared: Shared<'_>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
) -> Vec<String> {
    let cmds = commands(config, env, workdir);
    cleanup_with(
        config,
        Client::new(scheduler, &cmds),
        scripts_dir,
        Some(shared),
    )
    .await
}

/// What `cleanup` needs for a CI job that ran in its pipeline's shared allocation: where
/// the allocation's files are (the user's base dir) and the CI job's lease's name.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub base_dir: &'a Path,
    pub ci_job_id: u64,
}

/// [`cleanup_job`] through `client`.
pub(super) async fn cleanup_with(
    config: &Config,
    client: Client<'_>,
    scripts_dir: &Path,
    shared: Option<Shared<'_>>,
) -> Vec<String> {
    let record = Record::in_dir(scripts_dir);
    let sched = client.sched;
    // The record is in the job's scripts dir: only ids of the scheduler's own form pass.
    let read = match record.read(sched.name(), &|id| sched.valid_id(id)) {
        Ok(r) => r,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems: Vec<String> = read
        .refused
        .iter()
        .map(|r| {
            format!(
                "{}: {r}: skipped, no command is given it",
                record.path().display()
            )
        })
        .collect();
    for j in read.jobs.iter().filter(|j| !j.done) {
        problems.extend(cleanup_one(config, client, &record, &j.id).await);
    }
    if let (Some(steps), Some(shared)) = (sched.steps(), shared) {
        if !read.allocations.is_empty() {
            problems.extend(cleanup_steps(client, steps, &record, &read).await);
            problems.extend(cleanup_leases(client, &record, &read, shared).await);
        }
    }
    problems
}

/// Cancel the CI job's steps not seen ending: the recorded ones, and any step of the
/// user's named as the job (srun may have started it before its id was recorded). A
/// driver killed mid-step leaves its step running without srun (docs/allocations-facts.md,
/// section 3): only a cancel ends it.
async fn cleanup_steps(
    client: Client<'_>,
    steps: &dyn Steps,
    record: &Record,
    read: &crate::batch::persist::Read,
) -> Vec<String> {
    let name = client.name();
    let mut problems = Vec::new();
    let mut open: Vec<String> = read
        .steps
        .iter()
        .filter(|s| !s.done)
        .map(|s| s.id.clone())
        .collect();
    let list = steps.list_steps();
    match client.cmds.run(list.tool, &list.args).await {
        Ok(out) if out.success() => {
            for (id, n) in steps.parse_steps(&out.stdout) {
                if read.names.contains(&n)
                    && !open.contains(&id)
                    && !read.steps.iter().any(|s| s.id == id)
                {
                    open.push(id);
                }
            }
        }
        Ok(out) => problems.push(format!("{}: {}", list.display(), out.stderr.trim())),
        Err(e) => problems.push(e.to_string()),
    }
    for id in open {
        println!("cleanup: cancelling {name} step {id}");
        let cmd = steps.cancel_step(&id, false);
        match client.cmds.run(cmd.tool, &cmd.args).await {
            Ok(out) if out.success() || client.sched.gone(&out.stderr) => {
                if let Err(e) = record.finished(&id) {
                    problems.push(e.to_string());
                }
            }
            Ok(out) => problems.push(format!("{}: {}", cmd.display(), out.stderr.trim())),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}

/// Release the CI job's leases on its pipeline's allocations (a job killed mid-step left
/// them); an allocation still queued that no other job of the pipeline waits for is
/// removed from the queue (else it would wait there for nobody). A running allocation is
/// never cancelled: its holder ends it after `allocation_idle_timeout` unused.
async fn cleanup_leases(
    client: Client<'_>,
    record: &Record,
    read: &crate::batch::persist::Read,
    shared: Shared<'_>,
) -> Vec<String> {
    let name = client.name();
    let mut problems = Vec::new();
    let dir = match AllocDir::open(shared.base_dir) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    for (id, key) in &read.allocations {
        let Some(key) = Key::parse(key) else { continue };
        let others = {
            let _guard = match dir.lock(Duration::from_secs(30)).await {
                Ok(g) => g,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            if let Err(e) = dir.release_lease(&key, shared.ci_job_id) {
                problems.push(e.to_string());
            }
            dir.other_fresh_leases(&key, shared.ci_job_id, std::time::SystemTime::now())
                .unwrap_or(1)
        };
        let queued = matches!(client.state(id).await, Ok(JobState::Queued { .. }));
        if queued && others == 0 {
            println!("cleanup: cancelling {name} allocation {id} (still queued, no other job of the pipeline waits for it)");
            if let Err(e) = client.cancel(id, false).await {
                problems.push(e.to_string());
            } else if let Err(e) = record.finished(id) {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

/// Cancel job `id` if it is still queued or running (or its state is unknown), and confirm
/// it left the queue. Returns the problems, as text.
async fn cleanup_one(
    config: &Config,
    client: Client<'_>,
    record: &Record,
    id: &str,
) -> Vec<String> {
    let name = client.name();
    let mut problems = Vec::new();
    let st = match client.state(id).await {
        Ok(st) => st,
        Err(e) => {
            // Unknown state: cancel anyway, a cancel of a finished job is harmless.
            problems.push(e.to_string());
            JobState::Running {
                state: "UNKNOWN".into(),
            }
        }
    };
    if !st.is_active() {
        return problems;
    }
    // The scheduler's words may carry what the job put there (a Flux exception note).
    let still = sanitize(&st.describe()).into_owned();
    println!("cleanup: cancelling {name} job {id} (still {still})");
    if let Err(e) = client.cancel(id, false).await {
        problems.push(e.to_string());
        return problems;
    }
    match confirm_gone(client, id, confirm_step(config)).await {
        Some(st) => {
            let gone = sanitize(&st.describe()).into_owned();
            println!("cleanup: {name} job {id} is gone ({gone})");
            if let Err(e) = record.finished(id) {
                problems.push(e.to_string());
            }
        }
        None => problems.push(format!(
            "{name} job {id} still listed {} after the cancel",
            fmt_dur(CONFIRM_BOUND)
        )),
    }
    problems
}
