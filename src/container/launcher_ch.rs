//! A job's image inside a batch allocation with Charliecloud: the shell code the submitted
//! script runs on the compute node in place of the stage's shell (as [`super::launcher`]
//! does for podman, whose common start, [`super::launcher::prelude`], it shares). The node
//! cannot be assumed to have `jacamar`, so the script runs the tools itself with the host
//! path's arguments ([`charliecloud::pull_args`], [`charliecloud::run_args`]), every word
//! single-quoted.
//!
//! * State: the job's own, node-local, `/tmp/jacamar-ch-<uid>/<job id>/`
//!   ([`charliecloud::state_dir`]), made by the script under `umask 077`; an existing one must
//!   be a real directory of the user's closed to others (else the stage fails naming it).
//! * Credentials: the driver writes the credential for the image's registry to a 0600 file
//!   in the job's scripts dir (the username, then the password, a line each); the script
//!   reads it with bash's `read` (no process) and removes it at once, before the pull, whatever
//!   comes next; the two values go into `ch-image`'s environment only
//!   (`CH_IMAGE_USERNAME`/`CH_IMAGE_PASSWORD`, with `--auth`), never on a command line nor
//!   in the script's text.
//! * TLS: `REQUESTS_CA_BUNDLE` as the host path builds it, made on the node (its trust, its
//!   `/etc/containers/certs.d/HOST:PORT/ca.crt`): the system bundle and that CA in the
//!   state dir's `ca.pem`; no such CA: ch-image's default (the system store).
//! * A failed pull: its stderr goes to the error file in the scripts dir and the stage ends
//!   with [`CREATE_FAILED`]; the driver classifies it once the job has ended
//!   (`classify::classify_ch_image`), so the job log says what the host path says. A failed
//!   `ch-convert` the same (its text is the node's fault).
//! * The job's variables: the driver's 0600 env file in the scripts dir is moved into the
//!   state dir (node-local, the user's) before `ch-run` reads it (`--set-env=FILE`), with
//!   the node's scheduler variables (`SLURM_*` and the others of
//!   [`super::launcher::SCHEDULER_ENV`], as podman's `--env=PREFIX*`) added.
//! * Run: `ch-run` in the foreground, in the job's process group: it execs the script's
//!   bash (no pid namespace), so the scheduler's TERM to the job reaches the script and its
//!   trap as in a plain batch stage, and kill_timeout is the plain batch stage's (the
//!   scheduler's kill after it). The launcher traps TERM only to outlive it: a TERM during
//!   the pull or the conversion ends the stage (143) once the tool has ended (the scheduler
//!   signalled it too).
//! * End: an EXIT trap removes the state directory (the storage, the image) in a session
//!   of its own, so that a scheduler's kill of the job's process group meanwhile does not
//!   cut it short (every file is the user's: no subordinate ids, no daemon to stop).

use std::path::{Path, PathBuf};

use super::charliecloud::{self, RunSpec, CERTS_D};
use super::launcher::{
    comment_text, fill, path_word, prelude, quoted, CREATE_FAILED, SCHEDULER_ENV,
};
use super::Image;
use crate::config::General;
use crate::shell::sh_quote;

/// The system CA bundles, the first one present on the node is used (as on the host).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// What the Charliecloud launcher is made of.
pub struct ChLaunch<'a> {
    pub general: &'a General,
    pub uid: u32,
    pub job_id: u64,
    pub image: &'a Image,
    /// The 0600 file with the registry credential (username line, password line), if any.
    pub auth_file: Option<&'a Path>,
    /// The 0600 env file of the job's variables (moved into the state dir by the script).
    pub env_file: &'a Path,
    /// Host directories bound at the same path.
    pub binds: &'a [PathBuf],
    pub workdir: &'a Path,
    /// The job's home (made inside the job's image copy, as on the host).
    pub home: &'a Path,
    /// The command run by `ch-run`.
    pub command: &'a [String],
    /// Where a failed pull's (or conversion's) stderr goes.
    pub error_file: &'a Path,
}

/// The tool `tool` as the node finds it: in `[general.charliecloud] application_path`, else
/// by its name on the job's PATH there.
pub fn node_tool(general: &General, tool: &str) -> PathBuf {
    match &general.charliecloud.application_path {
        Some(dir) => dir.join(tool),
        None => PathBuf::from(tool),
    }
}

/// The credential file's text for `username`/`password`: `None` when either holds a line
/// break or a NUL (bash's `read` could not give it back whole).
pub fn auth_text(username: &str, password: &str) -> Option<String> {
    let bad = |s: &str| s.contains(['\n', '\r', '\0']);
    if bad(username) || bad(password) {
        return None;
    }
    Some(format!("{username}\n{password}\n"))
}

const LAUNCHER: &str = r#"(
# jacamar: the stage runs in image @IMAGE_TEXT@ with Charliecloud on this node, its state
# the job's own (docs/containers.md, "Charliecloud with batch executors").
@PRELUDE@__jc_state=@STATE@
__jc_img="$__jc_state/img"
for __jc_t in @CH_IMAGE@ @CH_CONVERT@ @CH_RUN@; do
    command -v "$__jc_t" >/dev/null 2>&1 ||
        __jl_fail "Charliecloud's $__jc_t was not found on node $(hostname): install Charliecloud there, or set [general.charliecloud] application_path"
done
__jl_state_dirs "$__jc_state"
# The cleanup, in a session of its own (see the module's doc): directories the job made
# unwritable in its image copy are opened first.
__jc_cleanup() {
    [ -d "$__jc_state" ] && [ ! -L "$__jc_state" ] || return 0
    setsid -w bash -c 'rm -rf -- "$1" 2>/dev/null && exit 0
        chmod -R u+rwx -- "$1" 2>/dev/null; rm -rf -- "$1" 2>/dev/null' \
        jacamar-ch-cleanup "$__jc_state"
}
trap __jc_cleanup EXIT
__jc_stops=0
trap '__jc_stops=$((__jc_stops + 1))' TERM INT HUP
__jc_stopped() {
    [ "$__jc_stops" = 0 ] && return 0
    rm -f @REMOVE@ "$__jl_err"
    echo "jacamar: stopped while $1 image $__jl_image" >&2
    exit 143
}
export CH_IMAGE_STORAGE="$__jc_state/storage"
__jc_user= __jc_pass=
@READ_AUTH@__jc_ca=
__jc_site=@SITE_CA@
if [ -f "$__jc_site" ]; then
    __jc_ca="$__jc_state/ca.pem"
    for __jc_b in @BUNDLES@; do
        if [ -f "$__jc_b" ]; then cat -- "$__jc_b" >"$__jc_ca" && echo >>"$__jc_ca"; break; fi
    done
    cat -- "$__jc_site" >>"$__jc_ca"
fi
[ -z "$__jc_ca" ] || export REQUESTS_CA_BUNDLE="$__jc_ca"
@AUTH_ENV@@CH_IMAGE@ @PULL@ </dev/null >/dev/null 2>"$__jl_err"
__jc_rc=$?
__jc_user= __jc_pass=
unset REQUESTS_CA_BUNDLE
__jc_stopped "ch-image pulled"
if [ "$__jc_rc" != 0 ]; then
    rm -f @REMOVE@
    echo "jacamar: ch-image could not pull image $__jl_image on node $(hostname) (exit $__jc_rc)" >&2
    exit @CREATE_FAILED@
fi
rm -rf -- "$__jc_img"
@CH_CONVERT@ -i ch-image -o dir @IMAGE@ "$__jc_img" </dev/null >/dev/null 2>"$__jl_err"
__jc_rc=$?
__jc_stopped "ch-convert unpacked"
if [ "$__jc_rc" != 0 ]; then
    rm -f @REMOVE@
    echo "jacamar: ch-convert could not unpack image $__jl_image on node $(hostname) (exit $__jc_rc)" >&2
    exit @CREATE_FAILED@
fi
rm -f "$__jl_err"
mkdir -p -- "$__jc_img"@HOME@
mv -f -- @ENV_SRC@ "$__jc_state/env" ||
    __jl_fail "the job's variables @ENV_SRC@ could not be moved to $__jc_state on node $(hostname)"
unset CH_IMAGE_STORAGE
# The scheduler's job environment of this node (as podman's --env=PREFIX*): builtins only.
for __jc_v in $(compgen -e); do
    case $__jc_v in @SCHED@) ;; *) continue ;; esac
    case ${!__jc_v} in *$'\n'*) continue ;; esac
    printf '%s=%s\n' "$__jc_v" "${!__jc_v}" >>"$__jc_state/env"
done
if [ -f "$__jc_img/ch/environment" ]; then
    @CH_RUN@ @RUN_IMAGE_ENV@
else
    @CH_RUN@ @RUN@
fi
exit "$?"
)"#;

/// The Charliecloud launcher's shell code: one `( ... )` subshell whose status is the stage's.
pub fn launcher(l: &ChLaunch<'_>) -> String {
    let state = charliecloud::state_dir(l.uid, l.job_id);
    let tool = |t: &str| path_word(&node_tool(l.general, t));
    let mut remove: Vec<&Path> = Vec::new();
    if let Some(a) = l.auth_file {
        remove.push(a);
    }
    remove.push(l.env_file);
    let read_auth = match l.auth_file {
        // `read` is bash's own: the values are on no command line. The file goes at once.
        Some(a) => format!(
            "{{ IFS= read -r __jc_user && IFS= read -r __jc_pass; }} <{0} 2>/dev/null\nrm -f -- {0}\n",
            path_word(a)
        ),
        None => String::new(),
    };
    // Only in ch-image's environment (assignments before the command).
    let auth_env = if l.auth_file.is_some() {
        "CH_IMAGE_USERNAME=$__jc_user CH_IMAGE_PASSWORD=$__jc_pass "
    } else {
        ""
    };
    let site_ca = Path::new(CERTS_D).join(l.image.registry()).join("ca.crt");
    let bundles: Vec<String> = SYSTEM_BUNDLES.iter().map(|b| b.to_string()).collect();
    let env_in_state = state.join("env");
    let img = state.join("img");
    let run = |image_env: bool| {
        quoted(&charliecloud::run_args(&RunSpec {
            image_dir: &img,
            binds: l.binds,
            workdir: l.workdir,
            env_file: &env_in_state,
            image_env,
            command: l.command,
        }))
    };
    let sched = SCHEDULER_ENV
        .iter()
        .map(|p| format!("{p}*"))
        .collect::<Vec<_>>()
        .join(" | ");
    let home = sh_quote(&l.home.display().to_string());
    let prelude = prelude("Charliecloud", &l.image.name, l.error_file, &remove);
    fill(
        LAUNCHER,
        &[
            ("IMAGE_TEXT", &comment_text(&l.image.name)),
            ("PRELUDE", &prelude),
            ("STATE", &path_word(&state)),
            ("CH_IMAGE", &tool("ch-image")),
            ("CH_CONVERT", &tool("ch-convert")),
            ("CH_RUN", &tool("ch-run")),
            ("REMOVE", &super::launcher::remove_words(&remove)),
            ("IMAGE", &sh_quote(&l.image.name)),
            ("READ_AUTH", &read_auth),
            ("AUTH_ENV", auth_env),
            ("SITE_CA", &path_word(&site_ca)),
            ("BUNDLES", &quoted(&bundles)),
            (
                "PULL",
                &quoted(&charliecloud::pull_args(
                    &state,
                    l.image,
                    l.auth_file.is_some(),
                )),
            ),
            ("CREATE_FAILED", &CREATE_FAILED.to_string()),
            ("HOME", &home),
            ("ENV_SRC", &path_word(l.env_file)),
            ("RUN_IMAGE_ENV", &run(true)),
            ("RUN", &run(false)),
            ("SCHED", &sched),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn general(extra: &str) -> General {
        crate::config::Config::from_str_named(
            &format!("[general]\nexecutor = \"slurm\"\ndata_dir = \"/d\"\nrun_mechanism = \"charliecloud\"\n[general.charliecloud]\n{extra}\n[auth]\ndownscope = \"none\"\n"),
            "t",
        )
        .unwrap()
        .general
    }

    fn render(g: &General, image: &Image, auth: Option<&Path>) -> String {
        let binds = [PathBuf::from("/d/u")];
        let cmd = ["bash".to_string(), "/d/u/scripts/build_script.bash".into()];
        launcher(&ChLaunch {
            general: g,
            uid: 1234,
            job_id: 77,
            image,
            auth_file: auth,
            env_file: Path::new("/d/u/scripts/ch-env"),
            binds: &binds,
            workdir: Path::new("/d/u"),
            home: Path::new("/home/u"),
            command: &cmd,
            error_file: Path::new("/d/u/scripts/build_script.ch-error"),
        })
    }

    #[test]
    fn the_ch_launcher_quotes_every_word_and_names_no_secret() {
        let g = general("");
        let image = Image::checked("127.0.0.1:5043/ci/debian:bookworm", &[]).unwrap();
        let auth = Path::new("/d/u/scripts/ch-auth");
        let s = render(&g, &image, Some(auth));
        for want in [
            "__jc_state='/tmp/jacamar-ch-1234/77'",
            "'ch-image' '--no-cache' '--storage=/tmp/jacamar-ch-1234/77/storage' 'pull' '--auth' '127.0.0.1:5043/ci/debian:bookworm'",
            "<'/d/u/scripts/ch-auth' 2>/dev/null\nrm -f -- '/d/u/scripts/ch-auth'\n",
            "__jc_site='/etc/containers/certs.d/127.0.0.1:5043/ca.crt'",
            "'ch-run' '--write' '--env-no-expand' '--unset-env=*' '--set-env' '--set-env=/tmp/jacamar-ch-1234/77/env' '--bind=/d/u:/d/u' '--cd=/d/u' '/tmp/jacamar-ch-1234/77/img' '--' 'bash' '/d/u/scripts/build_script.bash'",
            "mkdir -p -- \"$__jc_img\"'/home/u'",
            "rm -f -- '/d/u/scripts/ch-auth' '/d/u/scripts/ch-env'",
        ] {
            assert!(s.contains(want), "{want} missing in\n{s}");
        }
        assert!(
            s.contains("CH_IMAGE_USERNAME=$__jc_user CH_IMAGE_PASSWORD=$__jc_pass 'ch-image' "),
            "{s}"
        );
        assert!(s.starts_with('(') && s.ends_with(')'), "{s}");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // No credential: no --auth, nothing read.
        let s = render(&g, &image, None);
        assert!(
            !s.contains("'--auth'")
                && !s.contains("read -r __jc_user")
                && !s.contains("CH_IMAGE_PASSWORD"),
            "{s}"
        );
        // A site's directory of the tools.
        let s = render(&general("application_path = \"/opt/ch/bin\""), &image, None);
        assert!(s.contains("'/opt/ch/bin/ch-run' '--write'"), "{s}");
    }

    #[test]
    fn a_credential_with_a_line_break_is_not_written() {
        assert_eq!(auth_text("u", "p").as_deref(), Some("u\np\n"));
        assert!(auth_text("u", "p\nq").is_none());
        assert!(auth_text("u\r", "p").is_none());
    }

    #[test]
    fn a_placeholder_in_the_jobs_image_stays_quoted() {
        let g = general("");
        let image = Image::checked("reg/x@REMOVE@", &[]).unwrap();
        let s = render(&g, &image, None);
        assert!(s.contains("'reg/x@REMOVE@'"), "{s}");
    }

    /// Stand-ins for the tools: each logs its arguments (and ch-image whether it got a
    /// password, and which) to `$FAKE_LOG`; ch-image fails as a refused token when
    /// `FAKE_PULL_FAIL` is set; ch-convert makes the directory; ch-run prints the env file
    /// it was given and exits 7.
    const FAKES: &[(&str, &str)] = &[
        (
            "ch-image",
            "#!/bin/bash\necho \"ch-image $* user=${CH_IMAGE_USERNAME-unset} pass=${CH_IMAGE_PASSWORD-unset}\" >>\"$FAKE_LOG\"\nif [ -n \"$FAKE_PULL_SLEEP\" ]; then sleep 30; fi\nif [ -n \"$FAKE_PULL_FAIL\" ]; then echo 'error: no further authentication possible, giving up' >&2; exit 1; fi\n",
        ),
        (
            "ch-convert",
            "#!/bin/bash\necho \"ch-convert $*\" >>\"$FAKE_LOG\"\nmkdir -p \"${@: -1}\"\n",
        ),
        (
            "ch-run",
            "#!/bin/bash\necho \"ch-run $*\" >>\"$FAKE_LOG\"\nfor a in \"$@\"; do case $a in --set-env=*) cat \"${a#--set-env=}\" ;; esac; done\nexit 7\n",
        ),
    ];

    fn job_id() -> u64 {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        u64::from(std::process::id()) * 1000
            + 500
            + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Run the launcher of a fresh job with the fakes in `dir`: (status, stdout, log, job).
    fn run_fake(dir: &Path, fail: bool) -> (Option<i32>, String, String, u64) {
        let (mut c, job) = fake_command(dir);
        if fail {
            c.env("FAKE_PULL_FAIL", "1");
        }
        let out = c.output().unwrap();
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            log,
            job,
        )
    }

    /// The launcher of a fresh job with the fakes in `dir`, as a command: (command, job).
    fn fake_command(dir: &Path) -> (std::process::Command, u64) {
        use std::os::unix::fs::PermissionsExt;
        for (name, text) in FAKES {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let g = general(&format!("application_path = \"{}\"", dir.display()));
        let image = Image::checked("r.example:5000/x:1", &[]).unwrap();
        let auth = dir.join("ch-auth");
        let env = dir.join("ch-env");
        std::fs::write(&auth, auth_text("gitlab-ci-token", "SECRET-TOKEN").unwrap()).unwrap();
        std::fs::write(&env, "HOME=/home/u\nCI_JOB_ID=1\n").unwrap();
        let binds = [dir.to_path_buf()];
        let job = job_id();
        let cmd = ["bash".to_string(), "script".into()];
        let code = launcher(&ChLaunch {
            general: &g,
            uid: nix::unistd::getuid().as_raw(),
            job_id: job,
            image: &image,
            auth_file: Some(&auth),
            env_file: &env,
            binds: &binds,
            workdir: dir,
            home: Path::new("/home/u"),
            command: &cmd,
            error_file: &dir.join("build_script.ch-error"),
        });
        let mut c = std::process::Command::new("bash");
        // The wrapper around it outlives a TERM (`crate::batch::wrapper`).
        c.args(["-c", &format!("trap : TERM\n{code}\nexit $?\n")])
            .env("FAKE_LOG", dir.join("log"))
            .env("SLURM_JOB_ID", "4242")
            .stdin(std::process::Stdio::null());
        (c, job)
    }

    #[test]
    fn a_term_during_the_pull_ends_the_stage_and_leaves_nothing() {
        use std::os::unix::process::CommandExt;
        let d = tempfile::tempdir().unwrap();
        let (mut c, job) = fake_command(d.path());
        c.env("FAKE_PULL_SLEEP", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        let child = c.spawn().unwrap();
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(d.path().join("log"))
            .unwrap_or_default()
            .contains("ch-image")
        {
            assert!(t0.elapsed() < std::time::Duration::from_secs(20), "no pull");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // As the scheduler's cancel: the whole job's process group.
        let pg = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(143), "{stderr}");
        assert!(stderr.contains("stopped while ch-image pulled"), "{stderr}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(15));
        for f in ["ch-auth", "ch-env", "build_script.ch-error"] {
            assert!(!d.path().join(f).exists(), "{f} left");
        }
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        assert!(
            !log.contains("ch-convert") && !log.contains("ch-run"),
            "{log}"
        );
        let state = charliecloud::state_dir(nix::unistd::getuid().as_raw(), job);
        assert!(!state.exists(), "{} left", state.display());
    }

    #[test]
    fn the_ch_launcher_pulls_with_the_credential_in_the_environment_only_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let (code, stdout, log, job) = run_fake(d.path(), false);
        assert_eq!(code, Some(7), "{stdout}\n{log}");
        // The password reached ch-image by its environment, never by an argument.
        let pull = log.lines().find(|l| l.starts_with("ch-image")).unwrap();
        assert!(
            pull.ends_with("--auth r.example:5000/x:1 user=gitlab-ci-token pass=SECRET-TOKEN"),
            "{log}"
        );
        assert!(
            !log.lines()
                .any(|l| !l.starts_with("ch-image") && l.contains("SECRET")),
            "{log}"
        );
        // ch-run got the job's variables and the scheduler's; the files are gone.
        assert!(
            stdout.contains("CI_JOB_ID=1") && stdout.contains("SLURM_JOB_ID=4242"),
            "{stdout}"
        );
        assert!(!stdout.contains("SECRET"), "{stdout}");
        for f in ["ch-auth", "ch-env", "build_script.ch-error"] {
            assert!(!d.path().join(f).exists(), "{f} left");
        }
        let state = charliecloud::state_dir(nix::unistd::getuid().as_raw(), job);
        assert!(!state.exists(), "{} left", state.display());
    }

    #[test]
    fn a_refused_pull_leaves_its_reason_and_no_credentials() {
        let d = tempfile::tempdir().unwrap();
        let (code, stdout, log, job) = run_fake(d.path(), true);
        assert_eq!(code, Some(CREATE_FAILED), "{stdout}\n{log}");
        let err = std::fs::read_to_string(d.path().join("build_script.ch-error")).unwrap();
        assert_eq!(
            crate::container::classify::classify_ch_image(&err, true),
            crate::container::classify::Failure::Refused,
            "{err}"
        );
        assert!(!log.contains("ch-run"), "{log}");
        for f in ["ch-auth", "ch-env"] {
            assert!(!d.path().join(f).exists(), "{f} left");
        }
        let state = charliecloud::state_dir(nix::unistd::getuid().as_raw(), job);
        assert!(!state.exists(), "{} left", state.display());
    }
}
