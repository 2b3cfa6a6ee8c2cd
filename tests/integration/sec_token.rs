//! The job token stays with the job: off the command lines of the runner's own helper and
//! git calls (the prelude `jacamar` writes in front of the runner's own stages, which it
//! leaves byte for byte as the runner wrote them), never changed in the user's own stages,
//! handed by GIT_ASKPASS only to the trusted GitLab origin, and an id_token bound to the job
//! id the runner wrote, not to a CI variable the user can override.

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
use crate::harness::{
    require_root, require_tool, runner_quote, runner_script_in, show, wait_for, Harness, Shape,
};
use crate::shape_tests;

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

/// A stage script as the runner's bash writer finishes it with FF_USE_NEW_EVAL_STRATEGY
/// (runner 17 and 18): the body quoted once more as the argument of `eval` in an explicit
/// subshell, `: | (eval ...)`, under the writer's `trap exit 1 TERM`.
fn runner_script_new_eval(body: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\n\
         if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n\
         set +o noclobber\n: | (eval {})\nexit 0\n",
        runner_quote(body)
    )
}

/// `body` in each shape of stage script in the field: every [`Shape`] (legacy `: | eval
/// $'...'`, the v17 one with `trap exit 1 TERM` in front, the current `(trap 'exit 1' TERM;
/// eval ...) < /dev/null`) and `: | (eval ...)` (FF_USE_NEW_EVAL_STRATEGY, runner 17 and 18).
fn runner_shapes(body: &str) -> [(&'static str, String); 4] {
    [
        (Shape::Legacy.name(), Shape::Legacy.script(body)),
        (Shape::V17.name(), Shape::V17.script(body)),
        ("new-eval", runner_script_new_eval(body)),
        (Shape::Current.name(), Shape::Current.script(body)),
    ]
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

/// Another local account reading every process's command line (bash builtins only) until
/// it is stopped; what it saw is a set of command lines, one a line.
struct Spy {
    child: std::process::Child,
    stop: PathBuf,
    log: PathBuf,
}

impl Spy {
    /// Start the spy as `user`, its files in the world-writable `scratch`, and wait for its
    /// first full scan.
    fn start(user: &nix::unistd::User, scratch: &std::path::Path) -> Spy {
        let stop = scratch.join("stop-spy");
        let ready = scratch.join("spy-ready");
        let log = scratch.join("spy.log");
        let child = spawn_as(
            user,
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
        Spy { child, stop, log }
    }

    /// Stop the spy and return every command line it saw.
    fn stop(mut self) -> String {
        std::fs::write(&self.stop, "").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "spy: {status:?}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The script file `jacamar` wrote for `stage` of `h`'s job (kept with `retain_logs`).
fn written_script(h: &Harness, user: &str, stage: &str) -> String {
    let scripts = written_scripts(h, user);
    let file = scripts
        .iter()
        .find(|p| p.ends_with(format!("{stage}.bash")))
        .unwrap_or_else(|| panic!("no {stage} script file in {scripts:?}"));
    std::fs::read_to_string(file).unwrap()
}

/// What `jacamar` must write for a stage of the runner's own: its prelude, then `script`
/// byte for byte.
fn assert_prelude_then_script(text: &str, stage: &str, token: &str, script: &str) {
    let prelude = jacamar::stages::prelude::prelude(stage, Some(token))
        .unwrap_or_else(|| panic!("{stage} gets no prelude"));
    assert!(
        text.starts_with(&prelude) && &text[prelude.len()..] == script,
        "the {stage} file is not the prelude and then the runner's script:\n{text}"
    );
    assert!(prelude.contains("function gitlab-runner {") && prelude.contains("function git {"));
    assert_eq!(count(&prelude, token), 1, "{prelude}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn artifact_upload_keeps_the_job_token_off_command_lines_and_the_runners_script_unchanged() {
    if !require_root() {
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

    let spy = Spy::start(&spy, &scratch);
    let stage = "upload_artifacts_on_success";
    for (shape, script) in runner_shapes(&body) {
        assert!(script.contains(&format!("--token {token}")), "{script}");
        let _ = std::fs::remove_file(&started);
        let out = h.run(stage, &script);
        assert!(
            started.exists(),
            "{shape}: the fake helper never ran: {}",
            show(&out)
        );
        assert!(out.status.success(), "{shape}: {}", show(&out));

        // The helper got what it needs from the environment, its other arguments intact,
        // and the variables holding the token still hold it.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "fake-helper argv: artifacts-uploader --url {url} --id {id} --path out dir --artifact-format zip --artifact-type archive\n"
            )),
            "{shape}: {}",
            show(&out)
        );
        assert!(
            stdout.contains(&format!("fake-helper CI_JOB_TOKEN={token}\n")),
            "{shape}: {stdout}"
        );
        let host = server.url.trim_start_matches("https://");
        assert!(
            stdout.contains(&format!(
                "fake-helper CI_REPOSITORY_URL=https://gitlab-ci-token:{token}@{host}/group/project.git\n"
            )),
            "{shape}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("fake-helper CI_REGISTRY_PASSWORD={token}\n")),
            "{shape}: {stdout}"
        );
        // The file is the prelude, then the runner's script as the runner wrote it.
        let text = written_script(&h, &alice.name, stage);
        assert_prelude_then_script(&text, stage, &token, &script);
    }

    // The spy saw the helper's command line, never the token.
    let seen = spy.stop();
    assert!(
        seen.lines().any(|l| l.contains("artifacts-uploader --url")),
        "the spy never saw the helper (scan too slow?): {seen}"
    );
    let leaked: Vec<&str> = seen.lines().filter(|l| l.contains(&token)).collect();
    assert!(
        leaked.is_empty(),
        "the spy ({SPY}) read the job token from: {leaked:?}"
    );
    assert!(h.cleanup().status.success());
}

/// A request line and its Authorization header, as the listener saw them.
type Request = (String, Option<String>);

/// Read one HTTP request's line and headers from `stream` (no body: only GETs come).
fn read_request(stream: &std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
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
    Some((first.trim().to_string(), auth))
}

const UNAUTHORIZED: &[u8] =
    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"jrs\"\r\n\
      Content-Length: 0\r\nConnection: close\r\n\r\n";

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
                let Some(req) = read_request(&stream) else {
                    continue;
                };
                r.lock().unwrap().push(req);
                let _ = stream.write_all(UNAUTHORIZED);
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
fn ls_remote_script(shape: Shape, token: &str, server: &str, url: &str) -> String {
    let mut body = token_exports(token, server, &[]);
    body += &format!(
        "if {} ; then echo ls-remote-ok; else echo ls-remote-failed; fi\n",
        command(&["git", "ls-remote", url])
    );
    runner_script_in(shape, &body)
}

shape_tests!(
    askpass_gives_the_job_token_only_to_the_trusted_gitlab_origin,
    a_ci_variable_cannot_redirect_the_askpass_token,
);
shape_tests!(
    root:
    setuid_askpass_trusts_gitlab_server_and_nothing_else,
);

fn askpass_gives_the_job_token_only_to_the_trusted_gitlab_origin(shape: Shape) {
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
        assert!(h.prepare().status.success(), "{shape}: prepare");
        let out = h.run(
            "get_sources",
            &ls_remote_script(shape, &token, &h.response_server.clone(), &url),
        );
        assert!(out.status.success(), "{shape}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ls-remote-failed"), "{shape}: {}", show(&out));
        let reqs = listener.requests();
        assert!(
            !reqs.is_empty(),
            "{shape}: git never reached the listener: {}",
            show(&out)
        );
        let with_token: Vec<_> = reqs
            .iter()
            .filter(|(_, a)| a.as_deref() == Some(basic(&token).as_str()))
            .collect();
        if trusted {
            assert!(
                !with_token.is_empty(),
                "{shape}: the trusted origin never got the token: {reqs:?}\n{}",
                show(&out)
            );
        } else {
            assert!(
                with_token.is_empty(),
                "{shape}: GIT_ASKPASS gave the job token to an untrusted origin {}: {reqs:?}",
                listener.origin
            );
            assert!(
                reqs.iter().all(|(_, a)| a.is_none()),
                "{shape}: no credentials at all for an untrusted origin: {reqs:?}"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&listener.origin), "{shape}: {}", show(&out));
        }
        assert!(h.cleanup().status.success(), "{shape}: cleanup");
    }
}

/// Finding 4 of issue 16: the runner's script exports every CI variable before git runs, so
/// a CI variable `JACAMAR_ASKPASS_ORIGIN` naming another host would have `GIT_ASKPASS` hand
/// it `gitlab-ci-token:<token>`. A job whose CI variables set a name reserved for the
/// driver's git credentials is refused at every stage with a message naming the variable
/// (never its value), and the other host gets nothing. (Before: the token reached it.)
fn a_ci_variable_cannot_redirect_the_askpass_token(shape: Shape) {
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
    let script = runner_script_in(shape, &body);
    let config = h.config();
    let refused = |what: &str, out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(2), "{shape} {what}: {}", show(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("JACAMAR_ASKPASS_ORIGIN")
                && err.contains("reserved")
                && err.contains("job token"),
            "{shape} {what}: {}",
            show(out)
        );
        assert!(
            !err.contains(&listener.origin),
            "{shape} {what}: the message shows the variable's value: {}",
            show(out)
        );
        assert!(
            !err.contains("JACAMAR_NO_BASH_PROFILE"),
            "{shape} {what}: a legitimate opt-in was named: {}",
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
        "{shape}: a CI variable sent the job token to {}: {reqs:?}\n{}",
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
    assert!(reqs.is_empty(), "{shape}: git ran: {reqs:?}");

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
    assert_eq!(out.status.code(), Some(2), "{shape}: {}", show(&out));
    for name in [
        "GIT_ASKPASS",
        "GIT_CONFIG_VALUE_12",
        "GIT_CONFIG_PARAMETERS",
    ] {
        assert!(err.contains(name), "{shape} {name}: {}", show(&out));
    }
    assert!(
        !err.contains("GIT_CONFIG_NOSYSTEM"),
        "{shape}: {}",
        show(&out)
    );
    h.rewrite_config("unrestricted_cmd_line = true");
    let out = h.config();
    assert!(out.status.success(), "{shape}: {}", show(&out));
}

fn setuid_askpass_trusts_gitlab_server_and_nothing_else(shape: Shape) {
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
    assert!(out.status.success(), "{shape}: {}", show(&out));
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
    let out = h.run("get_sources", &runner_script_in(shape, &body));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ls-remote-failed"), "{shape}: {}", show(&out));
    assert!(
        text.contains("user=gitlab-ci-token\n"),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        text.contains(&format!("pass={token}\n")),
        "{shape}: {}",
        show(&out)
    );
    assert!(text.contains("http=refused\n"), "{shape}: {}", show(&out));
    let reqs = listener.requests();
    assert!(
        !reqs.is_empty(),
        "{shape}: git never reached the listener: {}",
        show(&out)
    );
    assert!(
        reqs.iter().all(|(_, a)| a.is_none()),
        "{shape}: credentials sent to {}: {reqs:?}",
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

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_users_quoted_heredoc_keeps_the_job_token_it_holds() {
    if !require_root() {
        return;
    }
    let alice = ensure_user(ALICE, &[], "/bin/bash");
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
    assert!(h.config().status.success());
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let scratch = h.tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777)).unwrap();

    for (shape, _) in runner_shapes("") {
        // The user's own script writes a file from a quoted here-document: bash expands
        // nothing in it, so the file must hold exactly what the script says.
        let file = scratch.join(format!("heredoc-{shape}.txt"));
        let mut body = token_exports(&token, &server.url, &[]);
        body += &format!(
            "cat > {} <<'EOF'\ntoken={token}\nliteral $HOME ${{CI_JOB_TOKEN}}\nEOF\n",
            file.display()
        );
        let script = runner_shapes(&body)
            .into_iter()
            .find(|(s, _)| *s == shape)
            .unwrap()
            .1;
        let out = h.run("build_script", &script);
        assert!(out.status.success(), "{shape}: {}", show(&out));
        let written = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{shape}: {}: {e}\n{}", file.display(), show(&out)));
        assert_eq!(
            written,
            format!("token={token}\nliteral $HOME ${{CI_JOB_TOKEN}}\n"),
            "{shape}: the user's quoted here-document was changed"
        );
        // The user's stage runs exactly as the runner wrote it.
        let scripts = written_scripts(&h, &alice.name);
        let path = scripts
            .iter()
            .find(|p| p.ends_with("build_script.bash"))
            .unwrap_or_else(|| panic!("no build_script file in {scripts:?}"));
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            script,
            "{shape}: the build_script file is not the runner's script"
        );
    }
    assert!(h.cleanup().status.success());
}

/// A dumb-HTTP git server on 127.0.0.1 for the bare repositories under `root`: a request
/// with the job token's Basic credentials gets the file it names (404 when there is none),
/// any other gets 401. Each answer comes after `delay`, so that git's processes live long
/// enough for a spy to read their command lines. Records every request.
struct GitServer {
    origin: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl GitServer {
    fn start(root: PathBuf, token: &str, delay: Duration) -> GitServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (r, want) = (requests.clone(), basic(token));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, want, r) = (root.clone(), want.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let Some((line, auth)) = read_request(&stream) else {
                        return;
                    };
                    r.lock().unwrap().push((line.clone(), auth.clone()));
                    std::thread::sleep(delay);
                    if auth.as_deref() != Some(want.as_str()) {
                        let _ = stream.write_all(UNAUTHORIZED);
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("/");
                    let rel = path.split('?').next().unwrap_or("").trim_start_matches('/');
                    let body = (!rel.split('/').any(|c| c == ".."))
                        .then(|| std::fs::read(root.join(rel)).ok())
                        .flatten();
                    let _ = match body {
                        Some(b) => stream
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                                    b.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| stream.write_all(&b)),
                        None => stream.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                    };
                });
            }
        });
        GitServer { origin, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Run git as the test (root) for the fixtures, with no system or global configuration.
fn git_fixture(cwd: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `group/project.git` (a file and the submodule `sub`, at `<origin>/group/sub.git`) and
/// `group/sub.git` under `root`, bare, packed and ready for dumb HTTP. Returns the
/// project's commit.
fn git_fixtures(root: &std::path::Path, origin: &str) -> String {
    let work = root.join("work");
    std::fs::create_dir_all(root.join("group")).unwrap();
    for name in ["sub", "project"] {
        let w = work.join(name);
        std::fs::create_dir_all(&w).unwrap();
        git_fixture(&w, &["init", "-q", "-b", "main"]);
        std::fs::write(w.join(format!("{name}.txt")), format!("{name} content\n")).unwrap();
        git_fixture(&w, &["add", "."]);
        if name == "project" {
            let sub = git_fixture(&work.join("sub"), &["rev-parse", "HEAD"]);
            std::fs::write(
                w.join(".gitmodules"),
                format!("[submodule \"sub\"]\n\tpath = sub\n\turl = {origin}/group/sub.git\n"),
            )
            .unwrap();
            git_fixture(&w, &["add", ".gitmodules"]);
            git_fixture(
                &w,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("160000,{sub},sub"),
                ],
            );
        }
        git_fixture(&w, &["commit", "-q", "-m", name]);
        let bare = root.join("group").join(format!("{name}.git"));
        git_fixture(
            root,
            &[
                "clone",
                "-q",
                "--bare",
                w.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        git_fixture(&bare, &["repack", "-a", "-d", "-q"]);
        git_fixture(&bare, &["update-server-info"]);
    }
    git_fixture(&work.join("project"), &["rev-parse", "HEAD"])
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn get_sources_fetches_through_askpass_with_no_job_token_on_any_command_line() {
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
    let repos = h.tmp.path().join("repos");
    let git = GitServer::start(repos.clone(), &token, Duration::from_millis(150));
    let sha = git_fixtures(&repos, &git.origin);
    // The runner's job response names the git server: its clone URL's origin is trusted.
    h.response_server = git.origin.clone();
    assert!(h.config().status.success());
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let scratch = h.tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777)).unwrap();

    let host = git.origin.trim_start_matches("http://");
    let url = format!("http://gitlab-ci-token:{token}@{host}/group/project.git");
    let insteadof = format!(
        "url.http://gitlab-ci-token:{token}@{host}/.insteadOf={}/",
        git.origin
    );
    let agent = "http.userAgent=gitlab-runner 18.0.5 linux/amd64";
    let spy = Spy::start(&spy, &scratch);
    for (shape, _) in runner_shapes("") {
        // What the runner's get_sources does (shells/abstract.go: the template dir, the
        // fetch strategy, the checkout, the submodules, then the clone strategy of
        // FF_USE_GIT_NATIVE_CLONE), with the token in the URLs of its git command lines.
        let dir = scratch.join(shape);
        let mut body = token_exports(&token, &git.origin, &[]);
        body += &format!("mkdir -p {}\ncd {}\n", dir.display(), dir.display());
        body += "mkdir -p tmpl\n";
        for (k, v) in [
            ("init.defaultBranch", "none"),
            ("fetch.recurseSubmodules", "false"),
            // Ignored by this git (older than 2.46); a newer one does not run GIT_ASKPASS
            // with it, for the driver as much as for this test.
            ("credential.interactive", "never"),
            ("gc.autoDetach", "false"),
        ] {
            body += &format!(
                "{}\n",
                command(&["git", "config", "-f", "tmpl/config", k, v])
            );
        }
        body += &format!(
            "{}\n",
            command(&["git", "init", "project", "--template", "tmpl"])
        );
        body += "cd project\n";
        body += &format!(
            "if {} >/dev/null 2>&1; then\n  echo {}\nelse\n  {}\nfi\n",
            command(&["git", "remote", "add", "origin", &url]),
            runner_quote("Created fresh repository."),
            command(&["git", "remote", "set-url", "origin", &url])
        );
        let fetch = [
            "git",
            "-c",
            agent,
            "fetch",
            "origin",
            "--no-recurse-submodules",
            "+refs/heads/*:refs/remotes/origin/*",
        ];
        let unshallow: Vec<&str> = fetch.iter().copied().chain(["--unshallow"]).collect();
        body += &format!(
            "if [ -f .git/shallow ]; then\n  {}\nelse\n  {}\nfi\n",
            command(&unshallow),
            command(&fetch)
        );
        body += &format!(
            "{}\n",
            command(&[
                "git",
                "-c",
                "submodule.recurse=false",
                "checkout",
                "-f",
                "-q",
                &sha
            ])
        );
        body += &format!("{}\n", command(&["git", "clean", "-ffdx"]));
        body += &format!("{}\n", command(&["git", "submodule", "init"]));
        body += &format!("{}\n", command(&["git", "submodule", "sync"]));
        body += &format!(
            "if {}; then\n  echo {}\nelse\n  echo submodules-failed\n  exit 1\nfi\n",
            command(&["git", "-c", &insteadof, "submodule", "update", "--init"]),
            runner_quote("Updated submodules")
        );
        body += &format!(
            "{}\n",
            command(&["git", "submodule", "foreach", "git clean -ffdx"])
        );
        body += "echo \"project=$(cat project.txt) sub=$(cat sub/sub.txt)\"\n";
        body += "echo \"origin=$(git config --get remote.origin.url)\"\n";
        body += "cd ..\n";
        body += &format!(
            "{}\n",
            command(&[
                "git",
                "-c",
                agent,
                "clone",
                "--no-checkout",
                &url,
                "cloned",
                "--template",
                "tmpl"
            ])
        );
        body += "echo \"cloned=$(git -C cloned rev-parse HEAD)\"\n";
        let script = runner_shapes(&body)
            .into_iter()
            .find(|(s, _)| *s == shape)
            .unwrap()
            .1;
        let before = git.requests().len();
        let out = h.run("get_sources", &script);
        assert!(out.status.success(), "{shape}: {}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for want in [
            "project=project content sub=sub content\n".to_string(),
            format!("origin=http://gitlab-ci-token@{host}/group/project.git\n"),
            format!("cloned={sha}\n"),
        ] {
            assert!(
                stdout.contains(&want),
                "{shape}: no {want:?} in {}",
                show(&out)
            );
        }
        // git authenticated with the job token, which it had from GIT_ASKPASS: it was on
        // no command line and in no git config.
        let reqs = git.requests()[before..].to_vec();
        let authed = reqs
            .iter()
            .filter(|(_, a)| a.as_deref() == Some(basic(&token).as_str()))
            .count();
        assert!(
            authed > 0 && reqs.iter().any(|(l, _)| l.contains("/group/sub.git/")),
            "{shape}: {reqs:?}"
        );
        for config in [
            "project/.git/config",
            "project/.git/modules/sub/config",
            "cloned/config",
            "cloned/.git/config",
        ] {
            if let Ok(text) = std::fs::read_to_string(dir.join(config)) {
                assert!(
                    !text.contains(&token),
                    "{shape}: {config} holds the token:\n{text}"
                );
            }
        }
        let text = written_script(&h, &alice.name, "get_sources");
        assert_prelude_then_script(&text, "get_sources", &token, &script);
    }
    let seen = spy.stop();
    assert!(
        seen.lines()
            .any(|l| l.contains("fetch origin --no-recurse-submodules"))
            && seen.lines().any(|l| l.contains("submodule update --init"))
            && seen.lines().any(|l| l.contains("git-remote-http")),
        "the spy never saw git (scan too slow?): {seen}"
    );
    let leaked: Vec<&str> = seen.lines().filter(|l| l.contains(&token)).collect();
    assert!(
        leaked.is_empty(),
        "the spy ({SPY}) read the job token from: {leaked:?}"
    );
    assert!(h.cleanup().status.success());
}
