//! Creating and verifying the job's directories and writing stage scripts, race-free.
//!
//! Every step goes through a directory descriptor: the parent is open with
//! `O_DIRECTORY|O_NOFOLLOW`, the child is `mkdirat`-ed with its final mode, re-opened with
//! `O_NOFOLLOW`, `fchmod`-ed (the umask may have removed bits) and `fstat`-ed to verify type,
//! owner and mode before we descend into it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::unistd::{self, UnlinkatFlags};

use super::paths::{script_file_name, Anchor};
use super::walk::{check_trusted, open_trusted_path, Trust};
use super::{DirPolicy, FsError, JobPaths, UserInfo, SCRIPT_MODE};

/// How often an operation is retried when a directory vanished under it (concurrent cleanup).
const VANISHED_RETRIES: usize = 8;

/// Flags for opening a directory we are about to trust.
pub(crate) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// An open directory and the path it was reached by (for messages).
#[derive(Debug)]
pub(crate) struct DirFd {
    pub(crate) fd: OwnedFd,
    pub(crate) path: PathBuf,
}

impl DirFd {
    pub(crate) fn borrow(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn stat(&self) -> Result<FileStat, FsError> {
        stat::fstat(&self.fd).map_err(|e| FsError::io("stat", &self.path, e))
    }

    /// Its stat when it belongs to `uid`; else refused, `why` saying so of the owner found.
    pub(crate) fn owned_by(
        &self,
        uid: u32,
        why: impl FnOnce(u32) -> String,
    ) -> Result<FileStat, FsError> {
        let st = self.stat()?;
        if st.st_uid != uid {
            return Err(FsError::refused(&self.path, why(st.st_uid)));
        }
        Ok(st)
    }
}

pub(crate) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn type_name(t: SFlag) -> &'static str {
    match t {
        SFlag::S_IFLNK => "is a symbolic link",
        SFlag::S_IFDIR => "is a directory",
        SFlag::S_IFREG => "is a regular file",
        _ => "is not a directory",
    }
}

/// Permission bits as shown in messages (`0700`, `1777`).
pub(crate) fn perm_bits(st: &FileStat) -> u32 {
    st.st_mode & 0o7777
}

/// Why `ELOOP`/`ENOTDIR` happened on `parent/name`: a symlink or a non-directory.
pub(crate) fn diagnose_at(parent: &DirFd, name: &str, errno: Errno) -> FsError {
    let path = parent.path.join(name);
    match stat::fstatat(&parent.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if file_type(&st) != SFlag::S_IFDIR => {
            FsError::refused(path, type_name(file_type(&st)))
        }
        _ => FsError::io("open", path, errno),
    }
}

/// Why `ELOOP`/`ENOTDIR` happened on an absolute path.
fn diagnose_path(path: &Path, errno: Errno) -> FsError {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => FsError::refused(path, "is a symbolic link"),
        Ok(md) if !md.is_dir() => FsError::refused(path, "is not a directory"),
        _ => FsError::io("open", path, errno),
    }
}

/// Open an absolute directory path; the final component must not be a symlink.
pub(crate) fn open_dir_path(path: &Path, what: &'static str) -> Result<DirFd, FsError> {
    match fcntl::openat(fcntl::AT_FDCWD, path, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        }),
        Err(Errno::ENOENT) => Err(FsError::Missing {
            what,
            path: path.to_path_buf(),
        }),
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(diagnose_path(path, e)),
        Err(e) => Err(FsError::io("open", path, e)),
    }
}

/// The rules an existing directory must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Base dir and builds/cache/scripts: owner and exact mode.
    Exact,
    /// Deeper dirs: owner, and not writable by group or others.
    Private,
}

/// Who must own our directories, with the user's name when it is that user.
struct Expected<'a> {
    policy: &'a DirPolicy,
    user: &'a UserInfo,
}

impl<'a> Expected<'a> {
    /// What the job's dirs must be under `policy`, for the user of `paths`.
    fn of(paths: &'a JobPaths, policy: &'a DirPolicy) -> Expected<'a> {
        Expected {
            policy,
            user: paths.user(),
        }
    }

    fn owner(&self) -> String {
        if self.policy.uid == self.user.uid {
            format!("uid {} ({})", self.policy.uid, self.user.name)
        } else {
            format!("uid {}", self.policy.uid)
        }
    }

    fn verify(&self, st: &FileStat, path: &Path, rule: Rule) -> Result<(), FsError> {
        let t = file_type(st);
        if t != SFlag::S_IFDIR {
            return Err(FsError::refused(path, type_name(t)));
        }
        if st.st_uid != self.policy.uid {
            return Err(FsError::refused(
                path,
                format!("owned by uid {}, expected {}", st.st_uid, self.owner()),
            ));
        }
        let perm = perm_bits(st);
        match rule {
            // The set-group-ID bit only decides the group of new files; sites use it for quotas.
            Rule::Exact if perm & !0o2000 != self.policy.dir_mode() => Err(FsError::refused(
                path,
                format!("mode {perm:04o}, expected {:04o}", self.policy.dir_mode()),
            )),
            Rule::Private if perm & 0o022 != 0 => Err(FsError::refused(
                path,
                format!("mode {perm:04o} is writable by group or others"),
            )),
            _ => Ok(()),
        }
    }
}

/// The admin-side directory above the base dir: a directory (final component not a symlink),
/// and sticky if group/other-writable (else others could swap the base dir).
pub(crate) fn check_anchor(dir: &DirFd) -> Result<FileStat, FsError> {
    let st = dir.stat()?;
    let perm = perm_bits(&st);
    if perm & 0o022 != 0 && perm & 0o1000 == 0 {
        return Err(FsError::refused(
            &dir.path,
            format!("mode {perm:04o} is writable by group or others without the sticky bit"),
        ));
    }
    Ok(st)
}

/// Open `parent/name` as a directory satisfying `rule`, creating it (mode from the policy) when
/// missing and `create` is set. Missing and not `create`: [`FsError::Missing`].
fn open_or_create(
    parent: &DirFd,
    name: &str,
    rule: Rule,
    exp: &Expected<'_>,
    create: bool,
    what: &'static str,
) -> Result<DirFd, FsError> {
    let path = parent.path.join(name);
    let mode = exp.policy.dir_mode();
    // A lost race with another creator (EEXIST) sends us round once more to verify its dir.
    for _ in 0..VANISHED_RETRIES {
        match fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let dir = DirFd { fd, path };
                exp.verify(&dir.stat()?, &dir.path, rule)?;
                return Ok(dir);
            }
            Err(Errno::ENOENT) if create => {}
            Err(Errno::ENOENT) => return Err(FsError::Missing { what, path }),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => return Err(diagnose_at(parent, name, e)),
            Err(e) => return Err(FsError::io("open", path, e)),
        }
        match stat::mkdirat(&parent.fd, name, Mode::from_bits_truncate(mode)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(FsError::io("create", path, e)),
        }
        let fd = match fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => return Err(diagnose_at(parent, name, e)),
            Err(e) => return Err(FsError::io("open", path, e)),
        };
        let dir = DirFd { fd, path };
        // mkdirat's mode was filtered by the umask (never looser than `mode`): set it exactly.
        stat::fchmod(&dir.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("set permissions of", &dir.path, e))?;
        exp.verify(&dir.stat()?, &dir.path, Rule::Exact)?;
        return Ok(dir);
    }
    Err(FsError::io("create", path, Errno::EEXIST))
}

/// Open (and with `create`, make) the directory the base dir lives in, after checking it.
fn open_base_parent(paths: &JobPaths, exp: &Expected<'_>, create: bool) -> Result<DirFd, FsError> {
    match paths.anchor() {
        Anchor::Fixed { path, what } => {
            let dir = open_dir_path(path, what)?;
            check_anchor(&dir)?;
            Ok(dir)
        }
        Anchor::Templated => {
            let base = paths.base_dir();
            let parent = base.parent().unwrap_or(Path::new("/"));
            // The deepest existing ancestor; symbolic links on the way to it (an admin's
            // `/scratch` -> `/lustre/scratch`) are resolved once, and the resolved path is
            // then walked from `/` without following any.
            let existing = parent
                .ancestors()
                .find(|a| std::fs::symlink_metadata(a).is_ok())
                .unwrap_or(Path::new("/"));
            let resolved = std::fs::canonicalize(existing).map_err(|source| FsError::Io {
                op: "resolve",
                path: existing.to_path_buf(),
                source,
            })?;
            // Every directory on the way belongs to root or the user: the owner of a
            // directory may rename or remove any entry in it, sticky bit or not, so anyone
            // else owning one could swap the base dir below it for a tree of their own.
            let owners = [0, exp.policy.uid];
            let trust = Trust {
                owners: &owners,
                what: "data_dir",
                rule: "every directory on the way to a data_dir that names the user must \
                       belong to root or the user (another owner could swap the user's \
                       directories for their own)",
            };
            let mut dir = open_trusted_path(&resolved, &trust)?;
            check_trusted(&dir, &trust)?;
            let missing: Vec<&OsStr> = match parent.strip_prefix(existing) {
                Ok(rest) => rest.iter().collect(),
                Err(_) => Vec::new(),
            };
            if missing.is_empty() {
                return Ok(dir);
            }
            if !create {
                return Err(FsError::Missing {
                    what: "base directory",
                    path: base.to_path_buf(),
                });
            }
            let st = dir.stat()?;
            if st.st_uid != exp.policy.uid && perm_bits(&st) & 0o1000 == 0 {
                return Err(FsError::refused(
                    &dir.path,
                    format!(
                        "will not create {} below it: owned by uid {}, expected {} or the sticky bit",
                        parent.display(),
                        st.st_uid,
                        exp.owner()
                    ),
                ));
            }
            for comp in missing {
                let name = comp.to_str().ok_or_else(|| {
                    FsError::refused(dir.path.join(comp), "path is not valid UTF-8")
                })?;
                dir = open_or_create(&dir, name, Rule::Private, exp, true, "directory")?;
            }
            Ok(dir)
        }
    }
}

/// The verified base dir.
fn open_base(paths: &JobPaths, exp: &Expected<'_>, create: bool) -> Result<DirFd, FsError> {
    let parent = open_base_parent(paths, exp, create)?;
    let name = paths
        .base_dir()
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| FsError::refused(paths.base_dir(), "has no usable final component"))?;
    open_or_create(&parent, name, Rule::Exact, exp, create, "base directory")
}

/// Walk (and create) `components` below the base dir: the first one (builds/cache/scripts)
/// must have the exact mode, the deeper ones must merely be private.
fn open_chain(base: &DirFd, components: &[String], exp: &Expected<'_>) -> Result<DirFd, FsError> {
    let mut iter = components.iter();
    let Some(first) = iter.next() else {
        return Err(FsError::refused(
            &base.path,
            "no components to open below it",
        ));
    };
    let mut dir = open_or_create(base, first, Rule::Exact, exp, true, "directory")?;
    for comp in iter {
        dir = open_or_create(&dir, comp, Rule::Private, exp, true, "directory")?;
    }
    Ok(dir)
}

/// Run `op` again when a directory vanished under it (a concurrent cleanup removed an empty
/// parent between our `mkdirat`s).
fn retry_vanished<T>(mut op: impl FnMut() -> Result<T, FsError>) -> Result<T, FsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op() {
            Err(FsError::Io { ref source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempt < VANISHED_RETRIES => {}
            other => return other,
        }
    }
}

/// Create (or verify) the base dir, `builds`/`cache`/`scripts`, and the job's builds, cache and
/// scripts directories.
pub fn ensure_job_dirs(paths: &JobPaths, policy: &DirPolicy) -> Result<(), FsError> {
    let exp = Expected::of(paths, policy);
    retry_vanished(|| {
        let base = open_base(paths, &exp, true)?;
        if let Some(builds) = paths.builds_components() {
            open_chain(&base, &builds, &exp)?;
        }
        open_chain(&base, &paths.cache_components(), &exp)?;
        open_chain(&base, &paths.scripts_components(), &exp)?;
        Ok(())
    })
}

/// `[auth] root_dir_creation`: the privileged side creates the user's base dir
/// (`<data_dir>/<user>`) with the policy's mode, owned by `uid:gid`, through the data_dir's
/// descriptor (`mkdirat` + `fchown` + `fchmod` on the re-opened `O_NOFOLLOW` descriptor).
///
/// `data_dir` is opened from `/` by [`open_trusted_path`]: it and every directory above it
/// must belong to root and not be writable by group or others unless sticky, and no
/// component may be a symbolic link (links are refused, not resolved); otherwise a user
/// could redirect root's `mkdir`/`chown` elsewhere. The refusal names the component.
///
/// An existing base dir is verified (a directory owned by the user, with the mode of either
/// `group_permissions` setting, so that the user side can migrate it), never changed. Only
/// for an admin's fixed `data_dir`: with `$HOME` or `$USER` in it the user creates the
/// base dir in their own space, and this returns `Ok(false)`.
pub fn create_base_dir_for_user(
    paths: &JobPaths,
    policy: &DirPolicy,
    gid: u32,
) -> Result<bool, FsError> {
    let Anchor::Fixed { path, .. } = paths.anchor() else {
        return Ok(false);
    };
    if paths.is_user_specific() {
        return Ok(false);
    }
    let exp = Expected::of(paths, policy);
    let trust = Trust {
        owners: &[0],
        what: "data_dir",
        rule: "with [auth] root_dir_creation, data_dir and every directory above it must belong to root",
    };
    let parent = open_trusted_path(path, &trust)?;
    check_trusted(&parent, &trust)?;
    let name = paths
        .base_dir()
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| FsError::refused(paths.base_dir(), "has no usable final component"))?;
    let full = parent.path.join(name);
    let mode = Mode::from_bits_truncate(policy.dir_mode());
    match stat::mkdirat(&parent.fd, name, mode) {
        Ok(()) => {
            let fd = fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty())
                .map_err(|e| diagnose_at(&parent, name, e))?;
            unistd::fchown(
                &fd,
                Some(unistd::Uid::from_raw(policy.uid)),
                Some(unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| FsError::io("change the owner of", &full, e))?;
            stat::fchmod(&fd, mode).map_err(|e| FsError::io("set permissions of", &full, e))?;
            let dir = DirFd { fd, path: full };
            exp.verify(&dir.stat()?, &dir.path, Rule::Exact)?;
        }
        Err(Errno::EEXIST) => {
            let fd = fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty())
                .map_err(|e| diagnose_at(&parent, name, e))?;
            let dir = DirFd { fd, path: full };
            let st = dir.stat()?;
            let other = DirPolicy {
                group_permissions: !policy.group_permissions,
                ..*policy
            };
            let before_a_change = Expected::of(paths, &other);
            // The other setting's mode: the user side migrates it (`fs::builds`).
            if before_a_change.verify(&st, &dir.path, Rule::Exact).is_err() {
                exp.verify(&st, &dir.path, Rule::Exact)?;
            }
        }
        Err(e) => return Err(FsError::io("create", full, e)),
    }
    Ok(true)
}

/// Write `content` to `scripts_dir()/<stage>.bash` (mode 0700), replacing an earlier file for the
/// same stage. Creates the scripts directory chain if needed. Returns the script's path.
pub fn write_script(
    paths: &JobPaths,
    policy: &DirPolicy,
    stage: &str,
    content: &[u8],
) -> Result<PathBuf, FsError> {
    write_in_scripts_dir(
        paths,
        policy,
        &script_file_name(stage)?,
        content,
        SCRIPT_MODE,
    )
}

/// Write `content` to `<scripts dir>/<name>` with `mode` (replacing it), the scripts dir's
/// missing parts made.
fn write_in_scripts_dir(
    paths: &JobPaths,
    policy: &DirPolicy,
    name: &str,
    content: &[u8],
    mode: u32,
) -> Result<PathBuf, FsError> {
    let exp = Expected::of(paths, policy);
    retry_vanished(|| create_file(&open_scripts_dir(paths, &exp)?, name, content, mode))
}

/// The job's scripts dir, opened and checked, its missing parts made.
fn open_scripts_dir(paths: &JobPaths, exp: &Expected<'_>) -> Result<DirFd, FsError> {
    let base = open_base(paths, exp, true)?;
    open_chain(&base, &paths.scripts_components(), exp)
}

/// The job's scripts dir, opened and checked: `None` when it (or the base dir) does not
/// exist; nothing is made.
fn existing_scripts_dir(paths: &JobPaths, exp: &Expected<'_>) -> Result<Option<DirFd>, FsError> {
    match open_base(paths, exp, false)
        .and_then(|base| open_chain(&base, &paths.scripts_components(), exp))
    {
        Ok(d) => Ok(Some(d)),
        Err(FsError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The mode of the driver's own files in the job's scripts dir ([`write_job_file`]).
const JOB_FILE_MODE: u32 = 0o600;

/// A file name of the driver's own in the scripts dir: one plain component, never a stage
/// script's (`.bash`).
fn job_file_name(name: &str) -> Result<&str, FsError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.ends_with(".bash");
    if ok {
        Ok(name)
    } else {
        Err(FsError::InvalidValue {
            what: "job file name",
            value: name.to_string(),
            reason: "not a plain file name of the driver's".into(),
        })
    }
}

/// Write `content` to `<scripts dir>/<name>` (replacing it, mode 0600): a file of the
/// driver's own, kept between the stages of one job and removed with the scripts dir at
/// cleanup (the login environment of `stages::login_env`).
pub fn write_job_file(
    paths: &JobPaths,
    policy: &DirPolicy,
    name: &str,
    content: &[u8],
) -> Result<PathBuf, FsError> {
    write_in_scripts_dir(paths, policy, job_file_name(name)?, content, JOB_FILE_MODE)
}

/// Read `<scripts dir>/<name>` (no symlink followed; a regular file of ours): `None` when it
/// (or the scripts dir) does not exist; an error when it holds more than `max` bytes.
pub fn read_job_file(
    paths: &JobPaths,
    policy: &DirPolicy,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, FsError> {
    use std::io::Read;
    let name = job_file_name(name)?;
    let exp = Expected::of(paths, policy);
    let Some(dir) = existing_scripts_dir(paths, &exp)? else {
        return Ok(None);
    };
    let path = dir.path.join(name);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match fcntl::openat(dir.borrow(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(FsError::refused(path, "is a symbolic link")),
        Err(e) => return Err(FsError::io("open", path, e)),
    };
    let st = stat::fstat(&fd).map_err(|e| FsError::io("stat", &path, e))?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(FsError::refused(path, "is not a regular file"));
    }
    if st.st_uid != exp.user.uid {
        return Err(FsError::refused(path, "is not owned by the job's user"));
    }
    let mut buf = Vec::new();
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|source| FsError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
    if buf.len() as u64 > max {
        return Err(FsError::refused(
            path,
            format!("holds more than {max} bytes"),
        ));
    }
    Ok(Some(buf))
}

/// Remove `<scripts dir>/<name>` (already gone is fine).
pub fn remove_job_file(paths: &JobPaths, policy: &DirPolicy, name: &str) -> Result<(), FsError> {
    let name = job_file_name(name)?;
    let exp = Expected::of(paths, policy);
    let Some(dir) = existing_scripts_dir(paths, &exp)? else {
        return Ok(());
    };
    match unistd::unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(FsError::io("remove", dir.path.join(name), e)),
    }
}

fn create_file(dir: &DirFd, name: &str, content: &[u8], mode: u32) -> Result<PathBuf, FsError> {
    let path = dir.path.join(name);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(mode);
    for _ in 0..VANISHED_RETRIES {
        match fcntl::openat(dir.borrow(), name, flags, mode) {
            Ok(fd) => {
                let written = stat::fchmod(&fd, mode)
                    .map_err(|e| FsError::io("set permissions of", &path, e))
                    .and_then(|()| {
                        File::from(fd)
                            .write_all(content)
                            .map_err(|source| FsError::Io {
                                op: "write",
                                path: path.clone(),
                                source,
                            })
                    });
                if written.is_err() {
                    // Best effort: do not leave a truncated script behind.
                    let _ = unistd::unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir);
                }
                return written.map(|()| path);
            }
            // A previous attempt of this stage (retry): replace it.
            Err(Errno::EEXIST) => {
                match unistd::unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::EISDIR | Errno::EPERM) => {
                        return Err(FsError::refused(path, "is a directory"))
                    }
                    Err(e) => return Err(FsError::io("remove", path, e)),
                }
            }
            Err(e) => return Err(FsError::io("create", path, e)),
        }
    }
    Err(FsError::io("create", path, Errno::EEXIST))
}

/// Open (creating what is missing) `components` below the base dir, the base dir included:
/// the first component gets the exact mode, deeper ones must be private. For the
/// build-directory features (`fs::builds`).
pub(crate) fn open_below_base(
    paths: &JobPaths,
    policy: &DirPolicy,
    components: &[String],
) -> Result<DirFd, FsError> {
    let exp = Expected::of(paths, policy);
    retry_vanished(|| {
        let base = open_base(paths, &exp, true)?;
        open_chain(&base, components, &exp)
    })
}

/// Open (with `create`, make) the private directory `parent/name` owned by the policy's uid.
pub(crate) fn open_private_child(
    parent: &DirFd,
    name: &str,
    policy: &DirPolicy,
    user: &UserInfo,
    create: bool,
) -> Result<DirFd, FsError> {
    let exp = Expected { policy, user };
    open_or_create(parent, name, Rule::Private, &exp, create, "directory")
}

/// The verified directory the base dir lives in, creating nothing (`Missing` when absent).
pub(crate) fn open_existing_base_parent(
    paths: &JobPaths,
    policy: &DirPolicy,
) -> Result<DirFd, FsError> {
    let exp = Expected::of(paths, policy);
    open_base_parent(paths, &exp, false)
}

/// Names in `dir` (UTF-8 ones, without `.` and `..`).
pub(crate) fn entry_names(dir: &DirFd) -> Result<Vec<String>, FsError> {
    let dup = dir.fd.try_clone().map_err(|source| FsError::Io {
        op: "duplicate descriptor of",
        path: dir.path.clone(),
        source,
    })?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| FsError::io("read", &dir.path, e))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| FsError::io("read", &dir.path, e))?;
        if let Ok(n) = e.file_name().to_str() {
            if n != "." && n != ".." {
                out.push(n.to_string());
            }
        }
    }
    Ok(out)
}

/// Verify, creating nothing: the admin's directory, the base dir (which must exist) and
/// whichever of `builds`/`cache`/`scripts` exist.
pub fn check_base_dir(paths: &JobPaths, policy: &DirPolicy) -> Result<(), FsError> {
    let exp = Expected::of(paths, policy);
    let base = open_base(paths, &exp, false)?;
    for name in ["builds", "cache", "scripts"] {
        match open_or_create(&base, name, Rule::Exact, &exp, false, "directory") {
            Ok(_) | Err(FsError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
