//! Waiting for the job: polls every `command_delay` (through the job's [`Poller`]), state
//! changes and a heartbeat in the log, the CI job's end and our backstop, and the retry
//! policy for a failing scheduler ([`Retry`]).
//!
//! [`Poller`]: crate::batch::poller::Poller

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{sleep_until, Instant};

use super::log::Log;
use super::{BatchRun, Requests, HEARTBEAT_RUNNING, MIN_POLL, UNKNOWN_LIMIT};
use crate::batch::outcome::{self, Seen};
use crate::batch::poller::JobRef;
use crate::batch::scheduler::Submission;
use crate::batch::{fmt_dur, wrapper, BatchError, Final, JobState};
use crate::supervisor::{Reason, Request};

/// Why the waiting loop ended. Our backstop is a cancel request like the others.
pub(super) enum Ended {
    Finished(Final),
    Cancel(Request),
    Lost(String),
    /// Still queued at the CI job's end.
    NeverStarted,
    /// Seen running, by a watch that waits only for that ([`Watch::until_running`]: a
    /// pipeline's shared allocation).
    Started,
}

/// What the waiting loop saw of one scheduler job.
pub(super) struct Watch {
    /// When it was submitted.
    start: Instant,
    /// When it was first seen running.
    ran_at: Option<Instant>,
    /// Its last state.
    pub(super) last: Option<JobState>,
    /// The scheduler's last reason (or state word) while it was queued.
    queue_reason: Option<String>,
    /// The wait ends as soon as the job runs ([`Ended::Started`]).
    until_running: bool,
}

impl Watch {
    pub(super) fn new() -> Watch {
        Watch {
            start: Instant::now(),
            ran_at: None,
            last: None,
            queue_reason: None,
            until_running: false,
        }
    }

    /// A watch whose wait ends when the job runs (a pipeline's shared allocation).
    pub(super) fn until_running() -> Watch {
        Watch {
            until_running: true,
            ..Watch::new()
        }
    }

    /// A watch of a job already running (a step in a running allocation: no queue wait).
    pub(super) fn ran() -> Watch {
        let mut w = Watch::new();
        w.ran_at = Some(w.start);
        w.last = Some(JobState::Running {
            state: "RUNNING".into(),
        });
        w
    }

    /// Take in a polled state that is still active.
    pub(super) fn saw(&mut self, st: &JobState) {
        match st {
            JobState::Running { .. } => {
                self.ran_at.get_or_insert_with(Instant::now);
            }
            JobState::Queued { state, reason, .. } => {
                self.queue_reason = Some(reason.clone().unwrap_or_else(|| state.clone()));
            }
            _ => {}
        }
    }

    /// Not seen running as of the last poll (never polled, queued, or requeued): the
    /// job has no processes a signal could reach.
    pub(super) fn queued(&self) -> bool {
        !matches!(self.last, Some(JobState::Running { .. }))
    }

    /// How long it waited in the queue (until now, if it never ran).
    pub(super) fn queued_for(&self) -> Duration {
        self.ran_at.unwrap_or_else(Instant::now) - self.start
    }

    pub(super) fn seen<'a>(&self, name: &'a str, id: &'a str) -> Seen<'a> {
        Seen {
            name,
            id,
            ran: self.ran_at.is_some(),
            queued_for: self.queued_for(),
            queue_reason: self.queue_reason.clone(),
        }
    }

    pub(super) fn never_started(&self) -> String {
        outcome::never_started(self.queued_for(), self.queue_reason.as_deref())
    }
}

/// Poll-error bookkeeping: backoff and the transient window (`transient_retry_window`).
pub(super) struct Retry {
    /// The backoff's base (`command_delay`, at least [`MIN_POLL`]).
    base: Duration,
    /// How long failures may last before they are final.
    window: Duration,
    since: Option<Instant>,
    pub(super) attempts: u32,
    last_message: Option<String>,
}

impl Retry {
    pub(super) fn new(base: Duration, window: Duration) -> Retry {
        Retry {
            base,
            window,
            since: None,
            attempts: 0,
            last_message: None,
        }
    }

    /// Record a failure; returns the backoff before the next try (`base` doubled per
    /// failure, at most 60 s), or None when failures have lasted `window` (or the command
    /// cannot be started at all). The first failure of a run of them goes to the log, the
    /// others do not (a controller restart is one line, and one when it answers again).
    pub(super) async fn failed(&mut self, e: &BatchError, log: &Log) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if self.last_message.is_none() {
            let msg = e.to_string();
            log.say(format!(
                "scheduler command failed, retrying with backoff for up to {} (transient_retry_window): {msg}",
                fmt_dur(self.window)
            ))
            .await;
            self.last_message = Some(msg);
        }
        if since.elapsed() >= self.window || matches!(e, BatchError::Spawn { .. }) {
            return None;
        }
        let back = self.base.max(MIN_POLL) * 2u32.saturating_pow(self.attempts.min(8));
        Some(back.min(Duration::from_secs(60)))
    }

    /// How long the current run of failures has lasted.
    fn failing_for(&self) -> Duration {
        self.since.map(|s| s.elapsed()).unwrap_or_default()
    }

    async fn ok(&mut self, log: &Log) {
        if let Some(since) = self.since.take() {
            log.say(format!(
                "scheduler answering again after {}",
                fmt_dur(since.elapsed())
            ))
            .await;
        }
        self.attempts = 0;
        self.last_message = None;
    }
}

/// What one poll of [`BatchRun::wait`] found.
enum Poll {
    /// Still queued or running, in this state.
    Active(JobState),
    /// Not known to the scheduler this time.
    Unknown,
    Over(Ended),
}

/// The waiting loop's timers and counts.
struct Timers {
    next_poll: Instant,
    next_beat: Instant,
    /// Polls in a row that found the job unknown.
    unknown: u32,
}

/// Far enough in the future to never come: a timer that is off.
pub(super) fn never(from: Instant) -> Instant {
    from + Duration::from_secs(100 * 365 * 86400)
}

impl BatchRun<'_> {
    /// The poll period: `command_delay`, at least [`MIN_POLL`].
    fn poll_period(&self) -> Duration {
        self.config.batch.command_delay.max(MIN_POLL)
    }

    /// The heartbeat period while the job is in `st`.
    fn heartbeat(&self, st: Option<&JobState>) -> Duration {
        match st {
            Some(JobState::Running { .. }) => HEARTBEAT_RUNNING,
            _ => self.config.batch.queue_heartbeat,
        }
    }

    /// Wait for the job to finish, polling its state every `command_delay` (at least
    /// [`MIN_POLL`]), reporting state changes (expected start included) and a heartbeat in
    /// the log into `watch`; returns early on a request, at the CI job's end while the job
    /// was never seen running ([`Ended::NeverStarted`]), or at our backstop `deadline` (a
    /// cancel with [`Reason::Backstop`]).
    pub(super) async fn wait(
        &self,
        sub: &Submission,
        id: &str,
        watch: &mut Watch,
        requests: &mut Requests,
    ) -> Ended {
        let start = watch.start;
        let mut t = Timers {
            next_poll: start + self.poll_period(),
            next_beat: start + self.heartbeat(None),
            unknown: 0,
        };
        let mut retry = Retry::new(self.poll_period(), self.config.batch.transient_retry_window);
        let far = never(start);
        loop {
            let never_ran = watch.ran_at.is_none();
            tokio::select! {
                r = requests.recv() => return Ended::Cancel(r.unwrap_or(Request::Terminate {
                    signal: Signal::SIGTERM,
                    reason: Reason::ParentGone,
                })),
                _ = sleep_until(self.job.deadline.unwrap_or(far)) => return Ended::Cancel(Request::Terminate {
                    signal: Signal::SIGTERM,
                    reason: Reason::Backstop,
                }),
                _ = sleep_until(self.job.ci_end.unwrap_or(far)), if never_ran => {
                    // Ask once more: it may have started since the last poll.
                    match self.poll(sub, id, &mut retry).await {
                        Ok(Poll::Over(end)) => return end,
                        Ok(Poll::Active(st)) if matches!(st, JobState::Running { .. }) => {
                            self.say_state(id, &st).await;
                            if watch.until_running {
                                watch.saw(&st);
                                return Ended::Started;
                            }
                            watch.saw(&st);
                            watch.last = Some(st);
                            t.next_beat = Instant::now() + HEARTBEAT_RUNNING;
                        }
                        _ => return Ended::NeverStarted,
                    }
                }
                _ = sleep_until(t.next_beat) => {
                    self.beat(id, watch).await;
                    t.next_beat = Instant::now() + self.heartbeat(watch.last.as_ref());
                }
                _ = sleep_until(t.next_poll) => {
                    let poll = self.poll(sub, id, &mut retry).await;
                    if let Some(end) = self.took(poll, id, watch, &mut t).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Take in a poll's result `poll`: the next poll's time, the job's state in `watch`, a
    /// state change in the log. Returns the end, when the poll found one.
    async fn took(
        &self,
        poll: Result<Poll, Duration>,
        id: &str,
        watch: &mut Watch,
        t: &mut Timers,
    ) -> Option<Ended> {
        t.next_poll = Instant::now() + self.poll_period();
        match poll {
            Err(back) => t.next_poll = Instant::now() + back,
            Ok(Poll::Over(end)) => return Some(end),
            Ok(Poll::Unknown) => {
                t.unknown += 1;
                if t.unknown >= UNKNOWN_LIMIT {
                    let why = format!(
                        "{} has no record of it after {} polls",
                        self.name(),
                        t.unknown
                    );
                    return Some(Ended::Lost(why));
                }
            }
            Ok(Poll::Active(st)) => {
                t.unknown = 0;
                watch.saw(&st);
                if watch.last.as_ref().map(JobState::describe) != Some(st.describe()) {
                    self.say_state(id, &st).await;
                    t.next_beat = Instant::now() + self.heartbeat(Some(&st));
                }
                let started = matches!(st, JobState::Running { .. });
                watch.last = Some(st);
                if started && watch.until_running {
                    return Some(Ended::Started);
                }
            }
        }
        None
    }

    /// `slurm job 42 PENDING (Resources)`.
    async fn say_state(&self, id: &str, st: &JobState) {
        self.log
            .say(format!("{} job {id} {}", self.name(), st.describe()))
            .await;
    }

    /// The heartbeat: the job's last state and how long it has waited or run.
    async fn beat(&self, id: &str, watch: &Watch) {
        let what = watch
            .last
            .as_ref()
            .map(JobState::describe)
            .unwrap_or_else(|| "submitted".into());
        let verb = if watch.queued() {
            "waiting"
        } else {
            "running for"
        };
        let took = fmt_dur(watch.start.elapsed());
        self.log
            .say(format!("{} job {id} {what}, {verb} {took}", self.name()))
            .await;
    }

    /// One status poll of [`BatchRun::wait`], through the job's poller. `Err`: it failed
    /// and the next try is after this backoff (failures lasting `transient_retry_window` end
    /// the wait as lost: a system failure naming the scheduler and its error). A job the
    /// scheduler does not know but whose files tell its end (Cobalt's log) is over.
    async fn poll(&self, sub: &Submission, id: &str, retry: &mut Retry) -> Result<Poll, Duration> {
        let exit_file = wrapper::exit_path(&sub.output);
        let me = JobRef {
            id,
            exit_file: &exit_file,
        };
        let sched = self.job.scheduler;
        let e = match self
            .job
            .poller
            .state(self.client(), self.poll_period(), &me)
            .await
        {
            Ok(st) => {
                retry.ok(self.log).await;
                return Ok(match st {
                    JobState::Finished(f) => Poll::Over(Ended::Finished(f)),
                    JobState::Unknown => match sched.final_from_files(sub, id) {
                        Some(f) => Poll::Over(Ended::Finished(f)),
                        None => Poll::Unknown,
                    },
                    st => Poll::Active(st),
                });
            }
            Err(e) => e,
        };
        match retry.failed(&e, self.log).await {
            Some(back) => Err(back),
            None => Ok(Poll::Over(Ended::Lost(format!(
                "{} failing for {} (transient_retry_window): {e}",
                self.name(),
                fmt_dur(retry.failing_for())
            )))),
        }
    }
}
