//! The script submitted to a scheduler: the stage as a supervised foreground child (see
//! [`wrapper_script`]), with each scheduler's header and epilogue, ending with the job's
//! exit-status file ([`exit_path`], read by [`read_exit_file`]), which also tells how many
//! bytes the job's output file held at the end (the tailer's completion fact).

use std::path::{Path, PathBuf};

use super::path_arg;
use crate::shell::sh_quote;

/// The wrapper's part after the scheduler's header (see [`wrapper_script`]); `@COMMAND@`,
/// `@AFTER@`, `@OUTPUT@` and `@EXIT_FILE@` are filled in.
const SUPERVISED_STAGE: &str = r#"# jacamar: the stage runs in the foreground, in this shell's process group. A TERM (the
# scheduler's cancel) does not end this shell: it counts it, and then waits until every
# other process of its group is gone, so the job's own TERM traps run to their end.
__jacamar_terms=0
trap '__jacamar_terms=$((__jacamar_terms + 1))' TERM
__jacamar_group_busy() {
    local f line rest state
    for f in /proc/[0-9]*/stat; do
        [ "$f" = "/proc/$$/stat" ] && continue
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }
        state=${rest%% *}
        rest=${rest#* }
        rest=${rest#* }
        [ "${rest%% *}" = "$$" ] && [ "$state" != Z ] && return 0
    done
    return 1
}
@COMMAND@
__jacamar_rc=$?
if [ "$__jacamar_terms" != 0 ]; then
    { read -r __jacamar_self <"/proc/$$/stat"; } 2>/dev/null
    __jacamar_self=${__jacamar_self##*) }
    __jacamar_self=${__jacamar_self#* }
    __jacamar_self=${__jacamar_self#* }
    if [ "${__jacamar_self%% *}" = "$$" ]; then
        while __jacamar_group_busy; do sleep 0.25; done
    fi
fi
@AFTER@# jacamar: the exit-status file, written whole (rename) at the very end: "<status>
# <TERMs received> <job id> <bytes in the output file, or ->".
__jacamar_exit=@EXIT_FILE@
# From here on a TERM is ignored, by this shell and the commands it starts (`wc`, `mv`): the
# stage is over, and a second TERM (a job's time limit signals the job and its steps) must
# not kill the `mv` that publishes the exit file.
trap '' TERM
__jacamar_id=${SLURM_JOB_ID:-${PBS_JOBID:-${LSB_JOBID:-${COBALT_JOBID:-}}}}
__jacamar_size=$(wc -c <@OUTPUT@ 2>/dev/null) || __jacamar_size=-
__jacamar_size=${__jacamar_size//[[:space:]]/}
case $__jacamar_size in '' | *[!0-9]*) __jacamar_size=- ;; esac
if ! { printf '%s %s %s %s\n' "$__jacamar_rc" "$__jacamar_terms" "$__jacamar_id" "$__jacamar_size" >"$__jacamar_exit.tmp.$$" &&
    mv -f "$__jacamar_exit.tmp.$$" "$__jacamar_exit"; } 2>/dev/null; then
    echo "jacamar: WARNING: could not write the exit status file $__jacamar_exit" >&2
    rm -f "$__jacamar_exit.tmp.$$" 2>/dev/null
fi
exit "$__jacamar_rc"
"#;

/// The exit-status file of the stage whose output file is `output`: `<stage>.exit` next
/// to it in the job's scripts dir.
pub fn exit_path(output: &Path) -> PathBuf {
    output.with_extension("exit")
}

/// What the wrapper's exit-status file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    /// The stage's exit status (128 + N after a death by signal N).
    pub code: i32,
    /// TERMs the wrapper received: the scheduler cancelled or timed out the job.
    pub terms: u32,
    /// The size of the job's output file when the wrapper ended (see [`wrapper_script`]):
    /// the tailer reads at least this much. `None`: not known (a record of an older
    /// wrapper, with three fields, or the file could not be read: `-`).
    pub output_bytes: Option<u64>,
}

/// The exit-status file at `path` for scheduler job `id`. `None`: no file (yet), or not a
/// whole record, or one written by another job (the job id the job saw differs from
/// `id`; a record without an id, as Flux jobs write it, is taken as this job's).
///
/// The record is `<status> <TERMs> <job id> <output bytes>`; the job id may be empty, and
/// the fourth field may be missing (an older wrapper) or not a number (`-`): the size is
/// then unknown, the rest stands.
///
/// The name is looked for in its directory's listing before it is opened (see
/// [`super::tail::listed`]): on an NFS client or a FUSE view, opening an absent name
/// leaves a negative entry that hides the file for a while after the job writes it (and
/// makes cleanup's unlink fail).
pub fn read_exit_file(path: &Path, id: &str) -> Option<ExitRecord> {
    if !super::tail::listed(path) {
        return None;
    }
    parse_exit_record(&std::fs::read_to_string(path).ok()?, id)
}

/// The record `text` of [`read_exit_file`].
pub fn parse_exit_record(text: &str, id: &str) -> Option<ExitRecord> {
    let line = text.strip_suffix('\n')?;
    let mut w = line.split(' ');
    let code = w.next()?.parse().ok()?;
    let terms = w.next()?.parse().ok()?;
    if let Some(jid) = w.next() {
        if !jid.is_empty() && jid != id {
            return None;
        }
    }
    let output_bytes = w.next().and_then(|b| b.parse().ok());
    Some(ExitRecord {
        code,
        terms,
        output_bytes,
    })
}

/// The wrapper submitted to the scheduler: a shebang, the scheduler's `header`, the stage
/// (`command`: the user's shell running the stage script, every word single-quoted) as a
/// foreground child, then `after` (shell code that may read the stage's status in
/// `$__jacamar_rc`), the exit-status file `exit_file` (see [`read_exit_file`]; written
/// through a temporary file and a rename, so a reader sees all of it or nothing; a failure
/// to write it is a warning in the job's output, the status stays), and an exit with that
/// status. The file is not written when the job is killed (SIGKILL) before its end.
///
/// Output size: the record holds the size of `output` (the file the driver tails) read on
/// the compute node after `after` (`wc -c`, which reads the size of a regular file; `-`
/// when it cannot be read). Where the wrapper's stdout is that file (Slurm's `--output`,
/// the `exec >>` redirect of PBS and LSF, Cobalt's `-o`) the size is every byte the job
/// and the wrapper wrote; where another process copies the output into the file (Flux's
/// job shell) it is what had arrived by then: either way a lower bound the tailer waits
/// for, and a later line is still caught by its quiet window. The scheduler's own lines
/// after the job's end (a cancel's notice) are not counted.
///
/// Cancel: schedulers signal the whole job at once (Slurm's `scancel --signal=TERM --full`
/// and plain cancel, and so `qdel` of Debian's PBS wrappers over Slurm; PBS and LSF signal
/// the job's session or process group): the job already has the TERM, the wrapper forwards
/// nothing. The step ends when the wrapper ends, and what is left then is killed, so the
/// wrapper outlives the TERM while the job's traps run, those of the runner's `: | eval`
/// subshell included, which outlive the script's own shell. It counts TERMs in a handler (an
/// ignore would be inherited, and bash cannot trap a signal ignored at its start); bash runs
/// the handler only once the foreground stage has ended. After a TERM it also waits until no
/// other process of its process group is left (read from `/proc`, no fork; skipped when
/// the scheduler did not make the wrapper a group leader). The scheduler's SIGKILL (the plain
/// cancel after kill_timeout, or its own kill delay) still ends all of it. A process that
/// leaves the group (`setsid`, job control) is not waited for.
///
/// Status: the stage's exit code; a death of the stage's shell by signal N is exit code
/// 128+N (the same build exit code; bash's `Terminated` line reaches the output). A job
/// that ends without a TERM is not held up by background processes it leaves behind (the
/// scheduler cleans those up, as before).
pub fn wrapper_script(
    header: &str,
    command: &[String],
    after: &str,
    output: &Path,
    exit_file: &Path,
) -> String {
    let cmd: Vec<String> = command.iter().map(|w| sh_quote(w)).collect();
    wrapper_script_code(header, &cmd.join(" "), after, output, exit_file)
}

/// [`wrapper_script`] with the stage given as shell code (`code`: one complete command,
/// a compound one such as a `( ... )` subshell, whose status is the stage's) instead of
/// words: a job's image started on the compute node (`crate::container::launcher`).
pub fn wrapper_script_code(
    header: &str,
    code: &str,
    after: &str,
    output: &Path,
    exit_file: &Path,
) -> String {
    let mut after = after.to_string();
    if !after.is_empty() && !after.ends_with('\n') {
        after.push('\n');
    }
    let (before_cmd, rest) = SUPERVISED_STAGE
        .split_once("@COMMAND@")
        .expect("the template names @COMMAND@");
    let (before_after, end) = rest
        .split_once("@AFTER@")
        .expect("the template names @AFTER@");
    let end = end
        .replace("@EXIT_FILE@", &sh_quote(&path_arg(exit_file)))
        .replace("@OUTPUT@", &sh_quote(&path_arg(output)));
    let mut s = String::from("#!/bin/bash\n");
    for part in [
        header,
        before_cmd,
        code.trim_end_matches('\n'),
        before_after,
        &after,
        &end,
    ] {
        s.push_str(part);
    }
    s
}

/// A header that sends the job's stdout and stderr straight to the driver's `output` file
/// (appending), for schedulers that may spool a job's output and copy it only at its end
/// (PBS, LSF): the driver streams the file live.
pub fn output_redirect(output: &Path) -> String {
    format!("exec >>{} 2>&1\n", sh_quote(&path_arg(output)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Spawn `wrapper` with bash as its own process-group leader (as schedulers do).
    fn spawn_wrapper(dir: &Path, wrapper: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let w = dir.join("wrapper.bash");
        std::fs::write(&w, wrapper).unwrap();
        std::process::Command::new("bash")
            .arg(&w)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cond()
    }

    #[test]
    fn wrapper_quotes_every_word_and_keeps_the_status() {
        let w = wrapper_script(
            "#SBATCH --x\n",
            &[
                "bash".into(),
                "-c".into(),
                "echo \"$0\"; exit 4".into(),
                "it's $x".into(),
            ],
            "echo \"after $__jacamar_rc\"",
            Path::new("/nonexistent/dir/s.out"),
            Path::new("/nonexistent/dir/s.exit"),
        );
        assert!(w.starts_with("#!/bin/bash\n#SBATCH --x\n"), "{w}");
        let d = tempfile::tempdir().unwrap();
        let out = spawn_wrapper(d.path(), &w).wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(4),
            "an unwritable exit file keeps the status"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $x\nafter 4\n");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("a'b $x \"c\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a'b $x \"c\"");
    }

    #[test]
    fn wrapper_outlives_term_until_the_runner_subshell_trap_is_done() {
        let (d, script) = crate::test_support::temp_file(
            "build_script.bash",
            "set -eo pipefail\n: | eval $'trap \\'sleep 1; echo done >trap-done; exit 7\\' TERM\\ntouch ready\\nsleep 60\\n'\nexit 0\n",
        );
        let w = wrapper_script(
            "",
            &["bash".into(), script.display().to_string()],
            "echo \"rc $__jacamar_rc\"",
            &d.path().join("s.out"),
            &d.path().join("s.exit"),
        );
        let mut child = spawn_wrapper(d.path(), &w);
        assert!(wait_until(Duration::from_secs(20), || d
            .path()
            .join("ready")
            .exists()));
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let st = child.wait().unwrap();
        // The trap's file exists when the wrapper has ended: it waited for the subshell.
        assert!(d.path().join("trap-done").exists(), "wrapper ended first");
        // The script's shell died of the TERM: 128 + 15.
        assert_eq!(st.code(), Some(143));
        // The exit file tells the status and the TERM.
        let rec = read_exit_file(&d.path().join("s.exit"), "9").unwrap();
        assert_eq!(
            rec,
            ExitRecord {
                code: 143,
                terms: 1,
                // Its stdout was a pipe, the output file never existed: size unknown.
                output_bytes: None,
            }
        );
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn wrapper_of_a_finished_job_does_not_wait_for_its_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("s.out");
        let w = wrapper_script(
            &output_redirect(&out),
            &[
                "bash".into(),
                "-c".into(),
                "echo hello; sleep 60 & exit 0".into(),
            ],
            "echo after",
            &out,
            &d.path().join("s.exit"),
        );
        let t0 = std::time::Instant::now();
        let mut child = spawn_wrapper(d.path(), &w);
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let st = child.wait().unwrap();
        assert!(st.success());
        assert!(t0.elapsed() < Duration::from_secs(30));
        let exit = d.path().join("s.exit");
        // The output size counts the job's line and the wrapper's own (`after`).
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\nafter\n");
        assert_eq!(
            read_exit_file(&exit, "9"),
            Some(ExitRecord {
                code: 0,
                terms: 0,
                output_bytes: Some(12)
            })
        );
        // Another job's record, a torn one, none: not this job's status.
        std::fs::write(&exit, "3 0 77\n").unwrap();
        assert_eq!(read_exit_file(&exit, "9"), None);
        assert_eq!(
            read_exit_file(&exit, "77"),
            Some(ExitRecord {
                code: 3,
                terms: 0,
                output_bytes: None
            })
        );
        std::fs::write(&exit, "3 0").unwrap();
        assert_eq!(read_exit_file(&exit, "77"), None);
        std::fs::remove_file(&exit).unwrap();
        assert_eq!(read_exit_file(&exit, "77"), None);
        assert!(
            !d.path().read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp.")),
            "no temporary file left"
        );
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn exit_records_old_and_new() {
        let rec = |code, terms, output_bytes| {
            Some(ExitRecord {
                code,
                terms,
                output_bytes,
            })
        };
        // Today's four fields; the job id may be empty (Flux).
        assert_eq!(
            parse_exit_record("0 0 12 345\n", "12"),
            rec(0, 0, Some(345))
        );
        assert_eq!(parse_exit_record("143 1  0\n", "12"), rec(143, 1, Some(0)));
        // The size unknown: `-` (the file could not be read), or an older wrapper's three.
        assert_eq!(parse_exit_record("2 0 12 -\n", "12"), rec(2, 0, None));
        assert_eq!(parse_exit_record("2 0 12\n", "12"), rec(2, 0, None));
        assert_eq!(parse_exit_record("2 0 \n", "12"), rec(2, 0, None));
        // Another job's, torn (no newline), not a status: none.
        assert_eq!(parse_exit_record("0 0 13 345\n", "12"), None);
        assert_eq!(parse_exit_record("0 0 12 345", "12"), None);
        assert_eq!(parse_exit_record("x 0 12 345\n", "12"), None);
    }

    /// A TERM while the exit file is being written (a time limit signals the job and its
    /// steps, a second TERM can come after the first ended the stage) does not lose it: the
    /// `mv` that publishes it ignores TERM. Here `mv` is slowed to 1 s (a `mv` first on
    /// PATH) and the group gets a TERM meanwhile; before, it died and the wrapper said
    /// "could not write the exit status file".
    #[test]
    fn a_term_while_the_exit_file_is_written_does_not_lose_it() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let mv = bin.join("mv");
        std::fs::write(
            &mv,
            "#!/bin/bash\ntouch \"$JRS_DIR/mv-started\"\nsleep 1\nexec /bin/mv \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&mv, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = wrapper_script(
            &format!(
                "export PATH={}:$PATH JRS_DIR={}\n",
                sh_quote(&bin.display().to_string()),
                sh_quote(&d.path().display().to_string())
            ),
            &["bash".into(), "-c".into(), "exit 3".into()],
            "",
            &d.path().join("s.out"),
            &d.path().join("s.exit"),
        );
        let child = spawn_wrapper(d.path(), &w);
        assert!(wait_until(Duration::from_secs(20), || d
            .path()
            .join("mv-started")
            .exists()));
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let rec = read_exit_file(&d.path().join("s.exit"), "")
            .unwrap_or_else(|| panic!("no exit file: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(rec.code, 3);
    }
}
