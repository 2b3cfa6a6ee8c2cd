//! Bad input through the real binaries: clear errors, obfuscated in the job log unless -u,
//! nothing created where it must not be.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

use crate::harness::{config_text, require_root, show, whoami, Harness, AUTH};

/// (what, configuration text, words the -u message must contain)
fn bad_configs(data_dir: &str) -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "wrong type",
            format!("[general]\nexecutor = \"shell\"\ndata_dir = \"{data_dir}\"\nkill_timeout = 120\n[auth]\ndownscope = \"none\"\n"),
            vec!["line 4", "general.kill_timeout"],
        ),
        (
            "unknown key",
            format!("[general]\nexecutor = \"shell\"\ndata_dir = \"{data_dir}\"\n[auth]\ndownscope = \"none\"\nuser_blocklst = [\"eve\"]\n"),
            vec!["line 6", "auth.user_blocklst", "user_blocklist"],
        ),
        (
            "malformed TOML",
            format!("[general]\nexecutor = \"shell\"\ndata_dir = \"{data_dir}\"\n[auth]\ndownscope = \"none\"\nuser_allowlist = [\"a\"]\ngroups_allowlist = [\"g\"]\nuser_blocklist = [\"b\" [\n"),
            vec!["Near line 8", "auth.user_blocklist"],
        ),
        (
            "missing executor",
            format!("[general]\ndata_dir = \"{data_dir}\"\n[auth]\ndownscope = \"none\"\n"),
            vec!["general.executor"],
        ),
        (
            "missing data_dir",
            "[general]\nexecutor = \"shell\"\n[auth]\ndownscope = \"none\"\n".to_string(),
            vec!["general.data_dir"],
        ),
    ]
}

#[test]
fn bad_configs_are_system_failures_with_key_and_line_only_when_unobfuscated() {
    for unobfuscated in [false, true] {
        let mut h = Harness::new("");
        h.unobfuscated = unobfuscated;
        let data_dir = h.data_dir.display().to_string();
        for (what, text, words) in bad_configs(&data_dir) {
            std::fs::write(&h.config_path, &text).unwrap();
            let out = h.config();
            assert_eq!(out.status.code(), Some(2), "{what}: {}", show(&out));
            assert!(out.stdout.is_empty(), "{what}: config printed on stdout");
            let err = String::from_utf8_lossy(&out.stderr);
            for w in &words {
                assert_eq!(
                    err.contains(w),
                    unobfuscated,
                    "{what} (-u {unobfuscated}): {w:?} in job log?\n{err}"
                );
            }
            if !unobfuscated {
                assert!(err.contains("error id"), "{what}: {err}");
                assert!(err.contains("configuration"), "{what}: {err}");
            }
            // cleanup's output reaches only the runner's log: always the full reason.
            let out = h.cleanup();
            assert_eq!(out.status.code(), Some(2), "{what}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(words[0]),
                "{what}: cleanup hides the reason: {err}"
            );
        }
    }
}

#[test]
fn validate_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[general]\nexecutor = \"slurmm\"\ndata_dir = \"/ecp\"\nkill_timeout = \"2 minutes\"\n[auth]\ndownscope = \"none\"\nuser_blocklst = []\n",
    )
    .unwrap();
    let out = Command::new(AUTH)
        .args(["validate", "--configuration"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "general.executor",
        "general.kill_timeout",
        "auth.user_blocklst",
    ] {
        assert!(text.contains(w), "{w} missing from:\n{text}");
    }
}

/// The shipped configurations validate, `downscope = "setuid"` ones included: those need a
/// jacamar-auth that can switch accounts (root here).
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn validate_passes_shipped_configs() {
    if !require_root() {
        return;
    }
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(AUTH)
            .args(["validate", "--configuration"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{path:?}: {}", show(&out));
    }
}

fn prepare_refused(h: &mut Harness, expect: &str) {
    h.unobfuscated = true;
    h.config_json();
    let out = h.prepare();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
    h.unobfuscated = false;
    let out = h.prepare();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains(expect),
        "obfuscated log leaks the reason: {err}"
    );
    assert!(err.contains("error id"), "{err}");
}

#[test]
fn user_dir_as_a_symlink_is_refused_and_its_target_untouched() {
    let mut h = Harness::new("");
    let elsewhere = h.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&elsewhere, h.data_dir.join(whoami())).unwrap();
    prepare_refused(&mut h, "symbolic link");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn data_dir_as_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("data");
    symlink(&real, &link).unwrap();
    let cfg = tmp.path().join("jacamar.toml");
    std::fs::write(&cfg, config_text(&link, "")).unwrap();
    let mut h = Harness::with_config(tmp, link, cfg);
    prepare_refused(&mut h, "symbolic link");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn user_dir_with_mode_0777_is_refused() {
    let mut h = Harness::new("");
    let base = h.data_dir.join(whoami());
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    prepare_refused(&mut h, "0777");
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        0,
        "created inside"
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn user_dir_owned_by_another_uid_is_refused() {
    // Needs root (CI is root) to give a directory away.
    if !require_root() {
        return;
    }
    let mut h = Harness::new("");
    let base = h.data_dir.join(whoami());
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&base, Some(54321), Some(54321)).unwrap();
    prepare_refused(&mut h, "54321");
}

#[test]
fn world_writable_data_dir_without_sticky_bit_is_refused() {
    let mut h = Harness::new("");
    std::fs::set_permissions(&h.data_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    prepare_refused(&mut h, "sticky");
}

#[test]
fn hostile_ci_variables_cannot_steer_paths() {
    for (var, value) in [
        ("CUSTOM_ENV_CI_PROJECT_PATH", "group/../../../etc"),
        ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "../x"),
        ("CUSTOM_ENV_CI_PROJECT_PATH", "/abs/path"),
    ] {
        let mut h = Harness::new("");
        h.set(var, value);
        h.unobfuscated = true;
        let out = h.config();
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refusing"),
            "{}",
            show(&out)
        );
    }
}

#[test]
fn missing_job_variables_are_a_clear_system_failure() {
    let mut h = Harness::new("");
    h.env.remove("CUSTOM_ENV_CI_JOB_ID");
    h.unobfuscated = true;
    let out = h.config();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CUSTOM_ENV_CI_JOB_ID"));
}

#[test]
fn setuid_without_a_token_is_refused_clearly() {
    let mut h = Harness::new("");
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("downscope = \"none\"", "downscope = \"setuid\"");
    std::fs::write(&h.config_path, text).unwrap();
    h.unobfuscated = true;
    let out = h.config();
    assert_eq!(out.status.code(), Some(2));
    // setuid works now; it needs the job's id_token, and says which block to add.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No id_token found on CI_JOB_JWT"),
        "{}",
        show(&out)
    );
}

/// A failure `jacamar` relays may quote what the job chose (here the path of the CI
/// variable `CUSTOM_CI_BUILDS_DIR`): jacamar-auth writes it to the runner without its
/// control characters, shown escaped, so an escape sequence or a carriage return cannot
/// colour or rewrite the runner's log (finding 5 of issue 16).
#[test]
fn a_relayed_failure_reaches_the_runner_without_control_characters() {
    let mut h = Harness::new("custom_build_dir = true");
    h.unobfuscated = true;
    let dir = h
        .tmp
        .path()
        .join("missing-\u{1b}[31mred\rERROR: forged line");
    h.set("CUSTOM_ENV_CUSTOM_CI_BUILDS_DIR", dir.to_str().unwrap());
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUSTOM_CI_BUILDS_DIR") && err.contains("missing-\\u{1b}[31mred\\u{d}ERROR"),
        "{}",
        show(&out)
    );
    assert!(
        !out.stderr.contains(&0x1b) && !out.stderr.contains(&b'\r'),
        "a control character reached the runner: {:?}",
        err
    );
}
