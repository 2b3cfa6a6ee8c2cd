//! The `shell` executor: how a stage's script becomes a bash command line.
//!
//! * default: `bash --login SCRIPT` (the user's profile is read, as on a login node);
//! * `JACAMAR_NO_BASH_PROFILE`: `bash --noprofile --norc SCRIPT`;
//! * `JACAMAR_ETC_PROFILE_ONLY`: `/etc/profile` is sourced, then the script runs in a bash
//!   that reads no user file.
//!
//! `shell_path` in `[general]` replaces `bash` (looked up on `PATH` otherwise).

use std::path::{Path, PathBuf};

/// Program and arguments of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Which profile files bash reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Login,
    None,
    EtcOnly,
}

impl Profile {
    pub fn from_flags(no_bash_profile: bool, etc_profile_only: bool) -> Profile {
        match (no_bash_profile, etc_profile_only) {
            (true, _) => Profile::None,
            (false, true) => Profile::EtcOnly,
            (false, false) => Profile::Login,
        }
    }
}

/// Find an executable `name` on `search_path` (a `PATH`-style list).
pub fn find_on_path(name: &str, search_path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    search_path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Build the command that runs `script`. Without `shell_path`, bash is looked up on
/// `search_path` (the job's PATH) once here, so the spawn can take the fast
/// `posix_spawn` path instead of a PATH search after fork.
pub fn command(
    shell_path: Option<&Path>,
    profile: Profile,
    script: &Path,
    search_path: &str,
) -> ShellCommand {
    let program = shell_path
        .map(Path::to_path_buf)
        .or_else(|| find_on_path("bash", search_path))
        .unwrap_or_else(|| PathBuf::from("bash"));
    let script = script.display().to_string();
    let args = match profile {
        Profile::Login => vec!["--login".into(), script],
        Profile::None => vec!["--noprofile".into(), "--norc".into(), script],
        Profile::EtcOnly => vec![
            "--noprofile".into(),
            "--norc".into(),
            "-c".into(),
            r#"if [ -r /etc/profile ]; then . /etc/profile; fi; exec "$BASH" --noprofile --norc "$0""#
                .into(),
            script,
        ],
    };
    ShellCommand { program, args }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        let s = Path::new("/x/build_script.bash");
        let c = command(None, Profile::Login, s, "/nonexistent:/usr/bin:/bin");
        assert_eq!(c.args, vec!["--login", "/x/build_script.bash"]);
        assert!(
            c.program.is_absolute() && c.program.ends_with("bash"),
            "{c:?}"
        );
        assert_eq!(
            command(None, Profile::Login, s, "relative/dir").program,
            PathBuf::from("bash")
        );
        let c = command(Some(Path::new("/opt/bash")), Profile::None, s, "/bin");
        assert_eq!(c.program, PathBuf::from("/opt/bash"));
        assert_eq!(c.args[..2], ["--noprofile", "--norc"]);
        assert_eq!(Profile::from_flags(true, true), Profile::None);
        assert_eq!(Profile::from_flags(false, true), Profile::EtcOnly);
    }

    #[test]
    fn etc_profile_only_runs_the_script_for_real() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.bash");
        std::fs::write(&script, "echo ran-$((40+2))\n").unwrap();
        let c = command(None, Profile::EtcOnly, &script, "/usr/bin:/bin");
        let out = std::process::Command::new(&c.program)
            .args(&c.args)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("ran-42"));
    }
}
