//! The PBS executor against Debian's `slurm-wlm-torque` (real `qsub`/`qstat`/`qdel` over the
//! real Slurm that scripts/test.sh starts), as the non-root user `jacamar-ci`. Needs root.

use std::time::Duration;

use crate::batch_slurm::{ci_user, require_slurm, slurm_jobs};
use crate::harness::{require_root, runner_script_in, show, wait_for, Harness, Shape};
use crate::shape_tests;

/// Fail loudly when Slurm or its Torque wrappers (`qsub`) are missing: the PBS tests must
/// never pass without them.
pub fn require_torque() {
    require_slurm();
    assert!(
        std::process::Command::new("qsub")
            .arg("--help")
            .output()
            .is_ok(),
        "qsub missing: install slurm-wlm-torque (scripts/test.sh does)"
    );
}

fn pbs() -> Harness {
    require_torque();
    let mut h = Harness::batch(
        "pbs",
        &ci_user(),
        "kill_timeout = \"5s\"",
        "command_delay = \"1s\"\nnfs_timeout = \"10s\"",
    );
    h.config_json();
    assert!(h.prepare().status.success());
    h
}

shape_tests!(
    root:
    pbs_job_streams_output_and_reports_its_exit_code,
    pbs_refuses_output_arguments,
    pbs_cleanup_cancels_an_orphaned_job,
);

fn pbs_job_streams_output_and_reports_its_exit_code(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = pbs();
    let out = h.run(
        "build_script",
        &runner_script_in(
            shape,
            "echo \"pbs says hi as $(id -un)\"\necho to stderr >&2\nexit 7\n",
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some("7"),
        "{shape}: {}",
        show(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pbs says hi as jacamar-ci"),
        "{shape}: {}",
        show(&out)
    );
    assert!(text.contains("to stderr"), "{shape}: {}", show(&out));
    assert!(
        text.contains("Submitted pbs job"),
        "{shape}: {}",
        show(&out)
    );
    let out = h.run("build_script", &runner_script_in(shape, "echo fine\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn pbs_refuses_output_arguments(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut h = pbs();
    h.set(
        "CUSTOM_ENV_SCHEDULER_PARAMETERS",
        "-l walltime=00:05:00 -o /tmp/x",
    );
    let out = h.run("build_script", &runner_script_in(shape, "echo no\n"));
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refusing scheduler argument \"-o\""),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn pbs_cleanup_cancels_an_orphaned_job(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = pbs();
    let mut child = h.spawn_run(
        "build_script",
        &runner_script_in(shape, "echo started\nsleep 300\n"),
    );
    let out_file = h.scripts_job_dir().join("build_script.out");
    assert!(wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&out_file)
            .map(|t| t.contains("started"))
            .unwrap_or(false)
    }));
    let name = format!("ci-{}", h.job_id);
    let listed = || !slurm_jobs(&name).is_empty();
    assert!(listed(), "{shape}: the job is not listed");
    let _ = child.kill();
    let _ = child.wait();
    // jacamar saw its parent go (control pipe EOF) and cancels; cleanup makes sure.
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        wait_for(Duration::from_secs(30), || !listed()),
        "{shape}: pbs job left behind"
    );
}
