//! Slurm: `sbatch --parsable` to submit, `scontrol show job` for the state (falling back to
//! `sacct` once the record is purged), `scancel` to cancel.

use super::args::Illegal;
use super::limiter::CmdOutput;
use super::{
    exit_code_of, path_arg, s, BatchError, BoxFuture, Commands, Final, JobState, Scheduler,
    Submission,
};

/// The Slurm scheduler (`executor = "slurm"` or `"sbatch"`).
pub struct Slurm;

const ILLEGAL: &[Illegal] = &[
    Illegal {
        short: Some('o'),
        long: Some("--output"),
        why: "the driver chooses the output file it streams to the job log",
    },
    Illegal {
        short: Some('e'),
        long: Some("--error"),
        why: "the driver streams stderr with stdout from its own output file",
    },
    Illegal {
        short: Some('i'),
        long: Some("--input"),
        why: "batch jobs of the driver read no input",
    },
    Illegal {
        short: Some('J'),
        long: Some("--job-name"),
        why: "the driver names the job after the CI job",
    },
    Illegal {
        short: Some('W'),
        long: Some("--wait"),
        why: "the driver waits for the job itself",
    },
    Illegal {
        short: Some('D'),
        long: Some("--chdir"),
        why: "the driver sets the job's working directory",
    },
    Illegal {
        short: None,
        long: Some("--wrap"),
        why: "the driver submits the CI job's script",
    },
    Illegal {
        short: None,
        long: Some("--parsable"),
        why: "the driver reads sbatch's answer itself",
    },
    Illegal {
        short: None,
        long: Some("--test-only"),
        why: "the job would never run",
    },
    Illegal {
        short: None,
        long: Some("--uid"),
        why: "jobs run as the CI job's user",
    },
    Illegal {
        short: None,
        long: Some("--gid"),
        why: "jobs run as the CI job's user",
    },
    Illegal {
        short: None,
        long: Some("--export-file"),
        why: "the driver controls the job's environment",
    },
];

/// Messages of a Slurm client that mean "try again later", not "your job failed".
const TRANSIENT: &[&str] = &[
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "temporarily unable",
    "Resource temporarily unavailable",
    "Communication connection failure",
    "Slurm backup controller in standby mode",
];

/// Classify a failed command's output (Slurm's words for a busy or restarting controller).
fn failure(tool: &str, args: &[String], out: &CmdOutput) -> BatchError {
    super::failure_by_words(TRANSIENT, tool, args, out)
}

/// The id in `sbatch --parsable`'s answer (`42` or `42;cluster`).
pub fn parse_submit(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let id = line.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// `A:B` (exit code, signal) as Slurm prints it.
pub fn parse_exit(s: &str) -> (i32, Option<i32>) {
    let mut p = s.split(':');
    let code = p.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    let sig = p
        .next()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&s: &i32| s != 0);
    (code, sig)
}

/// A Slurm state word (and reason, exit code) as a [`JobState`].
pub fn classify(state: &str, reason: Option<&str>, exit: Option<&str>) -> JobState {
    // sacct prints "CANCELLED by 1001"; squeue may append "+".
    let state = state
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('+')
        .to_string();
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "None" && *r != "(null)")
        .map(str::to_string);
    let (code, sig) = exit.map(parse_exit).unwrap_or((0, None));
    match state.as_str() {
        "PENDING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" | "RESV_DEL_HOLD" | "SUSPENDED"
        | "STOPPED" | "CONFIGURING" | "RESIZING" => JobState::Queued {
            state,
            reason,
            expected_start: None,
        },
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" => JobState::Running { state },
        "COMPLETED" => JobState::Finished(Final::exited(&state, exit_code_of(code, sig))),
        "FAILED" if code != 0 && sig.is_none() => JobState::Finished(Final {
            reason,
            ..Final::exited(&state, code)
        }),
        "" => JobState::Unknown,
        _ => JobState::Finished(Final::ended(&state, code, sig, reason)),
    }
}

/// `scontrol show job -o`'s one line as `key -> value` (values without blanks suffice).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The state in `scontrol show job -o ID`'s answer.
pub fn parse_scontrol(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().find(|l| l.contains("JobState="))?;
    Some(classify(
        field(line, "JobState")?,
        field(line, "Reason"),
        field(line, "ExitCode"),
    ))
}

/// The state in `sacct -n -P -o JobID,State,ExitCode`'s answer for job `id`.
pub fn parse_sacct(stdout: &str, id: &str) -> Option<JobState> {
    stdout.lines().find_map(|l| {
        let mut f = l.split('|');
        let (jid, state, exit) = (f.next()?, f.next()?, f.next());
        (jid.trim() == id).then(|| classify(state, None, exit))
    })
}

impl Scheduler for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn illegal_args(&self) -> &'static [Illegal] {
        ILLEGAL
    }

    fn submit<'a>(
        &'a self,
        cmds: &'a Commands,
        sub: &'a Submission,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            let mut args = vec![
                "--parsable".to_string(),
                format!("--job-name={}", sub.name),
                format!("--output={}", path_arg(&sub.output)),
                format!("--chdir={}", path_arg(&sub.workdir)),
            ];
            args.extend(sub.args.iter().cloned());
            args.push(path_arg(&sub.script));
            super::submit_command(cmds, "sbatch", &args, failure, parse_submit).await
        })
    }

    fn state<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(async move {
            let args = s(&["show", "job", "-o", id]);
            let purged = |o: &CmdOutput| !o.success() && o.stderr.contains("Invalid job id");
            let st = super::state_command(cmds, "scontrol", &args, failure, purged, parse_scontrol)
                .await?;
            if st != JobState::Unknown {
                return Ok(st);
            }
            // Purged from the controller: ask the accounting, then the completion log.
            let fmt = "--format=JobID,State,ExitCode";
            let args = s(&["-X", "-n", "-P", fmt, "-j", id]);
            let out = cmds.run("sacct", &args).await?;
            if out.success() {
                if let Some(st) = parse_sacct(&out.stdout, id) {
                    return Ok(st);
                }
            }
            let args = s(&["-c", "-n", "-P", fmt, "-j", id]);
            let out = cmds.run("sacct", &args).await?;
            if out.success() {
                return Ok(parse_sacct(&out.stdout, id).unwrap_or(JobState::Unknown));
            }
            Ok(JobState::Unknown)
        })
    }

    fn cancel<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
        graceful: bool,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(async move {
            let args = if graceful {
                s(&["--signal=TERM", "--full", id])
            } else {
                s(&[id])
            };
            super::cancel_command(cmds, "scancel", &args, failure, |e| {
                e.contains("already completing or completed") || e.contains("Invalid job id")
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_answers() {
        assert_eq!(parse_submit("42\n").as_deref(), Some("42"));
        assert_eq!(parse_submit("warning\n43;ci\n").as_deref(), Some("43"));
        assert_eq!(parse_submit(""), None);
        assert_eq!(parse_submit("Submitted batch job 4"), None);
    }

    #[test]
    fn scontrol_lines() {
        let l = "JobId=5 JobName=ci-1 UserId=ci(1001) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=7:0 RunTime=00:00:01";
        assert_eq!(
            parse_scontrol(l),
            Some(JobState::Finished(Final {
                reason: Some("NonZeroExitCode".into()),
                ..Final::exited("FAILED", 7)
            }))
        );
        let l = "JobId=6 JobState=PENDING Reason=Resources ExitCode=0:0";
        assert_eq!(
            parse_scontrol(l),
            Some(JobState::Queued {
                state: "PENDING".into(),
                reason: Some("Resources".into()),
                expected_start: None,
            })
        );
        let l = "JobId=7 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15";
        let JobState::Finished(f) = parse_scontrol(l).unwrap() else {
            panic!()
        };
        assert!(!f.success());
        assert_eq!(f.exit_code, 143);
        assert_eq!(f.reason.as_deref(), Some("TimeLimit"));
        let l = "JobId=8 JobState=COMPLETED Reason=None ExitCode=0:0";
        let JobState::Finished(f) = parse_scontrol(l).unwrap() else {
            panic!()
        };
        assert!(f.success());
        let l = "JobId=9 JobState=FAILED Reason=JobLaunchFailure ExitCode=0:0";
        let JobState::Finished(f) = parse_scontrol(l).unwrap() else {
            panic!()
        };
        assert!(!f.success() && f.exit_code == 0);
        assert_eq!(parse_scontrol("nothing"), None);
    }

    #[test]
    fn sacct_lines() {
        let out = "12|CANCELLED by 1001|0:0\n";
        let JobState::Finished(f) = parse_sacct(out, "12").unwrap() else {
            panic!()
        };
        assert_eq!(f.state, "CANCELLED");
        assert_eq!(parse_sacct(out, "13"), None);
        assert!(parse_sacct("14|RUNNING|0:0", "14").unwrap().is_active());
    }
}
