//! The Slurm executor against a real one-node Slurm (scripts/slurm/slurm-up.sh, started by
//! scripts/test.sh), jobs submitted as the real non-root user `jacamar-ci`: the driver
//! itself runs as that user with `downscope = "none"`. Needs root (to start the driver as
//! another user); without a running Slurm these tests fail, loudly.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{alive, show, wait_for, Harness};

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

/// Slurm ids of active (listed by default squeue) jobs named `name`.
fn active_jobs(name: &str) -> Vec<String> {
    let o = Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The recorded scheduler job id of `h`'s job.
fn recorded_id(h: &Harness) -> Option<String> {
    let text = std::fs::read_to_string(h.scripts_job_dir().join("batch-jobs")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("job slurm ").map(str::to_string))
}

/// Read a child's stdout line by line on a thread.
pub fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    pat: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> bool {
    let until = Instant::now() + limit;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, l)) => {
                let hit = l.contains(pat);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The runner's hardest stop of a run call: SIGKILL to `jacamar` (the user side, first, so
/// nothing is left to notice the runner's side going away), then to `jacamar-auth`, reaped.
pub fn sigkill_drivers(child: &mut std::process::Child) {
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
}

/// Children of `pid` (from /proc).
pub fn children(pid: u32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            v.push(p);
        }
    }
    v
}

#[test]
fn output_is_streamed_live_and_success_reported() {
    let h = slurm("");
    let mut child = h.spawn_run(
        "build_script",
        "for i in 1 2 3 4 5 6 7 8; do echo \"tick $i as $(id -un) in job ${SLURM_JOB_ID:-none}\"; sleep 1; done\n",
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "tick 2 as", Duration::from_secs(60), &mut seen),
        "no live output: {seen:?}"
    );
    // The job is still running when its second line reaches us.
    let active = active_jobs(&job_name(&h));
    assert_eq!(
        active.len(),
        1,
        "job not running while its output arrived: {seen:?}"
    );
    let st = wait_exit(&mut child, Duration::from_secs(120)).expect("run did not end");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    assert!(st.success(), "run failed: {seen:#?}");
    let text = seen.join("\n");
    for i in 1..=8 {
        assert!(
            text.contains(&format!("tick {i} as jacamar-ci in job {}", active[0])),
            "tick {i} missing: {text}"
        );
    }
    assert!(
        text.contains(&format!("Submitted slurm job {}", active[0])),
        "{text}"
    );
    assert_eq!(recorded_id(&h).as_deref(), Some(active[0].as_str()));
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(!h.scripts_job_dir().exists());
}

#[test]
fn exit_code_7_reaches_the_build_exit_code_file() {
    let h = slurm("");
    let out = h.run("build_script", "echo before the end\nexit 7\n");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("before the end"),
        "{}",
        show(&out)
    );
    // Every other stage runs on the host, not through the scheduler.
    let out = h.run(
        "after_script",
        "echo after on host ${SLURM_JOB_ID:-nojob}\n",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("after on host nojob"),
        "{}",
        show(&out)
    );
    assert!(h.cleanup().status.success());
}

#[test]
fn sigterm_cancels_the_slurm_job_and_its_trap_runs() {
    let h = slurm("");
    let marker = h.data_dir.join(format!("trap-{}", h.job_id));
    let script = format!(
        "trap 'echo trapped TERM; touch {m}; exit 3' TERM\necho started\nsleep 300 &\nwait\necho not reached\n",
        m = marker.display()
    );
    let mut child = h.spawn_run("build_script", &script);
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(60), &mut seen),
        "{seen:?}"
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
    // kill_timeout (5 s) + 2 s: a generous bound the issue demands.
    let gone = wait_for(Duration::from_secs(7), || active_jobs(&name).is_empty());
    assert!(
        gone,
        "slurm job still listed {:?} after {:?}",
        active_jobs(&name),
        t0.elapsed()
    );
    let st = wait_exit(&mut child, Duration::from_secs(60)).expect("run call did not exit");
    assert!(!st.success());
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert!(text.contains("trapped TERM"), "trap output missing: {text}");
    assert!(!text.contains("not reached"), "{text}");
    assert!(marker.exists(), "the job's TERM trap did not run");
    for p in ours {
        assert!(!alive(p), "jacamar {p} survived");
    }
    assert_eq!(h.build_exit_code().as_deref(), Some("3"), "{text}");
    // Graceful cancel keeps the job directory: after_script still runs.
    assert!(h.scripts_job_dir().is_dir());
    let out = h.run("after_script", "echo after ran\n");
    assert!(out.status.success(), "{}", show(&out));
    assert!(h.cleanup().status.success());
}

#[test]
fn cleanup_cancels_the_job_after_sigkill_of_both_drivers() {
    let h = slurm("");
    let mut child = h.spawn_run("build_script", "echo started\nsleep 300\n");
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(60), &mut seen),
        "{seen:?}"
    );
    let name = job_name(&h);
    let ids = active_jobs(&name);
    assert_eq!(ids.len(), 1);
    sigkill_drivers(&mut child);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        active_jobs(&name),
        ids,
        "the job must outlive its killed drivers until cleanup"
    );
    assert_eq!(recorded_id(&h), Some(ids[0].clone()));

    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("cancelling slurm job {}", ids[0])),
        "{}",
        show(&out)
    );
    assert!(
        wait_for(Duration::from_secs(30), || active_jobs(&name).is_empty()),
        "cleanup left {:?}",
        active_jobs(&name)
    );
    assert!(!h.scripts_job_dir().exists());
}

#[test]
fn time_limit_is_reported_as_timeout() {
    let mut h = slurm("");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--time=1");
    let out = h.run("build_script", "echo sleeping\nsleep 600\n");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ended TIMEOUT (TimeLimit)"), "{text}");
    assert!(
        text.contains("DUE TO TIME LIMIT"),
        "Slurm's own line should be streamed: {text}"
    );
    let code: i32 = h.build_exit_code().unwrap().parse().unwrap();
    assert_ne!(code, 0);
    assert!(h.cleanup().status.success());
}

#[test]
fn output_moved_in_late_arrives_within_nfs_timeout() {
    let h = slurm("");
    let out_file = h.scripts_job_dir().join("build_script.out");
    let tmp = h.data_dir.join(format!("elsewhere-{}", h.job_id));
    // The job hides its output file, writes elsewhere, and a detached helper moves the
    // file in 3 s after the job ended (what a slow NFS client looks like from here).
    let script = format!(
        "rm -f '{o}'\nfor i in 1 2 3 4 5; do echo \"late line $i\" >> '{t}'; done\nprintf 'no newline at the end' >> '{t}'\n\
         setsid bash -c \"sleep 3; mv '{t}' '{o}'\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
        o = out_file.display(),
        t = tmp.display()
    );
    let out = h.run("build_script", &script);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=5 {
        assert!(
            text.contains(&format!("late line {i}\n")),
            "line {i} lost: {}",
            show(&out)
        );
    }
    assert!(
        text.contains("no newline at the end\n"),
        "partial last line lost: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success());
}

#[test]
fn illegal_arguments_are_refused_by_name() {
    let mut h = slurm("");
    h.set(
        "CUSTOM_ENV_SCHEDULER_PARAMETERS",
        "-N 1 --output=/tmp/elsewhere.out",
    );
    let out = h.run("build_script", "echo must not run\n");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("refusing scheduler argument \"--output=/tmp/elsewhere.out\""),
        "{text}"
    );
    assert!(!text.contains("must not run"));
    assert!(recorded_id(&h).is_none(), "nothing may be submitted");
    for bad in ["-J x", "--wait", "-e err", "--chdir=/"] {
        h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", bad);
        let out = h.run("build_script", "true\n");
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("refusing scheduler argument"),
            "{bad}"
        );
    }
    assert!(h.cleanup().status.success());
}

#[test]
fn allow_illegal_args_lets_them_through() {
    let mut h = slurm("allow_illegal_args = true");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--job-name=custom-name");
    let out = h.run(
        "build_script",
        "scontrol show job $SLURM_JOB_ID | grep -o 'JobName=[^ ]*'\n",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("JobName=custom-name"),
        "{}",
        show(&out)
    );
    assert!(h.cleanup().status.success());
}

#[test]
fn quoted_arguments_and_arguments_variable_order() {
    let mut h = slurm("arguments_variable = [\"SITE_PARAMS\", \"SCHEDULER_PARAMETERS\"]\nenv_vars = [\"SITE_MODE=debug x\"]");
    h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", "--comment=ignored");
    h.set(
        "CUSTOM_ENV_SITE_PARAMS",
        r#"--comment="two words, 'single' and \"double\"" -N 1"#,
    );
    let out = h.run(
        "build_script",
        "scontrol show job $SLURM_JOB_ID | grep -o 'Comment=.*'\necho \"mode=$SITE_MODE\"\n",
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"Comment=two words, 'single' and "double""#),
        "{}",
        show(&out)
    );
    assert!(
        text.contains("mode=debug x"),
        "env_vars not passed: {}",
        show(&out)
    );
    assert!(
        text.contains("arguments from SITE_PARAMS"),
        "{}",
        show(&out)
    );
    // Unbalanced quotes: a clear error, nothing submitted.
    h.set("CUSTOM_ENV_SITE_PARAMS", "--comment='open");
    let out = h.run("build_script", "true\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("failed to split SITE_PARAMS: unterminated single quote"),
        "{}",
        show(&out)
    );
    assert!(h.cleanup().status.success());
}

#[test]
fn twenty_concurrent_jobs_keep_their_logs_apart() {
    require_slurm();
    let handles: Vec<_> = (0..20)
        .map(|n| {
            std::thread::spawn(move || {
                let h = slurm("");
                let out = h.run(
                    "build_script",
                    &format!("for i in 1 2 3; do echo \"job-{n}-line-$i\"; sleep 0.5; done\n"),
                );
                let cleanup = h.cleanup();
                (n, out, cleanup)
            })
        })
        .collect();
    for hd in handles {
        let (n, out, cleanup) = hd.join().unwrap();
        assert!(out.status.success(), "job {n}: {}", show(&out));
        assert!(
            cleanup.status.success(),
            "job {n} cleanup: {}",
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
            "job {n} log: {text}"
        );
    }
}
