//! Failures are never silent (issue 10): a cleanup that gives up says so on stderr, a
//! failure of `jacamar` reaches the job log under its own category, and a `jacamar` that
//! never reads its handoff leaves `jacamar-auth` able to hear SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch_slurm::ci_user;
use crate::harness::runner_script;
use crate::harness::{alive, config_text, require_root, show, wait_for, Harness};

const SCRIPT: &str = "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n: | eval $'echo hello\\n'\nexit 0\n";

/// Threads that keep `dir` populated with the same 64 empty directories until stopped:
/// each scans the names and re-creates (one `mkdir`) any that cleanup removed, while
/// removing one takes cleanup an open, a listing and an `rmdir`. Cleanup keeps finding new
/// entries, and the population never grows past 64.
fn flood(dir: &Path, threads: usize) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let (dir, stop) = (dir.to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..64 {
                        // EEXIST (still there) is the common case; ENOENT: the dir is gone.
                        let _ = std::fs::create_dir(dir.join(format!("flood-{i}")));
                    }
                }
            })
        })
        .collect();
    (stop, handles)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_cleanup_that_gives_up_says_so_on_stderr() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new("");
    h.config_json();
    let out = h.run("build_script", &runner_script(SCRIPT));
    assert!(out.status.success(), "run: {}", show(&out));
    let dir = h.scripts_job_dir();
    // Files keep arriving while cleanup empties the directory: after its rounds it gives
    // up. A round the flood misses lets the directory go; then try again.
    let mut seen = Vec::new();
    for _ in 0..10 {
        std::fs::create_dir_all(&dir).unwrap();
        let (stop, handles) = flood(&dir, 3);
        std::thread::sleep(Duration::from_millis(50));
        let out = h.cleanup();
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|t| t.join().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if stderr.contains("cleanup gave up removing") {
            assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
            assert!(out.status.success(), "cleanup: {}", show(&out));
            return;
        }
        seen.push(show(&out));
    }
    panic!(
        "cleanup never said it gave up on {} (or always won the race):\n{}",
        dir.display(),
        seen.join("\n")
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_batch_submit_failure_is_named_a_scheduler_failure_in_the_job_log() {
    if !require_root() {
        return;
    }
    // No sbatch where the configuration says the scheduler's commands are.
    let placeholder = "@@EMPTY@@";
    let mut h = Harness::batch(
        "slurm",
        &ci_user(),
        "",
        &format!("scheduler_bin = \"{placeholder}\""),
    );
    let empty = h.tmp.path().join("no-scheduler-here");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        cfg.replace(placeholder, &empty.display().to_string()),
    )
    .unwrap();
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let out = h.run("build_script", &runner_script(SCRIPT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr.contains("Error encountered during job: the batch scheduler did not take the job"),
        "{}",
        show(&out)
    );
    assert!(!stderr.contains("directories"), "{}", show(&out));
    // The full text (for the runner's log with -u) names what failed.
    h.unobfuscated = true;
    let out = h.run("build_script", &runner_script(SCRIPT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to submit to slurm"),
        "{}",
        show(&out)
    );
    let out = h.cleanup();
    assert!(out.status.success(), "cleanup: {}", show(&out));
}

/// A fake `jacamar` that records its pid and sleeps without ever reading its descriptors.
fn deaf_jacamar(dir: &Path) -> (PathBuf, PathBuf) {
    let pid_file = dir.join("deaf.pid");
    let exe = dir.join("deaf-jacamar");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/bash\necho $$ > {}\nexec sleep 600\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (exe, pid_file)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn sigterm_reaches_jacamar_auth_while_jacamar_never_reads_its_handoff() {
    if !require_root() {
        return;
    }
    let h = Harness::new("");
    let (exe, pid_file) = deaf_jacamar(h.tmp.path());
    // A configuration larger than a pipe's buffer (64 KiB): the handoff cannot be written
    // whole until jacamar reads it.
    let padding = format!("# {}\n", "x".repeat(100_000));
    let text = config_text(&h.data_dir, "kill_timeout = \"2s\"\n").replace(
        "[auth]\n",
        &format!("{padding}[auth]\njacamar_path = \"{}\"\n", exe.display()),
    );
    std::fs::write(&h.config_path, text).unwrap();
    let cfg = h.config_path.display().to_string();
    let mut auth = h
        .auth(&["prepare", "--configuration", &cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    assert!(started, "the fake jacamar never started");
    let fake: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The runner's cancel: SIGTERM to jacamar-auth's process group.
    let pgid = nix::unistd::Pid::from_raw(auth.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    // kill_timeout (2 s) plus a generous margin for a loaded machine.
    let limit = Duration::from_secs(30);
    let ended = wait_for(limit, || auth.try_wait().unwrap().is_some());
    if !ended {
        let _ = auth.kill();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(fake),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = auth.wait_with_output().unwrap();
    assert!(
        ended,
        "jacamar-auth did not end within {limit:?} of SIGTERM while jacamar never read its \
         handoff: {}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr.contains("job stopped (received SIGTERM): jacamar was killed by SIGKILL")
            && stderr.contains("before it had read the stage"),
        "{}",
        show(&out)
    );
    assert!(
        wait_for(Duration::from_secs(5), || !alive(fake)),
        "the fake jacamar {fake} survived"
    );
    eprintln!("jacamar-auth ended {:?} after SIGTERM", t0.elapsed());
}

/// The runner reports the integer in `BUILD_EXIT_CODE_FILE` as the job's exit code (17.9+):
/// when it cannot be written, the stage is the driver's failure (the runner's 2) and says
/// so, never a build failure that a stale or missing file would misreport.
#[test]
fn an_unwritable_build_exit_code_file_is_a_system_failure_that_says_so() {
    let mut h = Harness::new("");
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
    assert!(h.config().status.success());
    assert!(h.prepare().status.success());
    let missing = h.tmp.path().join("no-such-dir").join("build_exit_code");
    h.set("BUILD_EXIT_CODE_FILE", &missing.display().to_string());
    let out = h.run("build_script", &runner_script("exit 7\n"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit code 7") && err.contains("BUILD_EXIT_CODE_FILE"),
        "{}",
        show(&out)
    );
}
