//! PBS (Torque, PBS Pro, and Debian's `slurm-wlm-torque` wrappers over Slurm): `qsub` to
//! submit, `qstat -u USER` for the state of every job of the user at once (shared, see
//! [`super::poller`]), `qstat -f ID` for one job, `qdel` to cancel.
//!
//! `qstat -u USER` prints the "alternate" table of all three (`Job ID  Username  Queue
//! Jobname  SessID  NDS  TSK  Memory  Time  S  Time`): the job id first, the one-letter
//! state second to last. It has no exit status: a finished job listed there (Torque's `C`
//! for `keep_completed` seconds, the Slurm wrappers' `C` while Slurm keeps the job; PBS
//! Pro lists no finished job without `-x`) gets its code from the exit file, else from
//! `qstat -f ID`. Job ids are truncated in that table (PBS Pro: 15 characters without
//! `-w`) and carry the server name or not (`123` from the Slurm wrappers, `123.server`):
//! jobs are matched by their sequence number, the part before the first dot.
//!
//! PBS spools a job's output and copies it at the end, so the wrapper script writes the
//! job's output straight to the driver's file (`exec >> file 2>&1`) to stream it live, and
//! records the script's exit code in `<stage>.exit` next to it: `qstat` reports
//! `exit_status` only on some PBS flavours (not at all through the Slurm wrappers).

use std::collections::BTreeMap;

use super::args::{why, Illegal};
use super::limiter::CmdOutput;
use super::scheduler::{
    last_line_id, listed, queued, running_user, Cmd, Profile, Query, Read, Scheduler, Submission,
};
use super::{path_arg, Final, JobState, Listed};

/// The PBS scheduler (`executor = "pbs"`).
pub struct Pbs;

/// PBS's name, forms and words.
const PROFILE: Profile = Profile {
    name: "pbs",
    valid_id,
    parse_submit,
    gone: &["Unknown Job", "completed"],
    // Messages of the PBS clients (Torque, PBS Pro) for a server that is down, restarting or
    // unreachable (`pbs_connect` failures, PBSE_NOSERVER, PBSE_PROTOCOL, a dropped
    // connection): try again later, the job was not refused.
    transient: &[
        "cannot connect to server",
        "Cannot connect to default server",
        "No server to connect to",
        "Connection refused",
        "Connection timed out",
        "Communication failure",
        "End of File",
    ],
    illegal: &[
        Illegal::short('o', why::OUTPUT),
        Illegal::short('e', "the driver chooses the error file"),
        Illegal::short('j', "the driver joins the job's output itself"),
        Illegal::short('k', "the driver chooses where output is kept"),
        Illegal::short('N', why::NAME),
        Illegal::short('I', why::INTERACTIVE),
        Illegal::short('z', "the driver needs the job id qsub prints"),
    ],
};

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

/// The state in `qstat -f ID`'s answer (its first job).
pub fn parse_qstat(text: &str) -> Option<JobState> {
    let st = attr(text, "job_state")?.to_string();
    let exit = attr(text, "exit_status").and_then(|v| v.parse::<i32>().ok());
    Some(state_of(st, exit, attr(text, "comment")))
}

/// A PBS state letter with the job's `exit_status` and `comment`: `R`/`E` running, `C`
/// (Torque, the Slurm wrappers) or `F` (PBS Pro) finished, anything else (`Q`, `H`, `W`,
/// `T`, `S`, ...) queued.
fn state_of(st: String, exit: Option<i32>, comment: Option<&str>) -> JobState {
    match st.as_str() {
        "R" | "E" => JobState::Running { state: st },
        "C" | "F" => JobState::Finished(match exit {
            Some(c) if c >= 256 => {
                Final::ended(&st, 0, Some(c - 256), Some("killed by a signal".into()))
            }
            Some(c) if c < 0 => Final::ended(&st, 1, None, Some(format!("PBS error {c}"))),
            Some(c) => Final::exited(&st, c),
            None => Final::ended(&st, 1, None, Some("no exit status reported".into())),
        }),
        _ => queued(&st, comment.map(str::to_string)),
    }
}

/// The job's key in a `qstat -u` table: its sequence number (`123` of `123.server`,
/// `123[]` of an array), which survives the table's truncation.
pub fn sequence(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

/// `qstat -u USER`'s table by sequence number ([`sequence`]): rows whose first word starts
/// with a digit, the state letter second to last. Finished jobs (`C`, `F`) have no exit
/// code there (`code_unknown`); queued jobs no comment (the heartbeat shows the letter).
pub fn parse_qstat_table(stdout: &str) -> BTreeMap<String, Listed> {
    stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let id = *w.first()?;
            if w.len() < 4 || !id.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            let st = w[w.len() - 2];
            if st.len() != 1 || !st.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            let state = match state_of(st.to_string(), None, None) {
                // The listing's word for "over"; the code comes from the exit file or
                // `qstat -f` (the poller asks it when there is no exit file).
                JobState::Finished(_) => JobState::Finished(Final::ended(st, 0, None, None)),
                other => other,
            };
            let unknown = matches!(state, JobState::Finished(_));
            Some((sequence(id).to_string(), listed(state, unknown)))
        })
        .collect()
}

/// The state in `qstat [-x] -f ID`'s answer `out`: `Unknown` for Torque's and PBS's
/// PBSE_UNKJOBID (15001, exit status 153, "Unknown Job Id").
fn read_state(out: &CmdOutput) -> Read<JobState> {
    if !out.success() && (out.code == Some(153) || out.stderr.contains("Unknown Job")) {
        return Read::Got(JobState::Unknown);
    }
    Read::parse(out, parse_qstat)
}

/// PBS Pro's answer to `qstat -f ID` for a job that left the live queue: its history is
/// asked with `qstat -x -f ID` (`-x` is XML output on Torque, which never says this).
fn finished_use_x(o: &CmdOutput) -> bool {
    !o.success() && o.stderr.contains("use -x")
}

/// The job id in `qsub`'s answer: its last non-blank line, when [`valid_id`].
pub fn parse_submit(stdout: &str) -> Option<String> {
    last_line_id(stdout, valid_id)
}

/// A PBS job id as qsub prints it: the sequence number (decimal digits; `[]` after it for an
/// array: Torque's `-t`, PBS Pro's `-J`), then optionally `.` and the server's name, whose
/// dot-separated labels are letters, digits and inner hyphens (`123`, `123.server`,
/// `123[].pbs.example.org`). Nothing that could be read as an option or hold a blank or a
/// control character.
pub fn valid_id(id: &str) -> bool {
    let (seq, server) = match id.split_once('.') {
        Some((seq, server)) => (seq, Some(server)),
        None => (id, None),
    };
    let seq = seq.strip_suffix("[]").unwrap_or(seq);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    super::is_decimal_id(seq) && id.len() <= 255 && server.map_or(true, |s| s.split('.').all(label))
}

impl Scheduler for Pbs {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn submit(&self, sub: &Submission) -> Cmd {
        // The scheduler's own messages (walltime kills) go next to the output file.
        let sched_out = path_arg(&sub.output.with_extension("pbs.out"));
        let options = vec![
            "-V".to_string(),
            "-N".into(),
            sub.name.clone(),
            "-o".into(),
            sched_out.clone(),
            "-e".into(),
            sched_out,
        ];
        Cmd::submit("qsub", options, sub)
    }

    /// `qstat -f ID`; PBS Pro keeps a finished job in the server's history
    /// (`job_history_enable`), asked with `qstat -x -f ID`.
    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
        let live = Query::new(Cmd::new("qstat", &["-f", id]), |o| {
            match finished_use_x(o) {
                true => Read::Next,
                false => read_state(o),
            }
        });
        let history = Query::new(Cmd::new("qstat", &["-x", "-f", id]), read_state);
        vec![live, history]
    }

    /// qdel sends SIGTERM, then SIGKILL after the server's kill delay: graceful already.
    fn cancel(&self, id: &str, _graceful: bool) -> Cmd {
        // `--`: Torque's and PBS Pro's qdel (getopt) and the Slurm wrapper's
        // (Getopt::Long) take what follows as job ids, never options.
        Cmd::new("qdel", &["--", id])
    }

    /// `qstat -u USER` (when the passwd database names us): the same table on Torque, PBS
    /// Pro and the Slurm wrappers (which print nothing and exit 0 when the user has no
    /// job). Jobs that leave it are asked one by one (the default
    /// [`Scheduler::accounting`]): Torque keeps no history past `keep_completed`, PBS Pro's
    /// `qstat -x -f` ([`Scheduler::state`] falls back to it) cannot be asked in one command
    /// that Torque and the wrappers understand.
    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        let qstat = Cmd::new("qstat", &["-u", running_user()?]);
        Some(Query::new(qstat, |o| Read::table(o, parse_qstat_table)))
    }

    fn listing_id(&self, id: &str) -> String {
        sequence(id).to_string()
    }

    fn spools_output(&self) -> bool {
        true
    }

    fn final_from_files(&self, sub: &Submission, id: &str) -> Option<Final> {
        super::wrapper::read_exit_file(&exit_file(&sub.output), id)
            .map(|r| Final::exited("C", r.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::scheduler::testing::{commands, fin, ids, out, shown};
    use std::path::Path;

    #[test]
    fn job_ids_are_a_sequence_number_and_a_server_name() {
        let good = [
            "123",
            "123.server",
            "123.pbs-1.example.org",
            "123[]",
            "123[].server",
            "4567.Head-Node01",
        ];
        for id in good {
            assert_eq!(parse_submit(&format!("{id}\n")).as_deref(), Some(id));
        }
        let bad = [
            "",
            "-W",
            "--",
            "-Wforce",
            "server.123",
            "123.",
            "123..server",
            "123.-server",
            "123.server-",
            "123.ser ver",
            "123.ser_ver",
            "123[1]",
            "[].server",
            "123.server\u{1b}[31m",
            "123\u{1b}[31m",
            "123.server/x",
        ];
        ids(valid_id, &good, &bad);
        assert!(!valid_id(&format!("1.{}", "a".repeat(64))));
        assert!(!valid_id(&format!("1.{}", ["a"; 200].join("."))));
    }

    #[test]
    fn qstat_answers() {
        let t = "Job Id: 30\n\tJob_Name = ci-1\n\tjob_state = R\n";
        assert_eq!(
            parse_qstat(t),
            Some(JobState::Running { state: "R".into() })
        );
        let t = "Job Id: 31.srv\n    job_state = C\n    exit_status = 7\n";
        let f = fin(parse_qstat(t));
        assert_eq!((f.exit_code, f.success()), (7, false));
        let t = "job_state = F\nExit_status = 271\n";
        let f = fin(parse_qstat(t));
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

    fn letter(l: &Listed) -> (String, bool) {
        match &l.state {
            JobState::Queued { state, .. } | JobState::Running { state } => (state.clone(), false),
            JobState::Finished(f) => (f.state.clone(), l.code_unknown),
            JobState::Unknown => ("?".into(), false),
        }
    }

    /// Debian's slurm-wlm-torque `qstat -u USER` (print_job_select in /usr/bin/qstat: a
    /// blank line, `host:`, two header lines, a rule, then one row per job, ids without
    /// server).
    #[test]
    fn qstat_u_table_of_the_slurm_wrappers() {
        // Trailing blanks as the Perl printf leaves them.
        let t = "\nvm:\n                                                                               Req'd  Req'd   Elap \nJob id               Username Queue    Name                 SessID NDS   TSK   Memory Time Use S Time \n-------------------- -------- -------- -------------------- ------ ----- ----- ------ ----- - -----\n41                   jacamar- debug    ci-1 with spaces     --         1     1     -- 00:05 Q 00:00\n42                   jacamar- debug    ci-2                 --         1     1     -- 00:05 R 00:00\n43                   jacamar- debug    ci-3                 --         1     1     -- 00:05 C 00:00\n";
        let m = parse_qstat_table(t);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(letter(&m["41"]), ("Q".into(), false));
        assert!(matches!(m["41"].state, JobState::Queued { .. }));
        assert_eq!(letter(&m["42"]), ("R".into(), false));
        assert!(matches!(m["42"].state, JobState::Running { .. }));
        assert_eq!(letter(&m["43"]), ("C".into(), true));
        let f = fin(m["43"].state.clone());
        assert!(
            !f.normal_end,
            "a listed end is the scheduler's word, not the code"
        );
        assert!(parse_qstat_table("").is_empty());
    }

    /// Torque's `qstat -a -u USER` (the alternate format of its qstat(1): ids with the
    /// server, `C` for completed jobs kept `keep_completed` seconds).
    #[test]
    fn qstat_u_table_of_torque() {
        let t = "
torque.example.org:
                                                                                  Req'd       Req'd       Elap
Job ID                  Username    Queue    Jobname          SessID  NDS   TSK   Memory      Time    S   Time
----------------------- ----------- -------- ---------------- ------ ----- ------ --------- --------- - ---------
4807.torque.example.or  ci          batch    ci-1              12345     1      1       --   01:00:00 R  00:00:05
4808.torque.example.or  ci          batch    ci-2                 --     1      1       --   01:00:00 Q       --
4809.torque.example.or  ci          batch    ci-3              12399     1      1       --   01:00:00 C  00:00:09
";
        let m = parse_qstat_table(t);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["4807", "4808", "4809"],
            "{m:?}"
        );
        assert_eq!(letter(&m["4807"]), ("R".into(), false));
        assert_eq!(letter(&m["4808"]), ("Q".into(), false));
        assert_eq!(letter(&m["4809"]), ("C".into(), true));
        assert_eq!(Pbs.listing_id("4809.torque.example.org"), "4809");
    }

    /// PBS Pro's `qstat -u USER` (its reference guide's alternate format: ids truncated
    /// to 15 characters, `H` held; finished jobs appear only with `-x`, as `F`).
    #[test]
    fn qstat_u_table_of_pbs_pro() {
        let t = "
pbspro1:
                                                            Req'd  Req'd   Elap
Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time
--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----
1201.pbspro1    ci       workq    ci-1          --    1   1    --    --  H   --
1202.pbspro1    ci       workq    ci-2        4321    1   1   1gb  01:00 R 00:01
1203[].pbspro1  ci       workq    ci-3          --    1   1    --    --  F   --
";
        let m = parse_qstat_table(t);
        assert_eq!(letter(&m["1201"]), ("H".into(), false));
        assert!(matches!(m["1201"].state, JobState::Queued { .. }));
        assert_eq!(letter(&m["1202"]), ("R".into(), false));
        assert_eq!(letter(&m["1203[]"]), ("F".into(), true));
        assert_eq!(Pbs.listing_id("1203[].pbspro1"), "1203[]");
    }

    #[test]
    fn pbs_pro_history_is_asked_with_x() {
        let finished = out(
            35,
            "",
            "qstat: 1201.pbspro1 Job has finished, use -x or -H to obtain historical job information",
        );
        let unknown = out(153, "", "qstat: Unknown Job Id 12.srv");
        assert!(finished_use_x(&finished));
        assert!(!finished_use_x(&unknown));
        assert_eq!(read_state(&unknown), Read::Got(JobState::Unknown));
        let q = Pbs.state("1201.pbspro1");
        assert_eq!(
            shown(&q),
            ["qstat -f 1201.pbspro1", "qstat -x -f 1201.pbspro1"]
        );
        assert_eq!((q[0].read)(&finished), Read::Next);
        assert_eq!((q[0].read)(&unknown), Read::Got(JobState::Unknown));
        let history = out(
            0,
            "Job Id: 1201.pbspro1\n    job_state = F\n    Exit_status = 0\n",
            "",
        );
        assert!(matches!((q[1].read)(&history), Read::Got(JobState::Finished(f)) if f.success()));
        assert_eq!((q[1].read)(&out(0, "garbage", "")), Read::Unreadable);
    }

    #[test]
    fn failures_are_transient_in_pbs_words_only() {
        for e in [
            "qstat: cannot connect to server srv (errno=111) Connection refused",
            "Cannot connect to default server host 'srv' - check pbs_server daemon.",
            "qsub: End of File",
        ] {
            assert!(Pbs.transient(e), "{e}");
        }
        for e in [
            "qsub: Unknown queue MSG=requested queue not found",
            "qsub: Job exceeds queue resource limits",
        ] {
            assert!(!Pbs.transient(e), "{e}");
        }
    }

    #[test]
    fn submit_and_cancel_commands() {
        assert_eq!(
            commands(&Pbs, &["-l", "walltime=1:00:00"], "12.srv"),
            "qsub -V -N ci-7 -o /s/build_script.pbs.out -e /s/build_script.pbs.out -l walltime=1:00:00 /s/build_script-batch\n\
             qdel -- 12.srv\n\
             qdel -- 12.srv"
        );
        assert!(Pbs.gone("qdel: Unknown Job Id 12.srv"));
        assert!(Pbs
            .wrapper(Path::new("/s/o"), &[])
            .contains("exec >>'/s/o' 2>&1"));
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
