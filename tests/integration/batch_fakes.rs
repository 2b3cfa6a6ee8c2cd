//! The Flux, LSF and Cobalt executors against FAKE scheduler CLIs (tests/fakes/: Flux,
//! LSF and Cobalt cannot run on this machine). The fakes follow each tool's documented
//! command line and output and run every job as a real process in its own session, so
//! output, exit codes, signals and cancellation are real; `[batch] scheduler_bin` points
//! the driver at them. Jobs run as the non-root user `jacamar-ci`, like the Slurm tests.
//! Needs root (to start the driver as that user); no Slurm needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::batch_slurm::{beats_on, ci_user, heartbeat_job, sigkill_drivers};
use crate::harness::{
    alive, all_pids, children, lines_of, proc_stat, require_root, runner_script_in, show,
    wait_exit, wait_for, wait_line, Harness, Shape,
};
use crate::sched_bin::fake_clis;
use crate::shape_tests;

/// One fake scheduler under test.
struct Fake {
    h: Harness,
    /// The fake's job table (FAKE_SCHED_DIR).
    state: PathBuf,
    executor: &'static str,
}

/// A harness for `executor` (`flux`, `lsf`, `cobalt`) with the fakes copied to a dir the
/// job's user can read (the checkout may not be), `batch_extra` lines in `[batch]`.
fn fake(executor: &'static str, batch_extra: &str) -> Fake {
    // The Harness's temp dir is created first; the fakes and their state go inside it.
    let placeholder = "@@FAKES@@";
    // Cobalt's qsub/qstat/qdel live apart (not to be taken for PBS's).
    let sub = if executor == "cobalt" { "/cobalt" } else { "" };
    let mut h = Harness::batch(
        executor,
        &ci_user(),
        "kill_timeout = \"5s\"",
        &format!(
            "command_delay = \"500ms\"\nnfs_timeout = \"5s\"\nscheduler_bin = \"{placeholder}/fakes{sub}\"\nenv_vars = [\"FAKE_SCHED_DIR={placeholder}/state\", \"FAKE_SCHED_KILL_GRACE=2\"]\n{batch_extra}"
        ),
    );
    let root = h.tmp.path().join("fake-sched");
    std::fs::create_dir(&root).unwrap();
    let (_, state) = fake_clis(&root);
    let cfg = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        cfg.replace(placeholder, &root.display().to_string()),
    )
    .unwrap();
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    Fake { h, state, executor }
}

impl Fake {
    /// The fake's job dirs (one per submitted job).
    fn jobs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state.join("jobs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn only_job(&self) -> PathBuf {
        let j = self.jobs();
        assert_eq!(j.len(), 1, "expected one {} job: {j:?}", self.executor);
        j[0].clone()
    }

    /// The job runs: started, not ended.
    fn running(job: &Path) -> bool {
        job.join("pgid").exists() && !job.join("rc").exists()
    }

    /// The job is over and none of its processes remain.
    fn gone(job: &Path) -> bool {
        if !job.join("rc").exists() {
            return false;
        }
        let Ok(pg) = std::fs::read_to_string(job.join("pgid")) else {
            return true;
        };
        let pg: i32 = pg.trim().parse().unwrap();
        group_members(pg).is_empty()
    }

    fn recorded_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.h.scripts_job_dir().join("batch-jobs")).ok()?;
        let prefix = format!("job {} ", self.executor);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

impl Drop for Fake {
    /// A failed test must not leave its fake jobs running: KILL what is left.
    fn drop(&mut self) {
        for job in self.jobs() {
            if let Ok(pg) = std::fs::read_to_string(job.join("pgid")) {
                if let Ok(pg) = pg.trim().parse::<i32>() {
                    if !group_members(pg).is_empty() {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pg),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

/// Live (not zombie) processes of process group `pg`.
fn group_members(pg: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        // Fields after the name: state ppid pgrp.
        .filter(|&p| proc_stat(p).and_then(|f| f.get(2)?.parse().ok()) == Some(pg) && alive(p))
        .collect()
}

fn streams_output_and_succeeds(executor: &'static str, shape: Shape) {
    let f = fake(executor, "");
    let mut child = f.h.spawn_run(
        "build_script",
        &runner_script_in(shape, "for i in 1 2 3 4; do echo \"tick $i as $(id -un)\"; sleep 1; done\necho on stderr >&2\n"),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "tick 2 as", Duration::from_secs(20), &mut seen),
        "{shape}: no live output: {seen:?}"
    );
    // The job still runs when its second line reaches the log.
    assert!(
        Fake::running(&f.only_job()),
        "{shape}: job not running while its output arrived: {seen:?}"
    );
    let st = wait_exit(&mut child, Duration::from_secs(30)).expect("run did not end");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert!(st.success(), "run failed: {text}");
    for i in 1..=4 {
        assert!(
            text.contains(&format!("tick {i} as {}", ci_user())),
            "{shape}: tick {i} missing: {text}"
        );
    }
    assert!(text.contains("on stderr"), "{shape}: {text}");
    let id = f
        .recorded_id()
        .unwrap_or_else(|| panic!("{executor} {shape}: job id not recorded"));
    assert!(
        text.contains(&format!("Submitted {executor} job {id}")),
        "{shape}: {text}"
    );
    let out = f.h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(!f.h.scripts_job_dir().exists());
}

fn exit_code_7(executor: &'static str, batch_extra: &str, shape: Shape) {
    let f = fake(executor, batch_extra);
    let out = f.h.run(
        "build_script",
        &runner_script_in(shape, "echo before the end\nexit 7\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        f.h.build_exit_code().as_deref(),
        Some("7"),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("before the end"),
        "{shape}: {}",
        show(&out)
    );
    let out =
        f.h.run("build_script", &runner_script_in(shape, "echo fine\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
}

/// Returns the job log and the fake's record of the commands it was given.
fn cancel_runs_the_trap(
    executor: &'static str,
    batch_extra: &str,
    shape: Shape,
) -> (String, String) {
    let f = fake(executor, batch_extra);
    let marker = f.h.data_dir.join(format!("trap-{}", f.h.job_id));
    let script = format!(
        "trap 'echo trapped TERM; touch {m}; exit 3' TERM\necho started\nsleep 300 &\nwait\necho not reached\n",
        m = marker.display()
    );
    let mut child =
        f.h.spawn_run("build_script", &runner_script_in(shape, &script));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(20), &mut seen),
        "{shape}: {seen:?}"
    );
    let ours = children(child.id());
    assert!(
        !ours.is_empty(),
        "{shape}: jacamar not found under jacamar-auth"
    );
    let job = f.only_job();
    assert!(Fake::running(&job));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Ended, and within kill_timeout (5 s) + a generous margin for a loaded machine.
    assert!(
        wait_for(Duration::from_secs(5 + 60), || Fake::gone(&job)),
        "{shape}: {executor} job still there"
    );
    let st = wait_exit(&mut child, Duration::from_secs(30)).expect("run call did not exit");
    assert!(!st.success());
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert!(
        text.contains("trapped TERM"),
        "{shape}: trap output missing: {text}"
    );
    assert!(!text.contains("not reached"), "{shape}: {text}");
    assert!(marker.exists(), "{shape}: the job's TERM trap did not run");
    for p in ours {
        assert!(!alive(p), "{shape}: jacamar {p} survived");
    }
    // The runner's script runs the body in a subshell: the trap's `exit 3` ends it, while
    // the script's own shell dies of the TERM (legacy: 143) or exits 1 from its own trap
    // once the body ended (current).
    let want = shape.cancelled_status(3).to_string();
    assert_eq!(
        f.h.build_exit_code().as_deref(),
        Some(want.as_str()),
        "{executor} {shape}: {text}"
    );
    assert!(f.h.scripts_job_dir().is_dir());
    let out =
        f.h.run("after_script", &runner_script_in(shape, "echo after ran\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
    let calls = std::fs::read_to_string(f.state.join("calls")).unwrap();
    (text, calls)
}

fn cleanup_cancels_an_orphan(executor: &'static str, shape: Shape) {
    let f = fake(executor, "");
    let beat = f.h.data_dir.join(format!("beat-{}", f.h.job_id));
    let mut child = f.h.spawn_run(
        "build_script",
        &runner_script_in(shape, &heartbeat_job(&beat)),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(20), &mut seen),
        "{shape}: {seen:?}"
    );
    let job = f.only_job();
    sigkill_drivers(&mut child);
    assert!(
        beats_on(&beat),
        "{shape}: the {executor} job stopped with its drivers"
    );
    assert!(
        Fake::running(&job),
        "{shape}: the job must outlive its killed drivers until cleanup"
    );
    let id = f
        .recorded_id()
        .unwrap_or_else(|| panic!("{executor} {shape}: job id not recorded"));
    let out = f.h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("cancelling {executor} job {id}")),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        wait_for(Duration::from_secs(10), || Fake::gone(&job)),
        "{shape}: cleanup left the {executor} job running: rc {:?}, processes {:?}\n{}",
        std::fs::read_to_string(job.join("rc")),
        std::fs::read_to_string(job.join("pgid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .map(group_members),
        show(&out)
    );
    assert!(!f.h.scripts_job_dir().exists());
}

fn refuses(executor: &'static str, params: &str, arg: &str, shape: Shape) {
    let mut f = fake(executor, "");
    f.h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", params);
    let out =
        f.h.run("build_script", &runner_script_in(shape, "echo no\n"));
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("refusing scheduler argument \"{arg}\"")),
        "{shape}: {}",
        show(&out)
    );
    assert!(f.jobs().is_empty(), "{shape}: a refused job was submitted");
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
}

shape_tests!(
    root:
    flux_streams_output_and_succeeds,
    flux_exit_code_7,
    flux_cancel_runs_the_trap,
    flux_cleanup_cancels_an_orphan,
    flux_refuses_illegal_arguments,
    lsf_streams_output_and_succeeds,
    lsf_exit_code_7,
    lsf_cancel_runs_the_trap,
    lsf_job_cancellation_names_the_job_and_signals_term_first,
    lsf_job_name_belongs_to_the_user_without_job_cancellation,
    lsf_cleanup_cancels_an_orphan,
    lsf_refuses_illegal_arguments,
    cobalt_streams_output_and_succeeds,
    cobalt_exit_code_7_from_the_cobaltlog,
    cobalt_exit_code_7_from_the_output_with_skip_cobalt_log,
    cobalt_skip_cobalt_log_takes_the_status_from_the_output,
    cobalt_build_script_arriving_twice_never_takes_the_first_calls_exit_code,
    cobalt_cancel_runs_the_trap,
    cobalt_cleanup_cancels_an_orphan,
    cobalt_refuses_illegal_arguments,
);

// Flux.

fn flux_streams_output_and_succeeds(shape: Shape) {
    if !require_root() {
        return;
    }
    streams_output_and_succeeds("flux", shape);
}

fn flux_exit_code_7(shape: Shape) {
    if !require_root() {
        return;
    }
    exit_code_7("flux", "", shape);
}

fn flux_cancel_runs_the_trap(shape: Shape) {
    if !require_root() {
        return;
    }
    let (_, calls) = cancel_runs_the_trap("flux", "", shape);
    assert!(
        calls.contains("flux job kill --signal=SIGTERM "),
        "{shape}: {calls}"
    );
}

fn flux_cleanup_cancels_an_orphan(shape: Shape) {
    if !require_root() {
        return;
    }
    cleanup_cancels_an_orphan("flux", shape);
}

fn flux_refuses_illegal_arguments(shape: Shape) {
    if !require_root() {
        return;
    }
    refuses("flux", "-N 1 --output=/tmp/x", "--output=/tmp/x", shape);
    refuses("flux", "--wait", "--wait", shape);
}

// LSF.

fn lsf_streams_output_and_succeeds(shape: Shape) {
    if !require_root() {
        return;
    }
    streams_output_and_succeeds("lsf", shape);
}

fn lsf_exit_code_7(shape: Shape) {
    if !require_root() {
        return;
    }
    exit_code_7("lsf", "", shape);
}

fn lsf_cancel_runs_the_trap(shape: Shape) {
    if !require_root() {
        return;
    }
    // Without lsf_job_cancellation: one plain bkill by id (LSF's INT, TERM, KILL sequence).
    let (_, calls) = cancel_runs_the_trap("lsf", "", shape);
    assert!(calls.contains("\nbkill 1000\n"), "{shape}: {calls}");
    assert!(!calls.contains("bkill -s"), "{shape}: {calls}");
    assert!(!calls.contains("-J "), "{shape}: {calls}");
}

fn lsf_job_cancellation_names_the_job_and_signals_term_first(shape: Shape) {
    if !require_root() {
        return;
    }
    let (text, calls) = cancel_runs_the_trap("lsf", "lsf_job_cancellation = true", shape);
    assert!(
        text.contains("asking the job to stop (SIGTERM)"),
        "{shape}: {text}"
    );
    assert!(calls.contains("bsub -o "), "{shape}: {calls}");
    assert!(calls.contains(" -J ci-"), "{shape}: {calls}");
    assert!(calls.contains("\nbkill -s TERM 1000\n"), "{shape}: {calls}");
}

fn lsf_job_name_belongs_to_the_user_without_job_cancellation(shape: Shape) {
    if !require_root() {
        return;
    }
    // Without lsf_job_cancellation the driver does not name the job: the user's -J stays.
    let mut f = fake("lsf", "");
    f.h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "-J my-own-name -n 1");
    let out =
        f.h.run("build_script", &runner_script_in(shape, "echo named\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let name = std::fs::read_to_string(f.only_job().join("name")).unwrap();
    assert_eq!(name.trim(), "my-own-name");
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");

    // With it, the driver names the job and refuses the user's -J.
    let mut f = fake("lsf", "lsf_job_cancellation = true");
    let out =
        f.h.run("build_script", &runner_script_in(shape, "echo named\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let name = std::fs::read_to_string(f.only_job().join("name")).unwrap();
    assert_eq!(name.trim(), format!("ci-{}", f.h.job_id));
    f.h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "-J my-own-name");
    let out =
        f.h.run("build_script", &runner_script_in(shape, "echo named\n"));
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refusing scheduler argument \"-J\""),
        "{shape}: {}",
        show(&out)
    );
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
}

fn lsf_cleanup_cancels_an_orphan(shape: Shape) {
    if !require_root() {
        return;
    }
    cleanup_cancels_an_orphan("lsf", shape);
}

fn lsf_refuses_illegal_arguments(shape: Shape) {
    if !require_root() {
        return;
    }
    refuses("lsf", "-n 2 -oo /tmp/x", "-oo", shape);
    refuses("lsf", "-Is", "-Is", shape);
}

// Cobalt.

fn cobalt_streams_output_and_succeeds(shape: Shape) {
    if !require_root() {
        return;
    }
    streams_output_and_succeeds("cobalt", shape);
}

fn cobalt_exit_code_7_from_the_cobaltlog(shape: Shape) {
    if !require_root() {
        return;
    }
    exit_code_7("cobalt", "", shape);
}

fn cobalt_exit_code_7_from_the_output_with_skip_cobalt_log(shape: Shape) {
    if !require_root() {
        return;
    }
    exit_code_7("cobalt", "skip_cobalt_log = true", shape);
}

fn cobalt_skip_cobalt_log_takes_the_status_from_the_output(shape: Shape) {
    if !require_root() {
        return;
    }
    // The job makes its Cobalt log unwritable (a directory in its place): the status can
    // only come from the echo in the output file.
    let f = fake("cobalt", "skip_cobalt_log = true");
    let log = f.h.scripts_job_dir().join("build_script.cobaltlog");
    let script = format!(
        "rm -f {l}; mkdir {l}\necho working\nexit 5\n",
        l = log.display()
    );
    let out = f.h.run("build_script", &runner_script_in(shape, &script));
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        f.h.build_exit_code().as_deref(),
        Some("5"),
        "{shape}: {}",
        show(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("working"), "{shape}: {text}");
    assert!(log.is_dir());
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
}

fn cobalt_cancel_runs_the_trap(shape: Shape) {
    if !require_root() {
        return;
    }
    cancel_runs_the_trap("cobalt", "", shape);
}

/// The same stage submitted twice in one job (see `sections`): the first job's Cobalt log
/// (`build_script.cobaltlog`, which Cobalt appends to) says "exit code of 7"; the second
/// job ends 0 but keeps Cobalt from writing its own last line (its log unwritable). The
/// second call reports its own job's end, never the first's 7. (Before: the stale log was
/// read, "exit code 7".)
fn cobalt_build_script_arriving_twice_never_takes_the_first_calls_exit_code(shape: Shape) {
    if !require_root() {
        return;
    }
    let f = fake("cobalt", "");
    let out = f.h.run(
        "build_script",
        &runner_script_in(shape, "echo first-call\nexit 7\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(f.h.build_exit_code().as_deref(), Some("7"), "{shape}");
    let log = f.h.scripts_job_dir().join("build_script.cobaltlog");
    let body = format!("chmod a-w {}\necho second-call\n", log.display());
    let out = f.h.run("build_script", &runner_script_in(shape, &body));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("second-call"), "{shape}: {}", show(&out));
    assert!(
        !text.contains("first-call"),
        "{shape}: replayed: {}",
        show(&out)
    );
    assert!(
        out.status.success(),
        "{shape}: the first call's exit code came back (build exit code {:?}): {}",
        f.h.build_exit_code(),
        show(&out)
    );
    assert!(f.h.cleanup().status.success(), "{shape}: cleanup");
}

fn cobalt_cleanup_cancels_an_orphan(shape: Shape) {
    if !require_root() {
        return;
    }
    cleanup_cancels_an_orphan("cobalt", shape);
}

fn cobalt_refuses_illegal_arguments(shape: Shape) {
    if !require_root() {
        return;
    }
    refuses("cobalt", "-n 1 --debuglog /tmp/x", "--debuglog", shape);
    refuses("cobalt", "-O pfx", "-O", shape);
}
