//! The job as the runner describes it in our environment.
//!
//! Everything under `CUSTOM_ENV_` is set from the job's CI variables and is therefore
//! user-controlled: it is fine for paths and flags (validated by [`crate::fs`]), never for
//! identity (that comes from the signed id_token, see [`crate::auth`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest `CI_JOB_TIMEOUT` accepted: 30 days, GitLab's own maximum job timeout ("1
/// month"). A larger value is refused (it could only come from a CI variable overriding the
/// runner's), so every deadline computed from it fits comfortably.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A failure to read the job from the environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error(
        "missing required variable {0}: is this running under the GitLab Runner custom executor?"
    )]
    Missing(&'static str),
    #[error("invalid value of {name}: {value:?} ({why})")]
    Invalid {
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

/// What the driver needs to know about the job, read from `CUSTOM_ENV_*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobContext {
    pub job_id: u64,
    pub runner_short_token: String,
    pub concurrent_id: u32,
    pub project_path: String,
    /// `CI_JOB_TIMEOUT`: the job's maximum duration.
    pub job_timeout: Option<Duration>,
    pub user_login: Option<String>,
    pub pipeline_source: Option<String>,
    pub server_url: Option<String>,
    pub job_status: Option<String>,
    /// `JACAMAR_NO_BASH_PROFILE`: run bash without any profile.
    pub no_bash_profile: bool,
    /// `JACAMAR_ETC_PROFILE_ONLY`: source /etc/profile but not the user's files.
    pub etc_profile_only: bool,
    /// `JACAMAR_BASH_PROFILE_ONCE`: read the profile in the job's first stage only, and give
    /// later stages what it left (see `stages::login_env`).
    #[serde(default)]
    pub bash_profile_once: bool,
    /// CI variables the batch executor reads (`[batch] arguments_variable`, the job name
    /// prefix), copied by `jacamar-auth` (see [`crate::batch::args::capture`]).
    #[serde(default)]
    pub batch_variables: BTreeMap<String, String>,
    /// The CI variables of the build-directory features (see [`crate::fs::builds`]).
    #[serde(default)]
    pub build_dirs: BuildDirVars,
}

/// CI variables read for the build-directory features; values are checked where used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDirVars {
    /// `CI_PROJECT_ID`, as given (part of the `limit_build_dir` directory's unique id).
    pub project_id: Option<String>,
    /// `CUSTOM_CI_BUILDS_DIR`: the user's own builds dir (with `custom_build_dir`).
    pub custom_builds_dir: Option<String>,
    /// `JACAMAR_LIMIT_BUILD_DIR`: the project opts in to `limit_build_dir` (with
    /// `user_enabled_limit`).
    pub limit_opt_in: bool,
    /// `CI_PROJECT_DIR`, as given: where the runner put the project (its `.tmp` sibling is
    /// removed at cleanup, see `fs::builds::remove_runner_tmp`; used only below the builds dir).
    #[serde(default)]
    pub project_dir: Option<String>,
}

/// Truthy CI variable values, as GitLab users write them.
fn truthy(v: Option<&String>) -> bool {
    matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

impl JobContext {
    /// Read the job from the process environment.
    pub fn from_env() -> Result<JobContext, JobError> {
        Self::from_map(&std::env::vars().collect())
    }

    /// Read the job from an environment map (testable).
    pub fn from_map(env: &BTreeMap<String, String>) -> Result<JobContext, JobError> {
        let get = |k: &str| {
            env.get(&format!("CUSTOM_ENV_{k}"))
                .filter(|v| !v.is_empty())
        };
        let job_id_raw = get("CI_JOB_ID").ok_or(JobError::Missing("CUSTOM_ENV_CI_JOB_ID"))?;
        let job_id = job_id_raw.trim().parse().map_err(|_| JobError::Invalid {
            name: "CUSTOM_ENV_CI_JOB_ID",
            value: job_id_raw.clone(),
            why: "not a job number",
        })?;
        let runner_short_token = get("CI_RUNNER_SHORT_TOKEN")
            .ok_or(JobError::Missing("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN"))?
            .clone();
        let concurrent_id = match get("CI_CONCURRENT_PROJECT_ID") {
            None => 0,
            Some(v) => v.trim().parse().map_err(|_| JobError::Invalid {
                name: "CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID",
                value: v.clone(),
                why: "not a number",
            })?,
        };
        let project_path = get("CI_PROJECT_PATH")
            .ok_or(JobError::Missing("CUSTOM_ENV_CI_PROJECT_PATH"))?
            .clone();
        let job_timeout = get("CI_JOB_TIMEOUT").map(|v| job_timeout(v)).transpose()?;
        Ok(JobContext {
            job_id,
            runner_short_token,
            concurrent_id,
            project_path,
            job_timeout,
            user_login: get("GITLAB_USER_LOGIN").cloned(),
            pipeline_source: get("CI_PIPELINE_SOURCE").cloned(),
            server_url: get("CI_SERVER_URL").cloned(),
            job_status: get("CI_JOB_STATUS").cloned(),
            no_bash_profile: truthy(get("JACAMAR_NO_BASH_PROFILE")),
            etc_profile_only: truthy(get("JACAMAR_ETC_PROFILE_ONLY")),
            bash_profile_once: truthy(get("JACAMAR_BASH_PROFILE_ONCE")),
            build_dirs: BuildDirVars {
                project_id: get("CI_PROJECT_ID").cloned(),
                custom_builds_dir: get("CUSTOM_CI_BUILDS_DIR").cloned(),
                limit_opt_in: truthy(get("JACAMAR_LIMIT_BUILD_DIR")),
                project_dir: get("CI_PROJECT_DIR").cloned(),
            },
            batch_variables: BTreeMap::new(),
        })
    }
}

/// `CI_JOB_TIMEOUT`: whole seconds, at most [`MAX_JOB_TIMEOUT`].
fn job_timeout(v: &str) -> Result<Duration, JobError> {
    let invalid = |why| JobError::Invalid {
        name: "CUSTOM_ENV_CI_JOB_TIMEOUT",
        value: v.to_string(),
        why,
    };
    let secs: u64 = v
        .trim()
        .parse()
        .map_err(|_| invalid("not a number of seconds"))?;
    let t = Duration::from_secs(secs);
    if t > MAX_JOB_TIMEOUT {
        return Err(invalid(
            "more than 2592000 seconds (30 days), the longest job timeout GitLab allows",
        ));
    }
    Ok(t)
}

/// What the runner itself tells every driver call (not user-controlled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEnv {
    pub build_failure_exit_code: i32,
    pub system_failure_exit_code: i32,
    pub build_exit_code_file: Option<PathBuf>,
}

impl RunnerEnv {
    pub fn from_env() -> RunnerEnv {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(env: &BTreeMap<String, String>) -> RunnerEnv {
        let code = |k: &str, d: i32| env.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(d);
        RunnerEnv {
            build_failure_exit_code: code("BUILD_FAILURE_EXIT_CODE", 1),
            system_failure_exit_code: code("SYSTEM_FAILURE_EXIT_CODE", 2),
            build_exit_code_file: env
                .get("BUILD_EXIT_CODE_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// The user name of the job token in a runner's clone URL (`gitlab-ci-token:<token>@`), and
/// the one git is given for job-token authentication.
pub const TOKEN_USER: &str = "gitlab-ci-token";

/// The job token of a runner clone URL `scheme://gitlab-ci-token:<token>@host/...`: `None`
/// for another user, an empty token, or one with a `%` (a percent-encoded token is not what
/// the runner puts on git's command lines).
pub fn token_in_clone_url(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, token) = userinfo.split_once(':')?;
    (user == TOKEN_USER && !token.is_empty() && !token.contains('%')).then(|| token.to_string())
}

/// The part of the runner-written `JOB_RESPONSE_FILE` the driver trusts.
///
/// The runner writes the job payload it received from GitLab into its own 0700 temp dir
/// (mode 0600) before the first driver call. Unlike `CUSTOM_ENV_*`, its top-level fields
/// come from GitLab and the runner: no CI variable of the job can change them. Only
/// `jacamar-auth` can read it (a downscoped `jacamar` cannot enter the runner's temp dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResponse {
    /// The job's id as GitLab assigned it (`id`).
    pub id: u64,
    /// `git_info.repo_url`: the project's clone URL on the GitLab server that sent the job
    /// (it carries the job token as `gitlab-ci-token:<token>@`).
    pub repo_url: Option<String>,
    /// `runner_info.timeout`: the job's maximum duration, as GitLab set it.
    pub timeout: Option<Duration>,
    /// `image`: the job's `image:` (`None` when the name is empty), unchecked: see
    /// `crate::container` for the checks before any of it reaches a tool.
    pub image: Option<JobImage>,
    /// `credentials` of type `registry` (the others are the runner's business).
    pub registry_credentials: Vec<RegistryCredential>,
}

/// A job's `image:` as the job response gives it (`image.name`, `image.entrypoint`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobImage {
    pub name: String,
    /// Empty: the image's own entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
}

/// One `credentials` entry of type `registry`: `url` is `HOST[:PORT]` (no scheme); GitLab
/// sends `gitlab-ci-token` and the job token for its own registry. Its `Debug` never shows
/// the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A `JOB_RESPONSE_FILE` that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("JOB_RESPONSE_FILE is not set: the runner sets it for every driver call (GitLab Runner 15 or later is required)")]
    NotSet,
    #[error("failed to read the runner's job response {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runner's job response {path} is not valid: {why}")]
    Invalid {
        path: PathBuf,
        #[source]
        why: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct RawResponse {
    id: u64,
    #[serde(default)]
    git_info: Option<RawGitInfo>,
    #[serde(default)]
    runner_info: Option<RawRunnerInfo>,
    #[serde(default)]
    image: Option<RawImage>,
    #[serde(default)]
    credentials: Option<Vec<RawCredential>>,
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawCredential {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
struct RawGitInfo {
    #[serde(default)]
    repo_url: Option<String>,
}

#[derive(Deserialize)]
struct RawRunnerInfo {
    #[serde(default)]
    timeout: Option<u64>,
}

impl JobResponse {
    /// Read the file named by `JOB_RESPONSE_FILE` in `env`.
    pub fn from_env_map(env: &BTreeMap<String, String>) -> Result<JobResponse, ResponseError> {
        let path = env
            .get("JOB_RESPONSE_FILE")
            .filter(|p| !p.is_empty())
            .ok_or(ResponseError::NotSet)?;
        Self::from_file(std::path::Path::new(path))
    }

    /// Read and parse `path`.
    pub fn from_file(path: &std::path::Path) -> Result<JobResponse, ResponseError> {
        let text = std::fs::read(path).map_err(|source| ResponseError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|why| ResponseError::Invalid {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Parse the JSON payload.
    pub fn parse(text: &[u8]) -> Result<JobResponse, serde_json::Error> {
        let raw: RawResponse = serde_json::from_slice(text)?;
        Ok(JobResponse {
            id: raw.id,
            repo_url: raw
                .git_info
                .and_then(|g| g.repo_url)
                .filter(|u| !u.is_empty()),
            timeout: raw
                .runner_info
                .and_then(|r| r.timeout)
                .filter(|t| *t > 0)
                .map(Duration::from_secs),
            image: raw.image.and_then(|i| {
                let name = i.name.filter(|n| !n.is_empty())?;
                Some(JobImage {
                    name,
                    entrypoint: i.entrypoint.unwrap_or_default(),
                })
            }),
            registry_credentials: raw
                .credentials
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.kind.as_deref() == Some("registry"))
                .map(|c| RegistryCredential {
                    url: c.url.unwrap_or_default(),
                    username: c.username.unwrap_or_default(),
                    password: c.password.unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// `scheme://host[:port]` of [`JobResponse::repo_url`], without the credentials: the
    /// origin of the GitLab server that sent the job.
    pub fn server_origin(&self) -> Option<String> {
        let url = self.repo_url.as_deref()?;
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() || !matches!(scheme, "http" | "https") {
            return None;
        }
        Some(format!("{scheme}://{host}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_a_job() {
        let e = env(&[
            ("CUSTOM_ENV_CI_JOB_ID", "42"),
            ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "abc123"),
            ("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID", "3"),
            ("CUSTOM_ENV_CI_PROJECT_PATH", "grp/proj"),
            ("CUSTOM_ENV_CI_JOB_TIMEOUT", "3600"),
            ("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true"),
            ("CUSTOM_ENV_JACAMAR_BASH_PROFILE_ONCE", "Yes"),
        ]);
        let j = JobContext::from_map(&e).unwrap();
        assert_eq!(j.job_id, 42);
        assert_eq!(j.concurrent_id, 3);
        assert_eq!(j.job_timeout, Some(Duration::from_secs(3600)));
        assert!(j.no_bash_profile && !j.etc_profile_only && j.bash_profile_once);
    }

    #[test]
    fn job_timeout_is_bounded() {
        let base = [
            ("CUSTOM_ENV_CI_JOB_ID", "42"),
            ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "abc123"),
            ("CUSTOM_ENV_CI_PROJECT_PATH", "grp/proj"),
        ];
        let with = |t: &str| {
            let mut e = env(&base);
            e.insert("CUSTOM_ENV_CI_JOB_TIMEOUT".into(), t.into());
            JobContext::from_map(&e)
        };
        assert_eq!(with("2592000").unwrap().job_timeout, Some(MAX_JOB_TIMEOUT));
        for bad in [
            "2592001",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "1h",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("CUSTOM_ENV_CI_JOB_TIMEOUT"), "{bad}: {e}");
        }
        assert!(with("18446744073709551615")
            .unwrap_err()
            .to_string()
            .contains("30 days"));
    }

    #[test]
    fn missing_and_invalid_are_named() {
        let e = env(&[("CUSTOM_ENV_CI_JOB_ID", "x")]);
        let err = JobContext::from_map(&e).unwrap_err().to_string();
        assert!(err.contains("CUSTOM_ENV_CI_JOB_ID"), "{err}");
        let err = JobContext::from_map(&env(&[])).unwrap_err();
        assert_eq!(err, JobError::Missing("CUSTOM_ENV_CI_JOB_ID"));
    }

    #[test]
    fn runner_codes_default_and_override() {
        let r = RunnerEnv::from_map(&env(&[]));
        assert_eq!(
            (r.build_failure_exit_code, r.system_failure_exit_code),
            (1, 2)
        );
        let r = RunnerEnv::from_map(&env(&[
            ("BUILD_FAILURE_EXIT_CODE", "11"),
            ("SYSTEM_FAILURE_EXIT_CODE", "12"),
        ]));
        assert_eq!(
            (r.build_failure_exit_code, r.system_failure_exit_code),
            (11, 12)
        );
    }

    #[test]
    fn job_response_fields_and_origin() {
        let r = JobResponse::parse(
            br#"{"id": 77, "token": "t", "git_info": {"repo_url": "https://gitlab-ci-token:t@gl.example:8443/g/p.git"},
                "runner_info": {"timeout": 3600}, "variables": []}"#,
        )
        .unwrap();
        assert_eq!(r.id, 77);
        assert_eq!(r.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(
            r.server_origin().as_deref(),
            Some("https://gl.example:8443")
        );
        let bare = JobResponse::parse(br#"{"id": 1}"#).unwrap();
        assert_eq!((bare.repo_url, bare.timeout), (None, None));
        assert!(JobResponse::parse(b"{}").is_err());
        assert!(JobResponse::parse(br#"{"id": -1}"#).is_err());
        let e = JobResponse::from_env_map(&BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("JOB_RESPONSE_FILE"), "{e}");
    }

    #[test]
    fn job_response_image_and_registry_credentials() {
        let r = JobResponse::parse(
            br#"{"id": 5, "image": {"name": "reg:5050/g/i:1", "entrypoint": ["/bin/sh", "-c"], "alias": "x"},
                "credentials": [{"type": "registry", "url": "reg:5050", "username": "gitlab-ci-token", "password": "glcbt-p"},
                                {"type": "other", "url": "o", "username": "u", "password": "q"}]}"#,
        )
        .unwrap();
        let image = r.image.unwrap();
        assert_eq!(image.name, "reg:5050/g/i:1");
        assert_eq!(image.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(r.registry_credentials.len(), 1);
        assert_eq!(r.registry_credentials[0].url, "reg:5050");
        let shown = format!("{:?}", r.registry_credentials[0]);
        assert!(!shown.contains("glcbt-p"), "{shown}");
        let none = JobResponse::parse(br#"{"id": 5, "image": {"name": ""}, "credentials": null}"#)
            .unwrap();
        assert_eq!((none.image, none.registry_credentials.len()), (None, 0));
    }

    /// Newer runners' keys (`run`, `inputs`, `policy_options`, `suspend_options`,
    /// `image.executor_opts`, `image.pull_policy`), unknown ones, and unknown keys inside
    /// `git_info` and `runner_info` are ignored; `null` objects read as absent.
    #[test]
    fn job_response_ignores_keys_it_does_not_read() {
        let r = JobResponse::parse(
            br#"{"id": 78, "run": "[]", "inputs": {"n": 3}, "hooks": [],
                "policy_options": {"execution_policy_job": true}, "suspend_options": {},
                "image": {"name": "a", "pull_policy": ["always"],
                          "executor_opts": {"docker": {"platform": "amd64"}}},
                "git_info": {"repo_url": "https://h.example/g/p.git", "repo_object_format": "sha1"},
                "runner_info": {"timeout": 60, "future": {"x": [1]}},
                "a_key_of_the_future": [{"deep": null}]}"#,
        )
        .unwrap();
        assert_eq!(r.id, 78);
        assert_eq!(r.timeout, Some(Duration::from_secs(60)));
        assert_eq!(r.server_origin().as_deref(), Some("https://h.example"));
        let r =
            JobResponse::parse(br#"{"id": 79, "git_info": null, "runner_info": null}"#).unwrap();
        assert_eq!((r.repo_url, r.timeout), (None, None));
    }

    #[test]
    fn clone_url_token() {
        let tok = "glcbt-64_AbC9-x_yZ";
        assert_eq!(
            token_in_clone_url(&format!("https://gitlab-ci-token:{tok}@gl.example/g/p.git"))
                .as_deref(),
            Some(tok)
        );
        assert_eq!(token_in_clone_url("https://gl.example/g/p.git"), None);
        assert_eq!(
            token_in_clone_url("https://other:x@gl.example/g/p.git"),
            None
        );
        assert_eq!(
            token_in_clone_url("https://gitlab-ci-token:a%40b@gl.example/g/p.git"),
            None
        );
        assert_eq!(
            token_in_clone_url("https://gitlab-ci-token:@gl.example/"),
            None
        );
    }
}
