//! Flux: `flux submit` to submit (the job's output written by Flux to the driver's file as
//! it runs), `flux jobs --user=USER -a` for the state of every job of the user at once
//! (shared, see [`super::poller`]; inactive jobs stay listed, with their result and return
//! code, until the instance purges them), `flux jobs ID` for one job, `flux job kill` to
//! signal and `flux cancel` to cancel.

use std::collections::BTreeMap;

use super::args::{why, Illegal};
use super::scheduler::{
    any_word, last_line_id, listing_by_id, queued, running_user, Cmd, Profile, Query, Read,
    Scheduler, Submission,
};
use super::{Final, JobState, Listed};

/// The Flux scheduler (`executor = "flux"`).
pub struct Flux;

/// Flux's name, forms and words.
const PROFILE: Profile = Profile {
    name: "flux",
    valid_id,
    parse_submit,
    // Not words alone: see `gone` in the `Scheduler` impl (case-insensitive).
    gone: &[],
    // A broker's words for being restarting or unreachable, with `flux` in the message (the
    // command's own, not the job's; see `transient` in the `Scheduler` impl): try again.
    transient: &[
        "Connection refused",
        "No such file or directory",
        "Resource temporarily unavailable",
        "Connection timed out",
    ],
    illegal: &[
        Illegal::long("--output", why::OUTPUT),
        Illegal::long("--error", why::STDERR),
        Illegal::long("--input", why::INPUT),
        Illegal::long("--job-name", why::NAME),
        Illegal::long("--cwd", why::WORKDIR),
        Illegal::long("--wait", why::WAIT),
        Illegal::long("--wait-event", why::WAIT),
        Illegal::long("--watch", "the driver streams the job's output itself"),
        Illegal::long("--dry-run", why::NEVER_RUNS),
        Illegal::long("--cc", why::ONE_JOB),
        Illegal::long("--bcc", why::ONE_JOB),
        Illegal::long("--quiet", "the driver reads the job id flux submit prints"),
        Illegal::long("--log", "the driver reads flux submit's answer itself"),
        Illegal::long(
            "--log-stderr",
            "the driver reads flux submit's answer itself",
        ),
    ],
};

/// The `flux jobs` format the driver reads: fields separated by `|`.
pub const JOBS_FORMAT: &str = "{state}|{result}|{returncode}|{exception.type}|{exception.note}";

/// The per-user listing's format: the decimal job id, then [`JOBS_FORMAT`]'s fields.
pub const LIST_FORMAT: &str =
    "{id}|{state}|{result}|{returncode}|{exception.type}|{exception.note}";

/// `flux jobs -a -n -o LIST_FORMAT`'s lines by decimal job id.
pub fn parse_jobs_list(stdout: &str) -> BTreeMap<String, Listed> {
    let digits = |id: &str| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit());
    listing_by_id(stdout, digits, parse_jobs)
}

const F58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A Flux job id in decimal: as is when decimal, decoded from F58 (`ƒ`, or `f` where the
/// locale is not UTF-8, then base-58 digits, RFC 19). `None`: another form.
pub fn decimal_id(id: &str) -> Option<String> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) {
        return Some(id.to_string());
    }
    let digits = id.strip_prefix('ƒ').or_else(|| id.strip_prefix('f'))?;
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for c in digits.chars() {
        let v = F58.find(c)? as u64;
        n = n.checked_mul(58)?.checked_add(v)?;
    }
    Some(n.to_string())
}

/// The job id in `flux submit`'s answer: its last non-blank line (`ƒ2kAbCd`, or decimal),
/// when [`valid_id`].
pub fn parse_submit(stdout: &str) -> Option<String> {
    last_line_id(stdout, valid_id)
}

/// A Flux job id in the forms this module reads ([`decimal_id`]): decimal digits (at most
/// 20), or F58 (`ƒ` or `f`, then base-58 digits) whose value fits in 64 bits.
pub fn valid_id(id: &str) -> bool {
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        super::is_decimal_id(id)
    } else {
        decimal_id(id).is_some()
    }
}

/// The state in `flux jobs -n -o JOBS_FORMAT ID`'s answer.
pub fn parse_jobs(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().find(|l| l.contains('|'))?;
    let f: Vec<&str> = line.split('|').map(str::trim).collect();
    let get = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
    let state = get(0)?;
    Some(match state {
        "DEPEND" | "PRIORITY" | "SCHED" | "NEW" => queued(state, None),
        "RUN" | "CLEANUP" => JobState::Running {
            state: state.to_string(),
        },
        "INACTIVE" => {
            let result = get(1).unwrap_or("INACTIVE");
            let rc = get(2).and_then(|v| v.parse::<i32>().ok());
            // Negative: the signal that ended the job shell; -128: canceled before it ran.
            let (code, signal) = match rc {
                Some(-128) => (0, None),
                Some(c) if c < 0 => (0, Some(c.saturating_neg())),
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
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    /// A broker that is restarting or unreachable, as the `flux` command says it.
    fn transient(&self, stderr: &str) -> bool {
        stderr.contains("flux") && any_word(stderr, PROFILE.transient)
    }

    fn submit(&self, sub: &Submission) -> Cmd {
        let options = sub.long_options("submit", ["--job-name", "--output", "--cwd"]);
        Cmd::submit("flux", options, sub)
    }

    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
        let jobs = Cmd::new("flux", &["jobs", "-n", "-o", JOBS_FORMAT, id]);
        vec![Query::new(jobs, |o| {
            // Not known, or listed with no line: no record of the job.
            let gone = match o.success() {
                true => o.stdout.trim().is_empty(),
                false => unknown(&o.stderr),
            };
            match gone {
                true => Read::Got(JobState::Unknown),
                false => Read::parse(o, parse_jobs),
            }
        })]
    }

    fn cancel(&self, id: &str, graceful: bool) -> Cmd {
        // graceful: SIGTERM only, the job's traps run; otherwise flux cancel (SIGTERM,
        // then SIGKILL after the instance's kill timeout).
        // `--`: `flux job kill` (getopt_long) and `flux cancel` (argparse) take what
        // follows as job ids, never options.
        match graceful {
            true => Cmd::new("flux", &["job", "kill", "--signal=SIGTERM", "--", id]),
            false => Cmd::new("flux", &["cancel", "--", id]),
        }
    }

    fn gone(&self, stderr: &str) -> bool {
        let e = stderr.to_ascii_lowercase();
        unknown(stderr) || e.contains("inactive") || e.contains("not running")
    }

    /// `flux jobs -a -n --user=USER -o LIST_FORMAT` (when the passwd database names us):
    /// the user's pending, running and inactive jobs (flux-jobs(1): `-a` is every state; at
    /// most `--count`, 1000 by default, the inactive ones most recent first). A job that
    /// left it (purged, or past the count) is asked alone (the default
    /// [`Scheduler::accounting`], `flux jobs ID`).
    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        let user = format!("--user={}", running_user()?);
        let jobs = Cmd::new("flux", &["jobs", "-a", "-n", &user, "-o", LIST_FORMAT]);
        Some(Query::new(jobs, |o| Read::table(o, parse_jobs_list)))
    }

    /// The decimal id: the listing prints `{id}` so that it does not depend on the
    /// locale's `ƒ`. An id in another form than F58 or decimal polls alone.
    fn listing_id(&self, id: &str) -> String {
        decimal_id(id).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::scheduler::testing::{
        commands, fin, ids, out, phase, shown, submits, summary,
    };

    #[test]
    fn job_ids_are_decimal_or_f58() {
        let good = ["ƒ2kAbCd", "f2kAbCd", "1234", "ƒ2", "18446744073709551615"];
        let bad = [
            "",
            "ƒ",
            "ƒ0",
            "--all",
            "-u",
            "0x1f",
            "ƒ2k\u{1b}[31m",
            "ƒ2k Ab",
            "123456789012345678901",
            // Beyond 64 bits.
            "ƒzzzzzzzzzzzzzzzzzzzzzz",
        ];
        ids(valid_id, &good, &bad);
    }

    /// `flux jobs -a -n --user=ci -o LIST_FORMAT` (flux-jobs(1) OUTPUT FORMAT: `{id}` is
    /// decimal, empty fields for what an active job does not have yet).
    /// Found while writing fuzz/fuzz_targets/sched.rs (its dictionary's boundary values): a
    /// returncode of i32::MIN overflowed its negation (the signal of a negative code).
    #[test]
    fn fuzz_most_negative_returncode() {
        let text = std::str::from_utf8(b"2051|INACTIVE|FAILED|-2147483648||\n").unwrap();
        let m = parse_jobs_list(text);
        let f = fin(m["2051"].state.clone());
        assert!(!f.success() && f.exit_code == i32::MAX, "{f:?}");
    }

    #[test]
    fn jobs_listing() {
        let t = "2049|SCHED||||\n2050|RUN||||\n2051|INACTIVE|FAILED|7||\n2052|INACTIVE|CANCELED|-15|cancel|\n";
        assert_eq!(
            summary(&parse_jobs_list(t)),
            "2049 queued, 2050 running, 2051 exit 7, 2052 exit 143"
        );
        assert!(parse_jobs_list("").is_empty());
    }

    /// F58 ids (RFC 19) as `flux submit` prints them, keyed by their decimal value.
    #[test]
    fn f58_ids_in_decimal() {
        assert_eq!(decimal_id("ƒ2").as_deref(), Some("1"));
        assert_eq!(decimal_id("f21").as_deref(), Some("58"));
        assert_eq!(
            decimal_id("ƒJv").as_deref(),
            Some((17 * 58 + 53).to_string().as_str())
        );
        assert_eq!(decimal_id("1000").as_deref(), Some("1000"));
        assert_eq!(decimal_id("ƒ0"), None);
        assert_eq!(decimal_id("0x1f"), None);
        assert_eq!(Flux.listing_id("0x1f"), "");
    }

    #[test]
    fn jobs_lines() {
        assert_eq!(parse_jobs("SCHED||||\n"), Some(queued("SCHED", None)));
        assert_eq!(phase(parse_jobs("RUN||||").as_ref()), "running");
        let f = fin(parse_jobs("INACTIVE|COMPLETED|0||"));
        assert!(f.success());
        let f = fin(parse_jobs("INACTIVE|FAILED|7||"));
        assert_eq!((f.success(), f.exit_code, f.normal_end), (false, 7, true));
        let f = fin(parse_jobs("INACTIVE|CANCELED|-15|cancel|"));
        assert_eq!(f.exit_code, 143);
        assert_eq!(f.reason.as_deref(), Some("cancel"));
        let f = fin(parse_jobs(
            "INACTIVE|TIMEOUT|-9|timeout|resource allocation expired",
        ));
        assert!(!f.normal_end);
        assert_eq!(
            f.reason.as_deref(),
            Some("timeout: resource allocation expired")
        );
        let f = fin(parse_jobs("INACTIVE|CANCELED|-128|cancel|"));
        assert_eq!((f.exit_code, f.success()), (0, false));
        assert_eq!(parse_jobs("garbage"), None);
    }

    /// The commands, the job id in `flux submit`'s answers, and how `flux jobs ID` reads: an
    /// unknown id, or an empty answer, is no record of the job.
    #[test]
    fn commands_and_the_state_answer() {
        assert_eq!(
            commands(&Flux, &["-N1"], "ƒ2k"),
            "flux submit --job-name=ci-7 --output=/s/build_script.out --cwd=/w -N1 /s/build_script-batch\n\
             flux job kill --signal=SIGTERM -- ƒ2k\n\
             flux cancel -- ƒ2k"
        );
        submits(
            parse_submit,
            &[("ƒ2kAbCd\n", "ƒ2kAbCd"), ("1234\n", "1234")],
            &["  \n", "job submitted", "--all\n"],
        );
        let q = Flux.state("ƒ2k");
        assert_eq!(shown(&q), [format!("flux jobs -n -o {JOBS_FORMAT} ƒ2k")]);
        let read = &q[0].read;
        let unknown = out(1, "", "flux-jobs: ERROR: ƒ2k: unknown job id\n");
        assert_eq!(read(&unknown), Read::Got(JobState::Unknown));
        assert_eq!(read(&out(0, "\n", "")), Read::Got(JobState::Unknown));
        assert!(matches!(
            read(&out(0, "RUN||||\n", "")),
            Read::Got(JobState::Running { .. })
        ));
        assert_eq!(read(&out(0, "garbage\n", "")), Read::Unreadable);
        assert!(Flux.gone("flux-cancel: ƒ2k: job is inactive"));
        assert!(Flux.gone("flux-job: kill ƒ2k: job is not running"));
        assert!(!Flux.gone("flux-cancel: permission denied"));
        // A broker's words only when the flux command says them.
        assert!(Flux.transient("flux-jobs: ERROR: Connection refused"));
        assert!(!Flux.transient("Connection refused"));
    }
}
