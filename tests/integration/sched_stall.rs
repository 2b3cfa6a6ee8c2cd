//! A scheduler command that stalls (a Slurm client blocking through a network outage, as
//! the docker cluster's `runner_disconnected` test does) is visible in the job log: on the
//! real Slurm, as `jacamar-ci`, with `scheduler_bin` wrappers of which `squeue` sleeps
//! 15 s once before running the real one.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{require_root, runner_script, show};
use crate::sched_bin::{exec_real, slurm_harness, slurm_wrappers, SchedBin};

/// A `scheduler_bin` dir: every Slurm tool runs the real one; the first `squeue` sleeps
/// `stall` seconds first (a marker in the world-writable `state` dir says it did).
fn stalling_bin(stall: u32) -> SchedBin {
    let bin = slurm_wrappers("jrs-stall-bin-", |real| {
        format!(
            "if mkdir \"$(dirname \"$0\")/state/stalled\" 2>/dev/null; then sleep {stall}; fi\n{}",
            exec_real(real)
        )
    });
    let state = bin.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o1777)).unwrap();
    bin
}

/// The job succeeds, and its log says that squeue stalled and when it answered. (Before,
/// the log had neither line: the stall was invisible.)
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_stalled_squeue_is_said_in_the_job_log_and_the_job_succeeds() {
    if !require_root() {
        return;
    }
    let bin = stalling_bin(15);
    let h = slurm_harness(bin.path(), "1s", None);
    let out = h.run(
        "build_script",
        &runner_script("echo job start\nsleep 3\necho job end\n"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed: {}", show(&out));
    assert!(
        bin.path().join("state/stalled").exists(),
        "squeue never stalled: {text}"
    );
    // In order; the driver's own lines may come between them (the stall notice, when the
    // job started late on a loaded node).
    let at = |l: &str| text.lines().position(|x| x == l);
    assert!(
        matches!((at("job start"), at("job end")), (Some(a), Some(b)) if a < b),
        "{text}"
    );
    let stalled = text.lines().find(|l| {
        l.starts_with("squeue ") && l.ends_with(" has not answered for 10s; still waiting")
    });
    assert!(stalled.is_some(), "no stall line: {text}");
    let answered = text
        .lines()
        .find(|l| l.starts_with("squeue ") && l.contains(" answered after "))
        .unwrap_or_else(|| panic!("no answer line: {text}"));
    let secs: u64 = answered
        .rsplit(' ')
        .next()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{answered}"));
    assert!((15..120).contains(&secs), "{answered}");
    // The output size the wrapper recorded on the compute node is what arrived.
    assert!(!text.contains("WARNING"), "{text}");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}
