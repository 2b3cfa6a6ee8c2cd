//! `jacamar-auth validate --runner-config`: the real binary on real files (the shipped
//! runner snippet, a jacamar configuration, a non-executable copy of the binary).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{show, AUTH};

/// The runner snippet the packages ship, with its paths moved to `auth` and `config`.
fn shipped_snippet(auth: &str, config: &Path) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/runner-config.toml"
    ))
    .expect("packaging/runner-config.toml");
    assert!(text.contains("/opt/jacamar/bin/jacamar-auth"), "{text}");
    assert!(text.contains("/etc/gitlab-runner/jacamar.toml"), "{text}");
    text.replace("/opt/jacamar/bin/jacamar-auth", auth).replace(
        "/etc/gitlab-runner/jacamar.toml",
        &config.display().to_string(),
    )
}

fn validate(args: &[&str]) -> Output {
    Command::new(AUTH)
        .arg("validate")
        .args(args)
        .output()
        .expect("run jacamar-auth validate")
}

#[test]
fn runner_config_clean_and_broken() {
    let dir = tempfile::tempdir().unwrap();
    let jacamar_toml = dir.path().join("jacamar.toml");
    std::fs::write(
        &jacamar_toml,
        "[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\nkill_timeout = \"120s\"\n\n\
         [auth]\ndownscope = \"none\"\n",
    )
    .unwrap();
    let jacamar_arg = jacamar_toml.to_str().unwrap();

    // The shipped snippet, wired to the real binary: clean, with and without --configuration.
    let good = dir.path().join("config.toml");
    std::fs::write(&good, shipped_snippet(AUTH, &jacamar_toml)).unwrap();
    let good_arg = good.to_str().unwrap();
    let out = validate(&["--runner-config", good_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK") && stdout.contains("graceful_kill_timeout"),
        "{}",
        show(&out)
    );
    let out = validate(&["--configuration", jacamar_arg, "--runner-config", good_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "{}",
        show(&out)
    );

    // A non-executable copy of the binary as run_exec, an argument after "run", a
    // graceful_kill_timeout below kill_timeout: three lines, each with its line and key.
    let copy = dir.path().join("jacamar-auth");
    std::fs::write(&copy, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    let run_exec = text
        .lines()
        .find(|l| l.trim_start().starts_with("run_exec"))
        .expect("run_exec line")
        .to_string();
    let text = text
        .replacen(
            &run_exec,
            &format!("    run_exec = \"{}\"", copy.display()),
            1,
        )
        .replacen("[\"run\"]", "[\"run\", \"--configuration\", \"x.toml\"]", 1);
    let text = regex_free_replace_graceful(&text, "graceful_kill_timeout = 100");
    let bad = dir.path().join("bad-config.toml");
    std::fs::write(&bad, &text).unwrap();
    let out = validate(&["--runner-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout.lines().collect();
    assert_eq!(problems.len(), 3, "{}", show(&out));
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle} not in {text}"))
    };
    let bad_arg = bad.display().to_string();
    for (problem, (needle, key, says)) in problems.iter().zip([
        (
            "run_exec",
            "runners.custom.run_exec",
            "is not executable (mode 0644)",
        ),
        ("run_args", "runners.custom.run_args", "job_env"),
        (
            "graceful_kill_timeout",
            "runners.custom.graceful_kill_timeout",
            "set graceful_kill_timeout = 130",
        ),
    ]) {
        let prefix = format!("{bad_arg}:{}: runner \"jacamar\": {key}: ", line_of(needle));
        assert!(
            problem.starts_with(&prefix),
            "want {prefix:?}:\n{}",
            show(&out)
        );
        assert!(problem.contains(says), "want {says:?}:\n{}", show(&out));
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 problem(s)"),
        "{}",
        show(&out)
    );

    // A missing file is one line too; no file at all is a usage error.
    let out = validate(&["--runner-config", "/nonexistent/config.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/nonexistent/config.toml"),
        "{}",
        show(&out)
    );
    let out = validate(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// Replace the `graceful_kill_timeout = N` line's value, keeping its indentation.
fn regex_free_replace_graceful(text: &str, with: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("graceful_kill_timeout") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}{with}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
