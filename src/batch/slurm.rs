//! Slurm: `sbatch --parsable` to submit, `scancel` to cancel. States: the user's jobs in one
//! `squeue --me -t all` per period (shared, see [`super::poller`]), one multi-id `sacct` for
//! the jobs purged from the controller (MinJobAge); `scontrol show job` (falling back to
//! `sacct`) for one job alone (cancel confirmation, cleanup, and a poller that could not
//! share).

use std::collections::BTreeMap;

use std::time::Duration;

use super::args::{why, Illegal};
use super::limiter::CmdOutput;
use super::scheduler::{
    any_word, queued, Accounting, Cmd, Profile, Query, Read, Scheduler, States, Steps, Submission,
};
use super::{exit_code_of, fmt_dur, Final, JobState, Listed};

/// The Slurm scheduler (`executor = "slurm"` or `"sbatch"`).
pub struct Slurm;

/// Slurm's name, forms and words.
const PROFILE: Profile = Profile {
    name: "slurm",
    valid_id,
    parse_submit,
    gone: &["already completing or completed", "Invalid job id"],
    // Messages of a Slurm client that mean "try again later", not "your job failed".
    transient: &[
        "Unable to contact slurm controller",
        "Socket timed out",
        "Connection refused",
        "Zero Bytes were transmitted",
        "temporarily unable",
        "Resource temporarily unavailable",
        "Communication connection failure",
        "Slurm backup controller in standby mode",
    ],
    illegal: &[
        Illegal::both('o', "--output", why::OUTPUT),
        Illegal::both('e', "--error", why::STDERR),
        Illegal::both('i', "--input", why::INPUT),
        Illegal::both('J', "--job-name", why::NAME),
        Illegal::both('W', "--wait", why::WAIT),
        Illegal::both('D', "--chdir", why::WORKDIR),
        Illegal::long("--wrap", "the driver submits the CI job's script"),
        Illegal::long("--parsable", "the driver reads sbatch's answer itself"),
        Illegal::long("--test-only", why::NEVER_RUNS),
        Illegal::long("--uid", why::USER),
        Illegal::long("--gid", why::USER),
        Illegal::long("--export-file", "the driver controls the job's environment"),
    ],
};

/// The id in `sbatch --parsable`'s answer (`42` or `42;cluster`): a plain job id, also for
/// an array or heterogeneous submission (their `N_M` and `N+M` forms name a task or a
/// component, which sbatch never prints), so [`valid_id`].
pub fn parse_submit(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let id = line.trim().split(';').next()?.trim();
    valid_id(id).then(|| id.to_string())
}

/// A Slurm job id as the driver records it: decimal digits.
pub fn valid_id(id: &str) -> bool {
    super::is_decimal_id(id)
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
        | "STOPPED" | "CONFIGURING" | "RESIZING" => queued(&state, reason),
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

/// The per-user listing: every job of the user, finished ones too while the controller
/// keeps them (MinJobAge), with the fields the poller needs: id, state, reason, expected
/// start. Never `-j a,b,c`: a multi-id squeue loads the whole job table.
pub const SQUEUE_ARGS: &[&str] = &["--me", "-h", "-t", "all", "-o", "%i|%T|%r|%S"];

/// `squeue -o '%i|%T|%r|%S'`'s lines by id. Final states have no exit code there
/// (`code_unknown`); `%S` is kept for a queued job when it is a time.
pub fn parse_squeue(stdout: &str) -> BTreeMap<String, Listed> {
    let mut jobs = BTreeMap::new();
    for line in stdout.lines() {
        let mut f = line.split('|');
        let (Some(id), Some(state)) = (f.next(), f.next()) else {
            continue;
        };
        let (reason, start) = (f.next(), f.next());
        let id = id.trim();
        if id.is_empty() {
            continue;
        }
        let mut state = classify(state, reason, None);
        let start = start
            .map(str::trim)
            .filter(|s| !s.is_empty() && !matches!(*s, "N/A" | "Unknown" | "NONE"))
            .filter(|_| matches!(state, JobState::Queued { .. }))
            .map(str::to_string);
        // The queue-aware heartbeat shows it while the job waits.
        if let JobState::Queued { expected_start, .. } = &mut state {
            expected_start.clone_from(&start);
        }
        jobs.insert(
            id.to_string(),
            Listed {
                code_unknown: matches!(state, JobState::Finished(_)),
                state,
                expected_start: start,
            },
        );
    }
    jobs
}

/// Every answer of `sacct -n -P -o JobID,State,ExitCode` by id.
pub fn parse_sacct_all(stdout: &str) -> BTreeMap<String, JobState> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let (jid, state, exit) = (f.next()?.trim(), f.next()?, f.next());
            (!jid.is_empty()).then(|| (jid.to_string(), classify(state, None, exit)))
        })
        .collect()
}

/// A Slurm time limit (`--time`): `minutes`, `minutes:seconds`, `hours:minutes:seconds`,
/// `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`; `INFINITE` and
/// `UNLIMITED` are [`Duration::MAX`]. `None`: not a time limit Slurm would accept.
pub fn parse_time_limit(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("infinite") || s.eq_ignore_ascii_case("unlimited") {
        return Some(Duration::MAX);
    }
    let num = |p: &str| -> Option<u64> {
        (!p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, s),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    let (d, h, m, sec) = match (days, parts.as_slice()) {
        (None, [m]) => (0, 0, *m, 0),
        (None, [m, sec]) => (0, 0, *m, *sec),
        (None, [h, m, sec]) => (0, *h, *m, *sec),
        (Some(d), [h]) => (d, *h, 0, 0),
        (Some(d), [h, m]) => (d, *h, *m, 0),
        (Some(d), [h, m, sec]) => (d, *h, *m, *sec),
        _ => return None,
    };
    // Too many seconds for u64: no limit Slurm would accept either.
    let secs = d
        .checked_mul(86400)?
        .checked_add(h.checked_mul(3600)?)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(sec)?;
    Some(Duration::from_secs(secs))
}

/// A `--begin` of the form `now+N[units]` (seconds by default; `minutes`, `hours`,
/// `days`, `weeks`) as the delay from now; `now` is zero. `None` for any other form
/// (absolute dates and times, which we do not compare).
pub fn parse_begin(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix("now")?;
    if rest.is_empty() {
        return Some(Duration::ZERO);
    }
    let rest = rest.strip_prefix('+')?;
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let n: u64 = rest[..digits].parse().ok()?;
    let unit = match rest[digits..].to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "min" | "mins" | "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86400,
        "week" | "weeks" => 7 * 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(unit)?))
}

/// The value of the last `--long=V`, `--long V`, `-sV` or `-s V` in `args`.
fn option_value<'a>(args: &'a [String], short: &str, long: &str) -> Option<&'a str> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            found = Some(v);
        } else if a == long || a == short {
            found = it.next().map(String::as_str);
        } else if let Some(v) = a.strip_prefix(short).filter(|v| !v.is_empty()) {
            found = Some(v);
        }
    }
    found
}

/// `--deadline=now+N` for a CI job that ends `left` from now, N = `left` + `grace` (our
/// `kill_timeout`: a job still running at the CI job's end gets our graceful cancel, which
/// Slurm's deadline kill must not cut short) rounded up to whole minutes, plus 30 s (Slurm
/// cuts the time limit of a job without `--time` to the whole minutes before the deadline,
/// and drops one with less than a minute at once), given the user's `args`, with the notes
/// for the log. Nothing is added when the user set `--deadline`, when less than a second is
/// left, when `--time` asks for more than is left (a warning: Slurm would
/// remove the job at once as unable to end before its deadline, although it may well end
/// sooner), or when `--begin` is not `now+N` or is past the CI job's end (sbatch refuses a
/// begin after the deadline; the batch run removes a job still queued at the CI job's end).
pub fn deadline_args(
    args: &[String],
    left: Duration,
    grace: Duration,
) -> (Vec<String>, Vec<String>) {
    let none = |note: Option<String>| (Vec::new(), note.into_iter().collect());
    if option_value(args, "--deadline", "--deadline").is_some() || left < Duration::from_secs(1) {
        return none(None);
    }
    let left_text = fmt_dur(left);
    if let Some(t) = option_value(args, "-t", "--time") {
        match parse_time_limit(t) {
            Some(d) if d > left => {
                return none(Some(format!(
                    "WARNING: --time={t} is longer than the {left_text} this CI job has left (CI_JOB_TIMEOUT): the CI timeout will stop the job first; no --deadline is passed, Slurm would remove the job at once"
                )))
            }
            _ => {}
        }
    }
    if let Some(b) = option_value(args, "-b", "--begin") {
        match parse_begin(b) {
            Some(d) if d < left => {}
            _ => {
                return none(Some(format!(
                    "slurm: no --deadline is passed: --begin={b} is not before the CI job's end ({left_text} left)"
                )))
            }
        }
    }
    // Slurm cuts a job's time limit to the whole minutes before its deadline, and drops
    // a job at once when that is less than one: whole minutes, and half a minute for the
    // submission's own latency.
    let secs = (left + grace).as_secs().div_ceil(60) * 60 + 30;
    (
        vec![format!("--deadline=now+{secs}")],
        vec![format!(
            "slurm: --deadline=now+{secs} (the CI job's end, {left_text} from now, plus kill_timeout {})",
            fmt_dur(grace)
        )],
    )
}

/// The `--format` of every `sacct` the driver reads.
const SACCT_FORMAT: &str = "--format=JobID,State,ExitCode";

/// The `sacct` query of `ids` (comma-separated) in the accounting database (`-X`: the
/// allocations only) or, `completion_log`, in the completion log (`-c`, where there is no
/// accounting database).
fn sacct(ids: &str, completion_log: bool) -> Cmd {
    let from = if completion_log { "-c" } else { "-X" };
    Cmd::new("sacct", &[from, "-n", "-P", SACCT_FORMAT, "-j", ids])
}

/// A step id as `srun -v` prints it and the driver records it: `<job id>.<step>`, both
/// decimal (the step part at most 10 digits).
pub fn valid_step_id(id: &str) -> bool {
    match id.split_once('.') {
        Some((job, step)) => {
            valid_id(job)
                && !step.is_empty()
                && step.len() <= 10
                && step.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// The step in `srun -v`'s `srun: launching StepId=1315.0 on host vm, 1 tasks: 0`.
pub fn parse_step_line(line: &str) -> Option<String> {
    let rest = line.split_once("launching StepId=")?.1;
    let id = rest.split_whitespace().next()?;
    valid_step_id(id).then(|| id.to_string())
}

/// `(uid, name, state)` in `scontrol show job -o ID`'s line: `UserId=alice(1001)`,
/// `JobName=...`, `JobState=...`.
pub fn parse_owner(stdout: &str) -> Option<(u32, String, JobState)> {
    let line = stdout.lines().find(|l| l.contains("JobState="))?;
    let user = field(line, "UserId")?;
    let uid = user.rsplit_once('(')?.1.strip_suffix(')')?.parse().ok()?;
    let name = field(line, "JobName")?.to_string();
    Some((uid, name, parse_scontrol(line)?))
}

impl Steps for Slurm {
    fn submit_holder(
        &self,
        name: &str,
        output: &std::path::Path,
        dir: &std::path::Path,
        args: &[String],
        holder: &std::path::Path,
    ) -> Cmd {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--output={}", super::path_arg(output)),
            format!("--chdir={}", super::path_arg(dir)),
        ];
        a.extend(args.iter().cloned());
        a.push(super::path_arg(holder));
        Cmd {
            tool: "sbatch",
            args: a,
        }
    }

    /// `srun -v --jobid=ID --overlap -N1 -n1 --job-name=ci-7 --output=OUT --chdir=WD
    /// [--time=M] SCRIPT`: `-v` for the step id on srun's stderr; `--overlap` so that the
    /// steps of concurrent CI jobs (and the user's own `srun` inside them) share the
    /// allocation's CPUs; options on the command line win over the `SLURM_*` input
    /// variables of the job's environment (docs/allocations-facts.md).
    fn step(&self, alloc: &str, sub: &Submission, minutes: Option<u64>) -> Cmd {
        let mut a = vec![
            "-v".to_string(),
            format!("--jobid={alloc}"),
            "--overlap".to_string(),
            "-N1".to_string(),
            "-n1".to_string(),
            format!("--job-name={}", sub.name),
            format!("--output={}", super::path_arg(&sub.output)),
            format!("--chdir={}", super::path_arg(&sub.workdir)),
        ];
        if let Some(m) = minutes {
            a.push(format!("--time={m}"));
        }
        a.push(super::path_arg(&sub.script));
        Cmd {
            tool: "srun",
            args: a,
        }
    }

    fn parse_step(&self, line: &str) -> Option<String> {
        parse_step_line(line)
    }

    fn cancel_step(&self, step: &str, graceful: bool) -> Cmd {
        match graceful {
            true => Cmd::new("scancel", &["--signal=TERM", "--full", "--", step]),
            false => Cmd::new("scancel", &["--", step]),
        }
    }

    /// `squeue --me -h -s -o %i|%j` (`--name` does not filter steps: the caller does).
    fn list_steps(&self) -> Cmd {
        Cmd::new("squeue", &["--me", "-h", "-s", "-o", "%i|%j"])
    }

    fn parse_steps(&self, stdout: &str) -> Vec<(String, String)> {
        stdout
            .lines()
            .filter_map(|l| {
                let (id, name) = l.split_once('|')?;
                let id = id.trim();
                valid_step_id(id).then(|| (id.to_string(), name.trim().to_string()))
            })
            .collect()
    }

    fn describe(&self, id: &str) -> Cmd {
        Cmd::new("scontrol", &["show", "job", "-o", "--", id])
    }

    fn parse_owner(&self, stdout: &str) -> Option<(u32, String, JobState)> {
        parse_owner(stdout)
    }

    fn allocation_gone(&self, stderr: &str) -> bool {
        any_word(
            stderr,
            &[
                "has expired",
                "Expired or invalid job",
                "Invalid job id",
                "already completing or completed",
                "Job has already finished",
            ],
        )
    }
}

impl Scheduler for Slurm {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn steps(&self) -> Option<&dyn Steps> {
        Some(self)
    }

    fn submit(&self, sub: &Submission) -> Cmd {
        let options = sub.long_options("--parsable", ["--job-name", "--output", "--chdir"]);
        Cmd::submit("sbatch", options, sub)
    }

    /// `scontrol show job` while the controller holds the job; once it purged the job
    /// (`Invalid job id`), the accounting, then the completion log.
    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
        // `--`: scontrol (getopt) takes what follows as operands, never options.
        let scontrol = Cmd::new("scontrol", &["show", "job", "-o", "--", id]);
        let live = Query::new(scontrol, |o| {
            if !o.success() && o.stderr.contains("Invalid job id") {
                return Read::Next;
            }
            match Read::parse(o, parse_scontrol) {
                Read::Got(JobState::Unknown) => Read::Next,
                r => r,
            }
        });
        let purged = |completion_log| {
            Query::new(sacct(id, completion_log), move |o: &CmdOutput| {
                match o.success().then(|| parse_sacct(&o.stdout, id)).flatten() {
                    Some(st) => Read::Got(st),
                    None => Read::Next,
                }
            })
        };
        vec![live, purged(false), purged(true)]
    }

    fn cancel(&self, id: &str, graceful: bool) -> Cmd {
        // `--`: scancel (getopt) takes what follows as job ids, never options.
        match graceful {
            true => Cmd::new("scancel", &["--signal=TERM", "--full", "--", id]),
            false => Cmd::new("scancel", &["--", id]),
        }
    }

    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        let squeue = Cmd::new("squeue", SQUEUE_ARGS);
        Some(Query::new(squeue, |o| Read::table(o, parse_squeue)))
    }

    /// One `sacct -j a,b,c` for all of `missing` (a multi-id query of the accounting
    /// database, by its index; the restriction on multi-id queries is squeue's), then one
    /// `sacct -c` (the completion log, where there is no accounting database) for those
    /// still missing. Only a transient failure of the first is an error.
    fn accounting(&self, missing: &[&str], step: usize) -> Accounting {
        if step > 1 {
            return Accounting::Done;
        }
        let first = step == 0;
        Accounting::Ask(Query::new(sacct(&missing.join(","), !first), move |o| {
            if o.success() {
                Read::Got(parse_sacct_all(&o.stdout))
            } else if first && any_word(&o.stderr, PROFILE.transient) {
                Read::Failed
            } else {
                Read::Got(States::new())
            }
        }))
    }

    /// Slurm's word with the wrapper's code: `FAILED` with a code is an ordinary failure.
    fn with_exit_code(&self, f: &Final, code: i32) -> Final {
        match classify(&f.state, f.reason.as_deref(), Some(&format!("{code}:0"))) {
            JobState::Finished(g) => g,
            _ => Final {
                exit_code: code,
                ..f.clone()
            },
        }
    }

    fn deadline_args(
        &self,
        args: &[String],
        left: Duration,
        grace: Duration,
    ) -> (Vec<String>, Vec<String>) {
        deadline_args(args, left, grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::scheduler::testing::{commands, fin, ids, out, shown, submits};

    #[test]
    fn job_ids_are_digits() {
        ids(
            valid_id,
            &["1", "42", "18446744073709551615"],
            &[
                "",
                "--uid=0",
                "-u",
                "42_1",
                "42+1",
                "4 2",
                "7\u{1b}[31m",
                "123456789012345678901",
                "+42",
                "42;ci",
            ],
        );
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
            Some(queued("PENDING", Some("Resources".into())))
        );
        let l = "JobId=7 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15";
        let f = fin(parse_scontrol(l));
        assert!(!f.success());
        assert_eq!(f.exit_code, 143);
        assert_eq!(f.reason.as_deref(), Some("TimeLimit"));
        let l = "JobId=8 JobState=COMPLETED Reason=None ExitCode=0:0";
        let f = fin(parse_scontrol(l));
        assert!(f.success());
        let l = "JobId=9 JobState=FAILED Reason=JobLaunchFailure ExitCode=0:0";
        let f = fin(parse_scontrol(l));
        assert!(!f.success() && f.exit_code == 0);
        assert_eq!(parse_scontrol("nothing"), None);
    }

    #[test]
    fn squeue_listing() {
        let out = "41|PENDING|Resources|2031-01-01T10:00:00\n42|RUNNING|None|2025-01-01T09:00:00\n43|FAILED|NonZeroExitCode|2025-01-01T08:00:00\n44|PENDING|Priority|N/A\n\n";
        let l = parse_squeue(out);
        assert_eq!(l.len(), 4);
        assert_eq!(
            l["41"].expected_start.as_deref(),
            Some("2031-01-01T10:00:00")
        );
        assert!(matches!(
            &l["41"].state,
            JobState::Queued { expected_start: Some(t), .. } if t == "2031-01-01T10:00:00"
        ));
        assert!(!l["41"].code_unknown);
        assert_eq!(l["42"].expected_start, None, "only a queued job's start");
        assert!(l["43"].code_unknown);
        assert_eq!(l["44"].expected_start, None);
        let f = Final {
            reason: Some("NonZeroExitCode".into()),
            ..Final::ended("FAILED", 0, None, None)
        };
        let g = Slurm.with_exit_code(&f, 7);
        assert!(g.normal_end && g.exit_code == 7, "{g:?}");
        let t = Slurm.with_exit_code(&Final::ended("TIMEOUT", 0, None, None), 143);
        assert!(!t.normal_end && t.exit_code == 143 && t.state == "TIMEOUT");
        let all = parse_sacct_all("5|COMPLETED|0:0\n6|FAILED|7:0\n");
        assert_eq!(all.len(), 2);
        assert!(matches!(&all["6"], JobState::Finished(f) if f.exit_code == 7));
    }

    #[test]
    fn time_limits_and_begins() {
        let m = |s| parse_time_limit(s).map(|d| d.as_secs());
        assert_eq!(m("90"), Some(5400));
        assert_eq!(m("1:30"), Some(90));
        assert_eq!(m("1:00:05"), Some(3605));
        assert_eq!(m("2-1"), Some(2 * 86400 + 3600));
        assert_eq!(m("1-0:10"), Some(86400 + 600));
        assert_eq!(m("1-0:0:7"), Some(86407));
        assert_eq!(parse_time_limit("UNLIMITED"), Some(Duration::MAX));
        assert_eq!(m("1:2:3:4"), None);
        assert_eq!(m("soon"), None);
        let b = |s| parse_begin(s).map(|d| d.as_secs());
        assert_eq!(b("now+300"), Some(300));
        assert_eq!(b("now+2hours"), Some(7200));
        assert_eq!(b("now"), Some(0));
        assert_eq!(b("16:00"), None);
        assert_eq!(b("now+5fortnights"), None);
    }

    /// Found by fuzzing (fuzz/fuzz_targets/sched.rs, with fuzz/dict/sched.dict): minutes,
    /// hours or days whose seconds overflow u64 panicked in a debug build and wrapped to a
    /// short limit in a release build. Slurm refuses such a `--time`: not a time limit.
    #[test]
    fn fuzz_time_limit_overflow_is_no_time_limit() {
        let overflows = [
            "400000000000000000",
            "999999999999999999:0",
            "5124095576030432:0:0",
            "213503982334602-0",
            "1-18446744073709551615",
        ];
        assert_eq!(overflows.map(parse_time_limit), [None; 5]);
    }

    /// Found while writing fuzz/fuzz_targets/sched.rs (its dictionary's boundary values): a
    /// signal number near i32::MAX in `ExitCode=0:N` (sacct, scontrol) overflowed 128 + N.
    /// The job still reads as failed, with the largest exit code.
    #[test]
    fn fuzz_huge_signal_in_exit_code() {
        let all = parse_sacct_all(
            std::str::from_utf8(
                b"5|FAILED|0:2147483647
",
            )
            .unwrap(),
        );
        let f = fin(all["5"].clone());
        assert!(!f.success() && f.exit_code == i32::MAX, "{f:?}");
        let st = parse_scontrol("JobId=5 JobState=CANCELLED Reason=None ExitCode=0:2147483647");
        assert!(matches!(st, Some(JobState::Finished(f)) if f.exit_code == i32::MAX));
    }

    #[test]
    fn the_deadline_and_its_warnings() {
        let a = |v: &[&str]| crate::batch::s(v);
        let hour = Duration::from_secs(3600);
        const G: Duration = Duration::from_secs(120);
        let (args, notes) = deadline_args(&a(&["-N", "1"]), hour, G);
        assert_eq!(args, ["--deadline=now+3750"]);
        // Never less than 90 s: Slurm drops a job whose deadline leaves less than a minute.
        let (args, _) = deadline_args(&[], Duration::from_secs(4), Duration::from_secs(5));
        assert_eq!(args, ["--deadline=now+90"]);
        assert!(notes[0].contains("the CI job's end"), "{notes:?}");
        // --time longer than what is left: a warning, no deadline.
        for t in [
            &["--time=2:00:00"][..],
            &["-t", "61"],
            &["-t61"],
            &["--time", "1-0"],
        ] {
            let (args, notes) = deadline_args(&a(t), hour, G);
            assert!(args.is_empty(), "{t:?}");
            assert!(notes[0].starts_with("WARNING: --time="), "{notes:?}");
            assert!(notes[0].contains("1h00m this CI job has left"), "{notes:?}");
        }
        let (args, _) = deadline_args(&a(&["--time=59"]), hour, G);
        assert_eq!(args.len(), 1);
        // --begin: within the CI job's time keeps the deadline, after it or unreadable not.
        assert_eq!(deadline_args(&a(&["--begin=now+30"]), hour, G).0.len(), 1);
        let (args, notes) = deadline_args(&a(&["--begin=now+300"]), Duration::from_secs(20), G);
        assert!(args.is_empty());
        assert!(
            notes[0].contains("--begin=now+300 is not before"),
            "{notes:?}"
        );
        assert!(deadline_args(&a(&["-b", "tomorrow"]), hour, G).0.is_empty());
        // The user's own deadline is kept; no time left: nothing.
        assert_eq!(
            deadline_args(&a(&["--deadline=now+5"]), hour, G),
            (vec![], vec![])
        );
        assert!(deadline_args(&[], Duration::from_millis(400), G)
            .0
            .is_empty());
    }

    #[test]
    fn sacct_lines() {
        let text = "12|CANCELLED by 1001|0:0\n";
        let f = fin(parse_sacct(text, "12"));
        assert_eq!(f.state, "CANCELLED");
        assert_eq!(parse_sacct(text, "13"), None);
        assert!(parse_sacct("14|RUNNING|0:0", "14").unwrap().is_active());
    }

    /// The commands, the job id in sbatch's answers, and how the state chain reads recorded
    /// answers: `scontrol` while the controller holds the job, the accounting (`sacct -X`),
    /// then the completion log (`sacct -c`) once it purged it.
    #[test]
    fn commands_and_the_state_chain() {
        assert_eq!(
            commands(&Slurm, &["-N", "1"], "42"),
            "sbatch --parsable --job-name=ci-7 --output=/s/build_script.out --chdir=/w -N 1 /s/build_script-batch\n\
             scancel --signal=TERM --full -- 42\n\
             scancel -- 42"
        );
        submits(
            parse_submit,
            &[("42\n", "42"), ("warning\n43;ci\n", "43")],
            &["", "Submitted batch job 4", "--uid=0\n"],
        );
        let q = Slurm.state("42");
        assert_eq!(
            shown(&q),
            [
                "scontrol show job -o -- 42",
                "sacct -X -n -P --format=JobID,State,ExitCode -j 42",
                "sacct -c -n -P --format=JobID,State,ExitCode -j 42"
            ]
        );
        let purged = out(1, "", "slurm_load_jobs error: Invalid job id specified");
        assert_eq!((q[0].read)(&purged), Read::Next);
        let down = out(
            1,
            "",
            "slurm_load_jobs error: Unable to contact slurm controller",
        );
        assert_eq!((q[0].read)(&down), Read::Failed);
        assert!(Slurm.transient(&down.stderr));
        let running = out(
            0,
            "JobId=42 JobState=RUNNING Reason=None ExitCode=0:0\n",
            "",
        );
        assert!(matches!(
            (q[0].read)(&running),
            Read::Got(JobState::Running { .. })
        ));
        assert_eq!((q[1].read)(&out(0, "", "")), Read::Next);
        let done = out(0, "42|COMPLETED|0:0\n", "");
        assert!(matches!((q[2].read)(&done), Read::Got(JobState::Finished(f)) if f.success()));
        assert!(Slurm.gone(
            "scancel: error: Kill job error on job id 42: Job/step already completing or completed"
        ));
    }

    /// The accounting of jobs that left the listing: `sacct -X` for all, `sacct -c` for
    /// those still missing; only a transient failure of the first is an error.
    #[test]
    fn accounting_asks_the_database_then_the_completion_log() {
        let Accounting::Ask(first) = Slurm.accounting(&["5", "6"], 0) else {
            panic!()
        };
        assert_eq!(
            first.cmd.display(),
            "sacct -X -n -P --format=JobID,State,ExitCode -j 5,6"
        );
        let down = out(
            1,
            "",
            "sacct: error: Socket timed out on send/recv operation",
        );
        assert_eq!((first.read)(&down), Read::Failed);
        let no_db = out(1, "", "Slurm accounting storage is disabled\n");
        assert_eq!((first.read)(&no_db), Read::Got(States::new()));
        let Accounting::Ask(second) = Slurm.accounting(&["6"], 1) else {
            panic!()
        };
        assert_eq!(
            second.cmd.display(),
            "sacct -c -n -P --format=JobID,State,ExitCode -j 6"
        );
        assert_eq!((second.read)(&down), Read::Got(States::new()));
        assert!(matches!(Slurm.accounting(&["6"], 2), Accounting::Done));
    }

    #[test]
    fn step_lines_ids_and_owner_read_as_slurm_prints_them() {
        // srun -v's stderr (docs/allocations-facts.md, section 2).
        let line = "srun: launching StepId=1315.0 on host vm, 1 tasks: 0";
        assert_eq!(parse_step_line(line).as_deref(), Some("1315.0"));
        for bad in [
            "srun: jobid 1315: nodes(1):`vm', cpu counts: 1(x1)",
            "srun: launching StepId=1315 on host vm",
            "srun: launching StepId=--uid=0.1 on host vm",
            "srun: launching StepId=1315.0x on host vm",
            "srun: launching StepId=1315.12345678901 on host vm",
        ] {
            assert_eq!(parse_step_line(bad), None, "{bad}");
        }
        ids(
            valid_step_id,
            &["1.0", "1312.16"],
            &["1312", ".1", "1312.", "a.1", "1.-1"],
        );
        let sc = "JobId=1469 JobName=jacamar-alloc-1588971a439f3994 UserId=jrs_a20a(1094) GroupId=jrs_a20a(1094) JobState=RUNNING Reason=None ExitCode=0:0";
        let (uid, name, st) = parse_owner(sc).unwrap();
        assert_eq!(
            (uid, name.as_str()),
            (1094, "jacamar-alloc-1588971a439f3994")
        );
        assert!(matches!(st, JobState::Running { .. }), "{st:?}");
        assert_eq!(
            parse_owner("JobId=1 JobName=x UserId=alice JobState=RUNNING"),
            None
        );
        let steps = Slurm.parse_steps("1312.16|ci-7\n1312.batch|batch\n--uid=0|ci-7\n");
        assert_eq!(steps, vec![("1312.16".to_string(), "ci-7".to_string())]);
        assert!(Slurm.allocation_gone("srun: error: Slurm job 1313 has expired"));
        assert!(!Slurm.allocation_gone(
            "srun: error: Unable to create step for job 1312: Access/permission denied"
        ));
    }

    #[test]
    fn step_commands_put_the_drivers_options_first() {
        let sub = crate::batch::scheduler::testing::submission(&["-t", "30"]);
        assert_eq!(
            Slurm.step("1469", &sub, Some(12)).display(),
            "srun -v --jobid=1469 --overlap -N1 -n1 --job-name=ci-7 --output=/s/build_script.out --chdir=/w --time=12 /s/build_script-batch"
        );
        assert_eq!(
            Slurm
                .submit_holder(
                    "jacamar-alloc-1",
                    "/b/k.holder.out".as_ref(),
                    "/b".as_ref(),
                    &sub.args,
                    "/b/k.holder.bash".as_ref()
                )
                .display(),
            "sbatch --parsable --job-name=jacamar-alloc-1 --output=/b/k.holder.out --chdir=/b -t 30 /b/k.holder.bash"
        );
        assert_eq!(
            Slurm.cancel_step("1469.3", true).display(),
            "scancel --signal=TERM --full -- 1469.3"
        );
        assert_eq!(
            Slurm.cancel_step("1469.3", false).display(),
            "scancel -- 1469.3"
        );
    }
}
