//! The supervisor state machine: one per supervised child, one `select!`.
//!
//! ```text
//!            request / backstop                 kill_timeout / 2nd signal / Kill
//!  Running ───────────────────────▶ Stopping ─────────────────────────────────▶ Killed
//!     │                                │                                          │
//!     └──────────── leader exits ──────┴──────────────────────────────────────────┘
//!                                      │ (from Stopping: once the rest of the job ended,
//!                                      │  or at kill_at; see `after_the_leader`)
//!                                      ▼
//!                      Sweeping (group + descendants until empty)
//!                                      ▼
//!                      Draining (output pipes, bounded wait) ──▶ ChildEnd
//! ```
//!
//! The machine does not know how to reach the child: a [`Terminator`] does. For the user's
//! shell that is the process group ([`GroupTerminator`]); for a downscoped `jacamar`, whose
//! uid the privileged parent may not be allowed to signal, it is the control channel.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::child::Waitable;
use super::group::{self, SweepReport};

/// Why the supervisor stopped (or was asked to stop) the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// We received this signal ourselves (from the runner, or a user at a terminal).
    Signal(Signal),
    /// Our parent asked, over the control channel.
    Parent,
    /// The control channel hit EOF: our parent is gone.
    ParentGone,
    /// The job outlived its maximum duration plus the grace period.
    Backstop,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Signal(s) => write!(f, "received {}", s.as_str()),
            Reason::Parent => f.write_str("cancelled by jacamar-auth"),
            Reason::ParentGone => f.write_str("jacamar-auth went away"),
            Reason::Backstop => f.write_str("job exceeded its maximum duration"),
        }
    }
}

/// A request delivered to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Forward `signal` to the job and start the kill_timeout clock.
    Terminate { signal: Signal, reason: Reason },
    /// SIGKILL the job now.
    Kill { reason: Reason },
}

/// How to reach the supervised child.
pub trait Terminator: Send {
    /// Forward a termination signal (the implementation adds SIGCONT where it can).
    fn terminate(&mut self, signal: Signal, reason: Reason);
    /// Kill the child and everything it started.
    fn kill(&mut self);
}

/// Signals a whole process group; used for a child we are allowed to signal.
#[derive(Debug, Clone, Copy)]
pub struct GroupTerminator {
    pub pgid: Pid,
}

impl Terminator for GroupTerminator {
    fn terminate(&mut self, signal: Signal, _reason: Reason) {
        group::signal_group(self.pgid, signal);
    }
    fn kill(&mut self) {
        group::signal_group(self.pgid, Signal::SIGKILL);
    }
}

/// Timing and sweeping policy of one supervised child.
#[derive(Debug, Clone)]
pub struct Policy {
    /// From the first termination request to SIGKILL.
    pub kill_timeout: Duration,
    /// The backstop: terminate the job at this instant even if nobody asked.
    pub deadline: Option<Instant>,
    /// After the job is gone, how long to wait for its output pipes to reach EOF.
    pub drain_timeout: Duration,
    /// Sweep this group and our descendants once the leader exits (None: don't sweep).
    pub sweep_group: Option<Pid>,
    /// Leftovers of a job that ended on its own get SIGTERM, then SIGKILL after this.
    pub leftover_grace: Duration,
    /// Give up sweeping after this long and report survivors.
    pub sweep_bound: Duration,
}

impl Policy {
    pub fn new(kill_timeout: Duration) -> Self {
        Policy {
            kill_timeout,
            deadline: None,
            drain_timeout: Duration::from_secs(2),
            sweep_group: None,
            leftover_grace: kill_timeout.min(Duration::from_millis(500)),
            sweep_bound: Duration::from_secs(5),
        }
    }
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(st: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (st.code(), st.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }

    /// The shell convention: a code, or 128 + the signal number.
    pub fn as_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// What happened to one supervised child.
#[derive(Debug, Clone)]
pub struct ChildEnd {
    pub exit: Exit,
    /// Set when the supervisor stopped the child (and why).
    pub stopped: Option<Reason>,
    /// SIGKILL was needed.
    pub escalated: bool,
    pub sweep: SweepReport,
    /// An output pipe was still open after `drain_timeout`.
    pub output_leaked: bool,
}

enum State {
    Running,
    Stopping { reason: Reason, kill_at: Instant },
    Killed { reason: Reason },
}

/// Supervise `child` until it and everything it started are gone.
///
/// `relays` are the tasks copying the child's output; they are awaited (bounded) at the end.
/// `requests` may close at any time; that only means no more requests will come.
pub async fn supervise(
    child: &mut impl Waitable,
    term: &mut dyn Terminator,
    policy: &Policy,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    relays: Vec<JoinHandle<u64>>,
) -> ChildEnd {
    let mut state = State::Running;
    let mut requests_open = true;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = policy.deadline.unwrap_or(far);

    let status = loop {
        let kill_at = match state {
            State::Stopping { kill_at, .. } => kill_at,
            _ => far,
        };
        let running = matches!(state, State::Running);
        let stopping = matches!(state, State::Stopping { .. });
        tokio::select! {
            biased;
            st = child.wait() => break st,
            req = requests.recv(), if requests_open => match req {
                None => requests_open = false,
                Some(req) => state = on_request(state, req, term, policy),
            },
            _ = tokio::time::sleep_until(kill_at), if stopping => {
                let reason = match state { State::Stopping { reason, .. } => reason, _ => Reason::Backstop };
                term.kill();
                state = State::Killed { reason };
            }
            _ = tokio::time::sleep_until(deadline), if running && policy.deadline.is_some() => {
                state = on_request(state, Request::Terminate { signal: Signal::SIGTERM, reason: Reason::Backstop }, term, policy);
            }
        }
    };

    let exit = match status {
        Ok(st) => Exit::from_status(st),
        Err(_) => Exit::Code(-1),
    };
    let state = after_the_leader(state, term, policy, requests, &mut requests_open).await;
    let (stopped, escalated) = match state {
        State::Running => (None, false),
        State::Stopping { reason, .. } => (Some(reason), false),
        State::Killed { reason } => (Some(reason), true),
    };

    let sweep = match policy.sweep_group {
        None => SweepReport::default(),
        Some(pgid) if group::nothing_left(Pid::from_raw(std::process::id() as i32), Some(pgid)) => {
            SweepReport::default()
        }
        Some(pgid) => {
            let first = if escalated {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let me = Pid::from_raw(std::process::id() as i32);
            let (grace, bound) = (policy.leftover_grace, policy.sweep_bound);
            tokio::task::spawn_blocking(move || group::sweep(me, Some(pgid), first, grace, bound))
                .await
                .unwrap_or_default()
        }
    };

    let mut output_leaked = false;
    let drain_until = Instant::now() + policy.drain_timeout;
    for r in relays {
        match tokio::time::timeout_at(drain_until, r).await {
            Ok(_) => {}
            Err(_) => output_leaked = true,
        }
    }

    ChildEnd {
        exit,
        stopped,
        escalated,
        sweep,
        output_leaked,
    }
}

/// The leader exited during a stop: the rest of the job may still be running its TERM
/// traps (the runner's script runs the job's body in the subshell of `: | eval ...`, so
/// its own shell, which has no trap, dies of the TERM at once while the body's trap is
/// just starting). Wait for the group and our descendants to end on their own until the
/// stop's `kill_at` (a second signal or a Kill: at once), then `kill()`: the trap gets
/// the kill_timeout the stop promised, as if the leader were still there. In any other
/// state there is nothing to wait for (a job that ended on its own has its leftovers swept
/// with [`Policy::leftover_grace`]).
async fn after_the_leader(
    mut state: State,
    term: &mut dyn Terminator,
    policy: &Policy,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    requests_open: &mut bool,
) -> State {
    let Some(pgid) = policy.sweep_group else {
        return state;
    };
    let me = Pid::from_raw(std::process::id() as i32);
    let alive = || async move {
        tokio::task::spawn_blocking(move || group::any_alive(me, Some(pgid)))
            .await
            .unwrap_or(false)
    };
    while let State::Stopping { reason, kill_at } = state {
        if !alive().await {
            break;
        }
        tokio::select! {
            biased;
            req = requests.recv(), if *requests_open => match req {
                None => *requests_open = false,
                Some(req) => state = on_request(state, req, term, policy),
            },
            _ = tokio::time::sleep_until(kill_at) => {
                term.kill();
                state = State::Killed { reason };
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    state
}

fn on_request(state: State, req: Request, term: &mut dyn Terminator, policy: &Policy) -> State {
    match (state, req) {
        (State::Killed { reason }, _) => State::Killed { reason },
        // A stop under way keeps its reason: the Kill only cuts its kill_timeout short.
        (State::Stopping { reason, .. }, Request::Kill { .. }) => {
            term.kill();
            State::Killed { reason }
        }
        (State::Running, Request::Kill { reason }) => {
            term.kill();
            State::Killed { reason }
        }
        (State::Running, Request::Terminate { signal, reason }) => {
            if policy.kill_timeout.is_zero() {
                term.kill();
                return State::Killed { reason };
            }
            term.terminate(signal, reason);
            State::Stopping {
                reason,
                kill_at: Instant::now() + policy.kill_timeout,
            }
        }
        (State::Stopping { reason, kill_at }, req @ Request::Terminate { .. }) => {
            if escalates_now(reason, &req) {
                term.kill();
                State::Killed { reason }
            } else {
                State::Stopping { reason, kill_at }
            }
        }
    }
}

/// Whether `next`, arriving while a stop for `first` is under way, means "kill now": a
/// `Kill`, or a second termination signal received by us. Anything else (the parent
/// repeating itself, EOF after a cancel, the backstop meeting a cancel or the parent's
/// backstop meeting our own) keeps the kill_timeout clock that is already running.
pub fn escalates_now(first: Reason, next: &Request) -> bool {
    match next {
        Request::Kill { .. } => true,
        Request::Terminate {
            reason: Reason::Signal(_),
            ..
        } => matches!(first, Reason::Signal(_)),
        Request::Terminate { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    //! The machine's timing on tokio's paused clock, with a real child (`sleep`) and a
    //! terminator that records what it was asked and only kills on `kill()`: the child
    //! "ignores" termination, so every escalation is the machine's doing.

    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn only_a_kill_or_a_second_signal_of_ours_escalates() {
        let term = |reason| Request::Terminate {
            signal: Signal::SIGTERM,
            reason,
        };
        let sig = Reason::Signal(Signal::SIGTERM);
        assert!(escalates_now(sig, &term(sig)));
        assert!(escalates_now(
            Reason::Backstop,
            &Request::Kill {
                reason: Reason::Parent
            }
        ));
        // Our backstop meeting the parent's, EOF after a cancel, the parent repeating itself.
        assert!(!escalates_now(Reason::Backstop, &term(Reason::Backstop)));
        assert!(!escalates_now(Reason::Backstop, &term(sig)));
        assert!(!escalates_now(sig, &term(Reason::ParentGone)));
        assert!(!escalates_now(Reason::Parent, &term(Reason::Parent)));
    }

    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        pid: i32,
    }

    impl Terminator for Recorder {
        fn terminate(&mut self, signal: Signal, reason: Reason) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("term {} {reason}", signal.as_str()));
        }
        fn kill(&mut self) {
            self.calls.lock().unwrap().push("kill".into());
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }

    fn sleeper() -> (tokio::process::Child, Recorder) {
        let child = tokio::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().unwrap() as i32;
        (
            child,
            Recorder {
                calls: Default::default(),
                pid,
            },
        )
    }

    async fn run(
        policy: Policy,
        reqs: Vec<Request>,
    ) -> (ChildEnd, Vec<String>, std::time::Duration) {
        let (mut child, mut rec) = sleeper();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for r in reqs {
            tx.send(r).unwrap();
        }
        let t0 = Instant::now();
        let out = supervise(&mut child, &mut rec, &policy, &mut rx, vec![]).await;
        let calls = rec.calls.lock().unwrap().clone();
        (out, calls, t0.elapsed())
    }

    const TERM: Request = Request::Terminate {
        signal: Signal::SIGTERM,
        reason: Reason::Signal(Signal::SIGTERM),
    };

    #[tokio::test(start_paused = true)]
    async fn escalates_to_kill_after_kill_timeout() {
        let (out, calls, took) = run(Policy::new(Duration::from_secs(120)), vec![TERM]).await;
        assert_eq!(calls, ["term SIGTERM received SIGTERM", "kill"]);
        assert!(out.escalated);
        assert_eq!(out.stopped, Some(Reason::Signal(Signal::SIGTERM)));
        assert_eq!(out.exit, Exit::Signal(9));
        assert!(took >= Duration::from_secs(120), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_kills_at_once() {
        let int = Request::Terminate {
            signal: Signal::SIGINT,
            reason: Reason::Signal(Signal::SIGINT),
        };
        let (out, calls, took) = run(Policy::new(Duration::from_secs(120)), vec![TERM, int]).await;
        assert_eq!(calls, ["term SIGTERM received SIGTERM", "kill"]);
        assert!(out.escalated);
        assert!(took < Duration::from_secs(120), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn parent_repeats_and_eof_keep_the_running_clock() {
        let parent = Request::Terminate {
            signal: Signal::SIGTERM,
            reason: Reason::Parent,
        };
        let gone = Request::Terminate {
            signal: Signal::SIGTERM,
            reason: Reason::ParentGone,
        };
        let (out, calls, took) = run(
            Policy::new(Duration::from_secs(30)),
            vec![parent, parent, gone],
        )
        .await;
        assert_eq!(calls, ["term SIGTERM cancelled by jacamar-auth", "kill"]);
        assert_eq!(out.stopped, Some(Reason::Parent));
        assert!(took >= Duration::from_secs(30), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn backstop_fires_without_any_request() {
        let mut p = Policy::new(Duration::from_secs(5));
        p.deadline = Some(Instant::now() + Duration::from_secs(3600));
        let (out, calls, took) = run(p, vec![]).await;
        assert_eq!(
            calls,
            ["term SIGTERM job exceeded its maximum duration", "kill"]
        );
        assert_eq!(out.stopped, Some(Reason::Backstop));
        assert!(took >= Duration::from_secs(3605), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_kill_timeout_kills_at_once_and_kill_requests_win() {
        let (out, calls, _) = run(Policy::new(Duration::ZERO), vec![TERM]).await;
        assert_eq!(calls, ["kill"]);
        assert!(out.escalated);
        let kill = Request::Kill {
            reason: Reason::Parent,
        };
        let (out, calls, _) = run(Policy::new(Duration::from_secs(9)), vec![kill]).await;
        assert_eq!(calls, ["kill"]);
        assert_eq!(out.stopped, Some(Reason::Parent));
    }

    /// The parent's KILL at its own kill_timeout (it raced ours) ends a stop that began
    /// with the runner's SIGTERM: the stop is still explained by that SIGTERM, not by the
    /// parent (the job log said "cancelled by jacamar-auth" in one run of three).
    #[tokio::test(start_paused = true)]
    async fn a_kill_during_a_stop_keeps_the_stops_reason() {
        let kill = Request::Kill {
            reason: Reason::Parent,
        };
        let (out, calls, _) = run(Policy::new(Duration::from_secs(9)), vec![TERM, kill]).await;
        assert_eq!(calls, ["term SIGTERM received SIGTERM", "kill"]);
        assert!(out.escalated);
        assert_eq!(out.stopped, Some(Reason::Signal(Signal::SIGTERM)));
    }

    #[tokio::test]
    async fn a_child_that_ends_on_its_own_is_not_touched() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let mut rec = Recorder::default();
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let out = supervise(
            &mut child,
            &mut rec,
            &Policy::new(Duration::from_secs(1)),
            &mut rx,
            vec![],
        )
        .await;
        assert_eq!(out.exit, Exit::Code(7));
        assert_eq!(out.stopped, None);
        assert!(rec.calls.lock().unwrap().is_empty());
    }
}
