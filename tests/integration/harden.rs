//! Where the issues meet: a batch job through real setuid downscoping (root jacamar-auth, a
//! verified id_token, a real test user, the real Slurm), a `limit_build_dir` claim that
//! outlives cleanup while a hard-aborted run is still dying, and the backstop of a batch
//! job. Need root (useradd, setuid) and Slurm (started by scripts/test.sh).

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::auth_kit::{ensure_user, give_token, pki, server_harness, server_lines, JwksServer};
use crate::batch_slurm::{require_slurm, slurm_jobs};
use crate::harness::runner_script;
use crate::harness::{
    alive, all_pids, descendants, lines_of, require_root, show, wait_for, Harness,
};

/// The account Slurm jobs of the setuid tests run as (created by the test, like the other
/// auth tests' accounts).
const SLURM_USER: &str = "jrs_test_slurm";

/// A harness whose root jacamar-auth verifies tokens against `server`, downscopes with
/// `setuid` and runs `executor`; `general`/`batch` are extra lines of those tables.
fn setuid_batch(server: &JwksServer, executor: &str, general: &str, batch: &str) -> Harness {
    server_harness(server, "jrs-harden", |_, data_dir| {
        format!(
            "[general]\nexecutor = \"{executor}\"\ndata_dir = \"{}\"\n{}{general}\n\
             [auth]\ndownscope = \"setuid\"\nroot_dir_creation = true\n\
             [batch]\n{batch}\n",
            data_dir.display(),
            server_lines(server),
        )
    })
}

/// Config and prepare of a setuid Slurm job for [`SLURM_USER`].
fn slurm_job(server: &JwksServer, general: &str) -> Harness {
    require_slurm();
    let mut h = setuid_batch(
        server,
        "slurm",
        general,
        "command_delay = \"1s\"\nnfs_timeout = \"20s\"",
    );
    give_token(&mut h, server, SLURM_USER);
    h.unobfuscated = true;
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// `UserId=` of `scontrol show job id` (`name(uid)`).
fn scontrol_user(id: &str) -> String {
    let o = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("UserId="))
        .unwrap_or_else(|| panic!("no UserId in {text}"))
        .to_string()
}

/// Collect lines of `rx` until one contains `pat`; fail the test if none does in `limit`.
fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    pat: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) {
    assert!(
        crate::harness::wait_line(rx, pat, limit, seen),
        "{pat:?} never arrived: {seen:#?}"
    );
}

/// The exit status of `child`; fail the test if it runs longer than `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    crate::harness::wait_exit(child, limit)
        .unwrap_or_else(|| panic!("process {} did not exit within {limit:?}", child.id()))
}

/// The processes of one CI job: every descendant of the run call `root` (jacamar-auth,
/// the downscoped jacamar, scheduler commands) and every process of Slurm job `slurm_id`
/// (found by the `SLURM_JOB_ID` in its environment).
fn job_processes(root: u32, slurm_id: &str) -> Vec<i32> {
    let mark = format!("SLURM_JOB_ID={slurm_id}");
    let mut found = descendants(root as i32);
    found.extend(all_pids().into_iter().filter(|p| {
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes())
    }));
    found.sort_unstable();
    found.dedup();
    found.into_iter().filter(|p| alive(*p)).collect()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_slurm_job_runs_as_the_user_streams_and_reports_its_exit_code() {
    if !require_root() {
        return;
    }
    let user = ensure_user(SLURM_USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = slurm_job(&server, "kill_timeout = \"5s\"");
    let name = format!("ci-{}", h.job_id);
    let mut child = h.spawn_run(
        "build_script",
        &runner_script(
            "echo \"as $(id -un) uid $(id -u) in job ${SLURM_JOB_ID:-none}\"\n\
         for i in 1 2 3 4 5 6; do echo \"tick $i\"; sleep 1; done\nexit 7\n",
        ),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_line(&rx, "tick 2", Duration::from_secs(60), &mut seen);
    // Live: the Slurm job is still running, and it belongs to the test user.
    let jobs = slurm_jobs(&name);
    assert_eq!(jobs.len(), 1, "{jobs:?} {seen:#?}");
    let (id, squeue_user) = &jobs[0];
    assert_eq!(squeue_user, SLURM_USER);
    assert_eq!(
        scontrol_user(id),
        format!("{SLURM_USER}({})", user.uid),
        "the Slurm job must belong to the job's user"
    );
    let st = wait_exit(&mut child, Duration::from_secs(120));
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert_eq!(st.code(), Some(1), "{text}");
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{text}");
    assert!(
        text.contains(&format!("as {SLURM_USER} uid {} in job {id}", user.uid)),
        "{text}"
    );
    for i in 1..=6 {
        assert!(text.contains(&format!("tick {i}")), "tick {i}: {text}");
    }
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_slurm_job_is_cancelled_by_sigterm_to_the_runs_group() {
    if !require_root() {
        return;
    }
    ensure_user(SLURM_USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let kill_timeout = Duration::from_secs(5);
    let h = slurm_job(&server, "kill_timeout = \"5s\"");
    let name = format!("ci-{}", h.job_id);
    let mut child = h.spawn_run(
        "build_script",
        &runner_script("trap 'echo trapped TERM; exit 3' TERM\necho started\nsleep 300 &\nwait\necho not reached\n"),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_line(&rx, "started", Duration::from_secs(60), &mut seen);
    let jobs = slurm_jobs(&name);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1, SLURM_USER);
    let before = job_processes(child.id(), &jobs[0].0);
    let slurm_side = before
        .iter()
        .filter(|p| !job_processes(child.id(), "none").contains(p))
        .count();
    assert!(
        before.len() >= 2 && slurm_side >= 1,
        "the driver's and the Slurm job's processes must be found: {before:?}"
    );

    // What the runner does: SIGTERM to jacamar-auth's whole process group.
    let t0 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // Ended, and within kill_timeout + a generous margin for a loaded machine.
    let gone = wait_for(kill_timeout + Duration::from_secs(60), || {
        slurm_jobs(&name).is_empty()
    });
    assert!(
        gone,
        "slurm job still listed {:?} after {:?}",
        slurm_jobs(&name),
        t0.elapsed()
    );
    let st = wait_exit(&mut child, Duration::from_secs(60));
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(text.contains("trapped TERM"), "{text}");
    assert!(!text.contains("not reached"), "{text}");
    // The runner's script runs the body in `: | eval ...`: the trap's `exit 3` ends the
    // eval's subshell, while the script's own shell, which has no trap, dies of the TERM.
    assert_eq!(h.build_exit_code().as_deref(), Some("143"), "{text}");
    for p in before {
        assert!(!alive(p), "process {p} of the job survived the cancel");
    }
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}

#[test]
fn a_claim_stays_taken_while_a_hard_aborted_run_is_still_dying() {
    let mut a = Harness::new("limit_build_dir = true\nkill_timeout = \"120s\"");
    a.set("CUSTOM_ENV_CI_PROJECT_ID", "4343");
    let project = a.base_dir().join("builds/project_4343");
    let cfg = a.config_json();
    assert_eq!(cfg["builds_dir"], project.join("000").display().to_string());
    let out = a.prepare();
    assert!(out.status.success(), "{}", show(&out));

    // A job that ignores SIGTERM (its children inherit that), so the run call keeps dying
    // for kill_timeout after the runner's SIGTERM.
    let ready = a.tmp.path().join("ready");
    let mut run = a.spawn_run(
        "build_script",
        &format!(
            "trap '' TERM\ncd {}\ntouch {}\nwhile :; do sleep 0.2; done\n",
            project.join("000").display(),
            ready.display()
        ),
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready.exists()),
        "the job never started"
    );
    // Hard abort: SIGTERM to the run call's group; the runner then starts cleanup anyway.
    let group = Pid::from_raw(run.id() as i32);
    killpg(group, Signal::SIGTERM).unwrap();
    let out = a.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run call must still be dying during cleanup"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("000 is still in use"),
        "{}",
        show(&out)
    );

    // A new job of the project must not get the directory the old script still runs in.
    let mut b = crate::builddirs::second_job(&a);
    let cfg_b = b.config_json();
    assert_eq!(
        cfg_b["builds_dir"],
        project.join("001").display().to_string(),
        "a new job was handed the directory of a run that is still alive"
    );
    assert!(run.try_wait().unwrap().is_none(), "the run ended too early");

    // A second SIGTERM ends the run at once; then the slot is free again, long before the
    // claim's original expiration.
    killpg(group, Signal::SIGTERM).unwrap();
    wait_exit(&mut run, Duration::from_secs(60));
    let mut c = crate::builddirs::second_job(&b);
    assert_eq!(
        c.config_json()["builds_dir"],
        project.join("000").display().to_string()
    );
    assert!(b.cleanup().status.success());
    assert!(c.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_backstop_cancels_a_slurm_job_that_outlives_its_timeout() {
    if !require_root() {
        return;
    }
    ensure_user(SLURM_USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = slurm_job(&server, "kill_timeout = \"30s\"");
    let name = format!("ci-{}", h.job_id);
    // A 4 s job with a 1 s grace: the backstop fires 5 s into the run; nobody cancels. The
    // job's TERM trap takes 8 s, longer than Slurm's KillWait (5 s): only the graceful
    // cancel (a signal, then kill_timeout) lets it finish.
    h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", "4");
    h.set("JACAMAR_RS_BACKSTOP_GRACE", "1");
    let mut child = h.spawn_run(
        "build_script",
        &runner_script(
            "trap 'echo trap start; sleep 8; echo trap done; exit 3' TERM
         echo started
sleep 300
echo not reached
",
        ),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_line(&rx, "started", Duration::from_secs(60), &mut seen);
    let jobs = slurm_jobs(&name);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let st = wait_exit(&mut child, Duration::from_secs(120));
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let text = format!("{}\n{err}", seen.join("\n"));
    assert!(
        slurm_jobs(&name).is_empty(),
        "the Slurm job outlived the backstop: {:?}\n{text}",
        slurm_jobs(&name)
    );
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(!text.contains("not reached"), "{text}");
    assert!(
        text.contains("trap done"),
        "the job's trap was cut short: {text}"
    );
    assert!(!text.contains("second request"), "{text}");
    // The runner's script runs the body in `: | eval ...`: the trap's `exit 3` ends the
    // eval's subshell, while the script's own shell, which has no trap, dies of the TERM.
    assert_eq!(h.build_exit_code().as_deref(), Some("143"), "{text}");
    assert!(
        text.contains(&format!(
            "Cancelling slurm job {} (job exceeded its maximum duration)",
            jobs[0].0
        )),
        "the reason must be in the job log: {text}"
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}
