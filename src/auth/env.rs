//! The job's environment, built from an allowlist.
//!
//! Nothing of the runner's or the service account's environment is inherited wholesale: no
//! runner secrets, no `LD_PRELOAD`/`LD_LIBRARY_PATH`, no `TMPDIR` pointing into the runner's
//! private temp dir. The runner's generated scripts export the CI variables themselves.

use std::collections::BTreeMap;
use std::path::Path;

use super::AuthError;
use crate::protocol::Account;

/// Default PATH of a job (bash --login usually replaces it from /etc/profile).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `PATH` of a job environment (`DEFAULT_PATH` when it has none): where the job's
/// shell and the scheduler's commands are looked up.
pub fn search_path(env: &[(String, String)]) -> &str {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
}

/// Variables of the driver's own environment passed through unchanged.
const PASS_THROUGH: &[&str] = &["LANG", "LANGUAGE", "TZ", "TERM"];

/// Build the job's environment for `account` from the driver's environment `from`.
pub fn job_env<'a>(
    account: &Account,
    from: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_string(), account.home.display().to_string()),
        ("USER".to_string(), account.name.clone()),
        ("LOGNAME".to_string(), account.name.clone()),
        ("SHELL".to_string(), account.shell.display().to_string()),
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
    ];
    for (k, v) in from {
        if PASS_THROUGH.contains(&k) || (k.starts_with("LC_") && k.len() > 3) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

/// `max_env_chars`: every `CUSTOM_ENV_` variable (the job's CI variables) must be at most
/// `max` characters long. The error names the variable, never its value.
pub fn check_sizes(env: &BTreeMap<String, String>, max: usize) -> Result<(), AuthError> {
    for (k, v) in env {
        if k.starts_with("CUSTOM_ENV_") {
            let len = v.chars().count();
            if len > max {
                return Err(AuthError::EnvTooLong {
                    name: k.trim_start_matches("CUSTOM_ENV_").to_string(),
                    len,
                    max,
                });
            }
        }
    }
    Ok(())
}

/// The user name git is given for job-token authentication.
pub const TOKEN_USER: &str = "gitlab-ci-token";

/// Keep the job token off command lines: the runner's scripts write clone/fetch URLs as
/// `https://gitlab-ci-token:<token>@host/...`, which ends up in git's argv, readable by
/// every local user in /proc. The token is removed from such URLs (git then asks
/// `GIT_ASKPASS`, see [`askpass_env`]). Returns the script unchanged when `token` is empty.
pub fn strip_token_from_urls(script: &str, token: &str) -> String {
    if token.is_empty() {
        return script.to_string();
    }
    script.replace(&format!("{TOKEN_USER}:{token}@"), &format!("{TOKEN_USER}@"))
}

/// The variables that make git ask `jacamar` (as `GIT_ASKPASS`) for the job token, which
/// it answers from the `CI_JOB_TOKEN` the runner's script exports; the credential helpers
/// are reset (an empty `credential.helper`) so the token is never stored on disk.
pub fn askpass_env(jacamar: &Path) -> Vec<(String, String)> {
    [
        ("GIT_ASKPASS", jacamar.display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
        ("GIT_CONFIG_COUNT", "1".to_string()),
        ("GIT_CONFIG_KEY_0", "credential.helper".to_string()),
        ("GIT_CONFIG_VALUE_0", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `jacamar` started by git as `GIT_ASKPASS` with `prompt`: the answer to print, if this is
/// an askpass call (`Username for '...': ` or `Password for '...': `).
pub fn askpass_answer(prompt: &str, job_token: Option<&str>) -> Option<String> {
    if prompt.starts_with("Username for ") {
        Some(TOKEN_USER.to_string())
    } else if prompt.starts_with("Password for ") {
        Some(job_token.unwrap_or_default().to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_variables_are_named_not_shown() {
        let mut env = BTreeMap::new();
        env.insert("CUSTOM_ENV_OK".to_string(), "x".repeat(10));
        env.insert("RUNNER_OWN".to_string(), "y".repeat(100));
        assert!(check_sizes(&env, 10).is_ok());
        env.insert("CUSTOM_ENV_BIG".to_string(), "secretvalue".repeat(3));
        let e = check_sizes(&env, 10).unwrap_err().to_string();
        assert!(
            e.contains("BIG") && e.contains("33") && !e.contains("secretvalue"),
            "{e}"
        );
    }

    #[test]
    fn token_leaves_urls() {
        let s =
            "git remote set-url origin \"https://gitlab-ci-token:glcbt-abc@gl.example/g/p.git\"\n";
        let out = strip_token_from_urls(s, "glcbt-abc");
        assert!(!out.contains("glcbt-abc"), "{out}");
        assert!(out.contains("https://gitlab-ci-token@gl.example/g/p.git"));
        assert_eq!(strip_token_from_urls(s, ""), s);
    }

    #[test]
    fn askpass_answers() {
        assert_eq!(
            askpass_answer("Username for 'https://gl.example': ", Some("t")).as_deref(),
            Some("gitlab-ci-token")
        );
        assert_eq!(
            askpass_answer(
                "Password for 'https://gitlab-ci-token@gl.example': ",
                Some("t")
            )
            .as_deref(),
            Some("t")
        );
        assert_eq!(askpass_answer("--control-fd", Some("t")), None);
    }

    #[test]
    fn only_the_allowlist_passes() {
        let a = Account {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        };
        let from = [
            ("LD_PRELOAD", "/evil.so"),
            ("LD_LIBRARY_PATH", "/evil"),
            ("RUNNER_TOKEN", "secret"),
            ("TMPDIR", "/tmp/custom-executor1"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("HOME", "/root"),
        ];
        let env = job_env(&a, from);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "LC_ALL"]
        );
        assert_eq!(env[0].1, "/home/alice");
    }
}
