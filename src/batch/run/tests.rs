use super::*;
use crate::batch::limiter::CmdOutput;
use crate::batch::scheduler::testing::{json, out, Mem, FAKE};
use crate::batch::scheduler::Profile;
use crate::batch::BatchError;
use std::sync::{Arc, Mutex};
use tokio::time::sleep_until;

/// A successful answer with `stdout`.
fn ok(stdout: &str) -> Result<CmdOutput, BatchError> {
    Ok(out(0, stdout, ""))
}

/// `cleanup_job` against a scheduler that records the id of every call: a forged line of
/// the job's record gives no id to any call and is reported escaped; the valid ids are
/// asked about and the active one is cancelled.
#[tokio::test(start_paused = true)]
async fn cleanup_gives_no_forged_id_to_the_scheduler() {
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let cmds = Commands::answering(Box::new(move |tool, args| {
        let id = args.last().cloned().unwrap_or_default();
        let mut calls = seen.lock().unwrap();
        let answer = match tool {
            "state" => {
                let cancelled = calls.contains(&format!("cancel {id}"));
                json(&match (id.as_str(), cancelled) {
                    ("41", false) => JobState::Running {
                        state: "RUNNING".into(),
                    },
                    ("41", true) => JobState::Finished(Final::ended("CANCELLED", 0, None, None)),
                    _ => JobState::Unknown,
                })
            }
            _ => out(0, "", ""),
        };
        calls.push(format!("{tool} {id}"));
        Box::pin(async move { Ok(answer) })
    }));
    let text =
        "[general]\nexecutor = \"slurm\"\ndata_dir = \"/ecp\"\n[auth]\ndownscope = \"none\"\n";
    let config = Config::from_str_named(text, "test.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(crate::batch::persist::FILE_NAME),
        "job slurm 41\njob slurm --uid=0\njob slurm 4\x1b[31m2\njob slurm -u alice\njob slurm 43\n",
    )
    .unwrap();
    const SLURM: Profile = Profile {
        name: "slurm",
        ..FAKE
    };
    let slurm = Mem {
        profile: &SLURM,
        ..Mem::FAKE
    };
    let problems =
        cancel::cleanup_with(&config, Client::new(&slurm, &cmds), dir.path(), None).await;
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|c| c.ends_with(" 41") || c.ends_with(" 43")),
        "{calls:?}"
    );
    assert!(calls.contains(&"cancel 41".to_string()), "{calls:?}");
    assert!(calls.contains(&"state 43".to_string()), "{calls:?}");
    let text = problems.join("\n");
    assert_eq!(problems.len(), 3, "{text}");
    assert!(
        text.contains("\"--uid=0\" is not a slurm job id")
            && text.contains("\"4\\u{1b}[31m2\" is not a slurm job id")
            && text.contains("\"job slurm -u alice\"")
            && !text.contains('\x1b'),
        "{text}"
    );
}

mod machine {
    //! The state machine on tokio's paused clock, against an in-memory scheduler that
    //! answers from a script and records every call with its (virtual) time. The tails
    //! end at once (a tailer's blocking thread would hold the paused clock).

    use super::*;
    use crate::supervisor::Request;
    use nix::sys::signal::Signal;

    /// One call the machine made: when (since the start), and what.
    type Calls = Vec<(Duration, String)>;
    /// The scheduler's answer to a status poll, given every call so far.
    type Answer = Box<dyn Fn(&Calls) -> Result<JobState, BatchError> + Send + Sync>;

    struct Fake {
        t0: Instant,
        calls: Mutex<Calls>,
        answer: Answer,
    }

    impl Fake {
        fn new(
            answer: impl Fn(&Calls) -> Result<JobState, BatchError> + Send + Sync + 'static,
        ) -> Arc<Fake> {
            Arc::new(Fake {
                t0: Instant::now(),
                calls: Mutex::default(),
                answer: Box::new(answer),
            })
        }

        fn record(&self, what: &str) {
            let at = self.t0.elapsed();
            self.calls.lock().unwrap().push((at, what.to_string()));
        }

        fn calls(&self) -> Calls {
            self.calls.lock().unwrap().clone()
        }

        /// The times of the calls named `what`.
        fn times(&self, what: &str) -> Vec<Duration> {
            self.calls()
                .into_iter()
                .filter(|(_, w)| w == what)
                .map(|(t, _)| t)
                .collect()
        }

        /// The answer to [`Mem`]'s command `tool args...`: job 42 submitted, states from the
        /// script, cancels accepted.
        fn respond(&self, tool: &str, args: &[String]) -> Result<CmdOutput, BatchError> {
            match tool {
                "submit" => {
                    self.record("submit");
                    ok("42")
                }
                "state" => {
                    let answer = (self.answer)(&self.calls());
                    self.record("state");
                    answer.map(|st| json(&st))
                }
                _ => {
                    self.record(&format!("{tool} {}", args[0]));
                    ok("")
                }
            }
        }

        /// Commands answered by this fake.
        fn commands(self: &Arc<Self>) -> Commands {
            let fake = self.clone();
            Commands::answering(Box::new(move |tool, args| {
                let answer = fake.respond(tool, args);
                Box::pin(async move { answer })
            }))
        }
    }

    fn running() -> Result<JobState, BatchError> {
        Ok(JobState::Running {
            state: "RUNNING".into(),
        })
    }
    fn pending() -> Result<JobState, BatchError> {
        Ok(JobState::Queued {
            state: "PENDING".into(),
            reason: Some("Resources".into()),
            expected_start: None,
        })
    }
    fn cancelled() -> Result<JobState, BatchError> {
        Ok(JobState::Finished(Final::ended(
            "CANCELLED",
            0,
            Some(15),
            None,
        )))
    }
    /// A scheduler answering `st` until the plain cancel, then CANCELLED.
    fn until_cancelled(st: fn() -> Result<JobState, BatchError>) -> Arc<Fake> {
        Fake::new(move |c| match sent(c, "cancel plain") {
            true => cancelled(),
            false => st(),
        })
    }
    /// A scheduler answering `st` to `n` polls, then COMPLETED.
    fn completed_after(n: usize, st: fn() -> Result<JobState, BatchError>) -> Arc<Fake> {
        Fake::new(move |c| match polls(c) < n {
            true => st(),
            false => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
        })
    }
    fn sent(calls: &Calls, what: &str) -> bool {
        calls.iter().any(|(_, w)| w == what)
    }
    /// How many times `text` stands in the job log `log`.
    fn times(log: &str, text: &str) -> usize {
        log.matches(text).count()
    }
    fn polls(calls: &Calls) -> usize {
        calls.iter().filter(|(_, w)| w == "state").count()
    }

    fn no_tail(_: PathBuf, _: TailTiming, _: mpsc::Sender<Vec<u8>>) -> Tail {
        Tail::idle()
    }

    /// Run the machine against `fake` with `[general] kill_timeout` 30s and `batch`
    /// (the `[batch]` table's lines); `requests` arrive at their times; `deadline` is our
    /// backstop. Returns the status and the job log.
    async fn run(
        fake: &Arc<Fake>,
        batch: &str,
        deadline: Option<Duration>,
        requests: Vec<(Duration, Request)>,
    ) -> (Status, String) {
        run_vars(fake, batch, deadline, None, requests, BTreeMap::new()).await
    }

    /// [`run`] without requests or backstop: the job runs to its end.
    async fn run_alone(fake: &Arc<Fake>, batch: &str) -> (Status, String) {
        run(fake, batch, None, vec![]).await
    }

    /// [`run`] with the CI job's end `ci_end` after the start and the CI variables
    /// `variables` captured for the batch executor.
    async fn run_vars(
        fake: &Arc<Fake>,
        batch: &str,
        deadline: Option<Duration>,
        ci_end: Option<Duration>,
        requests: Vec<(Duration, Request)>,
        variables: BTreeMap<String, String>,
    ) -> (Status, String) {
        let text = format!("[general]\nexecutor = \"slurm\"\ndata_dir = \"/ecp\"\nkill_timeout = \"30s\"\n\n[auth]\ndownscope = \"none\"\n\n[batch]\n{batch}\n");
        let config = Config::from_str_named(&text, "test.toml").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let job = BatchJob {
            config: &config,
            scheduler: &Mem::FAKE,
            scripts_dir: dir.path().to_path_buf(),
            stage: "build_script",
            script: dir.path().join("build_script-batch"),
            env: vec![],
            variables: &variables,
            ci_job_id: 7,
            workdir: dir.path().to_path_buf(),
            deadline: deadline.map(|d| fake.t0 + d),
            poller: Poller::unshared(),
            base_dir: std::path::PathBuf::from("/nonexistent"),
            ci_end: ci_end.map(|d| fake.t0 + d),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = fake.t0;
        let sender = tokio::spawn(async move {
            for (at, r) in requests {
                sleep_until(t0 + at).await;
                tx.send(r).unwrap();
            }
            // Keep the channel open: its end means "jacamar-auth went away".
            std::future::pending::<()>().await
        });
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let log = Log::to(w);
        let st = BatchRun::start(&job, fake.commands(), &log, no_tail)
            .drive(&mut rx)
            .await;
        log.close().await;
        sender.abort();
        let mut text = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut text)
            .await
            .unwrap();
        (st, String::from_utf8(text).unwrap())
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// `JACAMAR_REUSE_ALLOCATION` that cannot be honoured is one line in the log, and the
    /// job runs as its own batch job as before.
    #[tokio::test(start_paused = true)]
    async fn an_allocation_request_that_cannot_be_honoured_is_one_line() {
        let cases = [
            ("yes", "", "JACAMAR_REUSE_ALLOCATION=\"yes\" ignored: the only value is \"pipeline\""),
            ("pipeline", "", "JACAMAR_REUSE_ALLOCATION=pipeline ignored: allocation_reuse is off on this runner"),
            ("pipeline", "allocation_reuse = true", "JACAMAR_REUSE_ALLOCATION=pipeline ignored: the fake executor cannot run a job inside an allocation"),
            ("\x1b[31mpipeline", "allocation_reuse = true", "JACAMAR_REUSE_ALLOCATION=\"\\u{1b}[31mpipeline\" ignored"),
        ];
        for (value, batch, want) in cases {
            let fake = completed_after(2, running);
            let vars = BTreeMap::from([
                ("JACAMAR_REUSE_ALLOCATION".to_string(), value.to_string()),
                ("CI_PROJECT_ID".to_string(), "7".to_string()),
                ("CI_PIPELINE_ID".to_string(), "900".to_string()),
            ]);
            let batch = format!("command_delay = \"10s\"\n{batch}");
            let (st, log) = run_vars(&fake, &batch, None, None, vec![], vars).await;
            assert_eq!(st, Status::Success, "{log}");
            assert!(log.contains(want), "{value}: {log}");
            assert_eq!(log.matches("JACAMAR_REUSE_ALLOCATION").count(), 1, "{log}");
            assert!(!log.contains('\x1b'), "{log}");
            assert!(log.contains("Submitted fake job 42"), "{log}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_no_more_than_once_per_command_delay() {
        // Running for 100 s, then done.
        let fake = completed_after(10, running);
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        assert_eq!(st, Status::Success, "{log}");
        let t = fake.times("state");
        assert_eq!(t.len(), 11, "{t:?}");
        for w in t.windows(2) {
            assert!(
                w[1] - w[0] >= S(10),
                "two polls within command_delay: {t:?}"
            );
        }
        assert!(log.contains("fake job 42 RUNNING"), "{log}");
        // Below the floor, polls are MIN_POLL apart.
        let fake = completed_after(10, running);
        let (st, _) = run_alone(&fake, "command_delay = \"0s\"").await;
        assert_eq!(st, Status::Success);
        let t = fake.times("state");
        for w in t.windows(2) {
            assert!(w[1] - w[0] >= MIN_POLL, "{t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_job_is_removed_with_the_plain_cancel_at_once() {
        // The signal form does nothing to a job without processes: only the plain
        // cancel removes it.
        let fake = until_cancelled(pending);
        let parent = Request::Terminate {
            signal: Signal::SIGTERM,
            reason: Reason::Parent,
        };
        let (st, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(12), parent)]).await;
        let Status::BuildFailure {
            exit_code, stopped, ..
        } = st
        else {
            panic!("{st:?}\n{log}")
        };
        assert_eq!(exit_code, 143);
        assert_eq!(stopped.as_deref(), Some("cancelled by jacamar-auth"));
        assert_eq!(fake.times("cancel plain"), [S(12)], "{:?}", fake.calls());
        assert!(
            fake.times("cancel graceful").is_empty(),
            "{:?}",
            fake.calls()
        );
        assert!(log.contains("fake job 42 PENDING (Resources)"), "{log}");
        assert!(
            log.contains(
                "fake job 42 never started (waited 12s in the queue (Resources), never started)"
            ),
            "{log}"
        );
        assert!(
            log.contains(
                "Cancelling fake job 42 (cancelled by jacamar-auth): removing it from the queue"
            ),
            "{log}"
        );
        assert!(log.contains("fake job 42 left the queue after"), "{log}");
        // Cancelled before the first poll: never seen running either.
        let fake = until_cancelled(pending);
        let (_, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(2), parent)]).await;
        assert_eq!(fake.times("cancel plain"), [S(2)], "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeued_job_is_cancelled_as_a_queued_one() {
        // Ran, then back in the queue (node failure, requeue): the plain cancel.
        let fake = Fake::new(|c| {
            if sent(c, "cancel plain") {
                cancelled()
            } else if polls(c) < 3 {
                running()
            } else {
                pending()
            }
        });
        let term = Request::Terminate {
            signal: Signal::SIGTERM,
            reason: Reason::Signal(Signal::SIGTERM),
        };
        let (_, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(30), term)]).await;
        assert_eq!(fake.times("cancel plain"), [S(30)], "{log}");
        assert!(fake.times("cancel graceful").is_empty(), "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_heartbeat_shows_state_reason_and_expected_start() {
        // Pending (BeginTime) with an expected start until 90 s, then running, done at 130 s.
        let fake = Fake::new(|c| match polls(c) {
            0..=8 => Ok(JobState::Queued {
                state: "PENDING".into(),
                reason: Some("BeginTime".into()),
                expected_start: Some("2030-01-01T10:00:00".into()),
            }),
            9..=12 => running(),
            _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
        });
        let (st, log) =
            run_alone(&fake, "command_delay = \"10s\"\nqueue_heartbeat = \"25s\"").await;
        assert_eq!(st, Status::Success, "{log}");
        let what = "fake job 42 PENDING (BeginTime), expected start 2030-01-01T10:00:00";
        // The change once, at the first poll (10 s); then a beat 25 s after it, and so on.
        assert_eq!(times(&log, &format!("{what}\n")), 1, "{log}");
        let beats: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with(&format!("{what}, waiting")))
            .collect();
        assert_eq!(
            beats,
            [
                format!("{what}, waiting 35s"),
                format!("{what}, waiting 1m00s"),
                format!("{what}, waiting 1m25s"),
            ],
            "{log}"
        );
        assert!(log.contains("fake job 42 RUNNING\n"), "{log}");
        // Running: the running heartbeat (5 min), none within 30 s.
        assert!(!log.contains("running for"), "{log}");
        // Default: 2m.
        let fake = completed_after(30, pending);
        let (_, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        assert_eq!(times(&log, "PENDING (Resources), waiting"), 2, "{log}");
        assert!(log.contains("PENDING (Resources), waiting 2m10s"), "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_still_queued_at_the_ci_end_never_started() {
        let fake = Fake::new(|c| {
            if sent(c, "cancel plain") {
                cancelled()
            } else {
                Ok(JobState::Queued {
                    state: "PENDING".into(),
                    reason: Some("Priority".into()),
                    expected_start: None,
                })
            }
        });
        let (st, log) = run_vars(
            &fake,
            "command_delay = \"10s\"",
            Some(S(3600 + 600)),
            Some(S(3600)),
            vec![],
            BTreeMap::new(),
        )
        .await;
        assert_eq!(
            st,
            Status::BuildFailure {
                exit_code: 1,
                signal: None,
                stopped: Some(
                    "fake job 42 waited 1h00m in the queue (Priority), never started".into()
                )
            },
            "{log}"
        );
        assert_eq!(fake.times("cancel plain"), [S(3600)], "{log}");
        assert!(fake.times("cancel graceful").is_empty(), "{log}");
        assert!(
            log.contains("fake job 42 waited 1h00m in the queue (Priority), never started: the CI job's time is up, removing it from the queue"),
            "{log}"
        );
        assert!(log.contains("fake job 42 left the queue after"), "{log}");
        // A job that started before the CI end is left to finish (the runner's timeout
        // and our backstop stop it otherwise).
        let fake = Fake::new(|c| match polls(c) {
            0..=1 => pending(),
            2..=9 => running(),
            _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
        });
        let (st, log) = run_vars(
            &fake,
            "command_delay = \"10s\"",
            None,
            Some(S(40)),
            vec![],
            BTreeMap::new(),
        )
        .await;
        assert_eq!(st, Status::Success, "{log}");
        assert!(fake.times("cancel plain").is_empty(), "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn infrastructure_failures_are_system_failures_and_may_be_resubmitted() {
        // Every submission: running at the first poll, NODE_FAIL at the second.
        let node_fail = |c: &Calls| {
            let since_submit = c
                .iter()
                .rev()
                .take_while(|(_, w)| w != "submit")
                .filter(|(_, w)| w == "state")
                .count();
            let submits = c.iter().filter(|(_, w)| w == "submit").count();
            match (since_submit, submits) {
                (0, _) => running(),
                (_, 3) => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
                _ => Ok(JobState::Finished(Final::ended(
                    "NODE_FAIL",
                    0,
                    None,
                    Some("NodeDown".into()),
                ))),
            }
        };
        // Off by default: one submission, a system failure with the explicit message.
        let fake = Fake::new(node_fail);
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        let Status::SystemFailure { message, .. } = st else {
            panic!("{st:?}\n{log}")
        };
        assert_eq!(
            message,
            "fake job 42 ended NODE_FAIL (NodeDown): a node of the job failed (a system failure)"
        );
        assert!(log.contains(&message), "{log}");
        assert_eq!(fake.times("submit").len(), 1);
        // With a budget of 2: the third submission completes.
        let fake = Fake::new(node_fail);
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"\nresubmit_limit = 2").await;
        assert_eq!(st, Status::Success, "{log}");
        assert_eq!(fake.times("submit").len(), 3, "{log}");
        assert!(
            log.contains("Resubmitting the job (1 of resubmit_limit 2)"),
            "{log}"
        );
        assert!(
            log.contains("Resubmitting the job (2 of resubmit_limit 2)"),
            "{log}"
        );
        // A budget of 1 is spent: the second NODE_FAIL is the system failure.
        let fake = Fake::new(node_fail);
        let (st, _) = run_alone(&fake, "command_delay = \"10s\"\nresubmit_limit = 1").await;
        assert!(matches!(st, Status::SystemFailure { .. }), "{st:?}");
        assert_eq!(fake.times("submit").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_job_gets_the_plain_cancel_at_kill_timeout() {
        // The job's traps outlive the TERM: only the plain cancel ends it.
        let fake = until_cancelled(running);
        let term = Request::Terminate {
            signal: Signal::SIGTERM,
            reason: Reason::Signal(Signal::SIGTERM),
        };
        let (st, log) = run(&fake, "command_delay = \"5s\"", None, vec![(S(100), term)]).await;
        let Status::BuildFailure { stopped, .. } = st else {
            panic!("{st:?}\n{log}")
        };
        assert_eq!(stopped.as_deref(), Some("received SIGTERM"));
        assert_eq!(fake.times("cancel graceful"), [S(100)]);
        let plain = fake.times("cancel plain");
        assert_eq!(plain, [S(130)], "{:?}", fake.calls());
        // Polled while waiting for it to go, never faster than MIN_POLL.
        let during: Vec<Duration> = fake
            .times("state")
            .into_iter()
            .filter(|t| *t > S(100))
            .collect();
        assert!(during.len() >= 2, "{during:?}");
        for w in during.windows(2) {
            assert!(w[1] - w[0] >= MIN_POLL, "{during:?}");
        }
        assert!(
            log.contains("still there after kill_timeout 30s: cancelling it"),
            "{log}"
        );
        // A second signal of ours escalates at once.
        let fake = until_cancelled(running);
        let int = Request::Terminate {
            signal: Signal::SIGINT,
            reason: Reason::Signal(Signal::SIGINT),
        };
        let (_, log) = run(
            &fake,
            "command_delay = \"5s\"",
            None,
            vec![(S(100), term), (S(105), int)],
        )
        .await;
        assert_eq!(fake.times("cancel plain"), [S(105)], "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_backstop_cancels_at_the_deadline() {
        let fake = until_cancelled(running);
        let (st, log) = run(&fake, "command_delay = \"10s\"", Some(S(3600)), vec![]).await;
        let Status::BuildFailure { stopped, .. } = st else {
            panic!("{st:?}\n{log}")
        };
        assert_eq!(
            stopped.as_deref(),
            Some("job exceeded its maximum duration")
        );
        assert_eq!(fake.times("cancel graceful"), [S(3600)]);
        assert_eq!(fake.times("cancel plain"), [S(3630)]);
        // Heartbeats while it ran.
        assert!(log.contains("fake job 42 RUNNING, running for 5m"), "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_status_error_is_retried_with_backoff() {
        let fake = Fake::new(|c| match polls(c) {
            0 => running(),
            1..=3 => Err(BatchError::Transient {
                command: "scontrol".into(),
                message: "Socket timed out".into(),
            }),
            4 => running(),
            _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
        });
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        assert_eq!(st, Status::Success, "{log}");
        let t = fake.times("state");
        // Backoff after the 1st, 2nd, 3rd failure: 20 s, 40 s, then the 60 s cap.
        let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[1..4], [S(20), S(40), S(60)], "{t:?}");
        assert_eq!(
            times(&log, "scheduler command failed, retrying"),
            1,
            "{log}"
        );
        assert!(
            log.contains("scheduler answering again after 2m00s"),
            "{log}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_past_the_window_are_a_system_failure() {
        // The controller goes away after the first poll and never comes back; the
        // messages vary as it does.
        let fake = Fake::new(|c| match polls(c) {
            0 => running(),
            n => Err(BatchError::Transient {
                command: "squeue --me".into(),
                message: if n % 2 == 0 {
                    "Socket timed out".into()
                } else {
                    "Unable to contact slurm controller".into()
                },
            }),
        });
        let batch = "command_delay = \"10s\"\ntransient_retry_window = \"3m\"";
        let (st, log) = run(&fake, batch, None, vec![]).await;
        let Status::SystemFailure { message, .. } = st else {
            panic!("{st:?}\n{log}")
        };
        assert!(message.contains("fake failing for 3m"), "{message}");
        assert!(
            message.contains("squeue --me failed (transient)"),
            "{message}"
        );
        assert_eq!(
            times(&log, "scheduler command failed"),
            1,
            "one line when it starts failing: {log}"
        );
        assert!(
            log.contains("retrying with backoff for up to 3m00s (transient_retry_window)"),
            "{log}"
        );
        // Not before the window: the last poll is at or after 3 minutes of failures.
        let t = fake.times("state");
        assert!(t[t.len() - 1] - t[1] >= S(180), "{t:?}");
        assert!(t[t.len() - 1] - t[1] < S(180 + 61), "{t:?}");
        // Inside the window nothing fails: the default window is ten minutes.
        let fake = Fake::new(|c| match polls(c) {
            0 => running(),
            1..=9 => Err(BatchError::Transient {
                command: "squeue --me".into(),
                message: "Socket timed out".into(),
            }),
            _ => Ok(JobState::Finished(Final::exited("COMPLETED", 0))),
        });
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        assert_eq!(st, Status::Success, "{log}");
        let t = fake.times("state");
        // 20 s, 40 s, then 60 s apart: eight minutes of failures.
        assert!(t[t.len() - 1] - t[1] >= S(8 * 60), "{t:?}");
        assert_eq!(times(&log, "scheduler answering again"), 1, "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_vanished_from_the_queue_is_lost() {
        let fake = Fake::new(|c| {
            if polls(c) < 2 {
                running()
            } else {
                Ok(JobState::Unknown)
            }
        });
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        let Status::SystemFailure { message, .. } = st else {
            panic!("{st:?}\n{log}")
        };
        assert!(
            message.contains("lost track of fake job 42: fake has no record of it after 5 polls"),
            "{message}"
        );
        assert_eq!(fake.times("state").len(), 2 + UNKNOWN_LIMIT as usize);
        assert!(fake.times("cancel plain").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn final_states_map_to_the_stage_status() {
        let end = |f: Final| {
            let fake = Fake::new(move |c| {
                if polls(c) < 1 {
                    running()
                } else {
                    Ok(JobState::Finished(f.clone()))
                }
            });
            async move { run_alone(&fake, "command_delay = \"10s\"").await }
        };
        let (st, _) = end(Final::exited("FAILED", 7)).await;
        assert_eq!(
            st,
            Status::BuildFailure {
                exit_code: 7,
                signal: None,
                stopped: None
            }
        );
        let (st, log) = end(Final::ended(
            "TIMEOUT",
            0,
            Some(15),
            Some("TimeLimit".into()),
        ))
        .await;
        let timeout = "fake job 42 ended TIMEOUT (TimeLimit): it reached the time limit it asked for; ask for more (e.g. --time in SCHEDULER_PARAMETERS)";
        assert_eq!(
            st,
            Status::BuildFailure {
                exit_code: 143,
                signal: None,
                stopped: Some(timeout.into())
            }
        );
        assert!(log.contains(&format!("{timeout} (exit code 143)")), "{log}");
        let (st, log) = end(Final::ended("NODE_FAIL", 0, None, None)).await;
        assert!(matches!(st, Status::SystemFailure { .. }), "{st:?}\n{log}");
        // Slurm's 0:0 of a node failure is not shown as the job's exit code.
        assert!(!log.contains("(exit code"), "{log}");
        let (st, log) = end(Final::ended("CANCELLED", 0, Some(15), None)).await;
        assert!(
            matches!(&st, Status::BuildFailure { exit_code: 143, stopped: Some(s), .. } if s.contains("cancelled outside this CI job")),
            "{st:?}\n{log}"
        );
        // DEADLINE of a job that never ran: the never-started message.
        let fake = Fake::new(|c| {
            if polls(c) < 3 {
                pending()
            } else {
                Ok(JobState::Finished(Final::ended(
                    "DEADLINE",
                    0,
                    None,
                    Some("DeadLine".into()),
                )))
            }
        });
        let (st, log) = run_alone(&fake, "command_delay = \"10s\"").await;
        assert!(
            matches!(&st, Status::BuildFailure { exit_code: 1, stopped: Some(s), .. }
                if s == "fake job 42: waited 40s in the queue (Resources), never started (the scheduler removed it at the CI job's deadline)"),
            "{st:?}\n{log}"
        );
    }
}
