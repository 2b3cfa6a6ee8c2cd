//! The Slurm executor against a real one-node Slurm (scripts/slurm/slurm-up.sh, started by
//! scripts/test.sh), jobs submitted as the real non-root user `jacamar-ci`: the driver
//! itself runs as that user with `downscope = "none"`. Needs root (to start the driver as
//! another user); without a running Slurm these tests fail, loudly.

use std::process::Command;
use std::time::{Duration, Instant};

// Re-exported for the other batch tests (sec_shell imports them from here).
use crate::harness::{
    alive, descendants, proc_stat, require_root, runner_script_in, show, wait_for, Harness, Shape,
};
pub use crate::harness::{children, lines_of, wait_exit, wait_line};
use crate::shape_tests;

/// The non-root user jobs are submitted as (created by scripts/test.sh).
pub fn ci_user() -> String {
    std::env::var("JACAMAR_TEST_BATCH_USER").unwrap_or_else(|_| "jacamar-ci".to_string())
}

/// Fail loudly when Slurm is not up: these tests must never pass without it.
pub fn require_slurm() {
    let ping = Command::new("scontrol").arg("ping").output();
    let ok = matches!(&ping, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("is UP"));
    assert!(
        ok,
        "Slurm is not running ({ping:?}); start it with `SLURM_CI_USER=jacamar-ci bash scripts/slurm/slurm-up.sh` \
         (scripts/test.sh does this before the tests)"
    );
}

const GENERAL: &str = "kill_timeout = \"5s\"";
const BATCH: &str = "command_delay = \"1s\"\nnfs_timeout = \"20s\"";

fn slurm(batch_extra: &str) -> Harness {
    require_slurm();
    let mut h = Harness::batch(
        "slurm",
        &ci_user(),
        GENERAL,
        &format!("{BATCH}\n{batch_extra}"),
    );
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// The job name the driver gives the CI job.
fn job_name(h: &Harness) -> String {
    format!("ci-{}", h.job_id)
}

/// `(job id, user)` of active (listed by default squeue) Slurm jobs named `name`.
pub fn slurm_jobs(name: &str) -> Vec<(String, String)> {
    let o = Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i %u"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (id, user) = l.trim().split_once(' ')?;
            Some((id.to_string(), user.to_string()))
        })
        .collect()
}

/// Slurm ids of active jobs named `name`.
fn active_jobs(name: &str) -> Vec<String> {
    slurm_jobs(name).into_iter().map(|(id, _)| id).collect()
}

/// The recorded scheduler job id of `h`'s job.
fn recorded_id(h: &Harness) -> Option<String> {
    let text = std::fs::read_to_string(h.scripts_job_dir().join("batch-jobs")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("job slurm ").map(str::to_string))
}

/// The runner's hardest stop of a run call: SIGKILL to `jacamar` (the user side, first, so
/// nothing is left to notice the runner's side going away), then to `jacamar-auth`, reaped.
pub fn sigkill_drivers(child: &mut std::process::Child) {
    let drivers = driver_processes(child);
    let kill = |p: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    for p in children(child.id()) {
        kill(p);
    }
    kill(child.id() as i32);
    let _ = child.wait();
    assert!(
        wait_for(Duration::from_secs(60), || drivers
            .iter()
            .all(|&p| !alive(p))),
        "processes of the killed run call are left: {:?}",
        drivers.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

/// The run call `child` and its descendants in its session: every process of ours that
/// could still stop the job (a fake scheduler's job runs in a session of its own, a Slurm
/// job under slurmstepd).
fn driver_processes(child: &std::process::Child) -> Vec<i32> {
    let root = child.id() as i32;
    let session = |p: i32| proc_stat(p).and_then(|f| f.get(3).cloned());
    let ours = session(root);
    let mut v: Vec<i32> = descendants(root)
        .into_iter()
        .filter(|&p| session(p) == ours)
        .collect();
    v.push(root);
    v
}

/// A job body that prints `started`, then appends a line to `beat` every 0.2 s, forever.
pub fn heartbeat_job(beat: &std::path::Path) -> String {
    format!(
        "echo started\nwhile :; do echo beat >> '{}'; sleep 0.2; done\n",
        beat.display()
    )
}

/// Whether the job writing `beat` (see [`heartbeat_job`]) adds five more lines within 60 s:
/// after [`sigkill_drivers`], proof that it runs on with nothing of ours left to stop it.
pub fn beats_on(beat: &std::path::Path) -> bool {
    let count = || {
        std::fs::read_to_string(beat)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let n0 = count();
    wait_for(Duration::from_secs(60), || count() >= n0 + 5)
}

shape_tests!(
    root:
    output_is_streamed_live_and_success_reported,
    exit_code_7_reaches_the_build_exit_code_file,
    sigterm_cancels_the_slurm_job_and_its_trap_runs,
    cleanup_cancels_the_job_after_sigkill_of_both_drivers,
    output_moved_in_late_arrives_within_nfs_timeout,
    illegal_arguments_are_refused_by_name,
    allow_illegal_args_lets_them_through,
    quoted_arguments_and_arguments_variable_order,
    env_vars_path_extends_the_job_path,
    cleanup_never_passes_a_forged_record_id_to_slurm,
);

fn output_is_streamed_live_and_success_reported(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("");
    let mut child = h.spawn_run(
        "build_script",
        &runner_script_in(shape, "for i in 1 2 3 4 5 6 7 8; do echo \"tick $i as $(id -un) in job ${SLURM_JOB_ID:-none}\"; sleep 1; done\n"),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "tick 2 as", Duration::from_secs(60), &mut seen),
        "{shape}: no live output: {seen:?}"
    );
    // The job is still running when its second line reaches us.
    let active = active_jobs(&job_name(&h));
    assert_eq!(
        active.len(),
        1,
        "{shape}: job not running while its output arrived: {seen:?}"
    );
    let st = wait_exit(&mut child, Duration::from_secs(120)).expect("run did not end");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    assert!(st.success(), "run failed: {seen:#?}");
    let text = seen.join("\n");
    for i in 1..=8 {
        assert!(
            text.contains(&format!("tick {i} as jacamar-ci in job {}", active[0])),
            "{shape}: tick {i} missing: {text}"
        );
    }
    assert!(
        text.contains(&format!("Submitted slurm job {}", active[0])),
        "{shape}: {text}"
    );
    assert_eq!(recorded_id(&h).as_deref(), Some(active[0].as_str()));
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(!h.scripts_job_dir().exists());
}

fn exit_code_7_reaches_the_build_exit_code_file(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("");
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "echo before the end\nexit 7\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some("7"),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("before the end"),
        "{shape}: {}",
        show(&out)
    );
    // Every other stage runs on the host, not through the scheduler.
    let out = h.run(
        "after_script",
        &runner_script_in(shape, "echo after on host ${SLURM_JOB_ID:-nojob}\n"),
    );
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("after on host nojob"),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn sigterm_cancels_the_slurm_job_and_its_trap_runs(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("");
    let marker = h.data_dir.join(format!("trap-{}", h.job_id));
    let script = format!(
        "trap 'echo trapped TERM; touch {m}; exit 3' TERM\necho started\nsleep 300 &\nwait\necho not reached\n",
        m = marker.display()
    );
    let mut child = h.spawn_run("build_script", &runner_script_in(shape, &script));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(60), &mut seen),
        "{shape}: {seen:?}"
    );
    let ours: Vec<i32> = children(child.id());
    assert!(!ours.is_empty(), "jacamar not found under jacamar-auth");
    let name = job_name(&h);
    assert_eq!(active_jobs(&name).len(), 1);

    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Ended, and within kill_timeout (5 s) + a generous margin for a loaded machine.
    let gone = wait_for(Duration::from_secs(5 + 60), || {
        active_jobs(&name).is_empty()
    });
    assert!(
        gone,
        "{shape}: slurm job still listed {:?} after {:?}",
        active_jobs(&name),
        t0.elapsed()
    );
    let st = wait_exit(&mut child, Duration::from_secs(60)).expect("run call did not exit");
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
        h.build_exit_code().as_deref(),
        Some(want.as_str()),
        "{shape}: {text}"
    );
    // Graceful cancel keeps the job directory: after_script still runs.
    assert!(h.scripts_job_dir().is_dir());
    let out = h.run("after_script", &runner_script_in(shape, "echo after ran\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn cleanup_cancels_the_job_after_sigkill_of_both_drivers(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("");
    let beat = h.data_dir.join(format!("beat-{}", h.job_id));
    let mut child = h.spawn_run(
        "build_script",
        &runner_script_in(shape, &heartbeat_job(&beat)),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(60), &mut seen),
        "{shape}: {seen:?}"
    );
    let name = job_name(&h);
    let ids = active_jobs(&name);
    assert_eq!(ids.len(), 1);
    sigkill_drivers(&mut child);
    assert!(beats_on(&beat), "{shape}: the job stopped with its drivers");
    assert_eq!(
        active_jobs(&name),
        ids,
        "{shape}: the job must outlive its killed drivers until cleanup"
    );
    assert_eq!(recorded_id(&h), Some(ids[0].clone()));

    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("cancelling slurm job {}", ids[0])),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        wait_for(Duration::from_secs(30), || active_jobs(&name).is_empty()),
        "{shape}: cleanup left {:?}",
        active_jobs(&name)
    );
    assert!(!h.scripts_job_dir().exists());
}

fn output_moved_in_late_arrives_within_nfs_timeout(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("");
    let out_file = h.scripts_job_dir().join("build_script.out");
    let tmp = h.data_dir.join(format!("elsewhere-{}", h.job_id));
    // The job hides its output file, writes elsewhere, and a detached helper moves the
    // file in 3 s after the job ended (what a slow NFS client looks like from here). The job
    // ends only once the helper runs in its own session: a helper still in the job's process
    // group when the batch step ends is killed with it (proctrack/pgid), a race under load.
    let script = format!(
        "rm -f '{o}'\nfor i in 1 2 3 4 5; do echo \"late line $i\" >> '{t}'; done\nprintf 'no newline at the end' >> '{t}'\n\
         setsid bash -c \"touch '{t}.moving'; sleep 3; mv '{t}' '{o}'\" </dev/null >/dev/null 2>&1 &\n\
         while [ ! -e '{t}.moving' ]; do sleep 0.05; done\nexit 0\n",
        o = out_file.display(),
        t = tmp.display()
    );
    let out = h.run("build_script", &runner_script_in(shape, &script));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=5 {
        assert!(
            text.contains(&format!("late line {i}\n")),
            "{shape}: line {i} lost: {}",
            show(&out)
        );
    }
    assert!(
        text.contains("no newline at the end\n"),
        "{shape}: partial last line lost: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn illegal_arguments_are_refused_by_name(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut h = slurm("");
    h.set(
        "CUSTOM_ENV_SCHEDULER_PARAMETERS",
        "-N 1 --output=/tmp/elsewhere.out",
    );
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "echo must not run\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("refusing scheduler argument \"--output=/tmp/elsewhere.out\""),
        "{shape}: {text}"
    );
    assert!(!text.contains("must not run"));
    assert!(recorded_id(&h).is_none(), "nothing may be submitted");
    for bad in ["-J x", "--wait", "-e err", "--chdir=/"] {
        h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", bad);
        let out = h.run("build_script", &runner_script_in(shape, "true\n"));
        assert_eq!(out.status.code(), Some(1), "{shape} {bad}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("refusing scheduler argument"),
            "{bad}"
        );
    }
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn allow_illegal_args_lets_them_through(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut h = slurm("allow_illegal_args = true");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--job-name=custom-name");
    let out = h.run(
        "build_script",
        &runner_script_in(
            shape,
            "scontrol show job $SLURM_JOB_ID | grep -o 'JobName=[^ ]*'\n",
        ),
    );
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("JobName=custom-name"),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn quoted_arguments_and_arguments_variable_order(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut h = slurm("arguments_variable = [\"SITE_PARAMS\", \"SCHEDULER_PARAMETERS\"]\nenv_vars = [\"SITE_MODE=debug x\"]");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--comment=ignored");
    h.set(
        "CUSTOM_ENV_SITE_PARAMS",
        r#"--comment="two words, 'single' and \"double\"" -N 1"#,
    );
    let out = h.run(
        "build_script",
        &runner_script_in(
            shape,
            "scontrol show job $SLURM_JOB_ID | grep -o 'Comment=.*'\necho \"mode=$SITE_MODE\"\n",
        ),
    );
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"Comment=two words, 'single' and "double""#),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        text.contains("mode=debug x"),
        "{shape}: env_vars not passed: {}",
        show(&out)
    );
    assert!(
        text.contains("arguments from SITE_PARAMS"),
        "{shape}: {}",
        show(&out)
    );
    // Unbalanced quotes: a clear error, nothing submitted.
    h.set("CUSTOM_ENV_SITE_PARAMS", "--comment='open");
    let out = h.run("build_script", &runner_script_in(shape, "true\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("failed to split SITE_PARAMS: unterminated single quote"),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

/// `env_vars` values expand `$NAME` against the job's environment: `PATH=$PATH:/opt/jrs-x`
/// extends PATH, so the scheduler's commands are still found (a literal `$PATH` lost them).
/// The job's own shell sets its PATH anew, so a second entry shows the extended value there.
fn env_vars_path_extends_the_job_path(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm("env_vars = [\"PATH=$PATH:/opt/jrs-x\", \"JRS_SEEN_PATH=${PATH}\"]");
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "echo \"path=[$JRS_SEEN_PATH]\"\n"),
    );
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Submitted slurm job"),
        "{shape}: {}",
        show(&out)
    );
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("path=["))
        .unwrap_or_else(|| panic!("{shape}: no path line: {}", show(&out)));
    assert!(path.ends_with(":/opt/jrs-x]"), "{path}");
    assert!(!path.contains('$'), "{path}");
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn twenty_concurrent_jobs_keep_their_logs_apart() {
    if !require_root() {
        return;
    }
    require_slurm();
    let handles: Vec<_> = (0..20)
        .map(|n| {
            std::thread::spawn(move || {
                // Half the jobs in each shape of the runner's script.
                let shape = Shape::BOTH[n % 2];
                let h = slurm("");
                let out = h.run(
                    "build_script",
                    &runner_script_in(
                        shape,
                        &format!("for i in 1 2 3; do echo \"job-{n}-line-$i\"; sleep 0.5; done\n"),
                    ),
                );
                let cleanup = h.cleanup();
                (n, shape, out, cleanup)
            })
        })
        .collect();
    for hd in handles {
        let (n, shape, out, cleanup) = hd.join().unwrap();
        assert!(out.status.success(), "job {n} ({shape}): {}", show(&out));
        assert!(
            cleanup.status.success(),
            "job {n} ({shape}) cleanup: {}",
            show(&cleanup)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with("job-")).collect();
        assert_eq!(
            mine,
            [
                format!("job-{n}-line-1"),
                format!("job-{n}-line-2"),
                format!("job-{n}-line-3")
            ],
            "job {n} ({shape}) log: {text}"
        );
    }
}

/// Finding 5 of issue 16: the record of a job's scheduler ids (`batch-jobs`, in its scripts
/// dir) is writable by the job. Ids that are not Slurm job ids (option-looking ones, one
/// with an escape sequence) are reported, escaped, and skipped: no Slurm command ever gets
/// them, and nothing raw reaches the runner's log; a well-formed id is still asked about.
/// (Before: `scontrol` and `scancel` got `--uid=0…` and the escape sequence was printed.)
fn cleanup_never_passes_a_forged_record_id_to_slurm(shape: Shape) {
    if !require_root() {
        return;
    }
    use crate::sched_bin::{exec_real, which, SchedBin};
    require_slurm();
    let tools: Vec<(&str, String)> = ["sbatch", "scancel", "scontrol", "sacct", "squeue"]
        .into_iter()
        .map(|t| (t, exec_real(&which(t))))
        .collect();
    let bin = SchedBin::new("jrs-forged-ids-", &tools);
    let mut h = Harness::batch(
        "slurm",
        &ci_user(),
        GENERAL,
        &format!("{BATCH}\nscheduler_bin = \"{}\"", bin.path().display()),
    );
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let record = h.scripts_job_dir().join("batch-jobs");
    // The job itself appends to its record (a host stage, run as the job's user).
    let body = format!(
        "printf 'job slurm --uid=0\\n' >> {r}\n\
         printf 'job slurm --uid=0\\033[31m\\n' >> {r}\n\
         printf 'job slurm 7\\033[31mred\\n' >> {r}\n\
         printf 'job slurm -u alice\\n' >> {r}\n\
         printf 'job slurm 999999999\\n' >> {r}\n\
         echo record-written\n",
        r = record.display()
    );
    let out = h.run("after_script", &runner_script_in(shape, &body));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("record-written"),
        "{}",
        show(&out)
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    let calls = bin.calls();
    let forged: Vec<_> = calls
        .iter()
        .filter(|(_, _, args)| {
            args.contains("--uid")
                || args.contains('\u{1b}')
                || args.contains("red")
                || args.split(' ').any(|w| w == "-u")
        })
        .collect();
    assert!(
        forged.is_empty(),
        "a Slurm command got a forged id: {forged:?}\n{}",
        show(&out)
    );
    assert!(
        calls
            .iter()
            .any(|(_, tool, args)| tool == "scontrol" && args.contains("999999999")),
        "the well-formed id was not asked about: {calls:?}\n{}",
        show(&out)
    );
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "cleanup printed a raw escape sequence: {}",
        show(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for shown in [
        "\"--uid=0\"",
        "\"--uid=0\\u{1b}[31m\"",
        "\"7\\u{1b}[31mred\"",
        "-u alice",
    ] {
        assert!(err.contains(shown), "{shown} not reported: {}", show(&out));
    }
}
