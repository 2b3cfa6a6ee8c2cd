//! Whole CI jobs: jacamar-sim (the runner emulator) driving the real jacamar-auth/jacamar.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{alive, config_text, pids_in, wait_for, Shape, SIM};
use crate::shape_tests;

struct Job {
    dir: tempfile::TempDir,
    code: i32,
    log: String,
    runner_log: String,
    summary: Value,
}

fn sim(extra_general: &str, args: &[&str]) -> Job {
    sim_job(extra_general, None, args)
}

/// Run one job; `@MARK@` in `args` and in `job_toml` is a scratch dir of the test.
fn sim_job(extra_general: &str, job_toml: Option<&str>, args: &[&str]) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let cfg = dir.path().join("jacamar.toml");
    std::fs::write(&cfg, config_text(&data, extra_general)).unwrap();
    let mark = dir.path().join("mark");
    std::fs::create_dir(&mark).unwrap();
    let mut args: Vec<String> = args
        .iter()
        .map(|a| a.replace("@MARK@", &mark.display().to_string()))
        .collect();
    if let Some(job) = job_toml {
        let path = dir.path().join("job.toml");
        std::fs::write(&path, job.replace("@MARK@", &mark.display().to_string())).unwrap();
        args.push("--job".into());
        args.push(path.display().to_string());
    }
    let out = Command::new(SIM)
        .arg("--configuration")
        .arg(&cfg)
        .arg("--summary")
        .arg(dir.path().join("summary.json"))
        .args(&args)
        .env("JACAMAR_RS_BACKSTOP_GRACE", "600")
        .output()
        .unwrap();
    let summary = std::fs::read(dir.path().join("summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Job {
        code: out.status.code().unwrap_or(-1),
        log: String::from_utf8_lossy(&out.stdout).into_owned(),
        runner_log: String::from_utf8_lossy(&out.stderr).into_owned(),
        summary,
        dir,
    }
}

impl Job {
    fn show(&self) -> String {
        format!(
            "code {}\n--- job log\n{}\n--- runner log\n{}\n--- summary\n{}",
            self.code, self.log, self.runner_log, self.summary
        )
    }
    fn mark(&self) -> std::path::PathBuf {
        self.dir.path().join("mark")
    }
    fn calls(&self) -> Vec<(String, Option<String>, Option<i64>)> {
        self.summary["calls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["kind"].as_str().unwrap_or_default().to_string(),
                            c["stage"].as_str().map(str::to_string),
                            c["exit_code"].as_i64(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn the_demo_job_succeeds_through_every_stage() {
    let j = sim("", &[]);
    assert_eq!(j.code, 0, "{}", j.show());
    assert!(j.log.contains("Job succeeded"), "{}", j.show());
    assert!(j.log.contains("Hello from"), "{}", j.show());
    let calls = j.calls();
    let kinds: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"config"));
    assert_eq!(kinds.last(), Some(&"cleanup"));
    assert!(calls.iter().all(|c| c.2 == Some(0)), "{}", j.show());
    for stage in [
        "prepare_script",
        "get_sources",
        "build_script",
        "after_script",
    ] {
        assert!(
            calls.iter().any(|c| c.1.as_deref() == Some(stage)),
            "{stage} never ran: {}",
            j.show()
        );
    }
    // cleanup removed the job's scripts, kept the builds dir.
    let builds = j.summary["config"]["builds_dir"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(Path::new(&builds).is_dir());
    let scripts = j
        .dir
        .path()
        .join("data")
        .join(crate::harness::whoami())
        .join("scripts");
    let leftover: Vec<_> = walk_files(&scripts);
    assert!(leftover.is_empty(), "scripts left behind: {leftover:?}");
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_failing_script_reports_exit_code_3_to_the_runner() {
    let j = sim(
        "",
        &["--script", "echo about to fail", "--script", "exit 3"],
    );
    assert_eq!(j.code, 1, "{}", j.show());
    assert_eq!(j.summary["exit_code"], 3, "{}", j.show());
    assert!(j.log.contains("exit code 3"), "{}", j.show());
}

shape_tests!(
    graceful_cancel_runs_the_trap_then_after_script_as_canceled,
    hard_abort_skips_later_stages_and_cleanup_may_overlap_the_dying_run,
);

fn graceful_cancel_runs_the_trap_then_after_script_as_canceled(shape: Shape) {
    let job = r#"
script = ["trap 'echo trap-ran > @MARK@/trapped; exit 143' TERM; echo $$ > @MARK@/pids; sleep 300 & wait $!"]
after_script = ["echo after_script sees CI_JOB_STATUS=$CI_JOB_STATUS"]
"#;
    let j = sim_job(
        "kill_timeout = \"3s\"",
        Some(job),
        &[
            "--script-shape",
            shape.name(),
            "--cancel-after",
            "1s",
            "--cancel-kind",
            "graceful",
            "--graceful-kill-timeout",
            "30s",
        ],
    );
    assert_eq!(j.summary["result"], "canceled", "{shape}: {}", j.show());
    assert!(j.mark().join("trapped").exists(), "{shape}: {}", j.show());
    assert!(
        j.log.contains("CI_JOB_STATUS=canceled"),
        "{shape}: after_script did not run as canceled: {}",
        j.show()
    );
    let pids = pids_in(&j.mark().join("pids"));
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "{shape}: survivors {pids:?}"
    );
}

fn hard_abort_skips_later_stages_and_cleanup_may_overlap_the_dying_run(shape: Shape) {
    // The job ignores SIGTERM, so the run call lives until kill_timeout (4 s); the runner
    // starts cleanup after 1 s anyway.
    let script = "trap '' TERM; echo $$ > @MARK@/pids; sleep 300 & wait $!; sleep 300";
    let j = sim(
        "kill_timeout = \"4s\"",
        &[
            "--script-shape",
            shape.name(),
            "--script",
            script,
            "--cancel-after",
            "1s",
            "--cancel-kind",
            "hard",
            "--hard-abort-wait",
            "1s",
        ],
    );
    assert_eq!(j.summary["result"], "canceled", "{shape}: {}", j.show());
    let calls = j.calls();
    assert!(
        !calls.iter().any(|c| c.1.as_deref() == Some("after_script")),
        "{}",
        j.show()
    );
    let cleanup = calls
        .iter()
        .find(|c| c.0 == "cleanup")
        .unwrap_or_else(|| panic!("{shape}: no cleanup"));
    assert_eq!(cleanup.2, Some(0), "{shape}: {}", j.show());
    let pids = pids_in(&j.mark().join("pids"));
    assert!(
        wait_for(std::time::Duration::from_secs(8), || pids
            .iter()
            .all(|&p| !alive(p))),
        "{shape}: survivors {pids:?}"
    );
}
