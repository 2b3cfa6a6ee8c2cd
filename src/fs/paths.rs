//! Computing the job's paths from `data_dir`, the user and the CI environment. No I/O here.

use std::path::{Path, PathBuf};

use super::{FsError, UserInfo, HOME_BASE_NAME};

/// Longest accepted path segment (NAME_MAX on Linux).
const MAX_SEGMENT_LEN: usize = 255;

/// Which kind of value a segment is, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    RunnerToken,
    ProjectPath,
    Stage,
    UserName,
}

impl SegmentKind {
    fn describe(self) -> &'static str {
        match self {
            SegmentKind::RunnerToken => "runner short token",
            SegmentKind::ProjectPath => "project path",
            SegmentKind::Stage => "stage name",
            SegmentKind::UserName => "user name",
        }
    }
}

/// Check one path segment: non-empty, not `.`/`..`, only `[A-Za-z0-9._-]`, at most 255 bytes.
pub fn validate_segment(kind: SegmentKind, value: &str) -> Result<(), FsError> {
    segment_problem(value).map_or(Ok(()), |reason| {
        Err(FsError::InvalidValue {
            what: kind.describe(),
            value: value.to_string(),
            reason,
        })
    })
}

fn segment_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".into());
    }
    if value == "." || value == ".." {
        return Some("it is a relative path component".into());
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Some(format!("it is longer than {MAX_SEGMENT_LEN} bytes"));
    }
    if value.contains('/') {
        return Some("it contains '/'".into());
    }
    if value.contains('\0') {
        return Some("it contains a NUL byte".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "it contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    None
}

/// Split and check a project path (`namespace/.../project`): `/`-separated valid segments.
pub fn validate_project_path(value: &str) -> Result<Vec<String>, FsError> {
    let bad = |reason: String| FsError::InvalidValue {
        what: SegmentKind::ProjectPath.describe(),
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty".into()));
    }
    value
        .split('/')
        .map(|seg| match segment_problem(seg) {
            None => Ok(seg.to_string()),
            Some(reason) => Err(bad(format!("segment {seg:?}: {reason}"))),
        })
        .collect()
}

/// How the base dir relates to the configured `data_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// `data_dir` (or the home in the `$HOME` case): must exist; it is the base dir's parent.
    Fixed { path: PathBuf, what: &'static str },
    /// `data_dir` named the user (`/store/$USER/ci`): missing ancestors of the base dir may be
    /// created by the user below the deepest existing one.
    Templated,
}

/// All paths of one job. Built once from validated inputs; accessors never fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    user: UserInfo,
    data_dir: PathBuf,
    base: PathBuf,
    anchor: Anchor,
    runner: String,
    concurrent: String,
    project: Vec<String>,
    job_id: u64,
    user_specific: bool,
    /// Where the builds dir is, when a build-directory feature moved it (see `fs::builds`).
    builds_at: Option<BuildsAt>,
}

/// Where the builds dir lives when it is not `<base>/builds/<runner>/<NNN>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildsAt {
    /// Components below the base dir (the first is `builds`), validated segments.
    BelowBase(Vec<String>),
    /// A verified directory outside the base dir (`custom_build_dir`), absolute.
    Outside(PathBuf),
}

impl JobPaths {
    /// Compute the job's paths.
    ///
    /// `data_dir_raw` is the configured value; `$HOME`, `${HOME}`, `$USER` and `${USER}` are
    /// expanded from `user` (never from the process environment). Every value that comes from
    /// the CI environment is validated here.
    pub fn new(
        data_dir_raw: &str,
        user: &UserInfo,
        runner_short_token: &str,
        concurrent_id: u32,
        project_path: &str,
        job_id: u64,
    ) -> Result<JobPaths, FsError> {
        validate_segment(SegmentKind::UserName, &user.name)?;
        validate_segment(SegmentKind::RunnerToken, runner_short_token)?;
        let project = validate_project_path(project_path)?;
        let home = checked_home(&user.home)?;

        let (expanded, user_specific) = expand(data_dir_raw, &user.name, &home)?;
        let expanded = normalize_absolute(&expanded).map_err(|reason| FsError::InvalidDataDir {
            value: data_dir_raw.to_string(),
            reason: reason.to_string(),
        })?;

        let trimmed = data_dir_raw.trim_end_matches('/');
        let (data_dir, base, anchor) = if trimmed == "$HOME" || trimmed == "${HOME}" {
            let base = expanded.join(HOME_BASE_NAME);
            let anchor = Anchor::Fixed {
                path: expanded.clone(),
                what: "home directory",
            };
            (expanded, base, anchor)
        } else if user_specific {
            if expanded.parent().is_none() {
                return Err(FsError::InvalidDataDir {
                    value: data_dir_raw.to_string(),
                    reason: "it expands to the root directory".into(),
                });
            }
            (expanded.clone(), expanded, Anchor::Templated)
        } else {
            let base = expanded.join(&user.name);
            let anchor = Anchor::Fixed {
                path: expanded.clone(),
                what: "data_dir",
            };
            (expanded, base, anchor)
        };

        Ok(JobPaths {
            user: user.clone(),
            data_dir,
            base,
            anchor,
            runner: runner_short_token.to_string(),
            concurrent: format!("{concurrent_id:03}"),
            project,
            job_id,
            user_specific,
            builds_at: None,
        })
    }

    /// The expanded admin `data_dir`; the home in the `$HOME` case; in the `/store/$USER/ci`
    /// case the expanded path, which is also the base dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The user's base dir (mode 0700/0750, owned by the user).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// `<base>/builds/<runner>/<NNN>`: the runner appends `/<namespace>/<project>`.
    /// A build-directory feature may have moved it (see `fs::builds`).
    pub fn builds_dir(&self) -> PathBuf {
        match &self.builds_at {
            None => self
                .base
                .join("builds")
                .join(&self.runner)
                .join(&self.concurrent),
            Some(BuildsAt::BelowBase(comps)) => {
                let mut p = self.base.clone();
                p.extend(comps);
                p
            }
            Some(BuildsAt::Outside(path)) => path.clone(),
        }
    }

    /// The same paths with the builds dir moved (`fs::builds` decides where).
    pub(crate) fn with_builds_at(mut self, at: BuildsAt) -> JobPaths {
        self.builds_at = Some(at);
        self
    }

    /// `<base>/cache/<runner>/<NNN>`.
    pub fn cache_dir(&self) -> PathBuf {
        self.base
            .join("cache")
            .join(&self.runner)
            .join(&self.concurrent)
    }

    /// `builds_dir()/<namespace>/<project>`: where the runner clones the project.
    pub fn project_dir(&self) -> PathBuf {
        let mut p = self.builds_dir();
        p.extend(&self.project);
        p
    }

    /// `<base>/scripts/<runner>/<NNN>/<namespace>/<project>/<job id>`.
    pub fn scripts_dir(&self) -> PathBuf {
        let mut p = self.base.clone();
        p.extend(self.scripts_components());
        p
    }

    /// `scripts_dir()/<stage>.bash`; `stage` is validated.
    pub fn script_path(&self, stage: &str) -> Result<PathBuf, FsError> {
        Ok(self.scripts_dir().join(script_file_name(stage)?))
    }

    /// The user these paths belong to.
    pub fn user(&self) -> &UserInfo {
        &self.user
    }

    /// The validated runner short token.
    pub fn runner_short_token(&self) -> &str {
        &self.runner
    }

    /// The concurrent id as used in paths (`000`).
    pub fn concurrent_dir(&self) -> &str {
        &self.concurrent
    }

    /// The validated project path segments.
    pub fn project_segments(&self) -> &[String] {
        &self.project
    }

    /// The job id.
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    /// True when `data_dir` itself names the user (`$HOME` or `$USER` was in it).
    pub fn is_user_specific(&self) -> bool {
        self.user_specific
    }

    pub(crate) fn anchor(&self) -> &Anchor {
        &self.anchor
    }

    /// Components below the base dir leading to `builds_dir()`; `None` when the builds dir
    /// is outside the base dir (`fs::builds` creates that one).
    pub(crate) fn builds_components(&self) -> Option<Vec<String>> {
        match &self.builds_at {
            None => Some(vec![
                "builds".into(),
                self.runner.clone(),
                self.concurrent.clone(),
            ]),
            Some(BuildsAt::BelowBase(comps)) => Some(comps.clone()),
            Some(BuildsAt::Outside(_)) => None,
        }
    }

    /// Components below the base dir leading to `cache_dir()`.
    pub(crate) fn cache_components(&self) -> Vec<String> {
        vec!["cache".into(), self.runner.clone(), self.concurrent.clone()]
    }

    /// Components below the base dir leading to `scripts_dir()` (job id last).
    pub(crate) fn scripts_components(&self) -> Vec<String> {
        let mut v = vec![
            "scripts".into(),
            self.runner.clone(),
            self.concurrent.clone(),
        ];
        v.extend(self.project.iter().cloned());
        v.push(self.job_id.to_string());
        v
    }
}

/// `<stage>.bash` after validating the stage name.
pub(crate) fn script_file_name(stage: &str) -> Result<String, FsError> {
    validate_segment(SegmentKind::Stage, stage)?;
    Ok(format!("{stage}.bash"))
}

fn checked_home(home: &Path) -> Result<String, FsError> {
    let bad = |reason: &str| FsError::InvalidValue {
        what: "home directory",
        value: home.display().to_string(),
        reason: reason.to_string(),
    };
    let s = home.to_str().ok_or_else(|| bad("it is not valid UTF-8"))?;
    if s.contains('$') {
        return Err(bad("it contains '$'"));
    }
    normalize_absolute(s).map_err(|r| bad(&r.to_string()))?;
    Ok(s.to_string())
}

/// Expand `$HOME`, `${HOME}`, `$USER`, `${USER}`; any other `$` is an error.
/// Returns the expanded text and whether a variable was used.
fn expand(raw: &str, user: &str, home: &str) -> Result<(String, bool), FsError> {
    let mut out = String::with_capacity(raw.len() + home.len());
    let mut used = false;
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (value, len) = if let Some(r) = after.strip_prefix("{HOME}") {
            (home, after.len() - r.len())
        } else if let Some(r) = after.strip_prefix("{USER}") {
            (user, after.len() - r.len())
        } else if let Some(r) = bare_var(after, "HOME") {
            (home, after.len() - r.len())
        } else if let Some(r) = bare_var(after, "USER") {
            (user, after.len() - r.len())
        } else {
            return Err(FsError::InvalidDataDir {
                value: raw.to_string(),
                reason: "only $HOME, ${HOME}, $USER and ${USER} may be used".into(),
            });
        };
        out.push_str(value);
        used = true;
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok((out, used))
}

/// `after` starts with `name` not followed by another identifier character.
fn bare_var<'a>(after: &'a str, name: &str) -> Option<&'a str> {
    let r = after.strip_prefix(name)?;
    match r.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => None,
        _ => Some(r),
    }
}

/// Why a path's text is not a plain absolute path (the reason of an [`FsError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAbsolute {
    #[error("it is not an absolute path")]
    Relative,
    #[error("it contains a NUL byte")]
    Nul,
    /// `.` or `..`.
    #[error("it contains a {0:?} component")]
    DotComponent(String),
}

/// An absolute path without `.`/`..` components or NUL bytes, with duplicate `/` removed.
pub(crate) fn normalize_absolute(s: &str) -> Result<PathBuf, NotAbsolute> {
    if !s.starts_with('/') {
        return Err(NotAbsolute::Relative);
    }
    if s.contains('\0') {
        return Err(NotAbsolute::Nul);
    }
    let mut p = PathBuf::from("/");
    for seg in s.split('/').filter(|seg| !seg.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(NotAbsolute::DotComponent(seg.to_string()));
        }
        p.push(seg);
    }
    Ok(p)
}
