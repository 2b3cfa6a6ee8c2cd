//! The four stages through the real binaries: jacamar-auth -> jacamar -> bash.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::runner_script;
use crate::harness::{show, Harness};

const ALL_RUN_STAGES: &[&str] = &[
    "prepare_script",
    "get_sources",
    "clear_worktree",
    "restore_cache",
    "download_artifacts",
    "step_script",
    "build_script",
    "step_release",
    "after_script",
    "archive_cache",
    "archive_cache_on_failure",
    "upload_artifacts_on_success",
    "upload_artifacts_on_failure",
    "cleanup_file_variables",
    "some_future_stage",
];

#[test]
fn happy_path_through_every_stage() {
    let mut h = Harness::new("");
    let cfg = h.config_json();
    for key in ["builds_dir", "cache_dir", "hostname"] {
        assert!(cfg[key].is_string(), "{key} missing in {cfg}");
    }
    assert_eq!(cfg["builds_dir_is_shared"], false);
    assert_eq!(cfg["driver"]["name"], "jacamar-rs");
    assert!(cfg["job_env"]["JACAMAR_CI_CONFIG_STR"].is_string());

    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let builds = std::path::PathBuf::from(cfg["builds_dir"].as_str().unwrap());
    assert!(builds.is_dir(), "{builds:?} not created");
    let base = h.base_dir();
    let mode = std::fs::metadata(&base).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "base dir mode {mode:o}");
    for sub in ["builds", "cache", "scripts"] {
        let m = std::fs::symlink_metadata(base.join(sub)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{sub}");
        assert_eq!(m.uid(), nix::unistd::Uid::current().as_raw());
    }

    for stage in ALL_RUN_STAGES {
        let out = h.run(
            stage,
            &runner_script(&format!("echo \"stage {stage} as $(id -un)\"\n")),
        );
        assert!(out.status.success(), "{stage}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("stage {stage} as ")),
            "{stage}: {text}"
        );
    }
    // The scripts were written as <stage>.bash in the user's script dir.
    let scripts = h.scripts_job_dir();
    assert!(scripts.join("build_script.bash").is_file(), "{scripts:?}");

    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(!scripts.exists(), "cleanup left {scripts:?}");
    assert!(builds.is_dir(), "cleanup must keep the builds dir");
}

#[test]
fn failing_script_reports_its_real_exit_code() {
    let mut h = Harness::new("");
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run("build_script", &runner_script("echo before\nexit 3\n"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(h.build_exit_code().as_deref(), Some("3"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("before"));
}

#[test]
fn runner_exit_codes_come_from_the_environment() {
    let mut h = Harness::new("");
    h.set("BUILD_FAILURE_EXIT_CODE", "41");
    h.set("SYSTEM_FAILURE_EXIT_CODE", "42");
    h.config_json();
    assert!(h.prepare().status.success());
    assert_eq!(
        h.run("build_script", &runner_script("exit 9\n"))
            .status
            .code(),
        Some(41)
    );
    assert_eq!(h.build_exit_code().as_deref(), Some("9"));
    h.env.remove("JACAMAR_CI_CONFIG_STR");
    assert_eq!(
        h.run("build_script", &runner_script("true\n"))
            .status
            .code(),
        Some(42)
    );
}

#[test]
fn a_script_killed_by_a_signal_is_named_in_the_job_log() {
    let mut h = Harness::new("");
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run("build_script", &runner_script("kill -KILL $$\n"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(h.build_exit_code().as_deref(), Some("137"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGKILL"),
        "{}",
        show(&out)
    );
}

#[test]
fn stdout_and_stderr_stay_apart_and_the_env_is_an_allowlist() {
    let mut h = Harness::new("");
    h.set("LD_PRELOAD", "/nonexistent/evil.so");
    h.set("RUNNER_SECRET", "hunter2");
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run(
        "build_script",
        &runner_script("echo to-out; echo to-err >&2; env | sort; echo \"TMPDIR=[$TMPDIR]\"\n"),
    );
    assert!(out.status.success(), "{}", show(&out));
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(so.contains("to-out") && !so.contains("to-err"));
    assert!(se.contains("to-err"));
    assert!(!so.contains("hunter2"), "runner env leaked: {so}");
    assert!(!so.contains("LD_PRELOAD"), "LD_PRELOAD leaked: {so}");
    assert!(!so.contains("glcbt-secret-token"), "job token leaked: {so}");
    assert!(so.contains("TMPDIR=[]"), "runner TMPDIR leaked: {so}");
}

#[test]
fn job_message_is_printed_at_prepare() {
    let mut h = Harness::new("job_message = \"NOTICE: be nice to the scheduler\"");
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOTICE: be nice to the scheduler"));
}

// The profile flags (JACAMAR_NO_BASH_PROFILE, JACAMAR_ETC_PROFILE_ONLY) are tested with a
// real user's ~/.profile in sec_shell.rs (profile_flags_choose_the_profile_files_a_job_sees).

#[test]
fn custom_shell_path_is_used() {
    let mut h = Harness::new("");
    let wrapper = h.tmp.path().join("site-bash");
    std::fs::write(
        &wrapper,
        "#!/bin/bash\nexport VIA_SHELL_PATH=yes\nexec /bin/bash \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.rewrite_config(&format!("shell_path = \"{}\"", wrapper.display()));
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run(
        "build_script",
        &runner_script("echo \"via=[${VIA_SHELL_PATH:-}]\"\n"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("via=[yes]"),
        "{}",
        show(&out)
    );
}

#[test]
fn cleanup_is_idempotent_and_retain_logs_keeps_scripts() {
    let mut h = Harness::new("");
    h.config_json();
    assert!(h.prepare().status.success());
    assert!(h
        .run("build_script", &runner_script("true\n"))
        .status
        .success());
    for i in 0..3 {
        let out = h.cleanup();
        assert!(out.status.success(), "cleanup #{i}: {}", show(&out));
    }
    assert!(!h.scripts_job_dir().exists());

    let mut h = Harness::new("retain_logs = true");
    h.config_json();
    assert!(h.prepare().status.success());
    assert!(h
        .run("build_script", &runner_script("true\n"))
        .status
        .success());
    assert!(h.cleanup().status.success());
    assert!(h.scripts_job_dir().join("build_script.bash").is_file());
}

#[test]
fn cleanup_works_without_job_env_from_a_failed_config() {
    // config never ran (as after a failed config_exec): cleanup has only --configuration.
    let h = Harness::new("");
    let out = h.cleanup();
    assert!(out.status.success(), "{}", show(&out));
}

/// Upstream's `--version` has a `Version: <x>` line, which Spack (`Version:\s*(\S+)`) and site
/// scripts look for: both binaries print one, after clap's usual `<name> <version>`.
#[test]
fn both_binaries_print_a_version_line_as_upstream_does() {
    for bin in [crate::harness::AUTH, env!("CARGO_BIN_EXE_jacamar")] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.lines().any(|l| l == format!("Version: {version}")),
            "{bin} --version printed {text:?}"
        );
    }
}

/// Upstream's `jacamar --no-auth`: the runner's hooks without jacamar-auth, for a runner that
/// runs as an ordinary account. A whole job runs as that account (here the non-root CI user
/// of the batch tests, `downscope = "none"`), with a warning that nothing was authorized; the
/// job's exit code reaches the runner.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn jacamar_no_auth_runs_the_hooks_as_the_runners_own_account() {
    if !crate::harness::require_root() {
        return;
    }
    let user = crate::batch_slurm::ci_user();
    let mut h = Harness::batch("shell", &user, "", "");
    h.no_auth = true;
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jacamar --no-auth"),
        "prepare must warn that nothing is authorized: {}",
        show(&out)
    );
    let out = h.run(
        "build_script",
        &runner_script("echo ran-as-$(id -un)\nexit 7\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("ran-as-{user}")),
        "{}",
        show(&out)
    );
    assert_eq!(h.build_exit_code().as_deref(), Some("7"));
    assert!(h.cleanup().status.success());
}

/// `jacamar --no-auth` never runs a job as root, never switches accounts and cannot apply
/// the `[auth]` keys that judge the GitLab user: each is refused at the first stage, naming
/// the key, as a system failure (the runner's 2).
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn jacamar_no_auth_refuses_root_downscope_and_policy_keys() {
    if !crate::harness::require_root() {
        return;
    }
    // As root (this test process): refused whatever the configuration.
    let mut h = Harness::new("");
    h.no_auth = true;
    h.unobfuscated = true;
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this is root"),
        "{}",
        show(&out)
    );
    // As the CI user: downscope = "setuid" and a policy key.
    let user = crate::batch_slurm::ci_user();
    for (auth, key) in [
        ("downscope = \"setuid\"", "[auth] downscope"),
        ("user_allowlist = [\"someone\"]", "[auth] user_allowlist"),
    ] {
        let mut h = Harness::batch("shell", &user, "", "");
        let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
            "downscope = \"none\"",
            if auth.starts_with("downscope") {
                auth
            } else {
                "downscope = \"none\""
            },
        );
        let text = if auth.starts_with("user_") {
            text.replace("[auth]\n", &format!("[auth]\n{auth}\n"))
        } else {
            text
        };
        std::fs::write(&h.config_path, text).unwrap();
        h.no_auth = true;
        h.unobfuscated = true;
        let out = h.config();
        assert_eq!(out.status.code(), Some(2), "{auth}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key) && err.contains("--no-auth"),
            "{auth}: {err}"
        );
    }
}
