//! LSF: `bsub` to submit (its answer `Job <ID> is submitted to queue <Q>.`), `bjobs -u USER
//! -a -o` for the state of every job of the user at once (shared, see [`super::poller`];
//! `-a` keeps finished jobs listed, with their exit code, for LSF's `CLEAN_PERIOD`),
//! `bjobs -o ID` for one job, `bkill` to cancel.
//!
//! LSF may spool a job's output and copy it at the end, so, as for PBS, the submitted
//! script writes its output straight to the driver's file (`exec >> file 2>&1`); LSF's own
//! `-o` file gets only LSF's job report, next to it (`<stage>.lsf.out`).
//!
//! `lsf_job_cancellation` (upstream: job naming and `bkill` only with this key, so jobs
//! that rely on their own `-J` keep it): when set, the driver names the job `-J <name>`
//! (and refuses `-J` from the user) and cancels in two steps, `bkill -s TERM` (the job's
//! traps run, `kill_timeout` to finish) then `bkill`. When unset, the job keeps the user's
//! `-J` if any, and a cancel is one `bkill <id>` (LSF's own sequence: SIGINT and SIGTERM,
//! SIGKILL after its terminate interval). Either way the driver cancels by the job id
//! `bsub` printed, never by name, so no other job of the user is touched.

use std::collections::BTreeMap;

use super::args::{why, Illegal};
use super::limiter::CmdOutput;
use super::scheduler::{
    listing_by_id, queued, running_user, Cmd, Profile, Query, Read, Scheduler, Submission,
};
use super::{path_arg, Final, JobState, Listed};

/// The LSF scheduler (`executor = "lsf"`).
pub struct Lsf {
    /// `[batch] lsf_job_cancellation`.
    pub job_cancellation: bool,
}

/// LSF's name, forms and words.
const PROFILE: Profile = Profile {
    name: "lsf",
    valid_id,
    parse_submit,
    gone: &["already finished", "No matching job", "is not found"],
    // mbatchd busy or restarting: LSF's own words for "try again".
    transient: &[
        "LSF is down",
        "Batch system not responding",
        "batch system daemon not responding",
        "Failed in an LSF library call",
        "Resource temporarily unavailable",
        "Timeout",
    ],
    illegal: ILLEGAL,
};

/// With `lsf_job_cancellation`: every refused option, the job name last (LSF options are
/// single-dash words, matched exactly).
const ILLEGAL_NAMED: &[Illegal] = &[
    Illegal::long("-o", why::OUTPUT),
    Illegal::long("-oo", why::OUTPUT),
    Illegal::long("-e", why::STDERR),
    Illegal::long("-eo", why::STDERR),
    Illegal::long("-i", why::INPUT),
    Illegal::long("-is", why::INPUT),
    Illegal::long("-K", why::WAIT),
    Illegal::long("-I", why::INTERACTIVE),
    Illegal::long("-Ip", why::INTERACTIVE),
    Illegal::long("-Is", why::INTERACTIVE),
    Illegal::long("-IS", why::INTERACTIVE),
    Illegal::long("-ISp", why::INTERACTIVE),
    Illegal::long("-ISs", why::INTERACTIVE),
    Illegal::long("-IX", why::INTERACTIVE),
    Illegal::long("-cwd", why::WORKDIR),
    Illegal::long(
        "-J",
        "the driver names the job after the CI job (lsf_job_cancellation)",
    ),
];

/// Without `lsf_job_cancellation`: the same but the job name, which the user may then set.
const ILLEGAL: &[Illegal] = ILLEGAL_NAMED.split_at(ILLEGAL_NAMED.len() - 1).0;

/// The `bjobs -o` format the driver reads.
pub const BJOBS_FORMAT: &str = "stat exit_code exit_reason pend_reason delimiter='|'";

/// The `bjobs -o` format of the per-user listing: the job id, then [`BJOBS_FORMAT`]'s.
pub const BJOBS_LIST_FORMAT: &str = "jobid stat exit_code exit_reason pend_reason delimiter='|'";

/// `bjobs -u USER -a -noheader -o BJOBS_LIST_FORMAT`'s lines by job id. Finished jobs carry
/// their exit code (`exit_code`, `-` for 0).
pub fn parse_bjobs_list(stdout: &str) -> BTreeMap<String, Listed> {
    let numeric = |id: &str| id.starts_with(|c: char| c.is_ascii_digit());
    listing_by_id(stdout, numeric, parse_bjobs)
}

/// bjobs's words for "the user has no job" (`No unfinished job found`, `No job found`),
/// said with exit status 0, or 255 under `LSB_BJOBS_CONSISTENT_EXIT_CODE=Y`.
fn no_jobs(o: &CmdOutput) -> bool {
    o.stderr.contains("job found")
}

/// The file LSF's own `-o` (its job report) goes to, next to the output file.
pub fn report_file(output: &std::path::Path) -> std::path::PathBuf {
    output.with_extension("lsf.out")
}

/// The id in `bsub`'s answer: `Job <1234> is submitted to queue <normal>.`
pub fn parse_submit(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Job <")?;
        let (id, tail) = rest.split_once('>')?;
        (tail.contains("submitted") && valid_id(id)).then(|| id.to_string())
    })
}

/// An LSF job id as bsub prints it: decimal digits. (bkill documents no `--`; the id
/// never starts with `-`.)
pub fn valid_id(id: &str) -> bool {
    super::is_decimal_id(id)
}

/// The state in `bjobs -noheader -o BJOBS_FORMAT ID`'s answer.
pub fn parse_bjobs(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().find(|l| l.contains('|'))?;
    let f: Vec<&str> = line.split('|').map(str::trim).collect();
    let get = |i: usize| f.get(i).copied().filter(|v| !v.is_empty() && *v != "-");
    let stat = get(0)?;
    Some(match stat {
        "PEND" | "PSUSP" | "WAIT" => queued(stat, get(3).map(str::to_string)),
        "DONE" => JobState::Finished(Final::exited(stat, 0)),
        "EXIT" => {
            let code = get(1).and_then(|c| c.parse::<i32>().ok());
            match (code, get(2)) {
                (Some(c), None) if c != 0 => JobState::Finished(Final::exited(stat, c)),
                (c, reason) => JobState::Finished(Final::ended(
                    stat,
                    c.unwrap_or(0),
                    None,
                    Some(reason.unwrap_or("no exit code reported").to_string()),
                )),
            }
        }
        "ZOMBI" => JobState::Finished(Final::ended(
            stat,
            0,
            None,
            Some("killed, execution host unreachable".into()),
        )),
        // RUN, USUSP, SSUSP, PROV, UNKWN: not over yet.
        other => JobState::Running {
            state: other.to_string(),
        },
    })
}

impl Scheduler for Lsf {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn illegal_args(&self) -> &'static [Illegal] {
        match self.job_cancellation {
            true => ILLEGAL_NAMED,
            false => ILLEGAL,
        }
    }

    /// bsub runs in the job's working dir (the commands' cwd): the job starts there.
    fn submit(&self, sub: &Submission) -> Cmd {
        let mut options = vec!["-o".to_string(), path_arg(&report_file(&sub.output))];
        if self.job_cancellation {
            options.extend(["-J".to_string(), sub.name.clone()]);
        }
        Cmd::submit("bsub", options, sub)
    }

    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
        let bjobs = Cmd::new("bjobs", &["-noheader", "-o", BJOBS_FORMAT, id]);
        vec![Query::new(bjobs, |o| {
            match o.stderr.contains("is not found") {
                true => Read::Got(JobState::Unknown),
                false => Read::parse(o, parse_bjobs),
            }
        })]
    }

    fn cancel(&self, id: &str, graceful: bool) -> Cmd {
        match graceful && self.job_cancellation {
            true => Cmd::new("bkill", &["-s", "TERM", id]),
            false => Cmd::new("bkill", &[id]),
        }
    }

    /// `bjobs -u USER -a -noheader -o BJOBS_LIST_FORMAT` (when the passwd database names
    /// us): every job of the user, finished ones with their exit code until `CLEAN_PERIOD`
    /// (default one hour) removes them. A job that left it is asked alone (the default
    /// [`Scheduler::accounting`], `bjobs ID`): past `CLEAN_PERIOD` only `bhist` knows it,
    /// which the driver does not read.
    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        let args = [
            "-u",
            running_user()?,
            "-a",
            "-noheader",
            "-o",
            BJOBS_LIST_FORMAT,
        ];
        Some(Query::new(Cmd::new("bjobs", &args), |o| {
            match o.stdout.trim().is_empty() && no_jobs(o) {
                true => Read::Got(BTreeMap::new()),
                false => Read::table(o, parse_bjobs_list),
            }
        }))
    }

    fn spools_output(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::args::find_illegal;
    use crate::batch::scheduler::testing::{
        commands, fin, ids, out, phase, shown, submits, summary,
    };

    #[test]
    fn job_ids_are_digits() {
        let bad = ["", "-J", "--", "12 34", "1234\u{1b}[0m", "1234[1]", "x"];
        ids(valid_id, &["1234"], &bad);
    }

    #[test]
    fn bjobs_lines() {
        assert_eq!(
            parse_bjobs("PEND|-|-|New job is waiting for scheduling\n"),
            Some(queued(
                "PEND",
                Some("New job is waiting for scheduling".into())
            ))
        );
        assert_eq!(phase(parse_bjobs("RUN|-|-|-").as_ref()), "running");
        let f = fin(parse_bjobs("DONE|-|-|-"));
        assert!(f.success());
        let f = fin(parse_bjobs("EXIT|7|-|-"));
        assert_eq!((f.normal_end, f.exit_code), (true, 7));
        let f = fin(parse_bjobs(
            "EXIT|140|TERM_RUNLIMIT: job killed after reaching LSF run time limit|-",
        ));
        assert!(!f.normal_end);
        assert_eq!(f.exit_code, 140);
        assert!(f.reason.unwrap().starts_with("TERM_RUNLIMIT"));
        assert_eq!(parse_bjobs("nothing"), None);
    }

    /// `bjobs -u ci -a -noheader -o "jobid stat exit_code exit_reason pend_reason
    /// delimiter='|'"` (LSF's `-o` documentation: `-` for an empty field).
    #[test]
    fn bjobs_listing() {
        let t = "1001|RUN|-|-|-\n1002|PEND|-|-|New job is waiting for scheduling\n1003|DONE|-|-|-\n1004|EXIT|3|-|-\n";
        let m = parse_bjobs_list(t);
        assert_eq!(
            summary(&m),
            "1001 running, 1002 queued, 1003 exit 0, 1004 exit 3"
        );
        let pending = queued("PEND", Some("New job is waiting for scheduling".into()));
        assert_eq!(m["1002"].state, pending);
        assert!(fin(m["1003"].state.clone()).success());
        assert!(parse_bjobs_list("").is_empty());
        let none = CmdOutput {
            code: Some(255),
            stdout: String::new(),
            stderr: "No unfinished job found\n".into(),
        };
        assert!(no_jobs(&none));
    }

    #[test]
    fn job_name_refused_only_with_job_cancellation() {
        let args: Vec<String> = ["-n", "2", "-J", "mine"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let plain = Lsf {
            job_cancellation: false,
        };
        let named = Lsf {
            job_cancellation: true,
        };
        assert!(find_illegal(&args, plain.illegal_args()).is_none());
        assert_eq!(find_illegal(&args, named.illegal_args()).unwrap().0, "-J");
        // LSF's own multi-letter options are not mistaken for refused ones.
        let ok: Vec<String> = ["-env", "all", "-Jd", "x", "-outdir", "/d", "-c", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(find_illegal(&ok, named.illegal_args()).is_none());
        for bad in ["-o", "-oo", "-e", "-eo", "-I", "-Is", "-K", "-cwd"] {
            assert!(
                find_illegal(&[bad.to_string()], plain.illegal_args()).is_some(),
                "{bad}"
            );
        }
    }

    /// The job id in bsub's answers, the commands with and without `lsf_job_cancellation`,
    /// and how `bjobs` reads.
    #[test]
    fn commands_and_the_state_answer() {
        submits(
            parse_submit,
            &[("Job <1234> is submitted to queue <normal>.\n", "1234")],
            &[
                "Job <x> is submitted to queue <normal>.",
                "Request aborted by esub. Job not submitted.",
            ],
        );
        let (plain, named) = (
            Lsf {
                job_cancellation: false,
            },
            Lsf {
                job_cancellation: true,
            },
        );
        assert_eq!(
            commands(&plain, &["-n", "2"], "1234"),
            "bsub -o /s/build_script.lsf.out -n 2 /s/build_script-batch\n\
             bkill 1234\n\
             bkill 1234"
        );
        assert_eq!(
            commands(&named, &["-n", "2"], "1234"),
            "bsub -o /s/build_script.lsf.out -J ci-7 -n 2 /s/build_script-batch\n\
             bkill -s TERM 1234\n\
             bkill 1234"
        );
        assert!(plain.gone("Job <1234>: Job has already finished"));
        assert!(plain.gone("Job <1234>: No matching job found"));
        let q = plain.state("1234");
        assert_eq!(
            shown(&q),
            [format!("bjobs -noheader -o {BJOBS_FORMAT} 1234")]
        );
        let unknown = out(255, "", "Job <1234> is not found\n");
        assert_eq!((q[0].read)(&unknown), Read::Got(JobState::Unknown));
        let done = (q[0].read)(&out(0, "DONE|-|-|-\n", ""));
        assert!(matches!(done, Read::Got(JobState::Finished(f)) if f.success()));
    }
}
