//! The `shell` executor: how a stage's script becomes a bash command line.
//!
//! * default ([`Profile::Login`]): a login bash reads the profile files (`/etc/profile`, then
//!   the first of `~/.bash_profile`, `~/.bash_login`, `~/.profile`), then `exec`s a plain bash
//!   that runs the script: `bash --login -c 'exec "$BASH" --noprofile --norc "$0"' SCRIPT`;
//! * `JACAMAR_NO_BASH_PROFILE` ([`Profile::None`]): `bash --noprofile --norc SCRIPT`;
//! * `JACAMAR_ETC_PROFILE_ONLY` ([`Profile::EtcOnly`]): a plain bash sources `/etc/profile`,
//!   then `exec`s a plain bash that runs the script.
//!
//! Why the login shell never runs the script itself: bash runs `~/.bash_logout` when a login
//! shell executes the `exit` builtin (not at the end of its input, not on `exec`). Every
//! script of the runner ends with `exit 0` under `set -eo pipefail`, and Debian's stock
//! `~/.bash_logout` runs `clear_console`, which fails without a tty, so the stage would end
//! with 1 whatever the job did. With the `exec`, no `exit` ever runs in a login shell, and the
//! script's process is the login shell's process: same pid, same process group, and its
//! status (a death by signal included) is the stage's.
//!
//! What reaches the script from the profile is what reaches any child process: exported
//! variables (`PATH` included) and exported functions (`export -f`, as Lmod and Environment
//! Modules do for `module`); `BASH_ENV`, when the profile sets it, is read by the script's
//! bash. Unexported variables and functions of the profile stay in the login shell.
//!
//! `shell_path` in `[general]` replaces `bash` (looked up on `PATH` otherwise); `$BASH` makes
//! the script's bash the same binary as the login shell's.

use std::path::{Path, PathBuf};

/// Program and arguments of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Which profile files are read before the script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Those of a login shell: `/etc/profile` and the user's first of `~/.bash_profile`,
    /// `~/.bash_login`, `~/.profile`.
    Login,
    /// None at all.
    None,
    /// `/etc/profile` only.
    EtcOnly,
}

/// The `-c` program of [`Profile::Login`]: the login shell has read the profile files when
/// it runs this; `$0` is the script.
const LOGIN_THEN_EXEC: &str = r#"exec "$BASH" --noprofile --norc "$0""#;

/// The `-c` program of [`Profile::EtcOnly`].
const ETC_PROFILE_THEN_EXEC: &str =
    r#"if [ -r /etc/profile ]; then . /etc/profile; fi; exec "$BASH" --noprofile --norc "$0""#;

/// The first stage of a `JACAMAR_BASH_PROFILE_ONCE` job (see `stages::login_env`): right
/// before the login shell execs the script's bash, `<jacamar> capture-env <output>` records
/// what the script's bash would get (exported variables and functions, umask, limits,
/// ignored signals, working directory). Its failure never stops the stage (`|| :`, also under
/// a profile's `set -e`). Both paths are in the program text, single-quoted, not in
/// positional parameters, which a profile could `shift` or `set --`.
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    pub jacamar: &'a Path,
    pub output: &'a Path,
}

impl Capture<'_> {
    fn step(&self) -> String {
        format!(
            "{} capture-env {} || :; ",
            sh_quote(&self.jacamar.display().to_string()),
            sh_quote(&self.output.display().to_string())
        )
    }
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

/// `w` single-quoted for a POSIX shell: every byte stands for itself, a `'` as `'\''`.
pub fn sh_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', r"'\''"))
}

/// Find an executable `name` on `search_path` (a `PATH`-style list, e.g.
/// [`crate::jobenv::search_path`]): the first `<dir>/<name>` that is a regular file
/// (symlinks followed) with an execute bit. Empty and relative entries are skipped, so
/// nothing is ever found relative to the current directory. The one PATH lookup of the
/// driver: the job's shell and the batch scheduler's commands.
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
    command_capturing(shell_path, profile, script, search_path, None)
}

/// [`command`], and with `capture` the profile's result is recorded before the script's
/// bash starts (see [`Capture`]; nothing to record with [`Profile::None`]).
pub fn command_capturing(
    shell_path: Option<&Path>,
    profile: Profile,
    script: &Path,
    search_path: &str,
    capture: Option<&Capture<'_>>,
) -> ShellCommand {
    let capture = capture.map(Capture::step).unwrap_or_default();
    let program = shell_path
        .map(Path::to_path_buf)
        .or_else(|| find_on_path("bash", search_path))
        .unwrap_or_else(|| PathBuf::from("bash"));
    let script = script.display().to_string();
    let args = match profile {
        Profile::Login => vec![
            "--login".into(),
            "-c".into(),
            format!("{capture}{LOGIN_THEN_EXEC}"),
            script,
        ],
        Profile::None => vec!["--noprofile".into(), "--norc".into(), script],
        Profile::EtcOnly => vec![
            "--noprofile".into(),
            "--norc".into(),
            "-c".into(),
            match ETC_PROFILE_THEN_EXEC.split_once("exec ") {
                Some((profile, exec)) if !capture.is_empty() => {
                    format!("{profile}{capture}exec {exec}")
                }
                _ => ETC_PROFILE_THEN_EXEC.into(),
            },
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
        assert_eq!(
            c.args,
            vec!["--login", "-c", LOGIN_THEN_EXEC, "/x/build_script.bash"]
        );
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
        let (_dir, script) = crate::test_support::temp_file("s.bash", "echo ran-$((40+2))\n");
        let c = command(None, Profile::EtcOnly, &script, "/usr/bin:/bin");
        let out = std::process::Command::new(&c.program)
            .args(&c.args)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("ran-42"));
    }

    /// A home whose `.bash_logout` fails (as Debian's does without a tty) and whose
    /// `.bash_profile` exports a variable and a function.
    fn home_with_failing_logout() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".bash_logout"), "false\n").unwrap();
        std::fs::write(
            home.path().join(".bash_profile"),
            "export PROFILE_VAR=pv\nprofile_fn() { echo pf; }\nexport -f profile_fn\n",
        )
        .unwrap();
        home
    }

    /// Run `body` in the runner's script shape with `profile`, HOME = `home`.
    fn run_runner_script(home: &Path, profile: Profile, body: &str) -> std::process::Output {
        let script = home.join("build_script.bash");
        let quoted = body
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n");
        std::fs::write(
            &script,
            format!("#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n: | eval $'{quoted}'\nexit 0\n"),
        )
        .unwrap();
        let c = command(None, profile, &script, "/usr/bin:/bin");
        std::process::Command::new(&c.program)
            .args(&c.args)
            .env_clear()
            .env("HOME", home)
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    #[test]
    fn the_capture_runs_after_the_profile_right_before_the_exec() {
        let home = home_with_failing_logout();
        std::fs::write(
            home.path().join(".bash_profile"),
            "export PROFILE_VAR=pv\nset -e\nset -- a b c\nshift\n",
        )
        .unwrap();
        // A stand-in for `jacamar capture-env FILE`: records its arguments and environment,
        // then fails (the stage goes on regardless).
        let fake = home.path().join("fake jacamar");
        std::fs::write(
            &fake,
            "#!/bin/sh\n{ echo \"args:$1:$2\"; env; } > \"$2\"\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out_file = home.path().join("it's captured");
        let script = home.path().join("s.bash");
        std::fs::write(&script, "echo \"script:$PROFILE_VAR\"\n").unwrap();
        for profile in [Profile::Login, Profile::EtcOnly] {
            let _ = std::fs::remove_file(&out_file);
            let capture = Capture {
                jacamar: &fake,
                output: &out_file,
            };
            let c = command_capturing(None, profile, &script, "/usr/bin:/bin", Some(&capture));
            let out = std::process::Command::new(&c.program)
                .args(&c.args)
                .env_clear()
                .env("HOME", home.path())
                .env("PATH", "/usr/bin:/bin")
                .output()
                .unwrap();
            assert!(out.status.success(), "{profile:?}: {out:?}");
            let captured = std::fs::read_to_string(&out_file).unwrap();
            assert!(
                captured.starts_with(&format!("args:capture-env:{}\n", out_file.display())),
                "{captured}"
            );
            let want = if profile == Profile::Login { "pv" } else { "" };
            assert_eq!(
                captured.contains("PROFILE_VAR=pv"),
                profile == Profile::Login,
                "{captured}"
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("script:{want}\n")
            );
        }
        // Without a capture the programs are the plain ones.
        let c = command_capturing(None, Profile::EtcOnly, &script, "/bin", None);
        assert_eq!(c.args[3], ETC_PROFILE_THEN_EXEC);
        let c = command_capturing(None, Profile::None, &script, "/bin", None);
        assert_eq!(c.args, command(None, Profile::None, &script, "/bin").args);
    }

    #[test]
    fn login_profile_keeps_the_status_whatever_the_logout_file_does() {
        use std::os::unix::process::ExitStatusExt;
        let home = home_with_failing_logout();
        // The fixture bites: a login shell running the script itself ends with 1.
        let script = home.path().join("plain.bash");
        std::fs::write(&script, "set -e\nexit 0\n").unwrap();
        let old = std::process::Command::new("bash")
            .args(["--login", &script.display().to_string()])
            .env_clear()
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert_eq!(old.status.code(), Some(1));

        let out = run_runner_script(
            home.path(),
            Profile::Login,
            "echo \"$PROFILE_VAR\"; profile_fn\n",
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pv\npf\n");
        let out = run_runner_script(home.path(), Profile::Login, "exit 3\n");
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        // `$$` in the eval subshell is the script's bash: a death by signal stays one.
        let out = run_runner_script(home.path(), Profile::Login, "kill -TERM $$\n");
        assert_eq!(out.status.signal(), Some(15), "{out:?}");
        // The other profiles read no user file.
        for p in [Profile::None, Profile::EtcOnly] {
            let out = run_runner_script(home.path(), p, "echo \"[${PROFILE_VAR:-}]\"\n");
            assert!(out.status.success(), "{p:?}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n", "{p:?}");
        }
    }
}
