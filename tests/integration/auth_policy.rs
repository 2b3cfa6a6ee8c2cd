//! `[auth]` policy through the real binaries with real users and groups (root): lists,
//! bots, shells, pipeline sources, nologin, RunAs, run stages; and the caps-only service
//! account deployment with a cancel.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::auth_kit::{audit_lines, ensure_user, give_token, harness, pki, JwksServer};
use crate::harness::runner_script;
use crate::harness::{alive, require, require_root, require_tool, show, wait_for};

const CAROL: &str = "jrs_test_carol";
const DAVE: &str = "jrs_test_dave";
const GA: &str = "jrs_test_ga";
const GB: &str = "jrs_test_gb";

/// config for `login` under `auth` lines: Ok(()) or the audit reason.
fn decide(server: &JwksServer, login: &str, auth: &str) -> Result<(), String> {
    let mut h = harness(server, "setuid", "", auth, "");
    give_token(&mut h, server, login);
    let out = h.config();
    if out.status.success() {
        return Ok(());
    }
    let lines = audit_lines(&h);
    Err(lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .map(|l| l["msg"].as_str().unwrap().to_string())
        .unwrap_or_else(|| show(&out)))
}

#[test]
fn list_precedence_with_real_accounts() {
    if !require_root() {
        return;
    }
    ensure_user(CAROL, &[GA], "/bin/bash");
    ensure_user(DAVE, &[GB], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let l = |xs: &[&str]| format!("{xs:?}");
    // (auth lines, login, allowed)
    let rows: Vec<(String, &str, bool)> = vec![
        (String::new(), CAROL, true),
        (format!("user_allowlist = {}", l(&[CAROL])), CAROL, true),
        (format!("user_allowlist = {}", l(&[CAROL])), DAVE, false),
        (format!("user_blocklist = {}", l(&[CAROL])), CAROL, false),
        (
            format!("user_allowlist = {0}\nuser_blocklist = {0}", l(&[CAROL])),
            CAROL,
            true,
        ),
        (format!("groups_blocklist = {}", l(&[GA])), CAROL, false),
        (
            format!(
                "groups_blocklist = {}\nuser_allowlist = {}",
                l(&[GA]),
                l(&[CAROL])
            ),
            CAROL,
            true,
        ),
        (format!("groups_allowlist = {}", l(&[GA])), CAROL, true),
        (format!("groups_allowlist = {}", l(&[GA])), DAVE, false),
        (
            format!(
                "groups_allowlist = {}\nuser_blocklist = {}",
                l(&[GA]),
                l(&[CAROL])
            ),
            CAROL,
            false,
        ),
        (
            format!("groups_allowlist = {0}\ngroups_blocklist = {0}", l(&[GA])),
            CAROL,
            false,
        ),
    ];
    for (auth, login, allowed) in rows {
        let got = decide(&server, login, &auth);
        assert_eq!(got.is_ok(), allowed, "{login} with {auth:?}: {got:?}");
    }
}

#[test]
fn bots_shells_sources_and_accounts() {
    if !require_root() {
        return;
    }
    ensure_user(CAROL, &[GA], "/bin/bash");
    ensure_user("project_77_bot_jrs", &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let e = decide(&server, "project_77_bot_jrs", "").unwrap_err();
    assert!(e.contains("bot account"), "{e}");
    assert!(decide(&server, "project_77_bot_jrs", "allow_bot_accounts = true").is_ok());
    let e = decide(&server, CAROL, "shell_allowlist = [\"/bin/zsh\"]").unwrap_err();
    assert!(e.contains("shell_allowlist"), "{e}");
    assert!(decide(&server, CAROL, "shell_allowlist = [\"/bin/bash\"]").is_ok());
    let e = decide(&server, CAROL, "pipeline_source_allowlist = [\"web\"]").unwrap_err();
    assert!(e.contains("pipeline source \"push\""), "{e}");
    assert!(decide(&server, CAROL, "pipeline_source_allowlist = [\"push\"]").is_ok());
    let e = decide(&server, "jrs_test_nobody_here", "").unwrap_err();
    assert!(e.contains("no local account"), "{e}");
    let e = decide(&server, "root", "").unwrap_err();
    assert!(e.contains("uid 0"), "{e}");
}

#[test]
fn nologin_blocks_jobs() {
    let nologin = std::path::Path::new("/etc/nologin");
    if !require_root()
        || !require(
            !nologin.exists(),
            "/etc/nologin exists (the host is in maintenance); this test makes and removes its own",
        )
    {
        return;
    }
    ensure_user(CAROL, &[GA], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    // Only this test enables enforce_nologin, so the file affects no other test.
    struct Remove;
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/etc/nologin");
        }
    }
    let _guard = Remove;
    std::fs::write("/etc/nologin", "jrs test maintenance\n").unwrap();
    let e = decide(&server, CAROL, "enforce_nologin = true").unwrap_err();
    assert!(
        e.contains("/etc/nologin") && e.contains("jrs test maintenance"),
        "{e}"
    );
    std::fs::remove_file("/etc/nologin").unwrap();
    assert!(decide(&server, CAROL, "enforce_nologin = true").is_ok());
}

#[test]
fn runas_script_maps_the_user() {
    if !require_root() {
        return;
    }
    ensure_user(CAROL, &[GA], "/bin/bash");
    let svc = ensure_user(DAVE, &[GB], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("validate.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = {CAROL} ] && [ \"$2\" = {DAVE} ] && [ \"$RUNAS_CURRENT_USER\" = \"$1\" ] \
             && [ \"$SITE_FLAG\" = on ] || {{ echo \"no: $1 $2\" >&2; exit 1; }}\n\
             printf '{{\"username\": \"%s\"}}\\n' \"$2\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sha = {
        let d = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&script).unwrap());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let runas = |sha: &str| {
        format!(
            "[auth.runas]\nvalidation_script = \"{}\"\nuser_variable = \"TARGET_USER\"\n\
             sha256 = \"{sha}\"\nvalidation_env = [\"SITE_FLAG=on\"]\n",
            script.display()
        )
    };
    let mut h = harness(
        &server,
        "setuid",
        "",
        "root_dir_creation = true",
        &runas(&sha),
    );
    give_token(&mut h, &server, CAROL);
    h.set("CUSTOM_ENV_TARGET_USER", DAVE);
    assert!(h.config().status.success());
    assert!(h.prepare().status.success());
    let out = h.run("build_script", &runner_script("id -u\n"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&svc.uid.to_string()),
        "{}",
        show(&out)
    );
    // A request the script refuses, and a script whose checksum is wrong.
    h.set("CUSTOM_ENV_TARGET_USER", "root");
    assert_eq!(h.config().status.code(), Some(2));
    let mut bad = harness(&server, "setuid", "", "", &runas(&"0".repeat(64)));
    give_token(&mut bad, &server, CAROL);
    bad.set("CUSTOM_ENV_TARGET_USER", DAVE);
    assert_eq!(bad.config().status.code(), Some(2));
    let msg = audit_lines(&bad)[0]["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("sha256"), "{msg}");
}

#[test]
fn run_stage_allowlist_skips_other_stages() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(
        &server,
        "none",
        "",
        "run_stage_allowlist = [\"build_script\"]",
        "",
    );
    give_token(&mut h, &server, "alice");
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run("build_script", &runner_script("echo ran-build\n"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran-build"));
    let out = h.run("after_script", &runner_script("echo ran-after\n"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran-after"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run_stage_allowlist"));
}

/// The deployment of ../shared/seeds/non-root-setuid-capabilities.txt: a copy of
/// jacamar-auth with `setcap cap_setuid,cap_setgid=ep`, run by a non-root service account,
/// downscopes to the user; a cancel still ends the job within kill_timeout + 1 s.
#[test]
fn caps_only_service_account_downscopes_and_cancels() {
    if !require_root() || !require_tool("setcap") {
        return;
    }
    let svc = ensure_user("jrs_test_svc", &[], "/bin/bash");
    let user = ensure_user(CAROL, &[GA], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    // kill_timeout is 2s in the kit's configurations; data_dir is the user's $HOME.
    let mut h = harness(&server, "setuid", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, CAROL);
    // The copy: jacamar-auth with file capabilities, jacamar next to it.
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);

    let runner_dir = h.runner_dir.clone();
    let as_svc = |env: &std::collections::BTreeMap<String, String>, args: &[&str]| {
        crate::auth_kit::svc_command(&auth, &svc, &runner_dir, env, args)
    };
    let cfg = h.config_path.display().to_string();
    let out = as_svc(&h.env, &["config", "--configuration", &cfg])
        .output()
        .unwrap();
    assert!(out.status.success(), "config: {}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, val) in v["job_env"].as_object().unwrap() {
        h.env.insert(k.clone(), val.as_str().unwrap().to_string());
    }
    let out = as_svc(&h.env, &["prepare"]).output().unwrap();
    assert!(out.status.success(), "prepare: {}", show(&out));

    let script_path = h.runner_dir.join("script-build");
    let mark = user.dir.join(format!("jrs-ready-{}", h.job_id));
    let _ = std::fs::remove_file(&mark);
    std::fs::write(
        &script_path,
        format!(
            "grep -E '^Cap(Prm|Eff|Amb):' /proc/self/status\necho uid=$(id -u)\n\
             trap '' TERM\nsleep 300 &\necho $! > {m}\nwait\n",
            m = mark.display()
        ),
    )
    .unwrap();
    nix::unistd::chown(&script_path, Some(svc.uid), Some(svc.gid)).unwrap();
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o700)).unwrap();
    let child = as_svc(
        &h.env,
        &["run", &script_path.display().to_string(), "build_script"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::read_to_string(&mark)
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)),
        "the job never started"
    );
    let sleeper: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The job runs as the user, beyond a kill() of the service account.
    let st = std::fs::read_to_string(format!("/proc/{sleeper}/status")).unwrap();
    assert!(
        st.contains(&format!("Uid:\t{0}\t{0}\t{0}", user.uid)),
        "{st}"
    );
    // Cancel: the runner sends SIGTERM to jacamar-auth.
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The job ignores TERM: it ends by the SIGKILL at kill_timeout (2 s in the kit's
    // configurations), well before a generous margin for a loaded machine.
    let kill_timeout = Duration::from_secs(2);
    assert!(
        wait_for(kill_timeout + Duration::from_secs(30), || !alive(sleeper)),
        "the job survived the cancel"
    );
    let took = t0.elapsed();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("uid={}", user.uid)),
        "{}",
        show(&out)
    );
    for cap in ["CapPrm", "CapEff", "CapAmb"] {
        assert!(
            text.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {text}"
        );
    }
    assert!(
        took >= kill_timeout - Duration::from_millis(100),
        "the TERM-ignoring job ended after {took:?}, before kill_timeout (2 s)"
    );
    let _ = std::fs::remove_file(&mark);
}

/// A caps-only deployment whose copy of jacamar-auth lost its file capabilities (a package
/// upgrade without the post-install `setcap`, a copy with `cp`): the downscope fails in the
/// child at `setgroups`, and that failure reaches the job log and the audit log as a clear
/// error naming it, never as a crash. (Before: the child had closed std's error pipe with
/// every other descriptor before dropping privileges, so it aborted with `fatal runtime
/// error` and jacamar-auth said only "killed by SIGABRT without reporting a status".)
#[test]
fn caps_only_copy_without_its_capabilities_fails_with_a_clear_error() {
    if !require_root() || !require_tool("setcap") {
        return;
    }
    let svc = ensure_user("jrs_test_svc", &[], "/bin/bash");
    let _user = ensure_user(CAROL, &[GA], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "setuid", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, CAROL);
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);
    let st = std::process::Command::new("setcap")
        .arg("-r")
        .arg(&auth)
        .status()
        .unwrap();
    assert!(st.success(), "setcap -r failed");

    let as_svc = |env: &std::collections::BTreeMap<String, String>, args: &[&str]| {
        crate::auth_kit::svc_command(&auth, &svc, &h.runner_dir, env, args)
            .output()
            .unwrap()
    };
    let cfg = h.config_path.display().to_string();
    let mut env = h.env.clone();
    let out = as_svc(&env, &["config", "--configuration", &cfg]);
    let out = if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (k, val) in v["job_env"].as_object().unwrap() {
            env.insert(k.clone(), val.as_str().unwrap().to_string());
        }
        as_svc(&env, &["prepare"])
    } else {
        out
    };
    let text = show(&out);
    assert!(
        !out.status.success(),
        "a stage succeeded without capabilities: {text}"
    );
    assert!(
        !text.contains("fatal runtime error") && !text.contains("SIGABRT"),
        "the downscope crashed instead of reporting: {text}"
    );
    let audit = audit_lines(&h);
    let error = audit
        .iter()
        .filter(|l| l["level"] == "ERROR")
        .map(|l| l["msg"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        error.contains("Operation not permitted") && error.contains("cap_setuid,cap_setgid=ep"),
        "the audit log does not say what failed: {error}\naudit: {audit:?}\njob log: {text}"
    );
    // And `validate`, run as the service account, says so before any job.
    let out = as_svc(&env, &["validate", "--configuration", &cfg]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "validate passed: {}", show(&out));
    assert!(
        said.contains("downscope = \"setuid\"") && said.contains("setcap cap_setuid,cap_setgid=ep"),
        "{}",
        show(&out)
    );
}
