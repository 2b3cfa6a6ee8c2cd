//! End-to-end tests: CI jobs through the REAL GitLab Runner (v18.0.5 and v16.9.2, built by
//! scripts/gitlab-runner.sh) with `executor = "custom"` wired to jacamar-auth as README.md's
//! "Deployment" section says, against a fake GitLab on loopback (`coordinator`).
//!
//! Needs root, git, the runner binaries in `JACAMAR_E2E_RUNNER_V18_0_5` and
//! `JACAMAR_E2E_RUNNER_V16_9_2`, and `gitlab-runner` on the job user's PATH
//! (/usr/local/bin/gitlab-runner, for the helper commands); scripts/test.sh provides all of
//! them. Without them every test fails, unless `JACAMAR_TEST_ALLOW_SKIP=1`. The target is
//! built only with the `root-tests` feature (Cargo.toml): plain `cargo test` leaves it out.
//! Each scenario runs once per runner release: `cargo test --features root-tests --test e2e
//! v18_0_5` runs one release's half. `JACAMAR_E2E_SHOW=1` (with `--nocapture`) prints every job's log, the
//! runner's log and the requests the fake GitLab saw.
//!
//! `cluster_fake::serve_fake_gitlab` (`#[ignore]`d) is no test: it serves the fake GitLab to
//! the docker cluster's runner node (docker/README.md) until killed.

#[path = "../integration/auth_kit.rs"]
mod auth_kit;
mod cluster_fake;
mod coordinator;
#[path = "../integration/harness.rs"]
mod harness;
mod images;
#[path = "../integration/registry_kit.rs"]
mod registry_kit;
mod scenarios;
mod site;

/// `both!(scenario)`: the test `scenario::v18_0_5` and `scenario::v16_9_2`, each calling
/// `scenario(version)`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn v18_0_5() {
                super::$name($crate::site::Version::V18_0_5)
            }
            #[test]
            fn v16_9_2() {
                super::$name($crate::site::Version::V16_9_2)
            }
        }
    };
}
