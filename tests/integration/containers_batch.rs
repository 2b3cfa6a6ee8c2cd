//! A job's `image:` with a batch executor (issue 19, slice 2b): the submitted script starts
//! rootless podman on the compute node, inside the Slurm allocation. For real: the one-node
//! Slurm of this machine (the compute node is this machine), a root jacamar-auth with a
//! verified id_token and `setuid` downscope, the account `jrs_c19_sl` with its subordinate
//! ranges, a per-test registry whose password is the job token (containers.rs's). Needs
//! root, Slurm and the container tools; fails naming what is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::auth_kit::{give_token, pki, server_harness, server_lines, JwksServer};
use crate::batch_slurm::{require_slurm, slurm_jobs};
use crate::containers::{account_named, processes_of, Cleanup};
use crate::harness::{all_pids, lines_of, runner_script, show, wait_exit, wait_for, Harness};
use crate::registry_kit::{ready, token, Registry, MARKER};

const USER: &str = "jrs_c19_sl";

/// The tests of this file take turns: each checks that no podman or Charliecloud process
/// of its account is left, and two of them share an account, whose other test's cleanup
/// (`podman system reset` can take 10-37 s on a loaded disk) would be counted.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one still runs after it.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A setuid Slurm job of [`USER`] with `image` and a registry credential whose password is
/// `password` (the job token is `token`), config and prepare done; kill_timeout 2 s.
fn slurm_image_job(
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
) -> Harness {
    image_job("slurm", server, reg, image, token, password)
}

/// [`slurm_image_job`] with `executor`.
fn image_job(
    executor: &str,
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
) -> Harness {
    image_job_with(executor, server, reg, image, token, password, "")
}

/// [`image_job`] with `podman` lines in `[general.podman]`.
fn image_job_with(
    executor: &str,
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
    podman: &str,
) -> Harness {
    let mechanism = format!("run_mechanism = \"podman\"\n[general.podman]\n{podman}\n");
    batch_job(
        USER, executor, &mechanism, server, reg, image, token, password,
    )
}

/// A setuid job of `user` under `executor` with `mechanism` (the `run_mechanism` line and
/// its table), `image` and a registry credential whose password is `password` (the job
/// token is `token`), config and prepare done; kill_timeout 2 s.
#[allow(clippy::too_many_arguments)]
fn batch_job(
    user: &str,
    executor: &str,
    mechanism: &str,
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
) -> Harness {
    require_slurm();
    account_named(user);
    let mut h = server_harness(server, &user.replace('_', "-"), |_, data_dir| {
        format!(
            "[general]\nexecutor = \"{executor}\"\ndata_dir = \"{}\"\n{}kill_timeout = \"2s\"\n{mechanism}\
             [auth]\ndownscope = \"setuid\"\nroot_dir_creation = true\n\
             [batch]\ncommand_delay = \"1s\"\nnfs_timeout = \"20s\"\n",
            data_dir.display(),
            server_lines(server),
        )
    });
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

fn uid() -> u32 {
    account_named(USER).uid.as_raw()
}

/// The job's podman state on the node.
fn state_dir(h: &Harness) -> PathBuf {
    PathBuf::from(format!("/tmp/jacamar-podman-{}/{}", uid(), h.job_id))
}

/// The job's auth file in its scripts dir.
fn auth_file(h: &Harness) -> PathBuf {
    h.scripts_job_dir().join("podman-auth.json")
}

/// The account's podman-side processes: podman, conmon, the pause process (catatonit),
/// runc, and anything in the job's container.
fn podman_processes() -> Vec<(i32, String)> {
    processes_of(uid())
        .into_iter()
        .filter(|(_, c)| {
            ["podman", "conmon", "catatonit", "runc", "sleep"]
                .iter()
                .any(|w| c.contains(w))
        })
        .collect()
}

/// The Slurm job id the log names (`Submitted slurm job N`).
fn submitted_id(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        let rest = l.split("Submitted slurm job ").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    })
}

/// Every `/proc/*/cmdline` holding `needle`.
fn cmdlines_with(needle: &str) -> Vec<(i32, String)> {
    all_pids()
        .into_iter()
        .filter_map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(needle).then_some((p, c))
        })
        .collect()
}

/// How a [`watched_run`] went.
struct Watched {
    status: std::process::ExitStatus,
    /// The job log and the driver's stderr.
    text: String,
    seen: Vec<String>,
    /// Command lines that held a secret.
    found: Vec<(i32, String)>,
    scans: usize,
    /// Whether the script Slurm keeps was read (and held `in_script`, and no secret).
    script_checked: bool,
}

/// Run `build_script` with `body` in the runner's shape, scanning every `/proc/*/cmdline`
/// for `secrets` all along, and the script Slurm keeps of the job (`scontrol write
/// batch_script`) once: it must hold `in_script` and none of `secrets`.
fn watched_run(h: &Harness, body: &str, secrets: &[&str], in_script: &str) -> Watched {
    let mut child = h.spawn_run("build_script", &runner_script(body));
    let rx = lines_of(&mut child);
    let mut seen: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut script_checked = false;
    let mut scans = 0;
    let t0 = Instant::now();
    let status = loop {
        seen.extend(rx.try_iter().map(|(_, l)| l));
        for s in secrets {
            found.extend(cmdlines_with(s));
        }
        scans += 1;
        // What Slurm keeps of the job: the script, readable by its admins.
        if !script_checked {
            if let Some(id) = submitted_id(&seen) {
                let o = Command::new("scontrol")
                    .args(["write", "batch_script", &id, "-"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&o.stdout);
                if o.status.success() && !text.is_empty() {
                    assert!(text.contains(in_script), "{text}");
                    assert!(
                        !secrets.iter().any(|s| text.contains(s)),
                        "a secret in the batch script: {text}"
                    );
                    script_checked = true;
                }
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the stage did not end: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(30));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    seen.extend(rx.try_iter().map(|(_, l)| l));
    Watched {
        status,
        text: format!("{}\n{stderr}", seen.join("\n")),
        seen,
        found,
        scans,
        script_checked,
    }
}

/// The image inside a Slurm job: the marker, the user, SLURM_JOB_ID, exit 7 -> 7; the
/// token on no command line during the pull and the run, nor in the script Slurm keeps;
/// the auth file gone once the stage ended; nothing of podman left on the node.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn an_image_runs_inside_the_slurm_job_as_the_user_with_its_exit_code() {
    let _serial = serial();
    use base64::Engine;
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = slurm_image_job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{t}"));
    let t0 = Instant::now();
    let w = watched_run(
        &h,
        "cat /etc/jacamar-test-image\necho \"user=$(id -un) job=${SLURM_JOB_ID:-none}\"\nsleep 1\nexit 7\n",
        &[&t, &b64],
        "--authfile=",
    );
    let (st, text, seen, found, scans, script_checked) =
        (w.status, w.text, w.seen, w.found, w.scans, w.script_checked);
    assert_eq!(st.code(), Some(1), "{text}");
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{text}");
    let id = submitted_id(&seen).unwrap_or_else(|| panic!("no Slurm job: {text}"));
    assert!(text.contains(MARKER), "not in the image: {text}");
    assert!(
        text.contains(&format!("user={USER} job={id}")),
        "user or SLURM_JOB_ID inside: {text}"
    );
    assert!(script_checked, "the batch script was never read: {text}");
    assert!(scans > 10, "only {scans} scans");
    assert!(found.is_empty(), "the token on a command line: {found:?}");
    assert!(
        !auth_file(&h).exists(),
        "{} left after the stage",
        auth_file(&h).display()
    );
    assert!(!text.contains(&t), "the token in the log: {text}");
    // The batch script's end removed the job's podman: state and processes.
    assert!(
        wait_for(Duration::from_secs(10), || !state_dir(&h).exists()
            && podman_processes().is_empty()),
        "left on the node: {} {:?}",
        state_dir(&h).display(),
        podman_processes()
    );
    // after_script is not submitted: it runs in the image on the runner's host.
    let out = h.run(
        "after_script",
        &runner_script("cat /etc/jacamar-test-image\necho \"after job=${SLURM_JOB_ID:-none}\"\n"),
    );
    let after = show(&out);
    assert!(out.status.success(), "{after}");
    assert!(
        after.contains(MARKER) && after.contains("after job=none"),
        "{after}"
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    assert!(!state_dir(&h).exists(), "the host's podman state is left");
    eprintln!("{text}\nfirst stage in Slurm took {:?}", t0.elapsed());
}

/// The runner's cancel while the job runs in its image: the trap inside the container
/// runs, the Slurm job ends, no podman, conmon or pause process of the user is left.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_cancel_reaches_the_trap_inside_the_container_and_leaves_nothing() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = slurm_image_job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let name = format!("ci-{}", h.job_id);
    let mut child = h.spawn_run(
        "build_script",
        &runner_script(
            "cat /etc/jacamar-test-image\ntrap 'echo trapped in $(cat /etc/jacamar-test-image); exit 143' TERM\necho started\nsleep 100 &\nwait\necho not reached\n",
        ),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        crate::harness::wait_line(&rx, "started", Duration::from_secs(120), &mut seen),
        "never started: {seen:#?}"
    );
    assert_eq!(slurm_jobs(&name).len(), 1, "{seen:#?}");
    assert!(!podman_processes().is_empty(), "no podman running");
    let t1 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(90)).expect("the run did not end");
    let took = t1.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = format!("{}\n{stderr}", seen.join("\n"));
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("trapped in {MARKER}")),
        "the trap did not run in the image: {text}"
    );
    assert!(!text.contains("not reached"), "{text}");
    // Nothing of the job is left on the node: the containers and conmon go first, the
    // storage's deletion (podman system reset, outliving a Slurm KillWait on a loaded
    // disk: docs/containers.md) and then the pause process last.
    let gone = wait_for(Duration::from_secs(90), || {
        slurm_jobs(&name).is_empty() && podman_processes().is_empty() && !state_dir(&h).exists()
    });
    assert!(
        gone,
        "{:?} after the cancel: Slurm jobs {:?}, processes {:?}, state {}: {text}",
        t1.elapsed(),
        slurm_jobs(&name),
        podman_processes(),
        state_dir(&h).exists()
    );
    let clean = t1.elapsed();
    assert!(!auth_file(&h).exists(), "the auth file is left");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    eprintln!(
        "{text}\nthe run ended {took:?} after the cancel, the node was clean after {clean:?}"
    );
}

/// A registry refusing the job token, inside a Slurm job: the job log says what the host
/// path says (the registry, the repository, the allowlist), a build failure, no user
/// command ran, the token nowhere in the log, the auth file gone.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_refused_token_in_a_slurm_job_names_the_registry_and_the_allowlist() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let wrong = token();
    let h = slurm_image_job(&server, &reg, &reg.image(), &wrong, &wrong);
    let _cleanup = Cleanup(&h);
    let out = h.run("build_script", &runner_script("echo USER-COMMAND-RAN\n"));
    let all = show(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("USER-COMMAND-RAN"), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        reg.host.as_str(),
        "ci/debian",
        "refused the job token",
        "allowlist",
        "group/project",
    ] {
        assert!(stderr.contains(part), "{part:?} not said: {all}");
    }
    assert!(!all.contains(&wrong), "the token in the log: {all}");
    assert!(!auth_file(&h).exists(), "the auth file is left");
    assert!(
        wait_for(Duration::from_secs(10), || !state_dir(&h).exists()
            && podman_processes().is_empty()),
        "left: {:?}",
        podman_processes()
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    eprintln!("{all}");
}

/// The same launcher under the PBS executor (Debian's `qsub` over this Slurm): the image,
/// the user, the exit code.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn an_image_runs_inside_a_pbs_job_with_its_exit_code() {
    let _serial = serial();
    if !ready() {
        return;
    }
    crate::batch_pbs::require_torque();
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = image_job("pbs", &server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let out = h.run(
        "build_script",
        &runner_script("cat /etc/jacamar-test-image\necho \"user=$(id -un)\"\nexit 7\n"),
    );
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{text}");
    assert!(text.contains(MARKER), "not in the image: {text}");
    assert!(text.contains(&format!("user={USER}")), "{text}");
    assert!(!auth_file(&h).exists(), "the auth file is left");
    assert!(!state_dir(&h).exists(), "the node's podman state is left");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}

/// podman missing on the compute node: a system failure naming the key, before any of the
/// user's commands, and no credentials left.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_podman_missing_on_the_node_is_a_system_failure_naming_the_key() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = image_job_with(
        "slurm",
        &server,
        &reg,
        &reg.image(),
        &t,
        &t,
        "application_path = \"/nonexistent/podman\"",
    );
    let _cleanup = Cleanup(&h);
    let out = h.run("build_script", &runner_script("echo USER-COMMAND-RAN\n"));
    let all = show(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("USER-COMMAND-RAN"), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[general.podman] application_path")
            && all.contains("was not found on node"),
        "{all}"
    );
    assert!(!auth_file(&h).exists(), "the auth file is left");
    assert!(!all.contains(&t), "the token in the log: {all}");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}

// Charliecloud inside the allocation (issue 19, slice 3a): the submitted script pulls,
// converts and runs the image with ch-image, ch-convert and ch-run on the compute node, as
// the account `jrs_c19_slch`.

const CH_USER: &str = "jrs_c19_slch";

/// A setuid Slurm job of [`CH_USER`] with `run_mechanism = "charliecloud"`.
fn ch_slurm_job(
    server: &JwksServer,
    reg: &Registry,
    image: &str,
    token: &str,
    password: &str,
) -> Harness {
    batch_job(
        CH_USER,
        "slurm",
        "run_mechanism = \"charliecloud\"\n",
        server,
        reg,
        image,
        token,
        password,
    )
}

fn ch_uid() -> u32 {
    account_named(CH_USER).uid.as_raw()
}

/// The job's Charliecloud state on the node.
fn ch_state_dir(h: &Harness) -> PathBuf {
    PathBuf::from(format!("/tmp/jacamar-ch-{}/{}", ch_uid(), h.job_id))
}

/// The job's credential file in its scripts dir.
fn ch_auth_file(h: &Harness) -> PathBuf {
    h.scripts_job_dir().join("ch-auth")
}

/// Everything a Charliecloud batch test needs: the container tools and ch-run, ch-image,
/// ch-convert (a failure unless JACAMAR_TEST_ALLOW_SKIP=1).
fn ch_ready() -> bool {
    ready() && crate::containers_ch::ready()
}

/// The image inside a Slurm job with Charliecloud: the marker, the user, SLURM_JOB_ID,
/// exit 7 -> 7; the token on no command line during the pull and the run, nor in the
/// script Slurm keeps; the credential file gone; the node's state gone; no process left.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_charliecloud_image_runs_inside_the_slurm_job_as_the_user_with_its_exit_code() {
    let _serial = serial();
    if !ch_ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ch_slurm_job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let t0 = Instant::now();
    let w = watched_run(
        &h,
        "cat /etc/jacamar-test-image\necho \"user=$(id -un) job=${SLURM_JOB_ID:-none}\"\nsleep 1\nexit 7\n",
        &[&t],
        "ch-image",
    );
    let text = &w.text;
    assert_eq!(w.status.code(), Some(1), "{text}");
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{text}");
    let id = submitted_id(&w.seen).unwrap_or_else(|| panic!("no Slurm job: {text}"));
    assert!(text.contains(MARKER), "not in the image: {text}");
    assert!(
        text.contains(&format!("user={CH_USER} job={id}")),
        "user or SLURM_JOB_ID inside: {text}"
    );
    assert!(text.contains("with Charliecloud"), "{text}");
    assert!(w.script_checked, "the batch script was never read: {text}");
    assert!(w.scans > 10, "only {} scans", w.scans);
    assert!(
        w.found.is_empty(),
        "the token on a command line: {:?}",
        w.found
    );
    assert!(!ch_auth_file(&h).exists(), "the credential file is left");
    assert!(!text.contains(&t), "the token in the log: {text}");
    assert!(
        wait_for(Duration::from_secs(10), || !ch_state_dir(&h).exists()
            && processes_of(ch_uid()).is_empty()),
        "left on the node: {} {:?}",
        ch_state_dir(&h).display(),
        processes_of(ch_uid())
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    eprintln!("{text}\nfirst stage in Slurm took {:?}", t0.elapsed());
}

/// The runner's cancel while the job runs in its Charliecloud image: the trap inside runs,
/// the Slurm job ends, no process of the user and no state dir is left.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_charliecloud_cancel_runs_the_trap_and_leaves_nothing() {
    let _serial = serial();
    if !ch_ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ch_slurm_job(&server, &reg, &reg.image(), &t, &t);
    let _cleanup = Cleanup(&h);
    let name = format!("ci-{}", h.job_id);
    let mut child = h.spawn_run(
        "build_script",
        &runner_script(
            "cat /etc/jacamar-test-image\ntrap 'echo trapped in $(cat /etc/jacamar-test-image); exit 143' TERM\necho started\nsleep 100 &\nwait\necho not reached\n",
        ),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        crate::harness::wait_line(&rx, "started", Duration::from_secs(120), &mut seen),
        "never started: {seen:#?}"
    );
    assert_eq!(slurm_jobs(&name).len(), 1, "{seen:#?}");
    assert!(ch_state_dir(&h).is_dir(), "no state dir on the node");
    let t1 = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(90)).expect("the run did not end");
    let took = t1.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = format!("{}\n{stderr}", seen.join("\n"));
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("trapped in {MARKER}")),
        "the trap did not run in the image: {text}"
    );
    assert!(!text.contains("not reached"), "{text}");
    let gone = wait_for(Duration::from_secs(30), || {
        slurm_jobs(&name).is_empty()
            && processes_of(ch_uid()).is_empty()
            && !ch_state_dir(&h).exists()
    });
    assert!(
        gone,
        "{:?} after the cancel: Slurm jobs {:?}, processes {:?}, state {}: {text}",
        t1.elapsed(),
        slurm_jobs(&name),
        processes_of(ch_uid()),
        ch_state_dir(&h).exists()
    );
    assert!(!ch_auth_file(&h).exists(), "the credential file is left");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    eprintln!(
        "{text}\nthe run ended {took:?} after the cancel, the node was clean after {:?}",
        t1.elapsed()
    );
}

/// A registry refusing the job token, ch-image inside a Slurm job: the job log names the
/// registry, the repository and the allowlist, a build failure, no user command ran, the
/// token nowhere in the log, the credential file and the node's state gone.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_refused_token_in_a_charliecloud_slurm_job_names_the_registry_and_the_allowlist() {
    let _serial = serial();
    if !ch_ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let wrong = token();
    let h = ch_slurm_job(&server, &reg, &reg.image(), &wrong, &wrong);
    let _cleanup = Cleanup(&h);
    let out = h.run("build_script", &runner_script("echo USER-COMMAND-RAN\n"));
    let all = show(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("USER-COMMAND-RAN"), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        reg.host.as_str(),
        "ci/debian",
        "refused the job token",
        "allowlist",
        "group/project",
    ] {
        assert!(stderr.contains(part), "{part:?} not said: {all}");
    }
    assert!(!all.contains(&wrong), "the token in the log: {all}");
    assert!(!ch_auth_file(&h).exists(), "the credential file is left");
    assert!(
        wait_for(Duration::from_secs(10), || !ch_state_dir(&h).exists()
            && processes_of(ch_uid()).is_empty()),
        "left: {:?}",
        processes_of(ch_uid())
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
    eprintln!("{all}");
}

/// Charliecloud missing on the compute node: a system failure naming the key, before any of
/// the user's commands, and no credentials left.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_charliecloud_missing_on_the_node_is_a_system_failure_naming_the_key() {
    let _serial = serial();
    if !ch_ready() {
        return;
    }
    let t = token();
    let reg = Registry::start(&t);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = batch_job(
        CH_USER,
        "slurm",
        "run_mechanism = \"charliecloud\"\n[general.charliecloud]\napplication_path = \"/nonexistent/ch\"\n",
        &server,
        &reg,
        &reg.image(),
        &t,
        &t,
    );
    let _cleanup = Cleanup(&h);
    let out = h.run("build_script", &runner_script("echo USER-COMMAND-RAN\n"));
    let all = show(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("USER-COMMAND-RAN"), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[general.charliecloud] application_path")
            && all.contains("was not found on node"),
        "{all}"
    );
    assert!(!ch_auth_file(&h).exists(), "the credential file is left");
    assert!(!all.contains(&t), "the token in the log: {all}");
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}
