//! A user stage in the job's image with Charliecloud (see [`crate::container::charliecloud`]):
//! `ch-image pull` (the job's registry credential in its environment), `ch-convert` to a
//! fresh directory image, then `ch-run` of the runner's script, supervised exactly as the
//! shell executor's bash: ch-run execs the script's bash in the group we signal (no daemon,
//! no pid namespace), so the runner's TERM reaches the script's body and its trap, and the
//! kill_timeout SIGKILL and the sweep reach everything the job started.

use std::os::fd::OwnedFd;

use super::contained::{
    mask, node_fault, pull_failed, spawn_relayed, stoppable, Contained, Stepped,
};
use super::user::Watch;
use super::StageError;
use crate::container::charliecloud::{self, Charliecloud, RunSpec};
use crate::container::{classify, ContainerError, Image};
use crate::protocol::Status;
use crate::supervisor::OsSignals;

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
    super::contained::remove_private(&ch.state_dir().join("env"));
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
    let pull = ch.pull_command(image, cred, bundle.as_deref());
    let out = match stoppable(pull, watch, "ch-image pulled").await? {
        Stepped::Done(out) => out,
        Stepped::Stopped(st) => return Ok(Some(st)),
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
    pull_failed(c, image, failure, &detail).map(Some)
}

/// `ch-convert` of the pulled image into a fresh directory image.
async fn convert(
    ch: &Charliecloud,
    image: &Image,
    watch: &mut Watch,
) -> Result<Option<Status>, StageError> {
    ch.remove_image().map_err(node_fault)?;
    match stoppable(ch.convert_command(image), watch, "ch-convert unpacked").await? {
        Stepped::Done(out) if out.status.success() => Ok(None),
        Stepped::Done(out) => Err(node_fault(ContainerError::Tool(format!(
            "ch-convert could not make a directory image of {} in {}: {}",
            image.name,
            ch.image_dir().display(),
            crate::text::sanitize(&classify::last_ch_error_line(&String::from_utf8_lossy(
                &out.stderr
            )))
        )))),
        Stepped::Stopped(st) => Ok(Some(st)),
    }
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
    let (mut child, pgid) = spawn_relayed(ch.run_command(&args), &mut watch)?;
    let outcome = watch
        .supervise_group(
            &mut child,
            pgid,
            c.config.general.kill_timeout,
            h.deadline_unix_ms,
        )
        .await;
    Ok(super::user::status_of_group(&outcome))
}
