//! A polling tailer for a batch job's output file, safe on NFS (no inotify: it never sees
//! writes made by another NFS client).
//!
//! It keeps an fd and a byte offset, reads to EOF on every tick, re-opens the path now and
//! then (only a fresh open refreshes NFS attributes) to notice a replaced file (another
//! inode) and truncation, keeps a partial line until its newline arrives, and sends
//! complete lines through a bounded channel. Once the job is over it keeps draining: up to
//! `nfs_timeout` for a file that has not appeared (or was moved away), and until the file
//! has been quiet for a short settle window otherwise (re-opening on every tick, so NFS
//! attributes are fresh); a last line without a newline is flushed at the end, never lost.
//!
//! The tailer runs on a blocking thread: a stalled NFS read must not stall the control
//! loop that handles cancellation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Timing of the tailer.
#[derive(Debug, Clone, Copy)]
pub struct TailTiming {
    /// Between two reads.
    pub poll: Duration,
    /// Between two re-opens by path while the job runs (every tick once it is over).
    pub reopen: Duration,
    /// After the job is over: the longest wait for a missing file or a last newline.
    pub nfs_timeout: Duration,
    /// After the job is over: stop once the file has been quiet this long.
    pub settle: Duration,
}

impl TailTiming {
    pub fn new(nfs_timeout: Duration) -> TailTiming {
        TailTiming {
            poll: Duration::from_millis(200),
            reopen: Duration::from_secs(1),
            nfs_timeout,
            settle: nfs_timeout.min(Duration::from_millis(1500)),
        }
    }
}

/// What the tailer noticed, for the job log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailReport {
    pub bytes: u64,
    /// The file never appeared.
    pub never_appeared: bool,
    /// The file was missing at the end (moved away, never moved back in time).
    pub missing_at_end: bool,
    pub replaced: u32,
    pub truncated: u32,
    /// The last line had no newline (flushed anyway).
    pub partial_flushed: bool,
}

/// The tailer's handle: tell it the job is over, then wait for its report.
pub struct Tail {
    over: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<TailReport>,
}

impl Tail {
    /// The scheduler says the job is over: drain, then finish.
    pub fn job_over(&self) {
        self.over.store(true, Ordering::SeqCst);
    }

    /// Stop now (after one last read), without waiting for late output.
    pub fn stop_now(&self) {
        self.over.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub async fn finish(self) -> TailReport {
        self.handle.await.unwrap_or_default()
    }
}

#[cfg(test)]
impl Tail {
    /// A tail with nothing to read, done at once (the state machine's unit tests).
    pub(crate) fn idle() -> Tail {
        Tail {
            over: Arc::default(),
            stop: Arc::default(),
            handle: tokio::spawn(async { TailReport::default() }),
        }
    }
}

/// Start tailing `path`, sending complete lines (with their newline) to `out`.
pub fn spawn(path: PathBuf, timing: TailTiming, out: mpsc::Sender<Vec<u8>>) -> Tail {
    let over = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (o, s) = (over.clone(), stop.clone());
    let handle = tokio::task::spawn_blocking(move || {
        let mut t = Tailer::new(path);
        t.run(timing, &o, &s, &out)
    });
    Tail { over, stop, handle }
}

/// The tailer's state: one file, one offset, one partial line.
pub struct Tailer {
    path: PathBuf,
    file: Option<File>,
    id: Option<(u64, u64)>,
    offset: u64,
    partial: Vec<u8>,
    seen: bool,
    pub report: TailReport,
}

impl Tailer {
    pub fn new(path: PathBuf) -> Tailer {
        Tailer {
            path,
            file: None,
            id: None,
            offset: 0,
            partial: Vec::new(),
            seen: false,
            report: TailReport::default(),
        }
    }

    fn run(
        &mut self,
        timing: TailTiming,
        over: &AtomicBool,
        stop: &AtomicBool,
        out: &mpsc::Sender<Vec<u8>>,
    ) -> TailReport {
        let mut last_reopen = Instant::now();
        let mut ended_at: Option<Instant> = None;
        let mut last_growth = Instant::now();
        loop {
            let ending = ended_at.is_some();
            let reopen = ending || last_reopen.elapsed() >= timing.reopen || self.file.is_none();
            if reopen {
                last_reopen = Instant::now();
            }
            let (lines, grew) = self.tick(reopen);
            for l in lines {
                if out.blocking_send(l).is_err() {
                    return self.report.clone();
                }
            }
            let now = Instant::now();
            if grew {
                last_growth = now;
            }
            if ended_at.is_none() && over.load(Ordering::SeqCst) {
                ended_at = Some(now);
                last_growth = now;
            }
            if let Some(end) = ended_at {
                let waited = now.duration_since(end);
                let present = self.path_present();
                let done = if stop.load(Ordering::SeqCst) || waited >= timing.nfs_timeout {
                    true
                } else if !present {
                    // Not there (yet, or moved away): wait for it, up to nfs_timeout.
                    false
                } else {
                    // There: stop once quiet (a last line without newline is flushed).
                    now.duration_since(last_growth) >= timing.settle
                };
                if done {
                    self.report.never_appeared = !self.seen;
                    self.report.missing_at_end = self.seen && !present;
                    if let Some(l) = self.flush_partial() {
                        let _ = out.blocking_send(l);
                    }
                    return self.report.clone();
                }
            }
            std::thread::sleep(timing.poll);
        }
    }

    fn path_present(&self) -> bool {
        std::fs::metadata(&self.path).is_ok()
    }

    /// One poll: (re-open if asked and needed), read to EOF. Returns the complete lines and
    /// whether anything new was read.
    pub fn tick(&mut self, reopen: bool) -> (Vec<Vec<u8>>, bool) {
        let mut buf = Vec::new();
        if reopen {
            if let Ok(f) = File::open(&self.path) {
                if let Ok(m) = f.metadata() {
                    let id = (m.dev(), m.ino());
                    match self.id {
                        Some(old) if old == id => {} // same file; keep our fd and offset
                        Some(_) => {
                            // Replaced: finish the old file, then start the new one at 0.
                            self.read_to_end(&mut buf);
                            self.report.replaced += 1;
                            self.file = Some(f);
                            self.id = Some(id);
                            self.offset = 0;
                        }
                        None => {
                            self.seen = true;
                            self.file = Some(f);
                            self.id = Some(id);
                            self.offset = 0;
                        }
                    }
                }
            }
        }
        self.read_to_end(&mut buf);
        let grew = !buf.is_empty();
        self.report.bytes += buf.len() as u64;
        (self.split_lines(buf), grew)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) {
        let Some(f) = self.file.as_mut() else { return };
        if let Ok(m) = f.metadata() {
            if m.len() < self.offset {
                // Truncated under us: start over.
                self.report.truncated += 1;
                self.offset = 0;
                self.partial.clear();
            }
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let before = buf.len();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.offset += (buf.len() - before) as u64;
    }

    fn split_lines(&mut self, buf: Vec<u8>) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let rest = self.partial.split_off(i + 1);
            lines.push(std::mem::replace(&mut self.partial, rest));
        }
        lines
    }

    /// The last line without its newline (one is added), if any.
    pub fn flush_partial(&mut self) -> Option<Vec<u8>> {
        if self.partial.is_empty() {
            return None;
        }
        self.report.partial_flushed = true;
        let mut l = std::mem::take(&mut self.partial);
        l.push(b'\n');
        Some(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn text(lines: Vec<Vec<u8>>) -> String {
        lines
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        let mut t = Tailer::new(p.clone());
        assert!(t.tick(true).0.is_empty(), "no file yet");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"one\ntw").unwrap();
        assert_eq!(text(t.tick(true).0), "one\n");
        f.write_all(b"o\nthree").unwrap();
        assert_eq!(text(t.tick(false).0), "two\n");
        assert_eq!(t.flush_partial().unwrap(), b"three\n");
    }

    #[test]
    fn replacement_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        std::fs::write(&p, "a\nb\n").unwrap();
        let mut t = Tailer::new(p.clone());
        assert_eq!(text(t.tick(true).0), "a\nb\n");
        // Truncate and write less: read from the start again.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap()
            .write_all(b"c\n")
            .unwrap();
        assert_eq!(text(t.tick(false).0), "c\n");
        assert_eq!(t.report.truncated, 1);
        // Replace by rename: the rest of the old one, then the new one from its start.
        let q = d.path().join("new");
        std::fs::write(&q, "x\ny\n").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"d\n")
            .unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_eq!(text(t.tick(true).0), "d\nx\ny\n");
        assert_eq!(t.report.replaced, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waits_for_a_late_file_after_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        let (tx, mut rx) = mpsc::channel(16);
        let mut timing = TailTiming::new(Duration::from_secs(20));
        timing.poll = Duration::from_millis(20);
        let tail = spawn(p.clone(), timing, tx);
        tail.job_over();
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(d.path().join("tmp"), "late 1\nlate 2").unwrap();
        std::fs::rename(d.path().join("tmp"), &p).unwrap();
        let report = tail.finish().await;
        let mut got = String::new();
        while let Ok(l) = rx.try_recv() {
            got.push_str(&String::from_utf8(l).unwrap());
        }
        assert_eq!(got, "late 1\nlate 2\n");
        assert!(report.partial_flushed && !report.never_appeared);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gives_up_on_a_file_that_never_comes() {
        let d = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let mut timing = TailTiming::new(Duration::from_millis(200));
        timing.poll = Duration::from_millis(20);
        let tail = spawn(d.path().join("never"), timing, tx);
        tail.job_over();
        let report = tail.finish().await;
        assert!(report.never_appeared);
    }
}
