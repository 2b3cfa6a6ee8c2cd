//! A user stage in the job's image with Charliecloud (see [`crate::container::charliecloud`]):
//! `ch-image pull` (the job's registry credential in its environment), `ch-convert` to a
//! fresh directory image, then `ch-run` of the runner's script, supervised exactly as the
//! shell executor's bash: ch-run execs the script's bash in the group we signal (no daemon,
//! no pid namespace), so the runner's TERM reaches the script's body and its trap, and the
//! kill_timeout SIGKILL and the sweep reach everything the job started.

use std::os::fd::OwnedFd;
use std::process::Stdio;

use super::contained::{mask, node_fault, Contained};
use super::user::Watch;
use super::{group_of, StageError};
use crate::container::charliecloud::{self, Charliecloud, RunSpec};
use crate::container::{classify, ContainerError, Image};
use crate::protocol::Status;
use crate::supervisor::{Exit, GroupTerminator, OsSignals, Policy, Reason, Request};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Run the stage in `image` with Charliecloud. The job's faults (a refused token, an image
/// that does not exist) are build failures said in the job log; the node's (the tools, TLS
/// trust, ch-convert) system failures naming the key.
pub(super) async fn run(
    c: &Contained<'_>,
    image: &Image,
    control: OwnedFd,
) -> Result<Status, StageError> {
    let h = c.h;
    let ch = Charliecloud::new(&c.config.general, h.account.uid, h.job.job_id, &h.env)
        .map_err(node_fault)?;
    if let Some(b) = c.binds.iter().find(|b| !charliecloud::bind_ok(b)) {
        return Err(node_fault(ContainerError::Tool(format!(
            "the job's directory {} holds a ':', which ch-run -b cannot bind; choose a data_dir (or builds dir) without one",
            b.display()
        ))));
    }
    ch.ensure_state().map_err(node_fault)?;
    eprintln!(
        "jacamar: running {} in image {} with Charliecloud (ch-run), as {}",
        c.stage, image.name, h.account.name
    );
    if !image.entrypoint.is_empty() {
        eprintln!("jacamar: WARNING: the image's entrypoint is not used with Charliecloud: ch-run runs the job's script directly");
    }
    let signals = OsSignals::install()
        .map_err(|e| StageError::Internal(format!("failed to install signal handlers: {e}")))?;
    let mut watch = Watch::listen(control, signals)?;
    if let Some(st) = pull(c, &ch, image, &mut watch).await? {
        return Ok(st);
    }
    if let Some(st) = convert(&ch, image, &mut watch).await? {
        return Ok(st);
    }
    let st = start(c, &ch, watch).await;
    let _ = std::fs::remove_file(ch.state_dir().join("env"));
    st
}

/// `ch-image pull`. `Some(status)`: the stage ends here (the job's fault, or stopped); an
/// `Err` is the node's.
async fn pull(
    c: &Contained<'_>,
    ch: &Charliecloud,
    image: &Image,
    watch: &mut Watch,
) -> Result<Option<Status>, StageError> {
    let h = c.h;
    let mut warn = |m: &str| eprintln!("{m}");
    let creds = crate::container::checked_credentials(&h.registry_credentials, &mut warn);
    let cred = charliecloud::credential_for(&creds, image.registry());
    let bundle = ch.ca_bundle(image.registry()).map_err(node_fault)?;
    let out = step(ch.pull_command(image, cred, bundle.as_deref()), watch).await;
    let out = match out {
        Ok(Stepped::Done(out)) => out,
        Ok(Stepped::Stopped(reason)) => return Ok(Some(stopped(reason, "ch-image pulled"))),
        Err(source) => {
            return Err(node_fault(ContainerError::Spawn {
                program: ch.ch_image().display().to_string(),
                source,
            }))
        }
    };
    if out.status.success() {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = classify::classify_ch_image(&stderr, cred.is_some());
    let detail = mask(&classify::last_ch_error_line(&stderr), &creds);
    if failure == classify::Failure::Other {
        return Err(node_fault(ContainerError::Tool(format!(
            "{} could not pull image {}: {}; check that ch-image runs for account {} (the python3 first on its PATH needs the requests and lark modules) and {} names a working Charliecloud",
            ch.ch_image().display(),
            image.name,
            crate::text::sanitize(&detail),
            h.account.name,
            charliecloud::APPLICATION_PATH_KEY,
        ))));
    }
    let message = classify::message(
        failure,
        image,
        &h.job.project_path,
        &h.account.name,
        &detail,
    );
    if failure.is_the_jobs() {
        eprintln!("{message}");
        return Ok(Some(Status::BuildFailure {
            exit_code: 1,
            signal: None,
            stopped: None,
        }));
    }
    Err(node_fault(ContainerError::Tool(message)))
}

/// `ch-convert` of the pulled image into a fresh directory image.
async fn convert(
    ch: &Charliecloud,
    image: &Image,
    watch: &mut Watch,
) -> Result<Option<Status>, StageError> {
    ch.remove_image().map_err(node_fault)?;
    match step(ch.convert_command(image), watch).await {
        Ok(Stepped::Done(out)) if out.status.success() => Ok(None),
        Ok(Stepped::Done(out)) => Err(node_fault(ContainerError::Tool(format!(
            "ch-convert could not make a directory image of {} in {}: {}",
            image.name,
            ch.image_dir().display(),
            crate::text::sanitize(&classify::last_ch_error_line(&String::from_utf8_lossy(
                &out.stderr
            )))
        )))),
        Ok(Stepped::Stopped(reason)) => Ok(Some(stopped(reason, "ch-convert unpacked"))),
        Err(source) => Err(node_fault(ContainerError::Spawn {
            program: "ch-convert".into(),
            source,
        })),
    }
}

fn stopped(reason: Reason, doing: &str) -> Status {
    Status::of_exit(
        Exit::Signal(libc::SIGTERM),
        Some(format!("{reason}; while {doing} the image")),
    )
}

/// How a preparing command ended: on its own, or stopped by a request (its group killed).
enum Stepped {
    Done(std::process::Output),
    Stopped(Reason),
}

/// Run `cmd` (its own process group), or stop it at the first stop request: a pull of a
/// large image must not hold up a cancel.
async fn step(cmd: std::process::Command, watch: &mut Watch) -> std::io::Result<Stepped> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let output = child.wait_with_output();
    tokio::pin!(output);
    let reason = tokio::select! {
        out = &mut output => return out.map(Stepped::Done),
        req = watch.request() => match req {
            Some(Request::Terminate { reason, .. } | Request::Kill { reason }) => reason,
            None => return output.await.map(Stepped::Done),
        },
    };
    if let Some(pg) = pgid {
        crate::supervisor::group::signal_group(Pid::from_raw(pg), Signal::SIGKILL);
    }
    let _ = output.await;
    Ok(Stepped::Stopped(reason))
}

/// `ch-run` of the script, supervised as the shell executor's bash.
async fn start(
    c: &Contained<'_>,
    ch: &Charliecloud,
    mut watch: Watch,
) -> Result<Status, StageError> {
    let h = c.h;
    let img = ch.image_dir();
    // The job's home inside (the image is the job's own copy): HOME points there.
    let home_inside = img.join(h.account.home.strip_prefix("/").unwrap_or(&h.account.home));
    std::fs::create_dir_all(&home_inside).map_err(|source| {
        node_fault(ContainerError::Write {
            path: home_inside.clone(),
            source,
        })
    })?;
    let (env_text, left_out) = crate::container::podman::env_file(&h.env, &h.account.home);
    for k in left_out {
        eprintln!("jacamar: WARNING: {k} holds a newline and is not passed into the container");
    }
    let env_file = ch
        .write_private("env", env_text.as_bytes())
        .map_err(node_fault)?;
    let command = ["bash".to_string(), c.script.display().to_string()];
    let args = charliecloud::run_args(&RunSpec {
        image_dir: &img,
        binds: &c.binds,
        workdir: &c.workdir,
        env_file: &env_file,
        image_env: img.join("ch/environment").is_file(),
        command: &command,
    });
    let mut cmd = tokio::process::Command::from(ch.run_command(&args));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let program = ch.ch_run().display().to_string();
    let mut child = cmd.spawn().map_err(|source| StageError::Spawn {
        what: program.clone(),
        source,
    })?;
    let pgid = group_of(child.id(), &program)?;
    watch.relay(&mut child);
    let mut policy = Policy::new(c.config.general.kill_timeout);
    policy.deadline = h.deadline_unix_ms.map(super::user::instant_of_unix_ms);
    policy.sweep_group = Some(pgid);
    let mut term = GroupTerminator { pgid };
    let outcome = watch.supervise(&mut child, &mut term, &policy).await;
    if !outcome.sweep.survivors.is_empty() {
        tracing::warn!(
            "jacamar: processes {:?} of the job survived the sweep",
            outcome.sweep.survivors
        );
    }
    let stopped = outcome.stopped.map(|r| {
        if outcome.escalated && outcome.exit != Exit::Signal(libc::SIGKILL) {
            format!("{r}; the rest of the job was still running at kill_timeout and was killed with SIGKILL")
        } else {
            r.to_string()
        }
    });
    Ok(Status::of_exit(outcome.exit, stopped))
}
