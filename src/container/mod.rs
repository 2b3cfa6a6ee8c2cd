//! A job's `image:` (issue 19): the user's stages run inside it, rootless, as the job's user.
//!
//! `[general] run_mechanism` chooses the tool: `"podman"` ([`podman`]) or `"charliecloud"`
//! ([`charliecloud`]). The image is
//! the job response's `image.name` (`image.entrypoint` with it), else the mechanism's
//! `default_image`; a job with neither runs on the host as before. Only the user's stages
//! ([`is_user_stage`]) go into the image; the runner's own stages (sources, caches,
//! artifacts) stay on the host.
//!
//! Everything from the job's side is checked here before it reaches a tool
//! ([`Image::checked`], [`checked_credentials`]): the image name and entrypoint, the
//! registry credentials (which never reach a command line: they go to a 0600 auth file,
//! see [`podman::auth_json`]). The measured facts behind the choices are in
//! docs/containers-facts.md.

pub mod charliecloud;
pub mod classify;
pub mod launcher;
pub mod launcher_ch;
pub mod podman;

use std::os::unix::fs::{DirBuilderExt, MetadataExt};

use crate::config::{General, RunMechanism};
use crate::job::{JobImage, RegistryCredential};

/// The longest image reference accepted (Distribution allows 255 for the repository path;
/// host, port, tag and digest come on top).
pub const MAX_IMAGE_NAME: usize = 1024;
/// At most this many entrypoint words, of at most [`MAX_ENTRYPOINT_WORD`] bytes.
pub const MAX_ENTRYPOINT_WORDS: usize = 64;
pub const MAX_ENTRYPOINT_WORD: usize = 4096;
/// At most this many registry credentials are used (more are ignored, with a warning).
pub const MAX_CREDENTIALS: usize = 32;
/// Bounds of one credential's fields.
pub const MAX_REGISTRY_URL: usize = 255;
pub const MAX_USERNAME: usize = 256;
pub const MAX_PASSWORD: usize = 4096;

/// The stages that run inside the image: the user's own scripts.
pub fn is_user_stage(stage: &str) -> bool {
    matches!(stage, "build_script" | "step_script" | "after_script")
}

/// A failure of the container part of a stage.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The tool is not there.
    #[error(
        "{what} was not found: {where_}; install it, or set [general.podman] application_path"
    )]
    ToolMissing { what: String, where_: String },
    /// A Charliecloud tool is not there.
    #[error("Charliecloud's {tool} was not found: {where_}; install Charliecloud, or set [general.charliecloud] application_path to the directory holding ch-run and ch-image")]
    ChToolMissing { tool: String, where_: String },
    /// The job's `image:` cannot be used (the message says why; no secret in it).
    #[error("the job's image \"{name}\" cannot be used: {why}")]
    BadImage { name: String, why: String },
    /// The job's per-job container state directory could not be made safely.
    #[error("container state directory {path}: {why}")]
    StateDir {
        path: std::path::PathBuf,
        why: String,
    },
    /// Writing one of the job's container files failed.
    #[error("failed to write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The tool failed for a reason of the node (the message names the key or account).
    #[error("{0}")]
    Tool(String),
    /// A podman command could not be started.
    #[error("failed to run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// The image a job runs in, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub entrypoint: Vec<String>,
}

impl Image {
    /// The job's image (`job`, from the job response) else the mechanism's `default_image`;
    /// `None` when neither is set (the job runs on the host).
    pub fn for_job(
        general: &General,
        job: Option<&JobImage>,
    ) -> Result<Option<Image>, ContainerError> {
        let default = match general.run_mechanism {
            None => return Ok(None),
            Some(RunMechanism::Podman) => general.podman.default_image.as_deref(),
            Some(RunMechanism::Charliecloud) => general.charliecloud.default_image.as_deref(),
        };
        match (job, default) {
            (Some(j), _) => Image::checked(&j.name, &j.entrypoint).map(Some),
            (None, Some(d)) => Image::checked(d, &[]).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// `name` and `entrypoint` within their bounds: the name a plain reference
    /// (`[A-Za-z0-9._/:@-]`, starting with a letter or digit: never an option to the tool),
    /// the entrypoint's words without NUL.
    pub fn checked(name: &str, entrypoint: &[String]) -> Result<Image, ContainerError> {
        let bad = |why: String| ContainerError::BadImage {
            name: crate::text::sanitize(&name.chars().take(200).collect::<String>()).into_owned(),
            why,
        };
        if name.len() > MAX_IMAGE_NAME {
            return Err(bad(format!(
                "the name is {} bytes, more than {MAX_IMAGE_NAME}",
                name.len()
            )));
        }
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let chars_ok = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c));
        if !first_ok || !chars_ok {
            return Err(bad(
                "an image reference has only letters, digits and . _ / : @ - and starts with a letter or digit".into(),
            ));
        }
        if entrypoint.len() > MAX_ENTRYPOINT_WORDS {
            return Err(bad(format!(
                "its entrypoint has {} words, more than {MAX_ENTRYPOINT_WORDS}",
                entrypoint.len()
            )));
        }
        if entrypoint
            .iter()
            .any(|w| w.len() > MAX_ENTRYPOINT_WORD || w.contains('\0'))
        {
            return Err(bad(format!(
                "an entrypoint word is longer than {MAX_ENTRYPOINT_WORD} bytes or holds a NUL"
            )));
        }
        Ok(Image {
            name: name.to_string(),
            entrypoint: entrypoint.to_vec(),
        })
    }

    /// The registry (`HOST[:PORT]`) the name points to: its first component when that has
    /// a `.` or `:` or is `localhost`, else Docker Hub (`docker.io`), as podman resolves it
    /// without search registries.
    pub fn registry(&self) -> &str {
        match self.name.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
            _ => "docker.io",
        }
    }

    /// The repository path: the name without the registry, tag and digest.
    pub fn repository(&self) -> String {
        let rest = match self.name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
            _ => self.name.as_str(),
        };
        let rest = rest.split('@').next().unwrap_or(rest);
        // A tag is after the last ':' of the last path component.
        match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
            _ => rest.to_string(),
        }
    }
}

/// The job's registry credentials that can be used: `url` a `HOST[:PORT]` (letters, digits,
/// `.-:[]`, at most [`MAX_REGISTRY_URL`]), a username without control characters (at most
/// [`MAX_USERNAME`]), a password of at most [`MAX_PASSWORD`] bytes; at most
/// [`MAX_CREDENTIALS`]. The others are left out, each with a warning naming its registry
/// (never the password).
pub fn checked_credentials(
    creds: &[RegistryCredential],
    warn: &mut dyn FnMut(&str),
) -> Vec<RegistryCredential> {
    let mut out = Vec::new();
    for c in creds {
        let url_ok = !c.url.is_empty()
            && c.url.len() <= MAX_REGISTRY_URL
            && c.url
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ".-:[]".contains(ch));
        let user_ok = c.username.len() <= MAX_USERNAME && !c.username.chars().any(char::is_control);
        let pass_ok = c.password.len() <= MAX_PASSWORD;
        if !(url_ok && user_ok && pass_ok) {
            warn(&format!(
                "jacamar: WARNING: the job's registry credential for {:?} is not usable (its url must be HOST[:PORT], its username and password of bounded length) and is left out",
                crate::text::sanitize(&c.url.chars().take(100).collect::<String>())
            ));
            continue;
        }
        if out.len() == MAX_CREDENTIALS {
            warn(&format!(
                "jacamar: WARNING: the job has more than {MAX_CREDENTIALS} registry credentials; the rest are left out"
            ));
            break;
        }
        out.push(c.clone());
    }
    out
}

/// Write `content` to `name` in `dir`, 0600, replacing a file there (never following a link).
pub(crate) fn write_private(
    dir: &std::path::Path,
    name: &str,
    content: &[u8],
) -> Result<std::path::PathBuf, ContainerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        f.write_all(content)
    };
    write().map_err(|source| ContainerError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `dir` as a private directory of `uid`: made 0700 when missing; when present, a real
/// directory (not a link) owned by `uid` with no access for group or others.
pub(crate) fn private_dir(dir: &std::path::Path, uid: u32) -> Result<(), ContainerError> {
    let bad = |why: String| ContainerError::StateDir {
        path: dir.to_path_buf(),
        why,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(format!("cannot be created: {e}"))),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !m.is_dir() {
        return Err(bad(
            "exists and is not a directory (a link?); remove it".into()
        ));
    }
    if m.uid() != uid {
        return Err(bad(format!(
            "belongs to uid {}, not the job's account (uid {uid}); remove it",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {:o}: other accounts can reach it; remove it",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_bounded_and_never_options() {
        for good in [
            "127.0.0.1:5043/ci/debian:bookworm",
            "debian:12",
            "registry.example.com/g/sub/img@sha256:0123abcd",
            "localhost/x",
        ] {
            Image::checked(good, &[]).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "-v/:/host",
            "--privileged",
            "a b",
            "img\n",
            "img;rm",
            "img$(x)",
        ] {
            assert!(Image::checked(bad, &[]).is_err(), "{bad:?} accepted");
        }
        assert!(Image::checked(&"a".repeat(MAX_IMAGE_NAME + 1), &[]).is_err());
        assert!(Image::checked("a", &["x\0y".into()]).is_err());
        assert!(Image::checked("a", &vec!["x".into(); MAX_ENTRYPOINT_WORDS + 1]).is_err());
        let e = Image::checked("bad name\x1b[31m", &[])
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\x1b'), "{e}");
    }

    #[test]
    fn registry_and_repository_of_a_name() {
        let i = |n: &str| Image::checked(n, &[]).unwrap();
        let a = i("127.0.0.1:5043/ci/debian:bookworm");
        assert_eq!(
            (a.registry(), a.repository().as_str()),
            ("127.0.0.1:5043", "ci/debian")
        );
        let b = i("debian:12");
        assert_eq!(
            (b.registry(), b.repository().as_str()),
            ("docker.io", "debian")
        );
        let c = i("reg.example.com/g/img@sha256:abcd");
        assert_eq!(
            (c.registry(), c.repository().as_str()),
            ("reg.example.com", "g/img")
        );
        let d = i("localhost:5000/g/img");
        assert_eq!(
            (d.registry(), d.repository().as_str()),
            ("localhost:5000", "g/img")
        );
    }

    #[test]
    fn credentials_are_bounded_and_warnings_never_show_the_password() {
        let c = |url: &str, user: &str, pass: &str| RegistryCredential {
            url: url.into(),
            username: user.into(),
            password: pass.into(),
        };
        let mut warnings = Vec::new();
        let got = checked_credentials(
            &[
                c("reg.example.com:5050", "gitlab-ci-token", "glcbt-good"),
                c("https://reg/", "u", "glcbt-secret1"),
                c("reg", "u\n", "glcbt-secret2"),
                c("reg", "u", &"p".repeat(MAX_PASSWORD + 1)),
            ],
            &mut |w| warnings.push(w.to_string()),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(warnings.len(), 3);
        assert!(
            warnings.iter().all(|w| !w.contains("glcbt-secret")),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_image_comes_from_the_job_else_the_default() {
        let mut g = crate::config::Config::from_str_named(
            "[general]\nexecutor = \"shell\"\ndata_dir = \"/d\"\n[auth]\ndownscope = \"none\"\n",
            "t",
        )
        .unwrap()
        .general;
        let job = JobImage {
            name: "reg/x:1".into(),
            entrypoint: vec![],
        };
        assert_eq!(
            Image::for_job(&g, Some(&job)).unwrap(),
            None,
            "no run_mechanism"
        );
        g.run_mechanism = Some(RunMechanism::Podman);
        assert_eq!(Image::for_job(&g, None).unwrap(), None);
        g.podman.default_image = Some("def:1".into());
        assert_eq!(Image::for_job(&g, None).unwrap().unwrap().name, "def:1");
        assert_eq!(
            Image::for_job(&g, Some(&job)).unwrap().unwrap().name,
            "reg/x:1"
        );
    }

    #[test]
    fn a_state_dir_of_another_account_or_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let d = tmp.path().join("s");
        private_dir(&d, me).unwrap();
        private_dir(&d, me).unwrap();
        let e = private_dir(&d, me + 1).unwrap_err().to_string();
        assert!(e.contains("not the job's account"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&d, me).unwrap_err().to_string();
        assert!(e.contains("other accounts"), "{e}");
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = private_dir(&link, me).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
