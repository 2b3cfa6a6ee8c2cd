use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::stat::{umask, Mode};

use super::*;

/// umask is per process: tests that change it take this lock.
static UMASK_LOCK: Mutex<()> = Mutex::new(());

const FAKE_UID: u32 = 12345;

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn alice(home: &Path) -> UserInfo {
    UserInfo {
        name: "alice".into(),
        uid: me(),
        gid: nix::unistd::getegid().as_raw(),
        home: home.to_path_buf(),
    }
}

fn policy() -> DirPolicy {
    DirPolicy {
        uid: me(),
        group_permissions: false,
    }
}

fn lmode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A temp dir with an admin data_dir `<tmp>/ecp` (0755) and a home `<tmp>/home/alice`.
struct Site {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    home: PathBuf,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = mkdir(root.join("ecp"), 0o755);
    let home = root.join("home/alice");
    fs::create_dir_all(&home).unwrap();
    chmod(&home, 0o755);
    Site {
        _tmp: tmp,
        root,
        data,
        home,
    }
}

impl Site {
    /// The job's paths, its directories made.
    fn job_dirs(&self) -> JobPaths {
        let p = self.paths();
        ensure_job_dirs(&p, &policy()).unwrap();
        p
    }

    fn paths(&self) -> JobPaths {
        self.paths_for(self.data.to_str().unwrap())
    }

    fn paths_for(&self, data_dir: &str) -> JobPaths {
        JobPaths::new(
            data_dir,
            &alice(&self.home),
            "abc123",
            0,
            "group/project",
            42,
        )
        .unwrap()
    }
}

/// `path` made with `mode` (its parent exists).
fn mkdir(path: PathBuf, mode: u32) -> PathBuf {
    fs::create_dir(&path).unwrap();
    chmod(&path, mode);
    path
}

fn refused_reason(err: FsError) -> (PathBuf, String) {
    match err {
        FsError::Refused { path, reason } => (path, reason),
        other => panic!("expected a refusal, got: {other}"),
    }
}

// ---------------------------------------------------------------- layout

fn layout(data_dir: &str) -> Result<JobPaths, FsError> {
    JobPaths::new(
        data_dir,
        &alice(Path::new("/home/alice")),
        "abc123",
        0,
        "group/project",
        42,
    )
}

#[test]
fn layout_plain_data_dir() {
    let p = layout("/ecp").unwrap();
    assert_eq!(p.data_dir(), Path::new("/ecp"));
    assert_eq!(p.base_dir(), Path::new("/ecp/alice"));
    assert_eq!(p.builds_dir(), Path::new("/ecp/alice/builds/abc123/000"));
    assert_eq!(p.cache_dir(), Path::new("/ecp/alice/cache/abc123/000"));
    assert_eq!(
        p.project_dir(),
        Path::new("/ecp/alice/builds/abc123/000/group/project")
    );
    assert_eq!(
        p.scripts_dir(),
        Path::new("/ecp/alice/scripts/abc123/000/group/project/42")
    );
    assert_eq!(
        p.script_path("build_script").unwrap(),
        Path::new("/ecp/alice/scripts/abc123/000/group/project/42/build_script.bash")
    );
    assert!(!p.is_user_specific());
    assert_eq!(
        layout("/ecp//").unwrap().base_dir(),
        Path::new("/ecp/alice")
    );
}

#[test]
fn layout_home() {
    for raw in ["$HOME", "${HOME}", "$HOME/"] {
        let p = layout(raw).unwrap();
        assert_eq!(p.data_dir(), Path::new("/home/alice"), "{raw}");
        assert_eq!(p.base_dir(), Path::new("/home/alice/.jacamar-ci"), "{raw}");
        assert_eq!(
            p.builds_dir(),
            Path::new("/home/alice/.jacamar-ci/builds/abc123/000")
        );
        assert!(p.is_user_specific());
    }
}

#[test]
fn layout_user_specific() {
    let p = layout("/store/$USER/ci").unwrap();
    assert_eq!(p.base_dir(), Path::new("/store/alice/ci"));
    assert_eq!(p.cache_dir(), Path::new("/store/alice/ci/cache/abc123/000"));
    assert!(p.is_user_specific());
    assert_eq!(
        layout("/store/${USER}").unwrap().base_dir(),
        Path::new("/store/alice")
    );
    assert_eq!(
        layout("${HOME}/ci").unwrap().base_dir(),
        Path::new("/home/alice/ci")
    );
    assert_eq!(
        layout("/x/ci-$USER-y").unwrap().base_dir(),
        Path::new("/x/ci-alice-y")
    );
}

#[test]
fn layout_concurrent_id_three_digits() {
    let mk = |id| {
        JobPaths::new("/ecp", &alice(Path::new("/h")), "r", id, "g/p", 1)
            .unwrap()
            .builds_dir()
    };
    assert_eq!(mk(7), Path::new("/ecp/alice/builds/r/007"));
    assert_eq!(mk(1234), Path::new("/ecp/alice/builds/r/1234"));
}

#[test]
fn bad_data_dirs_are_rejected() {
    for raw in [
        "", "ecp", "$HOMEDIR", "$PATH/x", "/a/$", "/a/../b", "/a/./b", "/$US",
    ] {
        let err = layout(raw).unwrap_err();
        assert!(
            matches!(err, FsError::InvalidDataDir { .. }),
            "{raw}: {err}"
        );
    }
    // The home comes from passwd but is still checked.
    let mut u = alice(Path::new("relative/home"));
    assert!(JobPaths::new("$HOME", &u, "r", 0, "g/p", 1).is_err());
    u.home = PathBuf::from("/home/../etc");
    assert!(JobPaths::new("$HOME", &u, "r", 0, "g/p", 1).is_err());
}

#[test]
fn segments_are_validated() {
    let home = Path::new("/home/alice");
    let bad_tokens = ["", ".", "..", "a/b", "a b", "a\0b", "é", "$x", "a\nb"];
    for t in bad_tokens {
        let err = JobPaths::new("/ecp", &alice(home), t, 0, "g/p", 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("refusing runner short token"), "{msg}");
        assert!(msg.contains(&format!("{t:?}")), "{msg}");
    }
    let bad_projects = ["", "/g/p", "g//p", "g/../p", "g/p/", "..", "g/p q", "g/./p"];
    for p in bad_projects {
        let err = JobPaths::new("/ecp", &alice(home), "r", 0, p, 1).unwrap_err();
        assert!(
            err.to_string().starts_with("refusing project path"),
            "{err}"
        );
    }
    let mut u = alice(home);
    for name in ["", "..", "al/ice", "al ice"] {
        u.name = name.into();
        let err = JobPaths::new("/ecp", &u, "r", 0, "g/p", 1).unwrap_err();
        assert!(err.to_string().starts_with("refusing user name"), "{err}");
    }
    let p = layout("/ecp").unwrap();
    for s in ["", "..", "../x", "a/b", "x y"] {
        let err = p.script_path(s).unwrap_err();
        assert!(err.to_string().starts_with("refusing stage name"), "{err}");
    }
    // Deep namespaces and ordinary names are fine.
    let ok = JobPaths::new("/ecp", &alice(home), "Ab-9_x.y", 0, "a/b.c/d-e/f_g", 1).unwrap();
    assert_eq!(ok.project_segments().len(), 4);
    assert!(ok.script_path("upload_artifacts_on_success").is_ok());
}

// ---------------------------------------------------------------- creation

fn assert_tree_modes(p: &JobPaths, mode: u32) {
    assert_chain_modes(p, &[p.builds_dir(), p.cache_dir(), p.scripts_dir()], mode);
}

/// The base dir and every dir from it down to each of `tops` have `mode` and are ours.
fn assert_chain_modes(p: &JobPaths, tops: &[PathBuf], mode: u32) {
    let base = p.base_dir();
    let mut dirs = vec![base.to_path_buf()];
    for top in tops {
        let mut cur = top.as_path();
        while cur != base {
            dirs.push(cur.to_path_buf());
            cur = cur.parent().unwrap();
        }
    }
    for d in dirs {
        let md = fs::symlink_metadata(&d).unwrap();
        assert!(md.is_dir(), "{}", d.display());
        assert_eq!(md.mode() & 0o7777, mode, "{}", d.display());
        assert_eq!(md.uid(), me(), "{}", d.display());
    }
}

#[test]
fn ensure_creates_private_dirs_under_umask_0() {
    let _g = UMASK_LOCK.lock().unwrap();
    let s = site();
    let p = s.paths();
    let old = umask(Mode::empty());
    let res = ensure_job_dirs(&p, &policy());
    umask(old);
    res.unwrap();
    assert_tree_modes(&p, 0o700);
    assert!(
        !p.project_dir().exists(),
        "the runner creates the project dir"
    );
    // Idempotent.
    ensure_job_dirs(&p, &policy()).unwrap();
    check_base_dir(&p, &policy()).unwrap();
}

#[test]
fn group_permissions_give_0750_whatever_the_umask() {
    let _g = UMASK_LOCK.lock().unwrap();
    let s = site();
    let p = s.paths();
    let pol = DirPolicy {
        group_permissions: true,
        ..policy()
    };
    let old = umask(Mode::from_bits_truncate(0o077));
    let res = ensure_job_dirs(&p, &pol);
    umask(old);
    res.unwrap();
    assert_tree_modes(&p, 0o750);
    // A 0750 tree is refused under the default policy, and vice versa.
    let (_, reason) = refused_reason(check_base_dir(&p, &policy()).unwrap_err());
    assert_eq!(reason, "mode 0750, expected 0700");
}

#[test]
fn existing_base_symlink_is_refused() {
    let s = site();
    let target = mkdir(s.root.join("elsewhere"), 0o700);
    symlink(&target, s.data.join("alice")).unwrap();
    let p = s.paths();
    let err = ensure_job_dirs(&p, &policy()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("refusing {}: is a symbolic link", p.base_dir().display())
    );
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    assert_eq!(lmode(&target), 0o700);
    assert!(write_script(&p, &policy(), "build_script", b"x").is_err());
    assert!(check_base_dir(&p, &policy()).is_err());
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn existing_base_with_loose_mode_is_refused_and_left_alone() {
    let s = site();
    let base = mkdir(s.data.join("alice"), 0o777);
    let p = s.paths();
    let err = ensure_job_dirs(&p, &policy()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("refusing {}: mode 0777, expected 0700", base.display())
    );
    assert_eq!(lmode(&base), 0o777);
    assert_eq!(fs::read_dir(&base).unwrap().count(), 0);
}

#[test]
fn builds_cache_scripts_must_be_exact_too() {
    let s = site();
    let p = s.job_dirs();
    let cache = p.base_dir().join("cache");
    chmod(&cache, 0o755);
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!(path, cache);
    assert_eq!(reason, "mode 0755, expected 0700");
    assert_eq!(
        refused_reason(check_base_dir(&p, &policy()).unwrap_err()).0,
        cache
    );
}

#[test]
fn data_dir_must_be_sticky_if_writable_by_others() {
    let s = site();
    chmod(&s.data, 0o777);
    let p = s.paths();
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!(path, s.data);
    assert!(reason.contains("without the sticky bit"), "{reason}");
    assert!(!p.base_dir().exists());

    chmod(&s.data, 0o1777);
    ensure_job_dirs(&p, &policy()).unwrap();
    assert_eq!(lmode(p.base_dir()), 0o700);
}

#[test]
fn data_dir_must_exist_and_not_be_a_symlink() {
    let s = site();
    let missing = s.root.join("nope");
    let p = s.paths_for(missing.to_str().unwrap());
    let err = ensure_job_dirs(&p, &policy()).unwrap_err();
    assert!(matches!(err, FsError::Missing { .. }), "{err}");
    assert!(
        err.to_string().starts_with("failed to find data_dir"),
        "{err}"
    );
    assert!(!missing.exists());

    let link = s.root.join("link");
    symlink(&s.data, &link).unwrap();
    let p = s.paths_for(link.to_str().unwrap());
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!((path, reason.as_str()), (link, "is a symbolic link"));

    let file = s.root.join("file");
    fs::write(&file, b"").unwrap();
    let p = s.paths_for(file.to_str().unwrap());
    let (_, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!(reason, "is not a directory");
}

#[test]
fn home_data_dir() {
    let s = site();
    let p = s.paths_for("$HOME");
    assert_eq!(p.base_dir(), s.home.join(".jacamar-ci"));
    ensure_job_dirs(&p, &policy()).unwrap();
    assert_tree_modes(&p, 0o700);

    let mut u = alice(&s.root.join("home/bob"));
    u.name = "bob".into();
    let p = JobPaths::new("$HOME", &u, "r", 0, "g/p", 1).unwrap();
    let err = ensure_job_dirs(&p, &policy()).unwrap_err();
    assert!(
        err.to_string().starts_with("failed to find home directory"),
        "{err}"
    );
}

#[test]
fn user_specific_data_dir_creates_missing_parents() {
    let s = site();
    let store = mkdir(s.root.join("store"), 0o755);
    let raw = format!("{}/$USER/ci", store.display());
    let p = s.paths_for(&raw);
    assert_eq!(p.base_dir(), store.join("alice/ci"));
    assert!(matches!(
        check_base_dir(&p, &policy()).unwrap_err(),
        FsError::Missing { .. }
    ));
    assert!(!store.join("alice").exists());
    ensure_job_dirs(&p, &policy()).unwrap();
    assert_eq!(lmode(&store.join("alice")), 0o700);
    assert_tree_modes(&p, 0o700);
    check_base_dir(&p, &policy()).unwrap();
}

#[test]
fn deeper_symlink_is_refused() {
    let s = site();
    let p = s.job_dirs();
    let outside = s.root.join("outside");
    fs::create_dir(&outside).unwrap();
    let runner = p.base_dir().join("builds/abc123");
    fs::remove_dir_all(&runner).unwrap();
    symlink(&outside, &runner).unwrap();
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!((path, reason.as_str()), (runner, "is a symbolic link"));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // Same for the scripts chain, used by write_script.
    let ns = p.base_dir().join("scripts/abc123/000/group");
    fs::remove_dir_all(&ns).unwrap();
    symlink(&outside, &ns).unwrap();
    let (path, _) = refused_reason(write_script(&p, &policy(), "build_script", b"x").unwrap_err());
    assert_eq!(path, ns);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn deeper_dir_writable_by_group_or_others_is_refused() {
    let s = site();
    let p = s.job_dirs();
    let nnn = p.cache_dir();
    chmod(&nnn, 0o777);
    let (path, reason) = refused_reason(ensure_job_dirs(&p, &policy()).unwrap_err());
    assert_eq!(path, nnn);
    assert_eq!(reason, "mode 0777 is writable by group or others");
}

// ---------------------------------------------------------------- scripts

#[test]
fn write_script_creates_and_replaces() {
    let _g = UMASK_LOCK.lock().unwrap();
    let s = site();
    let p = s.paths();
    let old = umask(Mode::from_bits_truncate(0o077));
    let first = write_script(&p, &policy(), "build_script", b"echo one\n");
    umask(old);
    let path = first.unwrap();
    assert_eq!(path, p.script_path("build_script").unwrap());
    assert_eq!(fs::read(&path).unwrap(), b"echo one\n");
    assert_eq!(lmode(&path), 0o700);
    assert_chain_modes(&p, &[p.scripts_dir()], 0o700);
    assert!(!p.base_dir().join("builds").exists());

    let again = write_script(&p, &policy(), "build_script", b"echo two\n").unwrap();
    assert_eq!(again, path);
    assert_eq!(fs::read(&path).unwrap(), b"echo two\n");
    assert_eq!(lmode(&path), 0o700);
    let other = write_script(&p, &policy(), "after_script", b"").unwrap();
    assert_eq!(fs::read(&other).unwrap(), b"");
    assert!(write_script(&p, &policy(), "../evil", b"x").is_err());
}

#[test]
fn write_script_replaces_a_planted_symlink_without_following_it() {
    let s = site();
    let p = s.job_dirs();
    let victim = s.root.join("victim");
    fs::write(&victim, b"keep").unwrap();
    let script = p.script_path("get_sources").unwrap();
    symlink(&victim, &script).unwrap();
    write_script(&p, &policy(), "get_sources", b"new").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert!(!fs::symlink_metadata(&script)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&script).unwrap(), b"new");
}

#[test]
fn write_script_refuses_a_directory_in_the_way() {
    let s = site();
    let p = s.job_dirs();
    let script = p.script_path("build_script").unwrap();
    fs::create_dir(&script).unwrap();
    let (path, reason) =
        refused_reason(write_script(&p, &policy(), "build_script", b"x").unwrap_err());
    assert_eq!((path, reason.as_str()), (script, "is a directory"));
}

// ---------------------------------------------------------------- cleanup

#[test]
fn cleanup_removes_scripts_and_empty_parents_twice() {
    let s = site();
    let p = s.job_dirs();
    write_script(&p, &policy(), "build_script", b"x").unwrap();
    fs::create_dir_all(p.scripts_dir().join("sub/deeper")).unwrap();
    fs::write(p.scripts_dir().join("sub/deeper/log"), b"l").unwrap();

    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().exists());
    assert!(!p.base_dir().join("scripts/abc123").exists());
    assert!(p.base_dir().join("scripts").is_dir());
    assert!(p.builds_dir().is_dir());
    assert!(p.cache_dir().is_dir());
    cleanup_job(&p, false).unwrap();
}

#[test]
fn cleanup_keeps_parents_used_by_other_jobs() {
    let s = site();
    let p = s.paths();
    let q = JobPaths::new(
        s.data.to_str().unwrap(),
        &alice(&s.home),
        "abc123",
        0,
        "group/other",
        43,
    )
    .unwrap();
    write_script(&p, &policy(), "build_script", b"x").unwrap();
    write_script(&q, &policy(), "build_script", b"y").unwrap();
    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().parent().unwrap().exists());
    assert!(q.script_path("build_script").unwrap().is_file());
}

#[test]
fn cleanup_of_nothing_is_fine() {
    let s = site();
    cleanup_job(&s.paths(), false).unwrap();
    let gone = s.paths_for(s.root.join("missing").to_str().unwrap());
    cleanup_job(&gone, false).unwrap();
}

#[test]
fn cleanup_unlinks_symlinks_without_following_them() {
    let s = site();
    let p = s.paths();
    write_script(&p, &policy(), "build_script", b"x").unwrap();
    let outside_dir = s.root.join("outside");
    fs::create_dir(&outside_dir).unwrap();
    fs::write(outside_dir.join("precious"), b"p").unwrap();
    let outside_file = s.root.join("file");
    fs::write(&outside_file, b"f").unwrap();
    symlink(&outside_dir, p.scripts_dir().join("dirlink")).unwrap();
    symlink(&outside_file, p.scripts_dir().join("filelink")).unwrap();

    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().exists());
    assert_eq!(fs::read(outside_dir.join("precious")).unwrap(), b"p");
    assert_eq!(fs::read(&outside_file).unwrap(), b"f");
}

#[test]
fn cleanup_refuses_to_walk_through_a_symlinked_chain() {
    let s = site();
    let p = s.job_dirs();
    let outside = s.root.join("outside");
    let job = outside.join("000/group/project/42");
    fs::create_dir_all(&job).unwrap();
    fs::write(job.join("keep"), b"k").unwrap();
    let runner = p.base_dir().join("scripts/abc123");
    fs::remove_dir_all(&runner).unwrap();
    symlink(&outside, &runner).unwrap();
    let (path, _) = refused_reason(cleanup_job(&p, false).unwrap_err());
    assert_eq!(path, runner);
    assert!(job.join("keep").is_file());
}

#[test]
fn cleanup_with_retain_logs_keeps_files() {
    let s = site();
    let p = s.paths();
    let script = write_script(&p, &policy(), "build_script", b"x").unwrap();
    cleanup_job(&p, true).unwrap();
    assert!(script.is_file());
}

#[test]
fn cleanup_concurrent_with_writes_does_not_error() {
    let s = site();
    let p = s.job_dirs();
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            for i in 0..200 {
                // Two cleaners in a tight loop may outrun the writer's bounded retries; the
                // only acceptable failure then is "the directory vanished".
                match write_script(&p, &policy(), "build_script", format!("{i}").as_bytes()) {
                    Ok(_) => {}
                    Err(FsError::Io { ref source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<(), FsError>(())
        });
        let cleaners: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    for _ in 0..200 {
                        cleanup_job(&p, false)?;
                    }
                    Ok::<(), FsError>(())
                })
            })
            .collect();
        writer.join().unwrap().unwrap();
        for c in cleaners {
            c.join().unwrap().unwrap();
        }
    });
    cleanup_job(&p, false).unwrap();
    assert!(!p.scripts_dir().exists());
}

#[test]
fn one_cleanup_racing_writes_lets_both_succeed() {
    let s = site();
    let p = s.paths();
    for _ in 0..50 {
        std::thread::scope(|sc| {
            let w = sc.spawn(|| write_script(&p, &policy(), "build_script", b"x"));
            let c = sc.spawn(|| cleanup_job(&p, false));
            w.join().unwrap().unwrap();
            c.join().unwrap().unwrap();
        });
    }
}

// ------------------------------------------------- the runner's temporary project dir

/// The job of `site` with `CI_PROJECT_DIR` = `project_dir`, and the plan of the standard
/// layout.
fn runner_tmp_job(
    site: &Site,
    project_dir: Option<&str>,
) -> (JobPaths, builds::BuildsPlan, crate::job::JobContext) {
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in [
        ("CI_JOB_ID", "42"),
        ("CI_RUNNER_SHORT_TOKEN", "abc123"),
        ("CI_PROJECT_PATH", "group/project"),
    ] {
        env.insert(format!("CUSTOM_ENV_{k}"), v.to_string());
    }
    if let Some(d) = project_dir {
        env.insert("CUSTOM_ENV_CI_PROJECT_DIR".into(), d.to_string());
    }
    let job = crate::job::JobContext::from_map(&env).unwrap();
    let config = crate::config::Config::from_str_named(
        &format!(
            "[general]\nexecutor = \"shell\"\ndata_dir = \"{}\"\n[auth]\ndownscope = \"none\"\n",
            site.data.display()
        ),
        "test",
    )
    .unwrap();
    let paths = site.paths();
    ensure_job_dirs(&paths, &policy()).unwrap();
    let plan = builds::BuildsPlan::new(&config.general, &job, &paths).unwrap();
    (paths, plan, job)
}

#[test]
fn runner_tmp_dir_is_removed_with_its_secrets_and_nothing_else() {
    let s = site();
    let builds = s.paths().builds_dir();
    let (paths, plan, job) = runner_tmp_job(&s, None);
    let project = builds.join("group/project");
    let tmp = builds.join("group/project.tmp");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::create_dir_all(tmp.join("git-template")).unwrap();
    fs::write(tmp.join("SECRET_FILE"), "s3cret").unwrap();
    fs::write(project.join("src/main.c"), "int main;").unwrap();
    let removed = builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap();
    assert_eq!(removed, vec![tmp.clone()]);
    assert!(!tmp.exists());
    assert!(
        project.join("src/main.c").exists(),
        "the project dir itself is kept"
    );
    // Nothing left: a second cleanup is fine.
    assert!(builds::remove_runner_tmp(&paths, &policy(), &plan, &job)
        .unwrap()
        .is_empty());
}

#[test]
fn runner_tmp_dir_follows_ci_project_dir_only_below_the_builds_dir() {
    let s = site();
    let builds = s.paths().builds_dir();
    // GitLab under a relative URL root: the runner's project dir has one more component.
    let under_root = builds.join("gitlab/group/project");
    let (paths, plan, job) = runner_tmp_job(&s, Some(under_root.to_str().unwrap()));
    fs::create_dir_all(builds.join("gitlab/group/project.tmp")).unwrap();
    fs::write(builds.join("gitlab/group/project.tmp/SECRET_FILE"), "x").unwrap();
    let removed = builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap();
    assert_eq!(removed, vec![builds.join("gitlab/group/project.tmp")]);

    // A CI_PROJECT_DIR elsewhere (a CI variable can say anything) is ignored.
    let elsewhere = s.root.join("victim/project");
    fs::create_dir_all(s.root.join("victim/project.tmp")).unwrap();
    for dir in [
        elsewhere.to_str().unwrap().to_string(),
        format!("{}/../../victim/project", builds.display()),
    ] {
        let (paths, plan, job) = runner_tmp_job(&s, Some(&dir));
        builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap();
        assert!(s.root.join("victim/project.tmp").exists(), "{dir}");
    }
}

#[test]
fn runner_tmp_dir_is_never_reached_through_a_symlink() {
    let s = site();
    let builds = s.paths().builds_dir();
    let (paths, plan, job) = runner_tmp_job(&s, None);
    let victim = s.root.join("victim");
    fs::create_dir_all(victim.join("project.tmp")).unwrap();
    fs::write(victim.join("project.tmp/keep"), "k").unwrap();

    // `<builds>/group` is a symlink to the victim: refused, nothing removed.
    symlink(&victim, builds.join("group")).unwrap();
    let err = builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap_err();
    let (path, reason) = refused_reason(err);
    assert_eq!(path, builds.join("group"));
    assert!(reason.contains("symbolic link"), "{reason}");
    assert!(victim.join("project.tmp/keep").exists());

    // `<builds>/group/project.tmp` is a symlink to the victim's dir: refused, not followed.
    fs::remove_file(builds.join("group")).unwrap();
    fs::create_dir(builds.join("group")).unwrap();
    symlink(victim.join("project.tmp"), builds.join("group/project.tmp")).unwrap();
    let err = builds::remove_runner_tmp(&paths, &policy(), &plan, &job).unwrap_err();
    let (path, reason) = refused_reason(err);
    assert_eq!(path, builds.join("group/project.tmp"));
    assert!(reason.contains("not a directory"), "{reason}");
    assert!(victim.join("project.tmp/keep").exists());
}

mod root;
