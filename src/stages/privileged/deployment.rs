//! What in this process would fail every job of a configuration, or make it unsafe:
//! checked by `jacamar-auth validate`, and by every stage before it reads the job.

use std::path::Path;

use crate::config::{Config, Downscope};

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
    problems.extend(container_problems(config));
    if config.auth.downscope != Downscope::Setuid || nix::unistd::geteuid().is_root() {
        return problems;
    }
    use crate::sys::caps::{effective_has, CAP_SETGID, CAP_SETUID};
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

/// `run_mechanism`'s tools, as a job would find them (`application_path`, else the jobs'
/// default PATH): present and executable (Charliecloud: `ch-image`, `ch-convert` and `ch-run`,
/// and user namespaces not switched off). Subordinate id ranges are per account: a job
/// without them fails naming the account (see `container::classify`).
pub fn container_problems(config: &Config) -> Vec<String> {
    use crate::config::RunMechanism;
    let path = crate::jobenv::DEFAULT_PATH;
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let mut problems = Vec::new();
    match config.general.run_mechanism {
        None => {}
        Some(RunMechanism::Podman) => {
            match &config.general.podman.application_path {
                Some(p) if !executable(p) => problems.push(format!(
                    "[general.podman] application_path = {:?}: no executable file there",
                    p.display().to_string()
                )),
                Some(_) => {}
                None if crate::shell::find_on_path("podman", path).is_none() => problems.push(format!(
                    "[general] run_mechanism = \"podman\": podman is not on the jobs' PATH ({path}); install it or set [general.podman] application_path"
                )),
                None => {}
            }
            if crate::shell::find_on_path("newuidmap", path).is_none() {
                problems.push(format!(
                    "[general] run_mechanism = \"podman\": newuidmap is not on the jobs' PATH ({path}); rootless podman needs it (Debian: the uidmap package)"
                ));
            }
        }
        Some(RunMechanism::Charliecloud) => {
            for tool in crate::container::charliecloud::TOOLS {
                let found = match &config.general.charliecloud.application_path {
                    Some(dir) => executable(&dir.join(tool)),
                    None => crate::shell::find_on_path(tool, path).is_some(),
                };
                if !found {
                    problems.push(match &config.general.charliecloud.application_path {
                        Some(dir) => format!(
                            "[general.charliecloud] application_path = {:?}: no executable {tool} there",
                            dir.display().to_string()
                        ),
                        None => format!(
                            "[general] run_mechanism = \"charliecloud\": {tool} is not on the jobs' PATH ({path}); install Charliecloud or set [general.charliecloud] application_path to the directory holding it"
                        ),
                    });
                }
            }
            // ch-run needs unprivileged user namespaces (what ch-checkns checks).
            let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            if max == Some(0) {
                problems.push(
                    "[general] run_mechanism = \"charliecloud\": /proc/sys/user/max_user_namespaces is 0, so ch-run cannot make the user namespace it needs; raise it (sysctl user.max_user_namespaces)".into(),
                );
            }
        }
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
    } else if !matches!(crate::sys::caps::held(), Ok(0)) {
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
    match crate::sys::caps::held() {
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

    fn config(extra: &str) -> Config {
        Config::from_str_named(
            &format!("[general]\nexecutor = \"shell\"\ndata_dir = \"/d\"\n{extra}\n[auth]\ndownscope = \"none\"\n"),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn validate_names_a_missing_container_tool() {
        assert!(container_problems(&config("")).is_empty());
        let p = container_problems(&config(
            "run_mechanism = \"podman\"\n[general.podman]\napplication_path = \"/nonexistent/podman\"",
        ));
        assert!(
            p.iter()
                .any(|m| m.contains("[general.podman] application_path")),
            "{p:?}"
        );
        let p = container_problems(&config(
            "run_mechanism = \"charliecloud\"\n[general.charliecloud]\napplication_path = \"/nonexistent\"",
        ));
        assert!(
            p.iter().any(|m| m.contains(
                "[general.charliecloud] application_path = \"/nonexistent\": no executable ch-run there"
            )),
            "{p:?}"
        );
        assert!(!p.iter().any(|m| m.contains("not supported")), "{p:?}");
    }
}
