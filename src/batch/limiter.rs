//! Every scheduler command of one job goes through one rate limiter.
//!
//! `command_delay` is the period of the limiter (a governor GCRA quota); a small burst lets
//! a cancel go out at once even just after a status poll, while the steady rate stays at
//! one command per `command_delay`. Status polls are additionally spaced by the batch run's
//! own timer, so they never exceed one per `command_delay`. Commands run directly (argv,
//! never a shell), with the job's environment, from `scheduler_bin` when it is set.
//!
//! A command that has not answered after [`STALL_NOTICE`] says so in the job log, once,
//! and again when it answers (a scheduler client that blocks through a network outage
//! fails nothing, so nothing else would show the wait).

use std::future::Future;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;

use super::BatchError;

/// Commands allowed at once above the steady rate (a cancel right after a poll, its
/// escalation and the confirmation that the job left the queue).
pub const BURST: u32 = 3;

/// How long a scheduler command may run before the job log says it is still waiting: long
/// past a healthy answer (well under a second to a few seconds on a busy controller),
/// short enough that a stalled client is visible while it stalls.
pub const STALL_NOTICE: Duration = Duration::from_secs(10);

/// A finished scheduler command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one job's scheduler commands, metered.
pub struct Commands {
    limiter: Option<DefaultDirectRateLimiter>,
    bin: Option<PathBuf>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    count: AtomicU64,
    /// Upper bound on one command's run time: a hung scheduler command is an error.
    pub timeout: Duration,
    /// After this long without an answer a command says so ([`Commands::notice`]).
    pub stall_notice: Duration,
    /// The job log ([`Commands::notify_to`]); `None`: our stdout.
    notices: Option<mpsc::WeakSender<Vec<u8>>>,
    /// Unit tests: answers in memory instead of processes ([`Commands::answering`]).
    #[cfg(test)]
    answer: Option<Answer>,
}

/// An in-memory answer to one command (unit tests).
#[cfg(test)]
pub(crate) type AnswerFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<CmdOutput, BatchError>> + Send>>;

/// A scheduler in memory for unit tests: the answer to `tool args...`.
#[cfg(test)]
pub(crate) type Answer = Box<dyn Fn(&str, &[String]) -> AnswerFuture + Send + Sync>;

impl Commands {
    /// `command_delay` zero: no metering. `bin`: `scheduler_bin`.
    pub fn new(
        command_delay: Duration,
        bin: Option<&Path>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
    ) -> Commands {
        let limiter = Quota::with_period(command_delay).map(|q| {
            RateLimiter::direct(q.allow_burst(NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN)))
        });
        Commands {
            limiter,
            bin: bin.map(Path::to_path_buf),
            env,
            cwd,
            count: AtomicU64::new(0),
            timeout: Duration::from_secs(120),
            stall_notice: STALL_NOTICE,
            notices: None,
            #[cfg(test)]
            answer: None,
        }
    }

    /// Commands answered by `answer` instead of processes, unmetered (unit tests of the
    /// state machine and the poller, on tokio's paused clock).
    #[cfg(test)]
    pub(crate) fn answering(answer: Answer) -> Commands {
        Commands {
            answer: Some(answer),
            ..Commands::new(Duration::ZERO, None, Vec::new(), PathBuf::from("/"))
        }
    }

    /// Send notices (a stalled command) to the job log `log`, as lines. Held weakly: the
    /// log closes when its owner says so, whoever still holds these commands.
    pub fn notify_to(&mut self, log: &mpsc::Sender<Vec<u8>>) {
        self.notices = Some(log.downgrade());
    }

    /// Say `msg` in the job log (see [`Commands::notify_to`]); without one, on our stdout
    /// (the stage's output, as `cleanup` reports); once the log is closed, on stderr.
    pub async fn notice(&self, msg: &str) {
        let line = format!("{msg}\n").into_bytes();
        match &self.notices {
            None => println!("{msg}"),
            Some(w) => match w.upgrade() {
                Some(tx) if tx.send(line).await.is_ok() => {}
                _ => eprintln!("jacamar: {msg}"),
            },
        }
    }

    /// `work` (the run of the command `what`), saying in the job log once it has taken
    /// [`Commands::stall_notice`] ("`what` has not answered for 10s; still waiting") and
    /// again when it ends after that ("`what` answered after 21s"). A `work` dropped
    /// unfinished (the caller's timeout) says nothing more: the caller reports that.
    pub async fn noticing<T>(&self, what: &str, work: impl Future<Output = T>) -> T {
        let start = tokio::time::Instant::now();
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(self.stall_notice) => {}
        }
        let waited = super::fmt_dur(start.elapsed());
        self.notice(&format!(
            "{what} has not answered for {waited}; still waiting"
        ))
        .await;
        let out = work.await;
        let took = super::fmt_dur(start.elapsed());
        self.notice(&format!("{what} answered after {took}")).await;
        out
    }

    /// How many commands were run so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The program to run for `tool`: `scheduler_bin/tool`, or `tool` looked up in the
    /// job's PATH.
    pub fn program(&self, tool: &str) -> PathBuf {
        if let Some(bin) = &self.bin {
            return bin.join(tool);
        }
        let path = crate::jobenv::search_path(&self.env);
        crate::shell::find_on_path(tool, path).unwrap_or_else(|| PathBuf::from(tool))
    }

    /// Wait for the limiter, then run `tool args...` and collect its output.
    pub async fn run(&self, tool: &str, args: &[String]) -> Result<CmdOutput, BatchError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if let Some(answer) = &self.answer {
            return answer(tool, args).await;
        }
        let program = self.program(tool);
        let shown = display(tool, args);
        let child = self
            .command(&program, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BatchError::Spawn {
                command: format!("{} ({})", tool, program.display()),
                source,
            })?;
        let answer = self.noticing(&shown, child.wait_with_output());
        let out = match tokio::time::timeout(self.timeout, answer).await {
            Ok(r) => r.map_err(|source| BatchError::Spawn {
                command: shown.clone(),
                source,
            })?,
            Err(_) => {
                return Err(BatchError::Transient {
                    command: shown,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
        };
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl Commands {
    /// `program args...` with the job's environment (only), in the job's directory, stdin
    /// `/dev/null`.
    fn command(&self, program: &Path, args: &[String]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        c
    }

    /// Wait for the limiter, then start `tool args...` as a long-running process (a step's
    /// launcher, `srun`, which lives as long as its step): the job's environment, stdin
    /// `/dev/null`, stdout discarded (the step's output goes to its file), stderr piped for
    /// the caller, in its own process group (a signal to the job's group never reaches
    /// it: the step is ended through the scheduler, see docs/allocations-design.md), not
    /// killed when dropped (the caller decides).
    pub async fn spawn(
        &self,
        tool: &str,
        args: &[String],
    ) -> Result<tokio::process::Child, BatchError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let program = self.program(tool);
        self.command(&program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| BatchError::Spawn {
                command: format!("{} ({})", tool, program.display()),
                source,
            })
    }
}

/// `tool a b` for messages.
pub fn display(tool: &str, args: &[String]) -> String {
    let mut s = tool.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn meters_every_command() {
        let delay = Duration::from_millis(200);
        let c = Commands::new(
            delay,
            None,
            vec![("PATH".into(), "/usr/bin:/bin".into())],
            "/".into(),
        );
        let start = std::time::Instant::now();
        for _ in 0..(BURST + 3) {
            let o = c.run("true", &[]).await.unwrap();
            assert!(o.success());
        }
        // The burst goes at once, the next three wait one period each.
        assert!(
            start.elapsed() >= delay * 3 - Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(c.count(), u64::from(BURST) + 3);
    }

    #[test]
    fn program_ignores_relative_path_entries() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, tool) = crate::test_support::temp_file("jrs-crates-tool", "#!/bin/sh\n");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The same directory, once relative to our cwd and once absolute.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let rel = format!(
            "{up}{}",
            dir.path().display().to_string().trim_start_matches('/')
        );
        assert!(Path::new(&rel).join("jrs-crates-tool").is_file(), "{rel}");
        let c = |path: String| {
            Commands::new(
                Duration::ZERO,
                None,
                vec![("PATH".into(), path)],
                "/".into(),
            )
        };
        assert_eq!(
            c(rel).program("jrs-crates-tool"),
            PathBuf::from("jrs-crates-tool")
        );
        let abs = dir.path().display().to_string();
        assert_eq!(c(abs).program("jrs-crates-tool"), tool);
    }

    /// The lines a stalled command leaves in the job log, with when they came (paused
    /// clock).
    async fn notices_of(work: Duration) -> Vec<(u64, String)> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
        let mut c = Commands::new(Duration::ZERO, None, vec![], "/".into());
        c.notify_to(&tx);
        let start = tokio::time::Instant::now();
        let got = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(l) = rx.recv().await {
                got.push((start.elapsed().as_secs(), String::from_utf8(l).unwrap()));
            }
            got
        });
        let out = c
            .noticing("squeue --me", async {
                tokio::time::sleep(work).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        drop(tx);
        got.await.unwrap()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stalled_command_says_so_once_and_when_it_answers() {
        assert_eq!(
            notices_of(Duration::from_secs(21)).await,
            vec![
                (
                    10,
                    "squeue --me has not answered for 10s; still waiting\n".to_string()
                ),
                (21, "squeue --me answered after 21s\n".to_string()),
            ]
        );
        // An answer before the threshold: nothing.
        assert_eq!(notices_of(Duration::from_millis(9_999)).await, vec![]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_tool_is_a_clear_error() {
        let c = Commands::new(
            Duration::ZERO,
            Some(Path::new("/nonexistent/bin")),
            vec![],
            "/".into(),
        );
        let e = c.run("sbatch", &[]).await.unwrap_err().to_string();
        assert!(
            e.contains("failed to run sbatch (/nonexistent/bin/sbatch)"),
            "{e}"
        );
    }
}
