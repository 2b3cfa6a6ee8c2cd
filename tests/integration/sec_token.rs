//! The job token stays with the job: off every command line during artifact and cache
//! transfers (and out of the script file except its own export), handed by GIT_ASKPASS only
//! to the trusted GitLab origin, and an id_token bound to the job id the runner wrote, not to
//! a CI variable the user can override.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use crate::auth_kit::{claims, ensure_user, give_token, harness, mint, pki, JwksServer, TOKEN_VAR};
use crate::harness::{require_root, require_tool, show, wait_for, Harness};

const ALICE: &str = "jrs_token_alice";
const SPY: &str = "jrs_token_spy";

/// A job token of the form GitLab issues (`glcbt-` prefix, URL-safe characters), unique to
/// this harness so no other test's process can show it.
fn unique_token(h: &mut Harness) -> String {
    let t = format!("glcbt-64_{}x{}_Zq-9", h.job_id, std::process::id());
    h.set("CUSTOM_ENV_CI_JOB_TOKEN", &t);
    t
}

/// Run the job's bash without the profile: a stock /etc/skel `.bash_logout` runs
/// `clear_console` when a login shell reaches the script's final `exit 0`, which fails
/// without a tty (see the custom executor protocol notes); not what these tests are about.
fn no_profile(h: &mut Harness) {
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
}

/// The runner's quoting of one shell word (its bash writer's default escaping, as
/// documented by GitLab Runner): a word of only `[A-Za-z0-9,./@_-]` stays bare; anything
/// else becomes ANSI-C quoted, with `\a \b \t \n \v \f \r \' \\` escapes and `\xHH` for the
/// other control and non-ASCII bytes.
fn runner_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".into();
    }
    let lit = |b: u8| b.is_ascii_alphanumeric() || b",-./@_".contains(&b);
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b if lit(b) => out.push(b as char),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0b => out.push_str("\\v"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(b as char),
            other => out.push_str(&format!("\\x{other:02x}")),
        }
    }
    if !s.bytes().all(lit) {
        format!("$'{out}'")
    } else {
        out
    }
}

/// A stage script exactly as the runner's bash writer finishes it: the body (exports and
/// commands, one per line) quoted once more as the argument of `eval` in a subshell.
fn runner_script(body: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\n\
         if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n\
         set +o noclobber\n: | (eval {})\nexit 0\n",
        runner_quote(body)
    )
}

/// `export NAME=value` as the runner writes the job's variables.
fn export(name: &str, value: &str) -> String {
    format!("export {name}={}\n", runner_quote(value))
}

/// A runner-style command line: every argument quoted by [`runner_quote`].
fn command(args: &[&str]) -> String {
    args.iter()
        .map(|a| runner_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The variables of a real job that hold the job token, plus the rest of `extra`.
fn token_exports(token: &str, server: &str, extra: &[(&str, &str)]) -> String {
    let host = server.split_once("://").map_or(server, |(_, h)| h);
    let scheme = server.split_once("://").map_or("https", |(s, _)| s);
    let mut s = String::new();
    s += &export("CI_JOB_TOKEN", token);
    s += &export(
        "CI_REPOSITORY_URL",
        &format!("{scheme}://gitlab-ci-token:{token}@{host}/group/project.git"),
    );
    s += &export("CI_REGISTRY_USER", "gitlab-ci-token");
    s += &export("CI_REGISTRY_PASSWORD", token);
    s += &export("CI_DEPENDENCY_PROXY_PASSWORD", token);
    s += &export("CI_SERVER_URL", server);
    for (k, v) in extra {
        s += &export(k, v);
    }
    s
}

/// Start a process as `user` (no supplementary groups) running bash `script`.
fn spawn_as(user: &nix::unistd::User, script: &str) -> std::process::Child {
    Command::new("/bin/bash")
        .args(["-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .spawn()
        .unwrap()
}

/// The script files `jacamar` wrote for `h`'s job (kept with `retain_logs = true`).
fn written_scripts(h: &Harness, user: &str) -> Vec<PathBuf> {
    let dir = h
        .data_dir
        .join(user)
        .join("scripts/tstrunnr/000/group/project")
        .join(h.job_id.to_string());
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn artifact_upload_keeps_the_job_token_off_command_lines_and_out_of_the_script_file() {
    if !require_root() || !require_tool("git") {
        return;
    }
    let alice = ensure_user(ALICE, &[], "/bin/bash");
    let spy = ensure_user(SPY, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(
        &server,
        "setuid",
        "retain_logs = true",
        "root_dir_creation = true",
        "",
    );
    give_token(&mut h, &server, ALICE);
    let token = unique_token(&mut h);
    no_profile(&mut h);
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));

    // A world-writable scratch dir (the job's cwd, the marker, the spy's log) and a fake
    // `gitlab-runner` first on the job's PATH: it reports what it got and lives 2 s.
    let scratch = h.tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bin = h.tmp.path().join("fakebin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = scratch.join("helper-started");
    let fake = bin.join("gitlab-runner");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\n\
             if [ \"$1\" = --version ]; then echo 'Version: fake'; exit 0; fi\n\
             echo \"fake-helper argv: $*\"\n\
             echo \"fake-helper CI_JOB_TOKEN=$CI_JOB_TOKEN\"\n\
             echo \"fake-helper CI_REPOSITORY_URL=$CI_REPOSITORY_URL\"\n\
             echo \"fake-helper CI_REGISTRY_PASSWORD=$CI_REGISTRY_PASSWORD\"\n\
             touch {started}\n\
             sleep 2\n",
            started = started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The runner's upload_artifacts_on_success script: exports, cd, the guarded helper.
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let mut body = token_exports(&token, &server.url, &[("PATH", &path)]);
    body += &format!("{}\n", command(&["cd", scratch.to_str().unwrap()]));
    body += "if gitlab-runner --version >/dev/null 2>&1; then\n";
    body += &format!(
        "  echo {}\n",
        runner_quote("\x1b[32;1mUploading artifacts...\x1b[0;m")
    );
    let url = format!("{}/", server.url);
    let id = h.job_id.to_string();
    body += &format!(
        "  {}\n",
        command(&[
            "gitlab-runner",
            "artifacts-uploader",
            "--url",
            &url,
            "--token",
            &token,
            "--id",
            &id,
            "--path",
            "out dir",
            "--artifact-format",
            "zip",
            "--artifact-type",
            "archive",
        ])
    );
    body += "else\n";
    body += &format!(
        "  echo {}\n",
        runner_quote("\x1b[0;33mMissing gitlab-runner.  Uploading artifacts is disabled.\x1b[0;m")
    );
    body += "fi\n";
    let script = runner_script(&body);
    assert!(script.contains(&format!("--token {token}")), "{script}");

    // The spy: another local account reading every process's command line, all builtins.
    let stop = scratch.join("stop-spy");
    let ready = scratch.join("spy-ready");
    let log = scratch.join("spy.log");
    let mut spy_proc = spawn_as(
        &spy,
        &format!(
            "declare -A seen; n=0\n\
             while [ ! -e {stop} ]; do\n\
               for f in /proc/[0-9]*/cmdline; do\n\
                 mapfile -d '' -t a < \"$f\" 2>/dev/null || continue\n\
                 [ ${{#a[@]}} -gt 0 ] && seen[\"${{a[*]}}\"]=1\n\
               done\n\
               n=$((n+1)); [ $n = 1 ] && : > {ready}\n\
             done\n\
             printf '%s\\n' \"${{!seen[@]}}\" > {log}\n\
             echo \"scans: $n\" >> {log}\n",
            stop = stop.display(),
            ready = ready.display(),
            log = log.display()
        ),
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready.exists()),
        "the spy never finished a scan"
    );

    let out = h.run("upload_artifacts_on_success", &script);
    assert!(
        started.exists(),
        "the fake helper never ran: {}",
        show(&out)
    );
    std::fs::write(&stop, "").unwrap();
    let spy_status = spy_proc.wait().unwrap();
    assert!(spy_status.success(), "spy: {spy_status:?}");
    assert!(out.status.success(), "{}", show(&out));

    // The helper got what it needs from the environment, its other arguments intact, and
    // the variables holding the token still hold it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "fake-helper argv: artifacts-uploader --url {url} --id {id} --path out dir --artifact-format zip --artifact-type archive"
        )),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains(&format!("fake-helper CI_JOB_TOKEN={token}\n")),
        "{stdout}"
    );
    let host = server.url.trim_start_matches("https://");
    assert!(
        stdout.contains(&format!(
            "fake-helper CI_REPOSITORY_URL=https://gitlab-ci-token:{token}@{host}/group/project.git\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("fake-helper CI_REGISTRY_PASSWORD={token}\n")),
        "{stdout}"
    );

    // The spy saw the helper's command line, never the token.
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.lines().any(|l| l.contains("artifacts-uploader --url")),
        "the spy never saw the helper (scan too slow?): {seen}"
    );
    let leaked: Vec<&str> = seen.lines().filter(|l| l.contains(&token)).collect();
    assert!(
        leaked.is_empty(),
        "the spy ({SPY}) read the job token from: {leaked:?}"
    );

    // The script file on disk holds the token once: the CI_JOB_TOKEN export.
    let scripts = written_scripts(&h, &alice.name);
    let file = scripts
        .iter()
        .find(|p| p.ends_with("upload_artifacts_on_success.bash"))
        .unwrap_or_else(|| panic!("no script file in {scripts:?}"));
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(
        count(&text, &token),
        1,
        "the script file holds the token outside the CI_JOB_TOKEN export:\n{text}"
    );
    assert_eq!(
        count(&text, &format!("export CI_JOB_TOKEN={token}")),
        1,
        "{text}"
    );
    assert!(h.cleanup().status.success());
}

/// A request line and its Authorization header, as the listener saw them.
type Request = (String, Option<String>);

/// An HTTP listener on 127.0.0.1 that answers every request `401` with
/// `WWW-Authenticate: Basic` and records each request line and its Authorization header.
struct AuthListener {
    origin: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl AuthListener {
    fn start() -> AuthListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut auth = None;
                loop {
                    let mut l = String::new();
                    match reader.read_line(&mut l) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if l == "\r\n" || l == "\n" => break,
                        Ok(_) => {
                            if let Some((k, v)) = l.split_once(':') {
                                if k.eq_ignore_ascii_case("authorization") {
                                    auth = Some(v.trim().to_string());
                                }
                            }
                        }
                    }
                }
                r.lock().unwrap().push((first.trim().to_string(), auth));
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"jrs\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        AuthListener { origin, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{token}"))
    )
}

/// A get_sources-like stage: the job's exports, then `git ls-remote` of `url`.
fn ls_remote_script(token: &str, server: &str, url: &str) -> String {
    let mut body = token_exports(token, server, &[]);
    body += &format!(
        "if {} ; then echo ls-remote-ok; else echo ls-remote-failed; fi\n",
        command(&["git", "ls-remote", url])
    );
    runner_script(&body)
}

#[test]
fn askpass_gives_the_job_token_only_to_the_trusted_gitlab_origin() {
    if !require_tool("git") {
        return;
    }
    let listener = AuthListener::start();
    let url = format!("{}/x.git", listener.origin);
    for trusted in [true, false] {
        listener.clear();
        // Unverified downscope "none" job: the trusted origin is the runner's response.
        let mut h = Harness::new("");
        h.response_server = if trusted {
            listener.origin.clone()
        } else {
            "https://gitlab.example.com".into()
        };
        let token = unique_token(&mut h);
        h.config_json();
        assert!(h.prepare().status.success());
        let out = h.run(
            "get_sources",
            &ls_remote_script(&token, &h.response_server.clone(), &url),
        );
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ls-remote-failed"), "{}", show(&out));
        let reqs = listener.requests();
        assert!(
            !reqs.is_empty(),
            "git never reached the listener: {}",
            show(&out)
        );
        let with_token: Vec<_> = reqs
            .iter()
            .filter(|(_, a)| a.as_deref() == Some(basic(&token).as_str()))
            .collect();
        if trusted {
            assert!(
                !with_token.is_empty(),
                "the trusted origin never got the token: {reqs:?}\n{}",
                show(&out)
            );
        } else {
            assert!(
                with_token.is_empty(),
                "GIT_ASKPASS gave the job token to an untrusted origin {}: {reqs:?}",
                listener.origin
            );
            assert!(
                reqs.iter().all(|(_, a)| a.is_none()),
                "no credentials at all for an untrusted origin: {reqs:?}"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&listener.origin), "{}", show(&out));
        }
        assert!(h.cleanup().status.success());
    }
}

/// Finding 4 of issue 16: the runner's script exports every CI variable before git runs, so
/// a CI variable `JACAMAR_ASKPASS_ORIGIN` naming another host would have `GIT_ASKPASS` hand
/// it `gitlab-ci-token:<token>`. A job whose CI variables set a name reserved for the
/// driver's git credentials is refused at every stage with a message naming the variable
/// (never its value), and the other host gets nothing. (Before: the token reached it.)
#[test]
fn a_ci_variable_cannot_redirect_the_askpass_token() {
    if !require_tool("git") {
        return;
    }
    let listener = AuthListener::start();
    let url = format!("{}/x.git", listener.origin);
    let mut h = Harness::new("");
    // The job's GitLab is elsewhere: only a CI variable points git's askpass at the listener.
    h.response_server = "https://gitlab.example.com".into();
    let token = unique_token(&mut h);
    h.set("CUSTOM_ENV_JACAMAR_ASKPASS_ORIGIN", &listener.origin);
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
    let server = h.response_server.clone();
    let mut body = token_exports(
        &token,
        &server,
        &[
            ("JACAMAR_ASKPASS_ORIGIN", &listener.origin),
            ("JACAMAR_NO_BASH_PROFILE", "true"),
        ],
    );
    body += &format!(
        "if {} ; then echo ls-remote-ok; else echo ls-remote-failed; fi\n",
        command(&["git", "ls-remote", &url])
    );
    let script = runner_script(&body);
    let config = h.config();
    let refused = |what: &str, out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(2), "{what}: {}", show(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("JACAMAR_ASKPASS_ORIGIN")
                && err.contains("reserved")
                && err.contains("job token"),
            "{what}: {}",
            show(out)
        );
        assert!(
            !err.contains(&listener.origin),
            "{what}: the message shows the variable's value: {}",
            show(out)
        );
        assert!(
            !err.contains("JACAMAR_NO_BASH_PROFILE"),
            "{what}: a legitimate opt-in was named: {}",
            show(out)
        );
    };
    // The runner would stop after config; each later stage refuses on its own as well.
    let cfg = h.config_path.display().to_string();
    h.set(
        "JACAMAR_CI_CONFIG_STR",
        &std::fs::read_to_string(&cfg).unwrap(),
    );
    let prepare = h.prepare();
    let run = h.run("get_sources", &script);
    let cleanup = h.cleanup();
    let reqs = listener.requests();
    let with_token: Vec<_> = reqs
        .iter()
        .filter(|(_, a)| a.as_deref() == Some(basic(&token).as_str()))
        .collect();
    assert!(
        with_token.is_empty(),
        "a CI variable sent the job token to {}: {reqs:?}\n{}",
        listener.origin,
        show(&run)
    );
    for (what, out) in [
        ("config", &config),
        ("prepare", &prepare),
        ("run", &run),
        ("cleanup", &cleanup),
    ] {
        refused(what, out);
    }
    assert!(reqs.is_empty(), "git ran: {reqs:?}");

    // Every reserved name is named; with unrestricted_cmd_line (no askpass, the runner's
    // own URLs carry the token) the driver manages no git credentials and refuses none.
    let mut h = Harness::new("");
    for name in [
        "GIT_ASKPASS",
        "GIT_CONFIG_VALUE_12",
        "GIT_CONFIG_PARAMETERS",
    ] {
        h.set(&format!("CUSTOM_ENV_{name}"), "x");
    }
    h.set("CUSTOM_ENV_GIT_CONFIG_NOSYSTEM", "1");
    let out = h.config();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    for name in [
        "GIT_ASKPASS",
        "GIT_CONFIG_VALUE_12",
        "GIT_CONFIG_PARAMETERS",
    ] {
        assert!(err.contains(name), "{name}: {}", show(&out));
    }
    assert!(!err.contains("GIT_CONFIG_NOSYSTEM"), "{}", show(&out));
    h.rewrite_config("unrestricted_cmd_line = true");
    let out = h.config();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn setuid_askpass_trusts_gitlab_server_and_nothing_else() {
    if !require_root() || !require_tool("git") {
        return;
    }
    ensure_user(ALICE, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let listener = AuthListener::start();
    let mut h = harness(&server, "setuid", "", "root_dir_creation = true", "");
    give_token(&mut h, &server, ALICE);
    let token = unique_token(&mut h);
    no_profile(&mut h);
    assert!(h.config().status.success());
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    let host = server.url.trim_start_matches("https://").to_string();
    let mut body = token_exports(&token, &server.url, &[]);
    body += &format!(
        "if {} ; then echo ls-remote-ok; else echo ls-remote-failed; fi\n",
        command(&["git", "ls-remote", &format!("{}/x.git", listener.origin)])
    );
    // The configured gitlab_server (default port spelled out, or not) gets answers; the
    // same host over plain http does not.
    for (name, prompt) in [
        ("user", format!("Username for 'https://{host}': ")),
        (
            "pass",
            format!("Password for 'https://gitlab-ci-token@{host}': "),
        ),
        (
            "http",
            format!("Password for 'http://gitlab-ci-token@{host}': "),
        ),
    ] {
        body += &format!(
            "echo {name}=\"$(\"$GIT_ASKPASS\" {} 2>/dev/null || echo refused)\"\n",
            runner_quote(&prompt)
        );
    }
    let out = h.run("get_sources", &runner_script(&body));
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ls-remote-failed"), "{}", show(&out));
    assert!(text.contains("user=gitlab-ci-token\n"), "{}", show(&out));
    assert!(text.contains(&format!("pass={token}\n")), "{}", show(&out));
    assert!(text.contains("http=refused\n"), "{}", show(&out));
    let reqs = listener.requests();
    assert!(
        !reqs.is_empty(),
        "git never reached the listener: {}",
        show(&out)
    );
    assert!(
        reqs.iter().all(|(_, a)| a.is_none()),
        "credentials sent to {}: {reqs:?}",
        listener.origin
    );
}

#[test]
fn id_token_of_another_job_is_refused_even_with_ci_job_id_overridden_to_match() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    // Control: the job's own token passes.
    let mut ok = harness(&server, "none", "", "", "");
    give_token(&mut ok, &server, ALICE);
    let out = ok.config();
    assert!(out.status.success(), "{}", show(&out));

    // Job B replays job A's token and overrides CI_JOB_ID (a CI variable) to A.
    let mut h = harness(&server, "none", "", "", "");
    h.unobfuscated = true;
    let job_a = h.job_id + 7;
    h.set(
        TOKEN_VAR,
        &mint(&pki().keys[0], &claims(&server.url, job_a, ALICE)),
    );
    h.set("CUSTOM_ENV_CI_JOB_ID", &job_a.to_string());
    let config = h.config();
    // Every stage checks on its own: prepare as if config had passed.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    h.set("JACAMAR_CI_CONFIG_STR", &text);
    for (what, out) in [("config", config), ("prepare", h.prepare())] {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: job A's token was accepted in job B: {}",
            show(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("job_id {job_a}")) && err.contains(&h.job_id.to_string()),
            "{what}: {err}"
        );
    }
}

#[test]
fn verified_job_without_the_runners_job_response_is_refused() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    h.unobfuscated = true;
    give_token(&mut h, &server, ALICE);
    h.env.remove("JOB_RESPONSE_FILE");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JOB_RESPONSE_FILE"),
        "{}",
        show(&out)
    );
    // A response file that cannot be read (the runner's, gone) is named too.
    let mut h = harness(&server, "none", "", "", "");
    h.unobfuscated = true;
    give_token(&mut h, &server, ALICE);
    let gone = h.runner_dir.join("no-such-response.json");
    h.set("JOB_RESPONSE_FILE", gone.to_str().unwrap());
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-response.json"),
        "{}",
        show(&out)
    );
}
