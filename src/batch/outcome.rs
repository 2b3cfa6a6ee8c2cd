//! How a batch job's end becomes the stage's status: who caused it (the user's job or the
//! infrastructure), the sentence for the job log, the build exit code, and whether a
//! resubmission may help. The table is in `docs/batch-outcomes.md`; keep them in step.
//!
//! * What the user's job caused (its exit code, its time or memory limit, the CI job's
//!   deadline) is a **build failure** with the job's real exit code (1 when it has none).
//! * What the infrastructure caused (node failure, boot failure, preemption, a launch
//!   failure) is a **system failure**, so GitLab's `retry: when: runner_system_failure`
//!   applies; those may also be resubmitted (`[batch] resubmit_limit`).
//! * A job cancelled outside this CI job (an administrator, a cancel by hand) is a build
//!   failure: retrying what someone removed on purpose helps no one.

use std::time::Duration;

use super::{fmt_dur, Final, JobState};
use crate::protocol::Status;
use crate::supervisor::Reason;

/// Who ended the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It ended on its own with exit code 0.
    Success,
    /// The user's job (its code, or limits it asked for).
    User,
    /// The machines or the scheduler.
    Infrastructure,
}

/// The classified end of one scheduler job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub cause: Cause,
    /// The build exit code (never 0 for a failure).
    pub exit_code: i32,
    /// The sentence for the job log; `None` when the exit code says it all.
    pub message: Option<String>,
    /// A resubmission may succeed (preemption, node or boot failure).
    pub resubmit: bool,
}

/// What the batch run knows of the job beyond its final state.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    /// The scheduler's name and the job id, for the messages.
    pub name: &'a str,
    pub id: &'a str,
    /// The job was seen running at least once.
    pub ran: bool,
    /// How long it waited in the queue before it ran (or until now, if it never did).
    pub queued_for: Duration,
    /// The scheduler's last reason (or state word) while it was queued.
    pub queue_reason: Option<String>,
}

/// "waited 58m in the queue (Priority), never started".
pub fn never_started(queued_for: Duration, reason: Option<&str>) -> String {
    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    format!(
        "waited {} in the queue{why}, never started",
        fmt_dur(queued_for)
    )
}

/// Classify `f`, the final state of a job that ended without a cancel of ours (a cancel
/// of ours is the stopping reason, see [`verdict`]). Slurm's words are recognised; any
/// other scheduler's words keep the general rule: the scheduler's normal end is decided
/// by the exit code, any other end is the user's build failure naming the state.
pub fn classify(f: &Final, seen: &Seen<'_>) -> JobEnd {
    let ended = format!(
        "{} job {} ended {}",
        seen.name,
        seen.id,
        JobState::Finished(f.clone()).describe()
    );
    let code = if f.exit_code == 0 { 1 } else { f.exit_code };
    let user = |why: Option<String>| JobEnd {
        cause: Cause::User,
        exit_code: code,
        message: why,
        resubmit: false,
    };
    let infra = |why: &str, resubmit: bool| JobEnd {
        cause: Cause::Infrastructure,
        exit_code: code,
        message: Some(format!("{ended}: {why} (a system failure)")),
        resubmit,
    };
    if f.normal_end {
        return match f.exit_code {
            0 => JobEnd {
                cause: Cause::Success,
                exit_code: 0,
                message: None,
                resubmit: false,
            },
            _ => user(None),
        };
    }
    let reason = f.reason.as_deref().unwrap_or("");
    match f.state.to_ascii_uppercase().as_str() {
        "TIMEOUT" => user(Some(format!(
            "{ended}: it reached the time limit it asked for; ask for more (e.g. --time in SCHEDULER_PARAMETERS)"
        ))),
        "OUT_OF_MEMORY" => user(Some(format!(
            "{ended}: it ran out of the memory it asked for; ask for more (e.g. --mem in SCHEDULER_PARAMETERS)"
        ))),
        "DEADLINE" if !seen.ran => user(Some(format!(
            "{} job {}: {} (the scheduler removed it at the CI job's deadline)",
            seen.name,
            seen.id,
            never_started(seen.queued_for, seen.queue_reason.as_deref())
        ))),
        "DEADLINE" => user(Some(format!(
            "{ended}: it was still running at the CI job's deadline (CI_JOB_TIMEOUT)"
        ))),
        "NODE_FAIL" => infra("a node of the job failed", true),
        "BOOT_FAIL" => infra("a node of the job failed to boot", true),
        "PREEMPTED" => infra("the scheduler preempted it for another job", true),
        "FAILED" if reason.contains("LaunchFailure") => {
            infra("the scheduler could not launch it", false)
        }
        "CANCELLED" | "CANCELED" => user(Some(format!(
            "{ended}: it was cancelled outside this CI job (by an administrator, or by hand)"
        ))),
        _ => user(Some(ended)),
    }
}

/// The stage's status for `o`; `stopped` is why we stopped the job, if we did (then the
/// stage failed even if the job's trap exited 0).
pub fn status(o: &JobEnd, stopped: Option<String>) -> Status {
    match o.cause {
        Cause::Success if stopped.is_none() => Status::Success,
        Cause::Infrastructure if stopped.is_none() => {
            system_failure(o.message.clone().unwrap_or_default())
        }
        _ => Status::BuildFailure {
            exit_code: if o.exit_code == 0 { 1 } else { o.exit_code },
            signal: None,
            stopped: stopped.or_else(|| o.message.clone()),
        },
    }
}

/// A system failure of a batch job with `message`: the one place this module family builds
/// one (GitLab retries it with `retry: when: runner_system_failure`).
pub fn system_failure(message: String) -> Status {
    Status::SystemFailure { message }
}

/// A build failure with exit code 1; `stopped`: why we stopped it, if we did.
pub fn failed(stopped: Option<String>) -> Status {
    Status::BuildFailure {
        exit_code: 1,
        signal: None,
        stopped,
    }
}

/// What a supervised job comes to: the stage's status, whether a resubmission may help,
/// and the line for the job log, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub resubmit: bool,
    pub line: Option<String>,
}

impl Verdict {
    /// `status`, with no resubmission and nothing (more) to say.
    pub fn of(status: Status) -> Verdict {
        Verdict {
            status,
            resubmit: false,
            line: None,
        }
    }
}

/// The verdict on the job `seen` from its end `fin` (`None`: a cancel not confirmed) and,
/// when we cancelled it, why (`stopped`: a job we stopped failed, even if its trap exited
/// 0), classified by [`classify`]; a resubmission never follows our cancel.
pub fn verdict(fin: Option<&Final>, stopped: Option<Reason>, seen: &Seen<'_>) -> Verdict {
    let (name, id) = (seen.name, seen.id);
    let Some(f) = fin else {
        let why = stopped.map_or_else(|| "cancel".to_string(), |r| r.to_string());
        return Verdict {
            line: Some(format!("ERROR: {name} job {id} could not be confirmed gone after the cancel ({why}); cleanup will retry")),
            ..Verdict::of(failed(Some(why)))
        };
    };
    let o = classify(f, seen);
    if o.cause == Cause::Success && stopped.is_none() {
        return Verdict::of(Status::Success);
    }
    let line = (stopped.is_some() || !f.normal_end).then(|| {
        let text = match (&stopped, &o.message) {
            (None, Some(m)) => m.clone(),
            _ => format!(
                "{name} job {id} ended {}",
                JobState::Finished(f.clone()).describe()
            ),
        };
        // A system failure has no exit code of the job's own (Slurm says 0:0 for a node
        // failure): "(exit code 0)" after "a system failure" would only mislead.
        match o.cause == Cause::Infrastructure && stopped.is_none() {
            true => text,
            false => format!("{text} (exit code {})", f.exit_code),
        }
    });
    Verdict {
        status: status(&o, stopped.map(|r| r.to_string())),
        resubmit: o.resubmit && stopped.is_none(),
        line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ran: bool) -> Seen<'static> {
        Seen {
            name: "slurm",
            id: "42",
            ran,
            queued_for: Duration::from_secs(58 * 60),
            queue_reason: Some("Priority".into()),
        }
    }

    type Row = (Final, bool, Cause, i32, Option<&'static str>, bool);

    /// Every final state of the table in docs/batch-outcomes.md: (final state, seen
    /// running, cause, exit code, message part, resubmit).
    fn table() -> Vec<Row> {
        let ended = |state: &str, code: i32, sig: Option<i32>, reason: Option<&str>| {
            Final::ended(state, code, sig, reason.map(str::to_string))
        };
        vec![
            (Final::exited("COMPLETED", 0), true, Cause::Success, 0, None, false),
            (Final::exited("FAILED", 7), true, Cause::User, 7, None, false),
            (
                ended("TIMEOUT", 0, Some(15), Some("TimeLimit")),
                true,
                Cause::User,
                143,
                Some("slurm job 42 ended TIMEOUT (TimeLimit): it reached the time limit it asked for"),
                false,
            ),
            (
                ended("OUT_OF_MEMORY", 0, Some(9), Some("OutOfMemory")),
                true,
                Cause::User,
                137,
                Some("ran out of the memory it asked for"),
                false,
            ),
            (
                ended("DEADLINE", 0, None, Some("DeadLine")),
                false,
                Cause::User,
                1,
                Some("slurm job 42: waited 58m00s in the queue (Priority), never started"),
                false,
            ),
            (
                ended("DEADLINE", 0, Some(15), Some("DeadLine")),
                true,
                Cause::User,
                143,
                Some("still running at the CI job's deadline"),
                false,
            ),
            (
                ended("NODE_FAIL", 0, None, Some("NodeDown")),
                true,
                Cause::Infrastructure,
                1,
                Some("slurm job 42 ended NODE_FAIL (NodeDown): a node of the job failed (a system failure)"),
                true,
            ),
            (
                ended("BOOT_FAIL", 0, None, None),
                false,
                Cause::Infrastructure,
                1,
                Some("failed to boot"),
                true,
            ),
            (
                ended("PREEMPTED", 0, Some(15), None),
                true,
                Cause::Infrastructure,
                143,
                Some("preempted it"),
                true,
            ),
            (
                ended("FAILED", 0, None, Some("JobLaunchFailure")),
                false,
                Cause::Infrastructure,
                1,
                Some("could not launch it"),
                false,
            ),
            (
                ended("FAILED", 0, Some(11), None),
                true,
                Cause::User,
                139,
                Some("ended FAILED"),
                false,
            ),
            (
                ended("CANCELLED", 0, Some(15), None),
                true,
                Cause::User,
                143,
                Some("cancelled outside this CI job"),
                false,
            ),
            (
                ended("SPECIAL_EXIT", 0, None, None),
                true,
                Cause::User,
                1,
                Some("slurm job 42 ended SPECIAL_EXIT"),
                false,
            ),
        ]
    }

    #[test]
    fn every_final_state_is_classified() {
        for (f, ran, cause, code, msg, resubmit) in table() {
            let o = classify(&f, &seen(ran));
            assert_eq!(o.cause, cause, "{f:?}: {o:?}");
            assert_eq!(o.exit_code, code, "{f:?}: {o:?}");
            assert_eq!(o.resubmit, resubmit, "{f:?}: {o:?}");
            match msg {
                None => assert_eq!(o.message, None, "{f:?}"),
                Some(m) => assert!(
                    o.message.as_deref().is_some_and(|t| t.contains(m)),
                    "{f:?}: {o:?} lacks {m:?}"
                ),
            }
            let st = status(&o, None);
            match cause {
                Cause::Success => assert_eq!(st, Status::Success),
                Cause::User => assert!(
                    matches!(st, Status::BuildFailure { exit_code, .. } if exit_code == code),
                    "{st:?}"
                ),
                Cause::Infrastructure => {
                    assert!(matches!(st, Status::SystemFailure { .. }), "{st:?}")
                }
            }
        }
    }

    #[test]
    fn a_job_we_stopped_is_a_build_failure_whatever_its_end() {
        let o = classify(&Final::exited("COMPLETED", 0), &seen(true));
        assert_eq!(
            status(&o, Some("received SIGTERM".into())),
            Status::BuildFailure {
                exit_code: 1,
                signal: None,
                stopped: Some("received SIGTERM".into())
            }
        );
        let o = classify(&Final::ended("NODE_FAIL", 0, None, None), &seen(true));
        assert!(matches!(
            status(&o, Some("x".into())),
            Status::BuildFailure { .. }
        ));
    }

    /// The stage's status and the log's line from a job's end (and our stop).
    #[test]
    fn verdicts_of_final_states() {
        let v = |f: Final, stopped: Option<Reason>| verdict(Some(&f), stopped, &seen(false));
        assert_eq!(
            v(Final::exited("COMPLETED", 0), None),
            Verdict::of(Status::Success)
        );
        assert!(matches!(
            v(Final::exited("FAILED", 7), None).status,
            Status::BuildFailure {
                exit_code: 7,
                stopped: None,
                ..
            }
        ));
        let t = v(
            Final::ended("TIMEOUT", 0, Some(15), Some("TimeLimit".into())),
            None,
        );
        let Status::BuildFailure {
            exit_code, stopped, ..
        } = t.status
        else {
            panic!()
        };
        assert_eq!(exit_code, 143);
        assert!(stopped.unwrap().contains("TIMEOUT (TimeLimit)"));
        assert!(t.line.unwrap().ends_with("(exit code 143)"));
        let s = v(Final::exited("COMPLETED", 0), Some(Reason::Parent)).status;
        assert!(matches!(s, Status::BuildFailure { exit_code: 1, .. }));
        let node = v(Final::ended("NODE_FAIL", 0, None, None), None);
        assert!(node.resubmit && !node.line.unwrap().contains("(exit code"));
        let unconfirmed = verdict(None, Some(Reason::Parent), &seen(true));
        assert_eq!(unconfirmed.status, failed(Some(Reason::Parent.to_string())));
        assert!(unconfirmed
            .line
            .unwrap()
            .contains("could not be confirmed gone"));
    }
}
