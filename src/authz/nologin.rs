//! `enforce_nologin`: refuse jobs while a pam_nologin(8) file exists.

use std::path::{Path, PathBuf};

/// The files pam_nologin looks at.
pub const FILES: &[&str] = &["/etc/nologin", "/var/run/nologin"];

/// The first of `files` that exists, with its first line (the admin's reason), if any.
pub fn active(files: &[&Path]) -> Option<(PathBuf, String)> {
    files.iter().find(|p| p.exists()).map(|p| {
        let why = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default();
        (p.to_path_buf(), why)
    })
}

/// [`active`] on the system's files.
pub fn system() -> Option<(PathBuf, String)> {
    let files: Vec<&Path> = FILES.iter().map(Path::new).collect();
    active(&files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_file_and_its_reason() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        assert!(active(&[&a, &b]).is_none());
        std::fs::write(&b, "maintenance until 5pm\nmore\n").unwrap();
        let (p, why) = active(&[&a, &b]).unwrap();
        assert_eq!(p, b);
        assert_eq!(why, "maintenance until 5pm");
    }
}
