//! PBS (Torque, PBS Pro, and Debian's `slurm-wlm-torque` wrappers over Slurm): `qsub` to
//! submit, `qstat -f` for the state, `qdel` to cancel.
//!
//! PBS spools a job's output and copies it at the end, so the wrapper script writes the
//! job's output straight to the driver's file (`exec >> file 2>&1`) to stream it live, and
//! records the script's exit code in `<stage>.exit` next to it: `qstat` reports
//! `exit_status` only on some PBS flavours (not at all through the Slurm wrappers).

use super::args::Illegal;
use super::limiter::CmdOutput;
use super::wrapper::{output_redirect, wrapper_script};
use super::{path_arg, s, BatchError, BoxFuture, Commands, Final, JobState, Scheduler, Submission};

/// The PBS scheduler (`executor = "pbs"`).
pub struct Pbs;

const ILLEGAL: &[Illegal] = &[
    Illegal {
        short: Some('o'),
        long: None,
        why: "the driver chooses the output file it streams to the job log",
    },
    Illegal {
        short: Some('e'),
        long: None,
        why: "the driver chooses the error file",
    },
    Illegal {
        short: Some('j'),
        long: None,
        why: "the driver joins the job's output itself",
    },
    Illegal {
        short: Some('k'),
        long: None,
        why: "the driver chooses where output is kept",
    },
    Illegal {
        short: Some('N'),
        long: None,
        why: "the driver names the job after the CI job",
    },
    Illegal {
        short: Some('I'),
        long: None,
        why: "interactive jobs cannot be supervised by the driver",
    },
    Illegal {
        short: Some('z'),
        long: None,
        why: "the driver needs the job id qsub prints",
    },
];

/// Messages of the PBS clients (Torque, PBS Pro) for a server that is down, restarting or
/// unreachable (`pbs_connect` failures, PBSE_NOSERVER, PBSE_PROTOCOL, a dropped
/// connection): try again later, the job was not refused.
const TRANSIENT: &[&str] = &[
    "cannot connect to server",
    "Cannot connect to default server",
    "No server to connect to",
    "Connection refused",
    "Connection timed out",
    "Communication failure",
    "End of File",
];

/// Classify a failed command's output with PBS's words for an unreachable server.
fn failure(tool: &str, args: &[String], out: &CmdOutput) -> BatchError {
    super::failure_by_words(TRANSIENT, tool, args, out)
}

/// The exit-code file of the job whose output is `output` (the wrapper's own, see
/// [`super::wrapper::exit_path`]).
pub fn exit_file(output: &std::path::Path) -> std::path::PathBuf {
    super::wrapper::exit_path(output)
}

/// `qstat -f`'s `key = value` lines.
fn attr<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
    })
}

/// The state in `qstat -f ID`'s answer.
pub fn parse_qstat(text: &str) -> Option<JobState> {
    let st = attr(text, "job_state")?.to_string();
    let exit = attr(text, "exit_status").and_then(|v| v.parse::<i32>().ok());
    Some(match st.as_str() {
        "R" | "E" => JobState::Running { state: st },
        "C" | "F" => JobState::Finished(match exit {
            Some(c) if c >= 256 => {
                Final::ended(&st, 0, Some(c - 256), Some("killed by a signal".into()))
            }
            Some(c) if c < 0 => Final::ended(&st, 1, None, Some(format!("PBS error {c}"))),
            Some(c) => Final::exited(&st, c),
            None => Final::ended(&st, 1, None, Some("no exit status reported".into())),
        }),
        _ => JobState::Queued {
            state: st,
            reason: attr(text, "comment").map(str::to_string),
            expected_start: None,
        },
    })
}

/// The job id in `qsub`'s answer: its last non-blank line (any word).
pub fn parse_submit(stdout: &str) -> Option<String> {
    let id = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

impl Scheduler for Pbs {
    fn name(&self) -> &'static str {
        "pbs"
    }

    fn illegal_args(&self) -> &'static [Illegal] {
        ILLEGAL
    }

    fn wrapper(&self, output: &std::path::Path, command: &[String]) -> String {
        wrapper_script(
            &output_redirect(output),
            command,
            "",
            output,
            &exit_file(output),
        )
    }

    fn submit<'a>(
        &'a self,
        cmds: &'a Commands,
        sub: &'a Submission,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            // The scheduler's own messages (walltime kills) go next to the output file.
            let sched_out = path_arg(&sub.output.with_extension("pbs.out"));
            let mut args = vec![
                "-V".to_string(),
                "-N".into(),
                sub.name.clone(),
                "-o".into(),
                sched_out.clone(),
                "-e".into(),
                sched_out,
            ];
            args.extend(sub.args.iter().cloned());
            args.push(path_arg(&sub.script));
            super::submit_command(cmds, "qsub", &args, failure, parse_submit).await
        })
    }

    fn state<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(async move {
            let args = s(&["-f", id]);
            // Torque/PBS: PBSE_UNKJOBID (15001, exit status 153), "Unknown Job Id".
            let unknown = |o: &CmdOutput| {
                !o.success() && (o.code == Some(153) || o.stderr.contains("Unknown Job"))
            };
            super::state_command(cmds, "qstat", &args, failure, unknown, parse_qstat).await
        })
    }

    fn cancel<'a>(
        &'a self,
        cmds: &'a Commands,
        id: &'a str,
        _graceful: bool,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        // qdel sends SIGTERM, then SIGKILL after the server's kill delay: graceful already.
        Box::pin(async move {
            let args = s(&[id]);
            super::cancel_command(cmds, "qdel", &args, failure, |e| {
                e.contains("Unknown Job") || e.contains("completed")
            })
            .await
        })
    }

    fn final_from_files(&self, sub: &Submission, id: &str) -> Option<Final> {
        super::wrapper::read_exit_file(&exit_file(&sub.output), id)
            .map(|r| Final::exited("C", r.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qstat_answers() {
        let t = "Job Id: 30\n\tJob_Name = ci-1\n\tjob_state = R\n";
        assert_eq!(
            parse_qstat(t),
            Some(JobState::Running { state: "R".into() })
        );
        let t = "Job Id: 31.srv\n    job_state = C\n    exit_status = 7\n";
        let Some(JobState::Finished(f)) = parse_qstat(t) else {
            panic!()
        };
        assert_eq!((f.exit_code, f.success()), (7, false));
        let t = "job_state = F\nExit_status = 271\n";
        let Some(JobState::Finished(f)) = parse_qstat(t) else {
            panic!()
        };
        assert_eq!((f.exit_code, f.success()), (143, false));
        let t = "job_state = Q\ncomment = Not Running: Insufficient resources\n";
        assert!(matches!(
            parse_qstat(t),
            Some(JobState::Queued {
                reason: Some(_),
                ..
            })
        ));
        assert_eq!(parse_qstat("garbage"), None);
    }

    #[test]
    fn failures_are_transient_in_pbs_words_only() {
        let out = |stderr: &str| CmdOutput {
            code: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        };
        let args = s(&["-f", "1"]);
        for e in [
            "qstat: cannot connect to server srv (errno=111) Connection refused",
            "Cannot connect to default server host 'srv' - check pbs_server daemon.",
            "qsub: End of File",
        ] {
            assert!(failure("qstat", &args, &out(e)).is_transient(), "{e}");
        }
        for e in [
            "qsub: Unknown queue MSG=requested queue not found",
            "qsub: Job exceeds queue resource limits",
        ] {
            assert!(!failure("qsub", &args, &out(e)).is_transient(), "{e}");
        }
    }

    #[test]
    fn wrapper_records_the_exit_code() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("build_script.out");
        let w = Pbs.wrapper(
            &out,
            &[
                "bash".into(),
                "-c".into(),
                "echo \"$0\"; exit 4".into(),
                "it's here".into(),
            ],
        );
        let st = std::process::Command::new("bash")
            .arg("-c")
            .arg(&w)
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(4));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "it's here\n");
        let rec = super::super::wrapper::read_exit_file(&exit_file(&out), "11").unwrap();
        assert_eq!(rec.code, 4);
    }
}
