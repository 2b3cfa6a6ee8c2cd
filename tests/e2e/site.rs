//! A site as an admin sets it up: the real `gitlab-runner run --config <file>
//! --working-directory <dir>` with `executor = "custom"` wired to `jacamar-auth` exactly as
//! README.md's "Deployment" section says, a jacamar configuration downscoping with setuid to
//! a `useradd -m` account, and the fake GitLab of [`crate::coordinator`].

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth_kit::{claims, ensure_user, mint, pki};
use crate::coordinator::{Coordinator, Final, RUNNER_TOKEN};
use crate::harness::{require, require_root, require_tool, AUTH};

/// The two runner releases the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V18_0_5,
    V16_9_2,
}

impl Version {
    /// The environment variable naming this release's binary (set by scripts/test.sh from
    /// scripts/gitlab-runner.sh).
    pub fn env_var(self) -> &'static str {
        match self {
            Version::V18_0_5 => "JACAMAR_E2E_RUNNER_V18_0_5",
            Version::V16_9_2 => "JACAMAR_E2E_RUNNER_V16_9_2",
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Version::V18_0_5 => "v18.0.5",
            Version::V16_9_2 => "v16.9.2",
        }
    }

    /// v17.0+ reads the build's exit code from `BUILD_EXIT_CODE_FILE`; v16.9.2 only knows the
    /// driver's exit status (`BUILD_FAILURE_EXIT_CODE` -> 1).
    pub fn reports_script_exit_code(self) -> bool {
        self == Version::V18_0_5
    }
}

/// The job's user (a `useradd -m` account), shared by the suite's tests.
pub const JOB_USER: &str = "jrs_e2e_alice";
/// The service account of the caps deployment.
pub const SVC_USER: &str = "jrs_e2e_svc";
/// Another local account (the command-line spy).
pub const SPY_USER: &str = "jrs_e2e_spy";
/// The project every job belongs to.
pub const PROJECT: &str = "group/project";

/// The runner binary for `v`, or None (after failing loudly unless
/// `JACAMAR_TEST_ALLOW_SKIP=1`) when the variable is unset or names no executable.
#[track_caller]
pub fn runner_bin(v: Version) -> Option<PathBuf> {
    let var = v.env_var();
    let p = std::env::var_os(var).map(PathBuf::from);
    let ok = p.as_ref().is_some_and(|p| {
        p.is_file() && std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    });
    if require(
        ok,
        &format!(
            "this test needs the GitLab Runner {} binary in {var} (scripts/test.sh sets it from \
             `scripts/gitlab-runner.sh {}`; got {p:?})",
            v.tag(),
            v.tag()
        ),
    ) {
        p
    } else {
        None
    }
}

/// The checks every end-to-end test starts with: root, git, the runner binary, and
/// `gitlab-runner` on the job's PATH for the helper commands. None: skip (allowed).
#[track_caller]
pub fn prerequisites(v: Version) -> Option<PathBuf> {
    if !require_root() || !require_tool("git") {
        return None;
    }
    let bin = runner_bin(v)?;
    let helper = Path::new("/usr/local/bin/gitlab-runner");
    if !require(
        helper.exists(),
        "the job's helper commands need `gitlab-runner` on the job user's PATH: scripts/test.sh \
         links /usr/local/bin/gitlab-runner to the v18.0.5 build, as a site installs the runner",
    ) {
        return None;
    }
    Some(bin)
}

/// How a site is set up.
#[derive(Debug, Clone)]
pub struct SiteOpts {
    /// `[general] executor`.
    pub executor: &'static str,
    /// The runner talks HTTPS to GitLab with the site CA in `tls-ca-file`.
    pub https: bool,
    /// The runner runs as the caps service account [`SVC_USER`] with a
    /// `cap_setuid,cap_setgid=ep` copy of jacamar-auth (no root anywhere).
    pub caps: bool,
    /// `[general] kill_timeout`.
    pub kill_timeout: &'static str,
    /// Extra lines of `[general]` and `[auth]`.
    pub general: String,
    pub auth: String,
    /// Extra lines of the runner's global section.
    pub runner_global: String,
}

impl Default for SiteOpts {
    fn default() -> Self {
        SiteOpts {
            executor: "shell",
            https: false,
            caps: false,
            kill_timeout: "3s",
            general: String::new(),
            auth: String::new(),
            runner_global: String::new(),
        }
    }
}

pub struct Site {
    pub version: Version,
    pub bin: PathBuf,
    pub tmp: tempfile::TempDir,
    pub coord: Coordinator,
    pub user: nix::unistd::User,
    pub svc: Option<nix::unistd::User>,
    pub data_dir: PathBuf,
    pub jacamar_toml: PathBuf,
    pub runner_toml: PathBuf,
    /// The runner's `--working-directory`.
    pub runner_dir: PathBuf,
    pub auth: PathBuf,
    pub opts: SiteOpts,
    runner: Option<Child>,
    repo: std::cell::OnceCell<Repo>,
    /// Held by a caps site for its life: its `data_dir = "$HOME"` puts both releases' jobs
    /// in the same builds dir (same user, runner token and concurrent id 0), so the two caps
    /// scenarios must not run at once (they raced on `.git/index.lock`).
    _home: Option<std::sync::MutexGuard<'static, ()>>,
}

/// See [`Site::_home`].
static CAPS_HOME: std::sync::Mutex<()> = std::sync::Mutex::new(());

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// A job id unique to this test run (other runs' jobs may still be on the machine).
fn next_job_id() -> u64 {
    std::process::id() as u64 * 1000 + NEXT_JOB.fetch_add(1, Ordering::SeqCst)
}

/// What a test asks of one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: &'static str,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// (key, value, file-type).
    pub variables: Vec<(String, String, bool)>,
    /// The job's timeout in seconds (`runner_info.timeout`, `CI_JOB_TIMEOUT`).
    pub timeout: u64,
    pub artifacts: Value,
    pub cache: Value,
    pub dependencies: Value,
    /// The GitLab login in the id_token; None: no id_token at all.
    pub login: Option<String>,
    /// The job response's `image` (`{"name": ""}`: none) and `credentials`, as GitLab sends
    /// them.
    pub image: Value,
    pub credentials: Value,
    /// The job token; None: one made up for the job (see [`Site::queue`]).
    pub token: Option<String>,
}

impl JobSpec {
    pub fn new(name: &'static str, script: &[&str]) -> JobSpec {
        JobSpec {
            name,
            script: script.iter().map(|s| s.to_string()).collect(),
            after_script: Vec::new(),
            variables: Vec::new(),
            timeout: 600,
            artifacts: json!([]),
            cache: json!([]),
            dependencies: json!([]),
            login: Some(JOB_USER.into()),
            image: json!({"name": ""}),
            credentials: json!([]),
            token: None,
        }
    }

    pub fn after(mut self, script: &[&str]) -> JobSpec {
        self.after_script = script.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn var(mut self, k: &str, v: &str) -> JobSpec {
        self.variables.push((k.into(), v.into(), false));
        self
    }

    pub fn file_var(mut self, k: &str, v: &str) -> JobSpec {
        self.variables.push((k.into(), v.into(), true));
        self
    }
}

/// A queued job: its id and token.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub id: u64,
    pub token: String,
}

/// A bare repository with one commit on `main`, ready for git's dumb HTTP protocol.
pub struct Repo {
    pub sha: String,
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Site {
    /// A site for runner `v` (`bin`), with the job user, the fake GitLab, both
    /// configuration files; the runner is not started yet.
    pub fn new(v: Version, bin: PathBuf, opts: SiteOpts) -> Site {
        let user = ensure_user(JOB_USER, &[], "/bin/bash");
        let tmp = tempfile::Builder::new()
            .prefix("jrs-e2e-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner_dir = tmp.path().join("runner");
        std::fs::create_dir(&runner_dir).unwrap();
        std::fs::set_permissions(&runner_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let coord = Coordinator::start();
        let mut site = Site {
            version: v,
            bin,
            jacamar_toml: tmp.path().join("jacamar.toml"),
            runner_toml: runner_dir.join("config.toml"),
            auth: PathBuf::from(AUTH),
            tmp,
            coord,
            user,
            svc: None,
            data_dir,
            runner_dir,
            opts,
            runner: None,
            repo: std::cell::OnceCell::new(),
            _home: None,
        };
        if site.opts.caps {
            // A panicking holder poisons the lock; the home dir is still free once it is gone.
            site._home = Some(CAPS_HOME.lock().unwrap_or_else(|e| e.into_inner()));
            site.setup_caps();
        }
        site.write_configs();
        site
    }

    /// The caps deployment: the service account owns the runner's dir and config, runs a
    /// `cap_setuid,cap_setgid=ep` copy of jacamar-auth (root:svc 0750, `jacamar` beside it).
    fn setup_caps(&mut self) {
        let svc = ensure_user(SVC_USER, &[], "/bin/bash");
        let bin = self.tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let auth = bin.join("jacamar-auth");
        std::fs::copy(AUTH, &auth).unwrap();
        std::fs::copy(
            Path::new(AUTH).with_file_name("jacamar"),
            bin.join("jacamar"),
        )
        .unwrap();
        nix::unistd::chown(&auth, Some(nix::unistd::Uid::from_raw(0)), Some(svc.gid)).unwrap();
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o750)).unwrap();
        sh(Command::new("setcap")
            .arg("cap_setuid,cap_setgid=ep")
            .arg(&auth));
        nix::unistd::chown(&self.runner_dir, Some(svc.uid), Some(svc.gid)).unwrap();
        self.auth = auth;
        self.svc = Some(svc);
    }

    /// The URL the runner uses for GitLab.
    pub fn url(&self) -> &str {
        if self.opts.https {
            &self.coord.https_url
        } else {
            &self.coord.http_url
        }
    }

    fn write_configs(&self) {
        let o = &self.opts;
        // The caps account cannot create directories owned by others: $HOME.
        let (data_dir, root_dir_creation) = if o.caps {
            ("$HOME".to_string(), "")
        } else {
            (
                self.data_dir.display().to_string(),
                "root_dir_creation = true\n",
            )
        };
        let batch = if o.executor == "shell" {
            String::new()
        } else {
            "[batch]\ncommand_delay = \"1s\"\n".to_string()
        };
        let jacamar = format!(
            "[general]\nexecutor = \"{}\"\ndata_dir = \"{data_dir}\"\nkill_timeout = \"{}\"\n\
             gitlab_server = \"{}\"\ntls-ca-file = \"{}\"\njwt_env_variable = \"SITE_ID_TOKEN\"\n{}\n\
             [auth]\ndownscope = \"setuid\"\n{root_dir_creation}{}\n{batch}",
            o.executor,
            o.kill_timeout,
            self.coord.https_url,
            pki().ca_pem.display(),
            o.general,
            o.auth,
        );
        std::fs::write(&self.jacamar_toml, jacamar).unwrap();
        std::fs::set_permissions(&self.jacamar_toml, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let auth = self.auth.display();
        let cfg = self.jacamar_toml.display();
        let tls = if o.https {
            format!("  tls-ca-file = \"{}\"\n", pki().ca_pem.display())
        } else {
            String::new()
        };
        let runner = format!(
            "concurrent = 4\ncheck_interval = 1\n{global}\n\
             [[runners]]\n  name = \"e2e-{tag}\"\n  url = \"{url}\"\n  id = 1\n  token = \"{RUNNER_TOKEN}\"\n\
             {tls}  executor = \"custom\"\n\
             \x20 [runners.custom]\n\
             \x20   config_exec  = \"{auth}\"\n\
             \x20   config_args  = [\"config\", \"--configuration\", \"{cfg}\"]\n\
             \x20   prepare_exec = \"{auth}\"\n\
             \x20   prepare_args = [\"prepare\"]\n\
             \x20   run_exec     = \"{auth}\"\n\
             \x20   run_args     = [\"run\"]\n\
             \x20   cleanup_exec = \"{auth}\"\n\
             \x20   cleanup_args = [\"cleanup\", \"--configuration\", \"{cfg}\"]\n\
             \x20   graceful_kill_timeout = 30\n\
             \x20   force_kill_timeout = 10\n",
            global = o.runner_global,
            tag = self.version.tag(),
            url = self.url(),
        );
        std::fs::write(&self.runner_toml, runner).unwrap();
        std::fs::set_permissions(&self.runner_toml, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        if let Some(svc) = &self.svc {
            nix::unistd::chown(&self.runner_toml, Some(svc.uid), Some(svc.gid)).unwrap();
        }
    }

    /// `jacamar-auth validate` of both files, as README's step 3: must be clean.
    pub fn validate(&self) {
        let out = Command::new(AUTH)
            .args(["validate", "--configuration"])
            .arg(&self.jacamar_toml)
            .arg("--runner-config")
            .arg(&self.runner_toml)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `gitlab-runner verify` against the fake GitLab (`POST /api/v4/runners/verify`): the
    /// runner's token is valid.
    pub fn verify(&self) {
        let out = Command::new(&self.bin)
            .args(["verify", "--config"])
            .arg(&self.runner_toml)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .current_dir(&self.runner_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "gitlab-runner verify: {text}");
        assert_eq!(self.coord.verify_hits(), 1, "gitlab-runner verify: {text}");
        assert!(text.contains("is valid"), "gitlab-runner verify: {text}");
    }

    /// The project's repository: a bare one at `/group/project.git` with `files` committed
    /// on `main`, made on the first call (by [`Site::queue`] with a README when the test
    /// made none).
    pub fn repo(&self, files: &[(&str, &str)]) -> &Repo {
        self.repo.get_or_init(|| self.make_repo(files))
    }

    fn make_repo(&self, files: &[(&str, &str)]) -> Repo {
        make_repo(self.tmp.path(), &self.coord, files)
    }

    /// Queue `spec` for the project's repository ([`Site::repo`]) and return it.
    pub fn queue(&self, spec: &JobSpec) -> JobRef {
        let sha = self.repo(&[("README.md", "e2e\n")]).sha.clone();
        let id = next_job_id();
        let token = spec
            .token
            .clone()
            .unwrap_or_else(|| format!("glcbt-e2e{id}_{}Tk", std::process::id()));
        let job = job_response(spec, id, &token, self.url(), &self.coord.https_url, &sha);
        self.coord.queue(job);
        JobRef { id, token }
    }

    /// Start `gitlab-runner run` (as root, or as the caps service account).
    pub fn start_runner(&mut self) {
        let log = std::fs::File::create(self.tmp.path().join("runner.log")).unwrap();
        let mut c = Command::new(&self.bin);
        c.args(["run", "--config"])
            .arg(&self.runner_toml)
            .arg("--working-directory")
            .arg(&self.runner_dir)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("XDG_CACHE_HOME", self.tmp.path().join("cache"))
            .current_dir(&self.runner_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        match &self.svc {
            Some(svc) => {
                let cache = self.tmp.path().join("cache");
                std::fs::create_dir_all(&cache).unwrap();
                nix::unistd::chown(&cache, Some(svc.uid), Some(svc.gid)).unwrap();
                c.env("HOME", &svc.dir)
                    .uid(svc.uid.as_raw())
                    .gid(svc.gid.as_raw());
            }
            None => {
                c.env("HOME", "/root");
            }
        }
        self.runner = Some(c.spawn().unwrap());
    }

    pub fn runner_pid(&self) -> i32 {
        self.runner.as_ref().unwrap().id() as i32
    }

    /// The runner's own log so far.
    pub fn runner_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("runner.log")).unwrap_or_default()
    }

    /// Everything a failure message needs: the job log and the runner's.
    pub fn explain(&self, job: &JobRef) -> String {
        format!(
            "--- job {} log\n{}\n--- runner {} log\n{}\n--- requests\n{}",
            job.id,
            self.coord.trace(job.id),
            self.version.tag(),
            self.runner_log(),
            self.coord.request_log()
        )
    }

    /// Wait for `job`'s final update (panics with both logs after `limit`).
    pub fn wait_final(&self, job: &JobRef, limit: Duration) -> Final {
        match self.coord.wait_final(job.id, limit) {
            Some(f) => {
                if std::env::var_os("JACAMAR_E2E_SHOW").is_some() {
                    eprintln!("final {f:?}\n{}", self.explain(job));
                }
                f
            }
            None => panic!(
                "job {} got no final update within {limit:?}\n{}",
                job.id,
                self.explain(job)
            ),
        }
    }

    /// Send `sig` to the runner.
    pub fn signal_runner(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.runner_pid()), sig).unwrap();
    }

    /// Wait up to `limit` for the runner to exit; its status.
    pub fn wait_runner(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.runner.as_mut()?;
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stop the runner (SIGTERM, then SIGKILL after 15 s) and check that no process of the
    /// job user is left.
    pub fn stop(&mut self) {
        if let Some(child) = self.runner.as_mut() {
            if child.try_wait().unwrap().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if self.wait_runner(Duration::from_secs(15)).is_none() {
            if let Some(child) = self.runner.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The job user's base dir (`<data_dir>/<user>`, or `$HOME/.jacamar-ci` for the caps
    /// deployment's `data_dir = "$HOME"`).
    pub fn base_dir(&self) -> PathBuf {
        match &self.svc {
            Some(_) => self.user.dir.join(".jacamar-ci"),
            None => self.data_dir.join(&self.user.name),
        }
    }
}

/// A bare repository in `dir` (`project.git`, made from `dir/repo-work`) with `files`
/// committed on `main`, served by `coord` at `/group/project.git` (git's dumb HTTP protocol).
pub fn make_repo(dir: &Path, coord: &Coordinator, files: &[(&str, &str)]) -> Repo {
    let work = dir.join("repo-work");
    std::fs::create_dir_all(&work).unwrap();
    let git = |at: &Path, args: &[&str]| {
        sh(Command::new("git")
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@example.com",
            ])
            .args(args)
            .current_dir(at)
            .env("HOME", dir))
    };
    git(&work, &["init", "-q"]);
    for (name, text) in files {
        std::fs::write(work.join(name), text).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "e2e"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let bare = dir.join("project.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["update-server-info"]);
    coord.add_repo(PROJECT, &bare);
    Repo { sha }
}

/// The job response GitLab sends the runner for `spec` (job `id` with job token `token`):
/// the project's repository at `url` (the runner's GitLab URL) with `sha` on `main`, the
/// usual `CI_*` variables, and an id_token (`SITE_ID_TOKEN`, issued by `jwt_issuer`, signed
/// with the test PKI's first key) unless `spec.login` is None.
pub fn job_response(
    spec: &JobSpec,
    id: u64,
    token: &str,
    url: &str,
    jwt_issuer: &str,
    sha: &str,
) -> Value {
    let (scheme, host) = url.split_once("://").unwrap();
    let repo_url = format!("{scheme}://gitlab-ci-token:{token}@{host}/{PROJECT}.git");
    let v = |k: &str, val: &str, public: bool, masked: bool| json!({"key": k, "value": val, "public": public, "masked": masked, "file": false, "raw": false});
    let mut vars = vec![
        v("CI_JOB_ID", &id.to_string(), true, false),
        v("CI_JOB_TOKEN", token, false, true),
        v("CI_JOB_NAME", spec.name, true, false),
        v("CI_JOB_STAGE", "test", true, false),
        v("CI_PROJECT_ID", "77", true, false),
        v("CI_PROJECT_PATH", PROJECT, true, false),
        v("CI_PROJECT_NAME", "project", true, false),
        v("CI_PROJECT_NAMESPACE", "group", true, false),
        v("CI_SERVER_URL", url, true, false),
        v("CI_REPOSITORY_URL", &repo_url, false, false),
        v("CI_PIPELINE_ID", "500", true, false),
        v("CI_PIPELINE_SOURCE", "push", true, false),
        v("CI_COMMIT_REF_NAME", "main", true, false),
        v(
            "GITLAB_USER_LOGIN",
            spec.login.as_deref().unwrap_or(JOB_USER),
            true,
            false,
        ),
    ];
    if let Some(login) = &spec.login {
        let t = mint(&pki().keys[0], &claims(jwt_issuer, id, login));
        vars.push(v("SITE_ID_TOKEN", &t, false, true));
    }
    for (k, val, file) in &spec.variables {
        vars.push(json!({"key": k, "value": val, "public": false, "masked": false, "file": file, "raw": false}));
    }
    vars.push(v("CI_COMMIT_SHA", sha, true, false));
    let step = |name: &str, script: &[String], when: &str| json!({"name": name, "script": script, "timeout": spec.timeout, "when": when, "allow_failure": false});
    let mut steps = vec![step("script", &spec.script, "on_success")];
    if !spec.after_script.is_empty() {
        steps.push(step("after_script", &spec.after_script, "always"));
    }
    let zeros = "0000000000000000000000000000000000000000";
    json!({
        "id": id,
        "token": token,
        "allow_git_fetch": true,
        "job_info": {"name": spec.name, "stage": "test", "project_id": 77, "project_name": "project"},
        "git_info": {
            "repo_url": repo_url,
            "ref": "main",
            "sha": sha,
            "before_sha": zeros,
            "ref_type": "branch",
            "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
            "depth": 0,
        },
        "runner_info": {"timeout": spec.timeout},
        "variables": vars,
        "steps": steps,
        "image": spec.image,
        "services": [],
        "artifacts": spec.artifacts,
        "cache": spec.cache,
        "credentials": spec.credentials,
        "dependencies": spec.dependencies,
        "features": {
            "trace_sections": true,
            "failure_reasons": ["unknown_failure", "script_failure", "api_failure",
                "stuck_or_timeout_failure", "runner_system_failure", "job_execution_timeout"],
        },
    })
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(child) = self.runner.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
            }
        }
    }
}

impl Site {
    /// A directory every account may write (sticky), for the jobs' markers.
    pub fn scratch(&self) -> PathBuf {
        let d = self.tmp.path().join("scratch");
        if !d.exists() {
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        d
    }

    /// The processes left of `job`: the job user's processes with `CI_JOB_ID=<id>` in their
    /// environment (everything the job's shells started) or a working directory below this
    /// site's job directories (the job's shells themselves).
    pub fn leftovers(&self, job: &JobRef) -> Vec<(i32, String)> {
        let mut out = job_processes(&self.user, job.id);
        let base = self.base_dir();
        for pid in crate::harness::all_pids() {
            if out.iter().any(|(p, _)| *p == pid) {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            let Ok(md) = std::fs::metadata(format!("/proc/{pid}")) else {
                continue;
            };
            if md.uid() != self.user.uid.as_raw() || !crate::harness::alive(pid) {
                continue;
            }
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                continue;
            };
            if cwd.starts_with(&base) {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
        out
    }

    /// Wait up to `limit` until no process of `job` is left; what is left after that.
    pub fn wait_no_leftovers(&self, job: &JobRef, limit: Duration) -> Vec<(i32, String)> {
        let until = Instant::now() + limit;
        loop {
            let left = self.leftovers(job);
            if left.is_empty() || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `<builds dir>/group/project.tmp`, the runner's temporary project dir (file-type
    /// variables), for the standard builds dir of concurrent id 0.
    pub fn project_tmp_dir(&self) -> PathBuf {
        self.base_dir()
            .join("builds")
            .join(crate::coordinator::short_token())
            .join("000")
            .join(format!("{PROJECT}.tmp"))
    }

    /// `<base>/scripts/<runner>/000/group/project/<job id>`: removed by jacamar's cleanup.
    pub fn scripts_dir(&self, job: &JobRef) -> PathBuf {
        self.base_dir()
            .join("scripts")
            .join(crate::coordinator::short_token())
            .join("000")
            .join(PROJECT)
            .join(job.id.to_string())
    }
}

/// Another local account reading every process's command line (all bash builtins) until
/// stopped: what a user sharing the host sees.
pub struct Spy {
    child: Child,
    stop: PathBuf,
    log: PathBuf,
}

impl Spy {
    pub fn start(site: &Site) -> Spy {
        let spy = ensure_user(SPY_USER, &[], "/bin/bash");
        let dir = site.scratch();
        let stop = dir.join("stop-spy");
        let ready = dir.join("spy-ready");
        let log = dir.join("spy.log");
        let script = format!(
            "declare -A seen; n=0\n\
             while [ ! -e {stop} ]; do\n\
               for f in /proc/[0-9]*/cmdline; do\n\
                 mapfile -d '' -t a < \"$f\" 2>/dev/null || continue\n\
                 [ ${{#a[@]}} -gt 0 ] && seen[\"${{a[*]}}\"]=1\n\
               done\n\
               n=$((n+1)); [ $n = 1 ] && : > {ready}\n\
             done\n\
             printf '%s\\n' \"${{!seen[@]}}\" > {log}\n\
             echo \"scans: $n\" >> {log}\n",
            stop = stop.display(),
            ready = ready.display(),
            log = log.display()
        );
        let child = Command::new("/bin/bash")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .uid(spy.uid.as_raw())
            .gid(spy.gid.as_raw())
            .spawn()
            .unwrap();
        assert!(
            crate::harness::wait_for(Duration::from_secs(30), || ready.exists()),
            "the spy never finished a scan"
        );
        Spy { child, stop, log }
    }

    /// Stop the spy; every distinct command line it saw.
    pub fn finish(mut self) -> Vec<String> {
        std::fs::write(&self.stop, "").unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "spy: {st:?}");
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Processes of `user` whose environment holds `CI_JOB_ID=<id>` (the job's processes), with
/// their command lines.
pub fn job_processes(user: &nix::unistd::User, id: u64) -> Vec<(i32, String)> {
    let needle = format!("CI_JOB_ID={id}");
    let mut out = Vec::new();
    for pid in crate::harness::all_pids() {
        let Ok(md) = std::fs::metadata(format!("/proc/{pid}")) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if md.uid() != user.uid.as_raw() || !crate::harness::alive(pid) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|e| e == needle.as_bytes()) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((pid, cmd));
        }
    }
    out
}
