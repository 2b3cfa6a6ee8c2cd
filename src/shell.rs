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

/// Build the command that runs `script`.
pub fn command(shell_path: Option<&Path>, profile: Profile, script: &Path) -> ShellCommand {
    let program = shell_path
        .map(Path::to_path_buf)
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
        assert_eq!(
            command(None, Profile::Login, s).args,
            vec!["--login", "/x/build_script.bash"]
        );
        let c = command(Some(Path::new("/opt/bash")), Profile::None, s);
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
        let c = command(None, Profile::EtcOnly, &script);
        let out = std::process::Command::new(&c.program)
            .args(&c.args)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("ran-42"));
    }
}
