//! Cobalt: `qsub` to submit (it prints the job id), `qstat -u USER` for every queued or
//! running job of the user at once (shared, see [`super::poller`]), `qstat ID` for one job,
//! `qdel` to cancel. A finished job leaves `qstat` without a word: its end is in
//! the Cobalt log (`--debuglog`, by default `<jobid>.cobaltlog`), whose line `task
//! completed normally with an exit code of N; initiating job cleanup and removal` gives
//! the exit code. Cobalt keeps stderr apart (`-e`, by default `<jobid>.error`): both files
//! are tailed to the job log.
//!
//! `skip_cobalt_log` (meant for testing and debugging): the exit status comes from a line
//! the submitted script echoes at the end of its output instead of the Cobalt log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{why, Illegal};
use super::scheduler::{
    last_line_id, listed, queued, running_user, Accounting, Cmd, Profile, Query, Read, Scheduler,
    Submission,
};
use super::{path_arg, Final, JobState, Listed};

/// The Cobalt scheduler (`executor = "cobalt"`).
pub struct Cobalt {
    /// `[batch] skip_cobalt_log`.
    pub skip_log: bool,
}

/// Cobalt's name, forms and words.
const PROFILE: Profile = Profile {
    name: "cobalt",
    valid_id,
    parse_submit,
    gone: &[],
    // Messages of the Cobalt clients for a component (the queue manager) that is down or
    // unreachable (`component error: Failed to connect to queue-manager`, a refused or timed
    // out XML-RPC connection): try again later, the job was not refused.
    transient: &["Failed to connect to", "Connection refused", "timed out"],
    illegal: &[
        Illegal::both('o', "--output", why::OUTPUT),
        Illegal::both(
            'e',
            "--error",
            "the driver chooses the error file it streams to the job log",
        ),
        Illegal::both(
            'O',
            "--outputprefix",
            "the driver chooses the output files it streams to the job log",
        ),
        Illegal::long(
            "--debuglog",
            "the driver reads the job's exit status from its own Cobalt log",
        ),
        Illegal::both('i', "--inputfile", why::INPUT),
        Illegal::both('I', "--interactive", why::INTERACTIVE),
        Illegal::long("--jobname", why::NAME),
        Illegal::long("--cwd", why::WORKDIR),
    ],
};

/// The line the script echoes last when `skip_cobalt_log` is set.
pub const STATUS_ECHO: &str = "jacamar-rs: batch script exit status";

/// The Cobalt log of the job whose output is `output`.
pub fn log_file(output: &Path) -> PathBuf {
    output.with_extension("cobaltlog")
}

/// The state in `qstat ID`'s table (`JobID User WallTime Nodes State Location`); `None`
/// when the job is not listed (finished, or unknown).
pub fn parse_qstat(stdout: &str, id: &str) -> Option<JobState> {
    parse_qstat_all(stdout).remove(id)
}

/// Every row of a `qstat [-u USER]` table by job id, the state from the `State` column
/// (found by its header). Empty when there is no table (Cobalt prints nothing when no job
/// matches).
pub fn parse_qstat_all(stdout: &str) -> BTreeMap<String, JobState> {
    let mut lines = stdout.lines();
    let Some(header) = lines.by_ref().find(|l| l.contains("JobID")) else {
        return BTreeMap::new();
    };
    let Some(col) = header
        .split_whitespace()
        .position(|h| h.eq_ignore_ascii_case("State"))
    else {
        return BTreeMap::new();
    };
    lines
        .filter_map(|row| {
            let w: Vec<&str> = row.split_whitespace().collect();
            let id = *w.first()?;
            if !id.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            Some((id.to_string(), row_state(w.get(col)?)))
        })
        .collect()
}

/// A Cobalt state word: `running` and the ends of a run are running, the rest queued.
fn row_state(st: &str) -> JobState {
    let st = st.to_string();
    match st.as_str() {
        "running" | "starting" | "exiting" | "killing" | "cleanup" => {
            JobState::Running { state: st }
        }
        _ => queued(&st, None),
    }
}

/// The end of the job in its Cobalt log.
pub fn parse_cobaltlog(text: &str) -> Option<Final> {
    let code = text.lines().rev().find_map(|l| {
        let rest = &l[l.find("with an exit code of ")? + "with an exit code of ".len()..];
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        n.parse::<i32>().ok()
    });
    let deleted = text.lines().find_map(|l| {
        let i = l.find("user delete with signal ")?;
        Some(
            l[i..]
                .split(';')
                .next()
                .unwrap_or("user delete")
                .to_string(),
        )
    });
    match (code, deleted) {
        (Some(c), None) => Some(Final::exited("done", c)),
        (c, Some(why)) => Some(Final::ended("deleted", c.unwrap_or(0), None, Some(why))),
        (None, None) => {
            if text.contains("job deleted before it started") {
                Some(Final::ended(
                    "deleted",
                    0,
                    None,
                    Some("deleted before it started".into()),
                ))
            } else {
                None
            }
        }
    }
}

/// The exit status the script echoed (`skip_cobalt_log`): its last such line.
pub fn parse_status_echo(text: &str) -> Option<i32> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(STATUS_ECHO)?.trim().parse().ok())
}

/// The job id in `qsub`'s answer: its last non-blank line (digits).
pub fn parse_submit(stdout: &str) -> Option<String> {
    last_line_id(stdout, valid_id)
}

/// A Cobalt job id as qsub prints it: decimal digits.
pub fn valid_id(id: &str) -> bool {
    super::is_decimal_id(id)
}

impl Scheduler for Cobalt {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn submit(&self, sub: &Submission) -> Cmd {
        let err = sub
            .error
            .clone()
            .unwrap_or_else(|| sub.output.with_extension("err"));
        let options = vec![
            "--jobname".to_string(),
            sub.name.clone(),
            "--cwd".into(),
            path_arg(&sub.workdir),
            "-o".into(),
            path_arg(&sub.output),
            "-e".into(),
            path_arg(&err),
            "--debuglog".into(),
            path_arg(&log_file(&sub.output)),
        ];
        Cmd::submit("qsub", options, sub)
    }

    /// `qstat ID`: a job not listed is over (the Cobalt log says how) or never known.
    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
        vec![Query::new(Cmd::new("qstat", &[id]), move |o| {
            Read::table(o, |s| parse_qstat(s, id).unwrap_or(JobState::Unknown))
        })]
    }

    /// qdel sends SIGTERM, then SIGKILL after a delay: graceful already.
    fn cancel(&self, id: &str, _graceful: bool) -> Cmd {
        // `--`: Cobalt's qdel (optparse) takes what follows as job ids, never options.
        Cmd::new("qdel", &["--", id])
    }

    /// `qstat -u USER` (when the passwd database names us): the user's queued and running
    /// jobs. A finished job leaves it at once; its end is in its exit file or Cobalt log.
    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        let qstat = Cmd::new("qstat", &["-u", running_user()?]);
        Some(Query::new(qstat, |o| {
            Read::table(o, |s| {
                let rows = parse_qstat_all(s).into_iter();
                rows.map(|(id, st)| (id, listed(st, false))).collect()
            })
        }))
    }

    /// Cobalt keeps no history `qstat` could show: nothing to ask. A job that left the
    /// listing ends by its exit file, or by its Cobalt log
    /// ([`Scheduler::final_from_files`]) when the poll answers `Unknown`.
    fn accounting(&self, _missing: &[&str], _step: usize) -> Accounting {
        Accounting::Done
    }

    fn error_file(&self, output: &Path) -> Option<PathBuf> {
        Some(output.with_extension("err"))
    }

    /// With `skip_cobalt_log`: the stage's status echoed at the end of its output, where
    /// the driver reads it.
    fn epilogue(&self) -> String {
        match self.skip_log {
            true => format!("echo \"{STATUS_ECHO} $__jacamar_rc\""),
            false => String::new(),
        }
    }

    fn end_files(&self, output: &Path) -> Vec<PathBuf> {
        vec![log_file(output)]
    }

    fn final_from_files(&self, sub: &Submission, _id: &str) -> Option<Final> {
        if self.skip_log {
            let text = std::fs::read_to_string(&sub.output).ok()?;
            return parse_status_echo(&text).map(|c| Final::exited("done", c));
        }
        parse_cobaltlog(&std::fs::read_to_string(log_file(&sub.output)).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::scheduler::testing::{commands, ids, out, shown, submits};

    #[test]
    fn job_ids_are_digits() {
        submits(parse_submit, &[("1000\n", "1000")], &[]);
        let bad = ["", "-u", "--", "10 00", "1000\u{1b}[0m", "1000.server", "x"];
        ids(valid_id, &["1000"], &bad);
    }

    #[test]
    fn qstat_tables() {
        let t = "JobID   User       WallTime  Nodes  State    Location\n=======\n1000    ci         00:10:00  1      queued   None\n1001    ci         00:10:00  1      running  nid0001\n";
        assert_eq!(parse_qstat(t, "1000"), Some(queued("queued", None)));
        assert_eq!(
            parse_qstat(t, "1001"),
            Some(JobState::Running {
                state: "running".into()
            })
        );
        assert_eq!(parse_qstat(t, "100"), None);
        assert_eq!(parse_qstat("", "1000"), None);
    }

    /// `qstat -u ci` (Cobalt's default columns; `===` rule; nothing at all when the user
    /// has no job).
    #[test]
    fn qstat_u_table() {
        let t = "JobID   User       WallTime  Nodes  State    Location\n===================================================================\n1000    ci         00:10:00  1      queued   None\n1001    ci         00:10:00  1      running  nid0001\n1002    ci         00:10:00  1      exiting  nid0002\n";
        let m = parse_qstat_all(t);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(matches!(m["1000"], JobState::Queued { .. }));
        assert!(matches!(m["1001"], JobState::Running { .. }));
        assert!(matches!(m["1002"], JobState::Running { .. }));
        assert!(parse_qstat_all("").is_empty());
    }

    #[test]
    fn cobaltlog_lines() {
        let l = "Thu Nov 05 17:29:30 2020 +0000 (UTC) submitted with cwd set to: /home/ci\nThu Nov 05 17:29:31 2020 +0000 (UTC) Info: task completed normally with an exit code of 7; initiating job cleanup and removal\n";
        assert_eq!(parse_cobaltlog(l), Some(Final::exited("done", 7)));
        let l = "x user delete with signal 15 requested by user ci; initiating job cleanup and removal\ny Info: task completed normally with an exit code of 3; initiating job cleanup and removal\n";
        let f = parse_cobaltlog(l).unwrap();
        assert!(!f.normal_end);
        assert_eq!(f.exit_code, 3);
        assert_eq!(
            f.reason.as_deref(),
            Some("user delete with signal 15 requested by user ci")
        );
        assert_eq!(parse_cobaltlog("submitted with cwd set to: /x\n"), None);
    }

    #[test]
    fn failures_are_transient_in_cobalt_words_only() {
        for e in [
            "component error: Failed to connect to queue-manager",
            "component error: Following exception occured in queue-manager: [Errno 111] Connection refused",
        ] {
            assert!(Cobalt { skip_log: false }.transient(e), "{e}");
        }
        let refused = "component error: XMLRPC failure <Fault 1: 'job has no walltime'> in queue-manager.add_jobs";
        assert!(!Cobalt { skip_log: false }.transient(refused));
    }

    #[test]
    fn status_echo() {
        let t = format!("out\n{STATUS_ECHO} 0 is what I print\n{STATUS_ECHO} 4\n");
        assert_eq!(parse_status_echo(&t), Some(4));
        assert_eq!(parse_status_echo("nothing\n"), None);
    }

    #[test]
    fn skip_log_wrapper_echoes_the_status() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("build_script.out");
        let w = Cobalt { skip_log: true }.wrapper(
            &out,
            &[
                "bash".into(),
                "-c".into(),
                "echo \"$0\"; exit 4".into(),
                "it's".into(),
            ],
        );
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(&w)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(4));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("it's\n{STATUS_ECHO} 4\n")
        );
    }

    /// The commands, and how `qstat ID` reads: a job it does not list is unknown to it (its
    /// end is in its files).
    #[test]
    fn commands_and_the_state_answer() {
        let cobalt = Cobalt { skip_log: false };
        assert_eq!(
            commands(&cobalt, &["-n", "1"], "1000"),
            "qsub --jobname ci-7 --cwd /w -o /s/build_script.out -e /s/build_script.err --debuglog /s/build_script.cobaltlog -n 1 /s/build_script-batch\n\
             qdel -- 1000\n\
             qdel -- 1000"
        );
        let q = cobalt.state("1000");
        assert_eq!(shown(&q), ["qstat 1000"]);
        assert_eq!((q[0].read)(&out(0, "", "")), Read::Got(JobState::Unknown));
        let t = "JobID   User       WallTime  Nodes  State    Location\n=======\n1000    ci         00:10:00  1      running  nid0001\n";
        assert!(matches!(
            (q[0].read)(&out(0, t, "")),
            Read::Got(JobState::Running { .. })
        ));
        assert!(matches!(cobalt.accounting(&["1000"], 0), Accounting::Done));
        let ended = "x Info: task completed normally with an exit code of 0; initiating job cleanup and removal\n";
        assert!(parse_cobaltlog(ended).is_some_and(|f| f.success()));
    }
}
