//! A job's `image:` with `run_mechanism = "charliecloud"` (issue 19, slice 2a: the shell
//! executor on the host), for real: a real account, setuid downscope, Charliecloud 0.31
//! (`ch-image pull`, `ch-convert` to a directory, `ch-run`), the per-test TLS+htpasswd
//! registry of `containers.rs` whose password is the job token. Needs root and the tools;
//! fails naming what is missing (no silent skip).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::auth_kit::{give_token, harness, pki, JwksServer};
use crate::containers::{account_named, job_of, processes_of, text, Cleanup};
use crate::harness::{require, require_root, require_tool, show, Harness, Shape};
use crate::registry_kit::{token, Registry, IMAGE_ARCHIVE, MARKER};

const USER: &str = "jrs_c19_ch";
const GENERAL: &str = "run_mechanism = \"charliecloud\"\n";

/// The tests of this module run one at a time: they share the account, and "no process of
/// the account is left" is how a test sees that nothing of its job remains.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a Charliecloud test needs, or false (a failure unless JACAMAR_TEST_ALLOW_SKIP=1).
pub(crate) fn ready() -> bool {
    if !require_root() {
        return false;
    }
    for tool in [
        "ch-run",
        "ch-image",
        "ch-convert",
        "docker-registry",
        "skopeo",
        "htpasswd",
    ] {
        if !require_tool(tool) {
            return false;
        }
    }
    require(
        Path::new(IMAGE_ARCHIVE).is_file(),
        &format!("{IMAGE_ARCHIVE} is missing: run scripts/containers/setup.sh"),
    )
}

fn job(server: &JwksServer, reg: &Registry, image: &str, token: &str, password: &str) -> Harness {
    job_of(USER, GENERAL, server, reg, image, token, password)
}

fn uid() -> u32 {
    account_named(USER).uid.as_raw()
}

fn state_dir(h: &Harness) -> PathBuf {
    PathBuf::from(format!("/tmp/jacamar-ch-{}/{}", uid(), h.job_id))
}

/// The account's processes but the harness's own: every process of a job of this account
/// (ch-run execs into the job: no process of it names ch-run once it runs).
fn job_processes() -> Vec<(i32, String)> {
    processes_of(uid())
}

fn image_job_runs_as_the_user_inside_the_image(shape: Shape) {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let t0 = Instant::now();
    let out = h.run(
        "build_script",
        &shape.script("cat /etc/jacamar-test-image\necho user=$(id -un)\necho home=$HOME\ntouch $HOME/x && echo home-writable\necho token-len=${#CI_JOB_TOKEN}\n"),
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
    assert!(stderr.contains("with Charliecloud"), "{shape}: {stderr}");
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
        "{shape}: first user stage (pull + convert + run) {first:?}, second {:?}",
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
    assert!(state_dir(&h).is_dir(), "{shape}: no state dir");
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(
        !state_dir(&h).exists(),
        "{shape}: {} left",
        state_dir(&h).display()
    );
    let left = job_processes();
    assert!(left.is_empty(), "{shape}: left after cleanup: {left:?}");
}

/// What a cancelled stage showed.
struct Cancelled {
    seen: Vec<String>,
    stderr: String,
    code: Option<i32>,
    took: Duration,
}

/// Run `body` as build_script in the image, send the runner's SIGTERM to the call's group
/// once it printed `started`, and check that within kill_timeout (2 s) plus 5 s no process
/// of the account is left.
fn cancel_in_image(shape: Shape, body: &str) -> Cancelled {
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    // kill_timeout is 2 s (auth_kit's harness).
    let h = job(&server, &reg, &reg.image(), &t, &t);
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
            t0.elapsed() < Duration::from_secs(120),
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
        let procs = job_processes();
        if procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{shape}: {:?} after the cancel, still: {procs:?}\n{stderr}",
            t1.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(!state_dir(&h).exists(), "{shape}: state left");
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
    let _serial = serial();
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
    assert!(c.took < Duration::from_secs(2), "{shape}: {:?}", c.took);
    assert!(!c.stderr.contains("kill_timeout"), "{shape}: {}", c.stderr);
}

fn a_job_ignoring_sigterm_in_the_image_is_killed_at_kill_timeout(shape: Shape) {
    let _serial = serial();
    if !ready() {
        return;
    }
    // The child says `started` once its TERM is ignored: the cancel never comes before that
    // (under load, a `started` of the parent raced the child's trap and the TERM killed it).
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
    a_job_ignoring_sigterm_in_the_image_is_killed_at_kill_timeout
);

/// Scans every /proc/*/cmdline while the stage pulls, converts and runs, for the token.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_job_token_is_on_no_command_line_during_pull_and_run() {
    use base64::Engine;
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{t}"));
    let mut child = h.spawn_run(
        "build_script",
        &crate::harness::runner_script("sleep 2\necho done\n"),
    );
    let mut scans = 0;
    let mut found = Vec::new();
    let mut saw_pull = false;
    while child.try_wait().unwrap().is_none() {
        for pid in crate::harness::all_pids() {
            if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let c = String::from_utf8_lossy(&c);
                saw_pull |= c.contains("ch-image") && c.contains("pull");
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
    assert!(saw_pull, "the scans never saw ch-image pull");
    assert!(found.is_empty(), "the token on a command line: {found:?}");
    let _ = h.cleanup();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_refused_token_names_the_registry_and_the_allowlist_never_the_token() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let wrong = token();
    let h = job(&server, &reg, &reg.image(), &wrong, &wrong);
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
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.missing(), &t, &t);
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
    assert!(!stderr.contains(&t), "{stderr}");
    eprintln!("{stderr}");
    let _ = h.cleanup();
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_missing_ch_run_is_a_system_failure_naming_the_key() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let server = JwksServer::start(&[&pki().keys[0]]);
    account_named(USER);
    // A directory with ch-image and ch-convert but no ch-run.
    let tools = tempfile::Builder::new()
        .prefix("jrs-c19-chtools")
        .tempdir_in("/var/tmp")
        .unwrap();
    for t in ["ch-image", "ch-convert"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{t}"), tools.path().join(t)).unwrap();
    }
    std::fs::set_permissions(
        tools.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let general = format!(
        "{GENERAL}[general.charliecloud]\napplication_path = \"{}\"\ndefault_image = \"127.0.0.1:1/x:y\"\n",
        tools.path().display()
    );
    let mut h = harness(&server, "setuid", &general, "root_dir_creation = true", "");
    give_token(&mut h, &server, USER);
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
        stderr.contains("ch-run") && stderr.contains("[general.charliecloud] application_path"),
        "{stderr}"
    );
    // The runner's own stages are not affected.
    let out = h.run(
        "get_sources",
        &crate::harness::runner_script("echo on-host\n"),
    );
    assert!(out.status.success(), "{}", show(&out));
    let _ = h.cleanup();
    eprintln!("{stderr}");
}

/// The runner's cancel while ch-image still pulls the image: the pull is stopped at once,
/// none of the user's commands run, and the cleanup leaves nothing.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_cancel_during_the_pull_stops_it_at_once() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t);
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
    while !err.iter().any(|l: &String| l.contains("with Charliecloud")) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never started: {err:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            err.push(l);
        }
    }
    // A pull of the test image takes 5 s here: 0.5 s in, it is under way.
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
    assert!(err.contains("while ch-image pulled the image"), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "the cancel took {took:?}: {err}"
    );
    let left = job_processes();
    assert!(left.is_empty(), "left after the cancel: {left:?}");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(!state_dir(&h).exists());
    eprintln!("the stage ended {took:?} after the cancel\n{err}");
}

/// TLS is always verified: with the registry's CA gone from /etc/containers/certs.d (and not
/// in the system store) the pull fails as a system failure naming where the CA goes.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn an_untrusted_registry_is_a_system_failure_naming_where_the_ca_goes() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let ca = PathBuf::from(format!("/etc/containers/certs.d/{}/ca.crt", reg.host));
    std::fs::remove_file(&ca).unwrap();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let out = h.run(
        "build_script",
        &crate::harness::runner_script("echo USER-COMMAND-RAN\n"),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(!stdout.contains("USER-COMMAND-RAN"), "{stdout}");
    assert!(
        stderr.contains("not trusted") && stderr.contains(&ca.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains(&t), "{stderr}");
    eprintln!("{stderr}");
    let _ = h.cleanup();
}
