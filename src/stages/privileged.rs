//! `jacamar-auth`: the runner-facing, possibly privileged side of every stage.
//!
//! Read top to bottom, one stage is: load the configuration -> read the job -> authorize ->
//! (config: print JSON | prepare/run/cleanup: hand the stage to `jacamar` and supervise it)
//! -> map the result to the runner's exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::mpsc;

use super::{job_paths, StageError, CONFIG_ENV, CONFIG_PATH_ENV};
use crate::auth::audit::{self, Event, Level, Sink};
use crate::auth::downscope::{CloneError, Pipes, Plan};
use crate::auth::{self, obfuscate, Target};
use crate::config::{Config, Downscope};
use crate::fs::builds::{BuildsInfo, BuildsPlan};
use crate::job::{JobContext, RunnerEnv};
use crate::protocol::{self, ControlWriter, Handoff, Stage, Status, Verdict};
use crate::supervisor::cgroup::JobCgroup;
use crate::supervisor::{
    self, group, AnyChild, ChildEnd, OsSignals, PidfdChild, Policy, Request, Terminator,
};
use crate::text::sanitize;

/// Options of `jacamar-auth`.
#[derive(Debug, Clone)]
pub struct Options {
    pub unobfuscated: bool,
    pub configuration: Option<PathBuf>,
    /// The stage the runner called (a `run` stage with its script's path).
    pub stage: Stage<PathBuf>,
    /// `jacamar --no-auth`: no authorization, the job runs as our own account (see
    /// [`no_auth_problems`]).
    pub no_auth: bool,
}

/// What a stage amounted to, before it is mapped to an exit code.
#[derive(Debug)]
enum StageEnd {
    Success,
    BuildFailure {
        exit_code: i32,
        note: Option<String>,
    },
    /// `jacamar` decided the builds dir for config_exec.
    Configured(BuildsInfo),
}

/// Run one stage and return the process exit code for the runner.
pub fn main(opts: Options) -> i32 {
    main_with::<Verify>(opts)
}

/// [`main`] for `jacamar --no-auth` (`opts.no_auth` is set). A separate instance of the
/// stage without the authorization path, so that `jacamar` (this one's only caller) does not
/// carry the JWKS client, TLS and token verification: a smaller binary starts faster, and
/// `jacamar` starts in every stage.
pub fn main_no_auth(mut opts: Options) -> i32 {
    opts.no_auth = true;
    main_with::<NoAuth>(opts)
}

/// How a stage decides who runs the job: a type, not a flag, so that each binary holds
/// only the path it uses.
trait Authorizer {
    fn target<'a>(
        config: &'a Config,
        stage: &'a str,
        env: &'a BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Result<Target, auth::AuthError>> + 'a;
}

/// `jacamar-auth`: the id_token and the configured policy ([`auth::authorize`]).
struct Verify;

impl Authorizer for Verify {
    fn target<'a>(
        config: &'a Config,
        stage: &'a str,
        env: &'a BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Result<Target, auth::AuthError>> + 'a {
        auth::authorize(config, stage, env)
    }
}

/// `jacamar --no-auth`: this process's own account ([`auth::unauthorized`]).
struct NoAuth;

impl Authorizer for NoAuth {
    fn target<'a>(
        config: &'a Config,
        _stage: &'a str,
        env: &'a BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Result<Target, auth::AuthError>> + 'a {
        std::future::ready(auth::unauthorized(config, env))
    }
}

fn main_with<A: Authorizer>(opts: Options) -> i32 {
    let runner = RunnerEnv::from_env();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error encountered during job: failed to start the async runtime: {e}");
            return runner.system_failure_exit_code;
        }
    };
    let result = rt.block_on(stage::<A>(&opts));
    match result {
        Ok(StageEnd::Success | StageEnd::Configured(_)) => 0,
        Ok(StageEnd::BuildFailure { exit_code, note }) => {
            if let Some(note) = note {
                eprintln!("ERROR: {}", sanitize(&note));
            }
            // The runner (17.9+) reports the integer in this file as the job's exit code: a
            // file left from an earlier call, or none, would report another code. Not
            // writing it is the driver's failure, said as one.
            if let Some(path) = &runner.build_exit_code_file {
                if let Err(e) = std::fs::write(path, format!("{exit_code}\n")) {
                    eprintln!(
                        "Error encountered during job: the script failed with exit code \
                         {exit_code}, but writing it to BUILD_EXIT_CODE_FILE ({}) failed: {e}",
                        path.display()
                    );
                    return runner.system_failure_exit_code;
                }
            }
            runner.build_failure_exit_code
        }
        Err((err, config)) => {
            report(&opts, &err, config.as_ref());
            runner.system_failure_exit_code
        }
    }
}

/// Tell the job log (obfuscated unless `-u`) and the audit log about a failure. `cleanup`'s
/// output only reaches the runner's log, so it always gets the full text. When the
/// configured audit log cannot be written, that failure (naming the log) goes to stderr.
/// Without a configuration (it could not be loaded) the event goes to syslog on a best
/// effort: nothing says logging is wanted, so a missing /dev/log is not reported.
fn report(opts: &Options, err: &StageError, config: Option<&Config>) {
    // The reason may quote what the job controls (a message jacamar relays, a variable, a
    // path): no control character reaches the runner's log or the audit log as is.
    let full = sanitize(&err.detail()).into_owned();
    let job = JobContext::from_env().ok();
    let id = obfuscate::error_id();
    let sink = match config {
        Some(c) => audit::sink_of(c),
        None => Sink::Syslog,
    };
    let recorded = audit::record(
        &sink,
        &Event {
            level: Level::Error,
            msg: &full,
            job: job.as_ref().map(|j| j.job_id),
            runner: job.as_ref().map(|j| j.runner_short_token.as_str()),
            stage: opts.stage.name(),
            error_id: Some(&id),
            account: None,
            login: None,
            name: config.and_then(|c| c.general.name.as_deref()),
        },
    );
    if let (Err(e), Some(_)) = (recorded, config) {
        tracing::error!("{e}");
    }
    let user_facing = matches!(err, StageError::Auth(a) if a.user_facing());
    if opts.unobfuscated || opts.stage == Stage::Cleanup || user_facing {
        eprintln!("Error encountered during job: {full}");
    } else {
        eprintln!(
            "Error encountered during job: {} (error id {id})",
            obfuscate::public_message(err.category())
        );
    }
}

/// Find the configuration: `config` takes it from `--configuration`; later stages from
/// `job_env` (set by `config`), falling back to `--configuration` (cleanup has it).
fn load_config(opts: &Options) -> Result<Config, StageError> {
    let from_env = std::env::var(CONFIG_ENV).ok().filter(|s| !s.is_empty());
    match (&opts.stage, from_env, &opts.configuration) {
        (Stage::Config, _, Some(path)) | (_, None, Some(path)) => Ok(Config::from_file(path)?),
        (Stage::Config, _, None) => Err(StageError::NoConfig(
            "config requires --configuration FILE".into(),
        )),
        (_, Some(text), _) => {
            let origin = std::env::var(CONFIG_PATH_ENV)
                .map(|p| format!("{p} (via {CONFIG_ENV})"))
                .unwrap_or_else(|_| CONFIG_ENV.to_string());
            Ok(Config::from_str_named(&text, &origin)?)
        }
        (_, None, None) => Err(StageError::NoConfig(format!(
            "{CONFIG_ENV} is not set (did config_exec succeed?) and no --configuration was given"
        ))),
    }
}

async fn stage<A: Authorizer>(opts: &Options) -> Result<StageEnd, (StageError, Option<Config>)> {
    // Install the signal handlers before anything is spawned.
    let signals = OsSignals::install().map_err(|e| {
        (
            StageError::Internal(format!("failed to install signal handlers: {e}")),
            None,
        )
    })?;
    let config = load_config(opts).map_err(|e| (e, None))?;
    if let Some(problem) = capabilities_with_downscope_none(&config) {
        return Err((StageError::Deployment(problem), Some(config)));
    }
    if opts.no_auth {
        if let Some(problem) = no_auth_problems(&config).into_iter().next() {
            return Err((StageError::Deployment(problem), Some(config)));
        }
    }
    let run = async {
        let mut job = JobContext::from_env()?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        crate::batch::args::capture(&config, &mut job, &env);
        let target = A::target(&config, opts.stage.name(), &env).await?;
        authorized(&config, &job, opts.stage.name(), &target)?;
        match &opts.stage {
            Stage::Config => config_stage(opts, &config, &job, &target, signals).await,
            Stage::Prepare => {
                if opts.no_auth {
                    eprintln!("{}", auth::NO_AUTH_WARNING);
                } else if target.identity.is_none() {
                    eprintln!("{}", auth::UNVERIFIED_WARNING);
                }
                if let Some(msg) = &config.general.job_message {
                    println!("{}", msg.trim_end());
                }
                hand_over(&config, &job, &target, Stage::Prepare, signals).await
            }
            Stage::Run { name, .. } if !auth::stage_allowed(&config, name) => {
                eprintln!(
                    "WARNING: stage {} is not in the runner's run_stage_allowlist; skipped",
                    sanitize(name)
                );
                Ok(StageEnd::Success)
            }
            Stage::Run { .. } => {
                let stage = opts.stage.clone().try_map_script(read_script)?;
                hand_over(&config, &job, &target, stage, signals).await
            }
            Stage::Cleanup => hand_over(&config, &job, &target, Stage::Cleanup, signals).await,
        }
    };
    match run.await {
        Ok(done) => Ok(done),
        Err(e) => Err((e, Some(config))),
    }
}

/// The runner's script for a `run` stage, read as the account the runner uses.
fn read_script(path: PathBuf) -> Result<String, StageError> {
    let text = std::fs::read(&path).map_err(|source| StageError::Script {
        path: path.clone(),
        source,
    })?;
    String::from_utf8(text).map_err(|_| StageError::Script {
        path,
        source: std::io::Error::other("the script is not valid UTF-8"),
    })
}

/// The job token to keep off command lines: the one in the clone URL of the runner's job
/// `response` (GitLab's, whatever CI variables say), else `CUSTOM_ENV_CI_JOB_TOKEN`; `None`
/// when neither gives a non-empty one.
fn job_token(
    response: Option<&crate::job::JobResponse>,
    env: &BTreeMap<String, String>,
) -> Option<String> {
    response
        .and_then(|r| {
            r.repo_url
                .as_deref()
                .and_then(crate::job::token_in_clone_url)
        })
        .or_else(|| env.get("CUSTOM_ENV_CI_JOB_TOKEN").cloned())
        .filter(|t| !t.is_empty())
}

/// Record a successful authorization (with the local account) in the audit log; a failure
/// to write it fails the stage.
fn authorized(
    config: &Config,
    job: &JobContext,
    stage: &str,
    target: &Target,
) -> Result<(), StageError> {
    if !audit::passes(Level::Info, config.auth.logging.level) {
        return Ok(());
    }
    let login = target.identity.as_ref().map(|i| i.login.as_str());
    let msg = match &target.identity {
        Some(i) => format!(
            "authorized GitLab user {} (id {}, pipeline source {}) as local account {} (uid {}), downscope {}",
            i.login,
            i.user_id,
            i.pipeline_source.as_deref().unwrap_or("unknown"),
            target.account.name,
            target.account.uid,
            target.downscope.as_str()
        ),
        None => format!(
            "unverified job (no id_token, no gitlab_server) runs as local account {} (uid {}), downscope none",
            target.account.name, target.account.uid
        ),
    };
    audit::record(
        &audit::sink_of(config),
        &Event {
            level: Level::Info,
            msg: &msg,
            job: Some(job.job_id),
            runner: Some(&job.runner_short_token),
            stage,
            error_id: None,
            account: Some(&target.account.name),
            login,
            name: config.general.name.as_deref(),
        },
    )
    .map_err(|e| StageError::Internal(e.to_string()))
}

/// `config_exec`: print the JSON the runner reads from our stdout, and nothing else there.
async fn config_stage(
    opts: &Options,
    config: &Config,
    job: &JobContext,
    target: &Target,
    signals: OsSignals,
) -> Result<StageEnd, StageError> {
    let paths = job_paths(config, job, &target.account)?;
    let builds = match builds_of(config, job, &paths)? {
        Some(b) => b,
        // A claim or a user-owned root: decided by jacamar, as the user.
        None => match hand_over(config, job, target, Stage::Config, signals).await? {
            StageEnd::Configured(b) => b,
            other => return Ok(other),
        },
    };
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut job_env = serde_json::Map::new();
    job_env.insert(CONFIG_ENV.into(), json!(config.source));
    if let Some(path) = &opts.configuration {
        job_env.insert(CONFIG_PATH_ENV.into(), json!(path.display().to_string()));
    }
    let out = json!({
        "builds_dir": builds.builds_dir,
        "cache_dir": paths.cache_dir(),
        "builds_dir_is_shared": builds.builds_dir_is_shared,
        "hostname": hostname,
        "driver": { "name": "jacamar-rs", "version": env!("CARGO_PKG_VERSION") },
        "job_env": job_env,
    });
    println!("{out}");
    Ok(StageEnd::Success)
}

/// The builds dir when config can decide it alone (`None`: jacamar must, see `fs::builds`).
fn builds_of(
    config: &Config,
    job: &JobContext,
    paths: &crate::fs::JobPaths,
) -> Result<Option<BuildsInfo>, StageError> {
    Ok(BuildsPlan::new(&config.general, job, paths)?.planned(paths))
}

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
async fn hand_over(
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
    let plan = auth::downscope::plan(config, target)?;
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
        pgid: super::group_of(child.id(), "jacamar")?,
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

/// The stage's result from what was read on the status pipe and how `jacamar` ended.
fn result_of(
    status: &protocol::Bounded,
    outcome: &ChildEnd,
    delivery: protocol::Delivery,
) -> Result<StageEnd, StageError> {
    match protocol::verdict(status, outcome.exit) {
        Verdict::Reported(status, category) => done_of(status, category),
        Verdict::Silent => no_status(outcome, delivery),
        Verdict::Inconsistent(why) => inconsistent_status(outcome, &why),
    }
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
    let mut env = auth::env::job_env(
        &target.account,
        ours.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut job_token = None;
    if !config.general.unrestricted_cmd_line {
        // Only the job's GitLab server gets the token from git's askpass.
        let ours: BTreeMap<String, String> = ours.into_iter().collect();
        let response = crate::job::JobResponse::from_env_map(&ours).ok();
        let origins =
            auth::env::askpass_origins(config.general.gitlab_server.as_deref(), response.as_ref());
        env.extend(auth::env::askpass_env(exe, &origins));
        if matches!(stage, Stage::Run { .. }) {
            job_token = self::job_token(response.as_ref(), &ours);
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
    }
}

/// Start `jacamar` as the job's account (through `plan`), its own process group's leader,
/// with the two pipes and the job's cgroup; an empty environment but `PATH` and our
/// diagnostics settings. For `config`, its stdout goes to our stderr: our stdout is the
/// runner's JSON. With a cgroup it is created inside it (`clone3`), unless the kernel
/// refuses that: then it moves itself there before exec (slower, see
/// `auth::downscope::spawn_into_cgroup`).
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
    let env: Vec<(String, String)> = std::iter::once(("PATH", auth::env::DEFAULT_PATH.into()))
        .chain(super::diag::passed_env())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let stdout_to_stderr = matches!(stage, Stage::Config);
    let failed = |e: &std::io::Error| {
        StageError::Internal(auth::downscope::spawn_error(
            plan,
            &target.account.name,
            exe,
            e,
        ))
    };
    if let Some(cg) = cgroup {
        let launch = auth::downscope::Launch {
            user: &target.account.name,
            exe,
            pipes: Some(pipes),
            args: &args,
            env: &env,
            stdout_to_stderr,
        };
        match auth::downscope::spawn_into_cgroup(plan, &launch, cg.dir_fd()) {
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
    let mut cmd = auth::downscope::command(
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

/// How long the sweep of leftovers may take before survivors are reported.
const LEFTOVER_BOUND: Duration = Duration::from_secs(10);

/// After `jacamar` has been reaped, kill and reap what is left of the job: the members of
/// its cgroup (atomically, `cgroup.kill`), then every process re-parented to us (we are a
/// child subreaper), by pid, until we have no child left. Normally `jacamar` has swept the
/// job itself and this finds nothing; it matters when the job killed `jacamar`.
async fn sweep_leftovers(plan: &Plan, user: &str, exe: &Path, cgroup: Option<JobCgroup>) {
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
    let mut cmd = auth::downscope::command(&helper, user, exe, None, None, &args).into_std();
    cmd.env_clear()
        .env("PATH", auth::env::DEFAULT_PATH)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| KillError::Spawn {
        why: auth::downscope::spawn_error(&helper, user, exe, &e),
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

/// What `jacamar` reported, for the runner. A system failure keeps the category `jacamar`
/// named (an older `jacamar` names none: internal).
fn done_of(status: Status, category: Option<obfuscate::Category>) -> Result<StageEnd, StageError> {
    Ok(match status {
        Status::Success => StageEnd::Success,
        Status::BuildFailure {
            exit_code,
            signal,
            stopped,
        } => {
            let note = match (signal, stopped) {
                (Some(s), Some(why)) => Some(format!(
                    "job stopped ({why}): the script was killed by {}",
                    signal_name(s)
                )),
                (Some(s), None) => Some(format!("the script was killed by {}", signal_name(s))),
                (None, Some(why)) => Some(format!(
                    "job stopped ({why}): the script exited with code {exit_code}"
                )),
                (None, None) => None,
            };
            StageEnd::BuildFailure { exit_code, note }
        }
        Status::SystemFailure { message } => {
            // jacamar runs as the job's user: its words are the job's to choose.
            return Err(StageError::User {
                message: sanitize(&message).into_owned(),
                category: category.unwrap_or(obfuscate::Category::Internal),
            });
        }
        Status::Configured {
            builds_dir,
            builds_dir_is_shared,
        } => StageEnd::Configured(BuildsInfo {
            builds_dir,
            builds_dir_is_shared,
        }),
    })
}

/// `jacamar` ended without telling us how the stage went: a build failure when we stopped
/// it, else an internal failure (never one of the directories: we do not know what failed).
/// Both say whether it had read the stage at all.
fn no_status(outcome: &ChildEnd, delivery: protocol::Delivery) -> Result<StageEnd, StageError> {
    let how = match outcome.exit {
        supervisor::Exit::Code(c) => format!("exited with code {c}"),
        supervisor::Exit::Signal(s) => format!("was killed by {}", signal_name(s)),
    };
    let when = match delivery {
        protocol::Delivery::Delivered => "without reporting a status".to_string(),
        protocol::Delivery::Pending => "before it had read the stage handed to it".to_string(),
        protocol::Delivery::Failed(e) => format!("before it had read the stage handed to it ({e})"),
    };
    match outcome.stopped {
        Some(why) => Ok(StageEnd::BuildFailure {
            exit_code: outcome.exit.as_code(),
            note: Some(format!("job stopped ({why}): jacamar {how} {when}")),
        }),
        None => Err(StageError::User {
            message: format!("jacamar {how} {when}"),
            category: obfuscate::Category::Internal,
        }),
    }
}

/// What `jacamar` reported is not one status consistent with its exit (see
/// [`protocol::verdict`]): a system failure, as the job may have written it. While we were
/// stopping the job and `jacamar` was killed by a signal (we SIGKILL its group after
/// `KILL`), whatever it wrote is not used: the stage is the stop's build failure.
fn inconsistent_status(outcome: &ChildEnd, why: &str) -> Result<StageEnd, StageError> {
    match (&outcome.stopped, outcome.exit) {
        (Some(stop), supervisor::Exit::Signal(s)) => Ok(StageEnd::BuildFailure {
            exit_code: outcome.exit.as_code(),
            note: Some(format!(
                "job stopped ({stop}): jacamar was killed by {}; its status was not used ({why})",
                signal_name(s)
            )),
        }),
        _ => Err(StageError::Internal(format!(
            "the status channel from jacamar was tampered with or is inconsistent: {why}"
        ))),
    }
}

/// `SIGTERM`-style name of a signal number.
pub fn signal_name(n: i32) -> String {
    Signal::try_from(n)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {n}"))
}

/// Exposed for `jacamar-auth validate`.
pub fn validate_file(path: &Path) -> Result<Config, crate::config::ConfigError> {
    Config::from_file(path)
}

/// What in this process would fail every job of `config`, or make it unsafe (for
/// `jacamar-auth validate`, run as the account the runner uses): `downscope = "setuid"`
/// needs uid 0 or CAP_SETUID and CAP_SETGID in the effective set (the caps-only
/// deployment's file capabilities); `downscope = "none"` must not run in a process holding
/// capabilities (see [`capabilities_with_downscope_none`]).
pub fn deployment_problems(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = capabilities_with_downscope_none(config)
        .into_iter()
        .collect();
    if config.auth.downscope != Downscope::Setuid || nix::unistd::geteuid().is_root() {
        return problems;
    }
    use crate::auth::caps::{effective_has, CAP_SETGID, CAP_SETUID};
    match effective_has(&[CAP_SETUID, CAP_SETGID]) {
        Ok(true) => {}
        Ok(false) => problems.push(format!(
            "[auth] downscope = \"setuid\": jacamar-auth runs as uid {} without \
             cap_setuid and cap_setgid in its effective set, so every job would fail to \
             start; run it as root, or give the file the capabilities (`setcap \
             cap_setuid,cap_setgid=ep {}`, and check with getcap)",
            nix::unistd::geteuid(),
            own_path()
        )),
        Err(e) => problems.push(format!(
            "[auth] downscope = \"setuid\": cannot read this process's capabilities: {e}"
        )),
    }
    problems
}

/// This executable's path, for messages.
fn own_path() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "jacamar-auth".into())
}

/// What makes `jacamar --no-auth` refuse `config`, at every stage: it never authorizes and
/// never switches accounts, so it runs only as an ordinary account without capabilities, with
/// `downscope = "none"` and none of the `[auth]` keys that judge the GitLab user (they could
/// not be applied).
pub fn no_auth_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        problems.push(
            "jacamar --no-auth runs every job as its own account, and this is root: run the \
             runner's hooks through jacamar-auth (downscope = \"setuid\") instead"
                .to_string(),
        );
    } else if !matches!(crate::auth::caps::held(), Ok(0)) {
        problems.push(format!(
            "jacamar --no-auth ({}) holds capabilities (or they cannot be read) as uid {uid}: \
             a job running as this uid could use them; remove them (setcap -r) or use \
             jacamar-auth",
            own_path()
        ));
    }
    if config.auth.downscope != Downscope::None {
        problems.push(format!(
            "[auth] downscope = \"{}\": jacamar --no-auth never switches accounts; wire the \
             runner's hooks to jacamar-auth, or set downscope = \"none\"",
            config.auth.downscope.as_str()
        ));
    }
    for key in config.auth.policy_keys_set() {
        problems.push(format!(
            "[auth] {key}: jacamar --no-auth does not authorize jobs, so this key could not be \
             applied; wire the runner's hooks to jacamar-auth, or remove the key"
        ));
    }
    problems
}

/// `downscope = "none"` in a jacamar-auth that holds capabilities its uid does not give it
/// (a non-root account with file capabilities: the caps-only deployment). Its job would run
/// as that same account, which may execute this binary with a configuration, a job response
/// and an id_token of its own (`downscope = "setuid"`, its own `gitlab_server`) and so run
/// as any user. Every stage refuses it before reading the job, and `validate` reports it.
/// `None` for another downscope, for root (its job runs as root already) and for a process
/// without capabilities. A failure to read the capabilities refuses too.
pub fn capabilities_with_downscope_none(config: &Config) -> Option<String> {
    let uid = nix::unistd::geteuid();
    if config.auth.downscope != Downscope::None || uid.is_root() {
        return None;
    }
    match crate::auth::caps::held() {
        Ok(0) => None,
        Ok(mask) => Some(format!(
            "[auth] downscope = \"none\" is refused: jacamar-auth ({}) runs as uid {uid} \
             holding capabilities (permitted/effective {mask:016x}), and a job with \
             downscope = \"none\" runs as that same uid, so it could execute this \
             jacamar-auth with a configuration and an id_token of its own and run as any \
             user; use downscope = \"setuid\" with this copy, or run downscope = \"none\" \
             jobs through a copy of jacamar-auth without capabilities (getcap shows them, \
             setcap -r removes them)",
            own_path()
        )),
        Err(e) => Some(format!(
            "[auth] downscope = \"none\" is refused: cannot read the capabilities of \
             jacamar-auth ({}, uid {uid}): {e}; a job running as this uid could use any it \
             holds",
            own_path()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Bounded, Delivery};
    use supervisor::{Exit, Reason};

    fn outcome(exit: Exit, stopped: Option<Reason>) -> ChildEnd {
        ChildEnd {
            exit,
            stopped,
            escalated: false,
            sweep: Default::default(),
            output_leaked: false,
        }
    }

    fn pipe(lines: &[&str]) -> Bounded {
        Bounded::Complete(lines.concat().into_bytes())
    }

    const SUCCESS: &str = "{\"status\":\"success\"}\n";
    const BUILD_7: &str =
        "{\"status\":\"build_failure\",\"exit_code\":7,\"signal\":null,\"stopped\":null}\n";

    fn tampered(r: Result<StageEnd, StageError>) -> String {
        match r {
            Err(e @ StageError::Internal(_)) => {
                assert_eq!(e.category(), obfuscate::Category::Internal);
                let text = e.to_string();
                assert!(text.contains("tampered with or is inconsistent"), "{text}");
                text
            }
            other => panic!("not refused as a tampered status: {other:?}"),
        }
    }

    #[test]
    fn a_forged_line_before_jacamars_own_is_a_system_failure() {
        let exit = Exit::Code(protocol::EXIT_BUILD_FAILURE);
        let r = result_of(
            &pipe(&[SUCCESS, BUILD_7]),
            &outcome(exit, None),
            Delivery::Delivered,
        );
        assert!(tampered(r).contains("2 lines"));
    }

    #[test]
    fn a_success_line_contradicted_by_jacamars_exit_is_a_system_failure() {
        for exit in [
            Exit::Signal(libc::SIGKILL),
            Exit::Code(protocol::EXIT_BUILD_FAILURE),
            Exit::Code(protocol::EXIT_NOT_REPORTED),
        ] {
            let r = result_of(&pipe(&[SUCCESS]), &outcome(exit, None), Delivery::Delivered);
            assert!(tampered(r).contains("success"), "{exit:?}");
        }
        let r = result_of(
            &Bounded::TooLong,
            &outcome(Exit::Code(0), None),
            Delivery::Delivered,
        );
        assert!(tampered(r).contains("too long"));
    }

    #[test]
    fn consistent_statuses_and_silence_keep_their_meaning() {
        let ok = result_of(
            &pipe(&[SUCCESS]),
            &outcome(Exit::Code(0), None),
            Delivery::Delivered,
        );
        assert!(matches!(ok, Ok(StageEnd::Success)));
        let exit = Exit::Code(protocol::EXIT_BUILD_FAILURE);
        let failed = result_of(&pipe(&[BUILD_7]), &outcome(exit, None), Delivery::Delivered);
        assert!(matches!(
            failed,
            Ok(StageEnd::BuildFailure { exit_code: 7, .. })
        ));
        // Nothing written: unchanged (an internal failure; a build failure when we stopped it).
        let silent = result_of(
            &pipe(&[]),
            &outcome(Exit::Signal(libc::SIGKILL), None),
            Delivery::Delivered,
        );
        match silent {
            Err(StageError::User { message, .. }) => {
                assert!(message.contains("without reporting a status"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let stopped = outcome(
            Exit::Signal(libc::SIGKILL),
            Some(Reason::Signal(Signal::SIGTERM)),
        );
        let r = result_of(&pipe(&[]), &stopped, Delivery::Pending);
        assert!(
            matches!(&r, Ok(StageEnd::BuildFailure { exit_code: 137, note: Some(n) })
                if n.contains("before it had read the stage")),
            "{r:?}"
        );
    }

    #[test]
    fn during_a_stop_a_killed_jacamars_status_is_not_used() {
        // We SIGKILL jacamar's group after KILL: whatever it wrote, the stop's build failure.
        let stopped = outcome(
            Exit::Signal(libc::SIGKILL),
            Some(Reason::Signal(Signal::SIGTERM)),
        );
        for lines in [&[SUCCESS][..], &[SUCCESS, BUILD_7][..], &[BUILD_7][..]] {
            let r = result_of(&pipe(lines), &stopped, Delivery::Delivered);
            assert!(
                matches!(&r, Ok(StageEnd::BuildFailure { exit_code: 137, note: Some(n) })
                    if n.contains("job stopped") && n.contains("not used")),
                "{lines:?}: {r:?}"
            );
        }
        // A stop does not excuse a contradiction from a jacamar that exited by itself.
        let exited = outcome(
            Exit::Code(protocol::EXIT_BUILD_FAILURE),
            Some(Reason::Backstop),
        );
        tampered(result_of(&pipe(&[SUCCESS]), &exited, Delivery::Delivered));
    }
}
