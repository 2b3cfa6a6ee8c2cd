//! Cancellation, parent death and the backstop through the real binaries.
//!
//! Each test starts a `run` call the way the runner does (its own process group), with a
//! job that records the pid of every process it starts: the shell, a child that ignores
//! SIGTERM, and a double-forked grandchild that left the group with `setsid`. Every test
//! runs under each shape of the runner's script ([`Shape`]): what the script's own shell
//! does on the runner's SIGTERM differs between them, and so does the status reported.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::harness::{
    alive, descendants, pids_in, runner_script_in, show, wait_for, Harness, Shape,
};
use crate::shape_tests;

/// A job that traps TERM, starts a TERM-ignoring child and a double-forked grandchild,
/// then waits. `ignore_term_itself` makes the shell ignore TERM too.
fn stubborn_job(mark: &Path, ignore_term_itself: bool) -> String {
    let m = mark.display();
    let trap = if ignore_term_itself {
        "trap '' TERM".to_string()
    } else {
        format!("trap 'echo trap-ran > {m}/trapped; exit 143' TERM")
    };
    format!(
        r#"{trap}
echo $$ >> {m}/pids
bash -c 'trap "" TERM; echo $$ >> {m}/pids; while :; do sleep 0.2; done' &
( setsid bash -c 'echo $$ >> {m}/pids; exec sleep 300' & )
while [ "$(wc -l < {m}/pids)" -lt 3 ]; do sleep 0.05; done
touch {m}/ready
echo job-is-running
sleep 300 &
wait $!
wait $!
"#
    )
}

fn start(h: &Harness, shape: Shape, script: &str) -> (std::process::Child, Vec<i32>) {
    let mark = h.tmp.path().join("mark");
    let child = h.spawn_run("build_script", &runner_script_in(shape, script));
    assert!(
        wait_for(Duration::from_secs(20), || mark.join("ready").exists()),
        "{shape}: job never got ready"
    );
    let mut tree = descendants(child.id() as i32);
    tree.extend(pids_in(&mark.join("pids")));
    tree.sort_unstable();
    tree.dedup();
    assert!(
        tree.len() >= 4,
        "{shape}: expected jacamar, bash and the job's processes: {tree:?}"
    );
    (child, tree)
}

fn ready_harness(kill_timeout: &str) -> Harness {
    let mut h = Harness::new(&format!("kill_timeout = \"{kill_timeout}\""));
    std::fs::create_dir(h.tmp.path().join("mark")).unwrap();
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    h
}

/// A generous margin over a supervision deadline (kill_timeout, the backstop): the tests
/// prove the ordering and the escalation, not latency (that belongs to the benches), on a
/// loaded 2-core machine running debug builds.
const MARGIN: Duration = Duration::from_secs(20);

fn all_gone_within(pids: &[i32], limit: Duration) -> Result<Duration, Vec<i32>> {
    let t0 = Instant::now();
    if wait_for(limit, || pids.iter().all(|&p| !alive(p))) {
        Ok(t0.elapsed())
    } else {
        Err(pids.iter().copied().filter(|&p| alive(p)).collect())
    }
}

shape_tests!(
    all: cancel_runs_the_trap_and_leaves_no_process,
    a_job_ignoring_sigterm_is_killed_at_kill_timeout,
    an_inherited_blocked_sigterm_does_not_stop_the_cancel,
    a_slow_term_trap_in_the_runners_script_runs_to_its_end,
);
shape_tests!(
    sigkill_of_jacamar_auth_still_ends_the_job_and_cleanup_works,
    backstop_ends_a_job_nobody_cancelled,
    cleanup_during_a_dying_run_is_safe,
    leftover_background_processes_are_swept_when_the_script_ends,
);

fn cancel_runs_the_trap_and_leaves_no_process(shape: Shape) {
    let h = ready_harness("2s");
    let mark = h.tmp.path().join("mark");
    let (child, tree) = start(&h, shape, &stubborn_job(&mark, false));
    // The runner's cancel: SIGTERM to the call's whole process group.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // The TERM-ignoring child goes at kill_timeout (2 s).
    let gone = all_gone_within(&tree, Duration::from_secs(2) + MARGIN);
    let out = child.wait_with_output().unwrap();
    assert!(
        gone.is_ok(),
        "{shape}: survivors {:?}\n{}",
        gone,
        show(&out)
    );
    assert!(
        mark.join("trapped").exists(),
        "{shape}: the job's TERM trap did not run"
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    // The body's trap exits 143; the script's shell reports that (v17), dies of the TERM
    // itself (legacy) or exits 1 from its own trap (current).
    let want = shape.cancelled_status(143).to_string();
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some(want.as_str()),
        "{shape}: {}",
        show(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIGTERM"),
        "{shape}: stop not explained: {err}"
    );
}

fn a_job_ignoring_sigterm_is_killed_at_kill_timeout(shape: Shape) {
    let h = ready_harness("1s");
    let mark = h.tmp.path().join("mark");
    let (child, tree) = start(&h, shape, &stubborn_job(&mark, true));
    let t0 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let gone = all_gone_within(&tree, Duration::from_secs(1) + MARGIN);
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert!(
        gone.is_ok(),
        "{shape}: survivors {:?}\n{}",
        gone,
        show(&out)
    );
    assert!(
        took >= Duration::from_millis(900),
        "{shape}: killed before kill_timeout: {took:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    // Legacy: the script's own shell (around `: | eval`) has no trap and died of the TERM:
    // its status is the build's. What ignored the TERM (the body's subshell and its
    // children) was given kill_timeout all the same, then killed. (Before, the leader's
    // exit started the sweep at once: "killed before kill_timeout: 526ms".) The newer
    // shapes' shell traps the TERM and waits for the body, which ignores it: the SIGKILL at
    // kill_timeout ends it too.
    let want = match shape {
        Shape::Legacy => "143",
        Shape::V17 | Shape::Current => "137",
    };
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some(want),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGKILL"),
        "{shape}: {}",
        show(&out)
    );
}

fn sigkill_of_jacamar_auth_still_ends_the_job_and_cleanup_works(shape: Shape) {
    let h = ready_harness("1s");
    let mark = h.tmp.path().join("mark");
    let (mut child, tree) = start(&h, shape, &stubborn_job(&mark, false));
    // The runner's last resort: SIGKILL, which jacamar-auth cannot forward.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let gone = all_gone_within(&tree, Duration::from_secs(1) + MARGIN);
    assert!(gone.is_ok(), "{shape}: orphans survived: {gone:?}");
    assert!(
        mark.join("trapped").exists(),
        "{shape}: the job was not told to stop"
    );
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(!h.scripts_job_dir().exists(), "{shape}");
}

fn backstop_ends_a_job_nobody_cancelled(shape: Shape) {
    let mut h = ready_harness("1s");
    h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", "1");
    h.set("JACAMAR_RS_BACKSTOP_GRACE", "1");
    let t0 = Instant::now();
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "trap 'exit 143' TERM\nsleep 300 &\nwait $!\n"),
    );
    let took = t0.elapsed();
    // The job would sleep 300 s: it ends at timeout (1 s) + grace (1 s), plus kill_timeout
    // at the most.
    assert!(
        took >= Duration::from_secs(2),
        "{shape}: backstop too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3) + MARGIN,
        "{shape}: backstop too late: {took:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maximum duration"),
        "{shape}: {}",
        show(&out)
    );
}

fn cleanup_during_a_dying_run_is_safe(shape: Shape) {
    let h = ready_harness("3s");
    let mark = h.tmp.path().join("mark");
    let (child, tree) = start(&h, shape, &stubborn_job(&mark, true));
    // Hard abort: the runner sends SIGTERM, then runs cleanup while run is still dying.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        let out = h.cleanup();
        assert!(
            out.status.success(),
            "{shape}: cleanup #{i}: {}",
            show(&out)
        );
    }
    let gone = all_gone_within(&tree, Duration::from_secs(3) + MARGIN);
    let out = child.wait_with_output().unwrap();
    assert!(
        gone.is_ok(),
        "{shape}: survivors {:?}\n{}",
        gone,
        show(&out)
    );
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        !h.scripts_job_dir().exists(),
        "{shape}: cleanup left the job's scripts"
    );
}

fn leftover_background_processes_are_swept_when_the_script_ends(shape: Shape) {
    // A kill_timeout far above the bound below: the sweep must not wait for it (it sends
    // SIGKILL after min(kill_timeout, 500 ms)), nor for the leftovers' `sleep 300`.
    let h = ready_harness("120s");
    let mark = h.tmp.path().join("mark");
    let m = mark.display();
    let t0 = Instant::now();
    let out = h.run(
        "build_script",
        &runner_script_in(shape, &format!(
            ": > {m}/left\nbash -c 'trap \"\" TERM; echo $$ >> {m}/left; exec sleep 300' &\n( setsid bash -c 'echo $$ >> {m}/left; exec sleep 300' & )\nwhile [ \"$(wc -l < {m}/left)\" -lt 2 ]; do sleep 0.05; done\necho done\n"
        )),
    );
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "{shape}: the stage waited for leftovers (or kill_timeout): {:?}",
        t0.elapsed()
    );
    let left = pids_in(&mark.join("left"));
    assert_eq!(left.len(), 2, "{shape}");
    assert!(
        left.iter().all(|&p| !alive(p)),
        "{shape}: leftovers survived: {left:?}"
    );
}

/// A runner (or wrapper) that starts jacamar-auth with SIGTERM blocked must not make the
/// cancel a no-op: jacamar-auth clears the signal mask it inherits, so the job's trap runs.
fn an_inherited_blocked_sigterm_does_not_stop_the_cancel(shape: Shape) {
    use std::os::unix::process::CommandExt;
    let h = ready_harness("2s");
    let mark = h.tmp.path().join("mark");
    let p = h.script_file(
        "build_script",
        &runner_script_in(shape, &stubborn_job(&mark, false)),
    );
    let mut cmd = h.auth(&["run", &p.display().to_string(), "build_script"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: sigprocmask is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(Signal::SIGTERM);
            nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || mark.join("ready").exists()),
        "{shape}: job never got ready"
    );
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let trapped = wait_for(Duration::from_secs(2) + MARGIN, || {
        mark.join("trapped").exists()
    });
    if !trapped {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        trapped,
        "{shape}: the cancel never reached the job: {}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
}

/// The runner's script runs the job's body in a subshell. In the legacy shape (`: | eval
/// ...`) its own shell dies of the TERM at once on a cancel, while the body's TERM trap is
/// just starting: the trap still runs to its end within kill_timeout (before, the leader's
/// exit started the sweep, which killed the trap mid-way: "trap-done" never came). The
/// newer shapes' shell waits for the body; the status it then reports differs per shape.
fn a_slow_term_trap_in_the_runners_script_runs_to_its_end(shape: Shape) {
    let h = ready_harness("20s");
    let mark = h.tmp.path().join("mark");
    let script = format!(
        "trap 'echo trap-start; sleep 2; echo trap-done; touch {m}/trap-done; exit 3' TERM\n\
         touch {m}/ready\nsleep 300 &\nwait $!\necho not-reached\n",
        m = mark.display()
    );
    let child = h.spawn_run("build_script", &runner_script_in(shape, &script));
    assert!(
        wait_for(Duration::from_secs(20), || mark.join("ready").exists()),
        "{shape}: job never got ready"
    );
    let t0 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        mark.join("trap-done").exists() && text.contains("trap-done"),
        "{shape}: the trap was cut short: {}",
        show(&out)
    );
    assert!(!text.contains("not-reached"), "{shape}: {}", show(&out));
    assert!(
        took < Duration::from_secs(20),
        "{shape}: waited for kill_timeout although the trap ended: {took:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    let want = shape.cancelled_status(3).to_string();
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some(want.as_str()),
        "{shape}: {}",
        show(&out)
    );
}
