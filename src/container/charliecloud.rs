//! The Charliecloud run mechanism (Charliecloud 0.31): `ch-image pull` as the job's user into
//! a per-job storage, `ch-convert` to a directory image, `ch-run` of the runner's script in
//! it (docs/containers-facts.md §4 has the measured facts).
//!
//! * State: `/tmp/jacamar-ch-<uid>/<job id>/` (0700, the user's, made and checked as podman's
//!   is: [`super::private_dir`]): `storage/` (ch-image's, `--storage` and
//!   `CH_IMAGE_STORAGE`), `img/` (the directory image), `env` and `ca.pem`. Node-local: the
//!   storage holds a full unpacked copy per job, and ch-run's binds need mount points in it.
//! * Pull: `ch-image --no-cache pull` (no git build cache, so a fresh account needs no
//!   committer identity; every stage asks the registry: ch-image has no cached path). The
//!   credential for the image's registry goes in ch-image's environment
//!   (`CH_IMAGE_USERNAME`/`CH_IMAGE_PASSWORD`, with `--auth`), never on a command line; stdin
//!   is /dev/null (ch-image would prompt). TLS is verified against `REQUESTS_CA_BUNDLE`: the
//!   system bundle plus `/etc/containers/certs.d/HOST:PORT/ca.crt` when there (ch-image does
//!   not read certs.d itself; `SSL_CERT_FILE` is not honoured).
//! * Image: a directory (`ch-convert -i ch-image -o dir`), made fresh for every stage and run
//!   `-w` (read-write): ch-run 0.31 has no `--write-fake`; a job-private copy written by the
//!   stage and replaced at the next one is what `--write-fake`'s discarded overlay gives
//!   upstream. SquashFS is not used: it needs FUSE for ordinary users (`/dev/fuse` is 0600
//!   on this machine kind) and `mksquashfs` took 15.8 s per image here against 1-2.3 s for a
//!   directory.
//! * Run: `ch-run` execs the script's bash (same pid, same process group, no pid namespace):
//!   the stage is supervised exactly as the shell executor's bash, its group signalled.
//! * Cleanup: the state directory removed (every file is the user's: no subordinate ids).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{private_dir, ContainerError, Image};
use crate::config::General;
use crate::job::RegistryCredential;

/// Where the per-user directories of per-job Charliecloud state live (node-local).
pub const STATE_ROOT: &str = "/tmp";

/// The configuration key naming the directory of the tools (for messages).
pub const APPLICATION_PATH_KEY: &str = "[general.charliecloud] application_path";

/// Where the registries' CAs are (podman's layout, read for ch-image too).
pub const CERTS_D: &str = "/etc/containers/certs.d";

/// The system CA bundles, the first one present is used (Debian, then RHEL's).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The tools of the mechanism.
pub const TOOLS: [&str; 3] = ["ch-image", "ch-convert", "ch-run"];

/// One job's Charliecloud: the tools, its per-job state and the environment its commands get.
#[derive(Debug, Clone)]
pub struct Charliecloud {
    ch_image: PathBuf,
    ch_convert: PathBuf,
    ch_run: PathBuf,
    uid: u32,
    state: PathBuf,
    env: Vec<(String, String)>,
}

/// The per-job state directory of `uid`'s job `job_id`.
pub fn state_dir(uid: u32, job_id: u64) -> PathBuf {
    Path::new(STATE_ROOT)
        .join(format!("jacamar-ch-{uid}"))
        .join(job_id.to_string())
}

/// `tool` as the job finds it: in `[general.charliecloud] application_path` (a directory),
/// else on the job's `search` PATH.
pub fn find_tool(general: &General, tool: &str, search: &str) -> Result<PathBuf, ContainerError> {
    match &general.charliecloud.application_path {
        Some(dir) => {
            let p = dir.join(tool);
            if is_executable(&p) {
                Ok(p)
            } else {
                Err(ContainerError::ChToolMissing {
                    tool: tool.to_string(),
                    where_: format!(
                        "no executable {} in {APPLICATION_PATH_KEY} = {:?}",
                        p.display(),
                        dir.display().to_string()
                    ),
                })
            }
        }
        None => {
            crate::shell::find_on_path(tool, search).ok_or_else(|| ContainerError::ChToolMissing {
                tool: tool.to_string(),
                where_: format!(
                    "not on the job's PATH ({search}) and {APPLICATION_PATH_KEY} is unset"
                ),
            })
        }
    }
}

impl Charliecloud {
    /// The job's Charliecloud for the account `uid` with the job's environment `job_env`
    /// (its `PATH` finds the tools when `application_path` is unset, and the python3 that
    /// runs ch-image).
    pub fn new(
        general: &General,
        uid: u32,
        job_id: u64,
        job_env: &[(String, String)],
    ) -> Result<Charliecloud, ContainerError> {
        let search = crate::jobenv::search_path(job_env);
        let [ch_image, ch_convert, ch_run] = TOOLS.map(|t| find_tool(general, t, search));
        let state = state_dir(uid, job_id);
        let mut env: Vec<(String, String)> = job_env
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG"))
            .cloned()
            .collect();
        env.push((
            "CH_IMAGE_STORAGE".into(),
            state.join("storage").display().to_string(),
        ));
        Ok(Charliecloud {
            ch_run: ch_run?,
            ch_image: ch_image?,
            ch_convert: ch_convert?,
            uid,
            state,
            env,
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The directory image of the stage.
    pub fn image_dir(&self) -> PathBuf {
        self.state.join("img")
    }

    pub fn ch_run(&self) -> &Path {
        &self.ch_run
    }

    pub fn ch_image(&self) -> &Path {
        &self.ch_image
    }

    /// Make the job's state directory (and the per-user one above it) if missing; an
    /// existing one must be a real directory of ours, closed to others.
    pub fn ensure_state(&self) -> Result<(), ContainerError> {
        let user_dir = self.state.parent().unwrap_or(Path::new(STATE_ROOT));
        private_dir(user_dir, self.uid)?;
        private_dir(&self.state, self.uid)
    }

    /// Write `content` to `name` in the job's state directory, 0600.
    pub fn write_private(&self, name: &str, content: &[u8]) -> Result<PathBuf, ContainerError> {
        super::write_private(&self.state, name, content)
    }

    fn command(&self, program: &Path, args: &[String]) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.state)
            .stdin(Stdio::null());
        c
    }

    /// `ch-image --no-cache pull` of `image` into the job's storage, with `cred` (for the
    /// image's registry) in the environment and `ca_bundle` as `REQUESTS_CA_BUNDLE`.
    pub fn pull_command(
        &self,
        image: &Image,
        cred: Option<&RegistryCredential>,
        ca_bundle: Option<&Path>,
    ) -> std::process::Command {
        let mut c = self.command(
            &self.ch_image,
            &pull_args(&self.state, image, cred.is_some()),
        );
        if let Some(cred) = cred {
            c.env("CH_IMAGE_USERNAME", &cred.username)
                .env("CH_IMAGE_PASSWORD", &cred.password);
        }
        if let Some(b) = ca_bundle {
            c.env("REQUESTS_CA_BUNDLE", b);
        }
        c
    }

    /// `ch-convert` of the pulled `image` to the directory image (which must not exist).
    pub fn convert_command(&self, image: &Image) -> std::process::Command {
        self.command(
            &self.ch_convert,
            &[
                // A shell script: short options only.
                "-i".into(),
                "ch-image".into(),
                "-o".into(),
                "dir".into(),
                image.name.clone(),
                self.image_dir().display().to_string(),
            ],
        )
    }

    /// `ch-run` with `args` (see [`run_args`]); its own environment is ours (`USER` is
    /// needed by ch-run itself), the container's only what `--set-env` gives.
    pub fn run_command(&self, args: &[String]) -> std::process::Command {
        self.command(&self.ch_run, args)
    }

    /// The CA bundle for ch-image when `registry` has a CA in [`CERTS_D`]: the system bundle
    /// and that CA in the job's `ca.pem`. `None`: no such CA (ch-image's own default, the
    /// system store).
    pub fn ca_bundle(&self, registry: &str) -> Result<Option<PathBuf>, ContainerError> {
        let ca = Path::new(CERTS_D).join(registry).join("ca.crt");
        let Ok(site) = std::fs::read(&ca) else {
            return Ok(None);
        };
        let mut bundle = SYSTEM_BUNDLES
            .iter()
            .find_map(|b| std::fs::read(b).ok())
            .unwrap_or_default();
        if !bundle.ends_with(b"\n") && !bundle.is_empty() {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(&site);
        self.write_private("ca.pem", &bundle).map(Some)
    }

    /// The stage's directory image removed (before a new one is converted).
    pub fn remove_image(&self) -> Result<(), ContainerError> {
        remove_tree(&self.image_dir()).map_err(|e| ContainerError::StateDir {
            path: self.image_dir(),
            why: format!("cannot be removed: {e}"),
        })
    }
}

/// `ch-image`'s arguments: no build cache, the job's storage, `--auth` when a credential is
/// in the environment (without one ch-image would prompt).
pub fn pull_args(state: &Path, image: &Image, auth: bool) -> Vec<String> {
    let mut a = vec![
        "--no-cache".to_string(),
        format!("--storage={}", state.join("storage").display()),
        "pull".into(),
    ];
    if auth {
        a.push("--auth".into());
    }
    a.push(image.name.clone());
    a
}

/// What one stage's `ch-run` is made of.
#[derive(Debug)]
pub struct RunSpec<'a> {
    pub image_dir: &'a Path,
    /// Host directories bound at the same path (builds, cache, scripts).
    pub binds: &'a [PathBuf],
    pub workdir: &'a Path,
    /// The job's variables (`NAME=value` lines, 0600).
    pub env_file: &'a Path,
    /// Whether the image has its own environment (`/ch/environment`, from its config).
    pub image_env: bool,
    pub command: &'a [String],
}

/// `ch-run`'s arguments for `spec`: the image read-write (a job-private copy), the whole
/// host environment dropped, then the image's and the job's variables without `$`
/// expansion, the binds, the workdir. A bind path holding `:` cannot be written in `-b` and
/// is refused by the caller ([`bind_ok`]).
pub fn run_args(spec: &RunSpec<'_>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--write".into(),
        "--env-no-expand".into(),
        "--unset-env=*".into(),
    ];
    if spec.image_env {
        a.push("--set-env".into());
    }
    a.push(format!("--set-env={}", spec.env_file.display()));
    for b in spec.binds {
        a.push(format!("--bind={0}:{0}", b.display()));
    }
    a.push(format!("--cd={}", spec.workdir.display()));
    a.push(spec.image_dir.display().to_string());
    a.push("--".into());
    a.extend(spec.command.iter().cloned());
    a
}

/// Whether `p` can be a `ch-run -b SRC:DST` path (no `:`).
pub fn bind_ok(p: &Path) -> bool {
    !p.as_os_str().as_encoded_bytes().contains(&b':')
}

/// The credential for `registry` (`HOST[:PORT]`), the first of `creds` with that url.
pub fn credential_for<'a>(
    creds: &'a [RegistryCredential],
    registry: &str,
) -> Option<&'a RegistryCredential> {
    creds.iter().find(|c| c.url == registry)
}

/// Remove the job's state directory (a real directory of `uid` only). Returns what went
/// wrong.
pub fn cleanup(uid: u32, job_id: u64) -> Vec<String> {
    let dir = state_dir(uid, job_id);
    let ours = std::fs::symlink_metadata(&dir)
        .map(|m| m.is_dir() && m.uid() == uid)
        .unwrap_or(false);
    if !ours {
        return Vec::new();
    }
    match remove_tree(&dir) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("failed to remove {}: {e}", dir.display())],
    }
}

/// `dir` and everything in it removed; directories the job made unwritable (a read-write
/// image lets it) are opened for their owner first. Links are never followed.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    open_dirs(dir);
    std::fs::remove_dir_all(dir)
}

fn open_dirs(dir: &Path) {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                open_dirs(&e.path());
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image::checked("127.0.0.1:5043/ci/debian:bookworm", &[]).unwrap()
    }

    #[test]
    fn pull_args_never_carry_a_secret_and_skip_the_build_cache() {
        let a = pull_args(Path::new("/tmp/s"), &image(), true);
        assert_eq!(
            a,
            [
                "--no-cache",
                "--storage=/tmp/s/storage",
                "pull",
                "--auth",
                "127.0.0.1:5043/ci/debian:bookworm"
            ]
        );
        assert!(!pull_args(Path::new("/tmp/s"), &image(), false).contains(&"--auth".into()));
    }

    #[test]
    fn run_args_drop_the_host_environment_and_bind_the_job_dirs() {
        let binds = [PathBuf::from("/data/u")];
        let cmd = ["bash".to_string(), "/data/u/scripts/x".into()];
        let spec = RunSpec {
            image_dir: Path::new("/tmp/s/img"),
            binds: &binds,
            workdir: Path::new("/data/u"),
            env_file: Path::new("/tmp/s/env"),
            image_env: true,
            command: &cmd,
        };
        let a = run_args(&spec);
        assert_eq!(
            a,
            [
                "--write",
                "--env-no-expand",
                "--unset-env=*",
                "--set-env",
                "--set-env=/tmp/s/env",
                "--bind=/data/u:/data/u",
                "--cd=/data/u",
                "/tmp/s/img",
                "--",
                "bash",
                "/data/u/scripts/x"
            ]
        );
        assert!(bind_ok(Path::new("/data/u")) && !bind_ok(Path::new("/data/a:b")));
    }

    #[test]
    fn the_credential_is_the_images_registrys() {
        let c = |url: &str| RegistryCredential {
            url: url.into(),
            username: "u".into(),
            password: "p".into(),
        };
        let creds = [c("other:1"), c("127.0.0.1:5043")];
        assert_eq!(
            credential_for(&creds, image().registry()).map(|c| c.url.as_str()),
            Some("127.0.0.1:5043")
        );
        assert!(credential_for(&creds[..1], image().registry()).is_none());
    }

    #[test]
    fn a_tree_with_closed_directories_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("img");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&d).unwrap();
        assert!(!d.exists());
        remove_tree(&d).unwrap();
    }
}
