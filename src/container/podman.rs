//! The podman run mechanism: rootless podman as the job's user, with every piece of podman
//! state per job on node-local disk (docs/containers-facts.md, "Design points").
//!
//! * State: `/tmp/jacamar-podman-<uid>/<job id>/` (0700, the user's, checked: never a link,
//!   never another account's). `XDG_RUNTIME_DIR` is its `xdg/`, `--root` its `storage/`,
//!   `--runroot` `xdg/run/`; the rootless pause process is then the job's own
//!   (`xdg/libpod/tmp/pause.pid`) and goes at cleanup. The job's data directory may be on a
//!   shared file system where overlay storage does not work: /tmp is the node's.
//! * Global options: `--storage-driver=overlay` (native rootless overlay; fuse needs a
//!   usable /dev/fuse), `--cgroup-manager=cgroupfs` and `--events-backend=file` (no systemd
//!   session under a setuid downscope), `--log-level=error` (podman warns about a private
//!   `/` on every call), `--runtime` from `[general.podman] runtime`, else [`default_runtime`].
//! * A stage: `podman create --replace` (it pulls: `--pull=always --tls-verify=true`, the
//!   credentials in a 0600 auth file removed right after) then `podman start --attach`
//!   supervised like the shell executor's bash; a stop is `podman kill --signal`, the
//!   kill_timeout escalation `podman rm -f -t 0` ([`Terminator`]). A signalled foreground
//!   `podman run` exits 0 before the container ends, so it is not used.
//! * Cleanup: `podman rm -a -f -t 0`, `podman system reset -f` (the storage's files belong
//!   to subordinate ids: only podman can remove them), the pause process killed, the
//!   directory removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;

use super::{private_dir, ContainerError, Image};
use crate::config::General;
use crate::job::RegistryCredential;
use crate::supervisor::{Reason, Terminator};

/// Where the per-user directories of per-job podman state live (node-local).
pub const STATE_ROOT: &str = "/tmp";

/// The configuration key naming the podman binary (for messages).
pub const APPLICATION_PATH_KEY: &str = "[general.podman] application_path";

/// The variables of the job's environment podman's container gets (besides `HOME`): the
/// CI variables come from the runner's script itself; host paths (`PATH`, askpass helpers)
/// mean nothing inside the image.
const ENV_PASSED: &[&str] = &["USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM"];

/// The OCI runtime podman is told to use when the site sets none: `runc` on a cgroup v1
/// "hybrid" host (a cgroup2 at `/sys/fs/cgroup/unified`), where crun 1.8 refuses every
/// container ("cgroups in hybrid mode not supported"), else podman's own default.
pub fn default_runtime() -> Option<&'static str> {
    let is_cgroup2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    };
    (!is_cgroup2("/sys/fs/cgroup") && is_cgroup2("/sys/fs/cgroup/unified")).then_some("runc")
}

/// One job's podman: the binary, its per-job state and the environment its commands get.
#[derive(Debug, Clone)]
pub struct Podman {
    program: PathBuf,
    uid: u32,
    job_id: u64,
    state: PathBuf,
    runtime: Option<String>,
    env: Vec<(String, String)>,
}

impl Podman {
    /// The job's podman for the account `uid` with the job's environment `job_env` (its
    /// `PATH` finds podman when `[general.podman] application_path` is unset).
    pub fn new(
        general: &General,
        uid: u32,
        job_id: u64,
        job_env: &[(String, String)],
    ) -> Result<Podman, ContainerError> {
        let search = crate::jobenv::search_path(job_env);
        let program = match &general.podman.application_path {
            Some(p) => {
                if !is_executable(p) {
                    return Err(ContainerError::ToolMissing {
                        what: format!("{APPLICATION_PATH_KEY} = {:?}", p.display().to_string()),
                        where_: "no executable file there".into(),
                    });
                }
                p.clone()
            }
            None => crate::shell::find_on_path("podman", search).ok_or_else(|| {
                ContainerError::ToolMissing {
                    what: "podman".into(),
                    where_: format!(
                        "not on the job's PATH ({search}) and {APPLICATION_PATH_KEY} is unset"
                    ),
                }
            })?,
        };
        let state = Path::new(STATE_ROOT)
            .join(format!("jacamar-podman-{uid}"))
            .join(job_id.to_string());
        let mut env: Vec<(String, String)> = job_env
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG"))
            .cloned()
            .collect();
        env.push((
            "XDG_RUNTIME_DIR".into(),
            state.join("xdg").display().to_string(),
        ));
        Ok(Podman {
            program,
            uid,
            job_id,
            state,
            runtime: general
                .podman
                .runtime
                .clone()
                .or_else(|| default_runtime().map(str::to_string)),
            env,
        })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The job's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The container of `stage`: `jacamar-<job id>-<stage>`.
    pub fn container_name(&self, stage: &str) -> String {
        format!("jacamar-{}-{stage}", self.job_id)
    }

    /// podman's global options for this job.
    pub fn global_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--root={}", self.state.join("storage").display()),
            format!("--runroot={}", self.state.join("xdg/run").display()),
            "--storage-driver=overlay".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--log-level=error".into(),
        ];
        if let Some(rt) = &self.runtime {
            a.push(format!("--runtime={rt}"));
        }
        a
    }

    /// A podman command with the global options, then `args`; the environment only ours.
    pub fn command(&self, args: &[String]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(self.global_args())
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.state)
            .stdin(Stdio::null());
        c
    }

    /// Make the job's state directory (and the per-user one above it) if missing; an
    /// existing one must be a real directory of ours, closed to others.
    pub fn ensure_state(&self) -> Result<(), ContainerError> {
        let user_dir = self.state.parent().unwrap_or(Path::new(STATE_ROOT));
        for dir in [
            user_dir.to_path_buf(),
            self.state.clone(),
            self.state.join("xdg"),
        ] {
            private_dir(&dir, self.uid)?;
        }
        Ok(())
    }

    /// Whether the job ever made state here (cleanup has something to do).
    pub fn state_exists(&self) -> bool {
        std::fs::symlink_metadata(&self.state)
            .map(|m| m.is_dir() && m.uid() == self.uid)
            .unwrap_or(false)
    }

    /// Write `content` to `name` in the job's state directory, 0600 (replacing it).
    pub fn write_private(&self, name: &str, content: &[u8]) -> Result<PathBuf, ContainerError> {
        super::write_private(&self.state, name, content)
    }

    /// Remove everything the job left: its containers, the storage, the pause process and
    /// the directory. Returns what went wrong (the cleanup goes on past each).
    pub fn cleanup(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.state_exists() {
            return problems;
        }
        let steps: [&[&str]; 2] = [
            &["rm", "--all", "--force", "--time", "0"],
            &["system", "reset", "--force"],
        ];
        for step in steps {
            let args: Vec<String> = step.iter().map(|s| s.to_string()).collect();
            match self.command(&args).stdout(Stdio::null()).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "podman {} failed: {}",
                    step.join(" "),
                    super::classify::last_error_line(&String::from_utf8_lossy(&o.stderr))
                )),
                Err(e) => problems.push(format!("failed to run podman {}: {e}", step.join(" "))),
            }
        }
        self.kill_pause_process();
        if let Err(e) = std::fs::remove_dir_all(&self.state) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("failed to remove {}: {e}", self.state.display()));
            }
        }
        problems
    }

    /// The rootless pause process of this job's podman (`xdg/libpod/tmp/pause.pid`), killed.
    fn kill_pause_process(&self) {
        let file = self.state.join("xdg/libpod/tmp/pause.pid");
        let Ok(text) = std::fs::read_to_string(&file) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            if pid > 1 {
                // Only our own processes can be signalled as the user: a forged pid file
                // reaches nothing else.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// What one stage's `podman create` is made of.
#[derive(Debug)]
pub struct CreateSpec<'a> {
    pub name: &'a str,
    pub image: &'a Image,
    /// Host directories bound at the same path (builds, cache, scripts).
    pub binds: &'a [PathBuf],
    pub workdir: &'a Path,
    /// The job's home: a private tmpfs there unless a bind covers it.
    pub home: &'a Path,
    pub env_file: &'a Path,
    pub auth_file: Option<&'a Path>,
    /// `[general.podman] custom_options`, after ours (so the admin's win).
    pub custom_options: &'a [String],
    /// The command the container runs (under podman's `--init`).
    pub command: &'a [String],
}

/// The arguments of `podman create` (after the global options) for `spec`. A bind path
/// holding `,` cannot be written in `--mount` and is refused by the caller.
pub fn create_args(spec: &CreateSpec<'_>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "--replace".into(),
        "--quiet".into(),
        format!("--name={}", spec.name),
        "--userns=keep-id".into(),
        "--network=host".into(),
        "--pull=always".into(),
        "--tls-verify=true".into(),
        "--init".into(),
        format!("--env-file={}", spec.env_file.display()),
        format!("--workdir={}", spec.workdir.display()),
    ];
    if let Some(f) = spec.auth_file {
        a.push(format!("--authfile={}", f.display()));
    }
    if !spec.binds.iter().any(|b| spec.home.starts_with(b)) {
        a.push(format!("--tmpfs={}:rw,exec,mode=1777", spec.home.display()));
    }
    for b in spec.binds {
        a.push(format!("--mount=type=bind,src={0},dst={0}", b.display()));
    }
    a.extend(spec.custom_options.iter().cloned());
    if !spec.image.entrypoint.is_empty() {
        let json = serde_json::to_string(&spec.image.entrypoint).unwrap_or_else(|_| "[]".into());
        a.push(format!("--entrypoint={json}"));
    }
    a.push(spec.image.name.clone());
    a.extend(spec.command.iter().cloned());
    a
}

/// podman's auth file (containers-auth.json) for `creds`: `{"auths": {URL: {"auth":
/// base64(user:password)}}}`. It goes to a 0600 file, never to a command line.
pub fn auth_json(creds: &[RegistryCredential]) -> String {
    use base64::Engine;
    let mut auths = serde_json::Map::new();
    for c in creds {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        auths.insert(c.url.clone(), serde_json::json!({ "auth": token }));
    }
    serde_json::json!({ "auths": auths }).to_string()
}

/// The `--env-file` of the container: `HOME`, then the variables of [`ENV_PASSED`] and
/// `LC_*` from `job_env`. A value with a newline cannot be written in podman's format and
/// is left out; the names left out are returned.
pub fn env_file(job_env: &[(String, String)], home: &Path) -> (String, Vec<String>) {
    let mut text = format!("HOME={}\n", home.display());
    let mut left_out = Vec::new();
    for (k, v) in job_env {
        if !(ENV_PASSED.contains(&k.as_str()) || (k.starts_with("LC_") && k.len() > 3)) {
            continue;
        }
        if v.contains('\n') || v.contains('\0') {
            left_out.push(k.clone());
            continue;
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    (text, left_out)
}

/// Stops a stage's container from outside: the supervisor's TERM becomes `podman kill
/// --signal`, its kill_timeout escalation `podman rm -f -t 0` (and SIGKILL to the attached
/// `podman start`'s group). The podman commands run on a thread (the supervisor's calls
/// must not block); a refused `podman kill` (not running yet) is tried again for 3 s.
pub struct PodmanTerminator {
    pub podman: Podman,
    pub name: String,
    pub pgid: nix::unistd::Pid,
}

/// How often a `podman kill` refused (the container not running yet: a stop that came
/// while `podman start` was still starting it) is tried again, 100 ms apart.
const KILL_TRIES: u32 = 30;

impl PodmanTerminator {
    /// Run podman with `args` on a thread of its own, `tries` times until it succeeds.
    fn spawn(&self, args: Vec<String>, tries: u32) {
        let podman = self.podman.clone();
        std::thread::spawn(move || {
            for i in 0..tries.max(1) {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                let mut c = podman.command(&args);
                c.stdout(Stdio::null()).stderr(Stdio::null());
                match c.status() {
                    Ok(st) if st.success() => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("jacamar: failed to run podman {}: {e}", args.join(" "));
                        return;
                    }
                }
            }
        });
    }
}

impl Terminator for PodmanTerminator {
    fn terminate(&mut self, signal: Signal, _reason: Reason) {
        self.spawn(
            vec![
                "kill".into(),
                format!("--signal={}", signal.as_str()),
                self.name.clone(),
            ],
            KILL_TRIES,
        );
    }

    fn kill(&mut self) {
        self.spawn(
            vec![
                "rm".into(),
                "--force".into(),
                "--time=0".into(),
                self.name.clone(),
            ],
            1,
        );
        crate::supervisor::group::signal_group(self.pgid, Signal::SIGKILL);
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image::checked(
            "127.0.0.1:5043/ci/debian:bookworm",
            &["/bin/sh".into(), "-c".into()],
        )
        .unwrap()
    }

    #[test]
    fn create_args_bind_the_job_dirs_and_never_carry_a_secret() {
        let img = image();
        let binds = [PathBuf::from("/data/u")];
        let opts = ["--cpus=2".to_string()];
        let spec = CreateSpec {
            name: "jacamar-7-build_script",
            image: &img,
            binds: &binds,
            workdir: Path::new("/data/u"),
            home: Path::new("/home/u"),
            env_file: Path::new("/tmp/s/env"),
            auth_file: Some(Path::new("/tmp/s/auth.json")),
            custom_options: &opts,
            command: &["bash".into(), "/data/u/scripts/x/build_script".into()],
        };
        let a = create_args(&spec);
        for want in [
            "--userns=keep-id",
            "--network=host",
            "--pull=always",
            "--tls-verify=true",
            "--init",
            "--authfile=/tmp/s/auth.json",
            "--env-file=/tmp/s/env",
            "--mount=type=bind,src=/data/u,dst=/data/u",
            "--tmpfs=/home/u:rw,exec,mode=1777",
            "--entrypoint=[\"/bin/sh\",\"-c\"]",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing in {a:?}");
        }
        let n = a.len();
        assert_eq!(
            a[n - 3..],
            [
                "127.0.0.1:5043/ci/debian:bookworm",
                "bash",
                "/data/u/scripts/x/build_script"
            ]
        );
        // The admin's options come after ours, before the image.
        assert_eq!(a[n - 5], "--cpus=2");
        // A home under a bind gets no tmpfs over it.
        let under = CreateSpec {
            home: Path::new("/data/u/home"),
            ..spec
        };
        assert!(!create_args(&under).iter().any(|x| x.starts_with("--tmpfs")));
    }

    #[test]
    fn auth_json_is_podmans_format() {
        let j = auth_json(&[RegistryCredential {
            url: "reg:5050".into(),
            username: "gitlab-ci-token".into(),
            password: "glcbt-x".into(),
        }]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            v["auths"]["reg:5050"]["auth"],
            "Z2l0bGFiLWNpLXRva2VuOmdsY2J0LXg="
        );
    }

    #[test]
    fn env_file_has_home_and_plain_variables_only() {
        let env = vec![
            ("HOME".to_string(), "/host/home".to_string()),
            ("PATH".to_string(), "/host/bin".to_string()),
            ("USER".to_string(), "u".to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
            ("GIT_ASKPASS".to_string(), "/x".to_string()),
            ("TERM".to_string(), "a\nb".to_string()),
        ];
        let (text, left) = env_file(&env, Path::new("/home/u"));
        assert_eq!(text, "HOME=/home/u\nUSER=u\nLC_ALL=C\n");
        assert_eq!(left, ["TERM"]);
    }
}
