//! jacamar-sim against fake drivers (tests/fixtures/fake-*.sh).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::Shape;
use crate::shape_tests;

const SIM: &str = env!("CARGO_BIN_EXE_jacamar-sim");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    summary: Value,
    /// Lines "<kind> [stage]" recorded by the fake, one per call.
    calls: Vec<String>,
    /// The environment dumps recorded by the fake.
    env: String,
    dir: tempfile::TempDir,
}

impl Run {
    fn calls_of(&self, kind: &str) -> usize {
        self.calls.iter().filter(|c| c.as_str() == kind).count()
    }
    /// The env dump of the first call named `call` ("config", "run build_script", ...).
    fn env_of(&self, call: &str) -> String {
        let header = format!("=== {call} cwd=");
        let start = self
            .env
            .find(&header)
            .unwrap_or_else(|| panic!("no env dump for {call}"));
        let rest = &self.env[start + 4..];
        let end = rest.find("\n=== ").map(|i| i + 1).unwrap_or(rest.len());
        rest[..end].to_string()
    }
    fn summary_call(&self, kind: &str, stage: Option<&str>) -> &Value {
        self.summary["calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == kind && c["stage"].as_str() == stage)
            .unwrap_or_else(|| panic!("no {kind} {stage:?} call in summary"))
    }
}

fn sim_command(dir: &Path, fake_env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(SIM);
    cmd.arg("--driver")
        .arg(fixture("fake-driver.sh"))
        .arg("--summary")
        .arg(dir.join("summary.json"))
        .args(["--retry-delay", "100ms", "--stage-retry-delay", "100ms"])
        .args(args)
        .env("TMPDIR", dir)
        .env("FAKE_LOG", dir.join("calls.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in fake_env {
        cmd.env(k, v);
    }
    cmd
}

fn finish(dir: tempfile::TempDir, mut child: std::process::Child, limit: Duration) -> Run {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    }
    let t_out = drain(child.stdout.take());
    let t_err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jacamar-sim did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    let summary = std::fs::read_to_string(dir.path().join("summary.json"))
        .map(|s| serde_json::from_str(&s).expect("summary is JSON"))
        .unwrap_or(Value::Null);
    let calls = std::fs::read_to_string(dir.path().join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let env = std::fs::read_to_string(dir.path().join("calls.log.env")).unwrap_or_default();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
        summary,
        calls,
        env,
        dir,
    }
}

fn run_sim(fake_env: &[(&str, &str)], args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let child = sim_command(dir.path(), fake_env, args).spawn().unwrap();
    finish(dir, child, Duration::from_secs(20))
}

fn job_file(dir: &Path, text: &str) -> String {
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const SUCCESS_ORDER: &[&str] = &[
    "config",
    "prepare",
    "run prepare_script",
    "run get_sources",
    "run restore_cache",
    "run download_artifacts",
    "run build_script",
    "run after_script",
    "run archive_cache",
    "run upload_artifacts_on_success",
    "run cleanup_file_variables",
    "cleanup",
];

#[test]
fn stage_order_env_and_logs() {
    let jobs = tempfile::tempdir().unwrap();
    let job = job_file(
        jobs.path(),
        "before_script = [\"echo before\"]\nscript = [\"echo hello-$MY_VAR\"]\n\
         after_script = [\"echo after-$CI_JOB_STATUS\"]\n[variables]\nMY_VAR = \"world\"\n",
    );
    let r = run_sim(&[], &["--job", &job, "--job-id", "4242", "--user", "alice"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.calls, SUCCESS_ORDER);

    // The job log.
    assert!(r.stdout.contains("Preparing the \"custom\" executor"));
    assert!(r
        .stdout
        .contains("Using Custom executor with driver Fake Jacamar 0.0.1..."));
    assert!(r.stdout.contains("fake config: stderr goes to the job log"));
    assert!(r
        .stdout
        .contains("Executing \"step_script\" stage of the job script"));
    assert!(r.stdout.contains("$ echo hello-$MY_VAR"));
    assert!(r.stdout.contains("\nhello-world\n"));
    assert!(r.stdout.contains("\nafter-success\n"));
    assert!(r.stdout.trim_end().ends_with("Job succeeded\x1b[0;m"));
    // Cleanup's output only in the runner log.
    assert!(!r.stdout.contains("fake cleanup"));
    assert!(r
        .stderr
        .contains("[runner log] fake cleanup: removing nothing"));

    // The environment of the calls.
    let tmp = r.summary["tmp_dir"].as_str().unwrap().to_string();
    let build = r.env_of("run build_script");
    for needle in [
        format!("cwd={tmp}\n"),
        format!("TMPDIR={tmp}\n"),
        format!("BUILD_EXIT_CODE_FILE={tmp}/build_exit_code\n"),
        format!("JOB_RESPONSE_FILE={tmp}/response.json\n"),
        "BUILD_FAILURE_EXIT_CODE=1\n".to_string(),
        "SYSTEM_FAILURE_EXIT_CODE=2\n".to_string(),
        "FAKE_JOB_ENV=from-config\n".to_string(),
        "CUSTOM_ENV_CI_JOB_ID=4242\n".to_string(),
        "CUSTOM_ENV_CI_JOB_TIMEOUT=3600\n".to_string(),
        "CUSTOM_ENV_CI_JOB_STATUS=running\n".to_string(),
        "CUSTOM_ENV_GITLAB_USER_LOGIN=alice\n".to_string(),
        "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=simrunnr\n".to_string(),
        "CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID=0\n".to_string(),
        "CUSTOM_ENV_CI_PROJECT_PATH=demo-group/demo-project\n".to_string(),
        "CUSTOM_ENV_CI_PIPELINE_SOURCE=push\n".to_string(),
        format!("CUSTOM_ENV_CI_PROJECT_DIR={tmp}/fake-builds/demo-group/demo-project\n"),
        "CUSTOM_ENV_MY_VAR=world\n".to_string(),
        "CUSTOM_ENV_CI_JOB_SERVICES=[]\n".to_string(),
    ] {
        assert!(build.contains(&needle), "missing {needle:?} in\n{build}");
    }
    assert!(build.contains("CUSTOM_ENV_CI_JOB_TOKEN="));
    // job_env only exists after config.
    assert!(!r.env_of("config").contains("FAKE_JOB_ENV="));
    assert!(r
        .env_of("run after_script")
        .contains("CUSTOM_ENV_CI_JOB_STATUS=success\n"));

    // The summary.
    assert_eq!(r.summary["result"], "success");
    assert_eq!(r.summary["exit_code"], 0);
    assert_eq!(r.summary["config"]["hostname"], "fakehost");
    assert_eq!(
        r.summary["calls"].as_array().unwrap().len(),
        SUCCESS_ORDER.len()
    );
    let c = r.summary_call("run", Some("build_script"));
    assert_eq!(c["exit_code"], 0);
    assert!(c["pid"].as_u64().unwrap() > 0);
    assert!(c["ended_ms"].as_u64().unwrap() >= c["started_ms"].as_u64().unwrap());
    // The temp dir is removed without --keep-tmp.
    assert!(!Path::new(&tmp).exists());
    drop(r.dir);
}

#[test]
fn keep_tmp_keeps_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let r = run_sim(&[], &["--script", "true", "--keep-tmp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tmp = PathBuf::from(r.summary["tmp_dir"].as_str().unwrap());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tmp), 0o700);
    assert_eq!(mode(&tmp.join("response.json")), 0o600);
    let response: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("response.json")).unwrap()).unwrap();
    assert!(response["token"]
        .as_str()
        .unwrap()
        .starts_with("glcbt-sim-"));
    // What jacamar-auth reads of it: the job id, the clone URL (origin, token).
    let parsed =
        jacamar::job::JobResponse::parse(&std::fs::read(tmp.join("response.json")).unwrap())
            .unwrap();
    assert_eq!(Some(parsed.id), response["job_info"]["id"].as_u64());
    assert_eq!(
        parsed.server_origin().as_deref(),
        Some("https://gitlab.example.com")
    );
    assert_eq!(
        parsed
            .repo_url
            .as_deref()
            .and_then(jacamar::job::token_in_clone_url)
            .as_deref(),
        response["token"].as_str()
    );
    let script = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("build_script"))
        .expect("a build_script script file")
        .path();
    assert_eq!(mode(&script), 0o700);
    let text = std::fs::read_to_string(&script).unwrap();
    // The current shape by default.
    assert!(
        text.contains("\nset +o noclobber\n(trap 'exit 1' TERM; eval $'"),
        "{text}"
    );
    assert!(text.contains("export CI_JOB_ID=1000\\n"), "{text}");
}

/// `--script-shape` writes each shape of the runner's script, byte for byte as the
/// harness's [`Shape::script`] (the same bytes the runner's writer produces): the body of
/// the emulator's `after_script` stage, checked against the harness's quoting of it.
#[test]
fn script_shape_writes_each_shape_of_the_runners_script() {
    for shape in Shape::ALL {
        let r = run_sim(
            &[],
            &[
                "--script",
                "true",
                "--keep-tmp",
                "--script-shape",
                shape.name(),
            ],
        );
        assert_eq!(r.code, 0, "{shape}: {}", r.stderr);
        let tmp = PathBuf::from(r.summary["tmp_dir"].as_str().unwrap());
        let script = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with("-build_script"))
            .expect("a build_script script file")
            .path();
        let text = std::fs::read_to_string(&script).unwrap();
        // The body the emulator quoted, unquoted by bash itself, quoted again by the harness.
        let line = text.lines().find(|l| l.contains("eval $'")).unwrap();
        let quoted = &line[line.find("$'").unwrap()..=line.rfind('\'').unwrap()];
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s' {quoted}"))
            .output()
            .unwrap();
        let body = String::from_utf8(out.stdout).unwrap();
        assert!(body.contains("\ntrue\n"), "{shape}: {body}");
        assert_eq!(text, shape.script(&body), "{shape}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
    let r = run_sim(&[], &["--script", "true", "--script-shape", "v20"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("v20"), "{}", r.stderr);
}

#[test]
fn build_failure_reports_the_exit_code_file() {
    let jobs = tempfile::tempdir().unwrap();
    let job = job_file(
        jobs.path(),
        "script = [\"echo one\", \"exit 3\", \"echo never\"]\nafter_script = [\"echo status-$CI_JOB_STATUS\"]\n",
    );
    let r = run_sim(&[], &["--job", &job]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("ERROR: Job failed: exit code 3"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("\nnever\n"));
    assert!(r.stdout.contains("\nstatus-failed\n"));
    assert_eq!(r.summary["result"], "failed");
    assert_eq!(r.summary["failure_reason"], "script_failure");
    assert_eq!(r.summary["exit_code"], 3);
    assert_eq!(r.summary["build_exit_code_file"], "3\n");
    let tail: Vec<&str> = r
        .calls
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "run after_script",
            "run archive_cache_on_failure",
            "run upload_artifacts_on_failure",
            "run cleanup_file_variables",
            "cleanup"
        ]
    );
    assert!(r
        .env_of("run after_script")
        .contains("CUSTOM_ENV_CI_JOB_STATUS=failed\n"));
}

#[test]
fn config_system_failures_are_retried_with_cleanup_between() {
    let r = run_sim(&[("FAKE_CONFIG_FAILS", "2")], &["--script", "echo ok"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        &r.calls[..6],
        ["config", "cleanup", "config", "cleanup", "config", "prepare"]
    );
    assert_eq!(r.calls_of("config"), 3);
    assert_eq!(r.calls.last().unwrap(), "cleanup");
    assert_eq!(
        r.stdout
            .matches("ERROR: Preparation failed: exit status 2")
            .count(),
        2
    );
    assert!(r.stdout.contains("Will be retried in 100ms ..."));
}

#[test]
fn three_failed_tries_are_a_system_failure() {
    let r = run_sim(&[("FAKE_CONFIG_FAILS", "9")], &["--script", "echo ok"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.calls,
        ["config", "cleanup", "config", "cleanup", "config", "cleanup"]
    );
    assert_eq!(r.summary["result"], "system_failure");
    assert!(r
        .stdout
        .contains("ERROR: Job failed (system failure): prepare environment: exit status 2"));
}

#[test]
fn config_output_must_be_json() {
    let r = run_sim(&[("FAKE_CONFIG_BAD_JSON", "1")], &["--script", "echo ok"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.calls_of("config"), 3);
    assert!(
        r.stdout
            .contains("failed to parse config_exec output as JSON"),
        "{}",
        r.stdout
    );
}

#[test]
fn prepare_build_failure_is_not_retried() {
    let r = run_sim(&[("FAKE_PREPARE_EXIT", "1")], &["--script", "echo ok"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.calls, ["config", "prepare", "cleanup"]);
    assert_eq!(r.summary["result"], "failed");
    assert_eq!(r.summary["exit_code"], 1);
}

#[test]
fn unknown_exit_code_is_a_system_failure() {
    let r = run_sim(
        &[("FAKE_STAGE_EXIT", "get_sources:7")],
        &["--script", "echo ok"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains(
        "ERROR: Job failed (system failure): unknown Custom executor executable exit code 7"
    ));
    assert!(!r.calls.iter().any(|c| c == "run build_script"));
    assert_eq!(r.calls.last().unwrap(), "cleanup");
}

shape_tests!(
    graceful_cancel_terms_build_script_then_runs_after_script,
    hard_cancel_skips_later_stages_and_runs_cleanup,
    sigterm_ignored_leads_to_sigkill_after_graceful_timeout,
    hard_abort_starts_cleanup_while_the_run_call_is_still_dying,
    job_timeout_is_a_hard_abort,
    sigint_to_the_sim_is_a_hard_cancel,
);

fn graceful_cancel_terms_build_script_then_runs_after_script(shape: Shape) {
    let jobs = tempfile::tempdir().unwrap();
    let marker = jobs.path().join("marker");
    let job = job_file(
        jobs.path(),
        "script = [\"echo started\", \"sleep 30\"]\nafter_script = [\"echo after-$CI_JOB_STATUS\"]\n",
    );
    let start = Instant::now();
    let r = run_sim(
        &[("FAKE_TERM_MARKER", marker.to_str().unwrap())],
        &[
            "--script-shape",
            shape.name(),
            "--job",
            &job,
            "--cancel-after",
            "1s",
            "--cancel-kind",
            "graceful",
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(r.code, 1, "{shape}: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "TERM build_script\n"
    );
    let tail: Vec<&str> = r.calls[6..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "run build_script",
            "run after_script",
            "run archive_cache_on_failure",
            "run upload_artifacts_on_failure",
            "run cleanup_file_variables",
            "cleanup"
        ]
    );
    assert!(r
        .env_of("run after_script")
        .contains("CUSTOM_ENV_CI_JOB_STATUS=canceled\n"));
    assert!(r.stdout.contains("\nafter-canceled\n"));
    assert!(r.stdout.contains("ERROR: Job failed: canceled"));
    assert_eq!(r.summary["result"], "canceled");
    let build = r.summary_call("run", Some("build_script"));
    assert_eq!(build["signals_sent"], serde_json::json!(["TERM"]));
}

fn hard_cancel_skips_later_stages_and_runs_cleanup(shape: Shape) {
    let jobs = tempfile::tempdir().unwrap();
    let marker = jobs.path().join("marker");
    let job = job_file(
        jobs.path(),
        "script = [\"sleep 30\"]\nafter_script = [\"echo after\"]\n",
    );
    let r = run_sim(
        &[("FAKE_TERM_MARKER", marker.to_str().unwrap())],
        &[
            "--script-shape",
            shape.name(),
            "--job",
            &job,
            "--cancel-after",
            "500ms",
            "--cancel-kind",
            "hard",
        ],
    );
    assert_eq!(r.code, 1, "{shape}: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "TERM build_script\n"
    );
    assert_eq!(&r.calls[6..], ["run build_script", "cleanup"]);
    assert_eq!(r.summary["result"], "canceled");
    assert!(r.stdout.contains("ERROR: Job failed: canceled"));
}

fn sigterm_ignored_leads_to_sigkill_after_graceful_timeout(shape: Shape) {
    let start = Instant::now();
    let r = run_sim(
        &[("FAKE_IGNORE_TERM", "1")],
        &[
            "--script-shape",
            shape.name(),
            "--script",
            "sleep 30",
            "--cancel-after",
            "500ms",
            "--graceful-kill-timeout",
            "1s",
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(r.code, 1);
    let build = r.summary_call("run", Some("build_script"));
    assert_eq!(build["signals_sent"], serde_json::json!(["TERM", "KILL"]));
    assert_eq!(build["signal"], 9);
    assert_eq!(build["exit_code"], Value::Null);
    let took = build["ended_ms"].as_u64().unwrap() - build["started_ms"].as_u64().unwrap();
    assert!(took >= 1400, "killed after {took} ms");
    assert!(r
        .stderr
        .contains("sending SIGKILL to the process group of run build_script"));
    // Graceful cancel: the on-failure stages still ran.
    assert!(r
        .calls
        .iter()
        .any(|c| c == "run upload_artifacts_on_failure"));
}

fn hard_abort_starts_cleanup_while_the_run_call_is_still_dying(shape: Shape) {
    let r = run_sim(
        &[("FAKE_IGNORE_TERM", "1")],
        &[
            "--script-shape",
            shape.name(),
            "--script",
            "sleep 30",
            "--cancel-after",
            "300ms",
            "--cancel-kind",
            "hard",
            "--hard-abort-wait",
            "500ms",
            "--graceful-kill-timeout",
            "2s",
        ],
    );
    assert_eq!(r.code, 1);
    assert_eq!(&r.calls[6..], ["run build_script", "cleanup"]);
    let build = r.summary_call("run", Some("build_script"));
    let cleanup = r.summary_call("cleanup", None);
    assert_eq!(build["detached"], true);
    assert!(cleanup["started_ms"].as_u64().unwrap() < build["ended_ms"].as_u64().unwrap());
    assert_eq!(build["signal"], 9);
    assert!(r.stderr.contains("starting cleanup anyway"));
    assert!(r.stderr.contains("finally ended: killed by signal SIGKILL"));
}

fn job_timeout_is_a_hard_abort(shape: Shape) {
    let jobs = tempfile::tempdir().unwrap();
    let job = job_file(jobs.path(), "script = [\"sleep 30\"]\ntimeout = \"1s\"\n");
    let r = run_sim(&[], &["--script-shape", shape.name(), "--job", &job]);
    assert_eq!(r.code, 1);
    assert_eq!(r.summary["result"], "failed");
    assert_eq!(r.summary["failure_reason"], "job_execution_timeout");
    assert!(r
        .stdout
        .contains("ERROR: Job failed: execution took longer than 1s seconds"));
    assert!(r.env_of("config").contains("CUSTOM_ENV_CI_JOB_TIMEOUT=1\n"));
    assert_eq!(r.calls.last().unwrap(), "cleanup");
}

fn sigint_to_the_sim_is_a_hard_cancel(shape: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let child = sim_command(
        dir.path(),
        &[],
        &["--script-shape", shape.name(), "--script", "sleep 30"],
    )
    .spawn()
    .unwrap();
    let log = dir.path().join("calls.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("run build_script")
    {
        assert!(Instant::now() < deadline, "build_script never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let r = finish(dir, child, Duration::from_secs(10));
    assert_eq!(r.code, 1, "{shape}: {}\n{}", r.stdout, r.stderr);
    assert_eq!(r.summary["result"], "canceled");
    assert_eq!(&r.calls[6..], ["run build_script", "cleanup"]);
    assert!(r.stderr.contains("received SIGINT"));
}

#[test]
fn output_is_streamed_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sim_command(dir.path(), &[], &["--script", "echo first-line; sleep 30"])
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\nfirst-line\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed before the line arrived");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Live: the line is here while the job still runs (it sleeps 30 s; nothing stops it
    // before the SIGINT below).
    assert!(
        child.try_wait().unwrap().is_none(),
        "the line arrived only after the job ended"
    );
    // Stop it the polite way so the fake's process group is cleaned up too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    let r = finish(dir, child, Duration::from_secs(10));
    assert_eq!(r.summary["result"], "canceled");
}

#[test]
fn demo_job_and_unobfuscated_flag() {
    let r = run_sim(&[], &["-u"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Hello from "));
    assert!(r.stdout.contains("fake: unobfuscated"));
}

#[test]
fn bad_job_file_names_the_problem() {
    let jobs = tempfile::tempdir().unwrap();
    let job = job_file(jobs.path(), "scrip = [\"echo typo\"]\n");
    let r = run_sim(&[], &["--job", &job]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("invalid job file"), "{}", r.stderr);
    assert!(r.stderr.contains("scrip"), "{}", r.stderr);
    assert!(r.calls.is_empty());

    let r = run_sim(&[], &["--timeout", "soon"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);

    let r = run_sim(&[], &["--var", "NOEQUALS"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("NOEQUALS"), "{}", r.stderr);
}

#[test]
fn shared_builds_dir_and_variable_overrides() {
    let r = run_sim(
        &[("FAKE_SHARED", "1")],
        &[
            "--script",
            "echo \"dir=$CI_PROJECT_DIR ns=$CI_PROJECT_NAMESPACE name=$CI_PROJECT_NAME\"",
            "--var",
            "CI_PROJECT_PATH=hpc/sub/app",
            "--var",
            "CI_RUNNER_SHORT_TOKEN=abcd1234",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let tmp = r.summary["tmp_dir"].as_str().unwrap();
    let want = format!("dir={tmp}/fake-builds/abcd1234/0/hpc/sub/app ns=hpc/sub name=app");
    assert!(r.stdout.contains(&want), "{}", r.stdout);
    let env = r.env_of("run build_script");
    assert!(env.contains("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=abcd1234\n"));
    assert!(env.contains(&format!("CUSTOM_ENV_CI_BUILDS_DIR={tmp}/fake-builds\n")));
}

/// `GET_SOURCES_ATTEMPTS` (runner 18's `attemptExecuteStage`): get_sources reaches the
/// driver again after a failed try, clear_worktree before the second try only, "Retrying in"
/// after every failed try, 1.5 times longer each time.
#[test]
fn get_sources_attempts_retry_with_clear_worktree_before_the_second_try() {
    let r = run_sim(
        &[("FAKE_STAGE_FAILS", "get_sources:2")],
        &["--script", "echo ok", "--var", "GET_SOURCES_ATTEMPTS=3"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        &r.calls[2..8],
        [
            "run prepare_script",
            "run get_sources",
            "run clear_worktree",
            "run get_sources",
            "run get_sources",
            "run restore_cache",
        ]
    );
    assert!(r
        .stdout
        .contains("Deleting all tracked and untracked files due to source fetch failure"));
    assert_eq!(
        r.stdout.matches("Retrying in 100ms\n").count(),
        1,
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("Retrying in 150ms\n").count(),
        1,
        "{}",
        r.stdout
    );
    assert_eq!(r.summary["result"], "success");

    // Every try failing: the job fails after the last one (and its wait).
    let r = run_sim(
        &[("FAKE_STAGE_FAILS", "restore_cache:9")],
        &["--script", "echo ok", "--var", "RESTORE_CACHE_ATTEMPTS=2"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.calls_of("run restore_cache"), 2);
    assert_eq!(r.calls_of("run clear_worktree"), 0);
    assert_eq!(r.calls_of("run build_script"), 0);
    assert_eq!(r.stdout.matches("Retrying in").count(), 2, "{}", r.stdout);
    assert_eq!(r.calls.last().unwrap(), "cleanup");
}

/// The runner's reading of the attempts variables: not an integer is a warning and one
/// try; an integer outside 1..10 fails the stage (a system failure); the docker-only
/// EXECUTOR_JOB_SECTION_ATTEMPTS retries nothing.
#[test]
fn stage_attempts_out_of_range_fail_and_section_attempts_retry_nothing() {
    let r = run_sim(
        &[],
        &["--script", "echo ok", "--var", "GET_SOURCES_ATTEMPTS=11"],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("number of attempts out of the range [1, 10] for stage: get_sources"),
        "{}",
        r.stdout
    );
    assert_eq!(r.calls_of("run get_sources"), 0);

    let r = run_sim(
        &[("FAKE_STAGE_FAILS", "download_artifacts:1")],
        &[
            "--script",
            "echo ok",
            "--var",
            "ARTIFACT_DOWNLOAD_ATTEMPTS=two",
        ],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "ARTIFACT_DOWNLOAD_ATTEMPTS: expected int got \"two\", using default value: 1"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(r.calls_of("run download_artifacts"), 1);

    let r = run_sim(
        &[("FAKE_STAGE_FAILS", "build_script:1")],
        &[
            "--script",
            "echo ok",
            "--var",
            "EXECUTOR_JOB_SECTION_ATTEMPTS=3",
        ],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.calls_of("run build_script"), 1);
}

/// `--image`, `--registry-credential` and `--job-token-file`: the job response carries the
/// image and the credentials as the runner's does (jacamar's parser reads them back), the
/// job token comes from the file, `CI_JOB_IMAGE` is set; bad values are refused naming the
/// flag, never printing a secret.
#[test]
fn image_and_registry_credentials_reach_the_job_response() {
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("token");
    std::fs::write(&token_file, "glcbt-sim-fromfile-1\n").unwrap();
    let pw_file = files.path().join("pw");
    std::fs::write(&pw_file, "other-secret-2\n").unwrap();
    let other = format!("other.example.com:443,bob,{}", pw_file.display());
    let image = "reg.example.com:5050/g/img:1";
    let r = run_sim(
        &[],
        &[
            "--script",
            "true",
            "--keep-tmp",
            "--image",
            image,
            "--registry-credential",
            "reg.example.com:5050",
            "--registry-credential",
            &other,
            "--job-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let tmp = PathBuf::from(r.summary["tmp_dir"].as_str().unwrap());
    let text = std::fs::read(tmp.join("response.json")).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    let response: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(response["token"], "glcbt-sim-fromfile-1");
    let parsed = jacamar::job::JobResponse::parse(&text).unwrap();
    assert_eq!(parsed.image.map(|i| i.name).as_deref(), Some(image));
    let creds: Vec<_> = parsed
        .registry_credentials
        .iter()
        .map(|c| (c.url.as_str(), c.username.as_str(), c.password.as_str()))
        .collect();
    assert_eq!(
        creds,
        [
            (
                "reg.example.com:5050",
                "gitlab-ci-token",
                "glcbt-sim-fromfile-1"
            ),
            ("other.example.com:443", "bob", "other-secret-2"),
        ]
    );
    let env = r.env_of("run build_script");
    assert!(
        env.contains(&format!("CUSTOM_ENV_CI_JOB_IMAGE={image}\n")),
        "{env}"
    );
    assert!(
        env.contains("CUSTOM_ENV_CI_JOB_TOKEN=glcbt-sim-fromfile-1\n"),
        "{env}"
    );
    for (args, want) in [
        (
            vec!["--registry-credential", "https://reg:1"],
            "--registry-credential",
        ),
        (vec!["--registry-credential", "reg:1,bob"], "PASSWORD-FILE"),
        (vec!["--image", "a b"], "--image"),
        (
            vec!["--job-token-file", "/nonexistent/tok"],
            "/nonexistent/tok",
        ),
    ] {
        let mut a = vec!["--script", "true"];
        a.extend(args.iter().copied());
        let r = run_sim(&[], &a);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(r.calls.is_empty(), "{args:?}");
    }
}

/// The demo path of docs/containers.md: jacamar-sim, as an ordinary account (downscope
/// "none"), runs a job with an image through jacamar-auth and rootless podman against a
/// local registry whose password is the job token (`--job-token-file`), as the runner
/// would; a registry that refuses the token fails the job with the allowlist advice.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_sim_runs_an_image_job_as_the_runner_does() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !crate::registry_kit::ready() {
        return;
    }
    const USER: &str = "jrs_c19_sim";
    let user = crate::auth_kit::ensure_user(USER, &[], "/bin/bash");
    let t = crate::registry_kit::token();
    let reg = crate::registry_kit::Registry::start(&t);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("jacamar.toml");
    std::fs::write(
        &conf,
        "[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\nrun_mechanism = \"podman\"\n[auth]\ndownscope = \"none\"\n",
    )
    .unwrap();
    let sim = |token: &str, job_id: u64| {
        let tok = dir.path().join(format!("token-{job_id}"));
        std::fs::write(&tok, format!("{token}\n")).unwrap();
        nix::unistd::chown(&tok, Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new(SIM)
            .arg("--driver")
            .arg(crate::harness::AUTH)
            .arg("--configuration")
            .arg(&conf)
            .args(["--image", &reg.image(), "--registry-credential", &reg.host])
            .arg("--job-token-file")
            .arg(&tok)
            .args(["--job-id", &job_id.to_string()])
            .args(["--script", "cat /etc/jacamar-test-image", "--script"])
            .arg("echo user=$(id -un)")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &user.dir)
            .env("USER", USER)
            .current_dir(dir.path())
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let id = u64::from(std::process::id()) * 10;
    let (code, stdout, stderr) = sim(&t, id);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(crate::registry_kit::MARKER) && stdout.contains(&format!("user={USER}")),
        "{stdout}\n{stderr}"
    );
    let wrong = crate::registry_kit::token();
    let (code, stdout, stderr) = sim(&wrong, id + 1);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("the registry {} refused the job token", reg.host))
            && stdout.contains("allowlist"),
        "{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(&wrong) && !stderr.contains(&wrong));
    for job in [id, id + 1] {
        let state = PathBuf::from(format!("/tmp/jacamar-podman-{}/{job}", user.uid));
        assert!(!state.exists(), "{} left", state.display());
    }
}
