//! Test kit for `[batch] scheduler_bin`: a dir of wrapper scripts that log every call of a
//! scheduler tool (`<unix time> <tool> <args>` in `calls.log`) before running the real (or
//! fake) one, or a variant of it; and a data dir shared by several harnesses, so that the
//! jobs of one user on one host share their polls through the user's base dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::Harness;

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
