//! Real downscoping (needs root, as CI is): setuid and sudo to accounts made with useradd,
//! capabilities and no_new_privs read from /proc/self/status inside the job, seccomp,
//! root_dir_creation, and the job token kept off every command line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::auth_kit::{audit_lines, ensure_user, give_token, harness, pki, JwksServer};
use crate::harness::runner_script;
use crate::harness::{require_root, require_tool, show, wait_for, Harness};

const ALICE: &str = "jrs_test_alice";
const BOB: &str = "jrs_test_bob";
const G1: &str = "jrs_test_g1";
const G2: &str = "jrs_test_g2";

fn users() -> (nix::unistd::User, nix::unistd::User) {
    (
        ensure_user(ALICE, &[G1, G2], "/bin/bash"),
        ensure_user(BOB, &[], "/bin/bash"),
    )
}

/// A setuid harness for alice with `auth` lines, after config and prepare.
fn setuid_job(server: &JwksServer, auth: &str, tables: &str) -> Harness {
    let mut h = harness(
        server,
        "setuid",
        "",
        &format!("root_dir_creation = true\n{auth}"),
        tables,
    );
    give_token(&mut h, server, ALICE);
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} not in {text}"))
        .trim()
        .to_string()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_job_runs_as_the_user_with_no_capabilities() {
    if !require_root() {
        return;
    }
    let (alice, bob) = users();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = setuid_job(&server, "", "");
    // root_dir_creation: <data_dir>/<user>, 0700, owned by the user.
    let base = h.data_dir.join(ALICE);
    let m = std::fs::metadata(&base).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (alice.uid.as_raw(), 0o700));
    // Another user's data dir, made by the same rule.
    let bobs = h.data_dir.join(BOB);
    std::fs::create_dir_all(&bobs).unwrap();
    std::fs::write(bobs.join("secret"), "bob's").unwrap();
    nix::unistd::chown(&bobs, Some(bob.uid), Some(bob.gid)).unwrap();
    std::fs::set_permissions(&bobs, std::fs::Permissions::from_mode(0o700)).unwrap();

    let script = format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ,)\n\
         grep -E '^(Cap(Inh|Prm|Eff|Amb)|NoNewPrivs):' /proc/self/status\n\
         if ls {runner} >/dev/null 2>&1; then echo runner-dir-readable; else echo runner-dir-closed; fi\n\
         if cat {bobs}/secret >/dev/null 2>&1; then echo bob-readable; else echo bob-closed; fi\n",
        runner = h.runner_dir.display(),
        bobs = bobs.display()
    );
    let out = h.run("build_script", &runner_script(&script));
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let g1 = nix::unistd::Group::from_name(G1)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let g2 = nix::unistd::Group::from_name(G2)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let line = text.lines().find(|l| l.starts_with("uid=")).unwrap();
    assert!(
        line.starts_with(&format!("uid={} gid={} ", alice.uid, alice.gid)),
        "{line}"
    );
    let groups: Vec<u32> = line
        .split("groups=")
        .nth(1)
        .unwrap()
        .split(',')
        .map(|g| g.parse().unwrap())
        .collect();
    let mut want = vec![alice.gid.as_raw(), g1, g2];
    let mut got = groups.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{text}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            status_field(&text, cap),
            "0000000000000000",
            "{cap}: {text}"
        );
    }
    assert_eq!(status_field(&text, "NoNewPrivs"), "0", "{text}");
    assert!(text.contains("runner-dir-closed"), "{text}");
    assert!(text.contains("bob-closed"), "{text}");
    // The audit log names the account.
    let ok = audit_lines(&h)
        .into_iter()
        .find(|l| l["stage"] == "build_script" && l["level"] == "INFO")
        .unwrap();
    assert_eq!(ok["account"], ALICE);
    assert!(h.cleanup().status.success());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn no_new_privs_is_set_when_configured() {
    if !require_root() {
        return;
    }
    users();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = setuid_job(&server, "no_new_privs = true", "");
    let out = h.run(
        "build_script",
        &runner_script("grep NoNewPrivs /proc/self/status\n"),
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status_field(&text, "NoNewPrivs"), "1", "{text}");
}

/// What the seccomp tests run in the job: `sethostname` (refused to the user anyway,
/// EPERM without CAP_SYS_ADMIN: the host is never renamed) and `mknod` through `mkfifo`
/// (allowed to the user, unused by jacamar: only a filter makes it fail), each exit status
/// and error, and the job's
/// `Seccomp`/`NoNewPrivs` lines of /proc/self/status.
fn seccomp_probe(h: &Harness) -> String {
    let fifo = format!("/tmp/jrs-seccomp-{}", h.job_id);
    let script = format!(
        "rc=0; hostname jrs-never-set 2>/dev/null || rc=$?; echo hostname-rc=$rc\n\
         rc=0; said=$(mkfifo {fifo} 2>&1) || rc=$?\n\
         [ -z \"$said\" ] || echo \"mkfifo-says: $said\"; echo mkfifo-rc=$rc\n\
         rm -f {fifo}\n\
         grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status\n"
    );
    let out = h.run("build_script", &runner_script(&script));
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn seccomp_block_calls_makes_hostname_fail_in_the_job() {
    if !require_root() || !require_tool("hostname") {
        return;
    }
    users();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let blocked = "block_calls = [\"sethostname\", \"mknod\", \"mknodat\"]";

    // No filter: hostname fails with the user's ordinary EPERM (exit 1), mkfifo works.
    let text = seccomp_probe(&setuid_job(&server, "", ""));
    assert!(text.contains("hostname-rc=1\n"), "{text}");
    assert!(text.contains("mkfifo-rc=0\n"), "{text}");
    assert_eq!(status_field(&text, "Seccomp"), "0", "{text}");

    // The filter kills: SIGSYS (128 + 31) for both.
    let text = seccomp_probe(&setuid_job(
        &server,
        "",
        &format!("[auth.seccomp]\n{blocked}\n"),
    ));
    assert!(text.contains("hostname-rc=159\n"), "{text}");
    assert!(text.contains("mkfifo-rc=159\n"), "{text}");
    assert_eq!(status_field(&text, "Seccomp"), "2", "a filter: {text}");
    assert_eq!(
        status_field(&text, "NoNewPrivs"),
        "1",
        "seccomp implies no_new_privs: {text}"
    );

    // block_with_errno: the calls fail with EPERM and the job goes on. mkfifo, which the user
    // may do, tells the filter's EPERM from the ordinary one hostname also gets.
    let text = seccomp_probe(&setuid_job(
        &server,
        "",
        &format!("[auth.seccomp]\n{blocked}\nblock_with_errno = true\n"),
    ));
    assert!(text.contains("hostname-rc=1\n"), "{text}");
    assert!(text.contains("mkfifo-rc=1\n"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("mkfifo-says: ") && l.ends_with("Operation not permitted")),
        "mkfifo must fail with EPERM: {text}"
    );
    assert_eq!(status_field(&text, "Seccomp"), "2", "a filter: {text}");
    assert_eq!(status_field(&text, "NoNewPrivs"), "1", "{text}");
}

#[test]
fn job_token_never_appears_on_a_command_line() {
    // downscope none is enough: the prelude is independent of the account.
    let server = JwksServer::start(&[&pki().keys[0]]);
    for unrestricted in [false, true] {
        let general = if unrestricted {
            "unrestricted_cmd_line = true"
        } else {
            ""
        };
        let mut h = harness(&server, "none", general, "", "");
        give_token(&mut h, &server, "alice");
        // A token of this job only: /proc is shared with every other test on the machine.
        let token = format!("glcbt-{}x{}", h.job_id, std::process::id());
        h.set("CUSTOM_ENV_CI_JOB_TOKEN", &token);
        h.config_json();
        assert!(h.prepare().status.success());
        let mark = h.tmp.path().join("running");
        // A `git` first on the job's PATH that lives long enough to be seen.
        let bin = h.tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            bin.join("git"),
            format!("#!/bin/sh\ntouch {}\nsleep 4\n", mark.display()),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
        // git's askpass prompt for the job's GitLab server (gitlab_server), the only origin
        // that gets the token.
        let host = server.url.trim_start_matches("https://");
        // What the runner's get_sources does: a git command line with the token in a URL.
        let script = format!(
            "export CI_JOB_TOKEN={token}\nexport PATH={b}:$PATH\n\
             echo askpass=$(\"$GIT_ASKPASS\" \"Password for 'https://gitlab-ci-token@{host}': \")\n\
             git fetch \"https://gitlab-ci-token:{token}@example.invalid/g/p.git\"\n",
            b = bin.display()
        );
        let child = h.spawn_run("get_sources", &runner_script(&script));
        assert!(wait_for(Duration::from_secs(20), || mark.exists()));
        let mut seen = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&c).contains(&token) {
                    seen.push(String::from_utf8_lossy(&c).replace('\0', " "));
                }
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        if unrestricted {
            assert!(!seen.is_empty(), "the control case must see the token");
        } else {
            assert!(seen.is_empty(), "token on command lines: {seen:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("askpass={token}")), "{text}");
        }
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn sudo_downscope_runs_the_job_as_the_user() {
    if !require_root() || !require_tool("sudo") {
        return;
    }
    let (alice, _) = users();
    // The documented sudoers lines, for the test's own jacamar binary.
    let jacamar = std::path::Path::new(crate::harness::AUTH).with_file_name("jacamar");
    let lines = jacamar::privdrop::downscope::sudoers_lines("root", &jacamar);
    let drop_in = "/etc/sudoers.d/jacamar-rs-test";
    std::fs::write(drop_in, &lines).unwrap();
    std::fs::set_permissions(drop_in, std::fs::Permissions::from_mode(0o440)).unwrap();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "sudo", "", "root_dir_creation = true", "");
    give_token(&mut h, &server, ALICE);
    assert!(h.config().status.success());
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    let out = h.run("build_script", &runner_script("echo uid=$(id -u)\n"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("uid={}", alice.uid)),
        "{}",
        show(&out)
    );
    // A failing script still reports its exit code through sudo.
    let out = h.run("build_script", &runner_script("exit 7\n"));
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{}", show(&out));
}
