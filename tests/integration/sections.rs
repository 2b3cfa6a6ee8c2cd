//! A stage that reaches the driver twice in one job. The runner tries get_sources,
//! restore_cache and download_artifacts up to `GET_SOURCES_ATTEMPTS` (...) times, with
//! clear_worktree before the second get_sources, and since runner 18 a backoff between
//! tries; a driver must also take a repeated `run <script> <stage>` of any other stage. The
//! second call must work: the first one's files in the job's scripts dir (the stage script,
//! a batch stage's `<stage>.out`/`.exit`/scheduler log, the `batch-jobs` record) and the
//! job's `limit_build_dir` claim must neither make it fail, nor give it the first call's
//! exit code, nor replay the first call's output. Every test runs under the legacy and the
//! current shape of the runner's script.

use std::path::Path;

use crate::batch_slurm::{ci_user, require_slurm};
use crate::harness::{require_root, runner_script_in, show, Harness, Shape};
use crate::shape_tests;

shape_tests!(
    shell_stages_arriving_twice_each_run_afresh,
    limit_build_dir_claim_holds_across_a_repeated_stage,
);
shape_tests!(
    root:
    slurm_build_script_arriving_twice_runs_afresh,
);

/// One `run` call of `stage`: its status code, job log and `BUILD_EXIT_CODE_FILE`.
fn run(h: &Harness, shape: Shape, stage: &str, body: &str) -> (Option<i32>, String, String) {
    let out = h.run(stage, &runner_script_in(shape, body));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = h.build_exit_code().unwrap_or_default();
    (out.status.code(), text, code)
}

/// The runner's retried sequence, then a build_script that fails and is called again.
fn shell_stages_arriving_twice_each_run_afresh(shape: Shape) {
    let mut h = Harness::new("");
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "{shape}: {}", show(&out));

    let (code, text, exit) = run(&h, shape, "get_sources", "echo sources-try-1\nexit 5\n");
    assert_eq!((code, exit.as_str()), (Some(1), "5"), "{shape}: {text}");
    let (code, text, _) = run(&h, shape, "clear_worktree", "echo clearing\n");
    assert_eq!(code, Some(0), "{shape}: {text}");
    let (code, text, _) = run(&h, shape, "get_sources", "echo sources-try-2\n");
    assert_eq!(code, Some(0), "{shape}: {text}");
    assert!(text.contains("sources-try-2"), "{shape}: {text}");
    assert!(!text.contains("sources-try-1"), "{shape}: replayed: {text}");

    for stage in ["restore_cache", "download_artifacts"] {
        for n in 1..=2 {
            let (code, text, _) = run(&h, shape, stage, &format!("echo {stage}-{n}\n"));
            assert_eq!(code, Some(0), "{shape} {stage} #{n}: {text}");
            assert!(text.contains(&format!("{stage}-{n}")), "{shape}: {text}");
        }
    }

    let (code, text, exit) = run(&h, shape, "build_script", "echo build-try-1\nexit 4\n");
    assert_eq!((code, exit.as_str()), (Some(1), "4"), "{shape}: {text}");
    let (code, text, _) = run(&h, shape, "build_script", "echo build-try-2\n");
    assert_eq!(code, Some(0), "{shape}: {text}");
    assert!(!text.contains("build-try-1"), "{shape}: replayed: {text}");
    let (code, text, exit) = run(&h, shape, "build_script", "echo build-try-3\nexit 6\n");
    assert_eq!((code, exit.as_str()), (Some(1), "6"), "{shape}: {text}");

    let script = h.scripts_job_dir().join("build_script.bash");
    let on_disk = std::fs::read_to_string(&script).unwrap_or_default();
    assert!(
        on_disk.contains("build-try-3") && !on_disk.contains("build-try-1"),
        "{shape}: {} is not the last call's script:\n{on_disk}",
        script.display()
    );
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(!h.scripts_job_dir().exists(), "{shape}");
}

/// The `limit_build_dir` claim is held by each run call while it lasts: a stage called again
/// (after its first call ended, or while it is still ending) finds the claim and keeps it.
fn limit_build_dir_claim_holds_across_a_repeated_stage(shape: Shape) {
    let mut h = Harness::new("limit_build_dir = true");
    h.set("CUSTOM_ENV_CI_PROJECT_ID", "42");
    let cfg = h.config_json();
    let builds = cfg["builds_dir"].as_str().unwrap().to_string();
    let out = h.prepare();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    for n in 1..=2 {
        let body = format!("echo try-{n} >> {builds}/tries\nexit {}\n", 2 - n);
        let (code, text, _) = run(&h, shape, "get_sources", &body);
        assert_eq!(code, Some(2 - n), "{shape} try {n}: {text}");
        assert!(
            !text.contains("holds no claim"),
            "{shape} try {n}: the claim was lost: {text}"
        );
    }
    let tries = std::fs::read_to_string(Path::new(&builds).join("tries")).unwrap();
    assert_eq!(tries, "try-1\ntry-2\n", "{shape}");
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
}

/// A Slurm harness as the batch user, after config and prepare.
fn slurm() -> Harness {
    require_slurm();
    let mut h = Harness::batch(
        "slurm",
        &ci_user(),
        "kill_timeout = \"5s\"",
        "command_delay = \"1s\"\nnfs_timeout = \"20s\"",
    );
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// build_script through Slurm three times in one job (and get_sources, on the host, twice):
/// each submission's output and exit code are its own, and the record lists every job done,
/// so cleanup has nothing to cancel.
fn slurm_build_script_arriving_twice_runs_afresh(shape: Shape) {
    if !require_root() {
        return;
    }
    let h = slurm();
    let (code, text, _) = run(&h, shape, "get_sources", "echo sources-1\nexit 3\n");
    assert_eq!(code, Some(1), "{shape}: {text}");
    let (code, text, _) = run(&h, shape, "get_sources", "echo sources-2\n");
    assert_eq!(code, Some(0), "{shape}: {text}");

    let (code, text, exit) = run(&h, shape, "build_script", "echo job-try-1\nexit 7\n");
    assert_eq!((code, exit.as_str()), (Some(1), "7"), "{shape}: {text}");
    assert!(text.contains("job-try-1"), "{shape}: {text}");
    let (code, text, _) = run(&h, shape, "build_script", "echo job-try-2\n");
    assert_eq!(code, Some(0), "{shape}: {text}");
    assert!(text.contains("job-try-2"), "{shape}: {text}");
    assert!(!text.contains("job-try-1"), "{shape}: replayed: {text}");
    let (code, text, exit) = run(&h, shape, "build_script", "echo job-try-3\nexit 5\n");
    assert_eq!((code, exit.as_str()), (Some(1), "5"), "{shape}: {text}");
    assert!(!text.contains("job-try-2"), "{shape}: replayed: {text}");

    let record = std::fs::read_to_string(h.scripts_job_dir().join("batch-jobs")).unwrap();
    let jobs: Vec<&str> = record
        .lines()
        .filter_map(|l| l.strip_prefix("job slurm "))
        .collect();
    assert_eq!(jobs.len(), 3, "{shape}: {record}");
    for id in &jobs {
        assert!(
            record.lines().any(|l| l == format!("done {id}")),
            "{shape}: job {id} not done: {record}"
        );
    }
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("cancelling"),
        "{shape}: {}",
        show(&out)
    );
}
