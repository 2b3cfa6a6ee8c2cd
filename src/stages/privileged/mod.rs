//! `jacamar-auth`: the runner-facing, possibly privileged side of every stage.
//!
//! Read top to bottom, one stage is: load the configuration -> read the job -> authorize ->
//! (config: print JSON | prepare/run/cleanup: hand the stage to `jacamar` and supervise it)
//! -> map the result to the runner's exit codes.
//!
//! * this module: the stage driver, from the command line to the runner's exit code;
//! * `handover`: start `jacamar` as the job's account, hand it the stage, supervise it;
//! * `sweep`: kill and reap what the job left once `jacamar` is gone;
//! * `end`: what `jacamar`'s status and exit amount to (`StageEnd`), and the
//!   runner's exit code for it;
//! * `deployment`: what would fail every job of a configuration here (`validate`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use super::{job_paths, StageError, CONFIG_ENV, CONFIG_PATH_ENV};
use crate::audit::{self, obfuscate, Event, Level, Sink};
use crate::authz::{self, AuthError, Target};
use crate::config::Config;
use crate::fs::builds::{BuildsInfo, BuildsPlan};
use crate::job::{JobContext, RunnerEnv};
use crate::protocol::Stage;
use crate::supervisor::OsSignals;
use crate::text::sanitize;

mod deployment;
mod end;
mod handover;
mod sweep;

pub use deployment::{
    capabilities_with_downscope_none, deployment_problems, no_auth_problems, validate_file,
};
pub use end::signal_name;
use end::StageEnd;
use handover::hand_over;
pub use handover::jacamar_binary;

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

/// The runner's environment, as a stage reads it.
type Env = BTreeMap<String, String>;

/// How a stage decides who runs the job: a type, not a flag, so that each binary holds
/// only the path it uses.
trait Authorizer {
    async fn target(config: &Config, stage: &str, env: &Env) -> Result<Target, AuthError>;
}

/// `jacamar-auth`: the id_token and the configured policy ([`authz::authorize`]).
struct Verify;

impl Authorizer for Verify {
    async fn target(config: &Config, stage: &str, env: &Env) -> Result<Target, AuthError> {
        authz::authorize(config, stage, env).await
    }
}

/// `jacamar --no-auth`: this process's own account ([`authz::unauthorized`]).
struct NoAuth;

impl Authorizer for NoAuth {
    async fn target(config: &Config, _stage: &str, env: &Env) -> Result<Target, AuthError> {
        authz::unauthorized(config, env)
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
    match rt.block_on(stage::<A>(&opts)) {
        Ok(end) => end.exit_code(&runner),
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
                    eprintln!("{}", authz::NO_AUTH_WARNING);
                } else if target.identity.is_none() {
                    eprintln!("{}", authz::UNVERIFIED_WARNING);
                }
                if let Some(msg) = &config.general.job_message {
                    println!("{}", msg.trim_end());
                }
                hand_over(&config, &job, &target, Stage::Prepare, signals).await
            }
            Stage::Run { name, .. } if !authz::stage_allowed(&config, name) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobResponse;

    #[test]
    fn the_job_token_is_gitlabs_before_the_ci_variables() {
        let response = |url: &str| JobResponse {
            id: 1,
            repo_url: Some(url.into()),
            timeout: None,
            image: None,
            registry_credentials: Vec::new(),
        };
        let env: Env = [(
            "CUSTOM_ENV_CI_JOB_TOKEN".to_string(),
            "from-var".to_string(),
        )]
        .into();
        let gitlab = response("https://gitlab-ci-token:glcbt-x@gitlab.example.com/g/p.git");
        assert_eq!(job_token(Some(&gitlab), &env).as_deref(), Some("glcbt-x"));
        let no_token = response("https://gitlab.example.com/g/p.git");
        assert_eq!(
            job_token(Some(&no_token), &env).as_deref(),
            Some("from-var")
        );
        assert_eq!(job_token(None, &env).as_deref(), Some("from-var"));
        let empty: Env = [("CUSTOM_ENV_CI_JOB_TOKEN".to_string(), String::new())].into();
        assert_eq!(job_token(None, &empty), None);
        assert_eq!(job_token(None, &Env::new()), None);
    }

    #[test]
    fn the_runners_script_is_read_as_utf8_or_refused_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("script.");
        std::fs::write(&good, "echo hi\n").unwrap();
        assert_eq!(read_script(good).unwrap(), "echo hi\n");
        let bad = dir.path().join("binary");
        std::fs::write(&bad, [0xff, 0xfe]).unwrap();
        let err = read_script(bad.clone()).unwrap_err();
        assert!(matches!(&err, StageError::Script { path, .. } if *path == bad));
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        let missing = dir.path().join("missing");
        let err = read_script(missing.clone()).unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert_eq!(
            err.category(),
            crate::audit::obfuscate::Category::Environment
        );
    }

    #[test]
    fn a_stage_from_the_command_line_is_read_into_the_handoffs() {
        let (_dir, path) = crate::test_support::temp_file("script", "true\n");
        let called = Stage::Run {
            name: "build_script".into(),
            script: path,
        };
        assert_eq!(called.name(), "build_script");
        let handed = called.try_map_script(read_script).unwrap();
        assert_eq!(
            handed,
            Stage::Run {
                name: "build_script".into(),
                script: "true\n".to_string(),
            }
        );
        let cleanup: Stage<PathBuf> = Stage::Cleanup;
        assert_eq!(cleanup.name(), "cleanup_exec");
        assert_eq!(cleanup.try_map_script(read_script).unwrap(), Stage::Cleanup);
    }
}
