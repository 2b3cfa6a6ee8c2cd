//! The names of the `run` stages and the bash scripts the runner generates for each `run` call.

use std::fmt::Write as _;

/// The `run` stages (the runner's `BuildStage`s), in the order the runner calls them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStage {
    PrepareScript,
    GetSources,
    /// Before the second and later tries of get_sources (`GET_SOURCES_ATTEMPTS`).
    ClearWorktree,
    RestoreCache,
    DownloadArtifacts,
    BuildScript,
    AfterScript,
    ArchiveCache,
    ArchiveCacheOnFailure,
    UploadArtifactsOnSuccess,
    UploadArtifactsOnFailure,
    CleanupFileVariables,
}

impl RunStage {
    /// The name passed as the last argument of `run`.
    pub fn name(self) -> &'static str {
        match self {
            RunStage::PrepareScript => "prepare_script",
            RunStage::GetSources => "get_sources",
            RunStage::ClearWorktree => "clear_worktree",
            RunStage::RestoreCache => "restore_cache",
            RunStage::DownloadArtifacts => "download_artifacts",
            RunStage::BuildScript => "build_script",
            RunStage::AfterScript => "after_script",
            RunStage::ArchiveCache => "archive_cache",
            RunStage::ArchiveCacheOnFailure => "archive_cache_on_failure",
            RunStage::UploadArtifactsOnSuccess => "upload_artifacts_on_success",
            RunStage::UploadArtifactsOnFailure => "upload_artifacts_on_failure",
            RunStage::CleanupFileVariables => "cleanup_file_variables",
        }
    }

    /// The section header the runner prints in the job log before the stage.
    pub fn header(self) -> &'static str {
        match self {
            RunStage::PrepareScript => "Preparing environment",
            RunStage::GetSources => "Getting source from Git repository",
            RunStage::ClearWorktree => {
                "Deleting all tracked and untracked files due to source fetch failure"
            }
            RunStage::RestoreCache => "Restoring cache",
            RunStage::DownloadArtifacts => "Downloading artifacts",
            RunStage::BuildScript => "Executing \"step_script\" stage of the job script",
            RunStage::AfterScript => "Running after_script",
            RunStage::ArchiveCache => "Saving cache for successful job",
            RunStage::ArchiveCacheOnFailure => "Saving cache for failed job",
            RunStage::UploadArtifactsOnSuccess => "Uploading artifacts for successful job",
            RunStage::UploadArtifactsOnFailure => "Uploading artifacts for failed job",
            RunStage::CleanupFileVariables => {
                "Cleaning up project directory and file based variables"
            }
        }
    }
}

/// The shape of the bash script the runner's writer (`BashWriter.Finish`) wraps every stage
/// in. The user's commands run in a subshell in each; the shapes differ in what the script's
/// own shell does on the runner's SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Shape {
    /// Runner >= 19.1 (default): `(trap 'exit 1' TERM; eval $'...') < /dev/null` under an
    /// outer `trap 'exit 1' TERM`: the script's shell waits for the body, then exits 1.
    #[default]
    Current,
    /// Runner 17.4 to 19.0: `trap exit 1 TERM` before `: | eval $'...'`: the script's shell
    /// waits for the body, then exits with the body's status.
    V17,
    /// Runner < 17.4: `: | eval $'...'`, no trap: the script's shell dies of the SIGTERM at
    /// once (143) while the body may still run.
    Legacy,
}

/// Everything a stage script needs.
pub struct ScriptInput<'a> {
    pub stage: RunStage,
    pub shape: Shape,
    /// Variables exported at the top of the script (CI variables and job variables).
    pub variables: &'a [(String, String)],
    pub project_dir: &'a str,
    /// User lines (before_script + script for build_script, after_script for after_script).
    pub lines: &'a [String],
}

/// Quotes one shell word as the runner's bash writer does by default
/// (`helpers.ShellEscape`): a word of only `[A-Za-z0-9,./@_-]` stays bare; anything else is
/// ANSI-C quoted (`$'...'`) with `\a \b \t \n \v \f \r \' \\` escapes and `\xHH` for the
/// other control bytes, DEL and every non-ASCII byte; the empty word is `''`.
pub fn runner_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_string();
    }
    let literal = |b: u8| b.is_ascii_alphanumeric() || b",-./@_".contains(&b);
    if s.bytes().all(literal) {
        return s.to_string();
    }
    let mut q = String::from("$'");
    for b in s.bytes() {
        match b {
            0x07 => q.push_str("\\a"),
            0x08 => q.push_str("\\b"),
            b'\t' => q.push_str("\\t"),
            b'\n' => q.push_str("\\n"),
            0x0b => q.push_str("\\v"),
            0x0c => q.push_str("\\f"),
            b'\r' => q.push_str("\\r"),
            b'\'' => q.push_str("\\'"),
            b'\\' => q.push_str("\\\\"),
            b' '..=b'~' => q.push(b as char),
            other => {
                let _ = write!(q, "\\x{other:02x}");
            }
        }
    }
    q.push('\'');
    q
}

/// The line the runner's writer uses to test for pipefail before `set -o errexit`, per shape.
const PIPEFAIL_LEGACY: &str =
    "if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n";
const PIPEFAIL_CURRENT: &str =
    "case \"$(set -o)\" in *\"pipefail\"*) set -o pipefail;; esac; set -o errexit\n";

/// Generates the bash script of one stage in the runner's `shape` (see [`Shape`]): the
/// stage's commands (variables, `cd`, the user's lines) quoted as the runner quotes them and
/// handed to `eval` in a subshell (the user's `exit 3` ends it, errexit then ends the script
/// with 3), and the builtin `exit 0` at the end. Byte for byte the runner's own writer,
/// except for the body's commands, which are the emulator's (no git, no cache, no artifacts).
pub fn generate(input: &ScriptInput<'_>) -> String {
    let body = runner_quote(&stage_body(input));
    let mut s = String::from("#!/usr/bin/env bash\n\n");
    match input.shape {
        Shape::Current => {
            s.push_str("trap 'exit 1' TERM\n\n");
            s.push_str(PIPEFAIL_CURRENT);
            s.push_str("set +o noclobber\n");
            let _ = writeln!(s, "(trap 'exit 1' TERM; eval {body}) < /dev/null");
        }
        Shape::V17 => {
            s.push_str("trap exit 1 TERM\n\n");
            s.push_str(PIPEFAIL_LEGACY);
            s.push_str("set +o noclobber\n");
            let _ = writeln!(s, ": | eval {body}");
        }
        Shape::Legacy => {
            s.push_str(PIPEFAIL_LEGACY);
            s.push_str("set +o noclobber\n");
            let _ = writeln!(s, ": | eval {body}");
        }
    }
    s.push_str("exit 0\n");
    s
}

/// The commands of one stage, before quoting.
fn stage_body(input: &ScriptInput<'_>) -> String {
    let mut s = String::new();
    for (k, v) in input.variables {
        let _ = writeln!(s, "export {}={}", runner_quote(k), runner_quote(v));
    }
    s.push('\n');
    let dir = runner_quote(input.project_dir);
    match input.stage {
        RunStage::PrepareScript => {
            s.push_str("echo \"Running on $(hostname) via jacamar-sim...\"\n");
        }
        RunStage::GetSources => {
            s.push_str(&green_echo("Fetching changes..."));
            let _ = writeln!(s, "mkdir -p {dir}");
            let _ = writeln!(s, "cd {dir}");
        }
        RunStage::ClearWorktree => {
            // The runner runs `git rm -rf --ignore-unmatch .` and `git clean -ffdx` there;
            // the emulator has no repository to clear.
            s.push_str(&green_echo("Deleting tracked and untracked files..."));
            let _ = writeln!(s, "if [ -d {dir} ]; then");
            let _ = writeln!(s, "  cd {dir}");
            s.push_str(
                "fi
",
            );
        }
        RunStage::BuildScript => {
            let _ = writeln!(s, "cd {dir}");
            push_user_lines(&mut s, input.lines);
        }
        RunStage::AfterScript => {
            let _ = writeln!(s, "cd {dir}");
            s.push_str(&green_echo("Running after script..."));
            push_user_lines(&mut s, input.lines);
        }
        RunStage::RestoreCache
        | RunStage::DownloadArtifacts
        | RunStage::ArchiveCache
        | RunStage::ArchiveCacheOnFailure
        | RunStage::UploadArtifactsOnSuccess
        | RunStage::UploadArtifactsOnFailure
        | RunStage::CleanupFileVariables => {
            s.push_str(": # nothing to do for this stage in the emulator\n");
        }
    }
    s
}

/// `echo` of `text` in bold green, as the runner's `Noticef` writes it.
fn green_echo(text: &str) -> String {
    format!(
        "echo {}\n",
        runner_quote(&format!("\x1b[32;1m{text}\x1b[0;m"))
    )
}

fn push_user_lines(s: &mut String, lines: &[String]) {
    for line in lines {
        let shown = match line.trim_end().split_once('\n') {
            Some((first, _)) => format!("$ {first} # collapsed multi-line command"),
            None => format!("$ {}", line.trim_end()),
        };
        s.push_str(&green_echo(&shown));
        s.push_str(line);
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPES: [Shape; 3] = [Shape::Current, Shape::V17, Shape::Legacy];

    #[test]
    fn quoting_is_the_runners() {
        assert_eq!(runner_quote(""), "''");
        assert_eq!(runner_quote("abc-1.2/x@y_z,"), "abc-1.2/x@y_z,");
        assert_eq!(runner_quote("a b"), "$'a b'");
        assert_eq!(runner_quote("a'b\\c\x01"), "$'a\\'b\\\\c\\x01'");
        assert_eq!(
            runner_quote("\x07\x08\t\n\x0b\x0c\r\x7f"),
            "$'\\a\\b\\t\\n\\v\\f\\r\\x7f'"
        );
        assert_eq!(runner_quote("é"), "$'\\xc3\\xa9'");
    }

    fn build_script(shape: Shape) -> String {
        let vars = vec![("CI_JOB_ID".to_string(), "7".to_string())];
        let lines = vec!["echo 'hi'".to_string()];
        generate(&ScriptInput {
            stage: RunStage::BuildScript,
            shape,
            variables: &vars,
            project_dir: "/b/p",
            lines: &lines,
        })
    }

    #[test]
    fn each_shape_is_the_runners_byte_for_byte() {
        let body = "$'export CI_JOB_ID=7\\n\\ncd /b/p\\necho $\\'\\\\x1b[32;1m$ echo \\\\\\'hi\\\\\\'\\\\x1b[0;m\\'\\necho \\'hi\\'\\n'";
        assert_eq!(
            build_script(Shape::Current),
            format!(
                "#!/usr/bin/env bash\n\ntrap 'exit 1' TERM\n\n\
                 case \"$(set -o)\" in *\"pipefail\"*) set -o pipefail;; esac; set -o errexit\n\
                 set +o noclobber\n(trap 'exit 1' TERM; eval {body}) < /dev/null\nexit 0\n"
            )
        );
        assert_eq!(
            build_script(Shape::V17),
            format!(
                "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\n\
                 if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n\
                 set +o noclobber\n: | eval {body}\nexit 0\n"
            )
        );
        assert_eq!(
            build_script(Shape::Legacy),
            format!(
                "#!/usr/bin/env bash\n\n\
                 if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n\
                 set +o noclobber\n: | eval {body}\nexit 0\n"
            )
        );
        assert_eq!(Shape::default(), Shape::Current);
    }

    fn run(script: &str) -> std::process::Output {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    }

    #[test]
    fn generated_scripts_run_with_the_runner_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().display().to_string();
        for shape in SHAPES {
            let script = |lines: &[&str]| {
                let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                generate(&ScriptInput {
                    stage: RunStage::BuildScript,
                    shape,
                    variables: &[("V".into(), "it's \\ \"x\"\n\tline2 é".into())],
                    project_dir: &project,
                    lines: &lines,
                })
            };
            let out = run(&script(&["printf '%s|' \"$V\" \"$PWD\"", "echo done"]));
            assert!(out.status.success(), "{shape:?}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("it's \\ \"x\"\n\tline2 é|{project}|")),
                "{shape:?}: {text}"
            );
            assert!(
                text.contains("\x1b[32;1m$ echo done\x1b[0;m\ndone\n"),
                "{shape:?}: {text}"
            );
            // The user's exit ends the eval subshell; errexit carries its status.
            let out = run(&script(&["echo before", "exit 3", "echo after"]));
            assert_eq!(out.status.code(), Some(3), "{shape:?}: {out:?}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains("after\n"));
        }
    }

    /// The runner's cancel (SIGTERM to the script's process group) while the body runs a
    /// command: the legacy script's shell dies of it, the v17 one exits with the body's
    /// status (143), the current one exits 1.
    #[test]
    fn a_cancel_ends_each_shape_as_the_runner_sees_it() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        for shape in SHAPES {
            let _ = std::fs::remove_file(&ready);
            let lines = vec![format!("touch {}", ready.display()), "sleep 30".to_string()];
            let text = generate(&ScriptInput {
                stage: RunStage::BuildScript,
                shape,
                variables: &[],
                project_dir: "/",
                lines: &lines,
            });
            let path = dir.path().join("script");
            std::fs::write(&path, text).unwrap();
            let mut child = std::process::Command::new("bash")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let t0 = std::time::Instant::now();
            while !ready.exists() {
                assert!(t0.elapsed().as_secs() < 10, "{shape:?}: never ready");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let pg = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM).unwrap();
            let st = child.wait().unwrap();
            let seen = (st.code(), st.signal());
            let want = match shape {
                Shape::Legacy => (None, Some(libc::SIGTERM)),
                Shape::V17 => (Some(143), None),
                Shape::Current => (Some(1), None),
            };
            assert_eq!(seen, want, "{shape:?}");
        }
    }
}
