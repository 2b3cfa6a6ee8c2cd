//! Security of the target account, the trusted server, timeouts and the audit log, through the real binaries (root, real accounts,
//! a real HTTPS JWKS server and minted tokens):
//! - no job runs as a system account, the runner's own account or a nologin-shell account;
//! - the id_token's keys come only from `gitlab_server` or the runner-written job response,
//!   never from a CI variable; policy keys are never skipped for lack of a token;
//! - an absurd `CI_JOB_TIMEOUT` is a clean system failure; jacamar-auth is not dumpable;
//! - the audit log is private, never followed through a symlink, and a failure to write it
//!   fails the stage.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::auth_kit::{
    audit_lines, claims, ensure_user, give_token, harness, mint, pki, JwksServer, TOKEN_VAR,
};
use crate::harness::runner_script;
use crate::harness::{require_root, require_tool, show, wait_for, Harness, AUTH};

const SYS: &str = "jrs_policy_sys";
const NOL: &str = "jrs_policy_nol";
const OK: &str = "jrs_policy_ok";
const SVC: &str = "jrs_policy_svc";
const OTHER: &str = "jrs_policy_other";
const TUT: &str = "jrs_policy_tut";

/// A system account (`useradd -r`: a uid below UID_MIN) with a home and bash.
fn system_account() -> nix::unistd::User {
    if nix::unistd::User::from_name(SYS).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["-r", "-m", "-s", "/bin/bash", SYS])
            .status()
            .unwrap();
        assert!(st.success() || nix::unistd::User::from_name(SYS).unwrap().is_some());
    }
    nix::unistd::User::from_name(SYS).unwrap().unwrap()
}

/// The first ERROR message of the audit log, else the call's output.
fn refusal(h: &Harness, out: &Output) -> String {
    audit_lines(h)
        .iter()
        .find(|l| l["level"] == "ERROR")
        .map(|l| l["msg"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| show(out))
}

/// A setuid job for `login` under extra `auth` lines: config, prepare and a run printing
/// the uid; Ok(stdout of the run) or Err(the refusal).
fn setuid_job(server: &JwksServer, login: &str, auth: &str) -> Result<String, String> {
    let mut h = harness(
        server,
        "setuid",
        "",
        &format!("root_dir_creation = true\n{auth}"),
        "",
    );
    give_token(&mut h, server, login);
    let out = h.config();
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        return Err(refusal(&h, &out));
    }
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let out = h.run("build_script", &runner_script("echo uid=$(id -u)\n"));
    assert!(out.status.success(), "run: {}", show(&out));
    assert!(h.cleanup().status.success());
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Remove the `gitlab_server` line of `h`'s configuration.
fn drop_gitlab_server(h: &Harness) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("gitlab_server"))
        .collect();
    std::fs::write(&h.config_path, kept.join("\n") + "\n").unwrap();
}

// ---- item 5: a floor on the target account ----

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn system_accounts_below_the_uid_floor_get_no_job_unless_minimum_uid_admits_them() {
    if !require_root() {
        return;
    }
    let sys = system_account();
    assert!(sys.uid.as_raw() < 1000, "useradd -r gave uid {}", sys.uid);
    let server = JwksServer::start(&[&pki().keys[0]]);
    // daemon: a system account with a nologin shell; the floor names it first.
    let e = setuid_job(&server, "daemon", "").expect_err("a job ran as daemon");
    assert!(e.contains("daemon") && e.contains("minimum_uid"), "{e}");
    let e = setuid_job(&server, SYS, "").expect_err("a job ran as a system account");
    assert!(
        e.contains(SYS) && e.contains("minimum_uid") && e.contains(&sys.uid.to_string()),
        "{e}"
    );
    // The key lowers the floor: the system account runs its job.
    let out = setuid_job(&server, SYS, &format!("minimum_uid = {}", sys.uid))
        .unwrap_or_else(|e| panic!("minimum_uid did not admit {SYS}: {e}"));
    assert!(out.contains(&format!("uid={}", sys.uid)), "{out}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn nologin_shell_accounts_get_no_job_unless_allowed() {
    if !require_root() {
        return;
    }
    let u = ensure_user(NOL, &[], "/usr/sbin/nologin");
    ensure_user(OK, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let e = setuid_job(&server, NOL, "").expect_err("a job ran as a nologin account");
    assert!(
        e.contains(NOL) && e.contains("/usr/sbin/nologin") && e.contains("allow_nologin_shells"),
        "{e}"
    );
    let out = setuid_job(&server, NOL, "allow_nologin_shells = true")
        .unwrap_or_else(|e| panic!("allow_nologin_shells did not admit {NOL}: {e}"));
    assert!(out.contains(&format!("uid={}", u.uid)), "{out}");
    // An ordinary account is unaffected.
    assert!(setuid_job(&server, OK, "").is_ok());
}

/// jacamar-auth as a caps-only service account (a copy with `setcap cap_setuid,cap_setgid=ep`):
/// a token whose user_login is the service account itself gets no job.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_runners_own_account_is_never_a_target() {
    if !require_root() || !require_tool("setcap") {
        return;
    }
    let svc = ensure_user(SVC, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "setuid", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, SVC);
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);
    let cfg = h.config_path.display().to_string();
    let out = Command::new(&auth)
        .args(["config", "--configuration", &cfg])
        .env_clear()
        .envs(&h.env)
        .current_dir(&h.runner_dir)
        .stdin(Stdio::null())
        .uid(svc.uid.as_raw())
        .gid(svc.gid.as_raw())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a job was accepted as the runner's own account: {}",
        show(&out)
    );
    let e = refusal(&h, &out);
    assert!(
        e.contains(SVC) && e.contains("jacamar-auth's own account"),
        "{e}"
    );
}

// ---- item 7: the server is never a CI variable; no silent skip of policy ----

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn keys_are_never_fetched_from_the_jobs_ci_server_url() {
    if !require_root() {
        return;
    }
    ensure_user(OK, &[], "/bin/bash");
    let real = JwksServer::start(&[&pki().keys[0]]);
    let attacker = JwksServer::start(&[&pki().keys[1]]);
    for downscope in ["none", "setuid"] {
        let mut h = harness(&real, downscope, "", "root_dir_creation = true", "");
        drop_gitlab_server(&h);
        h.unobfuscated = true;
        // The job's CI variable points to the attacker; the runner's response to GitLab.
        h.set("CUSTOM_ENV_CI_SERVER_URL", &attacker.url);
        let forged = mint(&pki().keys[1], &claims(&attacker.url, h.job_id, OK));
        h.set(TOKEN_VAR, &forged);
        let out = h.config();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{downscope}: the forged token was accepted: {}",
            show(&out)
        );
        assert_eq!(
            attacker.hits(),
            0,
            "{downscope}: the attacker's JWKS server was contacted"
        );
        // The real server's token works without gitlab_server, from the response alone.
        give_token(&mut h, &real, OK);
        let out = h.config();
        assert!(
            out.status.success(),
            "{downscope}: a good token without gitlab_server: {}",
            show(&out)
        );
        assert!(real.hits() > 0);
        assert_eq!(attacker.hits(), 0);
    }
}

#[test]
fn an_issuer_below_the_trusted_origin_is_accepted_another_is_not() {
    let real = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&real, "none", "", "", "");
    drop_gitlab_server(&h);
    h.unobfuscated = true;
    // GitLab under a relative URL root issues `https://host/gitlab`.
    let mut c = claims(&format!("{}/gitlab", real.url), h.job_id, "alice");
    c["aud"] = serde_json::json!(real.url);
    h.set(TOKEN_VAR, &mint(&pki().keys[0], &c));
    let out = h.config();
    assert!(out.status.success(), "{}", show(&out));
    // A prefix that is not a path below the origin: `https://127.0.0.1:PORT0`.
    let mut c = claims(&format!("{}0", real.url), h.job_id, "alice");
    c["aud"] = serde_json::json!(real.url);
    h.set(TOKEN_VAR, &mint(&pki().keys[0], &c));
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("issuer"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_untokened_job_is_refused_when_a_policy_key_is_set() {
    let mut h = Harness::new("");
    h.unobfuscated = true;
    let text = std::fs::read_to_string(&h.config_path).unwrap()
        + "user_allowlist = [\"jrs_policy_someone\"]\n";
    std::fs::write(&h.config_path, text).unwrap();
    let out = h.config();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unverified job ran although user_allowlist is set: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No id_token found on CI_JOB_JWT"),
        "{}",
        show(&out)
    );
    // Without a policy key the local demo still runs unverified.
    let mut plain = Harness::new("");
    assert!(plain.config().status.success());
}

/// Upstream's admin tutorial configuration, verbatim but for `tls-ca-file` (the test's
/// GitLab has a private CA): setuid without `gitlab_server` runs a job.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_upstream_admin_tutorial_configuration_runs_a_setuid_job() {
    if !require_root() {
        return;
    }
    let user = ensure_user(TUT, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = tmp.path().join("custom.toml");
    std::fs::write(
        &config_path,
        format!(
            "[general]\n  executor = \"shell\"\n  data_dir = \"$HOME\"\n  limit_build_dir = true\n  \
             tls-ca-file = \"{}\"\n\n[auth]\n  downscope = \"setuid\"\n\n[auth.logging]\n  \
             location = \"/etc/gitlab-runner/logs\"\n  level = \"debug\"\n",
            pki().ca_pem.display()
        ),
    )
    .unwrap();
    let data_dir = tmp.path().join("unused");
    let mut h = Harness::with_config(tmp, data_dir, config_path);
    h.unobfuscated = true;
    h.response_server = server.url.clone();
    let cache = h.tmp.path().join("cache");
    h.set("XDG_CACHE_HOME", &cache.display().to_string());
    let t = mint(&pki().keys[0], &claims(&server.url, h.job_id, TUT));
    h.set("CUSTOM_ENV_CI_JOB_JWT", &t);
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let out = h.run("build_script", &runner_script("echo as=$(id -un)\n"));
    assert!(out.status.success(), "run: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("as={TUT}")),
        "{}",
        show(&out)
    );
    assert!(h.cleanup().status.success());
    assert!(user.dir.is_dir());
}

fn validate(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(AUTH)
        .args(["validate", "--configuration"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn validate_rejects_policy_keys_the_configuration_cannot_enforce() {
    let base = |downscope: &str| {
        format!("[general]\nexecutor = \"shell\"\ndata_dir = \"/ecp\"\n[auth]\ndownscope = \"{downscope}\"\n")
    };
    // (text, key, line)
    let bad = [
        (
            format!(
                "{}[auth.runas]\nvalidation_script = \"/opt/runas\"\n",
                base("none")
            ),
            "auth.runas",
            6,
        ),
        (
            format!("{}shell_allowlist = [\"/bin/bash\"]\n", base("none")),
            "auth.shell_allowlist",
            6,
        ),
        (
            format!("{}ff_getent_check = true\n", base("none")),
            "auth.ff_getent_check",
            6,
        ),
        (
            format!("{}no_new_privs = true\n", base("sudo")),
            "auth.no_new_privs",
            6,
        ),
        (
            format!(
                "{}[auth.seccomp]\nblock_calls = [\"sethostname\"]\n",
                base("sudo")
            ),
            "auth.seccomp.block_calls",
            7,
        ),
    ];
    for (text, key, line) in bad {
        let out = validate(&text);
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{key} accepted:\n{text}\n{}",
            show(&out)
        );
        assert!(
            report.contains(&format!("Near line {line}")) && report.contains(key),
            "{key}: {report}"
        );
    }
    // Enforceable now (a token is required): lists with downscope none, no gitlab_server.
    let out = validate(&format!(
        "{}user_allowlist = [\"a\"]\npipeline_source_allowlist = [\"push\"]\n",
        base("none")
    ));
    assert!(out.status.success(), "{}", show(&out));
}

// ---- item 9: CI_JOB_TIMEOUT, dumpable ----

#[test]
fn an_absurd_ci_job_timeout_is_a_clean_system_failure() {
    let mut h = Harness::new("");
    h.unobfuscated = true;
    assert!(h.config().status.success());
    for value in ["18446744073709551615", "2592001"] {
        h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", value);
        for (what, out) in [
            ("prepare", h.prepare()),
            ("run", h.run("build_script", &runner_script("echo ran\n"))),
        ] {
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what} with CI_JOB_TIMEOUT={value}: {}",
                show(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("CUSTOM_ENV_CI_JOB_TIMEOUT") && !err.contains("panicked"),
                "{what}: {err}"
            );
            assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
        }
    }
    // The documented maximum itself is accepted.
    h.set("CUSTOM_ENV_CI_JOB_TIMEOUT", "2592000");
    let out = h.run("build_script", &runner_script("echo ran\n"));
    assert!(out.status.success(), "{}", show(&out));
}

/// A non-dumpable process's /proc/<pid> files belong to root, whoever runs it: jacamar-auth
/// run by a non-root account shows root-owned /proc files during a job.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn jacamar_auth_is_not_dumpable() {
    if !require_root() {
        return;
    }
    let svc = ensure_user(SVC, &[], "/bin/bash");
    let mut h = Harness::batch("shell", SVC, "", "");
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    // The data dir is 1777: the job (as the service account) can write there.
    let ready = h.data_dir.join("ready");
    let mut child = h.spawn_run(
        "build_script",
        &runner_script(&format!("touch {}\nsleep 30\n", ready.display())),
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready.exists()),
        "the job never started"
    );
    let pid = child.id();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        st.contains(&format!("Uid:\t{0}\t{0}\t{0}", svc.uid)),
        "{st}"
    );
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    assert_eq!(
        owner, 0,
        "jacamar-auth (uid {}) is dumpable: its /proc files belong to it",
        svc.uid
    );
}

// ---- item 10: the audit log ----

/// A downscope-none job with a token, its audit log at `<tmp>/audit.log`.
fn audited(server: &JwksServer) -> Harness {
    let mut h = harness(server, "none", "", "", "");
    give_token(&mut h, server, "alice");
    h
}

#[test]
fn the_audit_log_is_created_0600() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = audited(&server);
    let out = h.config();
    assert!(out.status.success(), "{}", show(&out));
    let m = std::fs::metadata(h.tmp.path().join("audit.log")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600, "audit log mode {:o}", m.mode());
    assert!(!audit_lines(&h).is_empty());
}

#[test]
fn a_symlink_at_the_audit_log_path_is_refused_and_its_target_untouched() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = audited(&server);
    let victim = h.tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let log = h.tmp.path().join("audit.log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&log.display().to_string()), "{err}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn an_audit_log_owned_by_another_user_is_refused() {
    if !require_root() {
        return;
    }
    let other = ensure_user(OTHER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = audited(&server);
    let log = h.tmp.path().join("audit.log");
    std::fs::write(&log, "").unwrap();
    nix::unistd::chown(&log, Some(other.uid), Some(other.gid)).unwrap();
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&log.display().to_string()) && err.contains("owned by uid"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
}

#[test]
fn an_unwritable_audit_log_fails_the_stage() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = audited(&server);
    let missing = h.tmp.path().join("no-such-dir/audit.log");
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        &h.tmp.path().join("audit.log").display().to_string(),
        &missing.display().to_string(),
    );
    std::fs::write(&h.config_path, text).unwrap();
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
