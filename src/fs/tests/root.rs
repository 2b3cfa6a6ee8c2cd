//! The unit tests of `fs` that need root: they hand files to another uid (chown), make a
//! file immutable (chattr +i) or run a part of themselves as another uid (setpriv).
//! Ignored unless the `root-tests` feature is on (scripts/test.sh turns it on and runs them
//! as root); without root they fail, naming what they need.

use super::*;
use crate::test_support::{require, require_root};

/// The test site, when the test runs as root (else `require_root` says why, and the test
/// returns).
fn root_site() -> Option<Site> {
    require_root().then(site)
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn existing_base_owned_by_another_uid_is_refused() {
    let Some(s) = root_site() else { return };
    let base = mkdir(s.data.join("alice"), 0o700);
    chown(&base, Some(FAKE_UID), None).unwrap();
    let p = s.paths();
    let err = ensure_job_dirs(&p, &policy()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "refusing {}: owned by uid {FAKE_UID}, expected uid {} (alice)",
            base.display(),
            me()
        )
    );
    assert_eq!(fs::metadata(&base).unwrap().uid(), FAKE_UID);
    // The other way round: our dirs are not the fake user's.
    fs::remove_dir(&base).unwrap();
    let other = DirPolicy {
        uid: FAKE_UID,
        group_permissions: false,
    };
    let (_, reason) = refused_reason(ensure_job_dirs(&p, &other).unwrap_err());
    assert_eq!(
        reason,
        format!("owned by uid {}, expected uid {FAKE_UID}", me())
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn user_specific_data_dir_needs_ancestors_of_root_or_the_user() {
    let Some(s) = root_site() else { return };
    let store = s.root.join("store");
    fs::create_dir(&store).unwrap();
    chown(&store, Some(FAKE_UID), None).unwrap();
    let p = s.paths_for(&format!("{}/$USER/ci", store.display()));
    // Another account's directory, private or world-writable and sticky: its owner may
    // rename any entry of it, so nothing of the user's is created there (issue 16).
    for mode in [0o755, 0o1777] {
        chmod(&store, mode);
        let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
        assert_eq!(path, store);
        assert!(reason.starts_with("owned by uid 12345"), "{reason}");
        assert!(!store.join("alice").exists());
    }
    // Root's (or the user's) sticky world-writable directory, like /tmp, is fine.
    chown(&store, Some(0), None).unwrap();
    ensure_job_dirs(&p, &policy()).unwrap();
    assert_eq!(lmode(&store.join("alice")), 0o700);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn deeper_dir_owned_by_another_uid_is_refused() {
    let Some(s) = root_site() else { return };
    let p = s.job_dirs();
    let nnn = p.cache_dir();
    chown(&nnn, Some(FAKE_UID), None).unwrap();
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!(path, nnn);
    assert!(reason.starts_with("owned by uid 12345"), "{reason}");
}

// ---------------------------------------------------------------- as a non-root user

const CHILD_ENV: &str = "JACAMAR_FS_TEST_CHILD_DIR";

/// Re-runs `unprivileged_child` as uid/gid 12345 through setpriv(1); needs root and setpriv.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn works_as_an_unprivileged_user() {
    if !require_root()
        || !require(
            Path::new("/usr/bin/setpriv").exists(),
            "this test needs /usr/bin/setpriv (util-linux)",
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    chmod(root, 0o755);
    // Admin side: data_dir with a pre-created base; a second data_dir without one.
    for d in ["ecp", "ecp2"] {
        fs::create_dir(root.join(d)).unwrap();
        chmod(&root.join(d), 0o755);
    }
    let base = mkdir(root.join("ecp/u12345"), 0o700);
    chown(&base, Some(FAKE_UID), Some(FAKE_UID)).unwrap();

    let out = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=12345", "--regid=12345", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "fs::tests::root::unprivileged_child",
            "--nocapture",
        ])
        .env(CHILD_ENV, root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("child ok"), "{text}");
    assert_eq!(fs::metadata(&base).unwrap().uid(), FAKE_UID);
}

/// The half of `works_as_an_unprivileged_user` that runs as uid 12345: a child process it
/// starts with `--ignored --exact` (ignored, so that it never counts as a passed test; run
/// on its own it fails).
#[test]
#[ignore = "the body of a child process of works_as_an_unprivileged_user, started by it"]
fn unprivileged_child() {
    let Some(root) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        panic!("not a test of its own: started by works_as_an_unprivileged_user");
    };
    assert_eq!(me(), FAKE_UID);
    let user = UserInfo {
        name: "u12345".into(),
        uid: FAKE_UID,
        gid: FAKE_UID,
        home: root.join("nohome"),
    };
    let pol = DirPolicy {
        uid: FAKE_UID,
        group_permissions: false,
    };
    let data = root.join("ecp");
    let p = JobPaths::new(data.to_str().unwrap(), &user, "r", 1, "g/p", 7).unwrap();
    check_base_dir(&p, &pol).unwrap();
    ensure_job_dirs(&p, &pol).unwrap();
    let script = write_script(&p, &pol, "build_script", b"true\n").unwrap();
    let md = fs::metadata(&script).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (FAKE_UID, 0o700));
    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().exists());

    // Expecting another uid (e.g. a mis-resolved user) is refused even as a normal user.
    let wrong = DirPolicy { uid: 4242, ..pol };
    let (_, reason) = refused_reason(ensure_job_dirs(&p, &wrong).unwrap_err());
    assert_eq!(reason, "owned by uid 12345, expected uid 4242");

    // Without an admin-created base, a root-owned 0755 data_dir cannot be written.
    let p2 = JobPaths::new(root.join("ecp2").to_str().unwrap(), &user, "r", 1, "g/p", 7).unwrap();
    match ensure_job_dirs(&p2, &pol).unwrap_err() {
        FsError::Io { op, path, source } => {
            assert_eq!((op, path.as_path()), ("create", p2.base_dir()));
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        other => panic!("unexpected: {other}"),
    }
    println!("child ok");
}

/// A file cleanup may not remove (here immutable: `chattr +i`; likewise another owner's file
/// in a sticky directory) is an error naming it, never an endless unlink/open recursion.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn cleanup_of_an_unremovable_file_is_an_error_not_a_recursion() {
    if !require_root()
        || !require(
            crate::shell::find_on_path("chattr", "/usr/bin:/bin").is_some(),
            "this test needs chattr (e2fsprogs)",
        )
    {
        return;
    }
    let s = site();
    let p = s.paths();
    write_script(&p, &policy(), "build_script", b"x").unwrap();
    let stuck = p.scripts_dir().join("stuck.log");
    fs::write(&stuck, b"l").unwrap();
    let chattr = |flag: &str| {
        let st = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&stuck)
            .status()
            .unwrap();
        assert!(st.success(), "chattr {flag} {}", stuck.display());
    };
    chattr("+i");
    // On its own thread with a small stack: the old recursion overflows it at once.
    let q = p.clone();
    let res = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || cleanup_job(&q, false).map_err(|e| e.to_string()))
        .unwrap()
        .join();
    chattr("-i");
    let err = res
        .expect("cleanup must not overflow its stack")
        .unwrap_err();
    assert!(err.contains("stuck.log"), "{err}");
    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().exists());
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn runner_tmp_dir_of_another_owner_is_refused() {
    let Some(s) = root_site() else { return };
    let builds = s.paths().builds_dir();
    let (paths, plan, job) = runner_tmp_job(&s, None);
    let tmp = builds.join("group/project.tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join("keep"), "k").unwrap();
    chown(&tmp, Some(FAKE_UID), None).unwrap();
    let (path, reason) =
        refused_reason(builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap_err());
    assert_eq!(path, tmp);
    assert!(
        reason.contains(&format!("owned by uid {FAKE_UID}")),
        "{reason}"
    );
    assert!(tmp.join("keep").exists());
}
