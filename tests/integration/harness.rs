//! Plays the runner's part by hand for tests that need precise control over one call:
//! a 0700 runner temp dir, the runner's environment, `CUSTOM_ENV_*` variables, each call
//! its own process-group leader, `job_env` from config carried to later calls.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const AUTH: &str = env!("CARGO_BIN_EXE_jacamar-auth");
pub const SIM: &str = env!("CARGO_BIN_EXE_jacamar-sim");

static NEXT_JOB: AtomicU64 = AtomicU64::new(1000);

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub runner_dir: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub env: BTreeMap<String, String>,
    pub job_id: u64,
    pub unobfuscated: bool,
    /// Run jacamar-auth as this user (uid, gid, name) instead of the test's own.
    pub run_as: Option<(u32, u32, String)>,
    /// Drive the hooks with `jacamar --no-auth` instead of `jacamar-auth`.
    pub no_auth: bool,
    /// The GitLab server the runner's `JOB_RESPONSE_FILE` names (in `git_info.repo_url`).
    pub response_server: String,
    /// Keys merged into the runner's `JOB_RESPONSE_FILE` (objects key by key, so
    /// `{"git_info": {"depth": 20}}` keeps the clone URL), as newer runners add them.
    pub response_extra: serde_json::Value,
}

/// `extra` merged into `base`: objects key by key (recursively), anything else replaced.
fn merge_json(base: &mut serde_json::Value, extra: &serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// A config with `data_dir` set to the harness's dir, plus `extra` lines in `[general]`.
pub fn config_text(data_dir: &Path, extra_general: &str) -> String {
    format!(
        "[general]\nexecutor = \"shell\"\ndata_dir = \"{}\"\n{extra_general}\n[auth]\ndownscope = \"none\"\n",
        data_dir.display()
    )
}

impl Harness {
    /// A harness for a batch executor, driven as the non-root `user` (the driver itself runs
    /// as that user with `downscope = "none"`, like a non-root runner deployment): a
    /// world-readable temp dir, a 1777 data dir, the runner's dir owned by `user`.
    /// `general` and `batch` are extra lines of those tables.
    pub fn batch(executor: &str, user: &str, general: &str, batch: &str) -> Harness {
        let pw = nix::unistd::User::from_name(user)
            .unwrap()
            .unwrap_or_else(|| panic!("user {user} does not exist (scripts/test.sh creates it)"));
        let tmp = tempfile::Builder::new()
            .prefix("jacamar-batch-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let config_path = tmp.path().join("jacamar.toml");
        let text = format!(
            "[general]\nexecutor = \"{executor}\"\ndata_dir = \"{}\"\n{general}\n[auth]\ndownscope = \"none\"\n[batch]\n{batch}\n",
            data_dir.display()
        );
        std::fs::write(&config_path, text).unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut h = Harness::with_config(tmp, data_dir, config_path);
        nix::unistd::chown(&h.runner_dir, Some(pw.uid), Some(pw.gid)).unwrap();
        h.set("HOME", &pw.dir.display().to_string());
        h.set("CUSTOM_ENV_GITLAB_USER_LOGIN", user);
        h.run_as = Some((pw.uid.as_raw(), pw.gid.as_raw(), user.to_string()));
        h
    }

    pub fn new(extra_general: &str) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config_path = tmp.path().join("jacamar.toml");
        std::fs::write(&config_path, config_text(&data_dir, extra_general)).unwrap();
        Harness::with_config(tmp, data_dir, config_path)
    }

    pub fn with_config(tmp: tempfile::TempDir, data_dir: PathBuf, config_path: PathBuf) -> Harness {
        let runner_dir = tmp.path().join("runner-tmp");
        std::fs::create_dir(&runner_dir).unwrap();
        std::fs::set_permissions(&runner_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let job_id = NEXT_JOB.fetch_add(1, Ordering::SeqCst) + std::process::id() as u64 * 10_000;
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("PATH", std::env::var("PATH").unwrap_or_default());
        set("HOME", std::env::var("HOME").unwrap_or("/root".into()));
        set("TMPDIR", runner_dir.display().to_string());
        set("BUILD_FAILURE_EXIT_CODE", "1".into());
        set("SYSTEM_FAILURE_EXIT_CODE", "2".into());
        set(
            "BUILD_EXIT_CODE_FILE",
            runner_dir.join("build_exit_code").display().to_string(),
        );
        set(
            "JOB_RESPONSE_FILE",
            runner_dir.join("response.json").display().to_string(),
        );
        set("CUSTOM_ENV_CI_JOB_ID", job_id.to_string());
        set("CUSTOM_ENV_CI_JOB_TOKEN", "glcbt-secret-token".into());
        set("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "tstrunnr".into());
        set("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID", "0".into());
        set("CUSTOM_ENV_CI_PROJECT_PATH", "group/project".into());
        set("CUSTOM_ENV_CI_JOB_TIMEOUT", "3600".into());
        set("CUSTOM_ENV_GITLAB_USER_LOGIN", "root".into());
        set("CUSTOM_ENV_CI_PIPELINE_SOURCE", "push".into());
        Harness {
            tmp,
            runner_dir,
            data_dir,
            config_path,
            env,
            job_id,
            unobfuscated: false,
            run_as: None,
            no_auth: false,
            response_server: "https://gitlab.example.com".into(),
            response_extra: serde_json::Value::Null,
        }
    }

    /// Replace the configuration file, with `extra_general` lines in `[general]`.
    pub fn rewrite_config(&self, extra_general: &str) {
        std::fs::write(
            &self.config_path,
            config_text(&self.data_dir, extra_general),
        )
        .unwrap();
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.env.insert(k.to_string(), v.to_string());
    }

    /// Write the runner's `JOB_RESPONSE_FILE` (0600, owned by the account running
    /// jacamar-auth) as the runner does before every call: the harness's own job id (not
    /// `CUSTOM_ENV_CI_JOB_ID`, which a test may override), the clone URL on
    /// `response_server` with the job token, the job timeout.
    pub fn write_response(&self) {
        let token = self
            .env
            .get("CUSTOM_ENV_CI_JOB_TOKEN")
            .cloned()
            .unwrap_or_default();
        let timeout: u64 = self
            .env
            .get("CUSTOM_ENV_CI_JOB_TIMEOUT")
            .and_then(|t| t.parse().ok())
            .unwrap_or(3600);
        let (scheme, host) = self
            .response_server
            .split_once("://")
            .unwrap_or(("https", &self.response_server));
        let mut body = serde_json::json!({
            "id": self.job_id,
            "token": token,
            "git_info": {"repo_url": format!("{scheme}://gitlab-ci-token:{token}@{host}/group/project.git")},
            "runner_info": {"timeout": timeout},
            "variables": [],
        });
        if !self.response_extra.is_null() {
            merge_json(&mut body, &self.response_extra);
        }
        let path = self.runner_dir.join("response.json");
        std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid, _)) = &self.run_as {
            std::os::unix::fs::chown(&path, Some(*uid), Some(*gid)).unwrap();
        }
    }

    /// A `jacamar-auth` command for `args`, with the runner's environment and working dir.
    pub fn auth(&self, args: &[&str]) -> Command {
        self.write_response();
        let mut c = if self.no_auth {
            let mut c = Command::new(env!("CARGO_BIN_EXE_jacamar"));
            c.arg("--no-auth");
            c
        } else {
            Command::new(AUTH)
        };
        if self.unobfuscated {
            c.arg("-u");
        }
        c.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.runner_dir)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some((uid, gid, _)) = &self.run_as {
            c.uid(*uid).gid(*gid);
        }
        c
    }

    pub fn config(&mut self) -> Output {
        let cfg = self.config_path.display().to_string();
        let out = self
            .auth(&["config", "--configuration", &cfg])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("config stdout is not JSON ({e}): {out:?}"));
            if let Some(env) = v["job_env"].as_object() {
                for (k, val) in env {
                    self.env
                        .insert(k.clone(), val.as_str().unwrap_or_default().to_string());
                }
            }
        }
        out
    }

    pub fn config_json(&mut self) -> serde_json::Value {
        let out = self.config();
        assert!(out.status.success(), "config failed: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn prepare(&self) -> Output {
        self.auth(&["prepare"]).output().unwrap()
    }

    /// Write `script` as the runner would (a file in its temp dir) and return its path.
    pub fn script_file(&self, stage: &str, script: &str) -> PathBuf {
        let p = self.runner_dir.join(format!("script-{stage}"));
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid, _)) = &self.run_as {
            std::os::unix::fs::chown(&p, Some(*uid), Some(*gid)).unwrap();
        }
        p
    }

    pub fn run(&self, stage: &str, script: &str) -> Output {
        let p = self.script_file(stage, script);
        self.auth(&["run", &p.display().to_string(), stage])
            .output()
            .unwrap()
    }

    pub fn spawn_run(&self, stage: &str, script: &str) -> Child {
        let p = self.script_file(stage, script);
        self.auth(&["run", &p.display().to_string(), stage])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn cleanup(&self) -> Output {
        let cfg = self.config_path.display().to_string();
        self.auth(&["cleanup", "--configuration", &cfg])
            .output()
            .unwrap()
    }

    pub fn build_exit_code(&self) -> Option<String> {
        std::fs::read_to_string(self.runner_dir.join("build_exit_code"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The user's base dir for the account running the tests.
    pub fn base_dir(&self) -> PathBuf {
        match &self.run_as {
            Some((_, _, name)) => self.data_dir.join(name),
            None => self.data_dir.join(whoami()),
        }
    }

    pub fn scripts_job_dir(&self) -> PathBuf {
        self.base_dir()
            .join("scripts/tstrunnr/000/group/project")
            .join(self.job_id.to_string())
    }
}

pub fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .unwrap()
        .unwrap()
        .name
}

pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Poll `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The fields of `/proc/<pid>/stat` after the command name (`state ppid pgrp session …`),
/// or None when the process is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Every pid listed in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// `(pid, ppid)` of every process in `/proc`.
fn parents() -> Vec<(i32, i32)> {
    all_pids()
        .into_iter()
        .filter_map(|p| Some((p, proc_stat(p)?.get(1)?.parse().ok()?)))
        .collect()
}

/// Whether `pid` is alive (a zombie counts as dead).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The children of `pid` (from /proc).
pub fn children(pid: u32) -> Vec<i32> {
    parents()
        .into_iter()
        .filter(|&(_, pp)| pp == pid as i32)
        .map(|(p, _)| p)
        .collect()
}

/// Every descendant of `root` (from /proc), to prove later that none survived.
pub fn descendants(root: i32) -> Vec<i32> {
    let all = parents();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &(c, pp) in &all {
            if pp == p && !out.contains(&c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// Read a child's stdout line by line on a thread (with each line's arrival time).
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collect lines of `rx` into `seen` until one contains `pat` (true) or `limit` passes.
pub fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    pat: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> bool {
    let until = Instant::now() + limit;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, l)) => {
                let hit = l.contains(pat);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// The exit status of `child` once it ended, or None after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.try_wait().unwrap()
}

/// Read pids written one per line to `path`.
pub fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The opt-out variable of [`require_root`] and [`require_tool`]. CI never sets it.
pub const ALLOW_SKIP_VAR: &str = "JACAMAR_TEST_ALLOW_SKIP";

/// A test that cannot run here for a reason other than root or a program (`why`) starts
/// with `if !require(ok, why) { return; }`: like [`require_root`], it fails unless
/// `JACAMAR_TEST_ALLOW_SKIP=1`.
#[track_caller]
pub fn require(ok: bool, why: &str) -> bool {
    ok || skip_or_fail(why)
}

#[track_caller]
fn skip_or_fail(what: &str) -> bool {
    if std::env::var(ALLOW_SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED ({ALLOW_SKIP_VAR}=1): {what}");
        false
    } else {
        panic!("{what}; run as root via scripts/test.sh, or set {ALLOW_SKIP_VAR}=1 to skip");
    }
}

/// A test that needs root starts with `if !require_root() { return; }`: without root it
/// fails, unless `JACAMAR_TEST_ALLOW_SKIP=1` is set (then it says so and returns false).
#[track_caller]
pub fn require_root() -> bool {
    nix::unistd::geteuid().is_root() || skip_or_fail("this test needs root")
}

/// Like [`require_root`], for a program the test needs on `PATH`.
#[track_caller]
pub fn require_tool(name: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    jacamar::shell::find_on_path(name, &path).is_some()
        || skip_or_fail(&format!("this test needs `{name}` on PATH"))
}

/// The runner's quoting of one shell word, byte for byte as its bash writer's default
/// escaping (`helpers.ShellEscape`): a word of only `[A-Za-z0-9,./@_-]` stays bare; anything
/// else becomes ANSI-C quoted, with `\a \b \t \n \v \f \r \' \\` escapes and `\xHH` for the
/// other control bytes, DEL and every non-ASCII byte.
pub fn runner_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".into();
    }
    let lit = |b: u8| b.is_ascii_alphanumeric() || b",-./@_".contains(&b);
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b if lit(b) => out.push(b as char),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0b => out.push_str("\\v"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(b as char),
            other => out.push_str(&format!("\\x{other:02x}")),
        }
    }
    if s.bytes().all(lit) {
        out
    } else {
        format!("$'{out}'")
    }
}

/// The shapes of stage script GitLab Runner's bash writer finishes (`BashWriter.Finish`,
/// shells/bash.go; see the custom executor protocol notes). The user's body runs in a
/// subshell in each; what differs is the script's own shell on the runner's SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Runner < 17.4 (v16.9.2's writer): `: | eval $'...'`, no trap. On SIGTERM the
    /// script's shell dies of it at once (143) while the body's own trap may still run.
    Legacy,
    /// Runner 17.4 to 19.0 (v18.0.5's writer): `trap exit 1 TERM` (the trap `exit` on SIGHUP
    /// and SIGTERM) before the same `: | eval`. On SIGTERM the script's shell waits for the
    /// body, then exits with the body's status (143 when the body died of the TERM).
    V17,
    /// Runner >= 19.1 (default): `(trap 'exit 1' TERM; eval $'...') < /dev/null` under an
    /// outer `trap 'exit 1' TERM`. On SIGTERM the script's shell waits for the body, then
    /// exits 1: a cancelled job reports 1.
    Current,
}

impl Shape {
    /// The two shapes every signal, trap, batch and token test runs under.
    pub const BOTH: [Shape; 2] = [Shape::Legacy, Shape::Current];
    /// Every shape in the field.
    pub const ALL: [Shape; 3] = [Shape::Legacy, Shape::V17, Shape::Current];

    /// The name used in test names, failure messages and jacamar-sim's `--script-shape`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Legacy => "legacy",
            Shape::V17 => "v17",
            Shape::Current => "current",
        }
    }

    /// `body` (the exports and commands of a stage, one per line) in this shape, byte for
    /// byte as the runner writes it.
    pub fn script(self, body: &str) -> String {
        let q = runner_quote(body);
        const PIPEFAIL: &str =
            "if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n";
        match self {
            Shape::Legacy => format!(
                "#!/usr/bin/env bash\n\n{PIPEFAIL}set +o noclobber\n: | eval {q}\nexit 0\n"
            ),
            Shape::V17 => format!(
                "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\n{PIPEFAIL}set +o noclobber\n: | eval {q}\nexit 0\n"
            ),
            Shape::Current => format!(
                "#!/usr/bin/env bash\n\ntrap 'exit 1' TERM\n\n\
                 case \"$(set -o)\" in *\"pipefail\"*) set -o pipefail;; esac; set -o errexit\n\
                 set +o noclobber\n(trap 'exit 1' TERM; eval {q}) < /dev/null\nexit 0\n"
            ),
        }
    }

    /// What the script's own shell (and so `BUILD_EXIT_CODE_FILE`) reports when the run
    /// call is cancelled while the body runs: `body` is the body's own status then (143
    /// when it died of the TERM, its trap's `exit N` otherwise).
    pub fn cancelled_status(self, body: i32) -> i32 {
        match self {
            Shape::Legacy => 143,
            Shape::V17 => body,
            Shape::Current => 1,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `body` in the runner's legacy shape ([`Shape::Legacy`]): the commands inside
/// `: | eval $'...'` (a subshell), then the builtin `exit 0`. Test drivers with this (or
/// [`runner_script_in`]), never with a bare body.
pub fn runner_script(body: &str) -> String {
    Shape::Legacy.script(body)
}

/// `body` in the runner's script `shape`.
pub fn runner_script_in(shape: Shape, body: &str) -> String {
    shape.script(body)
}

/// `shape_tests!(f, g, ...)`: for each `fn f(shape: Shape)` of the calling module, a module
/// `f` with the tests `legacy` and `current` (`f::legacy` in the test's name and failure);
/// `shape_tests!(all: f, ...)` adds `v17`. `root:` before either form marks tests that need
/// root: ignored unless the `root-tests` feature is on (`f` still starts with
/// `require_root()`, so that without root they fail, never pass silently).
#[macro_export]
macro_rules! shape_tests {
    (root: all: $($name:ident),+ $(,)?) => {
        $crate::shape_tests!(@tests [cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")] [Legacy legacy, V17 v17, Current current] $($name),+);
    };
    (root: $($name:ident),+ $(,)?) => {
        $crate::shape_tests!(@tests [cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")] [Legacy legacy, Current current] $($name),+);
    };
    (all: $($name:ident),+ $(,)?) => {
        $crate::shape_tests!(@tests [] [Legacy legacy, V17 v17, Current current] $($name),+);
    };
    ($($name:ident),+ $(,)?) => {
        $crate::shape_tests!(@tests [] [Legacy legacy, Current current] $($name),+);
    };
    (@tests $attr:tt $shapes:tt $($name:ident),+) => {$(
        $crate::shape_tests!(@module $attr $shapes $name);
    )+};
    (@module $attr:tt [$($shape:ident $test:ident),+] $name:ident) => {
        mod $name {
            $($crate::shape_tests!(@test $attr $shape $test $name);)+
        }
    };
    (@test [$($attr:meta)?] $shape:ident $test:ident $name:ident) => {
        #[test]
        $(#[$attr])?
        fn $test() {
            super::$name($crate::harness::Shape::$shape)
        }
    };
}
