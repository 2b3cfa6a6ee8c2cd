//! A user stage in the job's image (see [`crate::container`]): `podman create` (the pull,
//! with the job's registry credentials in a 0600 auth file that goes right after), then
//! `podman start --attach` supervised as the shell executor supervises bash, the stop going
//! through podman ([`PodmanTerminator`]).
//!
//! Inside the container a small bash wrapper under podman's init runs the runner's script
//! in a process group of its own: podman delivers a stop signal to the container's first
//! process only (which forwards it to the wrapper), so the wrapper passes it on to the
//! script's group, as the shell executor's group signal reaches the script's body and its
//! trap; after a stop it waits for every process of the container (kill_timeout is the
//! supervisor's, then `podman rm -f`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::user::Watch;
use super::{group_of, StageError};
use crate::config::{Config, RunMechanism};
use crate::container::classify;
use crate::container::podman::{self, CreateSpec, Podman, PodmanTerminator};
use crate::container::{ContainerError, Image};
use crate::protocol::{Handoff, Status};
use crate::supervisor::{Exit, OsSignals, Policy, Request};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The wrapper the container runs (`bash -c WRAPPER jacamar-stage SCRIPT`). A `wait` cut
/// short by a trapped signal returns 128+n while the script runs on: the script's own
/// status is the one of a `wait` after it ended (127: already collected by the loop's).
pub(super) const WRAPPER: &str = r#"set -m
bash "$1" & c=$!
set +m
stopped=
for sig in TERM INT HUP; do
  trap "stopped=1; kill -s $sig -- -$c 2>/dev/null" $sig
done
s=0
while kill -0 "$c" 2>/dev/null; do wait "$c"; s=$?; done
wait "$c" 2>/dev/null; r=$?; [ "$r" = 127 ] || s=$r
if [ -n "$stopped" ]; then while kill -0 -1 2>/dev/null; do sleep 0.1; done; fi
exit "$s""#;

/// How long `podman wait` may take for a container that has ended.
const WAIT_BOUND: Duration = Duration::from_secs(10);

/// What the stage runs: the handoff, the configuration, the script written for it and the
/// directories bound into the container.
pub(super) struct Contained<'a> {
    pub h: &'a Handoff,
    pub config: &'a Config,
    pub stage: &'a str,
    pub script: &'a Path,
    pub binds: Vec<PathBuf>,
    pub workdir: PathBuf,
}

/// Run the stage in `image`. The job's own faults (an image that cannot be used, a registry
/// refusing the job token, an image that does not exist) are build failures said in the
/// job log; the node's (the tool, subordinate ids, TLS trust) are system failures, said in
/// the job log too (they name the key or the account, never a secret).
pub(super) async fn run(
    c: &Contained<'_>,
    image: &Image,
    control: OwnedFd,
) -> Result<Status, StageError> {
    if c.config.general.run_mechanism.is_none() {
        return Err(StageError::Internal("no run_mechanism for an image".into()));
    }
    // A batch executor's submitted stages start their image inside the allocation
    // (`super::contained_batch`); its other user stages (after_script) come here, on the
    // host, as a shell executor's.
    if c.config.general.run_mechanism == Some(RunMechanism::Charliecloud) {
        return super::contained_ch::run(c, image, control).await;
    }
    let h = c.h;
    let pm =
        Podman::new(&c.config.general, h.account.uid, h.job.job_id, &h.env).map_err(node_fault)?;
    pm.ensure_state().map_err(node_fault)?;
    let name = pm.container_name(c.stage);
    eprintln!(
        "jacamar: running {} in image {} with podman, rootless as {}",
        c.stage, image.name, h.account.name
    );
    let signals = OsSignals::install()
        .map_err(|e| StageError::Internal(format!("failed to install signal handlers: {e}")))?;
    let mut watch = Watch::listen(control, signals)?;
    if let Some(st) = create(c, &pm, image, &name, &mut watch).await? {
        remove(&pm, &name).await;
        return Ok(st);
    }
    let st = start(c, &pm, &name, watch).await;
    remove(&pm, &name).await;
    st
}

/// The container `name` removed (ended or killed); the job's podman state stays for the
/// next stage.
async fn remove(pm: &Podman, name: &str) {
    let st = tokio::process::Command::from(pm.command(&[
        "rm".into(),
        "--force".into(),
        "--time=0".into(),
        name.to_string(),
    ]))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .await;
    match st {
        Ok(st) if st.success() => {}
        Ok(st) => eprintln!(
            "jacamar: WARNING: podman rm --force {name} ended with {st}; the cleanup stage removes the job's containers"
        ),
        Err(e) => eprintln!(
            "jacamar: WARNING: podman rm --force {name} could not run ({e}); the cleanup stage removes the job's containers"
        ),
    }
}

/// Remove the job's private file `path` (credentials, environment) now that the tool has
/// read it; a failure other than "already gone" is said in the job log (the file stays
/// 0600 in the job's private state, which the cleanup stage removes).
pub(super) fn remove_private(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!(
            "jacamar: WARNING: failed to remove {}: {e}; the cleanup stage removes it",
            path.display()
        ),
    }
}

/// Say `e` in the job log and make it the stage's system failure.
pub(super) fn node_fault(e: ContainerError) -> StageError {
    eprintln!("jacamar: ERROR: {e}");
    StageError::Container(e)
}

/// `podman create` (it pulls the image). `Some(status)`: the stage ends here with the job's
/// fault; an `Err` is the node's.
async fn create(
    c: &Contained<'_>,
    pm: &Podman,
    image: &Image,
    name: &str,
    watch: &mut Watch,
) -> Result<Option<Status>, StageError> {
    let h = c.h;
    let mut warn = |m: &str| eprintln!("{m}");
    let creds = crate::container::checked_credentials(&h.registry_credentials, &mut warn);
    let auth_file = if creds.is_empty() {
        None
    } else {
        Some(
            pm.write_private("auth.json", podman::auth_json(&creds).as_bytes())
                .map_err(node_fault)?,
        )
    };
    let (env_text, left_out) = podman::env_file(&h.env, &h.account.home);
    for k in left_out {
        eprintln!("jacamar: WARNING: {k} holds a newline and is not passed into the container");
    }
    let env_file = pm
        .write_private("env", env_text.as_bytes())
        .map_err(node_fault)?;
    let script = c.script.to_path_buf();
    let spec = CreateSpec {
        name,
        image,
        binds: &c.binds,
        workdir: &c.workdir,
        home: &h.account.home,
        env_file: &env_file,
        auth_file: auth_file.as_deref(),
        custom_options: &c.config.general.podman.custom_options,
        // bash runs the wrapper under podman's init (see the module's doc).
        command: &[
            "bash".to_string(),
            "-c".into(),
            WRAPPER.into(),
            "jacamar-stage".into(),
            script.display().to_string(),
        ],
    };
    let args = podman::create_args(&spec);
    let out = stoppable(pm.command(&args), watch, "podman pulled").await;
    // The credentials are needed for the pull only.
    if let Some(f) = &auth_file {
        remove_private(f);
    }
    remove_private(&env_file);
    let out = match out? {
        Stepped::Done(out) => out,
        Stepped::Stopped(st) => return Ok(Some(st)),
    };
    if out.status.success() {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = classify::classify(&stderr);
    let detail = mask(&classify::last_error_line(&stderr), &creds);
    pull_failed(c, image, failure, &detail).map(Some)
}

/// Start `cmd`, the stage's process (`podman start --attach`, `ch-run`), leading a process
/// group of its own, its output relayed to the job log by `watch`.
pub(super) fn spawn_relayed(
    cmd: std::process::Command,
    watch: &mut Watch,
) -> Result<(tokio::process::Child, Pid), StageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| StageError::Spawn {
        what: program.clone(),
        source,
    })?;
    let pgid = group_of(child.id(), &program)?;
    watch.relay(&mut child);
    Ok((child, pgid))
}

/// The end of a stage whose image could not be pulled (`failure`, with `detail`: the
/// tool's error line, credentials masked): the job's fault (a refused token, an image that
/// does not exist) is a build failure said in the job log, the node's a system failure.
pub(super) fn pull_failed(
    c: &Contained<'_>,
    image: &Image,
    failure: classify::Failure,
    detail: &str,
) -> Result<Status, StageError> {
    let h = c.h;
    let message = classify::message(failure, image, &h.job.project_path, &h.account.name, detail);
    if failure.is_the_jobs() {
        eprintln!("{message}");
        return Ok(Status::BuildFailure {
            exit_code: 1,
            signal: None,
            stopped: None,
        });
    }
    Err(node_fault(ContainerError::Tool(message)))
}

/// How a command preparing the image ended: on its own, or stopped by a request (its
/// group killed; the stage's status says while `doing` what).
pub(super) enum Stepped {
    Done(std::process::Output),
    Stopped(Status),
}

/// Run `cmd` (its own process group; the pull of `podman create`, ch-image, ch-convert),
/// or stop it at the first stop request: a pull of a large image must not hold up a cancel.
/// `doing` says what it does to the image ("podman pulled"). A command that cannot be
/// started is the node's fault.
pub(super) async fn stoppable(
    cmd: std::process::Command,
    watch: &mut Watch,
    doing: &str,
) -> Result<Stepped, StageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let spawn_failed = |source| {
        node_fault(ContainerError::Spawn {
            program: program.clone(),
            source,
        })
    };
    let child = cmd.spawn().map_err(spawn_failed)?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let output = child.wait_with_output();
    tokio::pin!(output);
    let reason = tokio::select! {
        out = &mut output => return out.map(Stepped::Done).map_err(spawn_failed),
        req = watch.request() => match req {
            Some(Request::Terminate { reason, .. } | Request::Kill { reason }) => reason,
            // No stop can come any more: wait for the pull.
            None => return output.await.map(Stepped::Done).map_err(spawn_failed),
        },
    };
    if let Some(pg) = pgid {
        crate::supervisor::group::signal_group(Pid::from_raw(pg), Signal::SIGKILL);
    }
    // Its group is killed: the output is not wanted, only the reaping.
    let _ = output.await;
    Ok(Stepped::Stopped(Status::of_exit(
        Exit::Signal(libc::SIGTERM),
        Some(format!("{reason}; while {doing} the image")),
    )))
}

/// `text` with every credential's password (and its base64 form) masked: podman never
/// prints them, this holds should a future version quote a request.
pub(super) fn mask(text: &str, creds: &[crate::job::RegistryCredential]) -> String {
    use base64::Engine;
    let mut t = text.to_string();
    for c in creds.iter().filter(|c| !c.password.is_empty()) {
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        t = t.replace(&b64, "[MASKED]").replace(&c.password, "[MASKED]");
    }
    t
}

/// `podman start --attach`, supervised; the exit code from `podman wait` once it ended.
async fn start(
    c: &Contained<'_>,
    pm: &Podman,
    name: &str,
    mut watch: Watch,
) -> Result<Status, StageError> {
    let start = pm.command(&["start".into(), "--attach".into(), name.to_string()]);
    let (mut child, pgid) = spawn_relayed(start, &mut watch)?;
    let mut policy = Policy::new(c.config.general.kill_timeout);
    policy.deadline = c.h.deadline_unix_ms.map(super::user::instant_of_unix_ms);
    // No sweep of our descendants: podman's pause process and conmon become ours (we are
    // a subreaper) and outlive `podman start` by design; a stop would wait for them until
    // kill_timeout. The wrapper inside waits for the container's processes after a stop,
    // so `podman start` ends only when they have; the rest goes with `podman rm` below,
    // the job cgroup's sweep and the cleanup stage.
    policy.sweep_group = None;
    let mut term = PodmanTerminator {
        podman: pm.clone(),
        name: name.to_string(),
        pgid,
    };
    let outcome = watch.supervise(&mut child, &mut term, &policy).await;
    let mut exit = outcome.exit;
    if !outcome.escalated {
        if let Some(code) = wait_code(pm, name).await {
            exit = Exit::Code(code);
        }
    }
    let stopped = outcome.stopped.map(|r| {
        if outcome.escalated {
            format!("{r}; the container was still running at kill_timeout and was removed with podman rm --force")
        } else {
            r.to_string()
        }
    });
    Ok(Status::of_exit(exit, stopped))
}

/// The container's exit code from `podman wait` (bounded: it has ended by now).
async fn wait_code(pm: &Podman, name: &str) -> Option<i32> {
    let mut cmd = tokio::process::Command::from(pm.command(&["wait".into(), name.to_string()]));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT_BOUND, cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_quoted_text_never_shows_a_credential() {
        use base64::Engine;
        let c = crate::job::RegistryCredential {
            url: "reg:1".into(),
            username: "gitlab-ci-token".into(),
            password: "glcbt-s3cret".into(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:glcbt-s3cret");
        let t = mask(&format!("Error: x glcbt-s3cret y {b64}"), &[c]);
        assert_eq!(t, "Error: x [MASKED] y [MASKED]");
    }
}
