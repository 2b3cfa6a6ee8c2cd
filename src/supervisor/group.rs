//! Process groups and descendants: signalling, sweeping and reaping.
//!
//! A job is a process group (its leader is the shell we spawned) plus, when we are a
//! child subreaper, every process that ever descended from us: a double-forked daemon
//! that called `setsid` leaves the group but is re-parented to us, so the `/proc` walk in
//! [`descendants`] still finds it.
//!
//! What this module does not do: it never calls `waitpid(-1)`. tokio reaps the children it
//! spawned itself by pid; reaping "any child" here would steal their statuses. Orphans that
//! were re-parented to us are reaped one by one, by pid, in [`reap_orphans`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::procfs::all_processes;
pub use super::procfs::ProcInfo;

/// Make the calling process a child subreaper, so that orphaned descendants are
/// re-parented to it instead of to init. Returns false when the kernel refused.
pub fn become_subreaper() -> bool {
    nix::sys::prctl::set_child_subreaper(true).is_ok()
}

/// Send `sig` to the whole group `pgid`, followed by SIGCONT so that a stopped job can act
/// on it. Returns false when the group no longer exists (ESRCH).
pub fn signal_group(pgid: Pid, sig: Signal) -> bool {
    match killpg(pgid, sig) {
        Ok(()) => {
            if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
                let _ = killpg(pgid, Signal::SIGCONT);
            }
            true
        }
        Err(_) => false,
    }
}

/// Whether any process of group `pgid` still exists (zombies count until reaped).
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Whether the calling process has any child, running or zombie. Uses `WNOWAIT`, so no
/// exit status is taken away from tokio, which reaps its own children by pid.
pub fn has_children() -> bool {
    use nix::sys::wait::{waitid, Id};
    let flags = WaitPidFlag::WEXITED
        | WaitPidFlag::WSTOPPED
        | WaitPidFlag::WCONTINUED
        | WaitPidFlag::WNOHANG
        | WaitPidFlag::WNOWAIT;
    !matches!(waitid(Id::All, flags), Err(Errno::ECHILD))
}

/// The descendants of `root` (not `root` itself), plus every member of group `pgid`.
pub fn descendants(root: Pid, pgid: Option<Pid>) -> Vec<ProcInfo> {
    let procs = all_processes();
    let mut children: HashMap<i32, Vec<ProcInfo>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(*p);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![root.as_raw()];
    while let Some(pid) = stack.pop() {
        for c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c.pid) {
                out.push(*c);
                stack.push(c.pid);
            }
        }
    }
    if let Some(g) = pgid {
        for p in procs.iter().filter(|p| p.pgid == g.as_raw()) {
            if p.pid != root.as_raw() && seen.insert(p.pid) {
                out.push(*p);
            }
        }
    }
    out
}

/// Reap, by pid, the zombies among `procs` whose parent is us. Never `waitpid(-1)`.
pub fn reap_orphans(procs: &[ProcInfo]) {
    let me = std::process::id() as i32;
    for p in procs.iter().filter(|p| p.zombie && p.ppid == me) {
        let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// The common case, checked without scanning /proc (a scan reads one file per process on
/// the host): the group is empty and `root` (us) has no child left. As a subreaper, every
/// surviving descendant would be a child of ours or below one.
pub fn nothing_left(root: Pid, pgid: Option<Pid>) -> bool {
    root.as_raw() == std::process::id() as i32 && !pgid.is_some_and(group_alive) && !has_children()
}

/// Whether any process of the job other than zombies is left: a descendant of `root` (us)
/// or a member of group `pgid`. Reaps the orphans re-parented to us on the way, so their
/// zombies do not count.
pub fn any_alive(root: Pid, pgid: Option<Pid>) -> bool {
    if nothing_left(root, pgid) {
        return false;
    }
    let procs = descendants(root, pgid);
    reap_orphans(&procs);
    procs.iter().any(|p| !p.zombie)
}

/// What a sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Processes that were still alive when the sweep began and got a signal.
    pub signalled: usize,
    /// Pids still alive when the sweep gave up (should be empty).
    pub survivors: Vec<i32>,
    /// Why some signals could not be sent (see [`sweep_children`]).
    pub errors: Vec<String>,
}

/// Sweep the job until it is empty: send `first` (SIGTERM or SIGKILL) to the group and to
/// every descendant, wait up to `grace` for them to go, then SIGKILL whatever is left, and
/// keep re-scanning (descendants can fork while we sweep) until nothing is left or
/// `bound` has passed. Zombies re-parented to us are reaped on the way.
pub fn sweep(
    root: Pid,
    pgid: Option<Pid>,
    first: Signal,
    grace: Duration,
    bound: Duration,
) -> SweepReport {
    let started = Instant::now();
    let mut report = SweepReport::default();
    if nothing_left(root, pgid) {
        return report;
    }
    let live =
        |ps: &[ProcInfo]| -> Vec<i32> { ps.iter().filter(|p| !p.zombie).map(|p| p.pid).collect() };

    let procs = descendants(root, pgid);
    reap_orphans(&procs);
    let alive = live(&procs);
    let group_left = pgid.is_some_and(group_alive);
    if alive.is_empty() && !group_left {
        return report;
    }
    report.signalled = alive.len();
    send_all(&alive, pgid, first);
    if first != Signal::SIGKILL {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
            let procs = descendants(root, pgid);
            reap_orphans(&procs);
            if live(&procs).is_empty() {
                break;
            }
        }
    }
    loop {
        let procs = descendants(root, pgid);
        reap_orphans(&procs);
        let alive = live(&procs);
        if alive.is_empty() {
            return report;
        }
        if started.elapsed() >= bound {
            report.survivors = alive;
            return report;
        }
        send_all(&alive, pgid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Our own children (running or zombie), from /proc.
pub fn own_children() -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == me)
        .collect()
}

/// Sweep everything re-parented to us, a child subreaper, once the one child we spawned
/// has been reaped (by tokio, by pid): SIGKILL every live child with `kill`, reap the
/// zombies by pid, re-scan (grandchildren come to us as their parents die), until we have
/// no child left or `bound` has passed.
///
/// Signalling by pid is race-free here: a child of ours keeps its pid until *we* reap it.
/// `kill` gets the live children's pids and SIGKILLs them however it can (directly, or
/// through a helper running as their user); its error is reported in
/// [`SweepReport::errors`] and the sweep goes on until the bound. Whatever a pid-based
/// sweep cannot catch (a process that forks and exits faster than we scan) is caught by the
/// caller's cgroup, when it has one.
///
/// Must not run while another child of ours is owned by someone else (tokio): it reaps
/// every zombie child it sees.
pub fn sweep_children<E: std::fmt::Display>(
    kill: &mut dyn FnMut(&[i32]) -> Result<(), E>,
    bound: Duration,
) -> SweepReport {
    let started = Instant::now();
    let mut report = SweepReport::default();
    while has_children() {
        let kids = own_children();
        for z in kids.iter().filter(|p| p.zombie) {
            let _ = waitpid(Pid::from_raw(z.pid), Some(WaitPidFlag::WNOHANG));
        }
        let live: Vec<i32> = kids.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
        if started.elapsed() >= bound {
            report.survivors = live;
            return report;
        }
        if live.is_empty() {
            // A child turned zombie between the scan and its reap: look again.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        report.signalled += live.len();
        match kill(&live) {
            Ok(()) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                report.errors.push(e.to_string());
                // Not retried in a tight loop (e.g. a process that changed its uid).
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    report
}

fn send_all(pids: &[i32], pgid: Option<Pid>, sig: Signal) {
    if let Some(g) = pgid {
        signal_group(g, sig);
    }
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), sig);
        if sig != Signal::SIGKILL {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_children_sees_a_child_without_reaping_it() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(has_children());
        // The status is still there for its owner.
        assert!(c.wait().unwrap().success());
    }

    #[test]
    fn sweep_children_kills_and_reaps_what_is_reparented_to_us() {
        // A shell whose background sleep outlives it: as a subreaper, the sleep comes to us.
        // Only this test of the module makes children of ours it does not wait for itself,
        // so it runs in its own process.
        if std::env::var("JRS_SWEEP_CHILD").is_err() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "supervisor::group::tests::sweep_children_kills_and_reaps_what_is_reparented_to_us",
                    "--nocapture",
                ])
                .env("JRS_SWEEP_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        assert!(become_subreaper());
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 300 >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 & echo $!",
            ])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        let orphan: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(own_children().iter().any(|p| p.pid == orphan));
        let mut sent = Vec::new();
        let report = sweep_children::<nix::errno::Errno>(
            &mut |pids| {
                sent.extend_from_slice(pids);
                for &p in pids {
                    kill(Pid::from_raw(p), Signal::SIGKILL)?;
                }
                Ok(())
            },
            Duration::from_secs(10),
        );
        assert!(report.survivors.is_empty(), "{report:?}");
        assert!(sent.contains(&orphan), "{sent:?}");
        assert!(!has_children());
        assert!(std::fs::metadata(format!("/proc/{orphan}")).is_err());
    }

    #[test]
    fn our_own_children_are_descendants() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = Pid::from_raw(std::process::id() as i32);
        let d = descendants(me, None);
        assert!(d.iter().any(|p| p.pid == c.id() as i32));
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
