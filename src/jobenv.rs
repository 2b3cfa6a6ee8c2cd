//! The job's environment, built from an allowlist, and the checks of the CI variables that
//! refuse a job (over-long, or deciding where the job token goes).
//!
//! Layering: at the auth/batch/shell layer. It may import `config`, `job`, `protocol` and
//! `shell`; never `authz`, `privdrop`, `stages` or a binary.
//!
//! Nothing of the runner's or the service account's environment is inherited wholesale: no
//! runner secrets, no `LD_PRELOAD`/`LD_LIBRARY_PATH`, no `TMPDIR` pointing into the runner's
//! private temp dir. The runner's generated scripts export the CI variables themselves.

use std::collections::BTreeMap;
use std::path::Path;

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

/// CI variables that refuse a job (their full text is for the CI user: it names the
/// variable, never its value).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("CI variable {name} is {len} characters long, more than max_env_chars ({max}) allows")]
    TooLong {
        name: String,
        len: usize,
        max: usize,
    },
    /// CI variables that would decide where the job token goes (see
    /// [`reserved_git_variable`]): their names, never their values.
    #[error("{}", reserved_message(.0))]
    Reserved(Vec<String>),
}

/// `max_env_chars`: every `CUSTOM_ENV_` variable (the job's CI variables) must be at most
/// `max` characters long. The error names the variable, never its value.
pub fn check_sizes(env: &BTreeMap<String, String>, max: usize) -> Result<(), EnvError> {
    for (k, v) in env {
        if k.starts_with("CUSTOM_ENV_") {
            let len = v.chars().count();
            if len > max {
                return Err(EnvError::TooLong {
                    name: k.trim_start_matches("CUSTOM_ENV_").to_string(),
                    len,
                    max,
                });
            }
        }
    }
    Ok(())
}

/// Whether the job variable `name` is reserved while the driver manages git's credentials
/// (unless `unrestricted_cmd_line`): [`ASKPASS_ORIGIN_VAR`] and the git variables of
/// [`askpass_env`] (`GIT_ASKPASS`, `GIT_TERMINAL_PROMPT`, `GIT_CONFIG_COUNT`,
/// `GIT_CONFIG_KEY_<n>`, `GIT_CONFIG_VALUE_<n>`), and `GIT_CONFIG_PARAMETERS`, which git
/// reads after `GIT_CONFIG_COUNT`: a `credential.helper` there would come after our empty
/// one and be given the token to store. The runner's script exports every CI variable over
/// the environment `jacamar` set, so any of these would decide where the job token goes.
/// Helpers from config files (system, `HOME`, `GIT_CONFIG_GLOBAL`) come before the
/// command-scope reset and are cleared by it; the user's own opt-ins (`JACAMAR_NO_BASH_PROFILE`,
/// ...) and other git variables (`GIT_STRATEGY`, `GIT_CONFIG_NOSYSTEM`) are not reserved.
pub fn reserved_git_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        ASKPASS_ORIGIN_VAR,
        "GIT_ASKPASS",
        "GIT_TERMINAL_PROMPT",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_PARAMETERS",
    ];
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    EXACT.contains(&name) || numbered("GIT_CONFIG_KEY_") || numbered("GIT_CONFIG_VALUE_")
}

/// Refuse a job whose CI variables (`CUSTOM_ENV_<NAME>`: exactly what the runner's script
/// exports) set a name of [`reserved_git_variable`]. The error names every such variable,
/// never a value.
pub fn check_reserved(env: &BTreeMap<String, String>) -> Result<(), EnvError> {
    let names: Vec<String> = env
        .keys()
        .filter_map(|k| k.strip_prefix("CUSTOM_ENV_"))
        .filter(|n| reserved_git_variable(n))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(EnvError::Reserved(names))
    }
}

/// The text of [`EnvError::Reserved`] for `names`.
pub fn reserved_message(names: &[String]) -> String {
    let (what, verb) = if names.len() == 1 {
        ("the CI variable", "is")
    } else {
        ("the CI variables", "are")
    };
    format!(
        "job refused: {what} {} {verb} reserved by the CI driver because {} where git sends \
         the job token (the driver gives it only to the job's GitLab server); remove {} from \
         the job's variables (.gitlab-ci.yml, and the project's, group's or instance's CI/CD \
         variables, or the pipeline's)",
        names.join(", "),
        if names.len() == 1 {
            "it decides"
        } else {
            "they decide"
        },
        if names.len() == 1 { "it" } else { "them" },
    )
}

/// The user name git is given for job-token authentication.
pub use crate::job::TOKEN_USER;

/// The handoff variable naming the origin whose credential prompts `jacamar` answers as
/// `GIT_ASKPASS` (`scheme://host:port`, see [`Origin`]).
pub const ASKPASS_ORIGIN_VAR: &str = "JACAMAR_ASKPASS_ORIGIN";

/// The scheme, host and port of an `http`/`https` URL: what git's credential prompts are
/// matched on. The host is lowercased; a missing port is the scheme's default (443, 80),
/// so `https://h` and `https://h:443` are the same origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parse `scheme://[user[:password]@]host[:port][/path]`; `None` for another scheme, an
    /// empty host, a port that is not a number, or a host with characters no host has.
    pub fn parse(url: &str) -> Option<Origin> {
        let (scheme, rest) = url.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next()?;
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (
                format!("[{h}]"),
                after.strip_prefix(':').or(after.is_empty().then_some("")),
            )
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), Some("")),
            }
        };
        let port = match port? {
            "" => default,
            p => p.parse().ok()?,
        };
        let host = host.to_ascii_lowercase();
        let bad = |c: char| c.is_whitespace() || c.is_control() || "'\"<>\\^`{|}%".contains(c);
        if host.is_empty() || host == "[]" || host.contains(bad) {
            return None;
        }
        Some(Origin { scheme, host, port })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The origins whose credential prompts get the job token: `[general] gitlab_server` and
/// the origin of the clone URL in the runner's job response (the runner's `clone_url` may
/// name another host than the server; the job's own clone must still authenticate). Both are
/// written by the admin or the runner, never by a CI variable. Duplicates are dropped; empty
/// when neither gives an http(s) origin.
pub fn askpass_origins(
    gitlab_server: Option<&str>,
    response: Option<&crate::job::JobResponse>,
) -> Vec<Origin> {
    let from_response = response.and_then(|r| r.server_origin());
    let mut out: Vec<Origin> = Vec::new();
    for o in [
        gitlab_server.and_then(Origin::parse),
        from_response.as_deref().and_then(Origin::parse),
    ]
    .into_iter()
    .flatten()
    {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out
}

/// The variables that make git ask `jacamar` (as `GIT_ASKPASS`) for the job token, which
/// it answers from the `CI_JOB_TOKEN` the runner's script exports, and only for `origins`
/// ([`ASKPASS_ORIGIN_VAR`], space-separated; without one it answers nothing). The
/// credential helpers are reset (an empty `credential.helper`) so the token is never stored
/// on disk, and git never falls back to a terminal prompt. `credential.interactive` is set:
/// the runner's template configuration says `never`, with which git 2.46 and later no longer
/// ask `GIT_ASKPASS` at all (upstream's `ff_git_interactive`; always on here, the terminal
/// stays off by `GIT_TERMINAL_PROMPT=0`). These are command-scope entries: they come after
/// every configuration file, the runner's template and the repository's config included.
pub fn askpass_env(jacamar: &Path, origins: &[Origin]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("GIT_ASKPASS", jacamar.display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
        ("GIT_CONFIG_COUNT", "2".to_string()),
        ("GIT_CONFIG_KEY_0", "credential.helper".to_string()),
        ("GIT_CONFIG_VALUE_0", String::new()),
        ("GIT_CONFIG_KEY_1", "credential.interactive".to_string()),
        ("GIT_CONFIG_VALUE_1", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !origins.is_empty() {
        let list: Vec<String> = origins.iter().map(Origin::to_string).collect();
        env.push((ASKPASS_ORIGIN_VAR.to_string(), list.join(" ")));
    }
    env
}

/// What `jacamar` does when started with one argument that may be git's askpass prompt.
#[derive(Debug, PartialEq, Eq)]
pub enum Askpass {
    /// Not a credential prompt: `jacamar` goes on as usual.
    NotAPrompt,
    /// Print this line and exit 0.
    Answer(String),
    /// Print nothing on stdout, this reason on stderr, and exit non-zero (git then fails).
    Refuse(String),
}

/// The answer to git's credential prompt `prompt` (`Username for '<url>': ` or
/// `Password for '<url>': `, git's `<url>` being `scheme://[user@]host[:port]`): the user
/// `gitlab-ci-token`, or `job_token`, and only when `<url>` has one of the origins in
/// `trusted` ([`ASKPASS_ORIGIN_VAR`], space-separated). Any other host, scheme or port, an
/// unparsable prompt URL, no trusted origin, or no job token is refused.
pub fn askpass(prompt: &str, job_token: Option<&str>, trusted: Option<&str>) -> Askpass {
    let (password, rest) = if let Some(r) = prompt.strip_prefix("Username for '") {
        (false, r)
    } else if let Some(r) = prompt.strip_prefix("Password for '") {
        (true, r)
    } else {
        return Askpass::NotAPrompt;
    };
    let Some(url) = rest.rsplit_once('\'').map(|(u, _)| u) else {
        return Askpass::Refuse("git's credential prompt has no quoted URL".into());
    };
    let Some(asked) = Origin::parse(url) else {
        return Askpass::Refuse("git's credential prompt names no http(s) host".into());
    };
    let trusted: Vec<Origin> = trusted
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(Origin::parse)
        .collect();
    if trusted.is_empty() {
        return Askpass::Refuse(format!(
            "no job token for {asked}: the job's GitLab server is unknown \
             ([general] gitlab_server is unset and the runner's job response has no clone URL)"
        ));
    }
    if !trusted.contains(&asked) {
        let list: Vec<String> = trusted.iter().map(Origin::to_string).collect();
        return Askpass::Refuse(format!(
            "no job token for {asked}: only the job's GitLab server ({}) gets it",
            list.join(", ")
        ));
    }
    if !password {
        return Askpass::Answer(TOKEN_USER.to_string());
    }
    match job_token.filter(|t| !t.is_empty()) {
        Some(t) => Askpass::Answer(t.to_string()),
        None => Askpass::Refuse(format!("no job token for {asked}: CI_JOB_TOKEN is not set")),
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
    fn reserved_names_are_the_ones_that_steer_the_token() {
        for name in [
            "JACAMAR_ASKPASS_ORIGIN",
            "GIT_ASKPASS",
            "GIT_TERMINAL_PROMPT",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_PARAMETERS",
            "GIT_CONFIG_KEY_0",
            "GIT_CONFIG_VALUE_0",
            "GIT_CONFIG_KEY_7",
            "GIT_CONFIG_VALUE_12",
        ] {
            assert!(reserved_git_variable(name), "{name}");
        }
        for name in [
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
            "GIT_CONFIG_KEY_",
            "GIT_CONFIG_KEY_x",
            "GIT_STRATEGY",
            "GIT_DEPTH",
            "JACAMAR_NO_BASH_PROFILE",
            "JACAMAR_ETC_PROFILE_ONLY",
            "JACAMAR_LIMIT_BUILD_DIR",
            "JACAMAR_REUSE_ALLOCATION",
            "git_askpass",
            "CI_JOB_TOKEN",
        ] {
            assert!(!reserved_git_variable(name), "{name}");
        }
    }

    #[test]
    fn reserved_variables_are_named_never_shown() {
        let mut env = BTreeMap::new();
        env.insert(
            "CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE".to_string(),
            "true".to_string(),
        );
        env.insert("GIT_ASKPASS".to_string(), "/runner/own".to_string());
        assert!(check_reserved(&env).is_ok(), "the runner's own variables");
        env.insert(
            "CUSTOM_ENV_JACAMAR_ASKPASS_ORIGIN".to_string(),
            "https://evil.example".to_string(),
        );
        env.insert(
            "CUSTOM_ENV_GIT_CONFIG_VALUE_12".to_string(),
            "secretvalue".to_string(),
        );
        // As authorization reports it: the CI user sees the whole text.
        let e = crate::authz::AuthError::from(check_reserved(&env).unwrap_err());
        assert!(e.user_facing());
        let e = e.to_string();
        assert!(
            e.contains("GIT_CONFIG_VALUE_12, JACAMAR_ASKPASS_ORIGIN are reserved")
                && e.contains("job token")
                && !e.contains("evil")
                && !e.contains("secretvalue")
                && !e.contains("NO_BASH_PROFILE"),
            "{e}"
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |u: &str| Origin::parse(u).map(|o| o.to_string());
        assert_eq!(
            o("https://GL.example").as_deref(),
            Some("https://gl.example:443")
        );
        assert_eq!(o("https://gl.example:443/g/p.git"), o("https://gl.example"));
        assert_eq!(
            o("http://u:p@gl.example/x").as_deref(),
            Some("http://gl.example:80")
        );
        assert_eq!(
            o("https://[::1]:8443/x").as_deref(),
            Some("https://[::1]:8443")
        );
        assert_eq!(o("https://[::1]").as_deref(), Some("https://[::1]:443"));
        for bad in [
            "ssh://gl.example",
            "https://",
            "https://h:x",
            "gl.example",
            "https://[::1",
        ] {
            assert_eq!(o(bad), None, "{bad}");
        }
    }

    #[test]
    fn askpass_answers_only_the_trusted_origin() {
        let trusted = Some("https://gl.example:443");
        let ask = |p: &str| askpass(p, Some("tok"), trusted);
        let answer = |s: &str| Askpass::Answer(s.to_string());
        assert_eq!(
            ask("Username for 'https://gl.example': "),
            answer("gitlab-ci-token")
        );
        assert_eq!(
            ask("Username for 'https://gl.example:443': "),
            answer("gitlab-ci-token")
        );
        assert_eq!(
            ask("Password for 'https://gitlab-ci-token@gl.example': "),
            answer("tok")
        );
        assert_eq!(
            ask("Password for 'https://GL.EXAMPLE/g/p.git': "),
            answer("tok")
        );
        for other in [
            "Password for 'https://gitlab-ci-token@github.com': ",
            "Password for 'http://gitlab-ci-token@gl.example': ",
            "Password for 'https://gitlab-ci-token@gl.example:8443': ",
            "Username for 'https://gl.example.evil.com': ",
            "Password for 'https://gl.example@evil.com': ",
            "Password for 'gl.example': ",
            "Password for 'https://gl.example",
        ] {
            match ask(other) {
                Askpass::Refuse(why) => assert!(!why.contains("tok\n"), "{why}"),
                a => panic!("{other}: {a:?}"),
            }
        }
        assert_eq!(ask("--control-fd"), Askpass::NotAPrompt);
        assert!(matches!(
            askpass("Password for 'https://gl.example': ", Some("tok"), None),
            Askpass::Refuse(w) if w.contains("gitlab_server")
        ));
        assert!(matches!(
            askpass("Password for 'https://gl.example': ", None, trusted),
            Askpass::Refuse(w) if w.contains("CI_JOB_TOKEN")
        ));
    }

    #[test]
    fn askpass_trusts_gitlab_server_and_the_runners_clone_url() {
        let r = crate::job::JobResponse::parse(
            br#"{"id": 1, "git_info": {"repo_url": "https://gitlab-ci-token:t@clone.example/g/p.git"}}"#,
        )
        .unwrap();
        let o = |s: Option<&str>, r| {
            askpass_origins(s, r)
                .iter()
                .map(Origin::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        // The runner's clone_url may differ from the server: the job's own clone must work.
        let both = o(Some("https://gl.example/"), Some(&r));
        assert_eq!(both, "https://gl.example:443 https://clone.example:443");
        for host in ["gl.example", "clone.example"] {
            assert_eq!(
                askpass(
                    &format!("Password for 'https://gitlab-ci-token@{host}': "),
                    Some("t"),
                    Some(&both)
                ),
                Askpass::Answer("t".into())
            );
        }
        assert!(matches!(
            askpass("Password for 'https://evil.example': ", Some("t"), Some(&both)),
            Askpass::Refuse(w) if w.contains("https://gl.example:443, https://clone.example:443")
        ));
        assert_eq!(
            o(Some("https://clone.example:443"), Some(&r)),
            "https://clone.example:443"
        );
        assert_eq!(o(None, Some(&r)), "https://clone.example:443");
        assert_eq!(o(None, None), "");
        let env = askpass_env(Path::new("/j"), &[Origin::parse("http://h:8").unwrap()]);
        assert!(env.contains(&(ASKPASS_ORIGIN_VAR.to_string(), "http://h:8".to_string())));
        assert!(!askpass_env(Path::new("/j"), &[])
            .iter()
            .any(|(k, _)| k == ASKPASS_ORIGIN_VAR));
    }

    /// The runner's template config says `credential.interactive = never` (git 2.46 and later
    /// then never ask GIT_ASKPASS) and a repository or profile may name credential helpers:
    /// git itself reads our command-scope entries last, so they win.
    #[test]
    fn our_git_entries_come_after_every_config_file() {
        let git = crate::shell::find_on_path("git", DEFAULT_PATH);
        if !crate::test_support::require(git.is_some(), "git is not installed") {
            return;
        }
        let (dir, cfg) = crate::test_support::temp_file(
            "template.cfg",
            "[credential]\n\tinteractive = never\n\thelper = store\n",
        );
        let env = askpass_env(Path::new("/j"), &[]);
        let get = |key: &str| {
            let out = std::process::Command::new(git.as_ref().unwrap())
                .args(["config", "--get-all", key])
                .env_clear()
                .env("HOME", dir.path())
                .env("GIT_CONFIG_GLOBAL", &cfg)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir.path())
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(get("credential.interactive"), "never\ntrue\n");
        assert_eq!(
            get("credential.helper"),
            "store\n\n",
            "the empty helper comes last"
        );
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
