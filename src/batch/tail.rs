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
//! The completion fact: when the job's exit file tells how many bytes the output file held
//! at the job's end ([`super::wrapper::ExitRecord::output_bytes`], given by
//! [`Tail::job_over_expecting`]), the tailer does not settle before it has read that many:
//! a client's attribute cache (an NFS client, a FUSE view with `attr_timeout`) may show a
//! stale, shorter size for seconds, and a re-open does not refresh it everywhere (FUSE).
//! It gives up at `nfs_timeout` and says how many bytes of how many arrived
//! ([`TailReport::short`]). With no size known it settles as before.
//!
//! A file not seen yet is looked for in its directory's listing before it is opened by
//! name ([`listed`]): a lookup of an absent name leaves a negative entry in such a cache,
//! which would hide the file for a while after it appears.
//!
//! The tailer runs on a blocking thread: a stalled NFS read must not stall the control
//! loop that handles cancellation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The output file's size at the job's end, from its exit file; `None`: unknown.
    pub expected_bytes: Option<u64>,
    /// Bytes read of the file last followed (its offset at the end).
    pub file_bytes: u64,
}

impl TailReport {
    /// `(read, expected)` when fewer bytes arrived than the job's exit file says it wrote.
    pub fn short(&self) -> Option<(u64, u64)> {
        match self.expected_bytes {
            Some(n) if self.file_bytes < n && !self.never_appeared => Some((self.file_bytes, n)),
            _ => None,
        }
    }
}

/// Where the tailer learns the output file's final size once the job is over (the exit
/// file's [`super::wrapper::ExitRecord::output_bytes`]); asked on every tick until it
/// answers.
pub type SizeSource = Box<dyn FnMut() -> Option<u64> + Send>;

/// The tailer's handle: tell it the job is over, then wait for its report.
pub struct Tail {
    over: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    size: Arc<Mutex<Option<SizeSource>>>,
    handle: tokio::task::JoinHandle<TailReport>,
}

impl Tail {
    /// The scheduler says the job is over: drain, then finish.
    pub fn job_over(&self) {
        self.over.store(true, Ordering::SeqCst);
    }

    /// The job is over, and `size` tells (now or later) how many bytes its output file
    /// held at its end: drain at least that many, for up to `nfs_timeout`.
    pub fn job_over_expecting(&self, size: SizeSource) {
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) = Some(size);
        self.job_over();
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
            size: Arc::default(),
            handle: tokio::spawn(async { TailReport::default() }),
        }
    }
}

/// Start tailing `path`, sending complete lines (with their newline) to `out`.
pub fn spawn(path: PathBuf, timing: TailTiming, out: mpsc::Sender<Vec<u8>>) -> Tail {
    let over = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let size: Arc<Mutex<Option<SizeSource>>> = Arc::default();
    let (o, s, z) = (over.clone(), stop.clone(), size.clone());
    let handle = tokio::task::spawn_blocking(move || {
        let mut t = Tailer::new(path);
        t.run(
            timing,
            &Flags {
                over: &o,
                stop: &s,
                size: &z,
            },
            &out,
        )
    });
    Tail {
        over,
        stop,
        size,
        handle,
    }
}

/// What the tailer's owner tells it while it runs.
struct Flags<'a> {
    over: &'a AtomicBool,
    stop: &'a AtomicBool,
    size: &'a Mutex<Option<SizeSource>>,
}

impl Flags<'_> {
    /// The output file's final size, if its source knows it by now.
    fn expected(&self) -> Option<u64> {
        let mut g = self.size.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().and_then(|f| f())
    }
}

/// Whether `path`'s name is in its directory's listing, read without looking the name up
/// (so an NFS client or a FUSE view keeps no negative entry for it). A directory that
/// cannot be listed answers `true`: the caller's open by name decides.
pub fn listed(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return true;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .any(|e| e.file_name() == name),
        Err(_) => true,
    }
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
        flags: &Flags,
        out: &mpsc::Sender<Vec<u8>>,
    ) -> TailReport {
        let (over, stop) = (flags.over, flags.stop);
        let mut last_reopen = Instant::now();
        let mut ended_at: Option<Instant> = None;
        let mut last_growth = Instant::now();
        let mut expected: Option<u64> = None;
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
                if expected.is_none() {
                    expected = flags.expected();
                }
                let waited = now.duration_since(end);
                let present = self.path_present();
                let done = if stop.load(Ordering::SeqCst) || waited >= timing.nfs_timeout {
                    true
                } else if !present {
                    // Not there (yet, or moved away): wait for it, up to nfs_timeout.
                    false
                } else if expected.is_some_and(|n| self.offset < n) {
                    // The job wrote more than we have read: a stale size, wait for it.
                    false
                } else {
                    // There: stop once quiet (a last line without newline is flushed).
                    now.duration_since(last_growth) >= timing.settle
                };
                if done {
                    self.report.never_appeared = !self.seen;
                    self.report.missing_at_end = self.seen && !present;
                    self.report.expected_bytes = expected;
                    self.report.file_bytes = self.offset;
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
        listed(&self.path) && std::fs::metadata(&self.path).is_ok()
    }

    /// One poll: (re-open if asked and needed), read to EOF. Returns the complete lines and
    /// whether anything new was read.
    pub fn tick(&mut self, reopen: bool) -> (Vec<Vec<u8>>, bool) {
        let mut buf = Vec::new();
        // A file not seen yet is opened only once listed (no negative entry, see the
        // module doc).
        if reopen && (self.file.is_some() || listed(&self.path)) {
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
        let (d, p) = crate::test_support::temp_file("out", "a\nb\n");
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
