//! Test kit for the schedulers the batch tests run against: a `[batch] scheduler_bin` dir of
//! wrapper scripts that log every call of a scheduler tool (`<unix time> <tool> <args>` in
//! `calls.log`) before running the real (or fake) one, or a variant of it ([`SchedBin`],
//! [`slurm_wrappers`]); the FAKE Flux, LSF and Cobalt CLIs of tests/fakes/ where the job's
//! user can run them ([`fake_clis`]); a prepared batch harness of the CI user
//! ([`batch_harness`]); and a data dir shared by several harnesses, so that the jobs of one
//! user on one host share their polls through the user's base dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::batch_slurm::{ci_user, require_slurm};
use crate::harness::{show, Harness};

/// A `scheduler_bin` dir (world-readable, in /tmp, removed on drop).
pub struct SchedBin {
    dir: tempfile::TempDir,
}

impl SchedBin {
    /// One wrapper per `(tool, body)`: the script logs the call, then runs `body` (bash;
    /// `"$@"` are the tool's arguments), e.g. [`exec_real`].
    pub fn new(prefix: &str, tools: &[(&str, String)]) -> SchedBin {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.path().join("calls.log");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        for (tool, body) in tools {
            let text = format!(
                "#!/bin/bash\nprintf '%s %s %s\\n' \"$(date +%s.%N)\" {tool} \"$*\" >>{log}\n{body}",
                log = log.display()
            );
            let p = dir.path().join(tool);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        SchedBin { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every call logged: (time, tool, arguments).
    pub fn calls(&self) -> Vec<(f64, String, String)> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut w = l.splitn(3, ' ');
                let t = w.next()?.parse().ok()?;
                Some((t, w.next()?.to_string(), w.next().unwrap_or("").to_string()))
            })
            .collect()
    }
}

/// A wrapper body that runs `real` with the tool's arguments.
pub fn exec_real(real: &Path) -> String {
    format!("exec {} \"$@\"\n", real.display())
}

/// The absolute path of `tool` on PATH; fails the test naming it when there is none.
pub fn which(tool: &str) -> PathBuf {
    let o = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "{tool} not found (scripts/test.sh installs Slurm and slurm-wlm-torque)"
    );
    PathBuf::from(p)
}

/// A 1777 data dir for several harnesses, in a world-readable temp dir (kept alive by the
/// returned guard).
pub fn shared_data_dir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
    (tmp, data)
}

/// Point `h`'s configuration at the data dir `shared` instead of its own.
pub fn use_data_dir(h: &mut Harness, shared: &Path) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let own = format!("data_dir = \"{}\"", h.data_dir.display());
    assert!(text.contains(&own), "{text}");
    let text = text.replace(&own, &format!("data_dir = \"{}\"", shared.display()));
    std::fs::write(&h.config_path, text).unwrap();
    h.data_dir = shared.to_path_buf();
}

/// The Slurm tools the driver runs.
pub const SLURM_TOOLS: [&str; 5] = ["sbatch", "squeue", "sacct", "scontrol", "scancel"];

/// A `scheduler_bin` dir of wrappers of the real Slurm tools: each logs its call and runs
/// the real one ([`exec_real`]), but `squeue` runs `squeue(the real squeue)`.
pub fn slurm_wrappers(prefix: &str, squeue: impl Fn(&Path) -> String) -> SchedBin {
    let tools: Vec<(&str, String)> = SLURM_TOOLS
        .into_iter()
        .map(|tool| match tool {
            "squeue" => (tool, squeue(&which(tool))),
            _ => (tool, exec_real(&which(tool))),
        })
        .collect();
    SchedBin::new(prefix, &tools)
}

/// A Slurm harness of the CI user whose scheduler commands go through `bin`, with
/// `command_delay`, and (when given) the data dir `shared` instead of its own, prepared.
pub fn slurm_harness(bin: &Path, delay: &str, shared: Option<&Path>) -> Harness {
    require_slurm();
    let batch = format!(
        "command_delay = \"{delay}\"\nnfs_timeout = \"20s\"\nscheduler_bin = \"{}\"",
        bin.display()
    );
    batch_harness("slurm", &batch, shared)
}

/// A harness of `executor` for the CI user (`jacamar-ci`), `kill_timeout = "5s"`, with the
/// `[batch]` lines `batch` and (when given) the data dir `shared` instead of its own,
/// prepared.
pub fn batch_harness(executor: &str, batch: &str, shared: Option<&Path>) -> Harness {
    let mut h = Harness::batch(executor, &ci_user(), "kill_timeout = \"5s\"", batch);
    if let Some(shared) = shared {
        use_data_dir(&mut h, shared);
    }
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// The FAKE scheduler CLIs (tests/fakes/) copied to `<into>/fakes`, which the job's user
/// can read and run (the checkout may not be; Cobalt's qsub/qstat/qdel are in
/// `fakes/cobalt`), and their empty job table `<into>/state` (`FAKE_SCHED_DIR`), the CI
/// user's: (fakes, state).
pub fn fake_clis(into: &Path) -> (PathBuf, PathBuf) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let (p, dest) = (e.path(), to.join(e.file_name()));
            if p.is_dir() {
                copy_dir(&p, &dest);
            } else {
                std::fs::copy(&p, &dest).unwrap();
            }
        }
    }
    let fakes = into.join("fakes");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes"),
        &fakes,
    );
    let user = ci_user();
    let pw = nix::unistd::User::from_name(&user)
        .unwrap()
        .unwrap_or_else(|| panic!("user {user} does not exist (scripts/test.sh creates it)"));
    let state = into.join("state");
    std::fs::create_dir(&state).unwrap();
    nix::unistd::chown(&state, Some(pw.uid), Some(pw.gid)).unwrap();
    (fakes, state)
}
