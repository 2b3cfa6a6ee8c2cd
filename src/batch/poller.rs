//! One status query per user per `command_delay`, however many jobs of that user wait on
//! the host (design and counts: docs/batch-polling.md).
//!
//! Every waiting `jacamar` of a user reads one snapshot of the scheduler's per-user listing,
//! `<base>/.jacamar-poll/<scheduler>.json` (0600, in the user's own base dir, written whole
//! by a rename). A snapshot younger than the poll period is used as it is. Otherwise the
//! reader tries to become the poller: a non-blocking lock on `<scheduler>.lock` elects one;
//! the winner looks again (another may have just written), then runs the per-user query
//! ([`Scheduler::listing`]), one accounting query for the jobs that left the listing
//! ([`Scheduler::accounting`], asked for through `<scheduler>.want/<id>` files), and writes
//! the snapshot. Losers wait for the next snapshot for [`wait_bound`], then ask the
//! scheduler about their own job alone, so nothing hangs on a stuck poller; a dead poller's
//! lock is released by the kernel and the next reader takes over. No daemon, no file of
//! another user.
//!
//! A stalled query is said in the job log of every job waiting on it: the poller's own
//! command says so itself ([`super::Commands::noticing`]); a loser that has waited
//! [`super::Commands::stall_notice`] for the snapshot says once why it waits, and again when the
//! snapshot comes or it gives up waiting.
//!
//! Before any of that, the job's own exit-status file (written by the wrapper at its very
//! end, see [`super::wrapper::read_exit_file`]) is the completion signal: a job that wrote
//! it without being signalled is over, whatever the listing says.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::Client;
use super::scheduler::Scheduler;
use super::wrapper::{read_exit_file, ExitRecord};
use super::{fmt_dur, BatchError, Final, JobState, Listed};
use crate::fs::lock;

/// The poll directory's name in the user's base dir.
pub const DIR_NAME: &str = ".jacamar-poll";
/// How often a loser looks for the winner's snapshot.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// A want file older than this is from a driver that is gone: the poller removes it.
const WANT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The wall clock in Unix milliseconds (shared by processes, unlike tokio's clock). Tests
/// give one that follows tokio's paused clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn wall_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// How long a reader waits for another process's snapshot before asking about its own job
/// alone: two periods, at least 10 s (a per-user query may take seconds on a busy
/// controller), at most 60 s.
pub fn wait_bound(period: Duration) -> Duration {
    (period * 2).clamp(Duration::from_secs(10), Duration::from_secs(60))
}

/// A failed query, as every reader of the snapshot reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapError {
    pub transient: bool,
    pub command: String,
    pub message: String,
}

impl SnapError {
    fn of(e: &BatchError) -> SnapError {
        match e {
            BatchError::Transient { command, message } => SnapError {
                transient: true,
                command: command.clone(),
                message: message.clone(),
            },
            BatchError::Command { command, message } => SnapError {
                transient: false,
                command: command.clone(),
                message: message.clone(),
            },
            other => SnapError {
                transient: false,
                command: "status query".into(),
                message: other.to_string(),
            },
        }
    }

    fn to_error(&self) -> BatchError {
        let (command, message) = (self.command.clone(), self.message.clone());
        if self.transient {
            BatchError::Transient { command, message }
        } else {
            BatchError::Command { command, message }
        }
    }
}

/// What one poll of the user's jobs found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub scheduler: String,
    /// Wall clock (Unix ms) just before the query ran: every job submitted before is in
    /// `jobs`, unless it left the listing.
    pub taken_ms: u64,
    pub jobs: BTreeMap<String, Listed>,
    /// Accounting answers for jobs that left the listing (those wanted at `taken_ms`).
    pub accounting: BTreeMap<String, JobState>,
    /// The listing failed: every reader gets this error until the next poll.
    pub error: Option<SnapError>,
    /// The accounting query failed.
    pub accounting_error: Option<SnapError>,
}

/// One job as the poller sees it.
pub struct JobRef<'a> {
    pub id: &'a str,
    /// The wrapper's exit-status file of the job.
    pub exit_file: &'a Path,
}

/// One poll of one job: what the snapshot's steps need.
struct Ask<'a> {
    client: Client<'a>,
    /// The poll directory.
    dir: &'a Path,
    period: Duration,
    /// The job's key in the listing and in the poll directory ([`Scheduler::listing_id`]).
    key: &'a str,
    /// The id its submission gave.
    id: &'a str,
    /// Its exit file, when it wrote one (after a TERM: the scheduler's word decides).
    exit: Option<&'a ExitRecord>,
    /// Wall clock by which the job was surely submitted.
    since: u64,
}

/// The status queries of one batch job: shared with the user's other jobs through the poll
/// directory when there is one and the scheduler lists a user's jobs in one command,
/// otherwise one [`Scheduler::state`] per poll.
pub struct Poller {
    dir: Option<PathBuf>,
    clock: Clock,
    /// Wall clock by which the job was surely submitted: one period before its first poll.
    since_ms: Mutex<Option<u64>>,
    warned: AtomicBool,
}

impl Poller {
    /// A poller sharing through `<base_dir>/.jacamar-poll`.
    pub fn shared(base_dir: &Path) -> Poller {
        Poller::new(Some(base_dir.join(DIR_NAME)), wall_clock())
    }

    /// A poller that asks about its own job only.
    pub fn unshared() -> Poller {
        Poller::new(None, wall_clock())
    }

    /// A poller of the poll directory `dir` (`None`: not shared) with `clock`.
    pub fn new(dir: Option<PathBuf>, clock: Clock) -> Poller {
        Poller {
            dir,
            clock,
            since_ms: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// The job's state, polled at most once per `period` (the batch run's spacing): the exit
    /// file first, then the shared snapshot (or the scheduler directly). Errors are the
    /// scheduler's (a failed listing reaches every reader of its snapshot); the caller's
    /// retry policy applies to them.
    ///
    /// A job missing from a listing taken after it was submitted, without an exit file, is
    /// `Unknown` until the accounting answers (at the next poll). The submission is taken
    /// to be at least one `period` before this job's first poll, as the batch run waits one
    /// period after submitting.
    pub async fn state(
        &self,
        client: Client<'_>,
        period: Duration,
        job: &JobRef<'_>,
    ) -> Result<JobState, BatchError> {
        let exit = read_exit_file(job.exit_file, job.id);
        if let Some(r) = &exit {
            if r.terms == 0 {
                return Ok(JobState::Finished(exited(r.code)));
            }
        }
        let now = (self.clock)();
        let since = *self
            .since_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(now.saturating_sub(period.as_millis() as u64));
        // The job as the listing and the poll dir know it (PBS: `123` for `123.server`).
        let key = client.sched.listing_id(job.id);
        let dir = match &self.dir {
            Some(d) if client.lists_user_jobs() && valid_id(&key) => d,
            _ => return single(client, job.id, exit.as_ref()).await,
        };
        let ask = Ask {
            client,
            dir,
            period,
            key: &key,
            id: job.id,
            exit: exit.as_ref(),
            since,
        };
        match self.snapshot(&ask).await? {
            Some(snap) => self.answer(&ask, &snap).await,
            None => single(client, job.id, exit.as_ref()).await,
        }
    }

    /// A snapshot that can answer for the job: a fresh one, or one this process takes as
    /// the elected poller. `None`: no snapshot came within [`wait_bound`], or the poll
    /// directory is unusable (reported once).
    async fn snapshot(&self, ask: &Ask<'_>) -> Result<Option<Snapshot>, BatchError> {
        let (name, cmds, dir) = (ask.client.name(), ask.client.cmds, ask.dir);
        let path = dir.join(format!("{name}.json"));
        let lock_path = dir.join(format!("{name}.lock"));
        let start = tokio::time::Instant::now();
        let until = start + wait_bound(ask.period);
        let mut told = false;
        if let Err(e) = ensure_dir(dir) {
            self.warn(&e);
            return Ok(None);
        }
        loop {
            if let Some(s) = self.usable(&path, ask) {
                if told {
                    let took = fmt_dur(start.elapsed());
                    cmds.notice(&format!(
                        "the shared {name} status poll answered after {took}"
                    ))
                    .await;
                }
                return Ok(Some(s));
            }
            let lock = match lock::try_lock_file(&lock_path) {
                Ok(l) => l,
                Err(e) => {
                    self.warn(&e);
                    return Ok(None);
                }
            };
            if let Some(lock) = lock {
                if let Some(s) = self.usable(&path, ask) {
                    return Ok(Some(s));
                }
                let snap = self.query(ask).await?;
                if let Err(e) = write_snapshot(dir, &path, &snap) {
                    self.warn(&e);
                }
                drop(lock);
                return Ok(Some(snap));
            }
            let waited = start.elapsed();
            if tokio::time::Instant::now() >= until {
                if told {
                    cmds.notice(&format!(
                        "no shared {name} status poll after {}; asking {name} about job {} alone",
                        fmt_dur(waited),
                        ask.key
                    ))
                    .await;
                }
                return Ok(None);
            }
            if !told && waited >= cmds.stall_notice {
                told = true;
                cmds.notice(&format!(
                    "waiting for the shared {name} status poll of this user's jobs: another job's query (holding {}) has not answered for {}; still waiting",
                    lock_path.display(),
                    fmt_dur(waited)
                ))
                .await;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// The snapshot at `path` if it is younger than the period and covers the job (lists
    /// it, has its accounting, or was taken after it was submitted).
    fn usable(&self, path: &Path, ask: &Ask<'_>) -> Option<Snapshot> {
        let s: Snapshot = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let now = (self.clock)();
        let period = ask.period.as_millis() as u64;
        let fresh = now.saturating_sub(s.taken_ms) < period && s.taken_ms <= now + period;
        let covers = s.jobs.contains_key(ask.key)
            || s.accounting.contains_key(ask.key)
            || s.taken_ms >= ask.since;
        (fresh && covers).then_some(s)
    }

    /// The elected poller's query: the listing, then one accounting query for the wanted
    /// jobs (and this one, when it left the listing without an exit file). A failed query
    /// is kept in the snapshot, except a command that cannot be started at all.
    async fn query(&self, ask: &Ask<'_>) -> Result<Snapshot, BatchError> {
        let client = ask.client;
        let taken_ms = (self.clock)();
        let mut snap = Snapshot {
            scheduler: client.name().to_string(),
            taken_ms,
            jobs: BTreeMap::new(),
            accounting: BTreeMap::new(),
            error: None,
            accounting_error: None,
        };
        match client.user_jobs().await {
            Ok(jobs) => snap.jobs = jobs,
            Err(e @ BatchError::Spawn { .. }) => return Err(e),
            Err(e) => {
                snap.error = Some(SnapError::of(&e));
                return Ok(snap);
            }
        }
        let mut want = wanted(&want_dir(ask.dir, client.name()));
        if !snap.jobs.contains_key(ask.key) && taken_ms >= ask.since && ask.exit.is_none() {
            want.push(ask.key.to_string());
        }
        want.sort();
        want.dedup();
        want.retain(|id| !snap.jobs.contains_key(id));
        if want.is_empty() {
            return Ok(snap);
        }
        match client.accounting(&want).await {
            Ok(found) => snap.accounting = found,
            Err(e @ BatchError::Spawn { .. }) => return Err(e),
            Err(e) => snap.accounting_error = Some(SnapError::of(&e)),
        }
        Ok(snap)
    }

    /// The job's state from `snap` (and its exit file, when the job was signalled).
    async fn answer(&self, ask: &Ask<'_>, snap: &Snapshot) -> Result<JobState, BatchError> {
        if let Some(e) = &snap.error {
            return Err(e.to_error());
        }
        let (client, exit) = (ask.client, ask.exit);
        let sched = client.sched;
        let want = want_dir(ask.dir, sched.name()).join(ask.key);
        match snap.jobs.get(ask.key) {
            Some(l) if l.code_unknown => {
                let JobState::Finished(f) = &l.state else {
                    return Ok(l.state.clone());
                };
                if let Some(r) = exit {
                    return Ok(JobState::Finished(sched.with_exit_code(f, r.code)));
                }
                // The controller still holds the job: its own answer has the exit code.
                match client.state(ask.id).await? {
                    JobState::Finished(g) => Ok(JobState::Finished(g)),
                    _ => Ok(JobState::Finished(f.clone())),
                }
            }
            Some(l) => Ok(merge(sched, l.state.clone(), exit)),
            None if exit.is_some() => Ok(merge(sched, JobState::Unknown, exit)),
            None => match snap.accounting.get(ask.key) {
                Some(st) => {
                    if !st.is_active() {
                        remove_want(&want);
                    }
                    Ok(st.clone())
                }
                None => {
                    if let Some(e) = &snap.accounting_error {
                        if want.exists() {
                            return Err(e.to_error());
                        }
                    }
                    if snap.taken_ms >= self.since_ms() {
                        if let Err(e) = make_want(&want) {
                            self.warn(&e);
                        }
                    }
                    Ok(JobState::Unknown)
                }
            },
        }
    }

    fn since_ms(&self) -> u64 {
        self.since_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(u64::MAX)
    }

    /// Report a problem of the poll directory once per job (polls go on unshared).
    fn warn(&self, e: &std::io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            let dir = self.dir.as_deref().unwrap_or(Path::new("?"));
            eprintln!(
                "jacamar: WARNING: status polls not shared through {}: {e}",
                dir.display()
            );
        }
    }
}

/// A job that wrote its exit file without being signalled.
fn exited(code: i32) -> Final {
    Final::exited(if code == 0 { "COMPLETED" } else { "FAILED" }, code)
}

/// The scheduler's state `st` of a job whose exit file says `exit` (written after a TERM:
/// the scheduler's final word decides how it ended, the file's code is the job's).
fn merge(sched: &dyn Scheduler, st: JobState, exit: Option<&ExitRecord>) -> JobState {
    match (st, exit) {
        (JobState::Finished(f), Some(r)) => JobState::Finished(sched.with_exit_code(&f, r.code)),
        (JobState::Unknown, Some(r)) if r.terms == 0 => JobState::Finished(exited(r.code)),
        (JobState::Unknown, Some(r)) => JobState::Finished(Final::ended(
            "TERMINATED",
            r.code,
            None,
            Some("the job received SIGTERM".into()),
        )),
        (st, _) => st,
    }
}

/// The job's state from the scheduler alone (one command for this job).
async fn single(
    client: Client<'_>,
    id: &str,
    exit: Option<&ExitRecord>,
) -> Result<JobState, BatchError> {
    Ok(merge(client.sched, client.state(id).await?, exit))
}

/// An id usable as a file name (Slurm's `123`, `123_4`; PBS's `12.server`).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '[' | ']'))
}

/// Create the poll directory (0700) if needed; refuse one that is not ours or not private.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    let ours = m.uid() == nix::unistd::geteuid().as_raw();
    if !m.is_dir() || !ours || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a private directory of ours (mode {:o}, owner {})",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        )));
    }
    Ok(())
}

/// Write `snap` to `path` whole: a private temporary file, then a rename.
fn write_snapshot(dir: &Path, path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let tmp = dir.join(format!("{}.tmp.{}", snap.scheduler, std::process::id()));
    let text = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(&text)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn want_dir(dir: &Path, scheduler: &str) -> PathBuf {
    dir.join(format!("{scheduler}.want"))
}

/// The ids wanted from the accounting; want files older than [`WANT_MAX_AGE`] are removed.
fn wanted(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > WANT_MAX_AGE);
        if old {
            remove_want(&e.path());
        } else if valid_id(&name) {
            ids.push(name);
        }
    }
    ids
}

/// Ask the next poller for the accounting of the job whose want file is `path`.
fn make_want(path: &Path) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(drop)
}

/// The job's accounting answer arrived: its want file goes (already gone is fine).
fn remove_want(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("jacamar: WARNING: failed to remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    //! The poller on tokio's paused clock: several pollers of one poll directory stand for
    //! the drivers of one user; the scheduler is in memory and counts its queries.

    use super::*;
    use crate::batch::limiter::CmdOutput;
    use crate::batch::scheduler::testing::{json, Mem};
    use crate::batch::Commands;
    use tokio::time::Instant;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;
    const PERIOD: Duration = Duration::from_secs(2);

    #[derive(Default)]
    struct Fake {
        listing: Mutex<BTreeMap<String, Listed>>,
        /// The accounting's answers (ids not in it are unknown to it).
        known: Mutex<BTreeMap<String, JobState>>,
        /// The listing fails with this (transient) message.
        down: Mutex<Option<String>>,
        /// How long one listing takes.
        takes: Duration,
        listings: Mutex<u32>,
        accountings: Mutex<Vec<Vec<String>>>,
        singles: Mutex<u32>,
        /// The ids [`Scheduler::state`] was asked about.
        asked: Mutex<Vec<String>>,
        /// The listing keys jobs by the id's part before the first dot (as PBS's does).
        keyed: bool,
    }

    /// The fake's description: it lists the user's jobs.
    const LISTS: Mem = Mem {
        lists: true,
        ..Mem::FAKE
    };
    /// ..., keyed as PBS's listing.
    const KEYED: Mem = Mem {
        keyed: true,
        ..LISTS
    };

    impl Fake {
        fn with(jobs: &[(&str, JobState)]) -> Arc<Fake> {
            let f = Fake::default();
            for (id, st) in jobs {
                f.list(id, st.clone());
            }
            Arc::new(f)
        }
        fn list(&self, id: &str, state: JobState) {
            let code_unknown = matches!(state, JobState::Finished(_));
            self.listing.lock().unwrap().insert(
                id.into(),
                Listed {
                    state,
                    code_unknown,
                    expected_start: None,
                },
            );
        }
        fn listings(&self) -> u32 {
            *self.listings.lock().unwrap()
        }
        fn mem(&self) -> &'static Mem {
            match self.keyed {
                true => &KEYED,
                false => &LISTS,
            }
        }

        /// The answer to [`Mem`]'s `state ID` and `accounting IDS...` (the listing is
        /// [`Fake::listed`]).
        fn respond(&self, tool: &str, args: &[String]) -> CmdOutput {
            if tool == "accounting" {
                self.accountings.lock().unwrap().push(args.to_vec());
                let known = self.known.lock().unwrap().clone();
                let found: BTreeMap<String, JobState> = known
                    .into_iter()
                    .filter(|(id, _)| args.contains(id))
                    .collect();
                return json(&found);
            }
            let id = &args[0];
            *self.singles.lock().unwrap() += 1;
            self.asked.lock().unwrap().push(id.to_string());
            let st = self
                .listing
                .lock()
                .unwrap()
                .get(&self.mem().listing_id(id))
                .map(|l| l.state.clone())
                .unwrap_or(JobState::Unknown);
            json(&st)
        }

        /// The listing, after [`Fake::takes`]; an error while the fake is `down`.
        async fn listed(&self) -> Result<CmdOutput, BatchError> {
            tokio::time::sleep(self.takes).await;
            if let Some(m) = self.down.lock().unwrap().clone() {
                return Err(BatchError::Transient {
                    command: "squeue --me".into(),
                    message: m,
                });
            }
            Ok(json(&*self.listing.lock().unwrap()))
        }

        /// Commands answered by this fake.
        fn commands(self: &Arc<Self>) -> Commands {
            let fake = self.clone();
            Commands::answering(Box::new(move |tool, args| {
                let fake = fake.clone();
                if tool == "list" {
                    *fake.listings.lock().unwrap() += 1;
                    return Box::pin(async move { fake.listed().await });
                }
                let answer = fake.respond(tool, args);
                Box::pin(async move { Ok(answer) })
            }))
        }
    }

    /// The wall clock following tokio's paused clock.
    fn paused_clock() -> Clock {
        let t0 = Instant::now();
        Arc::new(move || 1_700_000_000_000 + t0.elapsed().as_millis() as u64)
    }

    /// One driver: a poller of `dir` and its job `id` (exit file in `dir`'s parent).
    struct Driver {
        poller: Poller,
        id: String,
        exit: PathBuf,
    }

    impl Driver {
        fn new(dir: &Path, clock: &Clock, id: &str) -> Driver {
            Driver {
                poller: Poller::new(Some(dir.join(DIR_NAME)), clock.clone()),
                id: id.into(),
                exit: dir.join(format!("{id}.exit")),
            }
        }
        async fn poll(&self, fake: &Arc<Fake>) -> Result<JobState, BatchError> {
            self.poll_every(fake, &fake.commands(), PERIOD).await
        }
        /// A poll with `period` through `cmds`.
        async fn poll_every(
            &self,
            fake: &Fake,
            cmds: &Commands,
            period: Duration,
        ) -> Result<JobState, BatchError> {
            let job = JobRef {
                id: &self.id,
                exit_file: &self.exit,
            };
            let client = Client::new(fake.mem(), cmds);
            self.poller.state(client, period, &job).await
        }
    }

    fn running() -> JobState {
        JobState::Running {
            state: "RUNNING".into(),
        }
    }

    /// One driver (its poll directory in a new temporary dir), of the job `id`.
    fn one(id: &str) -> (tempfile::TempDir, Driver) {
        let d = tempfile::tempdir().unwrap();
        let drv = Driver::new(d.path(), &paused_clock(), id);
        (d, drv)
    }

    /// Two drivers of one user (one poll directory, in a new temporary dir), of the jobs
    /// `ids`.
    fn two(ids: [&str; 2]) -> (tempfile::TempDir, Driver, Driver) {
        let d = tempfile::tempdir().unwrap();
        let clock = paused_clock();
        let (a, b) = (
            Driver::new(d.path(), &clock, ids[0]),
            Driver::new(d.path(), &clock, ids[1]),
        );
        (d, a, b)
    }

    /// PBS-like ids: the listing says `7`, the submission `7.srv`; the listing answers for
    /// both jobs, and a listed end without an exit file is asked by the submitted id.
    #[tokio::test(start_paused = true)]
    async fn jobs_are_found_in_the_listing_by_their_listing_id() {
        let fake = Arc::new(Fake {
            keyed: true,
            ..Fake::default()
        });
        fake.list("7", running());
        fake.list("8", JobState::Finished(Final::ended("C", 0, None, None)));
        let (_d, a, b) = two(["7.srv", "8.srv"]);
        assert_eq!(a.poll(&fake).await.unwrap(), running());
        assert!(matches!(
            b.poll(&fake).await.unwrap(),
            JobState::Finished(_)
        ));
        assert_eq!(fake.listings(), 1, "one listing answered both");
        assert_eq!(*fake.asked.lock().unwrap(), ["8.srv"]);
        assert!(fake.accountings.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_snapshot_is_shared_and_a_stale_one_refreshed() {
        let fake = Fake::with(&[("1", running()), ("2", running())]);
        let (d, a, b) = two(["1", "2"]);
        assert_eq!(a.poll(&fake).await.unwrap(), running());
        assert_eq!(fake.listings(), 1);
        tokio::time::sleep(MS(1500)).await;
        assert_eq!(b.poll(&fake).await.unwrap(), running());
        assert_eq!(
            fake.listings(),
            1,
            "a snapshot younger than the period is used"
        );
        tokio::time::sleep(MS(600)).await;
        assert_eq!(b.poll(&fake).await.unwrap(), running());
        assert_eq!(fake.listings(), 2, "one older than the period is refreshed");
        assert_eq!(a.poll(&fake).await.unwrap(), running());
        assert_eq!(fake.listings(), 2);
        assert_eq!(*fake.singles.lock().unwrap(), 0);
        // The snapshot is private and whole.
        let snap = d.path().join(DIR_NAME).join("fake.json");
        let mode = std::fs::metadata(&snap).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(d.path().join(DIR_NAME)).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let s: Snapshot = serde_json::from_slice(&std::fs::read(snap).unwrap()).unwrap();
        assert_eq!(s.jobs.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_readers_elect_one_poller() {
        let d = tempfile::tempdir().unwrap();
        let clock = paused_clock();
        let fake = Fake {
            takes: S(1),
            ..Fake::default()
        };
        for i in 0..20 {
            fake.list(&i.to_string(), running());
        }
        let fake = Arc::new(fake);
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (fake, drv) = (fake.clone(), Driver::new(d.path(), &clock, &i.to_string()));
                tokio::spawn(async move { drv.poll(&fake).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), running());
        }
        assert_eq!(fake.listings(), 1, "one listing for twenty drivers");
        assert_eq!(*fake.singles.lock().unwrap(), 0);
        // The losers had the winner's snapshot soon after it was written.
        assert!(t0.elapsed() < S(1) + WAIT_STEP * 2, "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_poller_is_bypassed_and_a_dead_one_replaced() {
        let fake = Fake::with(&[("1", running())]);
        let (d, drv) = one("1");
        ensure_dir(&d.path().join(DIR_NAME)).unwrap();
        // Another driver holds the lock and writes nothing.
        let held = lock::try_lock_file(&d.path().join(DIR_NAME).join("fake.lock"))
            .unwrap()
            .unwrap();
        let t0 = Instant::now();
        assert_eq!(drv.poll(&fake).await.unwrap(), running());
        assert!(t0.elapsed() >= wait_bound(PERIOD), "{:?}", t0.elapsed());
        assert!(
            t0.elapsed() < wait_bound(PERIOD) + S(1),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            *fake.singles.lock().unwrap(),
            1,
            "its own query after the bound"
        );
        assert_eq!(fake.listings(), 0);
        // It dies: the kernel releases its lock, the next reader becomes the poller.
        drop(held);
        let t0 = Instant::now();
        assert_eq!(drv.poll(&fake).await.unwrap(), running());
        assert_eq!(fake.listings(), 1);
        assert!(t0.elapsed() < WAIT_STEP, "{:?}", t0.elapsed());
    }

    /// A loser waiting on a stalled poll says why in its own job log, once, and when the
    /// snapshot comes.
    #[tokio::test(start_paused = true)]
    async fn a_loser_says_once_why_it_waits_and_when_the_poll_answers() {
        let d = tempfile::tempdir().unwrap();
        let clock = paused_clock();
        let fake = Arc::new(Fake {
            takes: S(21),
            ..Fake::default()
        });
        fake.list("1", running());
        fake.list("2", running());
        // A long period: the snapshot is still fresh when it comes, and the loser waits up
        // to wait_bound (60 s) for it.
        let period = S(30);
        let winner = Driver::new(d.path(), &clock, "1");
        let w = {
            let fake = fake.clone();
            tokio::spawn(async move { winner.poll_every(&fake, &fake.commands(), period).await })
        };
        tokio::time::sleep(MS(50)).await;
        let loser = Driver::new(d.path(), &clock, "2");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let mut cmds = fake.commands();
        cmds.notify_to(&tx);
        let t0 = Instant::now();
        let lines = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(l) = rx.recv().await {
                got.push((t0.elapsed().as_secs(), String::from_utf8(l).unwrap()));
            }
            got
        });
        let st = loser.poll_every(&fake, &cmds, period).await;
        assert_eq!(st.unwrap(), running());
        assert_eq!(w.await.unwrap().unwrap(), running());
        drop((cmds, tx));
        let got = lines.await.unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, 10, "{got:?}");
        assert!(
            got[0].1.starts_with("waiting for the shared fake status poll of this user's jobs: another job's query (holding ")
                && got[0].1.ends_with("fake.lock) has not answered for 10s; still waiting\n"),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            (
                21,
                "the shared fake status poll answered after 21s\n".into()
            ),
            "{got:?}"
        );
        assert_eq!(fake.listings(), 1);
        assert_eq!(*fake.singles.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_that_left_the_listing_share_one_accounting_query() {
        let fake = Fake::with(&[]);
        let (d, a, b) = two(["5", "6"]);
        // The accounting does not know them yet (slurmdbd lags).
        assert_eq!(a.poll(&fake).await.unwrap(), JobState::Unknown);
        assert_eq!(b.poll(&fake).await.unwrap(), JobState::Unknown);
        assert_eq!(*fake.accountings.lock().unwrap(), [vec!["5".to_string()]]);
        let want = d.path().join(DIR_NAME).join("fake.want");
        assert!(want.join("5").exists() && want.join("6").exists());
        fake.known.lock().unwrap().insert(
            "5".into(),
            JobState::Finished(Final::exited("COMPLETED", 0)),
        );
        fake.known
            .lock()
            .unwrap()
            .insert("6".into(), JobState::Finished(Final::exited("FAILED", 7)));
        tokio::time::sleep(PERIOD).await;
        let JobState::Finished(f) = b.poll(&fake).await.unwrap() else {
            panic!()
        };
        assert_eq!(f.exit_code, 7);
        let JobState::Finished(f) = a.poll(&fake).await.unwrap() else {
            panic!()
        };
        assert_eq!(f.exit_code, 0);
        assert_eq!(
            fake.accountings.lock().unwrap()[1],
            ["5".to_string(), "6".to_string()],
            "one query for both"
        );
        assert_eq!(fake.listings(), 2);
        assert_eq!(
            std::fs::read_dir(&want).unwrap().count(),
            0,
            "wants consumed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_exit_file_comes_first() {
        let fake = Fake::with(&[("42", running())]);
        let (_d, drv) = one("42");
        std::fs::write(&drv.exit, "7 0 42\n").unwrap();
        let JobState::Finished(f) = drv.poll(&fake).await.unwrap() else {
            panic!()
        };
        assert!(f.normal_end && f.exit_code == 7);
        assert_eq!(fake.listings() + *fake.singles.lock().unwrap(), 0);
        // Signalled: the scheduler's word decides how it ended, the file has the code.
        std::fs::write(&drv.exit, "143 1 42\n").unwrap();
        assert_eq!(drv.poll(&fake).await.unwrap(), running());
        fake.list(
            "42",
            JobState::Finished(Final::ended("TIMEOUT", 0, None, Some("TimeLimit".into()))),
        );
        tokio::time::sleep(PERIOD).await;
        let JobState::Finished(f) = drv.poll(&fake).await.unwrap() else {
            panic!()
        };
        assert_eq!((f.state.as_str(), f.exit_code), ("TIMEOUT", 143));
        assert!(!f.normal_end);
        // Another job's file is not this job's end.
        std::fs::write(&drv.exit, "0 0 41\n").unwrap();
        fake.list("42", running());
        tokio::time::sleep(PERIOD).await;
        assert_eq!(drv.poll(&fake).await.unwrap(), running());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_listing_reaches_every_reader_once_per_period() {
        let fake = Fake::with(&[("1", running()), ("2", running())]);
        *fake.down.lock().unwrap() = Some("Unable to contact slurm controller".into());
        let (_d, a, b) = two(["1", "2"]);
        let e = a.poll(&fake).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = b.poll(&fake).await.unwrap_err();
        assert!(e.to_string().contains("Unable to contact"), "{e}");
        assert_eq!(fake.listings(), 1, "the error is shared, not re-asked");
        *fake.down.lock().unwrap() = None;
        tokio::time::sleep(PERIOD).await;
        assert_eq!(b.poll(&fake).await.unwrap(), running());
        assert_eq!(fake.listings(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_poll_dir_each_job_asks_alone() {
        let fake = Fake::with(&[("1", running())]);
        let p = Poller::new(None, paused_clock());
        let cmds = fake.commands();
        let d = tempfile::tempdir().unwrap();
        let exit = d.path().join("x.exit");
        let job = JobRef {
            id: "1",
            exit_file: &exit,
        };
        assert_eq!(
            p.state(Client::new(fake.mem(), &cmds), PERIOD, &job)
                .await
                .unwrap(),
            running()
        );
        assert_eq!((fake.listings(), *fake.singles.lock().unwrap()), (0, 1));
    }
}
