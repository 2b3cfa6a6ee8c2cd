//! The runner's `JOB_RESPONSE_FILE` gains keys over time (`run` and `image.pull_policy`,
//! `image.executor_opts` in runner 17 and 18; `inputs`, `policy_options`, `suspend_options`
//! later) and will gain more. The driver reads only `id`, `git_info.repo_url` and
//! `runner_info.timeout` from it: a response carrying every newer key, an unknown future
//! one and unknown keys inside the objects it does read must never fail a stage, whether
//! the job is verified (its id_token checked against the response's job id) or not.

use crate::auth_kit::{give_token, harness, pki, JwksServer};
use crate::harness::{runner_script_in, show, Harness, Shape};
use crate::shape_tests;

shape_tests!(
    a_newer_runners_response_runs_every_stage_of_an_unverified_job,
    a_newer_runners_response_runs_every_stage_of_a_verified_job,
);

/// Every run stage of a job, in the runner's order.
const STAGES: &[&str] = &[
    "prepare_script",
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "build_script",
    "after_script",
    "archive_cache",
    "upload_artifacts_on_success",
    "cleanup_file_variables",
];

/// The keys a newer runner writes beyond what the harness does, with values of the shapes
/// GitLab sends (as far as known), an unknown future key, and unknown keys inside
/// `git_info`, `runner_info` and `image`.
fn newer_keys() -> serde_json::Value {
    serde_json::json!({
        "allow_git_fetch": true,
        "job_info": {"id": 1, "name": "build", "stage": "test", "project_id": 42,
                     "project_name": "project", "project_jobs_count": 3,
                     "time_in_queue_seconds": 1.5},
        "git_info": {"ref": "main", "sha": "0123456789abcdef0123456789abcdef01234567",
                     "before_sha": "0000000000000000000000000000000000000000",
                     "ref_type": "branch", "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
                     "depth": 20, "repo_object_format": "sha1", "protected": true},
        "runner_info": {"runner_session_url": "", "future_runner_setting": {"x": [1, 2]}},
        "steps": [{"name": "script", "script": ["make"], "timeout": 3600,
                   "when": "on_success", "allow_failure": false}],
        "image": {
            "name": "alpine:3",
            "alias": "",
            "pull_policy": ["always", "if-not-present"],
            "executor_opts": {"docker": {"platform": "amd64", "user": "1000:1000"},
                              "kubernetes": {"user": "1000"}}
        },
        "services": [],
        "artifacts": [],
        "cache": [],
        "credentials": [],
        "dependencies": [],
        "features": {"trace_sections": true, "failure_reasons": ["script_failure"]},
        "hooks": [{"name": "pre_get_sources_script", "script": ["echo hook"]}],
        "secrets": {},
        "run": "[{\"name\": \"step\", \"script\": \"echo run\"}]",
        "inputs": {"environment": "production", "replicas": 3, "debug": false,
                   "regions": ["eu", "us"]},
        "policy_options": {"execution_policy_job": true, "policy_name": "scan-policy",
                           "variable_override_allowed": false,
                           "variable_override_exceptions": ["SCAN_LEVEL"]},
        "suspend_options": {"timeout": 3600, "resumable": true},
        "future_key_of_runner_27": {"nested": [1, {"deeper": null}], "flag": true}
    })
}

/// Config, prepare, every run stage and cleanup of `h`, each a success.
fn every_stage(h: &mut Harness, shape: Shape) {
    let out = h.config();
    assert!(out.status.success(), "{shape}: config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "{shape}: prepare: {}", show(&out));
    for stage in STAGES {
        let body = format!("echo \"stage {stage} ran\"\n");
        let out = h.run(stage, &runner_script_in(shape, &body));
        assert!(out.status.success(), "{shape}: {stage}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("stage {stage} ran")),
            "{shape}: {stage}: {}",
            show(&out)
        );
    }
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
}

fn a_newer_runners_response_runs_every_stage_of_an_unverified_job(shape: Shape) {
    let mut h = Harness::new("");
    h.response_extra = newer_keys();
    every_stage(&mut h, shape);
}

/// A verified job: the id_token is checked against the response's `id` at every stage, so
/// the response is read (and must parse) each time.
fn a_newer_runners_response_runs_every_stage_of_a_verified_job(shape: Shape) {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    h.unobfuscated = true;
    give_token(&mut h, &server, "jrs_response_user");
    h.response_extra = newer_keys();
    every_stage(&mut h, shape);
}
