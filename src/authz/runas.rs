//! `[auth.runas]`: an admin's script maps the GitLab user to a local (service) account.
//!
//! The contract (also in README.md, "Privilege boundary"):
//!
//! * run as jacamar-auth's own account, with `cwd /`, stdin `/dev/null`;
//! * argv: `<validation_script> <gitlab_login> <requested_account>`, the second argument
//!   being the value of the CI variable named by `user_variable`, or empty when the job
//!   requests none;
//! * environment: nothing inherited; `validation_env` items first (lowest priority), then
//!   `PATH`, `RUNAS_CURRENT_USER` (login), `RUNAS_TARGET_USER` (requested account, may be
//!   empty), `RUNAS_USER_ID`, `RUNAS_JOB_ID`, `RUNAS_PROJECT_PATH`, `RUNAS_PIPELINE_SOURCE`
//!   (from the verified token);
//! * the script file must be a regular file owned by root or by jacamar-auth's account,
//!   not writable by group or others; with `sha256` its content is hashed from the opened
//!   file and exactly that file is executed (`/proc/self/fd/N`), so it cannot be swapped
//!   between the check and the exec;
//! * exit 0 and stdout a JSON object `{"username": "<local account>"}` maps the job to that
//!   account; any other exit status, output, or a run longer than [`TIMEOUT`] refuses the job
//!   (its process group is killed at the limit).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::jwt::{check_login, Identity};
use super::AuthError;
use crate::config::RunAs;

/// Longest a validation script may run.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of stdout kept from the script (the rest is read and dropped: an answer
/// that long is refused).
const MAX_OUT: usize = 64 * 1024;
/// Most bytes of stderr kept for the refusal's message (the rest is read and dropped).
const MAX_ERR: usize = 4096;

/// Run the validation script; the local account it maps the job to.
pub async fn validate(
    runas: &RunAs,
    id: &Identity,
    job_env: &BTreeMap<String, String>,
) -> Result<String, AuthError> {
    let fail = |why| AuthError::RunAs {
        script: runas.validation_script.clone(),
        why,
    };
    let file = open_checked(runas).map_err(fail)?;
    let requested = runas
        .user_variable
        .as_ref()
        .and_then(|v| job_env.get(&format!("CUSTOM_ENV_{v}")))
        .cloned()
        .unwrap_or_default();
    let cmd = command(runas, &file, id, &requested);
    let answer = run_bounded(cmd).await.map_err(fail)?;
    drop(file);
    let stderr = String::from_utf8_lossy(&answer.stderr).trim().to_string();
    if !answer.status.success() {
        return Err(fail(RunAsProblem::Refused {
            login: id.login.clone(),
            requested,
            status: answer.status,
            stderr,
        }));
    }
    account_of(&answer).map_err(fail)
}

/// Why the validation script refused the job, or could not be asked (after the script's
/// path in [`AuthError::RunAs`]).
#[derive(Debug, thiserror::Error)]
pub enum RunAsProblem {
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    /// Its metadata, or its content for the SHA-256, could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("owned by uid {uid}, not by root or by jacamar-auth's account (uid {me})")]
    Owner { uid: u32, me: u32 },
    /// Its permission bits (`mode & 0o7777`).
    #[error("mode {0:o} lets group or others modify it")]
    Writable(u32),
    #[error("sha256 is {got}, the configuration expects {want}")]
    Sha256 { got: String, want: String },
    #[error("cannot run: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for its exit failed.
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    #[error("did not finish within {}s; the job is refused", TIMEOUT.as_secs())]
    Timeout,
    /// It exited non-zero: its status and the start of its stderr.
    #[error("refused {login} (requested {requested:?}): {status}{}", stderr_part(.stderr))]
    Refused {
        login: String,
        requested: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "exited 0 but printed more than {MAX_OUT} bytes on stdout, not the JSON object \
         {{\"username\": ...}}"
    )]
    TooLong,
    #[error("exited 0 but its output is not the JSON object {{\"username\": ...}}: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("exited 0 but its JSON has no \"username\": {0}")]
    NoUsername(serde_json::Value),
    #[error("mapped to {0:?}, which is not a valid account name")]
    BadName(String),
}

/// `, stderr: <text>` after a refusal, when the script said something there.
fn stderr_part(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(", stderr: {stderr}")
    }
}

/// Open the script and check it: a regular file, owned by root or by us, not writable by
/// group or others, with the configured SHA-256 (hashed from the opened file).
fn open_checked(runas: &RunAs) -> Result<std::fs::File, RunAsProblem> {
    let file = std::fs::File::open(&runas.validation_script).map_err(RunAsProblem::Open)?;
    let meta = file.metadata().map_err(RunAsProblem::Read)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(RunAsProblem::NotAFile);
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(RunAsProblem::Owner {
            uid: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(RunAsProblem::Writable(meta.mode() & 0o7777));
    }
    if let Some(want) = &runas.sha256 {
        let got = sha256_of(&file).map_err(RunAsProblem::Read)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(RunAsProblem::Sha256 {
                got,
                want: want.clone(),
            });
        }
    }
    Ok(file)
}

/// The SHA-256 of what `file` holds from its current offset, in lowercase hex.
fn sha256_of(mut file: &std::fs::File) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = [0u8; 8192];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The command that runs exactly the opened `file` (as `/proc/self/fd/N`), with the
/// contract's argv, environment, cwd and stdin, in a process group of its own.
fn command(
    runas: &RunAs,
    file: &std::fs::File,
    id: &Identity,
    requested: &str,
) -> tokio::process::Command {
    let fd = file.as_raw_fd();
    let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{fd}"));
    cmd.arg0(&runas.validation_script)
        .arg(&id.login)
        .arg(requested)
        .env_clear()
        .envs(runas.validation_env.iter().map(|(k, v)| (k, v)))
        .env("PATH", crate::jobenv::DEFAULT_PATH)
        .env("RUNAS_CURRENT_USER", &id.login)
        .env("RUNAS_TARGET_USER", requested)
        .env("RUNAS_USER_ID", &id.user_id)
        .env("RUNAS_JOB_ID", id.job_id.to_string())
        .env(
            "RUNAS_PROJECT_PATH",
            id.project_path.clone().unwrap_or_default(),
        )
        .env(
            "RUNAS_PIPELINE_SOURCE",
            id.pipeline_source.clone().unwrap_or_default(),
        )
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The kernel (and the script's interpreter) opens the script as /proc/self/fd/N.
    crate::sys::fd::keep_open_across_exec(cmd.as_std_mut(), fd);
    cmd
}

/// What the script said: its exit status, the first [`MAX_OUT`] bytes of stdout and the
/// first [`MAX_ERR`] of stderr, and whether stdout had more.
struct Answer {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stdout_cut: bool,
    stderr: Vec<u8>,
}

/// Run the script to its end within [`TIMEOUT`]. Both pipes are read to EOF (what is kept
/// is capped, the rest is read and dropped), so a chatty script never blocks on a full
/// pipe; at the limit its process group is killed.
async fn run_bounded(mut cmd: tokio::process::Command) -> Result<Answer, RunAsProblem> {
    let mut child = cmd.spawn().map_err(RunAsProblem::Spawn)?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let out = child.stdout.take();
    let err = child.stderr.take();
    let work = async {
        let ((stdout, stdout_cut), (stderr, _)) =
            tokio::join!(drain_capped(out, MAX_OUT), drain_capped(err, MAX_ERR));
        let status = child.wait().await;
        (status, stdout, stdout_cut, stderr)
    };
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok((status, stdout, stdout_cut, stderr)) => Ok(Answer {
            status: status.map_err(RunAsProblem::Wait)?,
            stdout,
            stdout_cut,
            stderr,
        }),
        Err(_) => {
            if let Some(p) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(RunAsProblem::Timeout)
        }
    }
}

/// Read `pipe` to EOF, keeping its first `cap` bytes; whether there was more. A read error
/// ends the reading (the script's exit status still decides).
async fn drain_capped<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    let Some(mut pipe) = pipe else {
        return (kept, cut);
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, cut),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
}

/// The account of a successful answer: stdout is the JSON object `{"username": "<name>"}`
/// with a valid account name.
fn account_of(answer: &Answer) -> Result<String, RunAsProblem> {
    if answer.stdout_cut {
        return Err(RunAsProblem::TooLong);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&answer.stdout).map_err(RunAsProblem::NotJson)?;
    let Some(name) = v
        .get("username")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
    else {
        return Err(RunAsProblem::NoUsername(v));
    };
    check_login(name).map_err(|_| RunAsProblem::BadName(name.to_string()))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn identity() -> Identity {
        Identity {
            login: "jrs_silent_a".into(),
            user_id: "7".into(),
            project_path: Some("g/p".into()),
            pipeline_source: Some("push".into()),
            job_id: 9,
        }
    }

    /// What [`validate`] answers for a validation script of `body` (bash), and how long
    /// the answer took.
    async fn answer_of(body: &str) -> (Result<String, AuthError>, std::time::Duration) {
        let (_dir, path) =
            crate::test_support::temp_file("validate.sh", format!("#!/bin/bash\n{body}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let r = RunAs {
            validation_script: path,
            user_variable: None,
            sha256: None,
            validation_env: Vec::new(),
        };
        let t0 = std::time::Instant::now();
        let got = validate(&r, &identity(), &BTreeMap::new()).await;
        (got, t0.elapsed())
    }

    #[tokio::test]
    async fn a_chatty_script_is_drained_and_its_answer_taken_at_once() {
        // 1 MiB on stderr, far more than a pipe holds, then the answer.
        let (got, took) =
            answer_of(r#"head -c 1048576 /dev/zero | tr '\0' x >&2; echo '{"username": "svc_a"}'"#)
                .await;
        assert_eq!(got.unwrap(), "svc_a");
        assert!(took < TIMEOUT / 2, "took {took:?}");
    }

    #[tokio::test]
    async fn too_much_stdout_is_refused_by_name_not_by_timeout() {
        let (got, _) =
            answer_of(r#"head -c 1048576 /dev/zero | tr '\0' ' '; echo '{"username": "svc_a"}'"#)
                .await;
        let e = got.unwrap_err().to_string();
        assert!(e.contains("more than 65536 bytes on stdout"), "{e}");
    }

    #[tokio::test]
    async fn a_refusal_carries_the_start_of_stderr() {
        let (got, _) = answer_of("echo \"no such project for $1\" >&2; exit 3").await;
        let e = got.unwrap_err().to_string();
        assert!(
            e.contains("refused jrs_silent_a") && e.contains("no such project for jrs_silent_a"),
            "{e}"
        );
    }
}
