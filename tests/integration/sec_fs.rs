//! Security of the job's directories (the group_permissions migration, root_dir_creation), through the real binaries as
//! real users (setuid with minted id_tokens, `jrs_fs_*` accounts):
//!
//! * a `group_permissions` change never removes what the driver did not create: only its own
//!   `builds`, `cache` and `scripts` are recreated; a user-named `data_dir` (`$USER`) whose
//!   mode is the other setting's is refused, never emptied or changed;
//! * `root_dir_creation` walks `data_dir` from `/` and refuses a path that someone other than
//!   root could redirect (an ancestor owned by a user, group/other-writable without the
//!   sticky bit, or a symbolic link), creating nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::auth_kit::{ensure_user, give_token, harness, pki, JwksServer};
use crate::harness::runner_script;
use crate::harness::{require_root, show, Harness};

/// The job's user.
const USER: &str = "jrs_fs_u";
/// An ordinary user who owns a directory above a data_dir.
const OTHER: &str = "jrs_fs_x";

const SCRIPT: &str = "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n\
                      : | eval $'echo job-ran-as-$(id -un)\\n'\nexit 0\n";

/// A 0755 root-owned directory in /tmp for the test's own layout of data dirs.
fn site() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("jrs-fs")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn mkdir(path: &Path, mode: u32, owner: Option<&nix::unistd::User>) {
    std::fs::create_dir(path).unwrap();
    if let Some(u) = owner {
        nix::unistd::chown(path, Some(u.uid), Some(u.gid)).unwrap();
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_as(path: &Path, text: &str, owner: &nix::unistd::User) {
    std::fs::write(path, text).unwrap();
    nix::unistd::chown(path, Some(owner.uid), Some(owner.gid)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A setuid job of [`USER`] with `data_dir` and extra `[general]`/`[auth]` lines, errors shown
/// in full.
fn job(server: &JwksServer, data_dir: &str, general: &str, auth: &str) -> Harness {
    let mut h = harness(
        server,
        "setuid",
        &format!("data_dir = \"{data_dir}\"\n{general}"),
        auth,
        "",
    );
    give_token(&mut h, server, USER);
    h.unobfuscated = true;
    // The stock /etc/skel's .bash_logout ends in a failing `[ -x clear_console ] && ...`,
    // which under the runner's `set -e` turns a login shell's `exit 0` into 1; these tests
    // are about directories, so the job's bash reads no profile.
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
    h
}

/// config, prepare, one run and cleanup; stops at the first failure. The outputs of the
/// calls made, and whether all succeeded.
fn whole_job(h: &mut Harness) -> (bool, String) {
    let mut log = String::new();
    let mut step = |name: &str, out: Output| {
        log.push_str(&format!("--- {name}: {}\n", show(&out)));
        out.status.success()
    };
    let ok = step("config", h.config())
        && step("prepare", h.prepare())
        && {
            let out = h.run("build_script", &runner_script(SCRIPT));
            let code = h.build_exit_code();
            step(&format!("run (job exit code {code:?})"), out)
        }
        && step("cleanup", h.cleanup());
    (ok, log)
}

/// The user's own files in `dir`: a file and a nested directory with a file.
fn plant_user_files(dir: &Path, user: &nix::unistd::User) -> Vec<PathBuf> {
    let results = dir.join("results");
    mkdir(&results, 0o700, Some(user));
    write_as(&dir.join("thesis.tex"), "years of work", user);
    write_as(&results.join("run-1.dat"), "data", user);
    vec![dir.join("thesis.tex"), results.join("run-1.dat")]
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn group_permissions_change_never_empties_a_user_named_data_dir() {
    if !require_root() {
        return;
    }
    let user = ensure_user(USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let site = site();
    let scratch = site.path().join("scratch");
    mkdir(&scratch, 0o755, None);
    // The user's own directory, group-readable, with their files in it.
    let mine = scratch.join(USER);
    mkdir(&mine, 0o750, Some(&user));
    let files = plant_user_files(&mine, &user);
    let data_dir = format!("{}/$USER", scratch.display());

    // A job with group_permissions uses it as is and creates the driver's directories 0750.
    let mut a = job(&server, &data_dir, "group_permissions = true", "");
    let (ok, log) = whole_job(&mut a);
    assert!(ok, "{log}");
    let marker = mine.join("builds/old-build");
    write_as(&marker, "x", &user);
    assert_eq!(mode(&mine.join("builds")), 0o750);

    // The admin turns group_permissions off: the next job must not touch the user's files.
    let mut b = job(&server, &data_dir, "group_permissions = false", "");
    let (ok, log) = whole_job(&mut b);
    for f in &files {
        assert!(f.is_file(), "{} was removed: {log}", f.display());
    }
    assert!(!ok, "a 0750 user directory is not 0700: {log}");
    for needle in [
        mine.display().to_string(),
        "mode 0750".into(),
        "expected 0700".into(),
        "group_permissions".into(),
    ] {
        assert!(log.contains(&needle), "{needle:?} not in: {log}");
    }
    assert_eq!(mode(&mine), 0o750, "the user's directory is not changed");
    assert!(marker.is_file(), "nothing is removed on a refusal");

    // The user sets the mode the error asks for: the driver's own directories are recreated
    // with the new mode, the user's files stay.
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = job(&server, &data_dir, "group_permissions = false", "");
    let (ok, log) = whole_job(&mut c);
    assert!(ok, "{log}");
    assert!(log.contains("job-ran-as-jrs_fs_u"), "{log}");
    for f in &files {
        assert!(f.is_file(), "{} was removed: {log}", f.display());
    }
    assert!(!marker.exists(), "the driver's old builds dir is recreated");
    for d in ["builds", "cache", "scripts"] {
        assert_eq!(mode(&mine.join(d)), 0o700, "{d}: {log}");
    }
    assert_eq!(mode(&mine), 0o700);
}

/// The plain layout: `<data_dir>/<user>` exists with the other setting's mode and holds
/// files the driver did not create. With and without `root_dir_creation`.
fn plain_layout_keeps_user_files(root_dir_creation: bool) {
    let user = ensure_user(USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let site = site();
    let data = site.path().join("data");
    mkdir(&data, 0o755, None);
    let base = data.join(USER);
    mkdir(&base, 0o750, Some(&user));
    let files = plant_user_files(&base, &user);
    // The driver's own builds dir of a group_permissions job, with an old build in it.
    mkdir(&base.join("builds"), 0o750, Some(&user));
    let marker = base.join("builds/old-build");
    write_as(&marker, "x", &user);

    let auth = if root_dir_creation {
        "root_dir_creation = true"
    } else {
        ""
    };
    let mut h = job(&server, &data.display().to_string(), "", auth);
    let (ok, log) = whole_job(&mut h);
    for f in &files {
        assert!(f.is_file(), "{} was removed: {log}", f.display());
    }
    assert!(ok, "{log}");
    assert!(log.contains("group_permissions changed"), "{log}");
    assert!(
        !marker.exists(),
        "the driver's builds dir is recreated: {log}"
    );
    for d in [base.clone(), base.join("builds"), base.join("scripts")] {
        assert_eq!(mode(&d), 0o700, "{}: {log}", d.display());
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn group_permissions_change_keeps_user_files_in_data_dir_user() {
    if !require_root() {
        return;
    }
    plain_layout_keeps_user_files(false);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn group_permissions_change_keeps_user_files_with_root_dir_creation() {
    if !require_root() {
        return;
    }
    plain_layout_keeps_user_files(true);
}

/// A root_dir_creation job of [`USER`] with `data_dir`: it must fail naming `bad` and `why`,
/// and create nothing in `data_dir`.
fn refused_data_dir(data_dir: &Path, bad: &Path, why: &str) {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = job(
        &server,
        &data_dir.display().to_string(),
        "",
        "root_dir_creation = true",
    );
    let (ok, log) = whole_job(&mut h);
    assert!(!ok, "{log}");
    let named = format!("refusing {}: {why}", bad.display());
    assert!(log.contains(&named), "{named:?} not in: {log}");
    let entries: Vec<_> = std::fs::read_dir(data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "created in {data_dir:?}: {entries:?}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn root_dir_creation_refuses_a_data_dir_below_a_users_directory() {
    if !require_root() {
        return;
    }
    ensure_user(USER, &[], "/bin/bash");
    let other = ensure_user(OTHER, &[], "/bin/bash");
    let site = site();
    let owned = site.path().join("owned");
    mkdir(&owned, 0o755, Some(&other));
    let data = owned.join("data");
    mkdir(&data, 0o755, None);
    let why = format!("owned by uid {} ({OTHER})", other.uid);
    refused_data_dir(&data, &owned, &why);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn root_dir_creation_refuses_a_data_dir_below_a_world_writable_directory() {
    if !require_root() {
        return;
    }
    ensure_user(USER, &[], "/bin/bash");
    let site = site();
    let open = site.path().join("open");
    mkdir(&open, 0o777, None);
    let data = open.join("data");
    mkdir(&data, 0o755, None);
    refused_data_dir(
        &data,
        &open,
        "mode 0777 is writable by group or others without the sticky bit",
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn root_dir_creation_refuses_a_symbolic_link_in_data_dir() {
    if !require_root() {
        return;
    }
    ensure_user(USER, &[], "/bin/bash");
    let site = site();
    let real = site.path().join("real");
    mkdir(&real, 0o755, None);
    let data = real.join("data");
    mkdir(&data, 0o755, None);
    let link = site.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused_data_dir(&link.join("data"), &link, "is a symbolic link");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn root_dir_creation_works_below_a_sticky_world_writable_directory() {
    if !require_root() {
        return;
    }
    let user = ensure_user(USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let site = site();
    let sticky = site.path().join("sticky");
    mkdir(&sticky, 0o1777, None);
    let data = sticky.join("data");
    mkdir(&data, 0o755, None);
    let mut h = job(
        &server,
        &data.display().to_string(),
        "",
        "root_dir_creation = true",
    );
    let (ok, log) = whole_job(&mut h);
    assert!(ok, "{log}");
    let md = std::fs::symlink_metadata(data.join(USER)).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (user.uid.as_raw(), 0o700));
}

/// `data_dir = "$HOME"`: the home belongs to the user, so root does not create anything in
/// it; the user creates `$HOME/.jacamar-ci` and the job runs.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn root_dir_creation_leaves_a_home_data_dir_to_the_user() {
    if !require_root() {
        return;
    }
    let user = ensure_user(USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let base = user.dir.join(".jacamar-ci");
    if base.exists() {
        std::fs::remove_dir_all(&base).unwrap();
    }
    let mut h = job(&server, "$HOME", "", "root_dir_creation = true");
    let (ok, log) = whole_job(&mut h);
    assert!(ok, "{log}");
    let md = std::fs::symlink_metadata(&base).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (user.uid.as_raw(), 0o700));
}

/// Issue 16, finding 1: with a `data_dir` that has a part after `$USER`
/// (`<scratch>/$USER/ci`) below a sticky world-writable directory, another local user who
/// creates `<scratch>/<user>` first (mode 1777, theirs) owns the directory the user's base
/// dir would be created in: as its owner they may rename or remove any entry of it, swap the
/// base dir for a tree of their own while a stage runs, and have their script run as the
/// user. Every directory on the way must belong to root or the user: the stage is refused,
/// naming the directory and its owner, and nothing is created in it.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_user_named_data_dir_below_another_users_directory_is_refused() {
    if !require_root() {
        return;
    }
    ensure_user(USER, &[], "/bin/bash");
    let mallory = ensure_user(OTHER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let site = site();
    let scratch = site.path().join("scratch");
    mkdir(&scratch, 0o1777, None);
    // mallory got there first: <scratch>/<user>, hers, world-writable and sticky.
    let planted = scratch.join(USER);
    mkdir(&planted, 0o1777, Some(&mallory));
    let mut h = job(&server, &format!("{}/$USER/ci", scratch.display()), "", "");
    let (ok, log) = whole_job(&mut h);
    assert!(
        !ok,
        "the job ran with its base dir inside {OTHER}'s directory:\n{log}"
    );
    assert!(
        log.contains(&planted.display().to_string()) && log.contains(OTHER),
        "the refusal must name {} and its owner {OTHER}:\n{log}",
        planted.display()
    );
    assert!(!log.contains("job-ran-as-"), "{log}");
    let entries: Vec<_> = std::fs::read_dir(&planted)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "created in {planted:?}: {entries:?}");
}

/// The same layout without the plant: the user's own `<scratch>/<user>` (created by the job,
/// or already there and theirs) and the parts below it are fine, through a symbolic link
/// of root's on the way (`/scratch` -> `/lustre/scratch` is common).
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_user_named_data_dir_below_the_users_own_directory_works() {
    if !require_root() {
        return;
    }
    let user = ensure_user(USER, &[], "/bin/bash");
    let server = JwksServer::start(&[&pki().keys[0]]);
    let site = site();
    let real = site.path().join("lustre");
    mkdir(&real, 0o755, None);
    let scratch = real.join("scratch");
    mkdir(&scratch, 0o1777, None);
    let link = site.path().join("scratch");
    std::os::unix::fs::symlink(&scratch, &link).unwrap();
    let data_dir = format!("{}/$USER/ci", link.display());
    // First job: <scratch>/<user> does not exist yet; the job creates it.
    let mut h = job(&server, &data_dir, "", "");
    let (ok, log) = whole_job(&mut h);
    assert!(ok, "{log}");
    assert!(log.contains(&format!("job-ran-as-{USER}")), "{log}");
    let md = std::fs::symlink_metadata(scratch.join(USER)).unwrap();
    assert_eq!(md.uid(), user.uid.as_raw());
    // Second job: it exists and is the user's (even world-writable and sticky).
    std::fs::set_permissions(scratch.join(USER), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut h = job(&server, &data_dir, "", "");
    let (ok, log) = whole_job(&mut h);
    assert!(ok, "{log}");
}
