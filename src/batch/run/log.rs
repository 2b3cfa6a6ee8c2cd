//! The job log: our lines and the job's output (tailed from its output file, and from its
//! error file when the scheduler keeps one) go through one writer, so they never
//! interleave inside a line.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::SpawnTail;
use crate::batch::scheduler::Submission;
use crate::batch::tail::{Tail, TailTiming};
use crate::batch::{fmt_dur, wrapper, BatchError};

/// The job log: one writer task.
pub(crate) struct Log {
    tx: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Log {
    /// A log written to `out` (our stdout for real jobs). A failed write is not retried:
    /// the job log is the only place to report it.
    pub(crate) fn to<W: AsyncWrite + Unpin + Send + 'static>(mut out: W) -> Log {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let _ = out.write_all(&line).await;
                // Flush when nothing else is waiting: live, without a syscall per line.
                if rx.is_empty() {
                    let _ = out.flush().await;
                }
            }
            let _ = out.flush().await;
        });
        Log { tx, writer }
    }

    /// Where the job's output and the commands' notices send their lines.
    pub(crate) fn sender(&self) -> &mpsc::Sender<Vec<u8>> {
        &self.tx
    }

    pub(crate) async fn say(&self, msg: impl AsRef<str>) {
        let _ = self
            .tx
            .send(format!("{}\n", msg.as_ref()).into_bytes())
            .await;
    }

    /// `WARNING: <e>` when `r` failed.
    pub(crate) async fn warn_if(&self, r: Result<(), BatchError>) {
        if let Err(e) = r {
            self.say(format!("WARNING: {e}")).await;
        }
    }

    /// Close the log once everything sent has been written.
    pub(crate) async fn close(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// The tails of the job's output file and of its error file, when the scheduler keeps one.
pub(super) struct Tails {
    output: (PathBuf, Tail),
    error: Option<(PathBuf, Tail)>,
    /// The job's exit file and id: the output file's final size (the tailer's completion
    /// fact, see [`crate::batch::tail`]).
    exit: (PathBuf, String),
}

impl Tails {
    pub(super) fn start(
        spawn: SpawnTail,
        sub: &Submission,
        id: &str,
        nfs_timeout: Duration,
        log: &Log,
    ) -> Tails {
        let start = |p: &PathBuf| {
            let tail = spawn(p.clone(), TailTiming::new(nfs_timeout), log.tx.clone());
            (p.clone(), tail)
        };
        Tails {
            output: start(&sub.output),
            error: sub.error.as_ref().map(start),
            exit: (wrapper::exit_path(&sub.output), id.to_string()),
        }
    }

    /// Stop at once, without waiting for late output.
    pub(super) async fn stop_now(self) {
        for (_, t) in std::iter::once(self.output).chain(self.error) {
            t.stop_now();
            t.finish().await;
        }
    }

    /// The job is over: drain both files (up to `nfs_timeout` for one not there yet, or for
    /// the output's bytes the exit file counts) and say in the log which never appeared,
    /// went away, or arrived short.
    pub(super) async fn drain(self, nfs_timeout: Duration, log: &Log) {
        let (output, tail) = self.output;
        let (exit, id) = self.exit;
        tail.job_over_expecting(Box::new(move || {
            wrapper::read_exit_file(&exit, &id).and_then(|r| r.output_bytes)
        }));
        if let Some((_, t)) = &self.error {
            t.job_over();
        }
        let report = tail.finish().await;
        let waited = fmt_dur(nfs_timeout);
        if let Some((error, t)) = self.error {
            if t.finish().await.never_appeared {
                log.say(format!(
                    "WARNING: the error file {} never appeared (waited nfs_timeout {waited})",
                    error.display(),
                ))
                .await;
            }
        }
        let output = output.display();
        if report.never_appeared {
            log.say(format!(
                "WARNING: the output file {output} never appeared (waited nfs_timeout {waited})"
            ))
            .await;
        } else if report.missing_at_end {
            log.say(format!(
                "WARNING: the output file {output} was moved away and did not come back within nfs_timeout"
            ))
            .await;
        } else if let Some((got, of)) = report.short() {
            log.say(format!(
                "WARNING: only {got} of the {of} bytes the job wrote to its output file {output} arrived within nfs_timeout {waited}: the end of its output is missing from this log"
            ))
            .await;
        }
    }
}
