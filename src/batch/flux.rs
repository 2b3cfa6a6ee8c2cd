//! Flux: `flux submit` to submit (the job's output written by Flux to the driver's file as
//! it runs), `flux jobs` for the state (inactive jobs stay listed, with their result and
//! return code), `flux job kill` to signal and `flux cancel` to cancel.

use super::args::Illegal;
use super::limiter::CmdOutput;
use super::{path_arg, s, BatchError, BoxFuture, Commands, Final, JobState, Scheduler, Submission};

/// The Flux scheduler (`executor = "flux"`).
pub struct Flux;

const ILLEGAL: &[Illegal] = &[
    Illegal {
        short: None,
        long: Some("--output"),
        why: "the driver chooses the output file it streams to the job log",
    },
    Illegal {
        short: None,
        long: Some("--error"),
        why: "the driver streams stderr with stdout from its own output file",
    },
    Illegal {
        short: None,
        long: Some("--input"),
        why: "batch jobs of the driver read no input",
    },
    Illegal {
        short: None,
        long: Some("--job-name"),
        why: "the driver names the job after the CI job",
    },
    Illegal {
        short: None,
        long: Some("--cwd"),
        why: "the driver sets the job's working directory",
    },
    Illegal {
        short: None,
        long: Some("--wait"),
        why: "the driver waits for the job itself",
    },
    Illegal {
        short: None,
        long: Some("--wait-event"),
        why: "the driver waits for the job itself",
    },
    Illegal {
        short: None,
        long: Some("--watch"),
        why: "the driver streams the job's output itself",
    },
    Illegal {
        short: None,
        long: Some("--dry-run"),
        why: "the job would never run",
    },
    Illegal {
        short: None,
        long: Some("--cc"),
        why: "one CI job is one scheduler job",
    },
    Illegal {
        short: None,
        long: Some("--bcc"),
        why: "one CI job is one scheduler job",
    },
    Illegal {
        short: None,
        long: Some("--quiet"),
        why: "the driver reads the job id flux submit prints",
    },
    Illegal {
        short: None,
        long: Some("--log"),
        why: "the driver reads flux submit's answer itself",
    },
    Illegal {
        short: None,
        long: Some("--log-stderr"),
        why: "the driver reads flux submit's answer itself",
    },
];

/// The `flux jobs` format the driver reads: fields separated by `|`.
pub const JOBS_FORMAT: &str = "{state}|{result}|{returncode}|{exception.type}|{exception.note}";

fn failure(tool: &str, args: &[String], out: &CmdOutput) -> BatchError {
    // A broker that is restarting or unreachable: try again later.
    let transient = [
        "Connection refused",
        "No such file or directory",
        "Resource temporarily unavailable",
        "Connection timed out",
    ]
    .iter()
    .any(|t| out.stderr.contains(t) && out.stderr.contains("flux"));
    super::command_failure(tool, args, out, transient)
}

/// The job id in `flux submit`'s answer: its last non-blank line (`ƒ2kAbCd`, or decimal).
pub fn parse_submit(stdout: &str) -> Option<String> {
    let id = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    (!id.contains(char::is_whitespace)).then(|| id.to_string())
}

/// The state in `flux jobs -n -o JOBS_FORMAT ID`'s answer.
pub fn parse_jobs(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().find(|l| l.contains('|'))?;
    let f: Vec<&str> = line.split('|').map(str::trim).collect();
    let get = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
    let state = get(0)?;
    Some(match state {
        "DEPEND" | "PRIORITY" | "SCHED" | "NEW" => JobState::Queued {
            state: state.to_string(),
            reason: None,
            expected_start: None,
        },
        "RUN" | "CLEANUP" => JobState::Running {
            state: state.to_string(),
        },
        "INACTIVE" => {
            let result = get(1).unwrap_or("INACTIVE");
            let rc = get(2).and_then(|v| v.parse::<i32>().ok());
            // Negative: the signal that ended the job shell; -128: canceled before it ran.
            let (code, signal) = match rc {
                Some(-128) => (0, None),
                Some(c) if c < 0 => (0, Some(-c)),
                Some(c) => (c, None),
                None => (0, None),
            };
            let exception = get(3).map(|t| match get(4) {
                Some(n) => format!("{t}: {n}"),
                None => t.to_string(),
            });
            JobState::Finished(match (result, &exception) {
                ("COMPLETED", None) => Final::exited(result, code),
                ("FAILED", None) if signal.is_none() => Final::exited(result, code),
                ("CANCELED", _) => {
                    Final::ended(result, code, signal, exception.or(Some("canceled".into())))
                }
                ("TIMEOUT", _) => Final::ended(
                    result,
                    code,
                    signal,
                    exception.or(Some("time limit".into())),
                ),
                _ => Final::ended(result, code, signal, exception),
            })
        }
        other => JobState::Running {
            state: other.to_string(),
        },
    })
}

/// `flux jobs`/`flux cancel` saying the id is not (or no longer) known.
fn unknown(stderr: &str) -> bool {
    let e = stderr.to_ascii_lowercase();
    e.contains("unknown job") || e.contains("not found") || e.contains("invalid jobid")
}

impl Scheduler for Flux {
    fn name(&self) -> &'static str {
        "flux"
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
                "submit".to_string(),
                format!("--job-name={}", sub.name),
                format!("--output={}", path_arg(&sub.output)),
                format!("--cwd={}", path_arg(&sub.workdir)),
            ];
            args.extend(sub.args.iter().cloned());
            args.push(path_arg(&sub.script));
            super::submit_command(cmds, "flux", &args, failure, parse_submit).await
        })
    }

    fn state<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(async move {
            let args = s(&["jobs", "-n", "-o", JOBS_FORMAT, id]);
            // Not known, or listed with no line: no record of the job.
            let gone = |o: &CmdOutput| {
                if o.success() {
                    o.stdout.trim().is_empty()
                } else {
                    unknown(&o.stderr)
                }
            };
            super::state_command(cmds, "flux", &args, failure, gone, parse_jobs).await
        })
    }

    fn cancel<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
        graceful: bool,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(async move {
            // graceful: SIGTERM only, the job's traps run; otherwise flux cancel (SIGTERM,
            // then SIGKILL after the instance's kill timeout).
            let args = if graceful {
                s(&["job", "kill", "--signal=SIGTERM", id])
            } else {
                s(&["cancel", id])
            };
            super::cancel_command(cmds, "flux", &args, failure, |stderr| {
                let e = stderr.to_ascii_lowercase();
                unknown(stderr) || e.contains("inactive") || e.contains("not running")
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
        assert_eq!(parse_submit("ƒ2kAbCd\n").as_deref(), Some("ƒ2kAbCd"));
        assert_eq!(parse_submit("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_submit("  \n"), None);
        assert_eq!(parse_submit("job submitted"), None);
    }

    #[test]
    fn jobs_lines() {
        assert_eq!(
            parse_jobs("SCHED||||\n"),
            Some(JobState::Queued {
                state: "SCHED".into(),
                reason: None,
                expected_start: None,
            })
        );
        assert!(matches!(
            parse_jobs("RUN||||"),
            Some(JobState::Running { .. })
        ));
        let Some(JobState::Finished(f)) = parse_jobs("INACTIVE|COMPLETED|0||") else {
            panic!()
        };
        assert!(f.success());
        let Some(JobState::Finished(f)) = parse_jobs("INACTIVE|FAILED|7||") else {
            panic!()
        };
        assert_eq!((f.success(), f.exit_code, f.normal_end), (false, 7, true));
        let Some(JobState::Finished(f)) = parse_jobs("INACTIVE|CANCELED|-15|cancel|") else {
            panic!()
        };
        assert_eq!(f.exit_code, 143);
        assert_eq!(f.reason.as_deref(), Some("cancel"));
        let Some(JobState::Finished(f)) =
            parse_jobs("INACTIVE|TIMEOUT|-9|timeout|resource allocation expired")
        else {
            panic!()
        };
        assert!(!f.normal_end);
        assert_eq!(
            f.reason.as_deref(),
            Some("timeout: resource allocation expired")
        );
        let Some(JobState::Finished(f)) = parse_jobs("INACTIVE|CANCELED|-128|cancel|") else {
            panic!()
        };
        assert_eq!((f.exit_code, f.success()), (0, false));
        assert_eq!(parse_jobs("garbage"), None);
    }
}
