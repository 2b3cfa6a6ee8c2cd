//! The scheduler job ids of a CI job, recorded in the job's scripts dir.
//!
//! Before submitting, the batch run writes a `submitting` line (so a driver killed during
//! the submit call leaves a trace); the moment the id is known it appends `<scheduler>
//! <id>`, and `done <id>` once it saw the job leave the queue. Lines are appended with one
//! `write` each and fsynced, so a reader never sees half a record it would misread (a torn
//! last line is ignored). `cleanup` reads the file and cancels every job not `done`.
//!
//! A CI job in its pipeline's shared allocation (docs/allocations.md) records instead
//! `alloc <scheduler> <id> <key>` before it takes its lease on allocation `<id>` (key: 32
//! hex digits) and `step <scheduler> <id>.<step>` the moment its step is known: `cleanup`
//! cancels a step not `done` and releases the lease, never the allocation itself.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::BatchError;

/// The record's file name in the job's scripts dir.
pub const FILE_NAME: &str = "batch-jobs";

/// What the record says about one scheduler job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub scheduler: String,
    pub id: String,
    /// The batch run saw the job leave the queue.
    pub done: bool,
}

/// The record of one job's scripts dir.
#[derive(Debug, Clone)]
pub struct Record {
    path: PathBuf,
}

impl Record {
    pub fn in_dir(scripts_dir: &Path) -> Record {
        Record {
            path: scripts_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, line: &str) -> Result<(), BatchError> {
        let err = |source| BatchError::Persist {
            path: self.path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(err)?;
        f.write_all(format!("{line}\n").as_bytes()).map_err(err)?;
        f.sync_data().map_err(err)
    }

    /// About to submit with `scheduler` under the job name `name`.
    pub fn submitting(&self, scheduler: &str, name: &str) -> Result<(), BatchError> {
        self.append(&format!("submitting {scheduler} {name}"))
    }

    /// The scheduler accepted the job as `id`.
    pub fn submitted(&self, scheduler: &str, id: &str) -> Result<(), BatchError> {
        self.append(&format!("job {scheduler} {id}"))
    }

    /// About to take a lease on the shared allocation `id` (key `key`).
    pub fn allocation(&self, scheduler: &str, id: &str, key: &str) -> Result<(), BatchError> {
        self.append(&format!("alloc {scheduler} {id} {key}"))
    }

    /// The CI job runs as step `step` (`<id>.<step>`).
    pub fn step(&self, scheduler: &str, step: &str) -> Result<(), BatchError> {
        self.append(&format!("step {scheduler} {step}"))
    }

    /// The job (or step) left the queue.
    pub fn finished(&self, id: &str) -> Result<(), BatchError> {
        self.append(&format!("done {id}"))
    }

    /// Every job recorded for the scheduler `name`, in submission order, and what was
    /// refused (see [`parse`]). A missing file is an empty record.
    pub fn read(&self, name: &str, valid: &dyn Fn(&str) -> bool) -> Result<Read, BatchError> {
        let text = match std::fs::read(&self.path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::default()),
            Err(source) => {
                return Err(BatchError::Persist {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Ok(parse(&text, name, valid))
    }
}

/// What a record holds for one scheduler.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Read {
    /// The jobs, in submission order.
    pub jobs: Vec<Recorded>,
    /// The shared allocations the CI job took a lease on: `(id, key)`.
    pub allocations: Vec<(String, String)>,
    /// The steps it ran in them.
    pub steps: Vec<Recorded>,
    /// The job names it submitted under (`submitting` lines; letters, digits, `_.-` only).
    pub names: Vec<String>,
    /// One sentence per `job` line refused (its number, and the id or the line shown
    /// escaped), to report: its id is never given to a command.
    pub refused: Vec<String>,
}

/// Parse the record's text (complete lines only) for the scheduler `name`, whose ids pass
/// `valid` ([`super::Scheduler::valid_id`]). The file is in the job's scripts dir, so the
/// job can write it: a `job` line that is not `job <name> <id>` with a valid id is refused
/// and reported, never trusted. Other lines (`submitting ...`, `done <id>`, anything else)
/// give no id to any command and are read as before or ignored.
pub fn parse(text: &str, name: &str, valid: &dyn Fn(&str) -> bool) -> Read {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut read = Read::default();
    for (n, line) in complete.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["job", sched, id] if *sched == name && valid(id) => read.jobs.push(Recorded {
                scheduler: sched.to_string(),
                id: id.to_string(),
                done: false,
            }),
            ["job", sched, id] if *sched == name => read
                .refused
                .push(format!("line {}: {id:?} is not a {name} job id", n + 1)),
            ["job", ..] => read.refused.push(format!(
                "line {}: {line:?} is not \"job {name} <id>\"",
                n + 1
            )),
            ["submitting", sched, job_name] if *sched == name && is_name(job_name) => {
                read.names.push(job_name.to_string())
            }
            ["alloc", sched, id, key] if *sched == name && valid(id) && is_key(key) => {
                read.allocations.push((id.to_string(), key.to_string()))
            }
            ["alloc", ..] => read.refused.push(format!(
                "line {}: {line:?} is not \"alloc {name} <id> <key>\"",
                n + 1
            )),
            ["step", sched, id] if *sched == name && is_step(id, valid) => {
                read.steps.push(Recorded {
                    scheduler: sched.to_string(),
                    id: id.to_string(),
                    done: false,
                })
            }
            ["step", ..] => read.refused.push(format!(
                "line {}: {line:?} is not \"step {name} <id>.<step>\"",
                n + 1
            )),
            ["done", id] => {
                for j in read.jobs.iter_mut().chain(read.steps.iter_mut()) {
                    if j.id == *id {
                        j.done = true;
                    }
                }
            }
            _ => {}
        }
    }
    read
}

/// A job name as the driver makes it (`ci-7`, a prefix of letters, digits, `_.-`).
fn is_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An allocation's key: 32 lowercase hexadecimal digits.
fn is_key(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A step id `<job id>.<step>`: a job id that passes `valid`, a step of 1 to 10 digits.
fn is_step(s: &str, valid: &dyn Fn(&str) -> bool) -> bool {
    match s.split_once('.') {
        Some((job, step)) => {
            valid(job) && (1..=10).contains(&step.len()) && step.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(id: &str) -> bool {
        super::super::is_decimal_id(id)
    }

    #[test]
    fn round_trip_and_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        let r = Record::in_dir(d.path());
        assert_eq!(r.read("slurm", &digits).unwrap(), Read::default());
        r.submitting("slurm", "ci-1").unwrap();
        r.submitted("slurm", "41").unwrap();
        r.submitted("slurm", "42").unwrap();
        r.finished("41").unwrap();
        let read = r.read("slurm", &digits).unwrap();
        assert!(read.refused.is_empty(), "{read:?}");
        let jobs = read.jobs;
        assert_eq!(jobs.len(), 2);
        assert!(jobs[0].done && !jobs[1].done);
        assert_eq!(jobs[1].id, "42");
        assert_eq!(
            parse("job slurm 1\njob slurm 2", "slurm", &digits)
                .jobs
                .len(),
            1,
            "torn last line ignored"
        );
    }

    /// The job can write its record: ids the scheduler never prints are refused, shown
    /// escaped, and never become jobs to cancel.
    #[test]
    fn forged_ids_are_refused_and_shown_escaped() {
        let text = "submitting slurm ci-1\n\
                    job slurm 41\n\
                    job slurm --uid=0\n\
                    job slurm 7\x1b[31mred\n\
                    job slurm -u alice\n\
                    job pbs 43.server\n\
                    job slurm\n\
                    done --uid=0\n\
                    job slurm 44\n";
        let read = parse(text, "slurm", &digits);
        let ids: Vec<&str> = read.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["41", "44"]);
        assert_eq!(
            read.refused,
            [
                "line 3: \"--uid=0\" is not a slurm job id",
                "line 4: \"7\\u{1b}[31mred\" is not a slurm job id",
                "line 5: \"job slurm -u alice\" is not \"job slurm <id>\"",
                "line 6: \"job pbs 43.server\" is not \"job slurm <id>\"",
                "line 7: \"job slurm\" is not \"job slurm <id>\"",
            ]
        );
        assert!(read.refused.iter().all(|r| !r.contains('\x1b')));
    }

    /// The allocation and step lines of a CI job in a shared allocation: forged ones are
    /// refused and shown escaped, a `done` step is not cancelled again.
    #[test]
    fn allocation_and_step_lines() {
        let key = "0123456789abcdef0123456789abcdef";
        let text = format!(
            "alloc slurm 1469 {key}\n\
             step slurm 1469.3\n\
             step slurm 1469.4\n\
             done 1469.3\n\
             alloc slurm --uid=0 {key}\n\
             alloc slurm 1469 ../../etc\n\
             step slurm 1469\n\
             step slurm --uid=0.1\n\
             step slurm 1469.3\x1b[31m\n"
        );
        let read = parse(&text, "slurm", &digits);
        assert_eq!(
            read.allocations,
            vec![("1469".to_string(), key.to_string())]
        );
        let steps: Vec<(&str, bool)> = read.steps.iter().map(|s| (s.id.as_str(), s.done)).collect();
        assert_eq!(steps, [("1469.3", true), ("1469.4", false)]);
        assert_eq!(read.refused.len(), 5, "{:?}", read.refused);
        assert!(
            read.refused.iter().all(|r| !r.contains('\x1b')),
            "{:?}",
            read.refused
        );
        assert!(read.jobs.is_empty());
    }
}
