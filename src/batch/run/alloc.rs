//! A CI job as a step of its pipeline's shared allocation (`[batch] allocation_reuse`, the
//! CI variable `JACAMAR_REUSE_ALLOCATION=pipeline`; docs/allocations.md, the design in
//! docs/allocations-design.md):
//!
//! ```text
//! acquire (the lock in <base>/.jacamar-alloc: a usable record → reuse it, none → one sbatch
//!    │     of the holder script and a new record; the job's lease; unlock)
//!    ▼
//! wait for the allocation to run (the batch run's waiting loop on the allocation's id)
//!    ▼
//! step: srun --jobid=<allocation> (own process group), its id from srun's stderr, the
//!    │  output tailed; a cancel goes to the step through scancel, never to srun
//!    ▼
//! end: the wrapper's exit file (its job id is the allocation's) → the verdict; the lease
//!      released; the allocation stays for the pipeline's next job, its holder ends it
//!      after allocation_idle_timeout unused
//! ```

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::submit::RunError;
use super::wait::{never, Ended, Retry, Watch};
use super::{reason_of, BatchRun, Requests, CONFIRM_BOUND};
use crate::batch::alloc::dir::LEASE_REFRESH;
use crate::batch::alloc::holder::{self, HolderParams};
use crate::batch::alloc::{job_name, AllocDir, AllocRecord, Key};
use crate::batch::args::{PIPELINE_VARIABLES, REUSE_VARIABLE};
use crate::batch::outcome::{self, failed, system_failure};
use crate::batch::scheduler::{Steps, Submission};
use crate::batch::{fmt_dur, is_decimal_id, wrapper, BatchError, Final, JobState};
use crate::protocol::Status;
use crate::supervisor::{Reason, Request};
use crate::text::sanitize;

/// How long a job waits for the allocation lock (another job of the user holds it only
/// while it reads the record and, at most, submits one holder).
const LOCK_BOUND: Duration = Duration::from_secs(30);
/// How long a cancel waits for srun to name its step before it stops srun itself.
const STEP_NAME_BOUND: Duration = Duration::from_secs(5);
/// How old what an ended allocation left must be before a job removes it.
const PRUNE_AGE: Duration = Duration::from_secs(86400);
/// srun's stderr lines kept for a message (the last ones).
const KEPT_LINES: usize = 20;

/// The pipeline a CI job that opted in belongs to: `CI_PROJECT_ID`, `CI_PIPELINE_ID`.
pub(super) struct Pipeline {
    project: String,
    pipeline: String,
}

/// What a CI job asks for: its pipeline's allocation, found in `dir` by `key`, for the
/// submission `sub` (arguments from `source`), through the scheduler's `steps`.
#[derive(Clone, Copy)]
struct Ask<'a> {
    dir: &'a AllocDir,
    key: &'a Key,
    pipeline: &'a Pipeline,
    sub: &'a Submission,
    source: Option<&'a str>,
    steps: &'a dyn Steps,
}

/// The allocation a CI job holds a lease on.
struct Held {
    id: String,
    /// This job submitted it.
    ours: bool,
    /// When it was submitted (unix seconds, the record's).
    submitted_unix: u64,
    /// Seen running when it was checked.
    running: bool,
}

/// How a step ended.
enum StepEnd {
    /// The stage's status.
    Done(Status),
    /// srun found the allocation gone before the step started: a new one may be made.
    Gone(String),
    /// srun failed in the scheduler's transient words before the step started.
    Transient(BatchError),
}

/// The current unix time in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The exit file at `path` of a step of allocation `id`, looked for every 250 ms for up to
/// `bound` (`nfs_timeout`: written on the compute node, a shared file system may show it
/// on this host later).
async fn await_exit_file(
    path: &std::path::Path,
    id: &str,
    bound: Duration,
) -> Option<wrapper::ExitRecord> {
    let until = Instant::now() + bound;
    loop {
        if let Some(r) = wrapper::read_exit_file(path, id) {
            return Some(r);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether srun's stderr `line` is for the job log: an error or warning of srun's own, or
/// a step creation that waits ("temporarily disabled, retrying"), but not the task's exit
/// code, which the log says with the step's end.
fn srun_says(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    let told = l.contains("error:") || l.contains("warning:") || l.contains("retrying");
    told && !l.contains("exited with exit code") && !l.contains(": killed")
}

/// The error of the allocation's files (the lock, the record, the lease) as the run's.
fn alloc_err(e: impl std::fmt::Display) -> RunError {
    RunError::Allocation(e.to_string())
}

impl BatchRun<'_> {
    /// Whether this CI job runs in its pipeline's allocation: the CI variable is exactly
    /// `pipeline`, the site allows it, the scheduler can run steps and the pipeline's ids
    /// are numbers. Otherwise the job runs as its own batch job; a variable that was set is
    /// then said ignored, with why, in one line.
    pub(super) async fn reuse(&self) -> Option<(Pipeline, &dyn Steps)> {
        let v = self.job.variables.get(REUSE_VARIABLE)?;
        let ignored = |why: String| format!("{REUSE_VARIABLE}=pipeline ignored: {why}");
        let line = if v != "pipeline" {
            let shown = sanitize(v);
            format!("{REUSE_VARIABLE}=\"{shown}\" ignored: the only value is \"pipeline\"")
        } else if !self.config.batch.allocation_reuse {
            ignored("allocation_reuse is off on this runner".into())
        } else if let Some(steps) = self.job.scheduler.steps() {
            let id = |name: &str| {
                self.job
                    .variables
                    .get(name)
                    .filter(|v| is_decimal_id(v))
                    .cloned()
            };
            let [project, pipeline] = PIPELINE_VARIABLES;
            match (id(project), id(pipeline)) {
                (Some(project), Some(pipeline)) => {
                    return Some((Pipeline { project, pipeline }, steps))
                }
                _ => ignored(format!(
                    "{project} or {pipeline} is missing or not a number"
                )),
            }
        } else {
            ignored(format!(
                "the {} executor cannot run a job inside an allocation",
                self.name()
            ))
        };
        self.log.say(line).await;
        None
    }

    /// Run the CI job as a step of its pipeline's allocation (see the module's text). An
    /// allocation srun finds gone before the step starts is replaced once; a transient
    /// failure of srun is retried for `transient_retry_window`.
    pub(super) async fn in_allocation(
        &self,
        dir: &AllocDir,
        sub: &Submission,
        source: Option<&str>,
        p: &Pipeline,
        steps: &dyn Steps,
        requests: &mut Requests,
    ) -> Result<Status, RunError> {
        let uid = nix::unistd::getuid().as_raw();
        let key = Key::derive(uid, &p.project, &p.pipeline, &sub.args);
        let b = &self.config.batch;
        let mut retry = Retry::new(b.command_delay, b.transient_retry_window);
        let mut replaced = false;
        loop {
            let ask = Ask {
                dir,
                key: &key,
                pipeline: p,
                sub,
                source,
                steps,
            };
            let held = self.acquire(&ask, requests).await?;
            let waited = match self.wait_allocation(dir, &key, &held, sub, requests).await {
                Ok(w) => w,
                Err(st) => return Ok(st),
            };
            let name = self.name();
            let how = match (held.ours, waited) {
                (true, w) => format!("this job waited {} for it", fmt_dur(w.unwrap_or_default())),
                (false, Some(w)) => format!(
                    "submitted by an earlier job; this job waited {} for it",
                    fmt_dur(w)
                ),
                (false, None) => format!(
                    "created {} ago by an earlier job; no queue wait",
                    fmt_dur(Duration::from_secs(
                        unix_now().saturating_sub(held.submitted_unix)
                    ))
                ),
            };
            self.log
                .say(format!(
                    "Using {name} allocation {} of pipeline {} ({how})",
                    held.id, p.pipeline
                ))
                .await;
            let end = self.run_step(dir, &key, &held, sub, steps, requests).await;
            match end {
                StepEnd::Done(st) => return Ok(st),
                StepEnd::Gone(why) if !replaced => {
                    replaced = true;
                    self.log
                        .say(format!(
                            "{name} allocation {} is gone ({}); submitting a new one",
                            held.id,
                            sanitize(&why)
                        ))
                        .await;
                    self.forget(dir, &key, &held.id).await;
                }
                StepEnd::Gone(why) => {
                    self.release(dir, &key).await;
                    return Ok(system_failure(format!(
                        "{name} allocation {} is gone again after a new one was made: {}",
                        held.id,
                        sanitize(&why)
                    )));
                }
                StepEnd::Transient(e) => {
                    self.release(dir, &key).await;
                    self.back_off(&mut retry, e, requests).await?;
                }
            }
        }
    }

    /// Under the lock: the pipeline's allocation from its record when the scheduler says
    /// it is ours and alive, otherwise a new one (one submission of the holder); then the
    /// job's lease on it, recorded in the job's record first.
    async fn acquire(&self, ask: &Ask<'_>, requests: &mut Requests) -> Result<Held, RunError> {
        let Ask {
            dir,
            key,
            pipeline: p,
            sub: _,
            source: _,
            steps,
        } = *ask;
        let name = self.name();
        let sched = self.job.scheduler;
        let uid = nix::unistd::getuid().as_raw();
        let guard = dir.lock(LOCK_BOUND).await.map_err(alloc_err)?;
        // What ended allocations of the user left (a day old, no record).
        if let Err(e) = dir.prune(PRUNE_AGE, SystemTime::now()) {
            self.log
                .say(format!("WARNING: {}", sanitize(&e.to_string())))
                .await;
        }
        let found = match dir.read_record(key, name, sched.profile().valid_id, uid, unix_now()) {
            Ok(r) => r,
            Err(e) => {
                let e = sanitize(&e.to_string()).into_owned();
                self.log.say(format!("WARNING: {e}: ignored")).await;
                None
            }
        };
        let mut held = None;
        if let Some(rec) = found {
            match self.check(steps, key, &rec.id).await {
                Ok(running) => {
                    held = Some(Held {
                        id: rec.id,
                        ours: false,
                        submitted_unix: rec.submitted_unix,
                        running,
                    })
                }
                Err(why) => {
                    let why = sanitize(&why);
                    self.log
                        .say(format!(
                            "{name} allocation {} of pipeline {} cannot be used ({why}); submitting a new one",
                            rec.id, p.pipeline
                        ))
                        .await;
                    dir.remove_record(key).map_err(alloc_err)?;
                }
            }
        }
        let held = match held {
            Some(h) => h,
            None => self.submit_holder(ask, requests).await?,
        };
        self.record
            .allocation(name, &held.id, key.as_str())
            .map_err(RunError::Record)?;
        dir.make_lease(key, self.job.ci_job_id).map_err(alloc_err)?;
        drop(guard);
        Ok(held)
    }

    /// Whether allocation `id` is usable for `key`: the scheduler says it is ours (uid),
    /// carries the key's name, and is queued or running (`Ok(running)`); otherwise why not.
    /// A scheduler that cannot answer now (its transient words: a controller restarting)
    /// is not a reason to drop the pipeline's allocation: it counts as queued, and the
    /// waiting loop asks again with its retries.
    async fn check(&self, steps: &dyn Steps, key: &Key, id: &str) -> Result<bool, String> {
        let cmd = steps.describe(id);
        let out = match self.cmds.run(cmd.tool, &cmd.args).await {
            Ok(out) => out,
            Err(e) if e.is_transient() => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        if !out.success() {
            if self.job.scheduler.transient(&out.stderr) {
                return Ok(false);
            }
            return Err(format!("{}: {}", cmd.display(), out.stderr.trim()));
        }
        let (uid, name, st) = steps
            .parse_owner(&out.stdout)
            .ok_or_else(|| format!("no owner, name or state in the answer to {}", cmd.display()))?;
        let want = job_name(key);
        if uid != nix::unistd::getuid().as_raw() {
            return Err(format!("it belongs to uid {uid}"));
        }
        if name != want {
            return Err(format!("it is named {name:?}, not {want}"));
        }
        match st {
            JobState::Running { .. } => Ok(true),
            JobState::Queued { .. } => Ok(false),
            st => Err(st.describe()),
        }
    }

    /// Submit the holder script as the pipeline's new allocation and write its record.
    async fn submit_holder(
        &self,
        ask: &Ask<'_>,
        requests: &mut Requests,
    ) -> Result<Held, RunError> {
        let Ask {
            dir,
            key,
            pipeline: p,
            sub,
            source,
            steps,
        } = *ask;
        let name = self.name();
        let idle = self.config.batch.allocation_idle_timeout;
        self.log
            .say(format!(
                "Pipeline allocation ({REUSE_VARIABLE}=pipeline): none for pipeline {} with these arguments; submitting one (idle timeout {})",
                p.pipeline,
                fmt_dur(idle)
            ))
            .await;
        let scontrol = self.cmds.program("scontrol");
        let text = holder::script(&HolderParams {
            dir: dir.path(),
            key,
            idle,
            scontrol: &scontrol,
        });
        let script = dir.write_holder(key, &text).map_err(alloc_err)?;
        let alloc_name = job_name(key);
        let cmd = steps.submit_holder(
            &alloc_name,
            &dir.holder_out(key),
            dir.path(),
            &sub.args,
            &script,
        );
        let b = &self.config.batch;
        let mut retry = Retry::new(b.command_delay, b.transient_retry_window);
        let id = loop {
            let e = match self.cmds.run(cmd.tool, &cmd.args).await {
                Ok(out) if out.success() => match self.job.scheduler.parse_submit(&out.stdout) {
                    Some(id) => break id,
                    None => {
                        return Err(RunError::Submit {
                            name,
                            source: BatchError::Parse {
                                command: cmd.tool.to_string(),
                                why: format!("no job id in {:?}", out.stdout.trim()),
                            },
                        })
                    }
                },
                Ok(out) => {
                    let message = out.stderr.trim().to_string();
                    let command = cmd.display();
                    match self.job.scheduler.transient(&out.stderr) {
                        true => BatchError::Transient { command, message },
                        false => {
                            return Err(RunError::Refused {
                                name,
                                source: BatchError::Command { command, message },
                            })
                        }
                    }
                }
                Err(e) => e,
            };
            if !e.is_transient() {
                return Err(RunError::Submit { name, source: e });
            }
            self.back_off(&mut retry, e, requests).await?;
        };
        let now = unix_now();
        let rec = AllocRecord {
            scheduler: name.to_string(),
            id: id.clone(),
            submitted_unix: now,
            uid: nix::unistd::getuid().as_raw(),
        };
        if let Err(e) = dir.write_record(key, &rec) {
            // Nobody could find it again: remove it rather than leave it queued.
            self.log
                .warn_if(self.client().cancel(&id, false).await)
                .await;
            return Err(alloc_err(e));
        }
        let from = super::arguments_from(source);
        self.log
            .say(format!(
                "Submitted {name} job {id} ({alloc_name}{from}) as pipeline {}'s allocation; its output: {}",
                p.pipeline,
                dir.holder_out(key).display()
            ))
            .await;
        Ok(Held {
            id,
            ours: true,
            submitted_unix: now,
            running: false,
        })
    }

    /// Wait for the allocation to run: at once when it was seen running, otherwise the
    /// batch run's waiting loop (queue lines, heartbeat, the CI job's end). Returns how
    /// long this job waited (`None`: not at all), or the stage's status when the wait ended
    /// otherwise (the lease released; an allocation still queued that no other job of the
    /// pipeline waits for is removed from the queue).
    async fn wait_allocation(
        &self,
        dir: &AllocDir,
        key: &Key,
        held: &Held,
        sub: &Submission,
        requests: &mut Requests,
    ) -> Result<Option<Duration>, Status> {
        if held.running {
            return Ok(None);
        }
        let id = &held.id;
        let mut watch = Watch::until_running();
        let end = self.wait(sub, id, &mut watch, requests).await;
        let (why, status) = match end {
            Ended::Started => return Ok(Some(watch.queued_for())),
            Ended::Finished(f) => {
                self.release(dir, key).await;
                self.forget(dir, key, id).await;
                let v = self.verdict(id, Some(&f), None, &watch).await;
                let st = match v.status {
                    Status::Success => failed(Some(format!(
                        "the pipeline's allocation {id} ended before this job's step ran"
                    ))),
                    st => st,
                };
                return Err(st);
            }
            Ended::Lost(why) => {
                self.release(dir, key).await;
                return Err(self.lost(id, &why).await.status);
            }
            Ended::Cancel(r) => {
                let why = reason_of(&r);
                (why.to_string(), failed(Some(why.to_string())))
            }
            Ended::NeverStarted => {
                let msg = watch.never_started();
                self.log
                    .say(format!(
                        "{} allocation {id} {msg}: the CI job's time is up",
                        self.name()
                    ))
                    .await;
                (
                    msg.clone(),
                    outcome::failed(Some(format!("{} allocation {id} {msg}", self.name()))),
                )
            }
        };
        self.give_up_queued(dir, key, id, &why).await;
        Err(status)
    }

    /// This job no longer waits for the queued allocation `id`: its lease goes, and the
    /// allocation is removed from the queue when no other job of the pipeline holds a fresh
    /// lease on it (else it stays for them).
    async fn give_up_queued(&self, dir: &AllocDir, key: &Key, id: &str, why: &str) {
        let name = self.name();
        let others = {
            let _guard = match dir.lock(LOCK_BOUND).await {
                Ok(g) => Some(g),
                Err(e) => {
                    self.log.say(format!("WARNING: {e}")).await;
                    None
                }
            };
            self.release(dir, key).await;
            match dir.other_fresh_leases(key, self.job.ci_job_id, SystemTime::now()) {
                Ok(n) => n,
                Err(e) => {
                    self.log.say(format!("WARNING: {e}")).await;
                    1
                }
            }
        };
        if others > 0 {
            self.log
                .say(format!(
                    "{name} allocation {id} stays queued for the pipeline's {others} other waiting job(s) ({why})"
                ))
                .await;
            return;
        }
        self.log
            .say(format!(
                "Cancelling {name} allocation {id} ({why}): no other job of the pipeline waits for it, removing it from the queue"
            ))
            .await;
        if self.remove_queued(id).await.is_some() {
            self.log.warn_if(self.record.finished(id)).await;
        }
        self.forget(dir, key, id).await;
    }

    /// Remove the record of `key` if it still names allocation `id` (under the lock).
    async fn forget(&self, dir: &AllocDir, key: &Key, id: &str) {
        let name = self.name();
        let uid = nix::unistd::getuid().as_raw();
        let _guard = match dir.lock(LOCK_BOUND).await {
            Ok(g) => g,
            Err(e) => return self.log.say(format!("WARNING: {e}")).await,
        };
        let valid = self.job.scheduler.profile().valid_id;
        if let Ok(Some(rec)) = dir.read_record(key, name, valid, uid, unix_now()) {
            if rec.id == id {
                if let Err(e) = dir.remove_record(key) {
                    self.log.say(format!("WARNING: {e}")).await;
                }
            }
        }
    }

    /// Release this job's lease (the holder's idle time starts from now).
    async fn release(&self, dir: &AllocDir, key: &Key) {
        if let Err(e) = dir.release_lease(key, self.job.ci_job_id) {
            self.log.say(format!("WARNING: {e}")).await;
        }
    }

    /// Run the step and supervise it to its end (see the module's text).
    async fn run_step(
        &self,
        dir: &AllocDir,
        key: &Key,
        held: &Held,
        sub: &Submission,
        steps: &dyn Steps,
        requests: &mut Requests,
    ) -> StepEnd {
        let name = self.name();
        let alloc = held.id.as_str();
        let kill_timeout = self.config.general.kill_timeout;
        // The step's own limit: the CI job's end plus kill_timeout, whole minutes (the
        // shared allocation cannot take one CI job's --deadline).
        let minutes = self.job.ci_end.map(|end| {
            let left = end.saturating_duration_since(Instant::now()) + kill_timeout;
            left.as_secs().div_ceil(60).max(1)
        });
        let cmd = steps.step(alloc, sub, minutes);
        let mut child = match self.cmds.spawn(cmd.tool, &cmd.args).await {
            Ok(c) => c,
            Err(e) => {
                self.release(dir, key).await;
                return StepEnd::Done(system_failure(e.to_string()));
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let (line_tx, mut lines) = mpsc::channel::<String>(64);
        let reader = child.stderr.take().map(|err| {
            tokio::spawn(async move {
                let mut r = BufReader::new(err).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if line_tx.send(l).await.is_err() {
                        break;
                    }
                }
            })
        });
        let nfs_timeout = self.config.batch.nfs_timeout;
        let tails = super::log::Tails::start(self.spawn_tail, sub, alloc, nfs_timeout, self.log);
        let mut kept: VecDeque<String> = VecDeque::new();
        let mut step: Option<String> = None;
        let mut stopped: Option<Reason> = None;
        // A cancel waiting for the step's name, since when.
        let mut pending: Option<Instant> = None;
        let start = Instant::now();
        let far = never(start);
        let mut escalate = far;
        let mut give_up = far;
        let mut plain_sent = false;
        let mut next_lease = start + LEASE_REFRESH;
        let mut requests_open = true;
        let mut lines_open = true;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.ok(),
                l = lines.recv(), if lines_open => {
                    let Some(l) = l else { lines_open = false; continue };
                    if step.is_none() {
                        if let Some(s) = steps.parse_step(&l) {
                            self.log.warn_if(self.record.step(name, &s)).await;
                            self.log.say(format!("Running as {name} step {s}; output: {}", sub.output.display())).await;
                            step = Some(s);
                            if let Some(why) = pending.take().and(stopped) {
                                escalate = self.cancel_step(steps, step.as_deref(), why, kill_timeout).await;
                            }
                        }
                    }
                    self.keep(&mut kept, l).await;
                }
                r = requests.recv(), if requests_open => {
                    let r = match r {
                        Some(r) => r,
                        None => {
                            requests_open = false;
                            Request::Terminate { signal: Signal::SIGTERM, reason: Reason::ParentGone }
                        }
                    };
                    let reason = reason_of(&r);
                    match stopped {
                        None => {
                            stopped = Some(reason);
                            let kill = matches!(r, Request::Kill { .. }) || kill_timeout.is_zero();
                            if step.is_none() {
                                self.log.say(format!("Cancelling the {name} step of allocation {alloc} ({reason}): waiting for srun to name it")).await;
                                pending = Some(Instant::now());
                            } else if kill {
                                give_up = self.plain_step(steps, step.as_deref(), format!("Cancelling {name} step {} ({reason})", step.as_deref().unwrap_or("?"))).await;
                                plain_sent = true;
                            } else {
                                escalate = self.cancel_step(steps, step.as_deref(), reason, kill_timeout).await;
                            }
                        }
                        Some(first) if !plain_sent && step.is_some() && crate::supervisor::escalates_now(first, &r) => {
                            give_up = self.plain_step(steps, step.as_deref(), format!("Cancelling {name} step {} now (second request)", step.as_deref().unwrap_or("?"))).await;
                            plain_sent = true;
                            escalate = far;
                        }
                        Some(_) => {}
                    }
                }
                _ = sleep_until(self.job.deadline.unwrap_or(far)), if stopped.is_none() => {
                    stopped = Some(Reason::Backstop);
                    if step.is_none() {
                        pending = Some(Instant::now());
                    } else {
                        escalate = self.cancel_step(steps, step.as_deref(), Reason::Backstop, kill_timeout).await;
                    }
                }
                _ = sleep_until(pending.map_or(far, |t| t + STEP_NAME_BOUND)) => {
                    // srun has not named a step: it is still creating it. Stop srun itself
                    // (a step it creates after this is killed with it, without its trap).
                    pending = None;
                    self.log.say(format!("srun named no step within {}: stopping it", fmt_dur(STEP_NAME_BOUND))).await;
                    if let Some(g) = pgid {
                        let _ = killpg(g, Signal::SIGTERM);
                    }
                    give_up = Instant::now() + CONFIRM_BOUND;
                }
                _ = sleep_until(escalate) => {
                    escalate = far;
                    let why = format!("{name} step {} still there after kill_timeout {}: cancelling it", step.as_deref().unwrap_or("?"), fmt_dur(kill_timeout));
                    give_up = self.plain_step(steps, step.as_deref(), why).await;
                    plain_sent = true;
                }
                _ = sleep_until(give_up) => {
                    self.log.say(format!("ERROR: srun of {name} allocation {alloc} still running {} after the cancel: killing it; cleanup cancels the step", fmt_dur(CONFIRM_BOUND))).await;
                    if let Some(g) = pgid {
                        let _ = killpg(g, Signal::SIGKILL);
                    }
                    let _ = child.wait().await;
                    break None;
                }
                _ = sleep_until(next_lease) => {
                    next_lease = Instant::now() + LEASE_REFRESH;
                    if let Err(e) = dir.touch_lease(key, self.job.ci_job_id) {
                        self.log.say(format!("WARNING: {e}")).await;
                    }
                }
            }
        };
        // srun's remaining stderr (its reader ends with the pipe).
        if let Some(r) = reader {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        while let Ok(l) = lines.try_recv() {
            if step.is_none() {
                step = steps.parse_step(&l);
            }
            self.keep(&mut kept, l).await;
        }
        let srun_said = kept
            .iter()
            .map(|l| sanitize(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        let exit_path = wrapper::exit_path(&sub.output);
        let mut exit = wrapper::read_exit_file(&exit_path, alloc);
        if step.is_none() && exit.is_none() {
            tails.stop_now().await;
            self.release(dir, key).await;
            if stopped.is_some() {
                let why = stopped.map(|r| r.to_string());
                return StepEnd::Done(failed(why));
            }
            let sched = self.job.scheduler;
            if steps.allocation_gone(&srun_said) {
                return StepEnd::Gone(srun_said);
            }
            if sched.transient(&srun_said) {
                return StepEnd::Transient(BatchError::Transient {
                    command: cmd.display(),
                    message: srun_said,
                });
            }
            return StepEnd::Done(system_failure(format!(
                "srun could not start a step in {name} allocation {alloc}: {srun_said}"
            )));
        }
        if exit.is_none() && status.is_some() {
            // Written on the compute node: a shared file system may show it here later.
            exit = await_exit_file(&exit_path, alloc, nfs_timeout).await;
        }
        tails.drain(nfs_timeout, self.log).await;
        let shown = step.clone().unwrap_or_else(|| format!("{alloc}.?"));
        let fin = match (&exit, status) {
            (Some(r), _) if r.terms > 0 && stopped.is_none() => {
                Some(self.cancelled_by_scheduler(steps, alloc, r.code).await)
            }
            (Some(r), _) => Some(Final::exited(
                if r.code == 0 { "COMPLETED" } else { "FAILED" },
                r.code,
            )),
            (None, Some(st)) => {
                // srun exits with the step's status (docs/allocations-facts.md, F2).
                let code = st.code().unwrap_or(128 + 9);
                self.log
                    .say(format!(
                        "WARNING: the exit file {} of {name} step {shown} did not appear within nfs_timeout {}: the step's exit code {code} is srun's",
                        exit_path.display(),
                        fmt_dur(nfs_timeout)
                    ))
                    .await;
                match (stopped, code) {
                    (Some(_), _) => Some(Final::exited("CANCELLED", code)),
                    (None, 0) => Some(Final::exited("COMPLETED", 0)),
                    // Ended by the allocation's time limit, or failed on its own.
                    (None, _) => Some(
                        match self.cancelled_by_scheduler(steps, alloc, code).await {
                            f if f.state == "TIMEOUT" => f,
                            _ => Final::exited("FAILED", code),
                        },
                    ),
                }
            }
            (None, None) => None,
        };
        if let Some(f) = &fin {
            self.log
                .say(format!(
                    "{name} step {shown} ended, exit code {}",
                    f.exit_code
                ))
                .await;
            if let Some(s) = &step {
                self.log.warn_if(self.record.finished(s)).await;
            }
        }
        self.release(dir, key).await;
        self.log
            .say(format!(
                "Allocation {alloc} stays for the pipeline's next job; it ends after {} unused",
                fmt_dur(self.config.batch.allocation_idle_timeout)
            ))
            .await;
        let watch = Watch::ran();
        StepEnd::Done(
            self.verdict(&shown, fin.as_ref(), stopped, &watch)
                .await
                .status,
        )
    }

    /// Take in a line of srun's stderr: the last [`KEPT_LINES`] are kept for a message, and
    /// what srun warns about or fails at (a step waiting for resources, an error) is said
    /// in the job log at once; its `-v` chatter and its echo of the task's exit code (the
    /// log says the step's end) are not.
    async fn keep(&self, kept: &mut VecDeque<String>, line: String) {
        if srun_says(&line) {
            self.log.say(sanitize(&line)).await;
        }
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }

    /// The graceful cancel of `step` (SIGTERM to every process of it), said in the log;
    /// returns when the plain cancel is due (kill_timeout).
    async fn cancel_step(
        &self,
        steps: &dyn Steps,
        step: Option<&str>,
        why: Reason,
        kill_timeout: Duration,
    ) -> Instant {
        let Some(step) = step else {
            return Instant::now();
        };
        self.log
            .say(format!(
                "Cancelling {} step {step} ({why}): asking it to stop (SIGTERM)",
                self.name()
            ))
            .await;
        let cmd = steps.cancel_step(step, true);
        self.step_command(&cmd).await;
        Instant::now() + kill_timeout
    }

    /// The plain cancel of `step` (SIGKILL), after saying `why`; returns the bound of
    /// srun's exit.
    async fn plain_step(&self, steps: &dyn Steps, step: Option<&str>, why: String) -> Instant {
        self.log.say(why).await;
        if let Some(step) = step {
            let cmd = steps.cancel_step(step, false);
            self.step_command(&cmd).await;
        }
        Instant::now() + CONFIRM_BOUND
    }

    /// Run a step's cancel; a failure is a warning (srun's exit, not the cancel's answer,
    /// says when the step ended: docs/allocations-facts.md, section 3).
    async fn step_command(&self, cmd: &crate::batch::scheduler::Cmd) {
        match self.cmds.run(cmd.tool, &cmd.args).await {
            Ok(out) if out.success() || self.job.scheduler.gone(&out.stderr) => {}
            Ok(out) => {
                let said = sanitize(out.stderr.trim()).into_owned();
                self.log
                    .say(format!("WARNING: {} failed: {said}", cmd.display()))
                    .await
            }
            Err(e) => self.log.say(format!("WARNING: {e}")).await,
        }
    }

    /// The step got a TERM we did not send: the allocation reached its time limit (the
    /// time-limit failure) or someone cancelled it or the step.
    async fn cancelled_by_scheduler(&self, steps: &dyn Steps, alloc: &str, code: i32) -> Final {
        let cmd = steps.describe(alloc);
        let said = match self.cmds.run(cmd.tool, &cmd.args).await {
            Ok(out) if out.success() => out.stdout,
            _ => String::new(),
        };
        // At its limit the allocation is COMPLETING (Reason=TimeLimit), then TIMEOUT.
        if said.contains("JobState=TIMEOUT") || said.contains("Reason=TimeLimit") {
            return Final::ended(
                "TIMEOUT",
                code,
                None,
                Some("the pipeline's allocation reached its time limit".into()),
            );
        }
        Final::ended(
            "CANCELLED",
            code,
            None,
            Some("the step was cancelled by the scheduler".into()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::srun_says;

    /// srun's own troubles reach the job log; its `-v` chatter and the task's exit code
    /// (said with the step's end) do not (lines as Slurm 22.05 prints them,
    /// docs/allocations-facts.md).
    #[test]
    fn srun_lines_for_the_job_log() {
        for told in [
            "srun: error: Unable to create step for job 1312: Access/permission denied",
            "srun: Job 1312 step creation temporarily disabled, retrying (Requested nodes are busy)",
            "srun: error: Slurm job 1313 has expired",
            "srun: warning: can't run 1 processes on 2 nodes, setting nnodes to 1",
        ] {
            assert!(srun_says(told), "{told}");
        }
        for quiet in [
            "srun: launching StepId=1315.0 on host vm, 1 tasks: 0",
            "srun: jobid 1315: nodes(1):`vm', cpu counts: 1(x1)",
            "srun: error: vm: task 0: Exited with exit code 7",
            "srun: error: vm: task 0: Killed",
            "srun: launch/slurm: _task_finish: Received task exit notification for 1 task of StepId=1315.0 (status=0x0400).",
        ] {
            assert!(!srun_says(quiet), "{quiet}");
        }
    }
}

#[cfg(test)]
mod exit_file_tests {
    use std::time::Duration;

    /// The exit file of a step is written on the compute node: a shared file system may show
    /// it on the runner's host only later (the docker cluster's NFS-like view did: the job
    /// was reported failed with "no exit file" and code 0). It is looked for up to the bound.
    #[tokio::test]
    async fn a_late_exit_file_is_waited_for_up_to_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("build_script.exit");
        let p = path.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            std::fs::write(&p, "7 0 42 12\n").unwrap();
        });
        let t0 = std::time::Instant::now();
        let r = super::await_exit_file(&path, "42", Duration::from_secs(5)).await;
        writer.await.unwrap();
        assert_eq!(r.map(|r| r.code), Some(7));
        assert!(t0.elapsed() >= Duration::from_millis(700));
        // Never there: None after the bound.
        let none = d.path().join("other.exit");
        let t0 = std::time::Instant::now();
        assert!(
            super::await_exit_file(&none, "42", Duration::from_millis(600))
                .await
                .is_none()
        );
        assert!(t0.elapsed() >= Duration::from_millis(600));
    }
}
