//! `jacamar-auth validate --runner-config`'s checker (`check_runner_config`, what
//! `check_runner_config_file` runs on the file's text) on arbitrary text, against a fixed
//! machine: `jacamar-auth` installed at its documented path, `configs/minimal.toml` and
//! `configs/full.toml` as the jacamar configurations. A runner file is either accepted or
//! refused with problems, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use jacamar::config::runner::{check_runner_config, ExecProblem, RunnerHost};
use jacamar::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

const AUTH: &str = "/opt/jacamar/bin/jacamar-auth";
const MINIMAL: &str = include_str!("../../configs/minimal.toml");
const FULL: &str = include_str!("../../configs/full.toml");

struct Host;

impl RunnerHost for Host {
    fn executable(&self, path: &Path) -> Result<PathBuf, ExecProblem> {
        match path.to_str() {
            Some(AUTH) => Ok(PathBuf::from(AUTH)),
            // A symlink to it, as packages may install.
            Some("/usr/bin/jacamar-auth") => Ok(PathBuf::from(AUTH)),
            Some("/usr/bin/true") => Ok(PathBuf::from("/usr/bin/true")),
            Some("/tmp/not-exec") => Err(ExecProblem::NotExecutable(0o644)),
            _ => Err(ExecProblem::NotFound),
        }
    }

    fn jacamar_config(&self, path: &Path) -> Result<Config, ConfigError> {
        let text = match path.to_str() {
            Some("/etc/gitlab-runner/jacamar.toml") => MINIMAL,
            Some("/etc/jacamar/full.toml") => FULL,
            // Unreadable: the file's own text is the error's.
            _ => "this is not TOML",
        };
        Config::from_str_named(text, &path.display().to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match check_runner_config(text, "config.toml", &Host) {
        Ok(summaries) => {
            for s in &summaries {
                let _ = s.describe();
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            let _ = e.to_string();
        }
    }
});
