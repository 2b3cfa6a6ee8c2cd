//! Helpers of the unit tests.

/// The opt-out variable of [`require`]; CI never sets it.
pub const ALLOW_SKIP_VAR: &str = "JACAMAR_TEST_ALLOW_SKIP";

/// A unit test that needs something (`ok` false: root, a program) fails without it, unless
/// `JACAMAR_TEST_ALLOW_SKIP=1` is set; then it says so and the caller returns.
#[track_caller]
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var(ALLOW_SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED ({ALLOW_SKIP_VAR}=1): {what}");
        return false;
    }
    panic!("{what}; run as root via scripts/test.sh, or set {ALLOW_SKIP_VAR}=1 to skip");
}

/// A unit test that needs root starts with `if !require_root() { return; }` (and is
/// ignored unless the `root-tests` feature is on): without root it fails, naming what it
/// needs (see [`require`]).
#[track_caller]
pub fn require_root() -> bool {
    require(nix::unistd::geteuid().is_root(), "this test needs root")
}

/// A temporary directory holding one file `name` with `contents`, and the file's path. Keep
/// the directory (`let (_dir, path) = ...`, not `let (_, path)`): dropping it removes both.
#[track_caller]
pub fn temp_file(
    name: &str,
    contents: impl AsRef<[u8]>,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}
