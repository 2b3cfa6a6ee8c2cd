//! A batch executor's submitted stage in the job's image: the submitted script starts the
//! container on the compute node ([`crate::container::launcher`]). Here, before the
//! submission: the registry credentials to a 0600 auth file and the container's variables
//! to a 0600 env file, both in the job's scripts dir (the node reads them there; the
//! script removes them right after `podman create`). After the job: both removed again
//! (a job cancelled while queued never ran the script), and a failed `podman create` (the
//! pull) classified as on the host (`crate::container::classify`): the registry refusing
//! the job token or an image that does not exist is the job's build failure, said in the
//! job log with what to check; the node's faults are system failures.

use std::path::PathBuf;

use super::contained::{mask, node_fault, pull_failed, Contained, WRAPPER};
use super::StageError;
use crate::config::RunMechanism;
use crate::container::charliecloud;
use crate::container::launcher::{self, Launch};
use crate::container::launcher_ch::{self, ChLaunch};
use crate::container::podman::{self, CreateSpec, Podman};
use crate::container::{classify, ContainerError, Image};
use crate::fs::{self, DirPolicy, JobPaths};
use crate::protocol::Status;

/// The auth file's name in the scripts dir.
pub const AUTH_FILE: &str = "podman-auth.json";
/// The container's env file's name in the scripts dir.
const ENV_FILE: &str = "podman-env";
/// At most this much of a failed `podman create`'s stderr is read.
const MAX_ERROR_FILE: u64 = 64 * 1024;

/// Charliecloud's credential file's name in the scripts dir (username and password lines).
pub const CH_AUTH_FILE: &str = "ch-auth";
/// Charliecloud's env file's name in the scripts dir.
const CH_ENV_FILE: &str = "ch-env";

/// The error file of `stage` (a failed pull's stderr) in the scripts dir.
fn error_file(stage: &str, tool: &str) -> String {
    format!("{stage}.{tool}-error")
}

/// A submitted stage in an image, ready to submit: the launcher's shell code and what
/// [`finish`] needs.
pub(super) struct Prepared {
    /// The stage's shell code in the submitted script.
    pub code: String,
    creds: Vec<crate::job::RegistryCredential>,
    err_name: String,
    /// Whether the pull was Charliecloud's (`ch-image`'s texts), with a credential.
    ch: Option<bool>,
}

/// Prepare the submitted stage `c` in `image`: the auth and env files written, the
/// launcher rendered; `paths`/`policy` are the job's.
pub(super) fn prepare(
    c: &Contained<'_>,
    paths: &JobPaths,
    policy: &DirPolicy,
    image: &Image,
) -> Result<Prepared, StageError> {
    let (h, general) = (c.h, &c.config.general);
    match general.run_mechanism {
        Some(RunMechanism::Podman) => {}
        Some(RunMechanism::Charliecloud) => return prepare_ch(c, paths, policy, image),
        None => return Err(StageError::Internal("no run_mechanism for an image".into())),
    }
    let pm = Podman::on_node(general, h.account.uid, h.job.job_id);
    let name = pm.container_name(c.stage);
    let mut warn = |m: &str| eprintln!("{m}");
    let creds = crate::container::checked_credentials(&h.registry_credentials, &mut warn);
    let err_name = error_file(c.stage, "podman");
    fs::remove_job_file(paths, policy, &err_name)?;
    let mut remove: Vec<PathBuf> = Vec::new();
    let auth = if creds.is_empty() {
        fs::remove_job_file(paths, policy, AUTH_FILE)?;
        None
    } else {
        let p = fs::write_job_file(
            paths,
            policy,
            AUTH_FILE,
            podman::auth_json(&creds).as_bytes(),
        )?;
        remove.push(p.clone());
        Some(p)
    };
    let (env_text, left_out) = podman::env_file(&h.env, &h.account.home);
    for k in left_out {
        eprintln!("jacamar: WARNING: {k} holds a newline and is not passed into the container");
    }
    let env = fs::write_job_file(paths, policy, ENV_FILE, env_text.as_bytes())?;
    remove.push(env.clone());
    let mut options = launcher::scheduler_env_options();
    options.extend(general.podman.custom_options.iter().cloned());
    let command = [
        "bash".to_string(),
        "-c".into(),
        WRAPPER.into(),
        "jacamar-stage".into(),
        c.script.display().to_string(),
    ];
    let error_path = paths.scripts_dir().join(&err_name);
    let removes: Vec<&std::path::Path> = remove.iter().map(PathBuf::as_path).collect();
    let code = launcher::launcher(&Launch {
        podman: &pm,
        create: CreateSpec {
            name: &name,
            image,
            binds: &c.binds,
            workdir: &c.workdir,
            home: &h.account.home,
            env_file: &env,
            auth_file: auth.as_deref(),
            custom_options: &options,
            command: &command,
        },
        remove_after_create: &removes,
        error_file: &error_path,
        kill_timeout: general.kill_timeout,
    });
    eprintln!(
        "jacamar: {} runs in image {} with podman inside the {} allocation, rootless as {}",
        c.stage,
        image.name,
        general.executor.as_str(),
        h.account.name
    );
    Ok(Prepared {
        code,
        creds,
        err_name,
        ch: None,
    })
}

/// [`prepare`] for Charliecloud ([`crate::container::launcher_ch`]): the credential for the
/// image's registry (username and password lines) and the container's variables to 0600
/// files in the scripts dir, the launcher rendered.
fn prepare_ch(
    c: &Contained<'_>,
    paths: &JobPaths,
    policy: &DirPolicy,
    image: &Image,
) -> Result<Prepared, StageError> {
    let (h, general) = (c.h, &c.config.general);
    if let Some(b) = c.binds.iter().find(|b| !charliecloud::bind_ok(b)) {
        return Err(node_fault(ContainerError::Tool(format!(
            "the job's directory {} holds a ':', which ch-run -b cannot bind; choose a data_dir (or builds dir) without one",
            b.display()
        ))));
    }
    let mut warn = |m: &str| eprintln!("{m}");
    let creds = crate::container::checked_credentials(&h.registry_credentials, &mut warn);
    let err_name = error_file(c.stage, "ch");
    fs::remove_job_file(paths, policy, &err_name)?;
    let text = charliecloud::credential_for(&creds, image.registry()).and_then(|cred| {
        let t = launcher_ch::auth_text(&cred.username, &cred.password);
        if t.is_none() {
            eprintln!(
                "jacamar: WARNING: the job's registry credential for {} holds a line break and is left out",
                crate::text::sanitize(&cred.url)
            );
        }
        t
    });
    let auth = match text {
        Some(t) => Some(fs::write_job_file(
            paths,
            policy,
            CH_AUTH_FILE,
            t.as_bytes(),
        )?),
        None => {
            fs::remove_job_file(paths, policy, CH_AUTH_FILE)?;
            None
        }
    };
    let (env_text, left_out) = podman::env_file(&h.env, &h.account.home);
    for k in left_out {
        eprintln!("jacamar: WARNING: {k} holds a newline and is not passed into the container");
    }
    let env = fs::write_job_file(paths, policy, CH_ENV_FILE, env_text.as_bytes())?;
    if !image.entrypoint.is_empty() {
        eprintln!("jacamar: WARNING: the image's entrypoint is not used with Charliecloud: ch-run runs the job's script directly");
    }
    let command = ["bash".to_string(), c.script.display().to_string()];
    let code = launcher_ch::launcher(&ChLaunch {
        general,
        uid: h.account.uid,
        job_id: h.job.job_id,
        image,
        auth_file: auth.as_deref(),
        env_file: &env,
        binds: &c.binds,
        workdir: &c.workdir,
        home: &h.account.home,
        command: &command,
        error_file: &paths.scripts_dir().join(&err_name),
    });
    eprintln!(
        "jacamar: {} runs in image {} with Charliecloud (ch-run) inside the {} allocation, as {}",
        c.stage,
        image.name,
        general.executor.as_str(),
        h.account.name
    );
    Ok(Prepared {
        code,
        creds,
        err_name,
        ch: Some(auth.is_some()),
    })
}

/// After the batch job of `p` ended with `st`: the auth and env files removed (a job
/// cancelled while queued never ran the script that removes them), and a failed
/// `podman create` classified (see the module's doc).
pub(super) fn finish(
    c: &Contained<'_>,
    paths: &JobPaths,
    policy: &DirPolicy,
    image: &Image,
    p: Prepared,
    st: Status,
) -> Result<Status, StageError> {
    remove_credentials(paths, policy);
    let stopped = matches!(
        st,
        Status::BuildFailure {
            stopped: Some(_),
            ..
        }
    );
    if !matches!(st, Status::BuildFailure { .. }) || stopped {
        return Ok(st);
    }
    let text = match fs::read_job_file(paths, policy, &p.err_name, MAX_ERROR_FILE) {
        Ok(Some(t)) if !t.is_empty() => String::from_utf8_lossy(&t).into_owned(),
        Ok(_) => return Ok(st),
        Err(e) => {
            eprintln!(
                "jacamar: WARNING: {}",
                crate::text::sanitize(&e.to_string())
            );
            return Ok(st);
        }
    };
    if let Err(e) = fs::remove_job_file(paths, policy, &p.err_name) {
        eprintln!(
            "jacamar: WARNING: {}",
            crate::text::sanitize(&e.to_string())
        );
    }
    let h = c.h;
    let (failure, detail) = match p.ch {
        Some(auth) => (
            classify::classify_ch_image(&text, auth),
            classify::last_ch_error_line(&text),
        ),
        None => (classify::classify(&text), classify::last_error_line(&text)),
    };
    let detail = mask(&detail, &p.creds);
    if p.ch.is_some() && failure == classify::Failure::Other {
        return Err(node_fault(ContainerError::Tool(format!(
            "Charliecloud could not run image {} on the compute node: {}; check that ch-image, ch-convert and ch-run run for account {} there (the python3 first on its PATH needs the requests and lark modules) and {} names a working Charliecloud",
            image.name,
            crate::text::sanitize(&detail),
            h.account.name,
            charliecloud::APPLICATION_PATH_KEY,
        ))));
    }
    pull_failed(c, image, failure, &detail)
}

/// The job's auth and env files removed (`cleanup` calls this too); a failure is said in
/// the job log.
pub(super) fn remove_credentials(paths: &JobPaths, policy: &DirPolicy) {
    for f in [AUTH_FILE, ENV_FILE, CH_AUTH_FILE, CH_ENV_FILE] {
        if let Err(e) = fs::remove_job_file(paths, policy, f) {
            eprintln!(
                "jacamar: WARNING: {}",
                crate::text::sanitize(&e.to_string())
            );
        }
    }
}
