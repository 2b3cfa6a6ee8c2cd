//! The scenarios, each through both runner releases (`both!`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::site::{prerequisites, JobRef, JobSpec, Site, SiteOpts, Spy, Version, JOB_USER};

/// How long a job may take before a test gives up on it.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A site for `v` with `opts`, its runner started after `queue` queued the first jobs.
fn site(v: Version, opts: SiteOpts) -> Option<Site> {
    let bin = prerequisites(v)?;
    let site = Site::new(v, bin, opts);
    site.validate();
    Some(site)
}

/// Assert the job's final state, with both logs on failure.
#[track_caller]
fn assert_final(site: &Site, job: &JobRef, state: &str) -> crate::coordinator::Final {
    let f = site.wait_final(job, JOB_LIMIT);
    assert_eq!(f.state, state, "{f:?}\n{}", site.explain(job));
    f
}

#[track_caller]
fn assert_log(site: &Site, job: &JobRef, pat: &str) {
    assert!(
        site.coord.trace(job.id).contains(pat),
        "the job log lacks {pat:?}\n{}",
        site.explain(job)
    );
}

#[track_caller]
fn assert_no_leftovers(site: &Site, job: &JobRef) {
    let left = site.wait_no_leftovers(job, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "processes of job {} survived: {left:?}\n{}",
        job.id,
        site.explain(job)
    );
}

/// A job with sources: get_sources fetches the fake GitLab's repository with the job token
/// (the git server refuses anything else), the script runs as the job's user and sees the
/// files; the job succeeds.
fn success_with_sources(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    site.repo(&[("README.md", "hello from the e2e repository\n")]);
    let job = site.queue(&JobSpec::new(
        "sources",
        &[
            "echo \"user=$(id -un)\"",
            "cat README.md",
            "git log --oneline | wc -l",
        ],
    ));
    site.verify();
    site.start_runner();
    assert_final(&site, &job, "success");
    site.stop();
    assert_log(&site, &job, &format!("user={JOB_USER}"));
    assert_log(&site, &job, "hello from the e2e repository");
    let (_, served) = site.coord.git_counts();
    assert!(served > 0, "git fetched nothing\n{}", site.explain(&job));
}
both!(success_with_sources);

/// `exit 7` in the script: the runner reports a script failure with exit code 7 (v18.0.5
/// reads the driver's BUILD_EXIT_CODE_FILE) or 1 (v16.9.2 knows only the driver's status).
fn exit_code_reported(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let job = site.queue(&JobSpec::new("exit7", &["echo failing", "exit 7"]));
    site.start_runner();
    let f = assert_final(&site, &job, "failed");
    site.stop();
    assert_eq!(f.failure_reason.as_deref(), Some("script_failure"), "{f:?}");
    let want = if v.reports_script_exit_code() { 7 } else { 1 };
    assert_eq!(f.exit_code, Some(want), "{f:?}\n{}", site.explain(&job));
}
both!(exit_code_reported);

/// The job body of the cancel tests: a TERM trap that records itself in `$MARKER` (a
/// scratch file: after an abort the log may no longer be sent), a child that would outlive
/// the job, and a steady output (the runner learns of a cancel from its log updates).
fn trapping_script() -> Vec<&'static str> {
    vec![
        "trap 'echo \"trap TERM\" >> \"$MARKER\"; echo trapped-in-job; exit 3' TERM",
        "sleep 600 &",
        "echo job-started",
        "while :; do sleep 0.2; echo tick; done",
    ]
}

/// Cancel a running job with `status` (`canceling`: the graceful cancel, `canceled`: the
/// abort) and check the trap ran, after_script ran (graceful only), nothing of the job is
/// left and the job failed.
fn cancel(v: Version, status: &str) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let marker = site.scratch().join("trap");
    let after = site.scratch().join("after");
    let mut spec = JobSpec::new("cancel", &trapping_script())
        .after(&["echo after_script-ran >> \"$AFTER\""])
        .var("MARKER", marker.to_str().unwrap())
        .var("AFTER", after.to_str().unwrap());
    spec.timeout = 300;
    let job = site.queue(&spec);
    site.start_runner();
    assert!(
        site.coord.wait_trace(job.id, "job-started", JOB_LIMIT),
        "the job never started\n{}",
        site.explain(&job)
    );
    site.coord.set_status(job.id, status);
    let f = site.wait_final(&job, JOB_LIMIT);
    assert_eq!(f.state, "failed", "{f:?}\n{}", site.explain(&job));
    assert!(
        crate::harness::wait_for(Duration::from_secs(10), || marker.exists()),
        "the job's TERM trap never ran\n{}",
        site.explain(&job)
    );
    assert_no_leftovers(&site, &job);
    if status == "canceling" {
        assert!(
            crate::harness::wait_for(Duration::from_secs(10), || after.exists()),
            "after_script did not run after the graceful cancel\n{}",
            site.explain(&job)
        );
    }
    site.stop();
}

fn cancel_graceful(v: Version) {
    cancel(v, "canceling")
}
both!(cancel_graceful);

fn cancel_abort(v: Version) {
    cancel(v, "canceled")
}
both!(cancel_abort);

/// A job that ignores TERM is killed at jacamar's kill_timeout (3 s here), long before the
/// runner's graceful_kill_timeout (30 s): nothing of it is left.
fn term_ignoring_job_killed_at_kill_timeout(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let job = site.queue(&JobSpec::new(
        "stubborn",
        &[
            "trap '' TERM",
            "echo job-started",
            "while :; do sleep 0.2; echo tick; done",
        ],
    ));
    site.start_runner();
    assert!(
        site.coord.wait_trace(job.id, "job-started", JOB_LIMIT),
        "the job never started\n{}",
        site.explain(&job)
    );
    let t0 = Instant::now();
    site.coord.set_status(job.id, "canceled");
    let f = site.wait_final(&job, JOB_LIMIT);
    assert_eq!(f.state, "failed", "{f:?}\n{}", site.explain(&job));
    assert_no_leftovers(&site, &job);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "the TERM-ignoring job was gone after {took:?} (kill_timeout 3 s, the runner's own kill at 30 s)\n{}",
        site.explain(&job)
    );
    site.stop();
}
both!(term_ignoring_job_killed_at_kill_timeout);

/// The job's timeout (`runner_info.timeout`): the runner stops the job, reports
/// job_execution_timeout, the trap ran and nothing is left.
fn job_timeout(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let marker = site.scratch().join("trap");
    let mut spec =
        JobSpec::new("timeout", &trapping_script()).var("MARKER", marker.to_str().unwrap());
    spec.timeout = 5;
    let job = site.queue(&spec);
    site.start_runner();
    let f = assert_final(&site, &job, "failed");
    assert_eq!(
        f.failure_reason.as_deref(),
        Some("job_execution_timeout"),
        "{f:?}\n{}",
        site.explain(&job)
    );
    assert!(
        crate::harness::wait_for(Duration::from_secs(10), || marker.exists()),
        "the job's TERM trap never ran\n{}",
        site.explain(&job)
    );
    assert_no_leftovers(&site, &job);
    site.stop();
}
both!(job_timeout);

/// Artifacts: a job uploads `out/` (the helper `gitlab-runner artifacts-uploader` on the job
/// user's PATH), a second job downloads them as its dependency.
fn artifacts_upload_and_download(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let mut up = JobSpec::new(
        "upload",
        &["mkdir -p out", "echo artifact-payload-42 > out/a.txt"],
    );
    up.artifacts = json!([{
        "name": "out", "untracked": false, "paths": ["out/"], "when": "on_success",
        "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"
    }]);
    let a = site.queue(&up);
    site.start_runner();
    assert_final(&site, &a, "success");
    let stored = site.coord.artifacts(a.id);
    assert_eq!(stored.len(), 1, "{stored:?}\n{}", site.explain(&a));
    assert!(
        stored[0].query.contains("artifact_type=archive") && stored[0].filename.ends_with(".zip"),
        "{:?} {:?}",
        stored[0].query,
        stored[0].filename
    );
    let mut down = JobSpec::new("download", &["cat out/a.txt"]);
    down.dependencies = json!([{
        "id": a.id, "token": a.token, "name": "upload",
        "artifacts_file": {"filename": "artifacts.zip", "size": stored[0].data.len()}
    }]);
    let b = site.queue(&down);
    assert_final(&site, &b, "success");
    site.stop();
    assert_log(&site, &b, "artifact-payload-42");
}
both!(artifacts_upload_and_download);

/// The cache (local cache dir from jacamar's config): a job archives `vendor/`, the next one
/// of the project restores it.
fn cache_round_trip(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let cache = json!([{
        "key": "e2e-key", "untracked": false, "policy": "pull-push", "paths": ["vendor/"],
        "when": "on_success"
    }]);
    let mut first = JobSpec::new(
        "cache1",
        &["mkdir -p vendor", "echo cached-bits-7 > vendor/x"],
    );
    first.cache = cache.clone();
    let a = site.queue(&first);
    site.start_runner();
    assert_final(&site, &a, "success");
    let mut second = JobSpec::new("cache2", &["cat vendor/x"]);
    second.cache = cache;
    let b = site.queue(&second);
    assert_final(&site, &b, "success");
    site.stop();
    assert_log(&site, &b, "cached-bits-7");
}
both!(cache_round_trip);

/// A file-type variable: the job reads the secret from the file the runner wrote, and once
/// the job is over the file is gone.
fn file_variables(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let job = site.queue(
        &JobSpec::new(
            "filevar",
            &[
                "echo \"secret=$(cat \"$SECRET_FILE\")\"",
                "echo \"at=$SECRET_FILE\"",
            ],
        )
        .file_var("SECRET_FILE", "file-secret-9z"),
    );
    site.start_runner();
    assert_final(&site, &job, "success");
    site.stop();
    assert_log(&site, &job, "secret=file-secret-9z");
    let tmp = site.project_tmp_dir();
    assert_log(&site, &job, &format!("at={}/SECRET_FILE", tmp.display()));
    assert!(
        !tmp.join("SECRET_FILE").exists(),
        "{} is left after the job",
        tmp.join("SECRET_FILE").display()
    );
}
both!(file_variables);

/// After an abort the runner's own cleanup_file_variables stage runs with a cancelled
/// context and fails: jacamar's cleanup removes the runner's `<project>.tmp` of the job's
/// builds dir, so the file-type variable's secret is not left behind.
fn file_variables_gone_after_abort(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let job = site.queue(
        &JobSpec::new(
            "filevar-abort",
            &[
                "echo \"at=$SECRET_FILE\"",
                "echo job-started",
                "while :; do sleep 0.2; echo tick; done",
            ],
        )
        .file_var("SECRET_FILE", "file-secret-abort"),
    );
    site.start_runner();
    assert!(
        site.coord.wait_trace(job.id, "job-started", JOB_LIMIT),
        "the job never started\n{}",
        site.explain(&job)
    );
    let tmp = site.project_tmp_dir();
    assert!(tmp.join("SECRET_FILE").exists(), "{}", site.explain(&job));
    site.coord.set_status(job.id, "canceled");
    assert_final(&site, &job, "failed");
    // jacamar's cleanup has run once the job's scripts dir is gone.
    let scripts = site.scripts_dir(&job);
    assert!(
        crate::harness::wait_for(Duration::from_secs(30), || !scripts.exists()),
        "cleanup never removed {}\n{}",
        scripts.display(),
        site.explain(&job)
    );
    site.stop();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty() && !tmp.exists(),
        "after the abort {} still holds {left:?}\n{}",
        tmp.display(),
        site.runner_log()
    );
}
both!(file_variables_gone_after_abort);

/// The caps deployment: the runner runs as a service account (no root), jacamar-auth is a
/// `cap_setuid,cap_setgid=ep` copy, the job runs as the `useradd -m` account.
fn caps_service_account(v: Version) {
    let opts = SiteOpts {
        caps: true,
        ..SiteOpts::default()
    };
    let Some(mut site) = site(v, opts) else {
        return;
    };
    site.repo(&[("README.md", "caps deployment\n")]);
    let job = site.queue(&JobSpec::new(
        "caps",
        &["echo \"user=$(id -un) uid=$(id -u)\"", "cat README.md"],
    ));
    site.start_runner();
    assert_final(&site, &job, "success");
    site.stop();
    assert_log(
        &site,
        &job,
        &format!("user={JOB_USER} uid={}", site.user.uid),
    );
    assert_log(&site, &job, "caps deployment");
}
both!(caps_service_account);

/// No process of the host shows the job token on its command line while the job clones,
/// uploads artifacts and caches (another local account scans /proc/*/cmdline throughout).
fn no_token_on_command_lines(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    site.repo(&[("README.md", "spy\n")]);
    let mut spec = JobSpec::new(
        "spy",
        &[
            "mkdir -p out vendor",
            "echo x > out/a",
            "echo y > vendor/b",
            "sleep 1",
        ],
    );
    spec.artifacts = json!([{
        "name": "out", "untracked": false, "paths": ["out/"], "when": "on_success",
        "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"
    }]);
    spec.cache = json!([{"key": "k", "untracked": false, "policy": "pull-push", "paths": ["vendor/"], "when": "on_success"}]);
    let job = site.queue(&spec);
    // The uploader and git wait 1.5 s for answers: long enough for the spy's scans.
    site.coord.set_slow(Duration::from_millis(1500));
    let spy = Spy::start(&site);
    site.start_runner();
    assert_final(&site, &job, "success");
    let seen = spy.finish();
    site.stop();
    assert!(
        seen.iter().any(|l| l.contains("artifacts-uploader")),
        "the spy never saw the artifacts upload (scan too slow?): {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("git") && l.contains("fetch")),
        "the spy never saw git fetch (scan too slow?): {seen:?}"
    );
    if std::env::var_os("JACAMAR_E2E_SHOW").is_some() {
        eprintln!("the spy saw:\n{}", seen.join("\n"));
    }
    let leaked: Vec<&String> = seen.iter().filter(|l| l.contains(&job.token)).collect();
    assert!(
        leaked.is_empty(),
        "the job token was on these command lines: {leaked:?}\n{}",
        site.explain(&job)
    );
}
both!(no_token_on_command_lines);

/// HTTPS GitLab with a site CA: the runner's `tls-ca-file`; the job's git and helper
/// commands get it as CI_SERVER_TLS_CA_FILE.
fn https_with_site_ca(v: Version) {
    let opts = SiteOpts {
        https: true,
        ..SiteOpts::default()
    };
    let Some(mut site) = site(v, opts) else {
        return;
    };
    site.repo(&[("README.md", "over https\n")]);
    let mut spec = JobSpec::new(
        "https",
        &["cat README.md", "mkdir -p out", "echo z > out/z"],
    );
    spec.artifacts = json!([{
        "name": "out", "untracked": false, "paths": ["out/"], "when": "on_success",
        "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"
    }]);
    let job = site.queue(&spec);
    site.start_runner();
    assert_final(&site, &job, "success");
    site.stop();
    assert_log(&site, &job, "over https");
    assert_eq!(
        site.coord.artifacts(job.id).len(),
        1,
        "{}",
        site.explain(&job)
    );
}
both!(https_with_site_ca);

/// `executor = "slurm"`: the script becomes a job of the real Slurm, as the job's user.
fn slurm_job(v: Version) {
    if !crate::harness::require_tool("sbatch") {
        return;
    }
    let opts = SiteOpts {
        executor: "slurm",
        ..SiteOpts::default()
    };
    let Some(mut site) = site(v, opts) else {
        return;
    };
    let job = site.queue(&JobSpec::new(
        "slurm",
        &["echo \"in slurm job $SLURM_JOB_ID as $(id -un)\""],
    ));
    site.start_runner();
    assert_final(&site, &job, "success");
    site.stop();
    assert_log(&site, &job, &format!("as {JOB_USER}"));
    assert!(
        !site.coord.trace(job.id).contains("in slurm job  as"),
        "no SLURM_JOB_ID\n{}",
        site.explain(&job)
    );
}
both!(slurm_job);

/// SIGQUIT to the runner (the packages' drain drop-in): it takes no new job, lets the
/// running one finish, then exits.
fn sigquit_drains(v: Version) {
    let Some(mut site) = site(v, SiteOpts::default()) else {
        return;
    };
    let job = site.queue(&JobSpec::new(
        "drain",
        &["echo job-started", "sleep 4", "echo job-finished"],
    ));
    site.start_runner();
    assert!(
        site.coord.wait_trace(job.id, "job-started", JOB_LIMIT),
        "the job never started\n{}",
        site.explain(&job)
    );
    site.signal_runner(nix::sys::signal::Signal::SIGQUIT);
    // A job queued once the runner has seen the signal (a request already under way may
    // still be answered) must stay queued.
    std::thread::sleep(Duration::from_millis(1500));
    let next = site.queue(&JobSpec::new("not-taken", &["true"]));
    assert_final(&site, &job, "success");
    assert_log(&site, &job, "job-finished");
    let st = site.wait_runner(Duration::from_secs(30));
    assert!(
        st.is_some(),
        "the runner did not exit after draining\n{}",
        site.runner_log()
    );
    assert_eq!(
        site.coord.queued(),
        1,
        "the draining runner took job {}",
        next.id
    );
}
both!(sigquit_drains);

/// A refused job (no id_token, or a blocklisted user) fails config_exec with the system
/// failure code; the runner retries its preparation 3 times and reports
/// runner_system_failure, as with upstream Jacamar. The retries cost no second JWKS fetch.
fn refused(v: Version, blocklisted: bool) {
    let opts = SiteOpts {
        auth: if blocklisted {
            format!("user_blocklist = [\"{JOB_USER}\"]")
        } else {
            String::new()
        },
        ..SiteOpts::default()
    };
    let Some(mut site) = site(v, opts) else {
        return;
    };
    let mut spec = JobSpec::new("refused", &["echo must-not-run"]);
    if !blocklisted {
        spec.login = None;
    }
    let job = site.queue(&spec);
    site.start_runner();
    let f = assert_final(&site, &job, "failed");
    site.stop();
    assert_eq!(
        f.failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{f:?}\n{}",
        site.explain(&job)
    );
    let log = site.coord.trace(job.id);
    assert!(!log.contains("\nmust-not-run"), "{}", site.explain(&job));
    let attempts = log.matches("Preparation failed: exit status 2").count();
    assert_eq!(
        attempts,
        3,
        "expected 3 preparation attempts\n{}",
        site.explain(&job)
    );
    let want = usize::from(blocklisted);
    assert_eq!(
        site.coord.jwks_hits(),
        want,
        "JWKS fetches over 3 attempts\n{}",
        site.explain(&job)
    );
}

fn refused_without_id_token(v: Version) {
    refused(v, false)
}
both!(refused_without_id_token);

fn refused_blocklisted_user(v: Version) {
    refused(v, true)
}
both!(refused_blocklisted_user);

/// The fake GitLab's git server itself: the job token as HTTP Basic password or nothing
/// (so the scenarios' clones prove that the job authenticated with its token).
#[test]
fn fake_git_server_demands_the_job_token() {
    if !crate::harness::require_root() || !crate::harness::require_tool("git") {
        return;
    }
    // No runner is started: the site kit needs no runner binary for this.
    let site = Site::new(Version::V18_0_5, "/bin/false".into(), SiteOpts::default());
    site.repo(&[("README.md", "x\n")]);
    let job = site.queue(&JobSpec::new("git", &["true"]));
    let host = site.coord.http_url.trim_start_matches("http://");
    let ls = |cred: &str| {
        std::process::Command::new("git")
            .args([
                "ls-remote",
                &format!("http://{cred}{host}/group/project.git"),
            ])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("HOME", site.tmp.path())
            .output()
            .unwrap()
    };
    for cred in ["", "gitlab-ci-token:wrong@", "someone:@"] {
        let out = ls(cred);
        assert!(!out.status.success(), "git ls-remote with {cred:?} worked");
    }
    let out = ls(&format!("someone:{}@", job.token));
    assert!(
        !out.status.success(),
        "another user name with the token worked"
    );
    let out = ls(&format!("gitlab-ci-token:{}@", job.token));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("refs/heads/main"),
        "git ls-remote with the job token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
