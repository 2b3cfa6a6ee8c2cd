//! The runner's files for one job: its private temp dir and the files in it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::SimError;

pub(super) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SimError {
    move |source| SimError::Io { what, source }
}

/// `bytes` random bytes as hex, from the system's random source (falls back to time and pid).
pub(super) fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    jacamar::hex::encode(&buf)
}

pub(super) fn write_private(path: &Path, content: &[u8], mode: u32) -> Result<(), SimError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("failed to create {}", path.display())))?;
    f.write_all(content)
        .map_err(io_err(format!("failed to write {}", path.display())))
}

/// Creates `<TMPDIR>/custom-executorNNNN`, mode 0700.
pub(super) fn make_tmp_dir() -> Result<PathBuf, SimError> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let n = u64::from_str_radix(&random_hex(4), 16).unwrap_or(0) % 10_000_000_000;
        let path = base.join(format!("custom-executor{n}"));
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(SimError::Io {
                    what: format!("failed to create the runner temp dir in {}", base.display()),
                    source: e,
                })
            }
        }
    }
    Err(SimError::Io {
        what: format!("failed to create the runner temp dir in {}", base.display()),
        source: last.unwrap_or_else(|| std::io::Error::other("too many collisions")),
    })
}
