//! Queue-aware waiting and classified outcomes against the real one-node Slurm (see
//! batch_slurm.rs): a pending job's state and heartbeat in the log, the CI job's deadline
//! in the submission, a job that never starts before the CI timeout, the cancel of a
//! pending job, and a time limit reported as the user's build failure.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::batch_slurm::{ci_user, lines_of, require_slurm, slurm_jobs, wait_exit, wait_line};
use crate::harness::{require_root, runner_script, show, wait_for, Harness};

/// A Slurm harness through config and prepare, `kill_timeout` in `[general]`, `batch`
/// lines in `[batch]` (after a 1 s command_delay).
fn slurm(kill_timeout: &str, batch: &str) -> Harness {
    require_slurm();
    let mut h = Harness::batch(
        "slurm",
        &ci_user(),
        &format!("kill_timeout = \"{kill_timeout}\""),
        &format!("command_delay = \"1s\"\nnfs_timeout = \"20s\"\n{batch}"),
    );
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn active(h: &Harness) -> Vec<(String, String)> {
    slurm_jobs(&format!("ci-{}", h.job_id))
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_job_waiting_for_its_begin_time_shows_pending_and_heartbeats() {
    if !require_root() {
        return;
    }
    let mut h = slurm("5s", "queue_heartbeat = \"3s\"");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--begin=now+30");
    let out = h.run(
        "build_script",
        &runner_script("echo ran after the begin time\nsleep 5\n"),
    );
    let text = text_of(&out);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text.contains("PENDING (BeginTime)"), "{text}");
    let beats = text
        .lines()
        .filter(|l| l.contains("PENDING (BeginTime)") && l.contains(", waiting "))
        .count();
    assert!(beats >= 1, "no queued heartbeat: {text}");
    assert!(text.contains("RUNNING"), "{text}");
    assert!(text.contains("ran after the begin time"), "{text}");
    assert!(h.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_submission_carries_the_ci_jobs_deadline() {
    if !require_root() {
        return;
    }
    let mut h = slurm("5s", "");
    h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", "3600");
    let t0 = std::time::SystemTime::now();
    let out = h.run(
        "build_script",
        &runner_script("scontrol show job $SLURM_JOB_ID | grep -o 'Deadline=[^ ]*'\n"),
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = text_of(&out);
    assert!(text.contains("slurm: --deadline=now+"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("Deadline="))
        .unwrap_or_else(|| panic!("no Deadline= in {text}"));
    let when = &line["Deadline=".len()..];
    assert!(
        when.starts_with("20") && when.contains('T'),
        "no deadline set: {line}"
    );
    // About an hour from the submission (Slurm prints local time; `date` reads it).
    let secs = Command::new("date")
        .args(["-d", when, "+%s"])
        .output()
        .unwrap();
    let at: u64 = String::from_utf8_lossy(&secs.stdout)
        .trim()
        .parse()
        .unwrap();
    let start = t0.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        (start + 3500..=start + 3700).contains(&at),
        "deadline {when} is not about an hour after {start}"
    );
    assert!(h.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_job_that_cannot_start_before_the_ci_timeout_never_started() {
    if !require_root() {
        return;
    }
    let mut h = slurm("5s", "");
    h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", "20");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--begin=now+300");
    let t0 = Instant::now();
    let out = h.run("build_script", &runner_script("echo must not run\n"));
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(20 + 90),
        "took {:?}: {text}",
        t0.elapsed()
    );
    assert!(
        text.contains("in the queue (BeginTime), never started"),
        "{text}"
    );
    assert!(!text.contains("must not run"), "{text}");
    assert_eq!(h.build_exit_code().as_deref(), Some("1"), "{text}");
    assert!(
        wait_for(Duration::from_secs(30), || active(&h).is_empty()),
        "still queued: {:?}",
        active(&h)
    );
    assert!(h.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn cancelling_a_pending_job_removes_it_at_once() {
    if !require_root() {
        return;
    }
    // kill_timeout 120 s: the old graceful-first cancel left the job pending that long.
    let mut h = slurm("120s", "");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--begin=now+300");
    let mut child = h.spawn_run("build_script", &runner_script("echo must not run\n"));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(
            &rx,
            "PENDING (BeginTime)",
            Duration::from_secs(60),
            &mut seen
        ),
        "{seen:?}"
    );
    assert_eq!(active(&h).len(), 1, "{seen:?}");
    // The runner's SIGTERM goes to the run call's whole process group.
    let t0 = Instant::now();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || active(&h).is_empty()),
        "pending job still listed {:?} after {:?} (kill_timeout is 120 s)",
        active(&h),
        t0.elapsed()
    );
    let st = wait_exit(&mut child, Duration::from_secs(60)).expect("run call did not exit");
    assert!(!st.success());
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert!(text.contains("removing it from the queue"), "{text}");
    assert!(!text.contains("must not run"), "{text}");
    assert!(h.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn time_limit_is_the_users_build_failure_with_the_explicit_message() {
    if !require_root() {
        return;
    }
    let mut h = slurm("5s", "");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--time=1");
    let out = h.run("build_script", &runner_script("echo sleeping\nsleep 600\n"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = text_of(&out);
    assert!(
        text.contains("ended TIMEOUT (TimeLimit): it reached the time limit it asked for"),
        "{text}"
    );
    assert!(
        text.contains("DUE TO TIME LIMIT"),
        "Slurm's own line should be streamed: {text}"
    );
    let code: i32 = h.build_exit_code().unwrap().parse().unwrap();
    assert_ne!(code, 0);
    assert!(h.cleanup().status.success());
}
