//! A per-job cgroup v2, so that everything a job started can be killed at once.
//!
//! `jacamar-auth` (when it runs as root and a cgroup v2 hierarchy is mounted) creates
//! `<our cgroup>/jacamar-rs.<our pid>.<our start time>` and starts `jacamar` inside it
//! (`clone3(CLONE_INTO_CGROUP)` on [`JobCgroup::dir_fd`]; where that is refused, the child
//! moves itself in before exec by writing `0` to the `cgroup.procs` opened here). Everything
//! the job forks stays in it: the job's user may not write to a root-owned `cgroup.procs`.
//!
//! [`JobCgroup::kill_all`] is what a pid-based sweep cannot be: atomic against `fork`.
//! `cgroup.kill` (Linux 5.14) kills every member and any child forked while it runs; on
//! older kernels the cgroup is frozen (`cgroup.freeze`, 5.2: a frozen task cannot fork),
//! every member is SIGKILLed, then thawed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A job's cgroup, removed by [`JobCgroup::remove`] once empty.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// The directory itself, for `clone3(CLONE_INTO_CGROUP)`.
    dir_fd: File,
    procs: File,
}

/// Where the cgroup v2 hierarchy is mounted, from mountinfo text (the first `cgroup2`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// `/sys/fs/cgroup` (a pure v2 host) or `/sys/fs/cgroup/unified` (a hybrid one) when a
/// cgroup v2 file system is mounted there (`statfs`: `CGROUP2_SUPER_MAGIC`): two system
/// calls where parsing `/proc/self/mountinfo` costs 0.08 ms of every stage (the kernel
/// formats every mount). Elsewhere mountinfo says ([`cgroup2_mount`]).
fn cgroup2_at_usual_place() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
        .map(PathBuf::from)
}

/// Our cgroup v2 path (relative to the mount), from `/proc/self/cgroup` text.
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

impl JobCgroup {
    /// Create the job's cgroup below ours. `Ok(None)` when we are not root (we could not
    /// manage one: the caller sweeps by pid) or no cgroup v2 hierarchy is mounted; `Err`
    /// when root could not create or open it.
    pub fn create() -> std::io::Result<Option<JobCgroup>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let Some(mount) = cgroup2_at_usual_place().or_else(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| cgroup2_mount(&m))
        }) else {
            return Ok(None);
        };
        let ours = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| own_cgroup(&c))
            .unwrap_or_default();
        let parent = mount.join(ours);
        remove_stale(&parent);
        let me = std::process::id() as i32;
        let dir = parent.join(format!(
            "{PREFIX}{me}.{}",
            super::procfs::start_time(me).unwrap_or(0)
        ));
        std::fs::create_dir(&dir).map_err(|e| with_path(e, &dir))?;
        let opened = File::open(&dir).and_then(|dir_fd| {
            let procs = OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            Ok((dir_fd, procs))
        });
        match opened {
            Ok((dir_fd, procs)) => Ok(Some(JobCgroup { dir, dir_fd, procs })),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(with_path(e, &dir))
            }
        }
    }

    /// The open `cgroup.procs`, for the child's hook (it writes `0` to move itself): the
    /// fallback where `clone3(CLONE_INTO_CGROUP)` is refused. Moving a process costs a
    /// synchronize_rcu in the kernel (5-40 ms here) where creating it inside costs nothing.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory, open read-only: `clone3`'s `CLONE_INTO_CGROUP` argument.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir_fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether any live process is in the cgroup (zombies are not).
    pub fn populated(&self) -> std::io::Result<bool> {
        let events = std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map_err(|e| with_path(e, &self.dir))?;
        Ok(events.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Kill every process of the cgroup, including those forked meanwhile, and wait (up to
    /// `bound`) until none is left alive. Returns whether the cgroup is empty.
    pub fn kill_all(&self, bound: Duration) -> std::io::Result<bool> {
        if !self.populated()? {
            return Ok(true);
        }
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() {
            write_file(&kill_file, "1")?;
        } else {
            self.freeze_and_kill(bound)?;
        }
        let until = Instant::now() + bound;
        loop {
            if !self.populated()? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Before Linux 5.14: freeze (no member can fork while frozen), SIGKILL each member
    /// (fatal signals reach frozen tasks), thaw.
    fn freeze_and_kill(&self, bound: Duration) -> std::io::Result<()> {
        let freeze = self.dir.join("cgroup.freeze");
        write_file(&freeze, "1")?;
        let until = Instant::now() + bound;
        while Instant::now() < until {
            let events = std::fs::read_to_string(self.dir.join("cgroup.events"))
                .map_err(|e| with_path(e, &self.dir))?;
            if events.lines().any(|l| l.trim() == "frozen 1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let members = std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map_err(|e| with_path(e, &self.dir))?;
        for pid in members.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        write_file(&freeze, "0")
    }

    /// Remove the (empty) cgroup.
    pub fn remove(self) -> std::io::Result<()> {
        drop((self.procs, self.dir_fd));
        std::fs::remove_dir(&self.dir).map_err(|e| with_path(e, &self.dir))
    }
}

/// Job cgroups are named `jacamar-rs.<pid>.<start time>` after the jacamar-auth that made
/// them: unique even when pids are reused, and recognisably stale once that process is gone.
const PREFIX: &str = "jacamar-rs.";

/// Remove the empty job cgroups left in `parent` by a jacamar-auth that was SIGKILLed (it
/// could not remove its own). Best effort: a cgroup that still has processes (EBUSY), or
/// that another jacamar-auth removes first (ENOENT), is left alone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((pid, start)) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.split_once('.'))
            .and_then(|(p, t)| Some((p.parse::<i32>().ok()?, t.parse::<u64>().ok()?)))
        else {
            continue;
        };
        if super::procfs::start_time(pid) != Some(start) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| with_path(e, path))
}

fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast look at /sys/fs/cgroup{,/unified} names a mount that mountinfo lists as
    /// cgroup2 (when it names any: not every test host has cgroup v2).
    #[test]
    fn the_usual_place_is_a_cgroup2_mount_of_mountinfo() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cgroup2: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .collect();
        match cgroup2_at_usual_place() {
            Some(p) => assert!(cgroup2.contains(&p), "{p:?} not in {cgroup2:?}"),
            None => assert!(
                !cgroup2.iter().any(|p| p == Path::new("/sys/fs/cgroup")
                    || p == Path::new("/sys/fs/cgroup/unified")),
                "{cgroup2:?}"
            ),
        }
    }

    #[test]
    fn finds_the_cgroup2_mount_and_our_path() {
        let mi = "25 1 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                  35 25 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("25 1 0:22 / /x rw - cgroup c rw\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/a\n0::/system.slice/gitlab-runner.service\n").as_deref(),
            Some("system.slice/gitlab-runner.service")
        );
        assert_eq!(own_cgroup("0::/\n").as_deref(), Some(""));
        assert_eq!(own_cgroup("4:memory:/a\n"), None);
    }
}
