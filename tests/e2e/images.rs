//! A job's `image:` through the real GitLab Runner (issue 19): `run_mechanism = "podman"`,
//! the job response's `image` and its `credentials` entry of type `registry` (GitLab's own
//! registry: `gitlab-ci-token` and the job token), a local registry with TLS and htpasswd
//! auth whose password is the job token (`registry_kit`, shared with tests/integration).
//!
//! The runner hands a custom executor the job's image only through `JOB_RESPONSE_FILE`
//! (the whole job response, after it expanded the image name's variables:
//! `Build.expandContainerOptions` before `Prepare`) and `CUSTOM_ENV_CI_JOB_IMAGE`; jacamar
//! reads the file (src/stages/privileged/handover.rs), so the name here uses a variable.

use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::registry_kit::{ready, token, Registry, MARKER};
use crate::site::{prerequisites, JobRef, JobSpec, Site, SiteOpts, Version, JOB_USER, PROJECT};

const JOB_LIMIT: Duration = Duration::from_secs(180);

/// A podman site for `v` (None: skip, allowed).
fn podman_site(v: Version) -> Option<Site> {
    let bin = prerequisites(v)?;
    if !ready() {
        return None;
    }
    let opts = SiteOpts {
        general: "run_mechanism = \"podman\"\n".into(),
        ..SiteOpts::default()
    };
    let site = Site::new(v, bin, opts);
    site.validate();
    Some(site)
}

/// The job `spec` with the image `${E2E_REGISTRY}/ci/debian:bookworm` of `reg` and GitLab's
/// registry credential for it: `gitlab-ci-token` and the job token `job_token`.
fn with_image(spec: JobSpec, reg: &Registry, job_token: &str) -> JobSpec {
    let mut spec = spec.var("E2E_REGISTRY", &reg.host);
    spec.image = json!({"name": "${E2E_REGISTRY}/ci/debian:bookworm"});
    spec.credentials = json!([{
        "type": "registry", "url": reg.host,
        "username": "gitlab-ci-token", "password": job_token,
    }]);
    spec.token = Some(job_token.to_string());
    spec
}

/// The job's podman state (jacamar's per-job node-local directory).
fn state_dir(site: &Site, job: &JobRef) -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "/tmp/jacamar-podman-{}/{}",
        site.user.uid.as_raw(),
        job.id
    ))
}

#[track_caller]
fn assert_token_not_in_log(site: &Site, job: &JobRef) {
    let log = site.coord.trace(job.id);
    // The runner masks the job token (a masked variable) in what it sends: `[MASKED]` in
    // the log would mean something printed it.
    assert!(
        !log.contains(&job.token) && !log.contains("[MASKED]"),
        "the job token in the job log\n{}",
        site.explain(job)
    );
}

/// The job runs in the image, as the job's user, with the repository the runner's
/// get_sources fetched on the host (the image has no git) seen through the bind, in both
/// user stages (the second one with the image already in the job's storage).
fn image_job_runs_in_podman(v: Version) {
    let Some(mut site) = podman_site(v) else {
        return;
    };
    let t = token();
    let reg = Registry::start(&t);
    site.repo(&[("README.md", "hello from the e2e repository\n")]);
    let spec = JobSpec::new(
        "image",
        &[
            "cat /etc/jacamar-test-image",
            "echo \"user=$(id -un)\"",
            "command -v git >/dev/null || echo no-git-in-image",
            "cat README.md",
        ],
    )
    .after(&["echo \"after: $(cat /etc/jacamar-test-image) as=$(id -un)\""]);
    let job = site.queue(&with_image(spec, &reg, &t));
    site.start_runner();
    let f = site.wait_final(&job, JOB_LIMIT);
    assert_eq!(f.state, "success", "{f:?}\n{}", site.explain(&job));
    let log = site.coord.trace(job.id);
    for want in [
        MARKER.to_string(),
        format!("user={JOB_USER}"),
        "no-git-in-image".into(),
        "hello from the e2e repository".into(),
        format!("after: {MARKER}"),
        format!("as={JOB_USER}"),
        format!("in image {} with podman", reg.image()),
    ] {
        assert!(
            log.contains(&want),
            "the job log lacks {want:?}\n{}",
            site.explain(&job)
        );
    }
    assert_token_not_in_log(&site, &job);
    let (_, served) = site.coord.git_counts();
    assert!(served > 0, "git fetched nothing\n{}", site.explain(&job));
    let left = site.wait_no_leftovers(&job, Duration::from_secs(10));
    assert!(left.is_empty(), "left: {left:?}\n{}", site.explain(&job));
    let state = state_dir(&site, &job);
    assert!(
        crate::harness::wait_for(Duration::from_secs(15), || !state.exists()),
        "cleanup left {}\n{}",
        state.display(),
        site.explain(&job)
    );
    site.stop();
}
both!(image_job_runs_in_podman);

/// The registry refuses the job token (its password is another): the job fails before any
/// of its commands run, and the job log, as the runner shows it, names the registry, the
/// image repository and the allowlist to check, never the token.
fn refused_token_says_allowlist(v: Version) {
    let Some(mut site) = podman_site(v) else {
        return;
    };
    let t = token();
    let reg = Registry::start(&token());
    let spec = JobSpec::new("refused-image", &["echo USER-COMMAND-RAN"]);
    let job = site.queue(&with_image(spec, &reg, &t));
    site.start_runner();
    let f = site.wait_final(&job, JOB_LIMIT);
    assert_eq!(f.state, "failed", "{f:?}\n{}", site.explain(&job));
    assert_eq!(
        f.failure_reason.as_deref(),
        Some("script_failure"),
        "{f:?}\n{}",
        site.explain(&job)
    );
    let log = site.coord.trace(job.id);
    assert!(
        !log.contains("\nUSER-COMMAND-RAN"),
        "{}",
        site.explain(&job)
    );
    for want in [
        format!("the registry {} refused the job token", reg.host),
        "image repository ci/debian".into(),
        "job token allowlist".into(),
        format!("includes this project ({PROJECT})"),
    ] {
        assert!(
            log.contains(&want),
            "the job log lacks {want:?}\n{}",
            site.explain(&job)
        );
    }
    assert_token_not_in_log(&site, &job);
    let left = site.wait_no_leftovers(&job, Duration::from_secs(10));
    assert!(left.is_empty(), "left: {left:?}\n{}", site.explain(&job));
    site.stop();
}
both!(refused_token_says_allowlist);
