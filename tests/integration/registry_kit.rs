//! The container tests' kit (issue 19): the tools and the test image they need, and a local
//! registry with TLS and htpasswd auth whose password is the job token
//! (scripts/containers/registry.sh). Used by tests/integration/containers*.rs and, by
//! `#[path]`, by tests/e2e (the real GitLab Runner with `image:`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{require, require_root, require_tool, show};

pub(crate) const IMAGE_ARCHIVE: &str = "/var/cache/jacamar-rs/images/debian-bookworm-minbase.tar";
pub(crate) const MARKER: &str = "jacamar-rs test image";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containers")
}

/// Everything a container test needs, or false (a failure unless JACAMAR_TEST_ALLOW_SKIP=1).
pub(crate) fn ready() -> bool {
    if !require_root() {
        return false;
    }
    for tool in [
        "podman",
        "runc",
        "conmon",
        "docker-registry",
        "skopeo",
        "htpasswd",
        "newuidmap",
    ] {
        if !require_tool(tool) {
            return false;
        }
    }
    require(
        Path::new(IMAGE_ARCHIVE).is_file(),
        &format!("{IMAGE_ARCHIVE} is missing: run scripts/containers/setup.sh"),
    )
}

/// A registry of this test: started on a free port with `token` as the password, stopped
/// (and its certs.d entry removed) when dropped.
pub(crate) struct Registry {
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub(crate) host: String,
}

impl Registry {
    pub(crate) fn start(token: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("jrs-c19-reg")
            .tempdir_in("/var/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(scripts().join("registry.sh"))
            .arg("start")
            .arg(dir.path())
            .env("JRS_REGISTRY_PORT", port.to_string())
            .env("JRS_REGISTRY_PASSWORD", token)
            .output()
            .unwrap();
        assert!(out.status.success(), "registry.sh start: {}", show(&out));
        Registry {
            dir,
            host: format!("127.0.0.1:{port}"),
        }
    }

    pub(crate) fn image(&self) -> String {
        format!("{}/ci/debian:bookworm", self.host)
    }

    #[allow(dead_code)]
    pub(crate) fn missing(&self) -> String {
        format!("{}/ci/missing:bookworm", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("registry.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

pub(crate) fn token() -> String {
    format!("glcbt-c19-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b)
}
