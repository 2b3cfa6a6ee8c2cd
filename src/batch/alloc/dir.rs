//! The allocation directory `<base_dir>/.jacamar-alloc/`: its lock, the allocations'
//! records, their leases and their holders' files (docs/allocations-design.md, "The lock,
//! the record, the leases").
//!
//! Layout, for an allocation with key `K` ([`Key`]):
//!
//! * `lock`: the flock(2) lock that serializes creating, reusing and ending allocations
//!   (the holder takes it with `flock(1)`);
//! * `K.rec`: the record, one line `v1 <scheduler> <id> <submitted unix s> <uid>`;
//! * `K.leases/<ci_job_id>`: one lease per CI job using the allocation, refreshed while it
//!   runs; `K.leases/.last`: stamped when a lease goes;
//! * `K.holder.bash`, `K.holder.out`: the holder script and its output.
//!
//! Everything here is written by the user's own processes, the job included: what is read
//! back is checked as untrusted text.

use std::ffi::OsString;
use std::fs::{DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{AllocError, Key};

/// The directory's name in the user's base dir.
pub const DIR_NAME: &str = ".jacamar-alloc";

/// A lease not refreshed for this long belongs to a dead driver.
pub const LEASE_FRESH: Duration = Duration::from_secs(180);

/// How often a running job refreshes its lease.
pub const LEASE_REFRESH: Duration = Duration::from_secs(60);

/// The lock file's name in the directory.
const LOCK_NAME: &str = "lock";

/// The stamp, in a leases directory, of the last time a lease went.
const LAST_NAME: &str = ".last";

/// The longest record accepted, in bytes, its newline included.
const RECORD_MAX: usize = 256;

/// How far in the future a record's submission time may be (clocks of hosts sharing the
/// base dir differ a little).
const FUTURE_SLACK_SECS: u64 = 60;

/// How often [`AllocDir::lock`] tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// The allocation directory of one user (see the module doc).
#[derive(Debug, Clone)]
pub struct AllocDir {
    path: PathBuf,
}

/// What a record says: the scheduler job that is the allocation, when it was submitted
/// and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRecord {
    /// The scheduler's name (`slurm`).
    pub scheduler: String,
    /// The allocation's job id.
    pub id: String,
    /// When it was submitted, in seconds since the epoch.
    pub submitted_unix: u64,
    /// The uid that submitted it.
    pub uid: u32,
}

/// The allocation lock, held until dropped: it owns the locked file, whose close releases
/// the flock(2) lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> AllocError {
    AllocError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuse `m` (the metadata of `path`, not following a symbolic link) unless it is a
/// directory owned by `euid` with no group or other permission bit.
fn check_private(path: &Path, m: &Metadata, euid: u32) -> Result<(), AllocError> {
    let why = if m.file_type().is_symlink() {
        "a symbolic link"
    } else if !m.is_dir() {
        "not a directory"
    } else if m.uid() != euid {
        "owned by another user"
    } else if m.mode() & 0o077 != 0 {
        "open to group or others"
    } else {
        return Ok(());
    };
    Err(AllocError::NotPrivate {
        path: path.to_path_buf(),
        why,
        mode: m.mode() & 0o7777,
        owner: m.uid(),
    })
}

/// `dir` created 0700 when missing, then checked with [`check_private`].
fn ensure_private_dir(dir: &Path) -> Result<(), AllocError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create the directory", dir, e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| io("inspect", dir, e))?;
    check_private(dir, &m, nix::unistd::geteuid().as_raw())
}

/// `path` with `.tmp.<our pid>` appended: the temporary file of a whole write.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(s)
}

/// Write `bytes` to `path` whole: a new temporary file next to it (a stale one of ours
/// removed first; `O_EXCL|O_NOFOLLOW`, mode `mode`), fsynced, then renamed over `path`, so
/// a reader sees the old content or the new, never a part. Whatever `path` was (a file, a
/// symbolic link) is replaced; the new file's mtime is now.
fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AllocError> {
    let tmp = tmp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove the stale temporary file", &tmp, e)),
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        // The creation mode went through the umask: set it exactly.
        f.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io("set the mode of", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("flush", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename into place", path, e))
    })();
    if written.is_err() {
        // The write's own error is the one reported; a temporary file left behind is
        // removed by the next write of the same process id.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `text` for a one-line message: [`crate::text::sanitize`], and newlines escaped too.
fn show(text: &str) -> String {
    crate::text::sanitize(text).replace('\n', "\\u{a}")
}

/// 1 to 20 ASCII digits as a number (`None` for anything else, or an overflow).
fn digits(s: &str) -> Option<u64> {
    if (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Whether a lease with modification time `mtime` is fresh at `now`: at most
/// [`LEASE_FRESH`] old (a time in the future counts as fresh).
fn fresh(mtime: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(mtime) {
        Ok(age) => age <= LEASE_FRESH,
        Err(_) => true,
    }
}

/// Parse a record's bytes (read from `path`, at most `RECORD_MAX + 1` of them) under the
/// rules of [`AllocDir::read_record`].
fn parse_record(
    path: &Path,
    bytes: &[u8],
    scheduler: &str,
    valid_id: fn(&str) -> bool,
    uid: u32,
    now_unix: u64,
) -> Result<AllocRecord, AllocError> {
    let text = String::from_utf8_lossy(bytes);
    let shown = show(text.strip_suffix('\n').unwrap_or(&text));
    let refuse = |why: &str| {
        AllocError::Refused(format!(
            "{}: line 1: \"{shown}\" is not an allocation record: {why}",
            path.display()
        ))
    };
    if bytes.len() > RECORD_MAX {
        return Err(refuse(&format!("longer than {RECORD_MAX} bytes")));
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(refuse("not UTF-8 text"));
    }
    let Some(line) = text.strip_suffix('\n') else {
        return Err(refuse("no newline at its end (a torn or foreign file)"));
    };
    if line.contains('\n') {
        return Err(refuse("more than one line"));
    }
    let w: Vec<&str> = line.split(' ').collect();
    if w.len() != 5 || w.iter().any(|x| x.is_empty()) {
        return Err(refuse("not five words separated by single spaces"));
    }
    if w[0] != "v1" {
        return Err(refuse("its version is not v1"));
    }
    if w[1] != scheduler {
        return Err(refuse(&format!("its scheduler is not {scheduler}")));
    }
    if !valid_id(w[2]) {
        return Err(refuse(&format!(
            "its job id is not a valid {scheduler} job id"
        )));
    }
    let Some(submitted_unix) = digits(w[3]) else {
        return Err(refuse("its submission time is not a number of seconds"));
    };
    if submitted_unix > now_unix.saturating_add(FUTURE_SLACK_SECS) {
        return Err(refuse("its submission time is in the future"));
    }
    let rec_uid = digits(w[4]).and_then(|u| u32::try_from(u).ok());
    if rec_uid != Some(uid) {
        return Err(refuse(&format!("its uid is not ours ({uid})")));
    }
    Ok(AllocRecord {
        scheduler: w[1].to_string(),
        id: w[2].to_string(),
        submitted_unix,
        uid,
    })
}

/// Whether a record field is one word that reads back as written.
fn plain_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl AllocDir {
    /// `<base_dir>/.jacamar-alloc`: created 0700 when missing; refused (an error naming
    /// the path, its mode and owner) when it is a symbolic link, not a directory, not owned
    /// by our effective uid, or has any group or other permission bit. The same rule as the
    /// poller's `.jacamar-poll` (src/batch/poller.rs). `base_dir` itself must exist.
    pub fn open(base_dir: &Path) -> Result<AllocDir, AllocError> {
        let path = base_dir.join(DIR_NAME);
        ensure_private_dir(&path)?;
        Ok(AllocDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the allocation lock: flock(2) `LOCK_EX` on `<dir>/lock` (opened with
    /// `O_CREAT|O_NOFOLLOW|O_CLOEXEC`, mode 0600), tried without blocking every 50 ms for
    /// up to `bound` (callers pass 30 s); then [`AllocError::LockTimeout`] naming the file
    /// and the wait. flock(2), not an fcntl lock: the bash holder takes the same lock with
    /// `flock(1)`, and the two kinds do not exclude each other (docs/allocations-facts.md,
    /// addendum). The waits are tokio sleeps.
    pub async fn lock(&self, bound: Duration) -> Result<LockGuard, AllocError> {
        let path = self.path.join(LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| io("open the lock", &path, e))?;
        let m = file.metadata().map_err(|e| io("inspect", &path, e))?;
        if !m.is_file() {
            return Err(io(
                "lock",
                &path,
                std::io::Error::other("not a regular file"),
            ));
        }
        let start = tokio::time::Instant::now();
        loop {
            let taken =
                crate::sys::flock::try_exclusive(file.as_fd()).map_err(|e| io("lock", &path, e))?;
            if taken {
                return Ok(LockGuard { _file: file, path });
            }
            let waited = start.elapsed();
            if waited >= bound {
                return Err(AllocError::LockTimeout {
                    path,
                    waited: bound,
                });
            }
            tokio::time::sleep(LOCK_RETRY.min(bound - waited)).await;
        }
    }

    /// `<dir>/<key>.rec`.
    pub fn record_path(&self, key: &Key) -> PathBuf {
        self.path.join(format!("{key}.rec"))
    }

    /// Read the record of `key`. `Ok(None)`: there is none. The file is untrusted (the job
    /// can write the user's base dir): anything but exactly one line
    /// `v1 <scheduler> <id> <submitted unix s> <uid>\n` of at most 256 bytes, with
    /// `scheduler` as its scheduler, an id that passes `valid_id`, a submission time not
    /// more than 60 s after `now_unix` and `uid` as its uid is [`AllocError::Refused`], a
    /// sentence naming the file and showing the line escaped ([`crate::text::sanitize`]).
    /// Opened with `O_NOFOLLOW`: a symbolic link (or anything but a regular file) is
    /// refused too.
    pub fn read_record(
        &self,
        key: &Key,
        scheduler: &str,
        valid_id: fn(&str) -> bool,
        uid: u32,
        now_unix: u64,
    ) -> Result<Option<AllocRecord>, AllocError> {
        let path = self.record_path(key);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(AllocError::Refused(format!(
                    "{}: a symbolic link is not an allocation record",
                    path.display()
                )))
            }
            Err(e) => return Err(io("open", &path, e)),
        };
        let m = file.metadata().map_err(|e| io("inspect", &path, e))?;
        if !m.is_file() {
            return Err(AllocError::Refused(format!(
                "{}: not a regular file, so not an allocation record",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(RECORD_MAX + 1);
        file.take(RECORD_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io("read", &path, e))?;
        parse_record(&path, &bytes, scheduler, valid_id, uid, now_unix).map(Some)
    }

    /// Write the record of `key` whole: `<key>.rec.tmp.<pid>` (0600, `O_NOFOLLOW|O_EXCL`,
    /// after removing a stale one), fsync, rename. Fields that would not read back (empty,
    /// or with a space or a control character) are refused.
    pub fn write_record(&self, key: &Key, rec: &AllocRecord) -> Result<(), AllocError> {
        let path = self.record_path(key);
        for (what, field) in [("scheduler", &rec.scheduler), ("job id", &rec.id)] {
            if !plain_word(field) {
                return Err(AllocError::BadRecord {
                    path,
                    why: format!("the {what} \"{}\" is not one plain word", show(field)),
                });
            }
        }
        let line = format!(
            "v1 {} {} {} {}\n",
            rec.scheduler, rec.id, rec.submitted_unix, rec.uid
        );
        if line.len() > RECORD_MAX {
            return Err(AllocError::BadRecord {
                path,
                why: format!("the record would be longer than {RECORD_MAX} bytes"),
            });
        }
        write_whole(&path, line.as_bytes(), 0o600)
    }

    /// Remove the record of `key`; a missing one is fine.
    pub fn remove_record(&self, key: &Key) -> Result<(), AllocError> {
        let path = self.record_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path, e)),
        }
    }

    /// `<dir>/<key>.leases`: the leases of the allocation of `key`.
    pub fn leases_dir(&self, key: &Key) -> PathBuf {
        self.path.join(format!("{key}.leases"))
    }

    fn lease_path(&self, key: &Key, ci_job_id: u64) -> PathBuf {
        self.leases_dir(key).join(ci_job_id.to_string())
    }

    /// Make `<dir>/<key>.leases/` (0700, private as the directory itself) and the lease
    /// `<ci_job_id>` in it: content `<hostname> <pid>\n` (for people), mode 0600, mtime
    /// now. An existing lease (or anything else of that name but a directory) is replaced.
    pub fn make_lease(&self, key: &Key, ci_job_id: u64) -> Result<(), AllocError> {
        let leases = self.leases_dir(key);
        ensure_private_dir(&leases)?;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown-host".to_string());
        let text = format!("{} {}\n", show(&host), std::process::id());
        write_whole(&leases.join(ci_job_id.to_string()), text.as_bytes(), 0o600)
    }

    /// Refresh the mtime of the lease of `ci_job_id` to now; a missing lease (or one that
    /// is not a regular file) is made anew.
    pub fn touch_lease(&self, key: &Key, ci_job_id: u64) -> Result<(), AllocError> {
        let path = self.lease_path(key, ci_job_id);
        let file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) =>
            {
                return self.make_lease(key, ci_job_id)
            }
            Err(e) => return Err(io("open the lease", &path, e)),
        };
        let m = file.metadata().map_err(|e| io("inspect", &path, e))?;
        if !m.is_file() {
            drop(file);
            return self.make_lease(key, ci_job_id);
        }
        file.set_modified(SystemTime::now())
            .map_err(|e| io("refresh the lease", &path, e))
    }

    /// Give the lease of `ci_job_id` up: stamp `<key>.leases/.last` (a new empty file, mtime
    /// now), then remove the lease (a missing one is fine). The stamp goes first, so the
    /// holder never sees neither the lease nor the time it went.
    pub fn release_lease(&self, key: &Key, ci_job_id: u64) -> Result<(), AllocError> {
        let leases = self.leases_dir(key);
        ensure_private_dir(&leases)?;
        write_whole(&leases.join(LAST_NAME), b"", 0o600)?;
        let path = self.lease_path(key, ci_job_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove the lease", &path, e)),
        }
    }

    /// How many fresh leases (regular files whose mtime is at most [`LEASE_FRESH`] before
    /// `now`) the allocation of `key` has besides the one of `ci_job_id`. Names that are not
    /// all decimal digits (`.last`, temporary files) are not leases. No leases directory: 0.
    pub fn other_fresh_leases(
        &self,
        key: &Key,
        ci_job_id: u64,
        now: SystemTime,
    ) -> Result<usize, AllocError> {
        let dir = self.leases_dir(key);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("read", &dir, e)),
        };
        let own = ci_job_id.to_string();
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(|e| io("read", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) || name == own {
                continue;
            }
            // DirEntry::metadata does not follow a symbolic link.
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("inspect", &entry.path(), e)),
            };
            if !m.is_file() {
                continue;
            }
            let mtime = m
                .modified()
                .map_err(|e| io("read the mtime of", &entry.path(), e))?;
            if fresh(mtime, now) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// `<dir>/<key>.holder.out`: the holder's output (`sbatch -o`), for people.
    pub fn holder_out(&self, key: &Key) -> PathBuf {
        self.path.join(format!("{key}.holder.out"))
    }

    /// `<dir>/<key>.holder.bash`: where the holder script is written
    /// (see [`super::holder::script`]).
    pub fn holder_script_path(&self, key: &Key) -> PathBuf {
        self.path.join(format!("{key}.holder.bash"))
    }

    /// Remove what ended allocations left, for keys with no record: their holder's output
    /// and script and their leases directory (stale leases of killed drivers, `.last`),
    /// when nothing of the key was modified for `age`. Called under the lock, so no job
    /// makes a record or lease of such a key meanwhile. Returns how many entries went;
    /// entries that are not ours to read are left as they are.
    pub fn prune(&self, age: Duration, now: SystemTime) -> Result<usize, AllocError> {
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|d| d >= age)
        };
        let entries = std::fs::read_dir(&self.path).map_err(|e| io("read", &self.path, e))?;
        let mut gone = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((key, rest)) = name.split_once('.') else {
                continue;
            };
            let Some(key) = Key::parse(key) else { continue };
            if !matches!(rest, "holder.out" | "holder.bash" | "leases") {
                continue;
            }
            if std::fs::symlink_metadata(self.record_path(&key)).is_ok() {
                continue;
            }
            let path = entry.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if m.is_dir() {
                // Every lease in it must be old too (its files' times, not the directory's).
                let Ok(inner) = std::fs::read_dir(&path) else {
                    continue;
                };
                let files: Vec<_> = inner.flatten().collect();
                let all_old = files.iter().all(|f| {
                    std::fs::symlink_metadata(f.path())
                        .map(|m| !m.is_dir() && old(&m))
                        .unwrap_or(false)
                });
                if !all_old || !old(&m) {
                    continue;
                }
                for f in files {
                    std::fs::remove_file(f.path()).map_err(|e| io("remove", &f.path(), e))?;
                }
                std::fs::remove_dir(&path).map_err(|e| io("remove", &path, e))?;
                gone += 1;
            } else if old(&m) {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Write the holder script `text` to [`AllocDir::holder_script_path`] whole (tmp +
    /// rename, mode 0700); its path.
    pub fn write_holder(&self, key: &Key, text: &str) -> Result<PathBuf, AllocError> {
        let path = self.holder_script_path(key);
        write_whole(&path, text.as_bytes(), 0o700)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn key() -> Key {
        Key::derive(1000, "17", "4711", &["-n1".to_string()])
    }

    fn slurm_id(id: &str) -> bool {
        crate::batch::is_decimal_id(id)
    }

    const NOW: u64 = 1_700_000_000;

    fn setup() -> (tempfile::TempDir, AllocDir) {
        let base = tempfile::tempdir().unwrap();
        let dir = AllocDir::open(base.path()).unwrap();
        (base, dir)
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn open_makes_a_private_directory_and_accepts_it_again() {
        let base = tempfile::tempdir().unwrap();
        let dir = AllocDir::open(base.path()).unwrap();
        assert_eq!(dir.path(), base.path().join(DIR_NAME));
        assert_eq!(mode_of(dir.path()), 0o700);
        AllocDir::open(base.path()).unwrap();
    }

    #[test]
    fn open_refuses_what_is_not_our_private_directory() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join(DIR_NAME);

        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o750)).unwrap();
        let e = AllocDir::open(base.path()).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(
            e.contains("open to group or others") && e.contains("mode 750"),
            "{e}"
        );
        std::fs::remove_dir(&path).unwrap();

        std::fs::write(&path, "").unwrap();
        let e = AllocDir::open(base.path()).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&path).unwrap();

        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let e = AllocDir::open(base.path()).unwrap_err().to_string();
        assert!(e.contains("a symbolic link"), "{e}");

        // Another owner: the check itself, with another effective uid than the owner's.
        let m = std::fs::symlink_metadata(&elsewhere).unwrap();
        let e = check_private(&elsewhere, &m, m.uid().wrapping_add(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("owned by another user") && e.contains(&format!("owner uid {}", m.uid())),
            "{e}"
        );
    }

    fn record() -> AllocRecord {
        AllocRecord {
            scheduler: "slurm".into(),
            id: "1469".into(),
            submitted_unix: NOW - 10,
            uid: 1000,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let (_base, dir) = setup();
        let k = key();
        assert_eq!(
            dir.read_record(&k, "slurm", slurm_id, 1000, NOW).unwrap(),
            None
        );
        dir.write_record(&k, &record()).unwrap();
        let path = dir.record_path(&k);
        assert_eq!(path, dir.path().join(format!("{}.rec", k.as_str())));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("v1 slurm 1469 {} 1000\n", NOW - 10)
        );
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            dir.read_record(&k, "slurm", slurm_id, 1000, NOW).unwrap(),
            Some(record())
        );
        // Written again: replaced whole, no temporary file left.
        let mut r2 = record();
        r2.id = "1470".into();
        dir.write_record(&k, &r2).unwrap();
        assert_eq!(
            dir.read_record(&k, "slurm", slurm_id, 1000, NOW).unwrap(),
            Some(r2)
        );
        assert!(!tmp_path(&path).exists());
        dir.remove_record(&k).unwrap();
        dir.remove_record(&k).unwrap();
        assert_eq!(
            dir.read_record(&k, "slurm", slurm_id, 1000, NOW).unwrap(),
            None
        );
    }

    #[test]
    fn a_record_with_a_field_that_would_not_read_back_is_not_written() {
        let (_base, dir) = setup();
        for (scheduler, id) in [
            ("slurm", "1 2"),
            ("slurm", ""),
            ("sl\nurm", "1"),
            ("slurm", "1\x1b"),
        ] {
            let rec = AllocRecord {
                scheduler: scheduler.into(),
                id: id.into(),
                ..record()
            };
            let e = dir.write_record(&key(), &rec).unwrap_err();
            assert!(matches!(e, AllocError::BadRecord { .. }), "{e}");
            assert!(
                !e.to_string().contains('\n') && !e.to_string().contains('\x1b'),
                "{e}"
            );
        }
        assert!(!dir.record_path(&key()).exists());
    }

    /// The refusal of `content` as the record (not written by us).
    fn refusal(content: &[u8]) -> String {
        let (_base, dir) = setup();
        let path = dir.record_path(&key());
        std::fs::write(&path, content).unwrap();
        match dir.read_record(&key(), "slurm", slurm_id, 1000, NOW) {
            Err(AllocError::Refused(s)) => {
                assert!(s.contains(&path.display().to_string()), "{s}");
                assert!(!s.contains('\n') && !s.contains('\x1b'), "{s:?}");
                s
            }
            other => panic!(
                "{:?} was not refused: {other:?}",
                String::from_utf8_lossy(content)
            ),
        }
    }

    #[test]
    fn forged_and_broken_records_are_refused_with_the_reason() {
        let ok = format!("v1 slurm 1469 {NOW} 1000\n");
        let (_base, dir) = setup();
        std::fs::write(dir.record_path(&key()), &ok).unwrap();
        assert!(dir
            .read_record(&key(), "slurm", slurm_id, 1000, NOW)
            .is_ok());

        let s = refusal(format!("v1 slurm --uid=0 {NOW} 1000\n").as_bytes());
        assert!(
            s.contains(&format!(
                "line 1: \"v1 slurm --uid=0 {NOW} 1000\" is not an allocation record"
            )) && s.contains("its job id is not a valid slurm job id"),
            "{s}"
        );
        let s = refusal(format!("v1 pbs 1469 {NOW} 1000\n").as_bytes());
        assert!(s.contains("its scheduler is not slurm"), "{s}");
        let s = refusal(format!("v1 slurm 1469 {NOW} 0\n").as_bytes());
        assert!(s.contains("its uid is not ours (1000)"), "{s}");
        let s = refusal(format!("v1 slurm 1469 {} 1000\n", NOW + 61).as_bytes());
        assert!(s.contains("in the future"), "{s}");
        let s = refusal(format!("v1 slurm 1469 {NOW} 1000\nv1 slurm 1470 {NOW} 1000\n").as_bytes());
        assert!(
            s.contains("more than one line") && s.contains("1000\\u{a}v1"),
            "{s}"
        );
        let s = refusal(format!("v1 slurm 1469 {NOW} 1000").as_bytes());
        assert!(s.contains("no newline"), "{s}");
        let mut long = format!("v1 slurm 1469 {NOW} 1000").into_bytes();
        long.resize(299, b'0');
        long.push(b'\n');
        assert_eq!(long.len(), 300);
        let s = refusal(&long);
        assert!(s.contains("longer than 256 bytes"), "{s}");
        let s = refusal(format!("v1 slurm \x1b[31m1469 {NOW} 1000\n").as_bytes());
        assert!(s.contains("\"v1 slurm \\u{1b}[31m1469"), "{s}");
        let s = refusal(format!("v2 slurm 1469 {NOW} 1000\n").as_bytes());
        assert!(s.contains("not v1"), "{s}");
        let s = refusal(format!("v1 slurm 1469  {NOW} 1000\n").as_bytes());
        assert!(s.contains("five words"), "{s}");
        let s = refusal(format!("v1 slurm 1469 {NOW} 1000 extra\n").as_bytes());
        assert!(s.contains("five words"), "{s}");
        let s = refusal(b"v1 slurm 1469 -5 1000\n");
        assert!(s.contains("not a number of seconds"), "{s}");
        let s = refusal(format!("v1 slurm 1469 {NOW} 99999999999\n").as_bytes());
        assert!(s.contains("its uid is not ours"), "{s}");
        let s = refusal(b"v1 slurm 1469 \xff 1000\n");
        assert!(s.contains("not UTF-8"), "{s}");
        let s = refusal(b"");
        assert!(s.contains("\"\" is not an allocation record"), "{s}");
    }

    #[test]
    fn a_record_up_to_a_minute_in_the_future_is_accepted() {
        let (_base, dir) = setup();
        std::fs::write(
            dir.record_path(&key()),
            format!("v1 slurm 7 {} 1000\n", NOW + 60),
        )
        .unwrap();
        let r = dir
            .read_record(&key(), "slurm", slurm_id, 1000, NOW)
            .unwrap()
            .unwrap();
        assert_eq!(r.submitted_unix, NOW + 60);
    }

    #[test]
    fn a_symbolic_link_or_a_fifo_as_the_record_is_refused() {
        let (base, dir) = setup();
        let target = base.path().join("target");
        std::fs::write(&target, format!("v1 slurm 1469 {NOW} 1000\n")).unwrap();
        let path = dir.record_path(&key());
        std::os::unix::fs::symlink(&target, &path).unwrap();
        match dir.read_record(&key(), "slurm", slurm_id, 1000, NOW) {
            Err(AllocError::Refused(s)) => {
                assert!(
                    s.contains(&path.display().to_string()) && s.contains("symbolic link"),
                    "{s}"
                )
            }
            other => panic!("a symbolic link was not refused: {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        match dir.read_record(&key(), "slurm", slurm_id, 1000, NOW) {
            Err(AllocError::Refused(s)) => assert!(s.contains("not a regular file"), "{s}"),
            other => panic!("a fifo was not refused: {other:?}"),
        }
    }

    fn set_mtime(p: &Path, t: SystemTime) {
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn leases_are_fresh_for_180_seconds_and_only_decimal_names_count() {
        let (_base, dir) = setup();
        let k = key();
        assert_eq!(dir.other_fresh_leases(&k, 1, SystemTime::now()).unwrap(), 0);
        dir.make_lease(&k, 1).unwrap();
        dir.make_lease(&k, 2).unwrap();
        let leases = dir.leases_dir(&k);
        assert_eq!(mode_of(&leases), 0o700);
        assert_eq!(mode_of(&leases.join("2")), 0o600);
        let text = std::fs::read_to_string(leases.join("2")).unwrap();
        assert!(
            text.ends_with(&format!(" {}\n", std::process::id())),
            "{text:?}"
        );

        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
        set_mtime(&leases.join("1"), t);
        set_mtime(&leases.join("2"), t);
        std::fs::write(leases.join("abc"), "").unwrap();
        std::fs::write(leases.join("12a"), "").unwrap();
        std::fs::write(leases.join(".last"), "").unwrap();
        std::fs::create_dir(leases.join("3")).unwrap();
        std::os::unix::fs::symlink(leases.join("2"), leases.join("4")).unwrap();
        for p in ["abc", "12a", ".last"] {
            set_mtime(&leases.join(p), t);
        }

        let at = |s: u64| t + Duration::from_secs(s);
        assert_eq!(dir.other_fresh_leases(&k, 1, at(0)).unwrap(), 1);
        assert_eq!(dir.other_fresh_leases(&k, 2, at(0)).unwrap(), 1);
        assert_eq!(dir.other_fresh_leases(&k, 9, at(0)).unwrap(), 2);
        assert_eq!(dir.other_fresh_leases(&k, 9, at(180)).unwrap(), 2);
        assert_eq!(dir.other_fresh_leases(&k, 9, at(181)).unwrap(), 0);
        // A lease from a clock a little ahead of ours is fresh.
        assert_eq!(
            dir.other_fresh_leases(&k, 9, t - Duration::from_secs(5))
                .unwrap(),
            2
        );

        // Refreshed: fresh again at a time 180 s after the old mtime; the other not.
        dir.touch_lease(&k, 2).unwrap();
        assert_eq!(
            dir.other_fresh_leases(&k, 9, SystemTime::now() + Duration::from_secs(170))
                .unwrap(),
            1
        );
        // A missing lease is made by touch.
        dir.touch_lease(&k, 5).unwrap();
        assert!(leases.join("5").is_file());
        assert_eq!(dir.other_fresh_leases(&k, 9, SystemTime::now()).unwrap(), 2);
    }

    #[test]
    fn releasing_a_lease_removes_it_and_stamps_last() {
        let (_base, dir) = setup();
        let k = key();
        dir.make_lease(&k, 7).unwrap();
        let leases = dir.leases_dir(&k);
        let last = leases.join(".last");
        assert!(!last.exists());
        let before = SystemTime::now() - Duration::from_secs(1);
        dir.release_lease(&k, 7).unwrap();
        assert!(!leases.join("7").exists());
        let m = std::fs::symlink_metadata(&last).unwrap();
        assert!(m.is_file() && m.len() == 0);
        assert!(m.modified().unwrap() >= before);
        // Stamped again with an old stamp there and no lease: the stamp moves.
        set_mtime(&last, SystemTime::UNIX_EPOCH + Duration::from_secs(NOW));
        dir.release_lease(&k, 7).unwrap();
        assert!(std::fs::metadata(&last).unwrap().modified().unwrap() >= before);
        // A release with no leases directory at all makes it.
        let k2 = Key::derive(1, "2", "3", &[]);
        dir.release_lease(&k2, 1).unwrap();
        assert!(dir.leases_dir(&k2).join(".last").is_file());
        assert_eq!(dir.other_fresh_leases(&k, 1, SystemTime::now()).unwrap(), 0);
    }

    #[tokio::test]
    async fn the_lock_excludes_a_second_lock_until_dropped() {
        let (_base, dir) = setup();
        let first = dir.lock(Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.path(), dir.path().join("lock"));
        assert_eq!(mode_of(first.path()), 0o600);
        let t = std::time::Instant::now();
        let e = dir.lock(Duration::from_millis(200)).await.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(matches!(e, AllocError::LockTimeout { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.path().join("lock").display().to_string()) && msg.contains("200ms"),
            "{msg}"
        );
        drop(first);
        let second = dir.lock(Duration::from_millis(200)).await.unwrap();
        drop(second);
    }

    #[tokio::test]
    async fn the_lock_and_flock_1_exclude_each_other() {
        let (_base, dir) = setup();
        let lock = dir.path().join("lock");
        let try_flock = || {
            Command::new("flock")
                .arg("-n")
                .arg(&lock)
                .arg("true")
                .status()
                .unwrap()
                .code()
        };
        let guard = dir.lock(Duration::from_secs(1)).await.unwrap();
        assert_eq!(try_flock(), Some(1), "flock(1) got the lock we hold");
        drop(guard);
        assert_eq!(try_flock(), Some(0), "flock(1) did not get the free lock");

        // flock(1) holds it: our lock waits and gives up, then gets it once flock(1) is done.
        let mut child = Command::new("flock")
            .arg("-n")
            .arg(&lock)
            .args(["sh", "-c", "echo held; sleep 1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "held\n");
        let e = dir.lock(Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, AllocError::LockTimeout { .. }), "{e}");
        assert!(child.wait().unwrap().success());
        dir.lock(Duration::from_millis(200)).await.unwrap();
    }

    #[tokio::test]
    async fn a_symbolic_link_as_the_lock_is_refused() {
        let (base, dir) = setup();
        let target = base.path().join("t");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("lock")).unwrap();
        let e = dir
            .lock(Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lock") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn the_holder_script_is_written_whole_and_executable() {
        let (_base, dir) = setup();
        let k = key();
        let p = dir.write_holder(&k, "#!/bin/bash\nexit 0\n").unwrap();
        assert_eq!(p, dir.holder_script_path(&k));
        assert_eq!(p, dir.path().join(format!("{}.holder.bash", k.as_str())));
        assert_eq!(mode_of(&p), 0o700);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "#!/bin/bash\nexit 0\n"
        );
        dir.write_holder(&k, "#!/bin/bash\nexit 1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "#!/bin/bash\nexit 1\n"
        );
        assert_eq!(
            dir.holder_out(&k),
            dir.path().join(format!("{}.holder.out", k.as_str()))
        );
    }

    /// What ended allocations left goes once it is old and its key has no record; a key
    /// with a record, and anything young, stays.
    #[test]
    fn prune_removes_what_ended_allocations_left() {
        let (_base, dir) = setup();
        let live = key();
        let ended = Key::derive(1000, "17", "4712", &["-n1".to_string()]);
        for k in [&live, &ended] {
            dir.write_holder(k, "#!/bin/bash\n").unwrap();
            std::fs::write(dir.holder_out(k), "out\n").unwrap();
            dir.make_lease(k, 7).unwrap();
            dir.release_lease(k, 7).unwrap();
        }
        dir.make_lease(&ended, 8).unwrap(); // a killed driver's lease
        let rec = AllocRecord {
            scheduler: "slurm".into(),
            id: "41".into(),
            submitted_unix: NOW,
            uid: 1000,
        };
        dir.write_record(&live, &rec).unwrap();
        let later = SystemTime::now() + Duration::from_secs(2 * 86400);
        // Young: nothing goes.
        assert_eq!(
            dir.prune(Duration::from_secs(86400), SystemTime::now())
                .unwrap(),
            0
        );
        assert_eq!(dir.prune(Duration::from_secs(86400), later).unwrap(), 3);
        assert!(!dir.holder_out(&ended).exists());
        assert!(!dir.holder_script_path(&ended).exists());
        assert!(!dir.leases_dir(&ended).exists());
        assert!(dir.holder_out(&live).exists() && dir.leases_dir(&live).exists());
        assert!(dir.record_path(&live).exists());
    }
}
