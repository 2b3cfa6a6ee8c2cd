//! The scheduler job ids of a CI job, recorded in the job's scripts dir.
//!
//! Before submitting, the executor writes a `submitting` line (so a driver killed during
//! the submit call leaves a trace); the moment the id is known it appends `<scheduler>
//! <id>`, and `done <id>` once it saw the job leave the queue. Lines are appended with one
//! `write` each and fsynced, so a reader never sees half a record it would misread (a torn
//! last line is ignored). `cleanup` reads the file and cancels every job not `done`.

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
    /// The executor saw the job leave the queue.
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

    /// The job left the queue.
    pub fn finished(&self, id: &str) -> Result<(), BatchError> {
        self.append(&format!("done {id}"))
    }

    /// Every job recorded, in submission order. A missing file is an empty record.
    pub fn read(&self) -> Result<Vec<Recorded>, BatchError> {
        let text = match std::fs::read(&self.path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(BatchError::Persist {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Ok(parse(&text))
    }
}

/// Parse the record's text (complete lines only).
pub fn parse(text: &str) -> Vec<Recorded> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut jobs: Vec<Recorded> = Vec::new();
    for line in complete.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("job"), Some(sched), Some(id)) => jobs.push(Recorded {
                scheduler: sched.to_string(),
                id: id.to_string(),
                done: false,
            }),
            (Some("done"), Some(id), None) => {
                for j in jobs.iter_mut().filter(|j| j.id == id) {
                    j.done = true;
                }
            }
            _ => {}
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        let r = Record::in_dir(d.path());
        assert!(r.read().unwrap().is_empty());
        r.submitting("slurm", "ci-1").unwrap();
        r.submitted("slurm", "41").unwrap();
        r.submitted("slurm", "42").unwrap();
        r.finished("41").unwrap();
        let jobs = r.read().unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(jobs[0].done && !jobs[1].done);
        assert_eq!(jobs[1].id, "42");
        assert_eq!(
            parse("job slurm 1\njob slurm 2").len(),
            1,
            "torn last line ignored"
        );
    }
}
