//! The handoff: start `jacamar` as the job's account with the two pipes, hand it the stage,
//! supervise it (signals forwarded, the backstop), sweep what it leaves, and read its status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::end::{result_of, StageEnd};
use super::sweep::sweep_leftovers;
use crate::authz::Target;
use crate::config::{Config, Downscope};
use crate::job::JobContext;
use crate::jobenv;
use crate::privdrop::downscope::{self, CloneError, Pipes, Plan};
use crate::protocol::{self, ControlWriter, Handoff, Stage};
use crate::stages::{job_paths, StageError};
use crate::supervisor::cgroup::JobCgroup;
use crate::supervisor::{
    self, group, AnyChild, OsSignals, PidfdChild, Policy, Request, Terminator,
};

/// Where the `jacamar` binary is: `[auth] jacamar_path` (the binary, or a directory holding
/// it), else next to this executable.
pub fn jacamar_binary(config: &Config) -> Result<PathBuf, StageError> {
    if let Some(p) = &config.auth.jacamar_path {
        return Ok(if p.is_dir() {
            p.join("jacamar")
        } else {
            p.clone()
        });
    }
    let me = std::env::current_exe()
        .map_err(|e| StageError::Internal(format!("failed to find our own executable: {e}")))?;
    Ok(me.with_file_name("jacamar"))
}

/// The backstop: the job's maximum duration plus the grace, from now, as an instant and in
/// milliseconds since the epoch. `None` without a job timeout. Every addition is checked:
/// a sum that does not fit (impossible for a timeout within
/// [`crate::job::MAX_JOB_TIMEOUT`]) is an error naming `CI_JOB_TIMEOUT`, never a panic.
fn deadline(job: &JobContext) -> Result<Option<(tokio::time::Instant, u64)>, StageError> {
    let Some(timeout) = job.job_timeout else {
        return Ok(None);
    };
    let too_large = || {
        StageError::Internal(format!(
            "CUSTOM_ENV_CI_JOB_TIMEOUT ({} s) plus the backstop grace does not fit in a deadline",
            timeout.as_secs()
        ))
    };
    let max = timeout
        .checked_add(supervisor::backstop_grace())
        .ok_or_else(too_large)?;
    let unix_ms = SystemTime::now()
        .checked_add(max)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(too_large)?;
    let at = tokio::time::Instant::now()
        .checked_add(max)
        .ok_or_else(too_large)?;
    Ok(Some((at, unix_ms)))
}

/// Reaches `jacamar` through the control channel; SIGKILLs its group as a last resort when
/// we are allowed to signal it (same uid). A downscoped `jacamar` is signalled by us only
/// while it has not read its handoff: then it never started the stage (sudo, PAM or NSS
/// hanging), nothing of the job exists, and the control channel cannot reach it.
struct ControlTerminator {
    control: ControlWriter,
    pgid: Pid,
    can_signal: bool,
}

impl Terminator for ControlTerminator {
    fn terminate(&mut self, signal: Signal, reason: supervisor::Reason) {
        self.control.send(Request::Terminate { signal, reason });
    }

    fn kill(&mut self) {
        self.control.send(Request::Kill {
            reason: supervisor::Reason::Parent,
        });
        let pgid = self.pgid;
        if !self.control.delivered() {
            // EPERM (a caps-only account without CAP_KILL) leaves it to the runner.
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        } else if self.can_signal {
            // jacamar sweeps the job's group on KILL; give it a moment before we take it down.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            });
        }
    }
}

/// Start `jacamar` for `stage`, hand it the stage, supervise it, and read its status.
///
/// The handoff is written by a task of its own ([`ControlWriter`]) while the supervisor
/// runs: a `jacamar` that never reads it still gets our signals forwarded and, after
/// `kill_timeout`, killed.
pub(super) async fn hand_over(
    config: &Config,
    job: &JobContext,
    target: &Target,
    stage: Stage,
    signals: OsSignals,
) -> Result<StageEnd, StageError> {
    let exe = jacamar_binary(config)?;
    // Before anything is started: a deadline that cannot be computed fails the stage.
    let backstop = deadline(job)?;
    create_base_dir_as_root(config, job, target)?;
    let plan = downscope::plan(config, target)?;
    // Whatever the job leaves behind comes back to us, even if it kills jacamar itself.
    if !group::become_subreaper() {
        tracing::warn!(
            "jacamar-auth could not become a child subreaper; processes of the job that kill \
             jacamar may survive it"
        );
    }
    let handoff = handoff_of(config, job, target, stage, &exe, backstop.map(|b| b.1));
    let (ctl_r, ctl_w) = protocol::pipe_cloexec()?;
    let (st_r, st_w) = protocol::pipe_cloexec()?;
    protocol::set_inheritable(&ctl_r, true)?;
    protocol::set_inheritable(&st_w, true)?;
    // Writing starts now; it completes once jacamar reads (EPIPE if it never starts).
    let control = ControlWriter::spawn(ctl_w, &handoff)?;
    let cgroup = job_cgroup();
    let pipes = Pipes {
        control: protocol::raw(&ctl_r),
        status: protocol::raw(&st_w),
    };
    let spawned = spawn_jacamar(&plan, target, &exe, &handoff.stage, pipes, cgroup.as_ref());
    drop((ctl_r, st_w));
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(Err(re)) = cgroup.map(JobCgroup::remove) {
                tracing::warn!("jacamar-auth: failed to remove the job's cgroup: {re}");
            }
            return Err(e);
        }
    };
    let status_task = tokio::spawn(protocol::read_status(st_r));
    let mut term = ControlTerminator {
        control,
        pgid: crate::stages::group_of(child.id(), "jacamar")?,
        can_signal: target.downscope == Downscope::None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forwarder = signals.forward(tx);
    let mut policy = Policy::new(config.general.kill_timeout);
    policy.deadline = backstop.map(|b| b.0);
    let outcome = supervisor::supervise(&mut child, &mut term, &policy, &mut rx, vec![]).await;
    forwarder.abort();
    // jacamar is reaped (tokio owned it): now everything left of the job is ours to kill.
    sweep_leftovers(&plan, &target.account.name, &exe, cgroup).await;
    // Nothing (a failed read, a pipe still open 2 s after jacamar was reaped) reads as no
    // status: the stage is never a success without one.
    let status = tokio::time::timeout(Duration::from_secs(2), status_task)
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(Result::ok)
        .unwrap_or(protocol::Bounded::Complete(Vec::new()));
    result_of(&status, &outcome, term.control.delivery())
}

/// `root_dir_creation` with a downscoped job: root creates `<data_dir>/<user>` (see
/// `fs::create_base_dir_for_user` for what it checks first).
fn create_base_dir_as_root(
    config: &Config,
    job: &JobContext,
    target: &Target,
) -> Result<(), StageError> {
    if !config.auth.root_dir_creation || target.downscope == Downscope::None {
        return Ok(());
    }
    let paths = job_paths(config, job, &target.account)?;
    let policy = crate::fs::DirPolicy {
        uid: target.account.uid,
        group_permissions: config.general.group_permissions,
    };
    crate::fs::create_base_dir_for_user(&paths, &policy, target.account.gid)?;
    Ok(())
}

/// Everything `jacamar` gets for `stage`: the configuration, the job, the account, the
/// job's environment (allowlisted, plus git's askpass for the job's GitLab server unless
/// `unrestricted_cmd_line`), the backstop, and for a `run` stage (unless
/// `unrestricted_cmd_line`) the job token its prelude keeps off command lines.
fn handoff_of(
    config: &Config,
    job: &JobContext,
    target: &Target,
    stage: Stage,
    exe: &Path,
    deadline_unix_ms: Option<u64>,
) -> Handoff {
    let ours: Vec<(String, String)> = std::env::vars().collect();
    let mut env = jobenv::job_env(
        &target.account,
        ours.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut job_token = None;
    let ours: BTreeMap<String, String> = ours.into_iter().collect();
    let response = crate::job::JobResponse::from_env_map(&ours).ok();
    let (mut image, mut registry_credentials) = (None, Vec::new());
    if config.general.run_mechanism.is_some() && matches!(stage, Stage::Run { .. }) {
        if let Some(r) = &response {
            image = r.image.clone();
            registry_credentials = r.registry_credentials.clone();
        }
    }
    if !config.general.unrestricted_cmd_line {
        // Only the job's GitLab server gets the token from git's askpass.
        let origins =
            jobenv::askpass_origins(config.general.gitlab_server.as_deref(), response.as_ref());
        env.extend(jobenv::askpass_env(exe, &origins));
        if matches!(stage, Stage::Run { .. }) {
            job_token = super::job_token(response.as_ref(), &ours);
        }
    }
    Handoff {
        stage,
        config_toml: config.source.clone(),
        job: job.clone(),
        account: target.account.clone(),
        env,
        deadline_unix_ms,
        job_token,
        image,
        registry_credentials,
    }
}

/// Start `jacamar` as the job's account (through `plan`), its own process group's leader,
/// with the two pipes and the job's cgroup; an empty environment but `PATH` and our
/// diagnostics settings. For `config`, its stdout goes to our stderr: our stdout is the
/// runner's JSON. With a cgroup it is created inside it (`clone3`), unless the kernel
/// refuses that: then it moves itself there before exec (slower, see
/// `downscope::spawn_into_cgroup`).
fn spawn_jacamar(
    plan: &Plan,
    target: &Target,
    exe: &Path,
    stage: &Stage,
    pipes: Pipes,
    cgroup: Option<&JobCgroup>,
) -> Result<AnyChild, StageError> {
    let mut args = vec![stage.hook().to_string()];
    if let Stage::Run { name, .. } = stage {
        args.push(name.clone());
    }
    let env: Vec<(String, String)> = std::iter::once(("PATH", jobenv::DEFAULT_PATH.into()))
        .chain(crate::stages::diag::passed_env())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let stdout_to_stderr = matches!(stage, Stage::Config);
    let failed = |e: &std::io::Error| {
        StageError::Internal(downscope::spawn_error(plan, &target.account.name, exe, e))
    };
    if let Some(cg) = cgroup {
        let launch = downscope::Launch {
            user: &target.account.name,
            exe,
            pipes: Some(pipes),
            args: &args,
            env: &env,
            stdout_to_stderr,
        };
        match downscope::spawn_into_cgroup(plan, &launch, cg.dir_fd()) {
            Ok(s) => {
                return PidfdChild::new(s.pid, s.pidfd)
                    .map(AnyChild::Pidfd)
                    .map_err(|e| StageError::Internal(format!("failed to watch jacamar: {e}")))
            }
            Err(CloneError::Failed(e)) => return Err(failed(&e)),
            Err(CloneError::Unsupported(e)) => tracing::debug!(
                "clone3(CLONE_INTO_CGROUP) refused ({e}); jacamar joins the job's cgroup itself"
            ),
        }
    }
    let mut cmd = downscope::command(
        plan,
        &target.account.name,
        exe,
        Some(pipes),
        cgroup.map(JobCgroup::procs_fd),
        &args,
    );
    cmd.env_clear()
        .envs(env)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .process_group(0);
    if stdout_to_stderr {
        cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    }
    cmd.spawn().map(AnyChild::Tokio).map_err(|e| failed(&e))
}

/// The job's cgroup, when we can have one (root, cgroup v2 mounted); a failure is said in
/// the job log and leaves the pid sweep alone.
fn job_cgroup() -> Option<JobCgroup> {
    match JobCgroup::create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "jacamar-auth could not create the job's cgroup ({e}); leftovers are swept by \
                 pid only"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(timeout: Option<Duration>) -> JobContext {
        let env: BTreeMap<String, String> = [
            ("CUSTOM_ENV_CI_JOB_ID", "7"),
            ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "abc"),
            ("CUSTOM_ENV_CI_PROJECT_PATH", "g/p"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        // The timeout is set past the environment's bound (CI_JOB_TIMEOUT is checked).
        JobContext {
            job_timeout: timeout,
            ..JobContext::from_map(&env).unwrap()
        }
    }

    #[tokio::test]
    async fn the_backstop_is_the_jobs_timeout_plus_the_grace_or_an_error_never_a_panic() {
        assert!(deadline(&job(None)).unwrap().is_none());
        let timeout = Duration::from_secs(3600);
        let before = SystemTime::now();
        let (at, unix_ms) = deadline(&job(Some(timeout))).unwrap().unwrap();
        let max = timeout + supervisor::backstop_grace();
        let from = before.duration_since(UNIX_EPOCH).unwrap() + max;
        assert!(unix_ms >= from.as_millis() as u64, "{unix_ms} < {from:?}");
        assert!(at > tokio::time::Instant::now() + timeout);
        let err = deadline(&job(Some(Duration::MAX))).unwrap_err();
        assert!(
            err.to_string().contains("CUSTOM_ENV_CI_JOB_TIMEOUT"),
            "{err}"
        );
    }
}
