//! Authorization: who may run the job. Its one job is the decision, a [`Target`] (the local
//! account, the downscope mode, the verified identity) or an [`AuthError`].
//!
//! [`authorize`] is called by jacamar-auth at every stage. Identity comes from the job's
//! signed id_token ([`jwt`], keys from [`jwks`] over [`tls`]), never from `CUSTOM_ENV_`
//! variables; then the policy of `[auth]` ([`lists`], bot accounts, pipeline sources,
//! [`runas`], [`nologin`], shells, [`target`]'s uid rules) decides. How the job then becomes
//! that account is [`crate::privdrop`]'s; its environment is [`crate::jobenv`]'s; what the
//! logs say is [`crate::audit`]'s.
//!
//! Layering: at the auth/batch/shell layer. It may import `config`, `job`, `protocol`,
//! `shell`, `jobenv`, `clock`/`hex`/`text` and `sys`; never `stages`, `privdrop`, `audit` or a binary.
//!
//! The token's keys come from the trusted server ([`trusted_server`]): `gitlab_server`, else
//! the origin of the runner-written job response, never a CI variable.
//!
//! One exception keeps local runs simple: with `downscope = "none"`, no `gitlab_server`,
//! no policy key ([`needs_token`]) and no id_token in the job, the job runs as
//! jacamar-auth's own account unverified ([`Target::identity`] is `None`), and the job log
//! says so. `enforce_nologin` applies to it too.

pub mod jwks;
pub mod jwt;
pub mod lists;
pub mod nologin;
pub mod runas;
pub mod target;
pub mod tls;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::time::Duration;

use crate::config::{Config, Downscope};
use crate::job::JobResponse;
use crate::jobenv;
use crate::protocol::Account;

/// The fallback variable of the job's id_token.
pub const DEFAULT_JWT_VARIABLE: &str = "CI_JOB_JWT";

/// Authorization failures. Their text is for the admin; the job log gets
/// [`crate::audit::obfuscate::public_message`] unless `--unobfuscated` (or [`AuthError::user_facing`]).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to look up the local account of uid {uid}: {why}")]
    Lookup { uid: u32, why: String },
    /// A lookup by name (the login, or RunAs's answer) failed: the error names the account.
    #[error("failed to look up the local account {name:?}: {why}")]
    LookupName { name: String, why: String },
    #[error(
        "No id_token found on {var} variable. Please update your CI job to include the following:\n\
         id_tokens:\n  {var}:\n    aud: {aud}\n\
         (see https://docs.gitlab.com/ee/ci/yaml/index.html#id_tokens)"
    )]
    MissingToken { var: String, aud: String },
    #[error("invalid id_token: {0}")]
    Token(String),
    #[error("unable to verify the id_token: {0}")]
    Jwks(String),
    #[error("no GitLab server to verify the id_token against: {0}")]
    NoServer(String),
    #[error("refusing user_login {0:?} of the id_token: not a valid account name")]
    BadLogin(String),
    #[error("job refused: {0}")]
    Refused(String),
    /// The validation script of `[auth.runas]` refused the job, or could not be asked.
    #[error("RunAs validation failed: {}: {why}", script.display())]
    RunAs {
        script: std::path::PathBuf,
        #[source]
        why: runas::RunAsProblem,
    },
    #[error("no local account {0:?} for the job's user")]
    NoAccount(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("downscope: {0}")]
    Downscope(String),
    /// The runner's job response, which names the job the id_token must be for.
    #[error("cannot bind the id_token to this job: {0}")]
    JobResponse(#[source] crate::job::ResponseError),
    /// A CI variable refused by [`jobenv::check_sizes`] or [`jobenv::check_reserved`].
    #[error(transparent)]
    Env(#[from] jobenv::EnvError),
}

impl AuthError {
    /// Errors whose full text the CI user needs and may see (they reveal nothing of the
    /// runner): the missing id_token, an over-long variable, a reserved variable (its name,
    /// never its value).
    pub fn user_facing(&self) -> bool {
        matches!(self, AuthError::MissingToken { .. } | AuthError::Env(_))
    }
}

/// The local account a job will run as, decided by the privileged side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account: Account,
    pub downscope: Downscope,
    /// Supplementary groups of the account (getgrouplist), resolved before any fork.
    pub groups: Vec<u32>,
    /// The verified identity; `None` only for an unverified `downscope = "none"` job.
    pub identity: Option<jwt::Identity>,
}

/// The warning the job log gets for a `jacamar --no-auth` job.
pub const NO_AUTH_WARNING: &str = "WARNING: jacamar --no-auth: the job runs as the runner's \
     own account, without authorization; its user is not verified";

/// The warning the job log gets for an unverified job.
pub const UNVERIFIED_WARNING: &str = "WARNING: no id_token and no gitlab_server configured: \
     the job runs as the runner's own account (downscope = \"none\"), its user is not verified";

/// The variable holding the id_token (`CUSTOM_ENV_` + `jwt_env_variable`, else `CI_JOB_JWT`)
/// and the token, if the job has one.
pub fn find_token(config: &Config, env: &BTreeMap<String, String>) -> (String, Option<String>) {
    let mut names = Vec::new();
    if let Some(v) = &config.general.jwt_env_variable {
        names.push(v.trim_start_matches("CUSTOM_ENV_").to_string());
    }
    names.push(DEFAULT_JWT_VARIABLE.to_string());
    for n in &names {
        if let Some(t) = env
            .get(&format!("CUSTOM_ENV_{n}"))
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
        {
            return (n.clone(), Some(t.to_string()));
        }
    }
    (names.swap_remove(0), None)
}

/// The GitLab server the token must come from, without a trailing `/`: `[general]
/// gitlab_server`, else the origin (`scheme://host[:port]`) of the clone URL in the
/// runner-written `JOB_RESPONSE_FILE` (see [`JobResponse`]). Never `CI_SERVER_URL`: a CI
/// variable can override it. The keys are fetched from this server only.
pub fn trusted_server(
    config: &Config,
    env: &BTreeMap<String, String>,
) -> Result<String, AuthError> {
    if let Some(s) = &config.general.gitlab_server {
        return Ok(s.trim_end_matches('/').to_string());
    }
    let response = JobResponse::from_env_map(env).map_err(|e| {
        AuthError::NoServer(format!(
            "[general] gitlab_server is not set and the runner's job response cannot be used: {e}"
        ))
    })?;
    response.server_origin().ok_or_else(|| {
        AuthError::NoServer(
            "[general] gitlab_server is not set and the runner's job response has no http(s) \
             clone URL (git_info.repo_url) to take the server from; set gitlab_server"
                .into(),
        )
    })
}

/// Whether a job without an id_token must be refused: always unless `downscope = "none"`,
/// and then when `gitlab_server` or any key that judges the GitLab user is set (the user
/// lists, `shell_allowlist`, `pipeline_source_allowlist`, `[auth.runas]`,
/// `allow_bot_accounts = true`, `jwt_required_aud`, `ff_getent_check`). Without a token
/// none of them could be checked; the job would run unverified.
pub fn needs_token(config: &Config) -> bool {
    config.auth.downscope != Downscope::None
        || config.general.gitlab_server.is_some()
        || !config.auth.policy_keys_set().is_empty()
}

/// `jacamar --no-auth`: no authorization at all, the job runs as this process's own account
/// (the caller checked, with [`crate::stages::privileged::no_auth_problems`], that this is
/// neither root nor privileged). `enforce_nologin` and the variable checks still apply.
pub fn unauthorized(config: &Config, env: &BTreeMap<String, String>) -> Result<Target, AuthError> {
    jobenv::check_sizes(env, config.auth.max_env_chars)?;
    if !config.general.unrestricted_cmd_line {
        jobenv::check_reserved(env)?;
    }
    check_nologin_file(config)?;
    Ok(Target {
        account: account_of(nix::unistd::geteuid().as_raw())?,
        downscope: Downscope::None,
        groups: Vec::new(),
        identity: None,
    })
}

/// Decide who runs the job, for the runner's stage `stage` (`config_exec`, ...,
/// `cleanup_exec`). `env` is jacamar-auth's environment (the runner's and `CUSTOM_ENV_*`).
///
/// A job with an id_token must also have the runner's `JOB_RESPONSE_FILE`: the token's
/// `job_id` claim is compared with the response's `id` ([`AuthError::JobResponse`] when the
/// file is not set, unreadable or invalid). An unverified job never reads it.
pub async fn authorize(
    config: &Config,
    stage: &str,
    env: &BTreeMap<String, String>,
) -> Result<Target, AuthError> {
    let a = &config.auth;
    jobenv::check_sizes(env, a.max_env_chars)?;
    // The driver manages git's credentials (askpass, see `jobenv::askpass_env`): no CI
    // variable may steer where the job token goes.
    if !config.general.unrestricted_cmd_line {
        jobenv::check_reserved(env)?;
    }
    let (var, token) = find_token(config, env);
    let Some(token) = token else {
        if !needs_token(config) {
            check_nologin_file(config)?;
            return Ok(Target {
                account: account_of(nix::unistd::geteuid().as_raw())?,
                downscope: Downscope::None,
                groups: Vec::new(),
                identity: None,
            });
        }
        let aud = a
            .jwt_required_aud
            .clone()
            .or_else(|| trusted_server(config, env).ok())
            .unwrap_or_else(|| "https://gitlab.example.com".into());
        return Err(AuthError::MissingToken { var, aud });
    };
    // The job id the token must carry: the one the runner wrote, never CUSTOM_ENV_CI_JOB_ID
    // (a CI variable of the same name overrides that one).
    let response = crate::job::JobResponse::from_env_map(env).map_err(AuthError::JobResponse)?;
    let server = trusted_server(config, env)?;
    let kid = jwt::header_kid(&token)?;
    let src = jwks::Source::new(&server, config.general.tls_ca_file.clone());
    let key = jwks::key_for(&src, &kid).await?;
    let aud = a.jwt_required_aud.clone().unwrap_or_else(|| server.clone());
    let expect = jwt::Expect {
        issuer: &server,
        audience: &aud,
        job_id: response.id,
        exp_grace: if stage == "cleanup_exec" {
            a.jwt_exp_delay
        } else {
            Duration::ZERO
        },
        now: None,
    };
    let id = jwt::validate(&token, &key, &expect)?;
    policy(config, id, env).await
}

/// `enforce_nologin`: refuse while a pam_nologin file exists.
fn check_nologin_file(config: &Config) -> Result<(), AuthError> {
    if !config.auth.enforce_nologin {
        return Ok(());
    }
    match nologin::system() {
        None => Ok(()),
        Some((path, why)) => Err(AuthError::Refused(format!(
            "{} exists (enforce_nologin){}",
            path.display(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        ))),
    }
}

/// Everything after the token: bots, pipeline sources, RunAs, lists, nologin, the account.
async fn policy(
    config: &Config,
    id: jwt::Identity,
    env: &BTreeMap<String, String>,
) -> Result<Target, AuthError> {
    let a = &config.auth;
    if lists::is_bot(&id.login) && !a.allow_bot_accounts {
        return Err(AuthError::Refused(format!(
            "{} is a GitLab bot account; set allow_bot_accounts = true to allow them",
            id.login
        )));
    }
    if !a.pipeline_source_allowlist.is_empty() {
        let src = id.pipeline_source.as_deref().unwrap_or("");
        if !a.pipeline_source_allowlist.iter().any(|s| s == src) {
            return Err(AuthError::Refused(format!(
                "pipeline source {src:?} is not in pipeline_source_allowlist"
            )));
        }
    }
    let mut name = id.login.clone();
    if let Some(r) = &a.runas {
        if a.lists_pre_validation {
            check_lists(config, &name)?;
        }
        name = runas::validate(r, &id, env).await?;
        if !a.lists_pre_validation {
            check_lists(config, &name)?;
        }
    } else {
        check_lists(config, &name)?;
    }
    check_nologin_file(config)?;
    let local = user_by_name(&name)?;
    if let Some(u) = &local {
        check_shell(config, &u.name, &u.shell)?;
        if a.ff_getent_check {
            getent_check(&u.name, u.uid.as_raw()).await?;
        }
    }
    match a.downscope {
        Downscope::None => Ok(Target {
            account: account_of(nix::unistd::geteuid().as_raw())?,
            downscope: Downscope::None,
            groups: Vec::new(),
            identity: Some(id),
        }),
        mode @ (Downscope::Setuid | Downscope::Sudo) => {
            let u = local.ok_or_else(|| AuthError::NoAccount(name.clone()))?;
            target::check(&config.auth, &target::Candidate::of(&u))?;
            let groups = group_ids(&u.name, u.gid.as_raw())?;
            Ok(Target {
                account: Account {
                    name: u.name,
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                    home: u.dir,
                    shell: u.shell,
                },
                downscope: mode,
                groups,
                identity: Some(id),
            })
        }
    }
}

fn user_by_name(name: &str) -> Result<Option<nix::unistd::User>, AuthError> {
    nix::unistd::User::from_name(name).map_err(|e| name_lookup_failed(name, e.to_string()))
}

/// A failed lookup of the account `name` (in the user database, or of its groups).
fn name_lookup_failed(name: &str, why: String) -> AuthError {
    AuthError::LookupName {
        name: name.into(),
        why,
    }
}

fn group_ids(name: &str, gid: u32) -> Result<Vec<u32>, AuthError> {
    let c = CString::new(name).map_err(|_| AuthError::BadLogin(name.into()))?;
    nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid))
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .map_err(|e| name_lookup_failed(name, format!("its groups: {e}")))
}

/// The lists of `[auth]` applied to the local account `name` (groups from the user
/// database; an account that does not exist has no groups).
fn check_lists(config: &Config, name: &str) -> Result<(), AuthError> {
    let groups = match user_by_name(name)? {
        Some(u) => group_ids(&u.name, u.gid.as_raw())?
            .into_iter()
            .filter_map(|g| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .collect(),
        None => Vec::new(),
    };
    let s = lists::Subject {
        name: name.to_string(),
        groups,
    };
    match lists::check(&config.auth, &s) {
        lists::Decision::Allowed(_) => Ok(()),
        lists::Decision::Refused(why) => Err(AuthError::Refused(why)),
    }
}

fn check_shell(config: &Config, name: &str, shell: &std::path::Path) -> Result<(), AuthError> {
    let allow = &config.auth.shell_allowlist;
    if allow.is_empty() || allow.iter().any(|s| std::path::Path::new(s) == shell) {
        return Ok(());
    }
    Err(AuthError::Refused(format!(
        "the shell of {name} ({}) is not in shell_allowlist",
        shell.display()
    )))
}

/// `ff_getent_check`: the account must also be known to `getent passwd`, with the same uid.
/// (`getent` runs as a tokio process: the runtime's one thread is not blocked on it.)
async fn getent_check(name: &str, uid: u32) -> Result<(), AuthError> {
    let out = tokio::process::Command::new("getent")
        .args(["passwd", name])
        .env_clear()
        .env("PATH", jobenv::DEFAULT_PATH)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| AuthError::Refused(format!("getent check of {name}: {e}")))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let got = line
        .split(':')
        .nth(2)
        .and_then(|u| u.trim().parse::<u32>().ok());
    if out.status.success() && got == Some(uid) {
        Ok(())
    } else {
        Err(AuthError::Refused(format!(
            "getent passwd {name} does not confirm uid {uid} (ff_getent_check)"
        )))
    }
}

/// Whether the run stage `stage` may run (`run_stage_allowlist`; empty allows all).
pub fn stage_allowed(config: &Config, stage: &str) -> bool {
    let l = &config.auth.run_stage_allowlist;
    l.is_empty() || l.iter().any(|s| s == stage)
}

/// The passwd entry of `uid`.
pub fn account_of(uid: u32) -> Result<Account, AuthError> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| AuthError::Lookup {
            uid,
            why: e.to_string(),
        })?
        .ok_or_else(|| AuthError::Lookup {
            uid,
            why: "no such user in the user database".into(),
        })?;
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        shell: user.shell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_lookup_by_name_names_the_account_not_a_uid() {
        // An NSS failure (EIO from getpwnam_r) for the login: the error names the login.
        let e = name_lookup_failed("jrs_silent", nix::errno::Errno::EIO.to_string()).to_string();
        assert!(e.contains("jrs_silent"), "{e}");
        assert!(!e.contains("4294967295") && !e.contains("uid"), "{e}");
    }
}
