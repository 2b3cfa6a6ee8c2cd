//! The scenarios, each through both runner releases.

use std::time::Duration;

use crate::both;
use crate::site::{prerequisites, JobSpec, Site, SiteOpts, Version, JOB_USER};

/// How long a job may take before a test gives up on it.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A job with sources: get_sources clones the fake GitLab's repository with the job token,
/// the script runs as the job's user and sees the files; the job succeeds.
fn success_with_sources(v: Version) {
    let Some(bin) = prerequisites(v) else { return };
    let mut site = Site::new(v, bin, SiteOpts::default());
    site.validate();
    let repo = site.repo(&[("README.md", "hello from the e2e repository\n")]);
    let job = site.queue(
        &JobSpec::new(
            "sources",
            &[
                "echo \"user=$(id -un)\"",
                "cat README.md",
                "git log --oneline | wc -l",
            ],
        ),
        Some(&repo.sha),
    );
    site.start_runner();
    let f = site.wait_final(&job, JOB_LIMIT);
    site.stop();
    let log = site.coord.trace(job.id);
    assert_eq!(f.state, "success", "{f:?}\n{}", site.explain(&job));
    assert!(
        log.contains(&format!("user={JOB_USER}")),
        "{}",
        site.explain(&job)
    );
    assert!(
        log.contains("hello from the e2e repository"),
        "{}",
        site.explain(&job)
    );
    let (_, served) = site.coord.git_counts();
    assert!(
        served > 0,
        "git fetched nothing from the fake GitLab\n{}",
        site.explain(&job)
    );
}
both!(success_with_sources);
