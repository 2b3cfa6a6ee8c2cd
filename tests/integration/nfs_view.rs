//! The driver through a client-side name and attribute cache like an NFS client's: a real
//! bindfs (FUSE) view with 5 s attribute, entry and negative-entry caches over a backing
//! dir that the test writes directly (as the compute node writes the shared file system).
//! The docker cluster (docker/README.md) found these defects with 10 s caches.
//!
//! Needs root (to mount) and `bindfs`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jacamar::batch::tail::{self, TailTiming};
use jacamar::batch::wrapper::read_exit_file;
use jacamar::fs::{cleanup_job, ensure_job_dirs, write_script, DirPolicy, JobPaths, UserInfo};
use tokio::sync::mpsc;

use crate::harness::{require_root, require_tool, show};

/// The caches of the view, seconds.
const CACHE_SECS: u64 = 5;

/// A bindfs view `mount` of `backing`, unmounted on drop.
struct View {
    tmp: tempfile::TempDir,
    mount: PathBuf,
}

impl View {
    fn new() -> View {
        let tmp = tempfile::Builder::new()
            .prefix("jrs-nfsview-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let backing = tmp.path().join("backing");
        let mount = tmp.path().join("view");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mount).unwrap();
        std::fs::set_permissions(&backing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = CACHE_SECS;
        let out = Command::new("bindfs")
            .arg("-o")
            .arg(format!(
                "allow_other,attr_timeout={t},entry_timeout={t},negative_timeout={t}"
            ))
            .arg(&backing)
            .arg(&mount)
            .output()
            .unwrap();
        assert!(out.status.success(), "bindfs: {}", show(&out));
        View { tmp, mount }
    }

    fn backing(&self) -> PathBuf {
        self.tmp.path().join("backing")
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.mount).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            // Busy (a test failed with a file open): detach it, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
    }
}

fn ready() -> bool {
    require_root() && require_tool("bindfs")
}

/// Lines from `rx` until `want` bytes arrived or `limit` passed.
async fn collect(rx: &mut mpsc::Receiver<Vec<u8>>, want: usize, limit: Duration) -> String {
    let mut got = String::new();
    let until = tokio::time::Instant::now() + limit;
    while got.len() < want {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(l)) => got.push_str(&String::from_utf8(l).unwrap()),
            _ => break,
        }
    }
    got
}

/// The job's last lines are in the backing file, but the view still shows the size it
/// cached just before: with the size from the exit file the tailer reads every byte.
/// (The old tailer stopped after 1.5 s of quiet and lost the tail: "assertion `left ==
/// right` failed; left: \"first\\n\", right: \"first\\nsecond\\nlast line\\n\"".)
#[tokio::test(flavor = "current_thread")]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
async fn tail_reads_every_byte_the_exit_file_counts_through_a_stale_view() {
    if !ready() {
        return;
    }
    let view = View::new();
    let seen = view.mount.join("build_script.out");
    let behind = view.backing().join("build_script.out");
    // Written through the view: its attributes are fetched afresh by the tailer's next
    // read and then cached for CACHE_SECS.
    std::fs::write(&seen, "first\n").unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let t = tail::spawn(seen.clone(), TailTiming::new(Duration::from_secs(30)), tx);
    assert_eq!(
        collect(&mut rx, 6, Duration::from_secs(30)).await,
        "first\n"
    );
    // A stat through the view now caches its attributes for CACHE_SECS (the tailer's
    // reads at EOF fetch no data, so nothing invalidates them).
    assert_eq!(std::fs::metadata(&seen).unwrap().len(), 6);
    // The job's last lines, written on "the compute node", and its end at once.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&behind)
        .unwrap();
    f.write_all(b"second\nlast line\n").unwrap();
    drop(f);
    let size = std::fs::metadata(&behind).unwrap().len();
    assert_eq!(
        std::fs::metadata(&seen).unwrap().len(),
        6,
        "the view must still show the old size, or this test shows nothing"
    );
    let t0 = Instant::now();
    t.job_over_expecting(Box::new(move || Some(size)));
    let rest = collect(&mut rx, 17, Duration::from_secs(60)).await;
    let report = t.finish().await;
    assert_eq!(format!("first\n{rest}"), "first\nsecond\nlast line\n");
    assert_eq!(report.short(), None, "{report:?}");
    assert_eq!(report.expected_bytes, Some(size));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

/// With the size known and the bytes never arriving (the file is shorter than the record
/// says), the tailer gives up at nfs_timeout and its report says how many of how many.
#[tokio::test(flavor = "current_thread")]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
async fn tail_reports_bytes_that_never_arrive() {
    if !ready() {
        return;
    }
    let view = View::new();
    let seen = view.mount.join("build_script.out");
    std::fs::write(view.backing().join("build_script.out"), "only\n").unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let t = tail::spawn(seen, TailTiming::new(Duration::from_secs(3)), tx);
    assert_eq!(collect(&mut rx, 5, Duration::from_secs(30)).await, "only\n");
    t.job_over_expecting(Box::new(|| Some(100)));
    let report = t.finish().await;
    assert_eq!(report.short(), Some((5, 100)), "{report:?}");
}

/// The poller's look at the exit file while the job runs leaves no negative entry: the
/// file is seen through the view as soon as the job writes it. (The old open by name left
/// one: "the exit file written behind the view is not seen through it".)
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn exit_file_check_leaves_no_negative_entry() {
    if !ready() {
        return;
    }
    let view = View::new();
    let exit = view.mount.join("build_script.exit");
    assert_eq!(read_exit_file(&exit, "7"), None, "no exit file yet");
    std::fs::write(view.backing().join("build_script.exit"), "0 0 7 12\n").unwrap();
    let rec = read_exit_file(&exit, "7");
    assert!(
        rec.is_some(),
        "the exit file written behind the view is not seen through it"
    );
    assert_eq!(rec.unwrap().output_bytes, Some(12));
}

/// A job dir under the view: the data dir is the view itself.
fn job_paths(view: &View) -> (JobPaths, DirPolicy) {
    let data = view.mount.join("data");
    std::fs::create_dir(&data).unwrap();
    let home = view.tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let user = UserInfo {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home,
    };
    let paths = JobPaths::new(
        data.to_str().unwrap(),
        &user,
        "nfsview1",
        0,
        "group/project",
        42,
    )
    .unwrap();
    let policy = DirPolicy {
        uid: 0,
        group_permissions: false,
    };
    ensure_job_dirs(&paths, &policy).unwrap();
    write_script(&paths, &policy, "build_script", b"x").unwrap();
    (paths, policy)
}

/// The view cached "absent" for the exit file, the job wrote it meanwhile: readdir lists
/// it, unlink says ENOENT, rmdir says ENOTEMPTY until the cache expires. Cleanup waits for
/// that and removes the dir. (The old cleanup gave up after 5 quick rounds: "the scripts
/// dir is left in place".)
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn cleanup_through_a_stale_negative_entry_removes_the_scripts_dir() {
    if !ready() {
        return;
    }
    let view = View::new();
    let (paths, _) = job_paths(&view);
    let scripts = paths.scripts_dir();
    let exit = scripts.join("build_script.exit");
    // A lookup by name while absent: the view caches the negative entry.
    assert!(std::fs::metadata(&exit).is_err());
    let behind = view
        .backing()
        .join(scripts.strip_prefix(&view.mount).unwrap());
    std::fs::write(behind.join("build_script.exit"), "0 0 7 0\n").unwrap();
    assert!(
        std::fs::metadata(&exit).is_err(),
        "the view must still hide the file (negative entry), or this test shows nothing"
    );
    let t0 = Instant::now();
    cleanup_job(&paths, false).unwrap();
    assert!(!behind.exists(), "the scripts dir is left in place");
    assert!(!scripts.exists());
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    // The shared parents stay.
    assert!(paths.base_dir().join("scripts").is_dir());
}
