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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
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

/// A caps-only copy of jacamar-auth configured with `downscope = "none"` (finding 3 of
/// issue 16): the job would run as the service account, which may execute that same copy
/// with a configuration, job response and token of its own and become any user. Every
/// stage refuses before anything of the job runs (a system failure naming `[auth]
/// downscope`), and `validate`, run as the service account, reports it. (Before: every
/// stage ran the job as the service account and `validate` said OK.)
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn caps_only_copy_with_downscope_none_is_refused_at_every_stage_and_by_validate() {
    if !require_root() || !require_tool("setcap") {
        return;
    }
    let svc = ensure_user("jrs_test_svc", &[], "/bin/bash");
    let _user = ensure_user(CAROL, &[GA], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, CAROL);
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);
    let as_svc = |env: &std::collections::BTreeMap<String, String>, args: &[&str]| {
        crate::auth_kit::svc_command(&auth, &svc, &h.runner_dir, env, args)
            .output()
            .unwrap()
    };
    let cfg = h.config_path.display().to_string();
    // What config would have handed the later stages.
    let mut env = h.env.clone();
    env.insert(
        "JACAMAR_CI_CONFIG_STR".into(),
        std::fs::read_to_string(&h.config_path).unwrap(),
    );
    let script = h.runner_dir.join("script-build");
    std::fs::write(&script, runner_script("echo job-ran-as=$(id -un)\n")).unwrap();
    nix::unistd::chown(&script, Some(svc.uid), Some(svc.gid)).unwrap();
    let script = script.display().to_string();
    let stages: [(&str, Vec<&str>); 4] = [
        ("config", vec!["config", "--configuration", &cfg]),
        ("prepare", vec!["prepare"]),
        ("run", vec!["run", &script, "build_script"]),
        ("cleanup", vec!["cleanup", "--configuration", &cfg]),
    ];
    for (name, args) in &stages {
        let out = as_svc(&env, args);
        let text = show(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name} ran with downscope = \"none\" in a copy holding capabilities: {text}"
        );
        assert!(!text.contains("job-ran-as="), "{name}: {text}");
        let err = String::from_utf8_lossy(&out.stderr);
        if *name == "cleanup" {
            // cleanup's output reaches only the runner's log: the full reason.
            assert!(
                err.contains("[auth] downscope") && err.contains("setuid"),
                "{name}: {text}"
            );
        } else {
            assert!(
                err.contains("configuration could not be used"),
                "{name}: {text}"
            );
        }
    }
    let errors: Vec<String> = audit_lines(&h)
        .iter()
        .filter(|l| l["level"] == "ERROR")
        .map(|l| l["msg"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    for e in &errors {
        assert!(
            e.contains("[auth] downscope = \"none\"")
                && e.contains("capabilit")
                && e.contains("downscope = \"setuid\""),
            "{e}"
        );
    }
    assert!(
        !audit_lines(&h).iter().any(|l| l["level"] == "INFO"),
        "a stage was authorized"
    );
    let out = as_svc(&env, &["validate", "--configuration", &cfg]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "validate: {}", show(&out));
    assert!(
        said.contains("[auth] downscope = \"none\"") && said.contains("capabilit"),
        "{}",
        show(&out)
    );
}

/// The escalation of finding 3 itself: a job of a caps-only deployment with
/// `downscope = "none"` runs as the service account, which may execute the capability
/// holding jacamar-auth; the job runs it with a configuration (`downscope = "setuid"`, a
/// `gitlab_server` of its own), a job response and an id_token it made, and its script would
/// run as another user. Now the job never starts. (Before: the nested run printed the
/// victim's uid.)
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_downscope_none_job_cannot_run_the_caps_copy_to_become_another_user() {
    if !require_root() || !require_tool("setcap") {
        return;
    }
    let svc = ensure_user("jrs_test_svc", &[], "/bin/bash");
    let victim = ensure_user(DAVE, &[GB], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    // The job's own "GitLab": a JWKS server publishing a key the job holds.
    let own = JwksServer::start(&[&pki().keys[1]]);
    let mut h = harness(&server, "none", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, CAROL);
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);

    // The job's kit, in a directory of the service account (the job's own account).
    let kit = h.tmp.path().join("kit");
    std::fs::create_dir(&kit).unwrap();
    std::fs::set_permissions(&kit, std::fs::Permissions::from_mode(0o700)).unwrap();
    let evil = kit.join("evil.toml");
    std::fs::write(
        &evil,
        format!(
            "[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\n{}\n[auth]\ndownscope = \"setuid\"\n",
            crate::auth_kit::server_lines(&own)
        ),
    )
    .unwrap();
    let job_id = 77_000_000 + u64::from(std::process::id() % 1_000_000);
    let response = kit.join("response.json");
    let host = own.url.trim_start_matches("https://");
    std::fs::write(
        &response,
        format!(
            "{{\"id\": {job_id}, \"token\": \"x\", \"git_info\": {{\"repo_url\": \"https://gitlab-ci-token:x@{host}/g/p.git\"}}, \"runner_info\": {{\"timeout\": 3600}}, \"variables\": []}}"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&response, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inner = kit.join("inner.sh");
    std::fs::write(&inner, "echo escalated-uid=$(id -u)\n").unwrap();
    std::fs::create_dir(kit.join("cache")).unwrap();
    let token = crate::auth_kit::mint(
        &pki().keys[1],
        &crate::auth_kit::claims(&own.url, job_id, &victim.name),
    );
    let vars = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME", svc.dir.display().to_string()),
        ("TMPDIR", kit.display().to_string()),
        ("XDG_CACHE_HOME", kit.join("cache").display().to_string()),
        ("JOB_RESPONSE_FILE", response.display().to_string()),
        ("SYSTEM_FAILURE_EXIT_CODE", "2".into()),
        ("BUILD_FAILURE_EXIT_CODE", "1".into()),
        ("CUSTOM_ENV_CI_JOB_ID", job_id.to_string()),
        ("CUSTOM_ENV_CI_JOB_TOKEN", "x".into()),
        ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "evilrunr".into()),
        ("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID", "0".into()),
        ("CUSTOM_ENV_CI_PROJECT_PATH", "g/p".into()),
        ("CUSTOM_ENV_CI_JOB_TIMEOUT", "3600".into()),
        ("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true".into()),
        ("CUSTOM_ENV_SITE_ID_TOKEN", token),
    ];
    let env_words: Vec<String> = vars.iter().map(|(k, v)| format!("'{k}={v}'")).collect();
    let run = |args: &str| {
        format!(
            "env -i {} '{}' {args}\n",
            env_words.join(" "),
            auth.display()
        )
    };
    let e = evil.display();
    let escalate = kit.join("escalate.sh");
    std::fs::write(
        &escalate,
        format!(
            "cd {k}\n{}{}{}",
            run(&format!("config --configuration {e} >/dev/null")),
            run(&format!("prepare --configuration {e}")),
            run(&format!(
                "run --configuration {e} {} build_script",
                inner.display()
            )),
            k = kit.display()
        ),
    )
    .unwrap();
    for p in std::fs::read_dir(&kit).unwrap().flatten() {
        nix::unistd::chown(&p.path(), Some(svc.uid), Some(svc.gid)).unwrap();
    }
    nix::unistd::chown(&kit, Some(svc.uid), Some(svc.gid)).unwrap();

    // The outer job, as the runner would run it.
    let as_svc = |env: &std::collections::BTreeMap<String, String>, args: &[&str]| {
        crate::auth_kit::svc_command(&auth, &svc, &h.runner_dir, env, args)
            .output()
            .unwrap()
    };
    let cfg = h.config_path.display().to_string();
    let mut env = h.env.clone();
    let out = as_svc(&env, &["config", "--configuration", &cfg]);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (k, val) in v["job_env"].as_object().unwrap() {
            env.insert(k.clone(), val.as_str().unwrap().to_string());
        }
    } else {
        env.insert(
            "JACAMAR_CI_CONFIG_STR".into(),
            std::fs::read_to_string(&h.config_path).unwrap(),
        );
    }
    let _ = as_svc(&env, &["prepare"]);
    let script = h.runner_dir.join("script-build");
    std::fs::write(
        &script,
        runner_script(&format!(
            "echo outer-uid=$(id -u)\nbash {}\n",
            quote_path(&escalate)
        )),
    )
    .unwrap();
    nix::unistd::chown(&script, Some(svc.uid), Some(svc.gid)).unwrap();
    let out = as_svc(
        &env,
        &["run", &script.display().to_string(), "build_script"],
    );
    let text = show(&out);
    assert!(
        !text.contains(&format!("escalated-uid={}", victim.uid)),
        "the job became {} through the caps copy: {text}",
        victim.name
    );
    assert!(
        !text.contains("outer-uid="),
        "the job ran as the service account: {text}"
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
}

/// `path` as one single-quoted bash word.
fn quote_path(path: &std::path::Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
