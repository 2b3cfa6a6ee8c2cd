//! Where a job's builds dir goes, and what cleanup removes of old ones.
//!
//! The **builds root** is `<base>/builds`, or with `custom_build_dir` the directory the user
//! names in the CI variable `CUSTOM_CI_BUILDS_DIR` (verified in `custom`). Below it:
//!
//! | layout | builds dir |
//! |---|---|
//! | standard | `<root>/<runner>/<NNN>` (`NNN` = `CI_CONCURRENT_PROJECT_ID`) |
//! | `limit_build_dir` | `<root>/<project-name>_<id>/<NNN>`, `NNN` claimed with a lock ([`super::claim`]) |
//! | `static_builds_dir` | `<root>/static/<project-name>_<id>/<job id>`, kept after the job |
//!
//! `<id>` is `CI_PROJECT_ID`, or when the runner gives none, 16 hex digits of the FNV-1a hash
//! of the project path: stable across jobs, runners and hosts. `limit_build_dir` wins over
//! `static_builds_dir` when both apply. With `user_enabled_limit`, `limit_build_dir` applies
//! only to projects that set the CI variable [`LIMIT_OPT_IN_VAR`] to a true value.
//!
//! The runner appends `/<namespace>/<project>` to every builds dir, so none is shared
//! (`builds_dir_is_shared` is false).
//!
//! Stages: `config_exec` hands [`configure`] to `jacamar` when the user side must decide
//! ([`BuildsPlan::needs_user_side`]: a claim, or a custom root to verify), else prints
//! [`BuildsPlan::planned`]; `prepare` calls [`prepare`]; `cleanup` calls [`cleanup`].

use std::ffi::OsStr;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags};
use nix::sys::stat::{self, Mode, SFlag};

use super::claim::{ClaimDir, ClaimHold, ClaimSettings};
use super::cleanup::{open_child, remove_tree};
use super::custom::{open_custom_root, parse_custom_root};
use super::paths::{Anchor, BuildsAt};
use super::secure::{
    dir_flags, ensure_job_dirs, file_type, open_below_base, open_dir_path,
    open_existing_base_parent, open_private_child, perm_bits, DirFd,
};
use super::static_dirs;
use super::{validate_segment, DirPolicy, FsError, JobPaths, SegmentKind};
use crate::config::General;
use crate::job::JobContext;

/// CI variable by which a project opts in to `limit_build_dir` under `user_enabled_limit`.
pub const LIMIT_OPT_IN_VAR: &str = "JACAMAR_LIMIT_BUILD_DIR";
/// Name of the directory of static build dirs below the builds root.
pub const STATIC_DIR: &str = "static";

/// How the builds dir is laid out for this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Standard,
    Limited,
    Static,
}

/// The directory the layouts hang below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `<base>/builds`.
    Base,
    /// `CUSTOM_CI_BUILDS_DIR`, checked as text (verified on disk by `jacamar`).
    Custom(PathBuf),
}

/// What `config_exec` tells the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildsInfo {
    pub builds_dir: PathBuf,
    pub builds_dir_is_shared: bool,
}

/// The decisions for one job, from the configuration and the CI variables (no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildsPlan {
    pub layout: Layout,
    pub root: Root,
    project_key: String,
    job_id: u64,
    runner: String,
    concurrent: String,
}

impl BuildsPlan {
    pub fn new(
        general: &General,
        job: &JobContext,
        paths: &JobPaths,
    ) -> Result<BuildsPlan, FsError> {
        let limited =
            general.limit_build_dir && (!general.user_enabled_limit || job.build_dirs.limit_opt_in);
        let layout = if limited {
            Layout::Limited
        } else if general.static_builds_dir {
            Layout::Static
        } else {
            Layout::Standard
        };
        let root = match (&job.build_dirs.custom_builds_dir, general.custom_build_dir) {
            (Some(raw), true) => Root::Custom(parse_custom_root(raw)?),
            _ => Root::Base,
        };
        Ok(BuildsPlan {
            layout,
            root,
            project_key: project_key(
                paths.project_segments(),
                job.build_dirs.project_id.as_deref(),
            )?,
            job_id: paths.job_id(),
            runner: paths.runner_short_token().to_string(),
            concurrent: paths.concurrent_dir().to_string(),
        })
    }

    /// True when `config_exec` must ask `jacamar` (a lock claim, or a custom root to verify).
    pub fn needs_user_side(&self) -> bool {
        self.layout == Layout::Limited || matches!(self.root, Root::Custom(_))
    }

    /// `<project-name>_<id>`.
    pub fn project_key(&self) -> &str {
        &self.project_key
    }

    /// The builds dir when no user-side decision is needed (`None` otherwise).
    pub fn planned(&self, paths: &JobPaths) -> Option<BuildsInfo> {
        if self.needs_user_side() {
            return None;
        }
        Some(info(&self.locate(paths.clone(), None)))
    }

    /// Components below the root leading to the builds dir (`slot` for `Limited`).
    fn below_root(&self, slot: Option<u32>) -> Vec<String> {
        match self.layout {
            Layout::Standard => vec![self.runner.clone(), self.concurrent.clone()],
            Layout::Limited => vec![
                self.project_key.clone(),
                super::claim::slot_name(slot.unwrap_or(0)),
            ],
            Layout::Static => vec![
                STATIC_DIR.into(),
                self.project_key.clone(),
                self.job_id.to_string(),
            ],
        }
    }

    /// `paths` with the builds dir where this plan puts it.
    fn locate(&self, paths: JobPaths, slot: Option<u32>) -> JobPaths {
        let below = self.below_root(slot);
        match &self.root {
            Root::Base if self.layout == Layout::Standard => paths,
            Root::Base => {
                let mut comps = vec!["builds".to_string()];
                comps.extend(below);
                paths.with_builds_at(BuildsAt::BelowBase(comps))
            }
            Root::Custom(root) => {
                let mut p = root.clone();
                p.extend(below);
                paths.with_builds_at(BuildsAt::Outside(p))
            }
        }
    }

    /// The opened builds root (`create`: make `<base>/builds` if missing; `None` when it
    /// does not exist and `create` is off).
    fn open_root(
        &self,
        paths: &JobPaths,
        policy: &DirPolicy,
        create: bool,
    ) -> Result<Option<DirFd>, FsError> {
        match &self.root {
            Root::Custom(root) => open_custom_root(root, policy).map(Some),
            Root::Base => {
                if !create && std::fs::symlink_metadata(paths.base_dir().join("builds")).is_err() {
                    return Ok(None);
                }
                open_below_base(paths, policy, &["builds".to_string()]).map(Some)
            }
        }
    }

    /// The project's directory of slots (`limit_build_dir`).
    fn open_claim_dir(
        &self,
        paths: &JobPaths,
        policy: &DirPolicy,
        create: bool,
    ) -> Result<Option<ClaimDir>, FsError> {
        let Some(root) = self.open_root(paths, policy, create)? else {
            return Ok(None);
        };
        match open_private_child(&root, &self.project_key, policy, paths.user(), create) {
            Ok(d) => Ok(Some(ClaimDir::from_dir(d, policy, paths.user()))),
            Err(FsError::Missing { .. }) if !create => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn info(paths: &JobPaths) -> BuildsInfo {
    BuildsInfo {
        builds_dir: paths.builds_dir(),
        builds_dir_is_shared: false,
    }
}

/// The claim settings of this job under this configuration.
pub fn claim_settings(general: &General, job: &JobContext) -> ClaimSettings {
    let mut s = ClaimSettings::new(job.job_id, general.max_build_dir, job.job_timeout);
    s.debug_log = general.file_lock_debug;
    s
}

/// `<project-name>_<id>`: `id` is `CI_PROJECT_ID` (digits), else a hash of the path.
fn project_key(segments: &[String], project_id: Option<&str>) -> Result<String, FsError> {
    let id = match project_id.map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) => {
            id.to_string()
        }
        Some(id) => {
            return Err(FsError::InvalidValue {
                what: "CI_PROJECT_ID",
                value: id.to_string(),
                reason: "it is not a project number".into(),
            })
        }
        None => format!("{:016x}", fnv1a(segments.join("/").as_bytes())),
    };
    let name = segments.last().map(String::as_str).unwrap_or("project");
    let keep = 255 - id.len() - 1;
    let name: String = name.chars().take(keep).collect();
    let key = format!("{name}_{id}");
    validate_segment(SegmentKind::ProjectPath, &key)?;
    Ok(key)
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `config_exec`, as the user: claim (`limit_build_dir`) or verify (custom root) the builds
/// dir with `claim` ([`claim_settings`]). `notify` receives messages for the job log (never
/// stdout: that is the runner's JSON).
pub fn configure(
    paths: &JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    claim: &ClaimSettings,
    notify: &mut dyn FnMut(&str),
) -> Result<BuildsInfo, FsError> {
    migrate_group_permissions(paths, policy, notify)?;
    let slot = match plan.layout {
        Layout::Limited => {
            let dir = plan
                .open_claim_dir(paths, policy, true)?
                .ok_or_else(|| FsError::refused(paths.base_dir(), "no builds directory"))?;
            Some(dir.claim(claim, notify)?.slot)
        }
        _ => {
            plan.open_root(paths, policy, false)?;
            None
        }
    };
    Ok(info(&plan.locate(paths.clone(), slot)))
}

/// `prepare`, as the user: find this job's claim (and renew it with `claim`), create every
/// directory of the job. Returns the paths with the builds dir where the plan put it.
pub fn prepare(
    paths: JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    claim: &ClaimSettings,
    notify: &mut dyn FnMut(&str),
) -> Result<JobPaths, FsError> {
    migrate_group_permissions(&paths, policy, notify)?;
    let slot = match plan.layout {
        Layout::Limited => {
            let dir = plan
                .open_claim_dir(&paths, policy, true)?
                .ok_or_else(|| FsError::refused(paths.base_dir(), "no builds directory"))?;
            Some(dir.renew(claim)?.slot)
        }
        _ => None,
    };
    let paths = plan.locate(paths, slot);
    ensure_job_dirs(&paths, policy)?;
    if let Root::Custom(_) = plan.root {
        let Some(mut dir) = plan.open_root(&paths, policy, false)? else {
            return Err(FsError::Missing {
                what: "CUSTOM_CI_BUILDS_DIR",
                path: paths.builds_dir(),
            });
        };
        for comp in plan.below_root(slot) {
            dir = open_private_child(&dir, &comp, policy, paths.user(), true)?;
        }
    }
    Ok(paths)
}

/// `run`, as the user: hold this job's claim (`limit_build_dir`) while the stage runs, so
/// that a cleanup running concurrently cannot hand the directory to another job before the
/// stage is gone (see [`ClaimDir::hold`]). `None`: no claim to hold (another layout, or the
/// job's claim is not found; `notify` is told of the latter).
pub fn hold_claim(
    paths: &JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    notify: &mut dyn FnMut(&str),
) -> Result<Option<ClaimHold>, FsError> {
    if plan.layout != Layout::Limited {
        return Ok(None);
    }
    let held = match plan.open_claim_dir(paths, policy, false)? {
        Some(dir) => dir.hold(plan.job_id)?,
        None => None,
    };
    if held.is_none() {
        notify(&format!(
            "WARNING: job {} holds no claim on a build directory (limit_build_dir); was it released early?",
            plan.job_id
        ));
    }
    Ok(held)
}

/// What [`cleanup`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// The slot released (`limit_build_dir`).
    pub released: Option<u32>,
    /// The released slot is still held by a running stage of the job (a run call still
    /// dying): it frees up when that stage ends.
    pub still_in_use: bool,
    /// Stale build directories removed.
    pub removed: Vec<PathBuf>,
}

/// `cleanup`, as the user: release this job's claim, then remove stale build dirs: slots at
/// or above `max_build_dir`, and static dirs older than `static_min_days`, at most one in
/// all unless `uncap_build_dir_cleanup`. Idempotent.
pub fn cleanup(
    paths: &JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    general: &General,
) -> Result<CleanupReport, FsError> {
    let mut report = CleanupReport::default();
    let mut budget = if general.uncap_build_dir_cleanup {
        usize::MAX
    } else {
        1
    };
    if plan.layout == Layout::Limited {
        if let Some(dir) = plan.open_claim_dir(paths, policy, false)? {
            if let Some(r) = dir.release(plan.job_id, general.file_lock_debug)? {
                report.released = Some(r.slot);
                report.still_in_use = r.in_use;
            }
            for slot in dir.remove_above(general.max_build_dir, &mut budget)? {
                report
                    .removed
                    .push(dir.path().join(super::claim::slot_name(slot)));
            }
        }
    }
    if general.static_builds_dir && general.static_min_days > 0 && budget > 0 {
        if let Some(root) = plan.open_root(paths, policy, false)? {
            if let Some(static_dir) = open_child(&root, STATIC_DIR)? {
                let job = plan.job_id.to_string();
                report.removed.extend(static_dirs::remove_old(
                    &static_dir,
                    general.static_min_days,
                    (&plan.project_key, &job),
                    &mut budget,
                )?);
            }
        }
    }
    Ok(report)
}

/// Suffix the runner adds to the project dir for its temporary project dir.
pub const RUNNER_TMP_SUFFIX: &str = ".tmp";

/// `cleanup`, as the user, before the claim is released: remove the runner's temporary
/// project dir of this job's builds dir, `<builds dir>/<namespace>/<project>.tmp`, where the
/// runner writes file-type variables (and its git template and env file). The runner's own
/// `cleanup_file_variables` stage removes the variables' files, but after an abort it runs
/// with a cancelled context and fails, leaving the secrets behind.
///
/// The project dir is the runner's `CI_PROJECT_DIR` when it lies below the builds dir
/// (GitLab under a relative URL root adds a component), and `<builds dir>/<CI_PROJECT_PATH>`.
/// Everything is reached through directory descriptors from the base dir (or the verified
/// custom root), never following a symlink; every directory on the way and the `.tmp` dir
/// itself must belong to the user, else nothing is removed and the refusal is returned.
/// Missing directories are not an error. Returns the removed directories.
pub fn remove_runner_tmp(
    paths: &JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    job: &JobContext,
) -> Result<Vec<PathBuf>, FsError> {
    let slot = match plan.layout {
        Layout::Limited => {
            let Some(dir) = plan.open_claim_dir(paths, policy, false)? else {
                return Ok(Vec::new());
            };
            match dir.find(plan.job_id)? {
                Some(slot) => Some(slot),
                None => return Ok(Vec::new()),
            }
        }
        _ => None,
    };
    let located = plan.locate(paths.clone(), slot);
    let builds_dir = located.builds_dir();
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Some(rel) = job
        .build_dirs
        .project_dir
        .as_deref()
        .and_then(|d| relative_below(&builds_dir, d))
    {
        candidates.push(rel);
    }
    let from_path = paths.project_segments().to_vec();
    if !from_path.is_empty() && !candidates.contains(&from_path) {
        candidates.push(from_path);
    }
    let mut removed = Vec::new();
    if candidates.is_empty() {
        return Ok(removed);
    }
    let Some(builds) = open_builds_dir(&located, policy, plan, slot)? else {
        return Ok(removed);
    };
    for rel in candidates {
        let Some((last, dirs)) = rel.split_last() else {
            continue;
        };
        let mut chain: Vec<DirFd> = Vec::new();
        let mut missing = false;
        for name in dirs {
            match open_child(chain.last().unwrap_or(&builds), name)? {
                Some(d) => {
                    owned_by_user(&d, policy)?;
                    chain.push(d);
                }
                None => {
                    missing = true;
                    break;
                }
            }
        }
        if missing {
            continue;
        }
        let cur = chain.last().unwrap_or(&builds);
        let name = format!("{last}{RUNNER_TMP_SUFFIX}");
        let path = cur.path.join(&name);
        let st = match stat::fstatat(&cur.fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(FsError::io("stat", path, e)),
        };
        if file_type(&st) != SFlag::S_IFDIR {
            return Err(FsError::refused(
                path,
                "is not a directory (the runner's temporary project dir)",
            ));
        }
        if st.st_uid != policy.uid {
            return Err(FsError::refused(
                path,
                format!(
                    "owned by uid {}, not the job's user (uid {})",
                    st.st_uid, policy.uid
                ),
            ));
        }
        remove_tree(cur, OsStr::new(&name), 0)?;
        removed.push(path);
    }
    Ok(removed)
}

/// The components of `dir` below `builds_dir`, when `dir` is an absolute path strictly below
/// it made only of plain names (no `.`, `..` or empty components).
fn relative_below(builds_dir: &std::path::Path, dir: &str) -> Option<Vec<String>> {
    use std::path::Component;
    let rest = std::path::Path::new(dir).strip_prefix(builds_dir).ok()?;
    if dir
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    let comps: Option<Vec<String>> = rest
        .components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str().map(str::to_string),
            _ => None,
        })
        .collect();
    comps.filter(|c| !c.is_empty())
}

/// `d` must belong to the job's user.
fn owned_by_user(d: &DirFd, policy: &DirPolicy) -> Result<(), FsError> {
    let uid = policy.uid;
    d.owned_by(uid, |found| {
        format!("owned by uid {found}, not the job's user (uid {uid})")
    })?;
    Ok(())
}

/// The existing builds dir of `located` (the plan's layout at `slot`), opened through
/// descriptors from the base dir's parent or the verified custom root, each directory below
/// them owned by the user; `None` when part of it is missing.
fn open_builds_dir(
    located: &JobPaths,
    policy: &DirPolicy,
    plan: &BuildsPlan,
    slot: Option<u32>,
) -> Result<Option<DirFd>, FsError> {
    let (mut cur, comps) = match &plan.root {
        Root::Custom(root) => match open_custom_root(root, policy) {
            Ok(d) => (d, plan.below_root(slot)),
            Err(FsError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(e),
        },
        Root::Base => {
            let Some(comps) = located.builds_components() else {
                return Ok(None);
            };
            let base = located.base_dir();
            let parent_path = match located.anchor() {
                Anchor::Fixed { path, .. } => path.clone(),
                Anchor::Templated => base
                    .parent()
                    .unwrap_or(std::path::Path::new("/"))
                    .to_path_buf(),
            };
            let parent = match open_dir_path(&parent_path, "directory") {
                Ok(d) => d,
                Err(FsError::Missing { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let Some(base_name) = base.file_name().and_then(OsStr::to_str) else {
                return Err(FsError::refused(base, "has no usable final component"));
            };
            let Some(base) = open_child(&parent, base_name)? else {
                return Ok(None);
            };
            owned_by_user(&base, policy)?;
            (base, comps)
        }
    };
    for name in &comps {
        match open_child(&cur, name)? {
            Some(d) => {
                owned_by_user(&d, policy)?;
                cur = d;
            }
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// The driver's own directories below the base dir, the only ones a `group_permissions`
/// change may remove.
const DRIVER_DIRS: [&str; 3] = ["builds", "cache", "scripts"];

/// A `group_permissions` change (0700 <-> 0750). Never removes anything but the driver's own
/// `builds`, `cache` and `scripts`, whatever else the base dir holds:
///
/// * each of those three that is a directory owned by the user with exactly the *other*
///   setting's mode is removed, and the job recreates it with the new mode;
/// * a base dir with the other setting's mode gets the new mode (its set-group-ID bit kept)
///   when it is the driver's: `<data_dir>/<user>` or `$HOME/.jacamar-ci`. A base dir named by
///   `data_dir` itself (`/scratch/$USER`) may be the user's own directory: it is refused with
///   an error naming the path, both modes and `group_permissions`, and nothing is changed.
///
/// A missing base dir, another owner, a symlink or any other mode is left for
/// [`ensure_job_dirs`] to create or refuse. Returns whether something was changed.
pub fn migrate_group_permissions(
    paths: &JobPaths,
    policy: &DirPolicy,
    notify: &mut dyn FnMut(&str),
) -> Result<bool, FsError> {
    let Some(base) = open_own_base(paths, policy)? else {
        return Ok(false);
    };
    let other = DirPolicy {
        group_permissions: !policy.group_permissions,
        ..*policy
    };
    let st = base.stat()?;
    let base_is_other = perm_bits(&st) & !0o2000 == other.dir_mode();
    if !base_is_other && perm_bits(&st) & !0o2000 != policy.dir_mode() {
        return Ok(false);
    }
    if base_is_other && matches!(paths.anchor(), Anchor::Templated) {
        return Err(FsError::refused(
            &base.path,
            format!(
                "mode {:04o}, expected {:04o} (group_permissions = {}); data_dir names this directory \
                 itself, so it may hold more than the job's files and its mode is not changed: \
                 set it with `chmod {:04o} {}`",
                perm_bits(&st),
                policy.dir_mode(),
                policy.group_permissions,
                policy.dir_mode(),
                base.path.display()
            ),
        ));
    }
    let mut removed = Vec::new();
    for name in DRIVER_DIRS {
        if has_mode_of(&base, name, &other)? {
            remove_tree(&base, OsStr::new(name), 0)?;
            removed.push(name);
        }
    }
    if base_is_other {
        let keep_setgid = perm_bits(&st) & 0o2000;
        stat::fchmod(
            &base.fd,
            Mode::from_bits_truncate(policy.dir_mode() | keep_setgid),
        )
        .map_err(|e| FsError::io("set permissions of", &base.path, e))?;
    }
    if base_is_other || !removed.is_empty() {
        notify(&format!(
            "group_permissions changed: {} has mode {:04o}; the driver's directories in it \
             are recreated ({}), other files in it are kept",
            base.path.display(),
            policy.dir_mode(),
            if removed.is_empty() {
                "none existed".to_string()
            } else {
                removed.join(", ")
            }
        ));
    }
    Ok(base_is_other || !removed.is_empty())
}

/// The existing base dir when it is a directory owned by the policy's uid (`None` otherwise).
fn open_own_base(paths: &JobPaths, policy: &DirPolicy) -> Result<Option<DirFd>, FsError> {
    let parent = match open_existing_base_parent(paths, policy) {
        Ok(d) => d,
        Err(FsError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(name) = paths.base_dir().file_name().and_then(OsStr::to_str) else {
        return Ok(None);
    };
    let fd = match fcntl::openat(parent.borrow(), name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EACCES) => return Ok(None),
        Err(e) => return Err(FsError::io("open", paths.base_dir(), e)),
    };
    let base = DirFd {
        fd,
        path: paths.base_dir().to_path_buf(),
    };
    Ok((base.stat()?.st_uid == policy.uid).then_some(base))
}

/// `dir/name` is a directory (not a symlink) owned by `policy.uid` with exactly its mode.
fn has_mode_of(dir: &DirFd, name: &str, policy: &DirPolicy) -> Result<bool, FsError> {
    match stat::fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(file_type(&st) == SFlag::S_IFDIR
            && st.st_uid == policy.uid
            && perm_bits(&st) & !0o2000 == policy.dir_mode()),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(FsError::io("stat", dir.path.join(name), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_keys() {
        let segs = vec!["group".to_string(), "project".to_string()];
        assert_eq!(project_key(&segs, Some("42")).unwrap(), "project_42");
        let hashed = project_key(&segs, None).unwrap();
        assert!(hashed.starts_with("project_") && hashed.len() == "project_".len() + 16);
        assert_eq!(hashed, project_key(&segs, None).unwrap(), "stable");
        let other = vec!["other".to_string(), "project".to_string()];
        assert_ne!(hashed, project_key(&other, None).unwrap());
        let err = project_key(&segs, Some("4/2")).unwrap_err().to_string();
        assert!(err.contains("CI_PROJECT_ID"), "{err}");
        let long = vec!["x".repeat(255)];
        assert_eq!(project_key(&long, Some("1")).unwrap().len(), 255);
    }
}
