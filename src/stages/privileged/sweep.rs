//! After `jacamar` has been reaped: what is left of the job (its cgroup's members, the
//! processes re-parented to us) is killed and reaped, by a `jacamar signal` helper as the
//! job's user where we may not signal them ourselves.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::jobenv;
use crate::privdrop::downscope::{self, Plan};
use crate::supervisor::cgroup::JobCgroup;
use crate::supervisor::group;

/// How long the sweep of leftovers may take before survivors are reported.
const LEFTOVER_BOUND: Duration = Duration::from_secs(10);

/// After `jacamar` has been reaped, kill and reap what is left of the job: the members of
/// its cgroup (atomically, `cgroup.kill`), then every process re-parented to us (we are a
/// child subreaper), by pid, until we have no child left. Normally `jacamar` has swept the
/// job itself and this finds nothing; it matters when the job killed `jacamar`.
pub(super) async fn sweep_leftovers(
    plan: &Plan,
    user: &str,
    exe: &Path,
    cgroup: Option<JobCgroup>,
) {
    // The usual end: nothing left (jacamar swept the job). Checked here, without the
    // blocking thread the sweep needs (starting one costs more than the whole check).
    let cgroup = match cgroup {
        Some(cg) if !group::has_children() && cg.populated().is_ok_and(|p| !p) => {
            if let Err(e) = cg.remove() {
                tracing::warn!("jacamar-auth: failed to remove the job's cgroup: {e}");
            }
            return;
        }
        None if !group::has_children() => return,
        other => other,
    };
    let (plan, user, exe) = (plan.clone(), user.to_string(), exe.to_path_buf());
    let swept = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        if let Some(cg) = &cgroup {
            match cg.kill_all(LEFTOVER_BOUND) {
                Ok(true) => {}
                Ok(false) => errors.push(format!(
                    "{} still has live processes after cgroup.kill",
                    cg.path().display()
                )),
                Err(e) => errors.push(format!("failed to kill the job's cgroup: {e}")),
            }
        }
        let mut kill = |pids: &[i32]| kill_leftovers(&plan, &user, &exe, pids);
        let mut report = group::sweep_children(&mut kill, LEFTOVER_BOUND);
        if let Some(cg) = cgroup {
            if let Err(e) = cg.remove() {
                errors.push(format!("failed to remove the job's cgroup: {e}"));
            }
        }
        report.errors.extend(errors);
        report
    })
    .await;
    match swept {
        Ok(mut report) => {
            report.errors.dedup();
            for e in &report.errors {
                tracing::warn!("jacamar-auth: {e}");
            }
            if !report.survivors.is_empty() {
                tracing::warn!(
                    "jacamar-auth: processes {:?} of the job survived the sweep",
                    report.survivors
                );
            }
        }
        Err(e) => tracing::warn!("jacamar-auth: the sweep of the job's leftovers failed: {e}"),
    }
}

/// SIGKILL `pids`, children of ours (so their pids cannot be reused before we reap them).
/// Those we may not signal (a caps-only service account holds no CAP_KILL) are killed by a
/// fresh `jacamar signal KILL <pid>...` started as the job's user through the same
/// downscoping (without the seccomp filter: it is our own binary).
fn kill_leftovers(plan: &Plan, user: &str, exe: &Path, pids: &[i32]) -> Result<(), KillError> {
    use nix::errno::Errno;
    let mut denied = Vec::new();
    for &pid in pids {
        match nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(Errno::EPERM) => denied.push(pid),
            Err(e) => return Err(KillError::Signal { pid, errno: e }),
        }
    }
    if denied.is_empty() {
        return Ok(());
    }
    let mut helper = plan.clone();
    helper.seccomp = None;
    let mut args = vec!["signal".to_string(), "KILL".to_string()];
    args.extend(denied.iter().map(i32::to_string));
    let mut cmd = downscope::command(&helper, user, exe, None, None, &args).into_std();
    cmd.env_clear()
        .env("PATH", jobenv::DEFAULT_PATH)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| KillError::Spawn {
        why: downscope::spawn_error(&helper, user, exe, &e),
        denied: denied.clone(),
    })?;
    // The helper runs as the job's user: read its stderr with a bound.
    let stderr = child.stderr.take().map(helper_stderr).unwrap_or_default();
    let status = child.wait().map_err(|source| KillError::Wait {
        denied: denied.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(KillError::Helper {
            denied,
            user: user.to_string(),
            status,
            stderr,
        })
    }
}

/// What [`kill_leftovers`] could not kill, and why.
#[derive(Debug, thiserror::Error)]
enum KillError {
    #[error("failed to SIGKILL process {pid}: {errno}")]
    Signal { pid: i32, errno: nix::errno::Errno },
    #[error("failed to start `jacamar signal` for {denied:?}: {why}")]
    Spawn { denied: Vec<i32>, why: String },
    #[error("failed to wait for `jacamar signal` for {denied:?}: {source}")]
    Wait {
        denied: Vec<i32>,
        source: std::io::Error,
    },
    #[error("`jacamar signal KILL {denied:?}` as {user} failed ({status}): {stderr}")]
    Helper {
        denied: Vec<i32>,
        user: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Most of a `jacamar signal` helper's stderr kept (one line per pid it could not signal).
const MAX_HELPER_STDERR: usize = 16 * 1024;

/// A helper's stderr, read up to [`MAX_HELPER_STDERR`] (the rest is cut, and our end closed
/// when we return: a helper that goes on writing gets EPIPE).
fn helper_stderr(pipe: std::process::ChildStderr) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let read = pipe
        .take(MAX_HELPER_STDERR as u64 + 1)
        .read_to_end(&mut buf);
    let cut = buf.len() > MAX_HELPER_STDERR;
    buf.truncate(MAX_HELPER_STDERR);
    let mut text = String::from_utf8_lossy(&buf).trim().to_string();
    if cut {
        text.push_str(" ... (cut)");
    }
    if let Err(e) = read {
        text.push_str(&format!(" (reading it failed: {e})"));
    }
    text
}
