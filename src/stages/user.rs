//! `jacamar`: the side that runs as the job's user.
//!
//! Started by `jacamar-auth` with two inherited pipes (see [`crate::protocol`]). It reads
//! the handoff, does the stage (directories, script, shell), supervises the user's shell as
//! a child subreaper, and writes one status line back. It never trusts its own environment:
//! everything comes from the handoff.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::{group_of, job_paths, StageError};
use crate::batch::{self, BatchJob};
use crate::config::Config;
use crate::fs::{self, DirPolicy};
use crate::protocol::{self, Handoff, Stage, Status};
use crate::shell::{self, Profile};
use crate::supervisor::{self, group, Exit, GroupTerminator, OsSignals, Policy};

/// Run the stage handed over on `control`, report on `status`. Returns our exit code: the
/// code of the status written ([`protocol::exit_code_of`]; `jacamar-auth` checks the two
/// agree), [`protocol::EXIT_NOT_REPORTED`] when none could be. A failure is reported with
/// its category, so the job log names what failed.
pub fn main(control: OwnedFd, status: OwnedFd) -> i32 {
    // Our descriptors must not leak into the user's shell.
    let result = protocol::set_inheritable(&status, false)
        .map_err(StageError::from)
        .and_then(|()| run(control));
    let (st, category) = match result {
        Ok(st) => (st, None),
        Err(e) => (
            Status::SystemFailure {
                message: e.detail(),
            },
            Some(e.category()),
        ),
    };
    let mut status = File::from(status);
    match protocol::write_status(&mut status, &st, category) {
        Ok(()) => protocol::exit_code_of(&st),
        Err(e) => {
            tracing::error!("jacamar: failed to report the stage's status: {e}");
            protocol::EXIT_NOT_REPORTED
        }
    }
}

fn run(control: OwnedFd) -> Result<Status, StageError> {
    protocol::set_inheritable(&control, false)?;
    // Orphans of the job come back to us, so the sweep finds them.
    if !group::become_subreaper() {
        tracing::warn!(
            "jacamar could not become a child subreaper; escaped processes may survive the job"
        );
    }
    let mut control = File::from(control);
    let handoff = protocol::read_handoff(&mut control)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StageError::Internal(format!("failed to start the runtime: {e}")))?;
    rt.block_on(act(handoff, control.into()))
}

/// What every stage of `jacamar` works with: the handed-over stage, the configuration it
/// carried, and the job's paths and directory policy for the job's account.
struct Ctx<'a> {
    h: &'a Handoff,
    config: &'a Config,
    paths: &'a fs::JobPaths,
    policy: &'a DirPolicy,
}

impl Ctx<'_> {
    fn builds_plan(&self) -> Result<fs::builds::BuildsPlan, StageError> {
        Ok(fs::builds::BuildsPlan::new(
            &self.config.general,
            &self.h.job,
            self.paths,
        )?)
    }
}

async fn act(h: Handoff, control: OwnedFd) -> Result<Status, StageError> {
    let config = Config::from_str_named(&h.config_toml, "configuration from jacamar-auth")?;
    let paths = job_paths(&config, &h.job, &h.account)?;
    let policy = DirPolicy {
        uid: h.account.uid,
        group_permissions: config.general.group_permissions,
    };
    let cx = Ctx {
        h: &h,
        config: &config,
        paths: &paths,
        policy: &policy,
    };
    // Messages of the build-directory features go to the job log (stderr), never stdout.
    let mut notify = |m: &str| eprintln!("{m}");
    match &h.stage {
        Stage::Config => {
            let info = fs::builds::configure(
                &paths,
                &policy,
                &cx.builds_plan()?,
                &fs::builds::claim_settings(&config.general, &h.job),
                &mut notify,
            )?;
            Ok(Status::Configured {
                builds_dir: info.builds_dir,
                builds_dir_is_shared: info.builds_dir_is_shared,
            })
        }
        Stage::Prepare => {
            let plan = cx.builds_plan()?;
            fs::builds::prepare(
                paths.clone(),
                &policy,
                &plan,
                &fs::builds::claim_settings(&config.general, &h.job),
                &mut notify,
            )?;
            Ok(Status::Success)
        }
        Stage::Cleanup => cleanup(&cx).await,
        Stage::Run { name, script } => run_stage(&cx, name, script, control).await,
    }
}

/// `cleanup_exec`: cancel a batch executor's scheduler jobs still alive, remove the job's
/// files and release its build directory's claim.
async fn cleanup(cx: &Ctx<'_>) -> Result<Status, StageError> {
    let Ctx {
        h,
        config,
        paths,
        policy,
    } = *cx;
    if config.general.executor.is_batch() {
        // Cancel the scheduler jobs still queued or running before their record goes.
        cancel_batch_jobs(config, h, paths).await;
    }
    let plan = cx.builds_plan()?;
    // Before the claim goes: the runner's file-type variables of this job (left
    // behind when the runner's own cleanup_file_variables ran after an abort).
    // A refusal is said in the runner's log; the rest of the cleanup goes on.
    if let Err(e) = fs::builds::remove_runner_tmp(paths, policy, &plan, &h.job) {
        tracing::warn!("jacamar: cleanup left the runner's temporary project dir: {e}");
    }
    if config.general.run_mechanism.is_some() {
        // A batch job's registry credentials, should its script never have run.
        super::contained_batch::remove_credentials(paths, policy);
    }
    if config.general.run_mechanism == Some(crate::config::RunMechanism::Podman) {
        // Before the job's files go: the containers, the storage (subordinate ids' files
        // only podman can remove) and the pause process of the job's podman.
        if let Ok(pm) = crate::container::podman::Podman::new(
            &config.general,
            h.account.uid,
            h.job.job_id,
            &h.env,
        ) {
            for p in pm.cleanup() {
                eprintln!("jacamar: WARNING: cleanup: {}", crate::text::sanitize(&p));
            }
        }
    }
    if config.general.run_mechanism == Some(crate::config::RunMechanism::Charliecloud) {
        // The job's image storage and directory image (node-local, not under its files).
        for p in crate::container::charliecloud::cleanup(h.account.uid, h.job.job_id) {
            eprintln!("jacamar: WARNING: cleanup: {}", crate::text::sanitize(&p));
        }
    }
    fs::cleanup_job(paths, config.general.retain_logs)?;
    let report = fs::builds::cleanup(paths, policy, &plan, &config.general)?;
    if let (Some(slot), true) = (report.released, report.still_in_use) {
        eprintln!(
            "jacamar: build directory {} is still in use by a stage of job {} that has not ended; it frees up when that stage ends",
            fs::claim::slot_name(slot),
            h.job.job_id
        );
    }
    Ok(Status::Success)
}

/// A `run` stage: write its script as the user (behind the prelude), then run it in the
/// user's shell, submit it to the scheduler (a batch executor's submitted stage), or replay
/// or record the login shell's state (`JACAMAR_BASH_PROFILE_ONCE`).
async fn run_stage(
    cx: &Ctx<'_>,
    stage: &str,
    script: &str,
    control: OwnedFd,
) -> Result<Status, StageError> {
    let Ctx {
        h,
        config,
        paths,
        policy,
    } = *cx;
    let mut notify = |m: &str| eprintln!("{m}");
    // Held until the stage (and so the job's processes) is gone.
    let _claim = fs::builds::hold_claim(paths, policy, &cx.builds_plan()?, &mut notify)?;
    // The runner's own stages get the prelude that keeps the job token off their
    // command lines; the script itself is written as the runner wrote it.
    let token = h
        .job_token
        .as_deref()
        .filter(|_| !config.general.unrestricted_cmd_line);
    let text = super::prelude::stage_script(stage, token, script);
    let path = fs::write_script(paths, policy, stage, &text)?;
    let search_path = crate::jobenv::search_path(&h.env);
    let profile = Profile::from_flags(h.job.no_bash_profile, h.job.etc_profile_only);
    let submitted = config.general.executor.is_batch() && crate::batch::is_submitted_stage(stage);
    let cmd = shell::command(
        config.general.shell_path.as_deref(),
        profile,
        &path,
        search_path,
    );
    if config.general.run_mechanism.is_some() && crate::container::is_user_stage(stage) {
        match crate::container::Image::for_job(&config.general, h.image.as_ref()) {
            Ok(Some(image)) => return in_image(cx, stage, &path, &image, submitted, control).await,
            Ok(None) => {}
            // An image name that cannot be used is the job's fault.
            Err(e) => {
                eprintln!("jacamar: {e}");
                return Ok(Status::BuildFailure {
                    exit_code: 1,
                    signal: None,
                    stopped: None,
                });
            }
        }
    }
    if !submitted && h.job.bash_profile_once && profile != Profile::None {
        return profile_once(config, h, paths, policy, profile, &path, control).await;
    }
    if submitted {
        let deadline = h.deadline_unix_ms.map(instant_of_unix_ms);
        let words: Vec<String> = std::iter::once(batch::path_arg(&cmd.program))
            .chain(cmd.args.iter().cloned())
            .map(|w| shell::sh_quote(&w))
            .collect();
        let st = run_batch(cx, stage, words.join(" "), control, deadline).await?;
        // What a batch job reports as a system failure is the scheduler's.
        return match st {
            Status::SystemFailure { message } => Err(StageError::Scheduler(message)),
            other => Ok(other),
        };
    }
    let launch = Launch {
        env: h.env.clone(),
        cwd: h.account.workdir(),
        state: None,
    };
    run_shell(config, h, cmd, &launch, control).await
}

/// A user stage of a job with an image (the job's `image:`, else the mechanism's
/// `default_image`): run in it, see [`super::contained`]; a batch executor's `submitted`
/// stage inside the allocation, see [`super::contained_batch`].
async fn in_image(
    cx: &Ctx<'_>,
    stage: &str,
    script: &std::path::Path,
    image: &crate::container::Image,
    submitted: bool,
    control: OwnedFd,
) -> Result<Status, StageError> {
    // The builds, cache and scripts directories (all below the base dir unless the
    // project chose its own builds dir) at the same paths inside.
    let mut binds = vec![cx.paths.base_dir().to_path_buf()];
    if let fs::builds::Root::Custom(root) = &cx.builds_plan()?.root {
        binds.push(root.clone());
    }
    let c = super::contained::Contained {
        h: cx.h,
        config: cx.config,
        stage,
        script,
        workdir: cx.paths.base_dir().to_path_buf(),
        binds,
    };
    if !submitted {
        return super::contained::run(&c, image, control).await;
    }
    use super::contained_batch;
    let p = contained_batch::prepare(&c, cx.paths, cx.policy, image)?;
    let deadline = cx.h.deadline_unix_ms.map(instant_of_unix_ms);
    let st = match run_batch(cx, stage, p.code.clone(), control, deadline).await {
        Ok(st) => st,
        Err(e) => {
            // Not submitted: the credentials go now.
            contained_batch::remove_credentials(cx.paths, cx.policy);
            return Err(e);
        }
    };
    let st = contained_batch::finish(&c, cx.paths, cx.policy, image, p, st)?;
    // What a batch job reports as a system failure is the scheduler's.
    match st {
        Status::SystemFailure { message } => Err(StageError::Scheduler(message)),
        other => Ok(other),
    }
}

/// A `run` stage of a `JACAMAR_BASH_PROFILE_ONCE` job (see [`super::login_env`]): replay what
/// the job's first stage recorded, or (nothing usable recorded yet) run the login shell as
/// always and record it.
async fn profile_once(
    config: &Config,
    h: &Handoff,
    paths: &fs::JobPaths,
    policy: &DirPolicy,
    profile: Profile,
    script: &std::path::Path,
    control: OwnedFd,
) -> Result<Status, StageError> {
    use super::login_env;
    let shell_path = config.general.shell_path.as_deref();
    let search_path = crate::jobenv::search_path(&h.env);
    match login_env::load(paths, policy) {
        Ok(Some(state)) => {
            let cmd = shell::command(shell_path, Profile::None, script, search_path);
            let launch = Launch {
                env: state.apply_env(&h.env),
                cwd: state.cwd_or(h.account.workdir()),
                state: Some(state.process_state()).filter(|s| !s.is_empty()),
            };
            return run_shell(config, h, cmd, &launch, control).await;
        }
        Ok(None) => {}
        Err(e) => eprintln!(
            "jacamar: WARNING: JACAMAR_BASH_PROFILE_ONCE: {}; this stage reads the profile",
            crate::text::sanitize(&e.to_string())
        ),
    }
    let raw = login_env::raw_path(paths);
    let exe = std::env::current_exe()
        .map_err(|e| StageError::Internal(format!("failed to find our own executable: {e}")))?;
    let capture = shell::Capture {
        jacamar: &exe,
        output: &raw,
    };
    let cmd = shell::command_capturing(shell_path, profile, script, search_path, Some(&capture));
    let launch = Launch {
        env: h.env.clone(),
        cwd: h.account.workdir(),
        state: None,
    };
    let status = run_shell(config, h, cmd, &launch, control).await;
    if let Err(e) = login_env::finish(paths, policy, &h.env) {
        eprintln!(
            "jacamar: WARNING: JACAMAR_BASH_PROFILE_ONCE: {}; the next stage reads the profile",
            crate::text::sanitize(&e.to_string())
        );
    }
    status
}

/// How the stage's shell is started: its whole environment, working directory, and what
/// its process must set before exec (a replayed login state).
struct Launch {
    env: Vec<(String, String)>,
    cwd: std::path::PathBuf,
    state: Option<super::login_env::ProcessState>,
}

async fn run_shell(
    config: &Config,
    h: &Handoff,
    cmd: shell::ShellCommand,
    launch: &Launch,
    control: OwnedFd,
) -> Result<Status, StageError> {
    let signals = OsSignals::install()
        .map_err(|e| StageError::Internal(format!("failed to install signal handlers: {e}")))?;
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(state) = launch.state.clone() {
        state.apply_before_exec(command.as_std_mut());
    }
    let mut child = command.spawn().map_err(|source| StageError::Spawn {
        what: cmd.program.display().to_string(),
        source,
    })?;
    let pgid = group_of(child.id(), &cmd.program.display().to_string())?;
    let mut watch = Watch::start(&mut child, control, signals)?;

    let outcome = watch
        .supervise_group(
            &mut child,
            pgid,
            config.general.kill_timeout,
            h.deadline_unix_ms,
        )
        .await;
    if outcome.output_leaked {
        tracing::warn!("jacamar: a process of the job kept the output open after it ended");
    }
    Ok(status_of_group(&outcome))
}

/// The status of a stage whose process group was supervised (the shell executor's bash,
/// Charliecloud's ch-run): its exit, and the stop that ended it. When the script's shell
/// ended of the stop's signal but some of its processes (the body's subshell running a
/// trap, a child ignoring TERM) did not, the reason says they were killed at kill_timeout.
pub(super) fn status_of_group(outcome: &supervisor::ChildEnd) -> Status {
    let stopped = outcome.stopped.map(|r| {
        if outcome.escalated && outcome.exit != Exit::Signal(libc::SIGKILL) {
            format!("{r}; the rest of the job was still running at kill_timeout and was killed with SIGKILL")
        } else {
            r.to_string()
        }
    });
    Status::of_exit(outcome.exit, stopped)
}

/// What a supervised stage child is watched with: its output relayed to ours, and the
/// requests (the control pipe's lines, our own signals) its supervision reads.
pub(super) struct Watch {
    relays: Vec<tokio::task::JoinHandle<u64>>,
    rx: mpsc::UnboundedReceiver<supervisor::Request>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Watch {
    /// Relay `child`'s piped stdout and stderr, read `control` and forward `signals`.
    pub(super) fn start(
        child: &mut tokio::process::Child,
        control: OwnedFd,
        signals: OsSignals,
    ) -> Result<Watch, StageError> {
        let mut w = Watch::listen(control, signals)?;
        w.relay(child);
        Ok(w)
    }

    /// Read `control` and forward `signals` (no child yet).
    pub(super) fn listen(control: OwnedFd, signals: OsSignals) -> Result<Watch, StageError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctl_task = protocol::control_requests(control, tx.clone()).map_err(|e| {
            StageError::Internal(format!("failed to read the control channel: {e}"))
        })?;
        let sig_task = signals.forward(tx);
        Ok(Watch {
            relays: Vec::new(),
            rx,
            tasks: [ctl_task, sig_task],
        })
    }

    /// Relay `child`'s piped stdout and stderr to ours.
    pub(super) fn relay(&mut self, child: &mut tokio::process::Child) {
        if let Some(out) = child.stdout.take() {
            self.relays
                .push(supervisor::relay::spawn_relay(out, tokio::io::stdout()));
        }
        if let Some(err) = child.stderr.take() {
            self.relays
                .push(supervisor::relay::spawn_relay(err, tokio::io::stderr()));
        }
    }

    /// The next stop request (`None`: none can come any more).
    pub(super) async fn request(&mut self) -> Option<supervisor::Request> {
        self.rx.recv().await
    }

    /// Supervise `child`, the leader of the job's process group `pgid` (the shell
    /// executor's bash, Charliecloud's ch-run): a stop signals the group, kill_timeout
    /// (and the job's deadline, unix ms) kills it, and its processes are swept at the end
    /// (survivors are logged).
    pub(super) async fn supervise_group(
        &mut self,
        child: &mut tokio::process::Child,
        pgid: nix::unistd::Pid,
        kill_timeout: std::time::Duration,
        deadline_unix_ms: Option<u64>,
    ) -> supervisor::ChildEnd {
        let mut policy = Policy::new(kill_timeout);
        policy.deadline = deadline_unix_ms.map(instant_of_unix_ms);
        policy.sweep_group = Some(pgid);
        let mut term = GroupTerminator { pgid };
        let outcome = self.supervise(child, &mut term, &policy).await;
        if !outcome.sweep.survivors.is_empty() {
            tracing::warn!(
                "jacamar: processes {:?} of the job survived the sweep",
                outcome.sweep.survivors
            );
        }
        outcome
    }

    /// Supervise `child` under `policy` until it and its output are done.
    pub(super) async fn supervise(
        &mut self,
        child: &mut tokio::process::Child,
        term: &mut dyn supervisor::Terminator,
        policy: &Policy,
    ) -> supervisor::ChildEnd {
        let relays = std::mem::take(&mut self.relays);
        let end = supervisor::supervise(child, term, policy, &mut self.rx, relays).await;
        for t in &self.tasks {
            t.abort();
        }
        end
    }
}

/// The batch `run` of a submitted stage (`stage`, run by the shell code `code`): write the
/// wrapper, take cancellation requests from the control pipe and our signals, and run the
/// batch job ([`BatchRun`]).
///
/// [`BatchRun`]: crate::batch::run::BatchRun
async fn run_batch(
    b: &Ctx<'_>,
    stage: &str,
    code: String,
    control: OwnedFd,
    deadline: Option<tokio::time::Instant>,
) -> Result<Status, StageError> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        StageError::Internal(format!("failed to {what}: {e}"))
    };
    let scheduler = batch::scheduler_for(b.config.general.executor, &b.config.batch)
        .map_err(|e| StageError::Internal(e.to_string()))?;
    let signals = OsSignals::install().map_err(|e| internal("install signal handlers", &e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctl_task = protocol::control_requests(control, tx.clone())
        .map_err(|e| internal("read the control channel", &e))?;
    let sig_task = signals.forward(tx);

    let scripts_dir = b.paths.scripts_dir();
    let wrapper = scheduler.wrapper_code(&batch::run::output_path(&scripts_dir, stage), &code);
    let name = format!("{}-batch", stage);
    let script = fs::write_script(b.paths, b.policy, &name, wrapper.as_bytes())?;
    let job = BatchJob {
        config: b.config,
        scheduler: scheduler.as_ref(),
        scripts_dir,
        stage,
        script,
        env: b.h.env.clone(),
        variables: &b.h.job.batch_variables,
        ci_job_id: b.h.job.job_id,
        workdir: b.h.account.workdir(),
        deadline,
        poller: batch::poller::Poller::shared(b.paths.base_dir()),
        base_dir: b.paths.base_dir().to_path_buf(),
        // The CI job's end as seen from this run call (it started no later than now).
        ci_end: b
            .h
            .job
            .job_timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t)),
    };
    let st = batch::run(job, &mut rx).await;
    ctl_task.abort();
    sig_task.abort();
    Ok(st)
}

/// The batch part of `cleanup`: cancel the scheduler jobs still queued or running before
/// their record goes. Problems are reported in the job log; the directory is removed
/// afterwards either way.
async fn cancel_batch_jobs(config: &Config, h: &Handoff, paths: &fs::JobPaths) {
    let scheduler = match batch::scheduler_for(config.general.executor, &config.batch) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jacamar: WARNING: {e}");
            return;
        }
    };
    let (env, workdir) = (h.env.clone(), h.account.workdir());
    let shared = batch::run::Shared {
        base_dir: paths.base_dir(),
        ci_job_id: h.job.job_id,
    };
    let problems = batch::cleanup_job(
        config,
        scheduler.as_ref(),
        &paths.scripts_dir(),
        shared,
        env,
        workdir,
    )
    .await;
    for p in problems {
        eprintln!("jacamar: WARNING: cleanup: {}", crate::text::sanitize(&p));
    }
}

/// A Unix time in milliseconds as a tokio instant (now, if it is already past).
pub(super) fn instant_of_unix_ms(ms: u64) -> tokio::time::Instant {
    let target = UNIX_EPOCH + Duration::from_millis(ms);
    let left = target
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}
