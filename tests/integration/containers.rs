//! A job's `image:` with `run_mechanism = "podman"` (issue 19, slice 1: the shell executor on
//! the host), for real: a real account (useradd -m, with its subordinate id ranges), setuid
//! downscope, rootless podman, a local registry with TLS and htpasswd auth whose password is
//! the job token (scripts/containers/registry.sh), the image scripts/containers/setup.sh
//! builds. Needs root and the tools; fails naming what is missing (no silent skip).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::auth_kit::{ensure_user, give_token, harness, pki, JwksServer};
use crate::harness::{show, Harness, Shape};
use crate::registry_kit::{ready, token, Registry, MARKER};

const USER: &str = "jrs_c19_pod";

/// The account's passwd entry (created once; useradd gives it its subordinate ranges).
fn account() -> nix::unistd::User {
    account_named(USER)
}

/// `name`'s passwd entry (created once, with its subordinate ranges).
pub(crate) fn account_named(name: &str) -> nix::unistd::User {
    let u = ensure_user(name, &[], "/bin/bash");
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}:"))),
            "{name} has no range in {f} (usermod --add-subuids/--add-subgids)"
        );
    }
    u
}

/// A setuid job of the account with `image` and a registry credential whose password is
/// `password`; the job token is `token`. `podman` are extra `[general.podman]` lines.
fn job(
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
    podman: &str,
) -> Harness {
    let general = format!("run_mechanism = \"podman\"\n[general.podman]\n{podman}\n");
    job_of(USER, &general, server, reg, image, token, password)
}

/// A setuid job of `user` with the `[general]` lines `general` (the mechanism), `image` and
/// a registry credential whose password is `password`; the job token is `token`.
pub(crate) fn job_of(
    user: &str,
    general: &str,
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
) -> Harness {
    account_named(user);
    let mut h = harness(server, "setuid", general, "root_dir_creation = true", "");
    give_token(&mut h, server, user);
    h.set("CUSTOM_ENV_CI_JOB_TOKEN", token);
    h.response_extra = serde_json::json!({
        "token": token,
        "image": {"name": image},
        "credentials": [{"type": "registry", "url": reg.host, "username": "gitlab-ci-token", "password": password}],
    });
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// Runs the job's cleanup stage when dropped, so a failing test leaves no podman state
/// (its files belong to subordinate ids) and no process behind; a second cleanup after the
/// test's own finds nothing to do.
pub(crate) struct Cleanup<'a>(pub(crate) &'a Harness);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.cleanup();
    }
}

fn state_dir(h: &Harness) -> PathBuf {
    let uid = account().uid.as_raw();
    PathBuf::from(format!("/tmp/jacamar-podman-{uid}/{}", h.job_id))
}

/// `podman ps -a` of the job's own podman state, as the account.
fn podman_ps(h: &Harness) -> String {
    let s = state_dir(h);
    let cmd = format!(
        "XDG_RUNTIME_DIR={s}/xdg podman --root={s}/storage --runroot={s}/xdg/run --storage-driver=overlay --cgroup-manager=cgroupfs --events-backend=file --log-level=error ps -a --format '{{{{.Names}}}} {{{{.Status}}}}'",
        s = s.display()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            USER,
            "--regid",
            USER,
            "--init-groups",
            "--reset-env",
            "bash",
            "-c",
            &cmd,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The account's processes (pid, command line), zombies left out.
fn processes_of_account() -> Vec<(i32, String)> {
    processes_of(account().uid.as_raw())
}

/// The processes of `uid` (pid, command line), zombies left out.
pub(crate) fn processes_of(uid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for pid in crate::harness::all_pids() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if zombie || uid_line.split_whitespace().nth(1) != Some(&uid.to_string()) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, cmd));
    }
    out
}

/// The job's processes: the account's whose command line names the job's state dir, plus
/// conmon and catatonit instances of it.
fn job_processes(h: &Harness) -> Vec<(i32, String)> {
    let s = state_dir(h).display().to_string();
    processes_of_account()
        .into_iter()
        .filter(|(_, c)| c.contains(&s) || c.contains(&h.job_id.to_string()))
        .collect()
}

pub(crate) fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn image_job_runs_as_the_user_inside_the_image(shape: Shape) {
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t, "");
    let _cleanup = Cleanup(&h);
    let t0 = Instant::now();
    let out = h.run(
        "build_script",
        &shape.script("cat /etc/jacamar-test-image\necho user=$(id -un)\necho home=$HOME\ntouch $HOME/x && echo home-writable\n"),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(
        stdout.contains(MARKER),
        "{shape}: not in the image: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("user={USER}")),
        "{shape}: {stdout}"
    );
    assert!(stdout.contains("home-writable"), "{shape}: {stdout}");
    assert!(stderr.contains("with podman"), "{shape}: {stderr}");
    let first = t0.elapsed();
    // A failing command's code is the build's.
    let out = h.run("after_script", &shape.script("echo second\nexit 7\n"));
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some("7"),
        "{shape}: {}",
        show(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("second"));
    eprintln!(
        "{shape}: first user stage (pull + run) {first:?}, second (manifest check + run) {:?}",
        t0.elapsed() - first
    );
    // The runner's own stages stay on the host.
    let out = h.run(
        "get_sources",
        &shape.script("test -e /etc/jacamar-test-image || echo on-host\n"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on-host"),
        "{shape}: {}",
        show(&out)
    );
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(
        !state_dir(&h).exists(),
        "{shape}: {} left",
        state_dir(&h).display()
    );
    let left = job_processes(&h);
    assert!(left.is_empty(), "{shape}: left after cleanup: {left:?}");
}

/// What a cancelled stage showed: its stdout lines, stderr, exit status, and the time from
/// the runner's SIGTERM to its end.
struct Cancelled {
    seen: Vec<String>,
    stderr: String,
    code: Option<i32>,
    took: Duration,
}

/// Run `body` as build_script in the image, send the runner's SIGTERM to the call's group
/// once it printed `started`, and check that within kill_timeout (2 s) plus 5 s nothing of
/// the job is left: `podman ps -a` of its state empty, no conmon, no process of it but
/// podman's pause process (which the cleanup stage ends).
fn cancel_in_image(shape: Shape, body: &str) -> Cancelled {
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    // kill_timeout is 2 s (auth_kit's harness).
    let h = job(&server, &reg, &reg.image(), &t, &t, "");
    let _cleanup = Cleanup(&h);
    let mut child = h.spawn_run("build_script", &shape.script(body));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while !seen.iter().any(|l: &String| l.contains("started")) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{shape}: never started: {seen:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let t1 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let took = t1.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        seen.push(l);
    }
    assert!(
        seen.iter().any(|l| l.contains(MARKER)),
        "{shape}: not in the image: {seen:?}\n{stderr}"
    );
    eprintln!("{shape}: the stage ended {took:?} after the cancel\n{stderr}");
    let deadline = t1 + Duration::from_secs(2 + 5);
    loop {
        let ps = podman_ps(&h);
        let procs: Vec<_> = job_processes(&h)
            .into_iter()
            .filter(|(_, c)| c.contains("conmon") || !c.contains("catatonit -P"))
            .collect();
        if ps.is_empty() && procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{shape}: {:?} after the cancel, still: podman ps -a: {ps:?}; processes: {procs:?}\n{stderr}",
            t1.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    let code = h.build_exit_code().and_then(|c| c.parse().ok());
    assert_eq!(status.code(), Some(1), "{shape}: {stderr}");
    Cancelled {
        seen,
        stderr,
        code,
        took,
    }
}

fn cancel_runs_the_trap_in_the_image_and_leaves_nothing(shape: Shape) {
    if !ready() {
        return;
    }
    let body = "cat /etc/jacamar-test-image\ntrap 'echo trapped; exit 143' TERM\necho started\nsleep 100 &\nwait\n";
    let c = cancel_in_image(shape, body);
    assert!(
        c.seen.iter().any(|l| l.contains("trapped")),
        "{shape}: the trap did not run: {:?}\n{}",
        c.seen,
        c.stderr
    );
    assert_eq!(
        c.code,
        Some(shape.cancelled_status(143)),
        "{shape}: {}",
        c.stderr
    );
    // The trap ends at once: no wait for kill_timeout.
    assert!(c.took < Duration::from_secs(2), "{shape}: {:?}", c.took);
    assert!(!c.stderr.contains("kill_timeout"), "{shape}: {}", c.stderr);
}

fn a_job_ignoring_sigterm_in_the_image_is_removed_at_kill_timeout(shape: Shape) {
    if !ready() {
        return;
    }
    // A child that ignores TERM (its sleeps die of it; under errexit a loop of the body
    // itself would end there), as in signals::a_job_ignoring_sigterm_is_killed_at_kill_timeout.
    // It says `started` itself once its TERM is ignored: a `started` of the parent could come
    // before the child's trap is set, and the cancel then kills it (seen under load in
    // containers_ch's twin of this test).
    let body = "cat /etc/jacamar-test-image\ntrap 'echo ignoring' TERM\nbash -c 'trap \"\" TERM; echo started; while :; do sleep 0.2; done' &\nwait $!\nwait $!\n";
    let c = cancel_in_image(shape, body);
    assert!(
        c.seen.iter().any(|l| l.contains("ignoring")),
        "{shape}: the TERM never reached the job: {:?}\n{}",
        c.seen,
        c.stderr
    );
    assert!(
        c.took >= Duration::from_millis(1900) && c.took < Duration::from_secs(2 + 5),
        "{shape}: not ended at kill_timeout (2 s): {:?}",
        c.took
    );
    assert!(c.stderr.contains("kill_timeout"), "{shape}: {}", c.stderr);
}

crate::shape_tests!(
    root: image_job_runs_as_the_user_inside_the_image,
    cancel_runs_the_trap_in_the_image_and_leaves_nothing,
    a_job_ignoring_sigterm_in_the_image_is_removed_at_kill_timeout
);

/// Scans every /proc/*/cmdline while `h` runs `body`, for the token and its base64 form.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_job_token_is_on_no_command_line_during_pull_and_run() {
    use base64::Engine;
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t, "");
    let _cleanup = Cleanup(&h);
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{t}"));
    let mut child = h.spawn_run(
        "build_script",
        &crate::harness::runner_script("sleep 2\necho done\n"),
    );
    let mut scans = 0;
    let mut found = Vec::new();
    while child.try_wait().unwrap().is_none() {
        for pid in crate::harness::all_pids() {
            if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let c = String::from_utf8_lossy(&c);
                if c.contains(&t) || c.contains(&b64) {
                    found.push((pid, c.replace('\0', " ")));
                }
            }
        }
        scans += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{}",
        show(&out)
    );
    assert!(scans > 10, "only {scans} scans");
    assert!(found.is_empty(), "the token on a command line: {found:?}");
    let _ = h.cleanup();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_refused_token_names_the_registry_and_the_allowlist_never_the_token() {
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let wrong = token();
    let h = job(&server, &reg, &reg.image(), &wrong, &wrong, "");
    let _cleanup = Cleanup(&h);
    let out = h.run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let (stdout, stderr) = text(&out);
    let all = format!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!all.contains("USER-COMMAND-RAN"), "{all}");
    for part in [
        reg.host.as_str(),
        "ci/debian",
        "refused the job token",
        "allowlist",
        "group/project",
    ] {
        assert!(stderr.contains(part), "{part:?} not said: {stderr}");
    }
    assert!(!all.contains(&wrong), "the token in the log: {all}");
    eprintln!("{stderr}");
    let _ = h.cleanup();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_missing_image_is_named_without_allowlist_advice() {
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.missing(), &t, &t, "");
    let _cleanup = Cleanup(&h);
    let out = h.run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!stdout.contains("USER-COMMAND-RAN"), "{stdout}");
    assert!(
        stderr.contains(&reg.missing()) && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("allowlist"), "{stderr}");
    eprintln!("{stderr}");
    let _ = h.cleanup();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_missing_podman_is_a_system_failure_naming_the_key() {
    if !ready() {
        return;
    }
    let t = token();
    // No registry needed: the tool is looked for first.
    let server = JwksServer::start(&[&pki().keys[0]]);
    account();
    let general = "run_mechanism = \"podman\"\n[general.podman]\napplication_path = \"/nonexistent/podman\"\ndefault_image = \"127.0.0.1:1/x:y\"\n";
    let mut h = harness(&server, "setuid", general, "root_dir_creation = true", "");
    give_token(&mut h, &server, USER);
    h.set("CUSTOM_ENV_CI_JOB_TOKEN", &t);
    assert!(h.config().status.success());
    assert!(h.prepare().status.success());
    let out = h.run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(!stdout.contains("USER-COMMAND-RAN"), "{stdout}");
    assert!(
        stderr.contains("[general.podman] application_path"),
        "{stderr}"
    );
    eprintln!("{stderr}");
    let _ = h.cleanup();
}

/// An account without subordinate ids (as LDAP accounts come): a system failure naming it.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn an_account_without_subordinate_ids_is_a_system_failure_naming_it() {
    const NOSUB: &str = "jrs_c19_nosub";
    if !ready() {
        return;
    }
    ensure_user(NOSUB, &[], "/bin/bash");
    for (file, flag) in [
        ("/etc/subuid", "--del-subuids"),
        ("/etc/subgid", "--del-subgids"),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(&format!("{NOSUB}:"))) {
            let f: Vec<u64> = line
                .split(':')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let range = format!("{}-{}", f[0], f[0] + f[1] - 1);
            let out = Command::new("usermod")
                .args([flag, &range, NOSUB])
                .output()
                .unwrap();
            assert!(out.status.success(), "usermod {flag}: {}", show(&out));
        }
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let general = "run_mechanism = \"podman\"\n";
    let mut h = harness(&server, "setuid", general, "root_dir_creation = true", "");
    give_token(&mut h, &server, NOSUB);
    h.set("CUSTOM_ENV_CI_JOB_TOKEN", &t);
    h.response_extra = serde_json::json!({
        "token": t,
        "image": {"name": reg.image()},
        "credentials": [{"type": "registry", "url": reg.host, "username": "gitlab-ci-token", "password": t}],
    });
    assert!(h.config().status.success());
    assert!(h.prepare().status.success());
    let out = h.run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let (stdout, stderr) = text(&out);
    let _ = h.cleanup();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(!stdout.contains("USER-COMMAND-RAN"), "{stdout}");
    assert!(
        stderr.contains(&format!("account {NOSUB} has no subordinate uid/gid range")),
        "{stderr}"
    );
    assert!(!stderr.contains(&t), "{stderr}");
    eprintln!("{stderr}");
}

/// The runner's cancel while podman still pulls the image: the pull is stopped at once,
/// none of the user's commands run, and the cleanup leaves nothing.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_cancel_during_the_pull_stops_it_at_once() {
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t, "");
    let _cleanup = Cleanup(&h);
    let mut child = h.spawn_run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err = Vec::new();
    let t0 = Instant::now();
    while !err.iter().any(|l: &String| l.contains("with podman")) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never started: {err:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            err.push(l);
        }
    }
    // A first pull of the test image takes 3-7 s here: 0.5 s in, it is under way.
    std::thread::sleep(Duration::from_millis(500));
    let t1 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    let took = t1.elapsed();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        err.push(l);
    }
    let err = err.join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!stdout.contains("USER-COMMAND-RAN"), "{stdout}");
    assert!(err.contains("while podman pulled the image"), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "the cancel took {took:?}: {err}"
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(!state_dir(&h).exists());
    let left = job_processes(&h);
    assert!(left.is_empty(), "left after cleanup: {left:?}");
    eprintln!("the stage ended {took:?} after the cancel\n{err}");
}
