//! Build directories at scale: `limit_build_dir` claims through the real binaries and across
//! real processes, static and custom build dirs, a `group_permissions` change, and the same
//! on a second file system (a tmpfs mount; needs root and `mount`).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use jacamar::fs::claim::{ClaimDir, ClaimSettings, LockState};
use jacamar::fs::{DirPolicy, UserInfo};

use crate::harness::{require_root, require_tool, show, wait_for, whoami, Harness};

const LIMIT: &str = "limit_build_dir = true\nfile_lock_debug = true";

/// Another job of the same user and project, sharing `first`'s data_dir and configuration.
pub fn second_job(first: &Harness) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::with_config(tmp, first.data_dir.clone(), first.config_path.clone());
    h.env = first.env.clone();
    h.job_id += first.job_id + 1_000_000;
    h.set("CUSTOM_ENV_CI_JOB_ID", &h.job_id.to_string());
    for k in ["TMPDIR", "BUILD_EXIT_CODE_FILE", "JOB_RESPONSE_FILE"] {
        let v = first.env[k].replace(
            first.runner_dir.to_str().unwrap(),
            h.runner_dir.to_str().unwrap(),
        );
        h.set(k, &v);
    }
    h.env.remove("JACAMAR_CI_CONFIG_STR");
    h.env.remove("JACAMAR_CI_CONFIG_PATH");
    h
}

fn limit_job(extra: &str) -> Harness {
    let mut h = Harness::new(&format!("{LIMIT}\n{extra}"));
    h.set("CUSTOM_ENV_CI_PROJECT_ID", "42");
    h
}

fn lock_state(project_dir: &Path, slot: u32) -> LockState {
    LockState::parse(&std::fs::read(project_dir.join(format!(".{slot:03}.lock"))).unwrap())
}

fn builds_dir(cfg: &serde_json::Value) -> PathBuf {
    PathBuf::from(cfg["builds_dir"].as_str().unwrap())
}

#[test]
fn limit_claims_hold_across_stages_and_cleanup_releases_them() {
    let mut a = limit_job("");
    let project = a.base_dir().join("builds/project_42");
    let cfg = a.config_json();
    assert_eq!(builds_dir(&cfg), project.join("000"), "{cfg}");
    assert_eq!(cfg["builds_dir_is_shared"], false);
    match lock_state(&project, 0) {
        LockState::Held {
            job_id, hostname, ..
        } => {
            assert_eq!(job_id, a.job_id);
            assert!(!hostname.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // prepare, run: separate processes of the same job find the claim by job id.
    let out = a.prepare();
    assert!(out.status.success(), "{}", show(&out));
    assert!(project.join("000").is_dir());
    let script = format!("echo job-a > {}/owner\n", project.join("000").display());
    let out = a.run("build_script", &script);
    assert!(out.status.success(), "{}", show(&out));

    // Another job meanwhile gets the next directory, never A's.
    let mut b = second_job(&a);
    let cfg_b = b.config_json();
    assert_eq!(builds_dir(&cfg_b), project.join("001"), "{cfg_b}");
    assert!(b.prepare().status.success());
    assert!(
        matches!(lock_state(&project, 0), LockState::Held { job_id, .. } if job_id == a.job_id)
    );

    // A's cleanup releases 000 (the directory stays for the next job); B keeps 001.
    let out = a.cleanup();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(lock_state(&project, 0), LockState::Free);
    assert!(project.join("000/owner").is_file());
    assert!(
        matches!(lock_state(&project, 1), LockState::Held { job_id, .. } if job_id == b.job_id)
    );
    // Cleanup is idempotent.
    assert!(a.cleanup().status.success());

    // A third job reuses 000.
    let mut c = second_job(&b);
    assert_eq!(builds_dir(&c.config_json()), project.join("000"));

    // file_lock_debug: B's log names the busy slot and the one it took.
    let log =
        std::fs::read_to_string(project.join(format!("lock_debug/{}.json", b.job_id))).unwrap();
    assert!(log.contains("has not expired"), "{log}");
    assert!(log.contains("identified concurrent target: 001"), "{log}");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "info");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn prepare_without_a_claim_is_a_clear_error() {
    let mut a = limit_job("");
    a.config_json();
    // Somebody (a cleanup of a retried config) released the claim before prepare.
    assert!(a.cleanup().status.success());
    a.unobfuscated = true;
    let out = a.prepare();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is claimed by job"), "{err}");
}

#[test]
fn at_the_cap_config_waits_visibly_and_never_shares() {
    let mut a = limit_job("max_build_dir = 1");
    let project = a.base_dir().join("builds/project_42");
    assert_eq!(builds_dir(&a.config_json()), project.join("000"));

    let b = second_job(&a);
    let cfg = b.config_path.display().to_string();
    let child = b
        .auth(&["config", "--configuration", &cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b_log = project.join(format!("lock_debug/{}.json", b.job_id));
    assert!(
        wait_for(Duration::from_secs(60), || std::fs::read_to_string(&b_log)
            .is_ok_and(|t| t.contains("Waiting for a free build directory"))),
        "B never started waiting"
    );
    // B still waits: 000 is A's, and there is no 001.
    assert!(!project.join(".001.lock").exists());
    assert!(a.cleanup().status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout must stay pure JSON ({e}): {}", show(&out)));
    assert_eq!(builds_dir(&v), project.join("000"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Waiting for a free build directory: all 1 directories"),
        "{err}"
    );
}

#[test]
fn user_enabled_limit_applies_only_to_projects_that_opt_in() {
    let mut a = limit_job("user_enabled_limit = true");
    let standard = a.base_dir().join("builds/tstrunnr/000");
    assert_eq!(builds_dir(&a.config_json()), standard);
    let mut b = second_job(&a);
    b.set("CUSTOM_ENV_JACAMAR_LIMIT_BUILD_DIR", "true");
    assert_eq!(
        builds_dir(&b.config_json()),
        a.base_dir().join("builds/project_42/000")
    );
}

#[test]
fn cleanup_removes_one_stale_dir_above_the_cap_unless_uncapped() {
    for (uncap, left) in [(false, 2), (true, 1)] {
        let extra = if uncap {
            "max_build_dir = 1\nuncap_build_dir_cleanup = true"
        } else {
            "max_build_dir = 1"
        };
        let mut a = limit_job(extra);
        let project = a.base_dir().join("builds/project_42");
        // Left from a time without the cap: 001 and 002, unclaimed.
        for d in [a.base_dir(), a.base_dir().join("builds"), project.clone()] {
            private_dir(&d);
        }
        for n in ["001", "002"] {
            std::fs::create_dir_all(project.join(n).join("group/project")).unwrap();
            std::fs::write(project.join(format!(".{n}.lock")), "").unwrap();
        }
        a.config_json();
        assert!(a.prepare().status.success());
        let out = a.cleanup();
        assert!(out.status.success(), "{}", show(&out));
        let slots: Vec<_> = ["000", "001", "002"]
            .iter()
            .filter(|n| project.join(n).exists())
            .collect();
        assert_eq!(slots.len(), left, "uncap={uncap}: {slots:?}");
        assert!(project.join("000").is_dir());
    }
}

#[test]
fn static_dirs_are_per_job_kept_and_removed_only_when_old() {
    let mut a = Harness::new("static_builds_dir = true\nstatic_min_days = 3");
    a.set("CUSTOM_ENV_CI_PROJECT_ID", "7");
    let static_root = a.base_dir().join("builds/static/project_7");
    let cfg = a.config_json();
    let mine = static_root.join(a.job_id.to_string());
    assert_eq!(builds_dir(&cfg), mine);
    assert!(a.prepare().status.success());
    assert!(mine.is_dir());

    // Two old static dirs and a young one of other jobs.
    let old = SystemTime::now() - Duration::from_secs(5 * 86_400);
    for (job, when) in [("11", Some(old)), ("12", Some(old)), ("13", None)] {
        let d = static_root.join(job);
        std::fs::create_dir_all(d.join("group/project")).unwrap();
        if let Some(t) = when {
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
        }
    }
    assert!(a.cleanup().status.success());
    assert!(mine.is_dir(), "the job's own static dir stays");
    assert!(
        static_root.join("13").is_dir(),
        "younger than static_min_days"
    );
    let old_left = ["11", "12"]
        .iter()
        .filter(|j| static_root.join(j).exists())
        .count();
    assert_eq!(old_left, 1, "one stale dir per cleanup");
    let b = second_job(&a);
    assert!(b.cleanup().status.success());
    assert!(!static_root.join("11").exists() && !static_root.join("12").exists());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn custom_build_dir_uses_the_users_directory_and_refuses_others() {
    let mut a = Harness::new("custom_build_dir = true");
    a.unobfuscated = true;
    let mine = a.tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    a.set("CUSTOM_ENV_CUSTOM_CI_BUILDS_DIR", mine.to_str().unwrap());
    let cfg = a.config_json();
    assert_eq!(builds_dir(&cfg), mine.join("tstrunnr/000"));
    let out = a.prepare();
    assert!(out.status.success(), "{}", show(&out));
    let md = std::fs::metadata(mine.join("tstrunnr/000")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);

    // Refused: a symlink in the path, a group-writable dir, a relative path, a variable.
    let link = a.tmp.path().join("link");
    std::os::unix::fs::symlink(&mine, &link).unwrap();
    let loose = a.tmp.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o770)).unwrap();
    for (value, why) in [
        (link.display().to_string(), "symbolic link"),
        (loose.display().to_string(), "writable by group or others"),
        ("relative/dir".to_string(), "not an absolute path"),
        ("$HOME/ci".to_string(), "contains '$'"),
        (
            a.tmp.path().join("nope").display().to_string(),
            "does not exist",
        ),
    ] {
        let mut b = second_job(&a);
        b.unobfuscated = true;
        b.set("CUSTOM_ENV_CUSTOM_CI_BUILDS_DIR", &value);
        let out = b.config();
        assert_eq!(out.status.code(), Some(2), "{value}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{value}: {err}");
        assert!(out.stdout.is_empty(), "{value}: no JSON on failure");
    }

    // Not the user's: needs root to hand a directory to another uid.
    if require_root() {
        let theirs = a.tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(12345), Some(12345)).unwrap();
        let mut b = second_job(&a);
        b.unobfuscated = true;
        b.set("CUSTOM_ENV_CUSTOM_CI_BUILDS_DIR", theirs.to_str().unwrap());
        let out = b.config();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("must be owned by the job's user"));
    }

    // With custom_build_dir off the variable is ignored.
    let mut c = second_job(&a);
    c.rewrite_config("");
    assert_eq!(
        builds_dir(&c.config_json()),
        a.base_dir().join("builds/tstrunnr/000")
    );
}

#[test]
fn limit_and_custom_combine() {
    let mut a = limit_job("custom_build_dir = true");
    let mine = a.tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    a.set("CUSTOM_ENV_CUSTOM_CI_BUILDS_DIR", mine.to_str().unwrap());
    assert_eq!(builds_dir(&a.config_json()), mine.join("project_42/000"));
    assert!(a.prepare().status.success());
    assert!(a.cleanup().status.success());
    assert_eq!(lock_state(&mine.join("project_42"), 0), LockState::Free);
}

#[test]
fn a_group_permissions_change_recreates_the_base_dir() {
    let mut a = Harness::new("");
    a.config_json();
    assert!(a.prepare().status.success());
    let base = a.base_dir();
    let marker = base.join("builds/tstrunnr/000/old-file");
    std::fs::write(&marker, "x").unwrap();
    assert_eq!(std::fs::metadata(&base).unwrap().mode() & 0o7777, 0o700);

    a.rewrite_config("group_permissions = true");
    let mut b = second_job(&a);
    b.config_json();
    let out = b.prepare();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group_permissions changed"),
        "{}",
        show(&out)
    );
    assert!(!marker.exists(), "the old contents are gone");
    for d in [base.clone(), base.join("builds"), base.join("scripts")] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o7777,
            0o750,
            "{d:?}"
        );
    }
    // Any other wrong mode is still refused, never "fixed".
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = b.prepare();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// Real processes racing for real fcntl locks.

const CHILD_DIR: &str = "JACAMAR_TEST_CLAIM_DIR";
const CHILD_ID: &str = "JACAMAR_TEST_CLAIM_ID";
const CHILD_MAX: &str = "JACAMAR_TEST_CLAIM_MAX";
const CHILD_N: &str = "JACAMAR_TEST_CLAIM_N";

fn me() -> (DirPolicy, UserInfo) {
    let uid = nix::unistd::getuid().as_raw();
    (
        DirPolicy {
            uid,
            group_permissions: false,
        },
        UserInfo {
            name: whoami(),
            uid,
            gid: nix::unistd::getgid().as_raw(),
            home: "/".into(),
        },
    )
}

/// Not a test of its own: the body of one claimant process, which [`race`] starts by
/// re-running this test binary with `--ignored --exact` (ignored, so that it never counts
/// as a passed test; run without [`race`]'s variables it fails).
#[test]
#[ignore = "the body of a child process of race(), started by it"]
fn claimant_child() {
    let (Ok(dir), Ok(id)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ID)) else {
        panic!("not a test of its own: the body of a claimant process started by race()");
    };
    let id: u64 = id.parse().unwrap();
    let max: u32 = std::env::var(CHILD_MAX).unwrap().parse().unwrap();
    let (policy, user) = me();
    let claims = ClaimDir::open(Path::new(&dir), &policy, &user).unwrap();
    let mut s = ClaimSettings::new(id, max, Some(Duration::from_secs(600)));
    s.retry_interval = Duration::from_millis(5);
    s.wait_limit = Duration::from_secs(600);
    let claim = claims.claim(&s, &mut |_| {}).unwrap();
    let log = Path::new(&dir).join("race.log");
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    };
    append(format!("C {} {id}\n", claim.slot));
    // The property: while we hold the directory, nobody else writes into it. We hold it
    // until other claimants demonstrably went on meanwhile (see `others_went_on`).
    let owner = claim.dir.join("owner");
    std::fs::write(&owner, id.to_string()).unwrap();
    let mine = format!("C {} {id}", claim.slot);
    assert!(
        wait_for(Duration::from_secs(600), || others_went_on(
            &log, &mine, max
        )),
        "nothing happened while {mine} held its slot"
    );
    let seen = std::fs::read_to_string(&owner).unwrap();
    assert_eq!(seen, id.to_string(), "slot {} was shared", claim.slot);
    append(format!("R {} {id}\n", claim.slot));
    assert_eq!(
        claims.release(id, false).unwrap().map(|r| r.slot),
        Some(claim.slot)
    );
}

/// Whether, in the race log `log`, another claim followed our `mine` line, or every slot
/// (`max`) is taken, or every claimant has had its turn: a holder waits for one of these
/// states before it checks that its directory stayed its own (no wait ends in a deadlock:
/// while slots are free and claimants wait, one of them claims).
fn others_went_on(log: &Path, mine: &str, max: u32) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let n: usize = std::env::var(CHILD_N).unwrap().parse().unwrap();
    let claims = text.lines().filter(|l| l.starts_with("C ")).count();
    let releases = text.lines().filter(|l| l.starts_with("R ")).count();
    let after_mine = text
        .lines()
        .skip_while(|l| *l != mine)
        .skip(1)
        .any(|l| l.starts_with("C "));
    after_mine || claims.saturating_sub(releases) >= max as usize || claims == n
}

/// Start `n` claimant processes on `dir` (at most `max` slots) and check the log: each slot
/// held by one process at a time, every process served, never more than `max` slots.
fn race(dir: &Path, n: u64, max: u32) {
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for id in 1..=n {
        let child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "builddirs::claimant_child",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_ID, id.to_string())
            .env(CHILD_MAX, max.to_string())
            .env(CHILD_N, n.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((id, child));
    }
    for (id, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "claimant {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(dir.join("race.log")).unwrap();
    let mut holder: std::collections::BTreeMap<u32, u64> = Default::default();
    let mut served = std::collections::BTreeSet::new();
    for line in log.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        let (slot, id): (u32, u64) = (w[1].parse().unwrap(), w[2].parse().unwrap());
        match w[0] {
            "C" => {
                assert!(slot < max, "slot {slot} above the cap {max}");
                if let Some(other) = holder.insert(slot, id) {
                    panic!("slot {slot} claimed by {id} while {other} held it");
                }
                assert!(served.insert(id), "{id} claimed twice");
            }
            _ => assert_eq!(holder.remove(&slot), Some(id), "release of {slot} by {id}"),
        }
    }
    assert_eq!(served.len() as u64, n);
    assert!(holder.is_empty());
}

fn private_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn two_hundred_processes_never_hold_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project_1");
    private_dir(&dir);
    race(&dir, 200, 8);
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    /// Mount a tmpfs at `at`; a failure fails the test.
    fn tmpfs(at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (needs CAP_SYS_ADMIN): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn claims_work_on_a_second_filesystem() {
    if !require_root() || !require_tool("mount") {
        return;
    }
    let mut a = limit_job("max_build_dir = 4");
    let _mount = Mount::tmpfs(&a.data_dir);
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(dev(&a.data_dir), dev(a.tmp.path()), "not a separate mount");

    // Through the binaries.
    let project = a.base_dir().join("builds/project_42");
    assert_eq!(builds_dir(&a.config_json()), project.join("000"));
    assert!(a.prepare().status.success());
    let mut b = second_job(&a);
    assert_eq!(builds_dir(&b.config_json()), project.join("001"));
    assert!(a.cleanup().status.success());
    assert_eq!(lock_state(&project, 0), LockState::Free);
    assert!(b.cleanup().status.success());

    // And processes racing on it.
    let dir = a.data_dir.join("race/project_1");
    private_dir(&dir);
    race(&dir, 40, 4);
}
