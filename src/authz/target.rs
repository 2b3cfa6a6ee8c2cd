//! Which local accounts a job may be switched to with `downscope = "setuid"` or `"sudo"`.
//!
//! Refused, in this order, each with a message naming the account and the rule:
//! 1. uid 0;
//! 2. jacamar-auth's own account (its real or effective uid: the runner's account, e.g. a
//!    caps-only service account), whatever `minimum_uid` says;
//! 3. a uid below the floor: `[auth] minimum_uid`, else `UID_MIN` of /etc/login.defs, else
//!    1000 (system accounts such as `daemon`, `munge`, `slurm`);
//! 4. a nologin shell, unless `[auth] allow_nologin_shells = true`: a shell whose file name
//!    is `nologin` or `false` (`/usr/sbin/nologin`, `/sbin/nologin`, `/bin/false`,
//!    `/usr/bin/false`, ...), or one not listed in /etc/shells when that file exists. An
//!    empty shell field means `/bin/sh` (passwd(5)). jacamar runs bash explicitly, so the
//!    account's shell would not stop a job by itself.
//!
//! With `downscope = "none"` no account is switched to and none of this applies: the job
//! runs as jacamar-auth's own account, which the administrator chose.

use std::path::{Path, PathBuf};

use super::AuthError;
use crate::config::Auth;

/// The floor when neither `minimum_uid` nor /etc/login.defs gives one.
pub const DEFAULT_UID_MIN: u32 = 1000;
/// Where `UID_MIN` is read.
pub const LOGIN_DEFS: &str = "/etc/login.defs";
/// The list of login shells.
pub const SHELLS: &str = "/etc/shells";

/// The account a job would run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub uid: u32,
    pub shell: PathBuf,
}

impl Candidate {
    pub fn of(u: &nix::unistd::User) -> Candidate {
        Candidate {
            name: u.name.clone(),
            uid: u.uid.as_raw(),
            shell: u.shell.clone(),
        }
    }
}

/// What the rules need to know about this host and process.
#[derive(Debug, Clone)]
pub struct Host {
    /// jacamar-auth's real and effective uid.
    pub own_uids: [u32; 2],
    /// `UID_MIN` of /etc/login.defs, if it has a readable one.
    pub login_defs_uid_min: Option<u32>,
    /// The lines of /etc/shells: `Ok(None)` when the file does not exist.
    pub shells: Result<Option<Vec<String>>, ShellsUnreadable>,
}

/// /etc/shells exists but could not be read (shared: a [`Host`] is cloned).
#[derive(Debug, Clone, thiserror::Error)]
#[error("failed to read {SHELLS}: {0}")]
pub struct ShellsUnreadable(pub std::sync::Arc<std::io::Error>);

impl Host {
    pub fn system() -> Host {
        Host {
            own_uids: [
                nix::unistd::getuid().as_raw(),
                nix::unistd::geteuid().as_raw(),
            ],
            login_defs_uid_min: std::fs::read_to_string(LOGIN_DEFS)
                .ok()
                .and_then(|t| uid_min_of(&t)),
            shells: match std::fs::read_to_string(SHELLS) {
                Ok(t) => Ok(Some(shells_of(&t))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ShellsUnreadable(std::sync::Arc::new(e))),
            },
        }
    }
}

/// `UID_MIN` of a login.defs text (decimal, `0x` hex or `0` octal, as shadow-utils reads it).
pub fn uid_min_of(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next() != Some("UID_MIN") {
            return None;
        }
        let v = w.next()?;
        if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16).ok()
        } else if v.len() > 1 && v.starts_with('0') {
            u32::from_str_radix(&v[1..], 8).ok()
        } else {
            v.parse().ok()
        }
    })
}

/// The shells listed in an /etc/shells text (comments and blank lines skipped).
pub fn shells_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The rules of this module against the system's files and our own uids.
pub fn check(auth: &Auth, c: &Candidate) -> Result<(), AuthError> {
    check_with(auth, c, &Host::system())
}

/// The rules of this module for `c` on `host`.
pub fn check_with(auth: &Auth, c: &Candidate, host: &Host) -> Result<(), AuthError> {
    let refuse = |why: String| Err(AuthError::Refused(why));
    if c.uid == 0 {
        return refuse(format!(
            "the job's account {} is uid 0; jobs never run as root",
            c.name
        ));
    }
    if host.own_uids.contains(&c.uid) {
        return refuse(format!(
            "the job's account {} (uid {}) is jacamar-auth's own account (the runner's); \
             jobs never run as it with downscope = \"{}\"",
            c.name,
            c.uid,
            auth.downscope.as_str()
        ));
    }
    let (floor, from) = match (auth.minimum_uid, host.login_defs_uid_min) {
        (Some(m), _) => (m, "[auth] minimum_uid".to_string()),
        (None, Some(m)) => (
            m,
            format!("UID_MIN of {LOGIN_DEFS}; [auth] minimum_uid overrides it"),
        ),
        (None, None) => (
            DEFAULT_UID_MIN,
            format!("the default, {LOGIN_DEFS} has no UID_MIN; [auth] minimum_uid overrides it"),
        ),
    };
    if c.uid < floor {
        return refuse(format!(
            "the job's account {} (uid {}) is below the minimum uid {floor} ({from}): system \
             accounts never run jobs",
            c.name, c.uid
        ));
    }
    if auth.allow_nologin_shells {
        return Ok(());
    }
    match nologin_shell(&c.shell, &host.shells) {
        None => Ok(()),
        Some(why) => refuse(format!(
            "the job's account {} has the shell {} ({why}); set [auth] allow_nologin_shells = \
             true to allow such accounts",
            c.name,
            shell_or_default(&c.shell).display()
        )),
    }
}

fn shell_or_default(shell: &Path) -> &Path {
    if shell.as_os_str().is_empty() {
        Path::new("/bin/sh")
    } else {
        shell
    }
}

/// Why `shell` is a nologin shell, or `None` for a login shell.
fn nologin_shell(
    shell: &Path,
    shells: &Result<Option<Vec<String>>, ShellsUnreadable>,
) -> Option<String> {
    let shell = shell_or_default(shell);
    if matches!(
        shell.file_name().and_then(|n| n.to_str()),
        Some("nologin" | "false")
    ) {
        return Some("a nologin shell".into());
    }
    match shells {
        Err(e) => Some(format!("cannot tell whether it is a login shell: {e}")),
        Ok(None) => None,
        Ok(Some(list)) if list.iter().any(|s| Path::new(s) == shell) => None,
        Ok(Some(_)) => Some(format!("not a login shell: not listed in {SHELLS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn auth(extra: &str) -> Auth {
        let text = format!(
            "[general]\nexecutor = \"shell\"\ndata_dir = \"/ecp\"\n[auth]\ndownscope = \"setuid\"\n{extra}\n"
        );
        Config::from_str_named(&text, "t").unwrap().auth
    }

    fn host() -> Host {
        Host {
            own_uids: [0, 990],
            login_defs_uid_min: Some(1000),
            shells: Ok(Some(vec!["/bin/bash".into(), "/bin/sh".into()])),
        }
    }

    fn who(name: &str, uid: u32, shell: &str) -> Candidate {
        Candidate {
            name: name.into(),
            uid,
            shell: shell.into(),
        }
    }

    fn refusal(a: &Auth, c: &Candidate, h: &Host) -> String {
        check_with(a, c, h).unwrap_err().to_string()
    }

    #[test]
    fn root_own_uid_and_floor() {
        let a = auth("");
        let e = refusal(&a, &who("root", 0, "/bin/bash"), &host());
        assert!(e.contains("uid 0"), "{e}");
        let e = refusal(&a, &who("daemon", 1, "/usr/sbin/nologin"), &host());
        assert!(e.contains("daemon") && e.contains("UID_MIN"), "{e}");
        assert!(check_with(&a, &who("alice", 1000, "/bin/bash"), &host()).is_ok());
        // The runner's own account, even above the floor and with minimum_uid lowered.
        let mut h = host();
        h.own_uids = [1500, 1500];
        let low = auth("minimum_uid = 1");
        let e = refusal(&low, &who("svc", 1500, "/bin/bash"), &h);
        assert!(e.contains("svc") && e.contains("jacamar-auth's own"), "{e}");
        // minimum_uid wins over login.defs; no login.defs means 1000.
        assert!(check_with(
            &auth("minimum_uid = 500"),
            &who("s", 500, "/bin/bash"),
            &host()
        )
        .is_ok());
        let e = refusal(
            &auth("minimum_uid = 2000"),
            &who("a", 1500, "/bin/bash"),
            &host(),
        );
        assert!(e.contains("minimum_uid") && e.contains("2000"), "{e}");
        let mut h = host();
        h.login_defs_uid_min = None;
        let e = refusal(&a, &who("s", 999, "/bin/bash"), &h);
        assert!(e.contains("1000"), "{e}");
    }

    #[test]
    fn nologin_shells() {
        let a = auth("");
        for sh in [
            "/usr/sbin/nologin",
            "/sbin/nologin",
            "/bin/false",
            "/usr/bin/false",
            "/bin/zsh",
        ] {
            let e = refusal(&a, &who("u", 2000, sh), &host());
            assert!(e.contains(sh) && e.contains("allow_nologin_shells"), "{e}");
        }
        assert!(
            check_with(&a, &who("u", 2000, ""), &host()).is_ok(),
            "empty is /bin/sh"
        );
        let mut h = host();
        h.shells = Ok(None);
        assert!(check_with(&a, &who("u", 2000, "/bin/zsh"), &h).is_ok());
        assert!(check_with(&a, &who("u", 2000, "/sbin/nologin"), &h).is_err());
        h.shells = Err(ShellsUnreadable(std::sync::Arc::new(
            std::io::Error::other("denied"),
        )));
        assert!(refusal(&a, &who("u", 2000, "/bin/bash"), &h).contains("denied"));
        let allow = auth("allow_nologin_shells = true");
        assert!(check_with(&allow, &who("u", 2000, "/usr/sbin/nologin"), &host()).is_ok());
    }

    #[test]
    fn login_defs_and_shells_files() {
        assert_eq!(
            uid_min_of("# c\nUID_MIN\t\t\t 1000\nUID_MAX 60000\n"),
            Some(1000)
        );
        assert_eq!(uid_min_of("#UID_MIN 5\nSYS_UID_MIN 100\n"), None);
        assert_eq!(uid_min_of("UID_MIN 0x3e8\n"), Some(1000));
        assert_eq!(uid_min_of("UID_MIN 01750\n"), Some(1000));
        assert_eq!(uid_min_of("UID_MIN lots\n"), None);
        assert_eq!(
            shells_of("# x\n/bin/sh\n\n  /bin/bash \n"),
            ["/bin/sh", "/bin/bash"]
        );
    }
}
