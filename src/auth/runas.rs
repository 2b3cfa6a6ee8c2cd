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
/// Most bytes of stdout read from the script.
const MAX_OUT: usize = 64 * 1024;

/// Run the validation script; the local account it maps the job to.
pub async fn validate(
    runas: &RunAs,
    id: &Identity,
    job_env: &BTreeMap<String, String>,
) -> Result<String, AuthError> {
    let script = &runas.validation_script;
    let fail = |why: String| AuthError::RunAs(format!("{}: {why}", script.display()));
    let file = std::fs::File::open(script).map_err(|e| fail(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(fail(format!(
            "owned by uid {}, not by root or by jacamar-auth's account (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(format!(
            "mode {:o} lets group or others modify it",
            meta.mode() & 0o7777
        )));
    }
    if let Some(want) = &runas.sha256 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut f = &file;
        let mut buf = [0u8; 8192];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let got: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !got.eq_ignore_ascii_case(want) {
            return Err(fail(format!(
                "sha256 is {got}, the configuration expects {want}"
            )));
        }
    }
    let requested = runas
        .user_variable
        .as_ref()
        .and_then(|v| job_env.get(&format!("CUSTOM_ENV_{v}")))
        .cloned()
        .unwrap_or_default();

    let fd = file.as_raw_fd();
    let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{fd}"));
    cmd.arg0(script)
        .arg(&id.login)
        .arg(&requested)
        .env_clear()
        .envs(runas.validation_env.iter().map(|(k, v)| (k, v)))
        .env("PATH", super::env::DEFAULT_PATH)
        .env("RUNAS_CURRENT_USER", &id.login)
        .env("RUNAS_TARGET_USER", &requested)
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
    // SAFETY: fcntl is async-signal-safe; it only clears FD_CLOEXEC on the script's fd so
    // the kernel (and the script's interpreter) can open it as /proc/self/fd/N.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run: {e}")))?;
    let pgid = child.id().map(|p| p as i32);
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let (ro, re) = tokio::join!(
            async {
                if let Some(s) = out.as_mut() {
                    let _ = s.take(MAX_OUT as u64).read_to_end(&mut o).await;
                }
            },
            async {
                if let Some(s) = err.as_mut() {
                    let _ = s.take(4096).read_to_end(&mut e).await;
                }
            }
        );
        let _ = (ro, re);
        let status = child.wait().await;
        (status, o, e)
    };
    let (status, stdout, stderr) = match tokio::time::timeout(TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(p) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(fail(format!(
                "did not finish within {}s; the job is refused",
                TIMEOUT.as_secs()
            )));
        }
    };
    drop(file);
    let status = status.map_err(|e| fail(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    if !status.success() {
        return Err(fail(format!(
            "refused {} (requested {:?}): {status}{}",
            id.login,
            requested,
            if stderr.is_empty() {
                String::new()
            } else {
                format!(", stderr: {stderr}")
            }
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&stdout).map_err(|e| {
        fail(format!(
            "exited 0 but its output is not the JSON object {{\"username\": ...}}: {e}"
        ))
    })?;
    let name = v
        .get("username")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| fail(format!("exited 0 but its JSON has no \"username\": {v}")))?;
    check_login(name).map_err(|_| {
        fail(format!(
            "mapped to {name:?}, which is not a valid account name"
        ))
    })?;
    Ok(name.to_string())
}
