//! `limit_build_dir`: claiming one of a project's concurrent build directories.
//!
//! A project's directory (`<builds root>/<project-name>_<id>/`) holds the concurrent
//! directories `000`, `001`, ... and beside each a lock file `.000.lock`, `.001.lock`, ...
//!
//! A job claims the lowest free slot: it opens the slot's lock file, takes a **non-blocking
//! fcntl write lock** on it (an open-file-description lock, which NFS honours like a POSIX
//! lock; classic POSIX locks where OFD locks are not supported), reads it, and when the slot
//! is free writes the JSON record `{"job_id", "expiration", "hostname"}`. The fcntl lock is
//! held only while a lock file is read or changed: the claim itself lives in the record, so
//! it survives between the separate processes of the job's stages. A slot is free when its
//! lock file is empty (never used, or released by cleanup), when its record's expiration has
//! passed, or when it holds something unreadable whose file mtime is older than the job
//! timeout. A record that has not expired is never taken, whoever holds the fcntl lock.
//!
//! Later stages find their claim by job id ([`ClaimDir::renew`]); cleanup releases it
//! ([`ClaimDir::release`]) by emptying the lock file. With `max_build_dir`, slots are limited
//! to `000`..`max-1` and a job waits for one to free up ([`ClaimDir::claim`]).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::unistd::{self, UnlinkatFlags};
use serde_json::Value;

use super::cleanup::remove_tree;
use super::lock::try_lock;
use super::secure::{entry_names, file_type, open_dir_path, open_private_child, perm_bits, DirFd};
use super::{DirPolicy, FsError, UserInfo};

/// Extra lifetime of a claim beyond the job's timeout: the backstop's 10 minutes plus the
/// runner's 5 minutes of waiting for a dying run call before cleanup.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Job timeout assumed when the runner did not give `CI_JOB_TIMEOUT` (the runner's default).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a job at the `max_build_dir` cap looks for a free slot again.
pub const WAIT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the "waiting" message is repeated in the job log.
const NOTIFY_EVERY: Duration = Duration::from_secs(60);
/// Highest slot count without `max_build_dir` (a safety net against a runaway loop).
const MAX_SLOTS: u32 = 100_000;
/// Name of the directory of `file_lock_debug` logs, beside the slots.
pub const LOCK_DEBUG_DIR: &str = "lock_debug";
/// Mode of lock files and debug logs.
const FILE_MODE: u32 = 0o600;
/// Largest lock file content read.
const MAX_RECORD: usize = 4096;
/// Attempts at a lock a later stage needs (a claimant holds it for microseconds).
const LOCK_ATTEMPTS: u32 = 2000;

/// What a claim needs to know about the job and the site's settings.
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    pub job_id: u64,
    pub hostname: String,
    /// `max_build_dir`; 0 = no cap.
    pub max: u32,
    /// The job's maximum duration: the claim's lifetime (plus `margin`) and the age after
    /// which an unreadable lock file is reclaimable.
    pub job_timeout: Duration,
    pub margin: Duration,
    /// At the cap: time between two looks for a free slot.
    pub retry_interval: Duration,
    /// At the cap: give up after waiting this long.
    pub wait_limit: Duration,
    /// `file_lock_debug`: log every attempt to `lock_debug/<job id>.json`.
    pub debug_log: bool,
}

impl ClaimSettings {
    /// Settings with the production timings for `job_id`.
    pub fn new(job_id: u64, max: u32, job_timeout: Option<Duration>) -> ClaimSettings {
        let job_timeout = job_timeout.unwrap_or(DEFAULT_JOB_TIMEOUT);
        ClaimSettings {
            job_id,
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            max,
            job_timeout,
            margin: CLAIM_MARGIN,
            retry_interval: WAIT_INTERVAL,
            wait_limit: job_timeout,
            debug_log: false,
        }
    }
}

/// A slot this job holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub slot: u32,
    /// The concurrent directory (`.../<project-name>_<id>/NNN`).
    pub dir: PathBuf,
    /// Unix seconds after which others may take the slot.
    pub expiration: u64,
}

/// This job's claim held by a running stage: an fcntl read lock on the slot's lock file,
/// released when this value is dropped (or the process ends, however it ends).
#[derive(Debug)]
pub struct ClaimHold {
    pub slot: u32,
    _file: File,
}

/// What [`ClaimDir::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub slot: u32,
    /// A stage of the job still holds the claim: the record expires now instead of being
    /// emptied, and the slot frees up when that stage ends.
    pub in_use: bool,
}

/// A lock file of this job, open with a read lock held.
struct OwnLock {
    slot: u32,
    path: PathBuf,
    file: File,
    expiration: u64,
}

/// The content of a lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// Empty: never used, or released.
    Free,
    /// A claim record.
    Held {
        job_id: u64,
        expiration: u64,
        hostname: String,
    },
    /// Anything else (a torn write, a hand edit).
    Garbage,
}

impl LockState {
    /// Read a lock file's content. Never fails: what is not a record is [`LockState::Garbage`].
    pub fn parse(bytes: &[u8]) -> LockState {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return LockState::Free;
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
            return LockState::Garbage;
        };
        let num = |k: &str| match map.get(k) {
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        match (num("job_id"), num("expiration")) {
            (Some(job_id), Some(expiration)) => LockState::Held {
                job_id,
                expiration,
                hostname: map
                    .get("hostname")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
            _ => LockState::Garbage,
        }
    }
}

/// The JSON record of a claim, as upstream writes it (numbers as strings).
pub fn record(job_id: u64, expiration: u64, hostname: &str) -> String {
    serde_json::json!({
        "job_id": job_id.to_string(),
        "expiration": expiration.to_string(),
        "hostname": hostname,
    })
    .to_string()
}

/// `NNN`: the name of a slot's directory.
pub fn slot_name(slot: u32) -> String {
    format!("{slot:03}")
}

/// `.NNN.lock`: the name of a slot's lock file.
pub fn lock_name(slot: u32) -> String {
    format!(".{slot:03}.lock")
}

/// The slot of a lock file name (exactly as [`lock_name`] writes it), else `None`.
fn slot_of_lock(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('.')?.strip_suffix(".lock")?;
    slot_of_dir(digits)
}

/// The slot of a directory name (exactly as [`slot_name`] writes it), else `None`.
fn slot_of_dir(name: &str) -> Option<u32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = name.parse().ok()?;
    (slot_name(n) == name).then_some(n)
}

pub use crate::clock::unix_now;

/// A project's directory of slots, open and verified.
#[derive(Debug)]
pub struct ClaimDir {
    dir: DirFd,
    policy: DirPolicy,
    user: UserInfo,
}

/// How one slot looked.
enum Slot {
    Claimed(Claim),
    Busy,
}

impl ClaimDir {
    pub(crate) fn from_dir(dir: DirFd, policy: &DirPolicy, user: &UserInfo) -> ClaimDir {
        ClaimDir {
            dir,
            policy: *policy,
            user: user.clone(),
        }
    }

    /// Open an existing directory of slots by path (its final component must not be a
    /// symlink; it must belong to the policy's uid and not be writable by others).
    pub fn open(path: &Path, policy: &DirPolicy, user: &UserInfo) -> Result<ClaimDir, FsError> {
        let dir = open_dir_path(path, "build directory")?;
        let st = dir.stat()?;
        if st.st_uid != policy.uid {
            return Err(FsError::refused(
                path,
                format!("owned by uid {}, expected uid {}", st.st_uid, policy.uid),
            ));
        }
        if perm_bits(&st) & 0o022 != 0 {
            return Err(FsError::refused(
                path,
                format!("mode {:04o} is writable by group or others", perm_bits(&st)),
            ));
        }
        Ok(ClaimDir::from_dir(dir, policy, user))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }

    /// Claim the lowest free slot. At the `max_build_dir` cap, wait (telling `notify`, whose
    /// text goes to the job log) until one frees up or `wait_limit` passes.
    pub fn claim(&self, s: &ClaimSettings, notify: &mut dyn FnMut(&str)) -> Result<Claim, FsError> {
        let mut log = DebugLog::open(self, s);
        let started = Instant::now();
        let mut next_notice = started;
        loop {
            if let Some(c) = self.claim_once(s, &mut log)? {
                return Ok(c);
            }
            let waited = started.elapsed();
            if waited >= s.wait_limit {
                log.info(&format!(
                    "gave up after {}s: all {} directories are claimed",
                    waited.as_secs(),
                    s.max
                ));
                return Err(FsError::ClaimTimeout {
                    path: self.dir.path.clone(),
                    max: s.max,
                    waited_secs: waited.as_secs(),
                });
            }
            if Instant::now() >= next_notice {
                let msg = format!(
                    "Waiting for a free build directory: all {} directories (max_build_dir) of {} are claimed by other jobs; waited {}s so far, giving up after {}s",
                    s.max,
                    self.dir.path.display(),
                    waited.as_secs(),
                    s.wait_limit.as_secs()
                );
                log.info(&msg);
                notify(&msg);
                next_notice = Instant::now() + NOTIFY_EVERY;
            }
            std::thread::sleep(s.retry_interval.min(s.wait_limit - waited));
        }
    }

    /// One pass over the slots. `None`: all allowed slots are claimed.
    fn claim_once(&self, s: &ClaimSettings, log: &mut DebugLog) -> Result<Option<Claim>, FsError> {
        let now = unix_now();
        let limit = if s.max > 0 { s.max } else { MAX_SLOTS };
        for slot in 0..limit {
            if let Slot::Claimed(c) = self.try_slot(slot, s, now, log)? {
                return Ok(Some(c));
            }
        }
        if s.max == 0 {
            return Err(FsError::refused(
                &self.dir.path,
                format!("all of its {MAX_SLOTS} build directories are claimed"),
            ));
        }
        Ok(None)
    }

    fn try_slot(
        &self,
        slot: u32,
        s: &ClaimSettings,
        now: u64,
        log: &mut DebugLog,
    ) -> Result<Slot, FsError> {
        let name = lock_name(slot);
        let path = self.dir.path.join(&name);
        for _ in 0..8 {
            let Some(file) = self.open_lock(&name, true)? else {
                continue;
            };
            let st = self.check_lock_file(&file, &path)?;
            match try_lock(file.as_fd(), libc::F_WRLCK) {
                Ok(true) => {}
                Ok(false) => {
                    log.info(&format!(
                        "unable to lock file {slot}: fcntl syscall error: {}",
                        Errno::EAGAIN.desc().to_lowercase()
                    ));
                    return Ok(Slot::Busy);
                }
                Err(e) => return Err(FsError::io("lock", &path, e)),
            }
            // A cleanup may have unlinked the file between our open and our lock.
            if !self.still_linked(&name, &st) {
                continue;
            }
            let state = LockState::parse(&read_record(&file, &path)?);
            match &state {
                LockState::Held { job_id, .. } if *job_id == s.job_id => {}
                LockState::Held { expiration, .. } if *expiration > now => {
                    log.info(&format!("lock file {} has not expired", path.display()));
                    return Ok(Slot::Busy);
                }
                LockState::Garbage if mtime_of(&st) + s.job_timeout.as_secs() > now => {
                    log.info(&format!(
                        "lock file {} is unreadable and was written less than the job timeout ago",
                        path.display()
                    ));
                    return Ok(Slot::Busy);
                }
                _ => {}
            }
            let expiration = now + s.job_timeout.as_secs() + s.margin.as_secs();
            write_record(&file, &path, &record(s.job_id, expiration, &s.hostname))?;
            log.info(&format!(
                "file claimed with {expiration} expiration on {} host",
                s.hostname
            ));
            let dir_name = slot_name(slot);
            if let Err(e) = open_private_child(&self.dir, &dir_name, &self.policy, &self.user, true)
            {
                // Do not keep a slot whose directory is unusable.
                let _ = file.set_len(0);
                log.info(&format!("released {dir_name}: {e}"));
                return Err(e);
            }
            log.info(&format!("identified concurrent target: {dir_name}"));
            return Ok(Slot::Claimed(Claim {
                slot,
                dir: self.dir.path.join(dir_name),
                expiration,
            }));
        }
        // The file kept vanishing (cleanups racing us): try the next slot.
        Ok(Slot::Busy)
    }

    /// Find this job's claim (a later stage of the job), make sure its directory exists and
    /// push its expiration to at least now + job timeout + margin.
    pub fn renew(&self, s: &ClaimSettings) -> Result<Claim, FsError> {
        let now = unix_now();
        let wanted = now + s.job_timeout.as_secs() + s.margin.as_secs();
        if let Some(own) = self.own_lock(s.job_id)? {
            if lock_patiently(&own.file, &own.path, libc::F_WRLCK)? {
                let expiration = own.expiration.max(wanted);
                write_record(
                    &own.file,
                    &own.path,
                    &record(s.job_id, expiration, &s.hostname),
                )?;
                let dir_name = slot_name(own.slot);
                open_private_child(&self.dir, &dir_name, &self.policy, &self.user, true)?;
                return Ok(Claim {
                    slot: own.slot,
                    dir: self.dir.path.join(dir_name),
                    expiration,
                });
            }
        }
        Err(FsError::NotClaimed {
            path: self.dir.path.clone(),
            job_id: s.job_id,
        })
    }

    /// This job's lock file, found under an fcntl **read** lock (which a stage of this job
    /// holding its claim does not block), with that lock still held.
    fn own_lock(&self, job_id: u64) -> Result<Option<OwnLock>, FsError> {
        for (slot, name) in self.lock_files()? {
            let path = self.dir.path.join(&name);
            let Some(file) = self.open_lock(&name, false)? else {
                continue;
            };
            let st = self.check_lock_file(&file, &path)?;
            if !lock_patiently(&file, &path, libc::F_RDLCK)? || !self.still_linked(&name, &st) {
                continue;
            }
            if let LockState::Held {
                job_id: j,
                expiration,
                ..
            } = LockState::parse(&read_record(&file, &path)?)
            {
                if j == job_id {
                    return Ok(Some(OwnLock {
                        slot,
                        path,
                        file,
                        expiration,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Which slot `job_id` holds, reading without changing anything.
    pub fn find(&self, job_id: u64) -> Result<Option<u32>, FsError> {
        Ok(self.own_lock(job_id)?.map(|o| o.slot))
    }

    /// Hold `job_id`'s claim for as long as the returned value lives (a `run` stage): an
    /// fcntl read lock on its lock file. No other job can claim the slot meanwhile, whatever
    /// its record says, and a cleanup of this job that runs concurrently (the runner starts
    /// cleanup at most 5 minutes into a dying run) leaves the slot claimed until the lock
    /// goes away with this process. `None`: the job holds no claim here.
    pub fn hold(&self, job_id: u64) -> Result<Option<ClaimHold>, FsError> {
        Ok(self.own_lock(job_id)?.map(|o| ClaimHold {
            slot: o.slot,
            _file: o.file,
        }))
    }

    /// Release `job_id`'s claim (cleanup). The directory stays for the next job of the
    /// project. When no stage of the job holds the claim, the lock file is emptied; when one
    /// still does (a run call still dying), the record keeps the job id but expires now: the
    /// holder's fcntl lock keeps others out until it ends, and nothing after that.
    pub fn release(&self, job_id: u64, debug_log: bool) -> Result<Option<Released>, FsError> {
        let mut log = DebugLog::open_for(self, job_id, debug_log);
        let Some(own) = self.own_lock(job_id)? else {
            return Ok(None);
        };
        let io = |op: &'static str| {
            let path = own.path.clone();
            move |source| FsError::Io { op, path, source }
        };
        // Upgrade our read lock: it fails only while a stage of the job holds its own.
        if lock_patiently(&own.file, &own.path, libc::F_WRLCK)? {
            own.file.set_len(0).map_err(io("release"))?;
            log.info(&format!("released claim on {}", slot_name(own.slot)));
            return Ok(Some(Released {
                slot: own.slot,
                in_use: false,
            }));
        }
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expiration = unix_now().min(own.expiration);
        write_record(&own.file, &own.path, &record(job_id, expiration, &hostname))?;
        log.info(&format!(
            "claim on {} still held by a running stage of job {job_id}: expires when that stage ends",
            slot_name(own.slot)
        ));
        Ok(Some(Released {
            slot: own.slot,
            in_use: true,
        }))
    }

    /// Remove unclaimed slots at or above `max` (left from a higher `max_build_dir`), highest
    /// first, at most `*budget` of them (decremented). Returns the removed slots.
    pub fn remove_above(&self, max: u32, budget: &mut usize) -> Result<Vec<u32>, FsError> {
        let mut removed = Vec::new();
        if max == 0 || *budget == 0 {
            return Ok(removed);
        }
        let mut slots: Vec<u32> = self
            .entries()?
            .into_iter()
            .filter_map(|n| slot_of_lock(&n).or_else(|| slot_of_dir(&n)))
            .filter(|s| *s >= max)
            .collect();
        slots.sort_unstable_by(|a, b| b.cmp(a));
        slots.dedup();
        let now = unix_now();
        for slot in slots {
            if *budget == 0 {
                break;
            }
            let name = lock_name(slot);
            let path = self.dir.path.join(&name);
            let Some(file) = self.open_lock(&name, true)? else {
                continue;
            };
            let st = self.check_lock_file(&file, &path)?;
            if !try_lock(file.as_fd(), libc::F_WRLCK).map_err(|e| FsError::io("lock", &path, e))?
                || !self.still_linked(&name, &st)
            {
                continue;
            }
            match LockState::parse(&read_record(&file, &path)?) {
                LockState::Held { expiration, .. } if expiration > now => continue,
                LockState::Garbage if mtime_of(&st) + DEFAULT_JOB_TIMEOUT.as_secs() > now => {
                    continue
                }
                _ => {}
            }
            remove_tree(&self.dir, slot_name(slot).as_ref(), 0)?;
            match unistd::unlinkat(&self.dir.fd, name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(FsError::io("remove", &path, e)),
            }
            *budget -= 1;
            removed.push(slot);
        }
        Ok(removed)
    }

    fn entries(&self) -> Result<Vec<String>, FsError> {
        entry_names(&self.dir)
    }

    /// Existing lock files, lowest slot first.
    fn lock_files(&self) -> Result<Vec<(u32, String)>, FsError> {
        let mut v: Vec<(u32, String)> = self
            .entries()?
            .into_iter()
            .filter_map(|n| slot_of_lock(&n).map(|s| (s, n)))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Open a lock file for reading and writing, never through a symlink. `None`: it
    /// vanished (only without `create`).
    fn open_lock(&self, name: &str, create: bool) -> Result<Option<File>, FsError> {
        let mut flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if create {
            flags |= OFlag::O_CREAT;
        }
        match openat(
            self.dir.borrow(),
            name,
            flags,
            Mode::from_bits_truncate(FILE_MODE),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) if !create => Ok(None),
            Err(Errno::ELOOP) => Err(FsError::refused(
                self.dir.path.join(name),
                "is a symbolic link",
            )),
            Err(e) => Err(FsError::io("open", self.dir.path.join(name), e)),
        }
    }

    /// A lock file must be a regular file of the policy's uid.
    fn check_lock_file(&self, file: &File, path: &Path) -> Result<FileStat, FsError> {
        let st = stat::fstat(file).map_err(|e| FsError::io("stat", path, e))?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(FsError::refused(path, "is not a regular file"));
        }
        if st.st_uid != self.policy.uid {
            return Err(FsError::refused(
                path,
                format!(
                    "owned by uid {}, expected uid {}",
                    st.st_uid, self.policy.uid
                ),
            ));
        }
        Ok(st)
    }

    /// Whether `name` still names the file we opened (`st`).
    fn still_linked(&self, name: &str, st: &FileStat) -> bool {
        matches!(
            stat::fstatat(&self.dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW),
            Ok(cur) if cur.st_ino == st.st_ino && cur.st_dev == st.st_dev
        )
    }
}

fn mtime_of(st: &FileStat) -> u64 {
    u64::try_from(st.st_mtime).unwrap_or(0)
}

fn read_record(file: &File, path: &Path) -> Result<Vec<u8>, FsError> {
    let mut buf = vec![0u8; MAX_RECORD];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FsError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Write a record in place: content first, then the length. A crash in between leaves a
/// longer or mixed file: unreadable, so it is kept for a job timeout rather than freed at
/// once. No fsync: the record coordinates live jobs, and the NFS client writes dirty data
/// back when the fcntl lock is released; a host crash ends the claimant's job anyway.
fn write_record(file: &File, path: &Path, text: &str) -> Result<(), FsError> {
    let io = |op: &'static str| {
        move |source| FsError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    file.write_all_at(text.as_bytes(), 0).map_err(io("write"))?;
    file.set_len(text.len() as u64).map_err(io("truncate"))
}

/// Take a lock a claimant holds only for a moment: retry for a short while.
fn lock_patiently(file: &File, path: &Path, kind: libc::c_int) -> Result<bool, FsError> {
    for _ in 0..LOCK_ATTEMPTS {
        if try_lock(file.as_fd(), kind).map_err(|e| FsError::io("lock", path, e))? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(false)
}

/// `file_lock_debug`: JSON lines in `lock_debug/<job id>.json`. Failing to log never fails
/// the job; it is reported once on stderr.
struct DebugLog {
    file: Option<File>,
}

impl DebugLog {
    fn open(dir: &ClaimDir, s: &ClaimSettings) -> DebugLog {
        Self::open_for(dir, s.job_id, s.debug_log)
    }

    fn open_for(dir: &ClaimDir, job_id: u64, enabled: bool) -> DebugLog {
        if !enabled {
            return DebugLog { file: None };
        }
        let file = open_private_child(&dir.dir, LOCK_DEBUG_DIR, &dir.policy, &dir.user, true)
            .and_then(|d| {
                let name = format!("{job_id}.json");
                openat(
                    d.borrow(),
                    name.as_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_APPEND
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(FILE_MODE),
                )
                .map(|fd: OwnedFd| File::from(fd))
                .map_err(|e| FsError::io("open", d.path.join(name), e))
            });
        match file {
            Ok(f) => DebugLog { file: Some(f) },
            Err(e) => {
                eprintln!("WARNING: file_lock_debug: {e}");
                DebugLog { file: None }
            }
        }
    }

    fn info(&mut self, msg: &str) {
        let Some(f) = &mut self.file else {
            return;
        };
        let mut line = serde_json::json!({
            "level": "info",
            "msg": msg,
            "time": rfc3339(unix_now()),
        })
        .to_string();
        line.push('\n');
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("WARNING: file_lock_debug: failed to write the log: {e}");
            self.file = None;
        }
    }
}

pub use crate::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_tolerantly() {
        assert_eq!(LockState::parse(b""), LockState::Free);
        assert_eq!(LockState::parse(b" \n"), LockState::Free);
        assert_eq!(
            LockState::parse(record(2424067, 1714066690, "example").as_bytes()),
            LockState::Held {
                job_id: 2424067,
                expiration: 1714066690,
                hostname: "example".into()
            }
        );
        assert_eq!(
            LockState::parse(br#"{"job_id": 5, "expiration": 9}"#),
            LockState::Held {
                job_id: 5,
                expiration: 9,
                hostname: String::new()
            }
        );
        for bad in [
            &b"{"[..],
            b"\xff\xfe",
            b"[1,2]",
            br#"{"job_id": "x", "expiration": "1"}"#,
            br#"{"job_id": "1"}"#,
            br#"{"job_id": "-1", "expiration": "1"}"#,
        ] {
            assert_eq!(LockState::parse(bad), LockState::Garbage, "{bad:?}");
        }
    }

    #[test]
    fn names_round_trip_and_reject_aliases() {
        assert_eq!(lock_name(4), ".004.lock");
        assert_eq!(slot_of_lock(".004.lock"), Some(4));
        assert_eq!(slot_of_lock(".1234.lock"), Some(1234));
        assert_eq!(slot_of_lock(".0004.lock"), None);
        assert_eq!(slot_of_lock(".04.lock"), None);
        assert_eq!(slot_of_lock(".abc.lock"), None);
        assert_eq!(slot_of_dir("000"), Some(0));
        assert_eq!(slot_of_dir("lock_debug"), None);
    }

    fn me() -> (DirPolicy, UserInfo) {
        let uid = nix::unistd::getuid().as_raw();
        (
            DirPolicy {
                uid,
                group_permissions: false,
            },
            UserInfo {
                name: "me".into(),
                uid,
                gid: nix::unistd::getgid().as_raw(),
                home: "/".into(),
            },
        )
    }

    fn setup() -> (tempfile::TempDir, ClaimDir) {
        let tmp = tempfile::tempdir().unwrap();
        let (p, u) = me();
        let d = ClaimDir::open(tmp.path(), &p, &u).unwrap();
        (tmp, d)
    }

    fn quick(job_id: u64, max: u32) -> ClaimSettings {
        let mut s = ClaimSettings::new(job_id, max, Some(Duration::from_secs(60)));
        s.retry_interval = Duration::from_millis(10);
        s.wait_limit = Duration::from_millis(200);
        s
    }

    fn state(tmp: &tempfile::TempDir, slot: u32) -> LockState {
        LockState::parse(&std::fs::read(tmp.path().join(lock_name(slot))).unwrap())
    }

    #[test]
    fn claims_lowest_free_and_recognises_its_own() {
        let (tmp, d) = setup();
        let a = d.claim(&quick(1, 0), &mut |_| {}).unwrap();
        let b = d.claim(&quick(2, 0), &mut |_| {}).unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        assert!(tmp.path().join("000").is_dir() && tmp.path().join("001").is_dir());
        // A retried config of job 1 gets its own slot back.
        assert_eq!(d.claim(&quick(1, 0), &mut |_| {}).unwrap().slot, 0);
        assert_eq!(d.find(2).unwrap(), Some(1));
        assert!(matches!(state(&tmp, 1), LockState::Held { job_id: 2, .. }));
        assert_eq!(d.renew(&quick(2, 0)).unwrap().slot, 1);
        assert_eq!(d.release(1, false).unwrap().map(|r| r.slot), Some(0));
        assert_eq!(state(&tmp, 0), LockState::Free);
        assert_eq!(d.release(1, false).unwrap(), None, "release is idempotent");
        assert!(matches!(
            d.renew(&quick(1, 0)),
            Err(FsError::NotClaimed { job_id: 1, .. })
        ));
        assert_eq!(d.claim(&quick(3, 0), &mut |_| {}).unwrap().slot, 0);
        let mode = std::fs::metadata(tmp.path().join(".000.lock")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn expired_records_are_reclaimed_unexpired_ones_respected() {
        let (tmp, d) = setup();
        let now = unix_now();
        std::fs::write(tmp.path().join(".000.lock"), record(7, now - 1, "h")).unwrap();
        std::fs::write(tmp.path().join(".001.lock"), record(8, now + 3600, "h")).unwrap();
        // Nobody holds an fcntl lock on .001.lock, yet its record is respected.
        let c = d.claim(&quick(9, 0), &mut |_| {}).unwrap();
        assert_eq!(c.slot, 0);
        let c2 = d.claim(&quick(10, 0), &mut |_| {}).unwrap();
        assert_eq!(c2.slot, 2);
        assert!(matches!(state(&tmp, 1), LockState::Held { job_id: 8, .. }));
        assert!(c.expiration >= now + 60 + CLAIM_MARGIN.as_secs());
    }

    #[test]
    fn garbage_is_reclaimable_only_after_mtime_plus_timeout() {
        let (tmp, d) = setup();
        let p = tmp.path().join(".000.lock");
        std::fs::write(&p, b"{\"job_id\": \"12\", \"expir").unwrap();
        assert_eq!(d.claim(&quick(1, 0), &mut |_| {}).unwrap().slot, 1);
        let old = std::time::SystemTime::now() - Duration::from_secs(61);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(d.claim(&quick(2, 0), &mut |_| {}).unwrap().slot, 0);
        assert!(matches!(state(&tmp, 0), LockState::Held { job_id: 2, .. }));
    }

    #[test]
    fn a_held_fcntl_lock_is_skipped() {
        let (tmp, d) = setup();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(tmp.path().join(".000.lock"))
            .unwrap();
        assert!(try_lock(f.as_fd(), libc::F_WRLCK).unwrap());
        assert_eq!(d.claim(&quick(1, 0), &mut |_| {}).unwrap().slot, 1);
        drop(f);
        assert_eq!(d.claim(&quick(2, 0), &mut |_| {}).unwrap().slot, 0);
    }

    #[test]
    fn at_the_cap_it_waits_visibly_then_gives_up() {
        let (_tmp, d) = setup();
        d.claim(&quick(1, 2), &mut |_| {}).unwrap();
        d.claim(&quick(2, 2), &mut |_| {}).unwrap();
        let mut msgs = Vec::new();
        let err = d
            .claim(&quick(3, 2), &mut |m| msgs.push(m.to_string()))
            .unwrap_err();
        assert!(matches!(err, FsError::ClaimTimeout { max: 2, .. }), "{err}");
        assert!(
            msgs[0].contains("Waiting for a free build directory"),
            "{msgs:?}"
        );
        // A release lets the next claim in.
        d.release(2, false).unwrap();
        assert_eq!(d.claim(&quick(3, 2), &mut |_| {}).unwrap().slot, 1);
    }

    #[test]
    fn removes_unclaimed_slots_above_the_cap_one_at_a_time() {
        let (tmp, d) = setup();
        for job in 1..=4 {
            d.claim(&quick(job, 0), &mut |_| {}).unwrap();
        }
        for job in [1, 3, 4] {
            d.release(job, false).unwrap();
        }
        let mut budget = 1;
        assert_eq!(d.remove_above(1, &mut budget).unwrap(), vec![3]);
        assert_eq!(budget, 0);
        assert!(!tmp.path().join("003").exists() && !tmp.path().join(".003.lock").exists());
        let mut budget = usize::MAX;
        // Slot 1 is still claimed by job 2: kept.
        assert_eq!(d.remove_above(1, &mut budget).unwrap(), vec![2]);
        assert!(tmp.path().join("001").is_dir() && tmp.path().join("000").is_dir());
    }

    #[test]
    fn debug_log_is_json_lines() {
        let (tmp, d) = setup();
        d.claim(&quick(1, 0), &mut |_| {}).unwrap();
        let mut s = quick(2, 0);
        s.debug_log = true;
        d.claim(&s, &mut |_| {}).unwrap();
        let text = std::fs::read_to_string(tmp.path().join("lock_debug/2.json")).unwrap();
        let msgs: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["msg"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(msgs[0].contains(".000.lock has not expired"), "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m == "identified concurrent target: 001"),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let (tmp, d) = setup();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join(".000.lock")).unwrap();
        let err = d.claim(&quick(1, 0), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
