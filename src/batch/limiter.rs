//! Every scheduler command of one job goes through one rate limiter.
//!
//! `command_delay` is the period of the limiter (a governor GCRA quota); a small burst lets
//! a cancel go out at once even just after a status poll, while the steady rate stays at
//! one command per `command_delay`. Status polls are additionally spaced by the executor's
//! own timer, so they never exceed one per `command_delay`. Commands run directly (argv,
//! never a shell), with the job's environment, from `scheduler_bin` when it is set.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::BatchError;

/// Commands allowed at once above the steady rate (a cancel right after a poll, its
/// escalation and the confirmation that the job left the queue).
pub const BURST: u32 = 3;

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
}

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
        }
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
        let path = crate::auth::env::search_path(&self.env);
        crate::shell::find_on_path(tool, path).unwrap_or_else(|| PathBuf::from(tool))
    }

    /// Wait for the limiter, then run `tool args...` and collect its output.
    pub async fn run(&self, tool: &str, args: &[String]) -> Result<CmdOutput, BatchError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let program = self.program(tool);
        let shown = display(tool, args);
        let child = tokio::process::Command::new(&program)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BatchError::Spawn {
                command: format!("{} ({})", tool, program.display()),
                source,
            })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
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
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("jrs-crates-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
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
