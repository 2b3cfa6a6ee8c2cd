//! The job's environment, built from an allowlist.
//!
//! Nothing of the runner's or the service account's environment is inherited wholesale: no
//! runner secrets, no `LD_PRELOAD`/`LD_LIBRARY_PATH`, no `TMPDIR` pointing into the runner's
//! private temp dir. The runner's generated scripts export the CI variables themselves.

use crate::protocol::Account;

/// Default PATH of a job (bash --login usually replaces it from /etc/profile).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

#[cfg(test)]
mod tests {
    use super::*;

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
