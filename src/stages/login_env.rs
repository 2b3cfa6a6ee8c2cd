//! `JACAMAR_BASH_PROFILE_ONCE`: the login profile read once per job, not once per stage.
//!
//! The runner calls `run` 6 to 8 times per job, and by default every call starts a login
//! shell that reads the account's profile files (see [`crate::shell`]); a site profile that
//! loads a module system can take hundreds of milliseconds each time. With this CI variable
//! set (opt-in: what a stage sees changes, see below), and a profile in use (the default
//! login profile or `JACAMAR_ETC_PROFILE_ONLY`):
//!
//! * the first `run` stage of the job (normally the runner's `prepare_script`) runs the login
//!   shell as always; after the profile files and right before the login shell execs the
//!   script's bash, `jacamar capture-env FILE` (a child of the login shell, so it inherits
//!   exactly what that bash would) records the environment (exported variables and exported
//!   functions), the umask, the resource limits, the ignored signals and the working
//!   directory. When the stage has ended, `jacamar` keeps what the profile changed relative
//!   to the environment it gave the login shell, in `<scripts dir>/login-env.json` (the job's
//!   private scripts directory, removed at cleanup);
//! * every later `run` stage of that job starts `bash --noprofile --norc SCRIPT` with the
//!   stage's own environment plus those changes (minus the variables the profile unset), in
//!   the recorded working directory, with the recorded umask, limits and ignored signals.
//!   No profile file is read and no login shell runs.
//!
//! What a later stage sees differently from the default (every other thing is the same):
//!
//! 1. The profile files do not run again, so whatever they do besides the state above
//!    happens once per job: what they print appears in the first stage's log only; files
//!    they write, processes they start (an `ssh-agent`), caches they fill, the time they
//!    take.
//! 2. Values the profile computes are the first stage's: `$$`, `$RANDOM`, dates, anything
//!    read from a file or a command whose answer changes during the job.
//! 3. Not recorded: the nice value, CPU affinity and other per-process settings outside the
//!    list above (`renice`, `taskset` on the shell itself).
//! 4. The state is the one of the first stage: a later stage's own environment (as
//!    `jacamar-auth` builds it: the same allowlisted variables in every stage) gets the
//!    profile's changes applied on top; the runner's script then exports the CI variables,
//!    as in every mode.
//!
//! The same in both modes: unexported variables and functions, aliases, shell options and
//! traps with a handler of the profile never reach the script (the login shell execs a fresh
//! bash); `BASH_ENV`, when the profile exports it, is read by the script's bash; `SHLVL`,
//! `PWD`, `OLDPWD` and `_` are the script's bash's own. A batch executor's submitted stage
//! still reads the profile on the compute node. When nothing usable was recorded (the profile
//! exited or exec'd before the capture, a variable is not UTF-8, the file is damaged), the
//! next stage reads the profile again and records again: never less than the default.
//!
//! The files are the job user's, written and read by `jacamar` running as that user, in the
//! job's private scripts directory: no privileged process reads them. They are still
//! checked: at most [`MAX_BYTES`], the format named, names non-empty without `=` or NUL,
//! values without NUL, known limits and signals only.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{self, DirPolicy, JobPaths};
use crate::sys::limits;

/// What `jacamar capture-env` writes (in the scripts dir, named by the capturing stage).
pub const RAW_FILE: &str = "login-env.raw.json";
/// What later stages replay.
pub const FILE: &str = "login-env.json";
/// Bound of either file: the kernel's limit on a process's environment is far below.
pub const MAX_BYTES: u64 = 4 << 20;
/// The format written; another is not replayed (the profile is read again).
const FORMAT: u32 = 1;
/// Variables bash keeps for itself, never replayed.
const SHELL_OWN: &[&str] = &["_", "SHLVL", "PWD", "OLDPWD"];

/// The resource limits recorded and replayed.
const RLIMITS: &[(libc::__rlimit_resource_t, &str)] = &[
    (libc::RLIMIT_AS, "as"),
    (libc::RLIMIT_CORE, "core"),
    (libc::RLIMIT_CPU, "cpu"),
    (libc::RLIMIT_DATA, "data"),
    (libc::RLIMIT_FSIZE, "fsize"),
    (libc::RLIMIT_LOCKS, "locks"),
    (libc::RLIMIT_MEMLOCK, "memlock"),
    (libc::RLIMIT_MSGQUEUE, "msgqueue"),
    (libc::RLIMIT_NICE, "nice"),
    (libc::RLIMIT_NOFILE, "nofile"),
    (libc::RLIMIT_NPROC, "nproc"),
    (libc::RLIMIT_RSS, "rss"),
    (libc::RLIMIT_RTPRIO, "rtprio"),
    (libc::RLIMIT_RTTIME, "rttime"),
    (libc::RLIMIT_SIGPENDING, "sigpending"),
    (libc::RLIMIT_STACK, "stack"),
];

/// The login shell's state as the script's bash would get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub format: u32,
    /// Recorded: the whole environment. Kept for replay: what the profile set or changed.
    pub env: Vec<(String, String)>,
    /// Kept for replay: the variables of the stage's environment the profile removed.
    #[serde(default)]
    pub unset: Vec<String>,
    pub umask: u32,
    /// Limit name (see [`RLIMITS`]), soft, hard (`u64::MAX`: unlimited).
    pub rlimits: Vec<(String, u64, u64)>,
    pub ignored_signals: Vec<i32>,
    pub cwd: Option<PathBuf>,
}

/// Why the first stage's login state could not be recorded or used; each is said in the
/// job log as a warning and the stage reads the profile instead.
#[derive(Debug, thiserror::Error)]
pub enum LoginEnvError {
    #[error(
        "the login shell's variable {0:?} is not UTF-8: its environment is not recorded, \
         every stage reads the profile"
    )]
    NotUtf8(std::ffi::OsString),
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not readable: {source}")]
    Unreadable {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what} {why}")]
    Invalid { what: String, why: String },
    #[error("failed to encode the login state: {0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    File(#[from] fs::FsError),
}

/// `jacamar capture-env FILE`: record this process's state (it runs as a child of the login
/// shell, after the profile) in `output` (created 0600, replaced, no symlink followed).
pub fn capture_to(output: &Path) -> Result<(), LoginEnvError> {
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        // `_` is this program's own path, set by bash for it.
        if k.as_bytes() == b"_" {
            continue;
        }
        match (k.to_str(), v.to_str()) {
            (Some(k), Some(v)) => env.push((k.to_string(), v.to_string())),
            _ => return Err(LoginEnvError::NotUtf8(k)),
        }
    }
    let umask = limits::current_umask();
    let mut rlimits = Vec::new();
    for &(res, name) in RLIMITS {
        if let Some(l) = limits::getrlimit(res) {
            rlimits.push((name.to_string(), l.rlim_cur, l.rlim_max));
        }
    }
    let ignored_signals = (1..=max_signal())
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP && ignored_here(s))
        .collect();
    let state = LoginState {
        format: FORMAT,
        env,
        unset: Vec::new(),
        umask: umask as u32,
        rlimits,
        ignored_signals,
        cwd: std::env::current_dir().ok(),
    };
    let text = serde_json::to_vec(&state).map_err(LoginEnvError::Encode)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(output)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|source| LoginEnvError::Write {
            path: output.to_path_buf(),
            source,
        })
}

/// Whether this process ignores `sig`.
fn ignored_here(sig: i32) -> bool {
    crate::sys::signal::is_ignored(sig)
}

/// The highest signal number (`SIGRTMAX`).
fn max_signal() -> i32 {
    libc::SIGRTMAX()
}

/// Parse and check a state file's content (`what` names it in errors).
fn parse(bytes: &[u8], what: &str) -> Result<LoginState, LoginEnvError> {
    let invalid = |why: String| LoginEnvError::Invalid {
        what: what.to_string(),
        why,
    };
    let st: LoginState =
        serde_json::from_slice(bytes).map_err(|source| LoginEnvError::Unreadable {
            what: what.to_string(),
            source,
        })?;
    if st.format != FORMAT {
        return Err(invalid(format!("has format {} (not {FORMAT})", st.format)));
    }
    let bad_name = |k: &str| k.is_empty() || k.contains(['=', '\0']);
    if let Some((k, _)) = st.env.iter().find(|(k, v)| bad_name(k) || v.contains('\0')) {
        return Err(invalid(format!("holds an unusable variable {k:?}")));
    }
    if let Some(k) = st.unset.iter().find(|k| bad_name(k)) {
        return Err(invalid(format!("holds an unusable variable name {k:?}")));
    }
    if st.umask > 0o777 {
        return Err(invalid(format!("holds umask {:o}", st.umask)));
    }
    if let Some((n, ..)) = st
        .rlimits
        .iter()
        .find(|(n, ..)| !RLIMITS.iter().any(|(_, k)| k == n))
    {
        return Err(invalid(format!("holds an unknown limit {n:?}")));
    }
    if let Some(s) = st
        .ignored_signals
        .iter()
        .find(|&&s| s < 1 || s > max_signal() || s == libc::SIGKILL || s == libc::SIGSTOP)
    {
        return Err(invalid(format!("holds signal {s}")));
    }
    if st.cwd.as_ref().is_some_and(|c| !c.is_absolute()) {
        return Err(invalid("holds a relative working directory".to_string()));
    }
    Ok(st)
}

/// Before a stage: what the first stage kept, if anything (`Ok(None)`: this stage records).
/// `Err`: the file is unusable (the caller says so in the job log and records again).
pub fn load(paths: &JobPaths, policy: &DirPolicy) -> Result<Option<LoginState>, LoginEnvError> {
    let what = paths.scripts_dir().join(FILE).display().to_string();
    match fs::read_job_file(paths, policy, FILE, MAX_BYTES) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => parse(&bytes, &what).map(Some),
        Err(e) => Err(e.into()),
    }
}

/// Where the capturing stage's `jacamar capture-env` writes.
pub fn raw_path(paths: &JobPaths) -> PathBuf {
    paths.scripts_dir().join(RAW_FILE)
}

/// After the capturing stage: keep what the profile changed relative to `base` (the
/// environment the login shell was given) for the later stages. `Ok(false)`: nothing was
/// recorded (the next stage records again).
pub fn finish(
    paths: &JobPaths,
    policy: &DirPolicy,
    base: &[(String, String)],
) -> Result<bool, LoginEnvError> {
    let what = raw_path(paths).display().to_string();
    let raw = match fs::read_job_file(paths, policy, RAW_FILE, MAX_BYTES) {
        Ok(None) => return Ok(false),
        Ok(Some(bytes)) => parse(&bytes, &what),
        Err(e) => Err(e.into()),
    };
    // The raw record goes whatever it holds; failing to remove it is said (the next
    // capture replaces it).
    fs::remove_job_file(paths, policy, RAW_FILE)?;
    let kept = changes(raw?, base);
    let text = serde_json::to_vec(&kept).map_err(LoginEnvError::Encode)?;
    fs::write_job_file(paths, policy, FILE, &text)?;
    Ok(true)
}

/// The recorded state `raw` with only what differs from `base` in its environment: the
/// variables set or changed, and (in `unset`) those of `base` that are gone; bash's own
/// variables are neither.
fn changes(mut raw: LoginState, base: &[(String, String)]) -> LoginState {
    let own = |k: &str| SHELL_OWN.contains(&k);
    raw.unset = base
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !own(k) && !raw.env.iter().any(|(n, _)| n == *k))
        .cloned()
        .collect();
    raw.env
        .retain(|(k, v)| !own(k) && !base.iter().any(|(n, bv)| n == k && bv == v));
    raw
}

impl LoginState {
    /// The stage's environment `base` with the profile's changes.
    pub fn apply_env(&self, base: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| !self.unset.contains(k) && !self.env.iter().any(|(n, _)| n == k))
            .cloned()
            .collect();
        env.extend(self.env.iter().cloned());
        env
    }

    /// The working directory: the recorded one while it is a directory, else `default`.
    pub fn cwd_or(&self, default: PathBuf) -> PathBuf {
        match &self.cwd {
            Some(c) if c.is_dir() => c.clone(),
            _ => default,
        }
    }

    /// What the child must set before exec: only what differs from this process (so the
    /// usual case, a profile that changes none of it, keeps the fast spawn).
    pub fn process_state(&self) -> ProcessState {
        let ours = limits::current_umask() as u32;
        let mut changed = Vec::new();
        for (name, soft, hard) in &self.rlimits {
            let Some(&(res, _)) = RLIMITS.iter().find(|(_, n)| n == name) else {
                continue;
            };
            let same = limits::getrlimit(res)
                .is_some_and(|cur| cur.rlim_cur == *soft && cur.rlim_max == *hard);
            if !same {
                changed.push((
                    res,
                    libc::rlimit {
                        rlim_cur: *soft,
                        rlim_max: *hard,
                    },
                ));
            }
        }
        ProcessState::new(
            (self.umask != ours).then_some(self.umask as libc::mode_t),
            changed,
            // An ignored signal stays ignored across fork and exec: only the others.
            self.ignored_signals
                .iter()
                .copied()
                .filter(|&s| !ignored_here(s))
                .collect(),
        )
    }
}

/// Settings for the script's bash, applied between fork and exec.
pub use crate::sys::limits::ProcessState;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn state(e: &[(&str, &str)]) -> LoginState {
        LoginState {
            format: FORMAT,
            env: env(e),
            unset: vec![],
            umask: 0o022,
            rlimits: vec![],
            ignored_signals: vec![],
            cwd: None,
        }
    }

    #[test]
    fn keeps_what_the_profile_changed_and_replays_it_on_the_stages_environment() {
        let base = env(&[
            ("HOME", "/h"),
            ("PATH", "/bin"),
            ("LANG", "C"),
            ("TERM", "x"),
        ]);
        // The recorded environment: PATH changed, LANG removed, MODULEPATH and a function
        // added, and bash's own variables.
        let raw = state(&[
            ("HOME", "/h"),
            ("PATH", "/opt/m/bin:/bin"),
            ("TERM", "x"),
            ("MODULEPATH", "/opt/m"),
            ("BASH_FUNC_module%%", "() {  echo m\n}"),
            ("SHLVL", "1"),
            ("PWD", "/h"),
        ]);
        let kept = changes(raw, &base);
        assert_eq!(kept.unset, vec!["LANG".to_string()]);
        assert_eq!(
            kept.env,
            env(&[
                ("PATH", "/opt/m/bin:/bin"),
                ("MODULEPATH", "/opt/m"),
                ("BASH_FUNC_module%%", "() {  echo m\n}"),
            ])
        );
        // A later stage's environment (askpass added by jacamar-auth, say) gets them.
        let later = env(&[
            ("HOME", "/h"),
            ("PATH", "/bin"),
            ("LANG", "C"),
            ("GIT_ASKPASS", "/j"),
        ]);
        let mut got = kept.apply_env(&later);
        got.sort();
        let mut want = env(&[
            ("HOME", "/h"),
            ("GIT_ASKPASS", "/j"),
            ("PATH", "/opt/m/bin:/bin"),
            ("MODULEPATH", "/opt/m"),
            ("BASH_FUNC_module%%", "() {  echo m\n}"),
        ]);
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_what_cannot_be_replayed() {
        let ok = serde_json::to_vec(&state(&[("A", "1")])).unwrap();
        assert!(parse(&ok, "f").is_ok());
        let cases: Vec<(LoginState, &str)> = vec![
            (state(&[("", "1")]), "unusable variable"),
            (state(&[("A=B", "1")]), "unusable variable"),
            (state(&[("A", "x\0y")]), "unusable variable"),
            (
                LoginState {
                    format: 9,
                    ..state(&[])
                },
                "format 9",
            ),
            (
                LoginState {
                    umask: 0o1777,
                    ..state(&[])
                },
                "umask",
            ),
            (
                LoginState {
                    rlimits: vec![("bogus".into(), 1, 1)],
                    ..state(&[])
                },
                "unknown limit",
            ),
            (
                LoginState {
                    ignored_signals: vec![libc::SIGKILL],
                    ..state(&[])
                },
                "signal 9",
            ),
            (
                LoginState {
                    cwd: Some("rel".into()),
                    ..state(&[])
                },
                "relative",
            ),
        ];
        for (st, want) in cases {
            let bytes = serde_json::to_vec(&st).unwrap();
            let e = parse(&bytes, "f").unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
        let e = parse(b"{\"format\":1", "the file").unwrap_err().to_string();
        assert!(e.starts_with("the file is not readable"), "{e}");
    }

    #[test]
    fn records_this_process_and_replays_nothing_it_already_has() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("raw.json");
        capture_to(&out).unwrap();
        let st = parse(&std::fs::read(&out).unwrap(), "raw").unwrap();
        assert!(st.env.iter().any(|(k, _)| k == "PATH"));
        assert_eq!(st.cwd, std::env::current_dir().ok());
        assert!(st.rlimits.iter().any(|(n, ..)| n == "stack"));
        // The same process: no umask or limit to change.
        let ps = st.process_state();
        assert!(ps.umask().is_none() && ps.limits().is_empty(), "{ps:?}");
        // A symlink in its place is not followed.
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(capture_to(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
