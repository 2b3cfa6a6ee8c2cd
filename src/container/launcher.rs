//! A job's image inside a batch allocation: the shell code the submitted script runs on the
//! compute node in place of the stage's shell (see `crate::batch::wrapper`, whose
//! `wrapper_script_code` takes it). The node cannot be assumed to have `jacamar`, so the
//! script runs podman itself, with the same global and create options as the host path
//! ([`Podman::global_args`], [`create_args`]), every word single-quoted.
//!
//! * State: the job's own, node-local, `/tmp/jacamar-podman-<uid>/<job id>/`, made by the
//!   script under `umask 077`; an existing one must be a real directory of the user's
//!   closed to others (else the stage fails naming it).
//! * Runtime: `[general.podman] runtime`, else `runc` when the node is cgroup v1 "hybrid"
//!   (as [`super::podman::default_runtime`] decides on the host), else podman's default.
//! * Credentials: podman reads the 0600 auth file the driver wrote to the job's scripts
//!   dir (on the shared file system, so the node can read it); the script removes it (and
//!   the env file) right after `podman create`, whatever its outcome. Neither the token nor
//!   the file's content is ever in the script.
//! * A failed `podman create` (the pull): its stderr goes to the error file in the scripts
//!   dir and the stage ends with 125; the driver classifies it once the job has ended
//!   (`crate::container::classify`), so the job log says what the host path says.
//! * Cancel: every podman command runs in a session of its own (`setsid`), out of reach of
//!   the scheduler's signals to the job's process group (Slurm's plain cancel follows the
//!   graceful one at once when the runner's TERM reaches both drivers, and a TERM to a
//!   `podman system reset` under way would leave the state behind); the script's TERM trap turns the first
//!   TERM into `podman kill --signal=TERM` (the in-container wrapper passes it on to the
//!   script's process group, whose trap runs) and removes the container with `podman rm -f`
//!   at kill_timeout. A TERM during the pull stops it at once.
//! * End: an EXIT trap removes the containers, the storage (`podman system reset`),
//!   the rootless pause process and the state directory, in a session of its own (a
//!   scheduler's kill of the job's process group meanwhile does not cut it short): conmon
//!   and the pause process escape the scheduler's process tracking (they are not in the
//!   job's process group).
//! * Status: the container's exit code (`podman start --attach` exits with it), the
//!   stage's. Few podman commands between a cancel and the end: Slurm's plain cancel
//!   kills the job `KillWait` (5 s here) after its TERM, and the cleanup's deletion of the
//!   storage can take longer (see docs/containers.md).

use std::path::Path;
use std::time::Duration;

use super::podman::{create_args, CreateSpec, Podman};
use crate::shell::sh_quote;

/// The variables of the scheduler's job environment passed into the container (podman's
/// `--env=PREFIX*`: every variable of the node's job environment with that prefix).
pub const SCHEDULER_ENV: &[&str] = &["SLURM_", "PBS_", "LSB_", "FLUX_", "COBALT_"];

/// The exit status of the stage when `podman create` failed (podman's own code for its
/// failures); the error file says why.
pub const CREATE_FAILED: i32 = 125;

/// What the launcher is made of.
pub struct Launch<'a> {
    /// The job's podman on the node ([`Podman::on_node`]).
    pub podman: &'a Podman,
    /// The stage's `podman create`: its `custom_options` must already hold the
    /// [`SCHEDULER_ENV`] options (see [`scheduler_env_options`]) before the admin's.
    pub create: CreateSpec<'a>,
    /// Files removed right after `podman create` (the auth file, the env file).
    pub remove_after_create: &'a [&'a Path],
    /// Where a failed `podman create`'s stderr goes.
    pub error_file: &'a Path,
    /// The grace a stopped container gets before `podman rm -f`.
    pub kill_timeout: Duration,
}

/// The `--env=PREFIX*` options of [`SCHEDULER_ENV`].
pub fn scheduler_env_options() -> Vec<String> {
    SCHEDULER_ENV
        .iter()
        .map(|p| format!("--env={p}*"))
        .collect()
}

const LAUNCHER: &str = r#"(
# jacamar: the stage runs in image @IMAGE_TEXT@ with rootless podman on this node, its
# state the job's own (docs/containers.md, "Images with batch executors").
umask 077
__jp_program=@PROGRAM@
__jp_image=@IMAGE@
__jp_name=@NAME@
__jp_state=@STATE@
__jp_rt=
# Every podman (and the loops' naps) in a session of its own: the scheduler's signals to
# the job's process group must not cut a podman command short (the EXIT trap's cleanup).
__jp() { setsid -w "$__jp_program" @GLOBAL@ ${__jp_rt:+"$__jp_rt"} "$@"; }
__jp_nap() { setsid -w sleep 0.2; }
@PRELUDE@command -v "$__jp_program" >/dev/null 2>&1 ||
    __jl_fail "podman ($__jp_program) was not found on node $(hostname): install it there, or set [general.podman] application_path"
__jl_state_dirs "$__jp_state" "$__jp_state/xdg"
export XDG_RUNTIME_DIR="$__jp_state/xdg"
@RUNTIME@# The cleanup runs in a session of its own, so that it ends its work even when the
# scheduler kills the job's process group meanwhile: the containers first (conmon goes with
# them), then the storage (`podman system reset`: its files belong to subordinate ids; the
# slow part, a deletion of the unpacked image), then the pause process and the directory.
__jp_cleanup() {
    [ -d "$__jp_state" ] && [ ! -L "$__jp_state" ] || return 0
    setsid -w bash -c '__jp_s=$1; shift
        __jp_pause=
        { read -r __jp_pause <"$__jp_s/xdg/libpod/tmp/pause.pid"; } 2>/dev/null
        "$@" rm --all --force --time 0 >/dev/null 2>&1
        "$@" system reset --force >/dev/null 2>&1
        case $__jp_pause in "" | *[!0-9]*) ;; *) kill -KILL "$__jp_pause" 2>/dev/null ;; esac
        rm -rf "$__jp_s" 2>/dev/null' jacamar-podman-cleanup \
        "$__jp_state" "$__jp_program" @GLOBAL@ ${__jp_rt:+"$__jp_rt"}
}
trap __jp_cleanup EXIT
__jp_stops=0
trap '__jp_stops=$((__jp_stops + 1))' TERM INT HUP
# In the background: a direct setsid (no function, no subshell), so $! is podman's pid
# and its process group.
setsid -w "$__jp_program" @GLOBAL@ ${__jp_rt:+"$__jp_rt"} @CREATE@ </dev/null >/dev/null 2>"$__jl_err" &
__jp_pid=$!
while kill -0 "$__jp_pid" 2>/dev/null; do
    if [ "$__jp_stops" != 0 ]; then kill -KILL -- "-$__jp_pid" 2>/dev/null; break; fi
    __jp_nap
done
wait "$__jp_pid"
__jp_rc=$?
rm -f @REMOVE@
if [ "$__jp_stops" != 0 ]; then
    rm -f "$__jl_err"
    echo "jacamar: stopped while podman pulled image $__jp_image" >&2
    exit 143
fi
if [ "$__jp_rc" != 0 ]; then
    echo "jacamar: podman could not create the container of image $__jp_image on node $(hostname) (exit $__jp_rc)" >&2
    exit @CREATE_FAILED@
fi
rm -f "$__jl_err"
setsid -w "$__jp_program" @GLOBAL@ ${__jp_rt:+"$__jp_rt"} start --attach "$__jp_name" </dev/null &
__jp_pid=$!
__jp_signalled= __jp_removed= __jp_until=
while kill -0 "$__jp_pid" 2>/dev/null; do
    if [ "$__jp_stops" != 0 ] && [ -z "$__jp_removed" ]; then
        [ -n "$__jp_until" ] || __jp_until=$((SECONDS + @KILL_TIMEOUT@))
        if [ -z "$__jp_signalled" ] && __jp kill --signal=TERM "$__jp_name" >/dev/null 2>&1; then
            __jp_signalled=1
        fi
        if [ "$SECONDS" -ge "$__jp_until" ]; then
            __jp_removed=1
            echo "jacamar: the container was still running at kill_timeout and was removed with podman rm --force" >&2
            __jp rm --force --time=0 "$__jp_name" >/dev/null 2>&1
            kill -KILL -- "-$__jp_pid" 2>/dev/null
        fi
    fi
    __jp_nap
done
# `podman start --attach` exits with the container's code (also after a podman kill).
wait "$__jp_pid"
exit "$?"
)"#;

/// The launchers' common start (podman's and Charliecloud's): `umask 077`, the error file
/// `__jl_err`, `__jl_fail MESSAGE` (the message to the error file, the credentials' files
/// removed, the stage ended with [`CREATE_FAILED`]) and `__jl_state_dirs DIR...` (the
/// per-user directory above the first and each DIR made 0700, or an existing one checked:
/// a real directory of the user's closed to others; else `__jl_fail` naming it).
const PRELUDE: &str = r#"umask 077
__jl_image=@IMAGE@
__jl_err=@ERR@
__jl_fail() {
    printf 'Error: %s\n' "$1" >"$__jl_err"
    rm -f @REMOVE@
    echo "jacamar: @TOOL@ could not run image $__jl_image on node $(hostname)" >&2
    exit @CREATE_FAILED@
}
__jl_private() {
    if [ ! -L "$1" ] && mkdir -m 700 "$1" 2>/dev/null; then return 0; fi
    [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] || return 1
    case $(stat -c %a "$1" 2>/dev/null) in *00) return 0 ;; esac
    return 1
}
__jl_state_dirs() {
    local d
    for d in "${1%/*}" "$@"; do
        __jl_private "$d" ||
            __jl_fail "@TOOL@ state directory $d on node $(hostname) is a link, another account's or open to others; remove it"
    done
}
"#;

/// [`PRELUDE`] filled in: `tool` (for messages), the image, the error file and the files
/// `__jl_fail` removes.
pub(super) fn prelude(tool: &str, image: &str, error_file: &Path, remove: &[&Path]) -> String {
    fill(
        PRELUDE,
        &[
            ("TOOL", tool),
            ("IMAGE", &sh_quote(image)),
            ("ERR", &path_word(error_file)),
            ("REMOVE", &remove_words(remove)),
            ("CREATE_FAILED", &CREATE_FAILED.to_string()),
        ],
    )
}

/// `path`, single-quoted.
pub(super) fn path_word(p: &Path) -> String {
    sh_quote(&p.display().to_string())
}

/// `rm -f`'s arguments for `files`: `--` and each, single-quoted.
pub(super) fn remove_words(files: &[&Path]) -> String {
    let words: Vec<String> = files.iter().map(|p| path_word(p)).collect();
    if words.is_empty() {
        "--".to_string()
    } else {
        format!("-- {}", words.join(" "))
    }
}

/// `words`, each single-quoted, joined by spaces.
pub(super) fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A kill_timeout in whole seconds for bash's `SECONDS`: rounded up, and one more.
pub(super) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0) + 1
}

/// The image's name without control characters, for a shell comment.
pub(super) fn comment_text(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).collect()
}

/// The runtime choice of a node when the site sets none: runc on a cgroup v1 "hybrid" node.
const NODE_RUNTIME: &str = r#"if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
    [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    __jp_rt=--runtime=runc
fi
"#;

/// The launcher's shell code: one `( ... )` subshell whose status is the stage's.
pub fn launcher(l: &Launch<'_>) -> String {
    let kt = whole_seconds(l.kill_timeout).to_string();
    let program = sh_quote(&l.podman.program().display().to_string());
    let create_failed = CREATE_FAILED.to_string();
    let runtime = if l.podman.has_runtime() {
        ""
    } else {
        NODE_RUNTIME
    };
    let prelude = prelude(
        "podman",
        &l.create.image.name,
        l.error_file,
        l.remove_after_create,
    );
    fill(
        LAUNCHER,
        &[
            ("IMAGE_TEXT", &comment_text(&l.create.image.name)),
            ("PRELUDE", &prelude),
            ("PROGRAM", &program),
            ("IMAGE", &sh_quote(&l.create.image.name)),
            ("NAME", &sh_quote(l.create.name)),
            ("STATE", &path_word(l.podman.state_dir())),
            ("GLOBAL", &quoted(&l.podman.global_args())),
            ("CREATE", &quoted(&create_args(&l.create))),
            ("REMOVE", &remove_words(l.remove_after_create)),
            ("RUNTIME", runtime),
            ("CREATE_FAILED", &create_failed),
            ("KILL_TIMEOUT", &kt),
        ],
    )
}

/// `template` with each `@KEY@` replaced by its value, in one pass: a value (the job's
/// image name, its entrypoint) is never read again, so a `@KEY@` in it stays as it is.
pub(super) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let key = after.find('@').map(|end| &after[..end]);
        match key.and_then(|k| values.iter().find(|(n, _)| *n == k)) {
            Some((k, v)) => {
                out.push_str(v);
                rest = &after[k.len() + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Image;
    use std::path::PathBuf;

    fn general(extra: &str) -> crate::config::General {
        crate::config::Config::from_str_named(
            &format!("[general]\nexecutor = \"slurm\"\ndata_dir = \"/d\"\nrun_mechanism = \"podman\"\n[general.podman]\n{extra}\n[auth]\ndownscope = \"none\"\n"),
            "t",
        )
        .unwrap()
        .general
    }

    fn render(g: &crate::config::General, image: &Image) -> String {
        let pm = Podman::on_node(g, 1234, 77);
        let binds = [PathBuf::from("/d/u")];
        let opts = scheduler_env_options();
        let auth = Path::new("/d/u/scripts/podman-auth.json");
        let env = Path::new("/d/u/scripts/podman-env");
        launcher(&Launch {
            podman: &pm,
            create: CreateSpec {
                name: "jacamar-77-build_script",
                image,
                binds: &binds,
                workdir: Path::new("/d/u"),
                home: Path::new("/home/u"),
                env_file: env,
                auth_file: Some(auth),
                custom_options: &opts,
                command: &["bash".into(), "/d/u/scripts/build_script.bash".into()],
            },
            remove_after_create: &[auth, env],
            error_file: Path::new("/d/u/scripts/build_script.podman-error"),
            kill_timeout: Duration::from_millis(2500),
        })
    }

    #[test]
    fn the_launcher_quotes_every_word_and_names_no_secret() {
        let g = general("");
        let image = Image::checked("127.0.0.1:5043/ci/debian:bookworm", &[]).unwrap();
        let s = render(&g, &image);
        for want in [
            "__jp_state='/tmp/jacamar-podman-1234/77'",
            "'--root=/tmp/jacamar-podman-1234/77/storage'",
            "'--authfile=/d/u/scripts/podman-auth.json'",
            "'--env=SLURM_*'",
            "'--pull=always'",
            "'--tls-verify=true'",
            "rm -f -- '/d/u/scripts/podman-auth.json' '/d/u/scripts/podman-env'",
            "__jp_program='podman'",
            "__jp_rt=--runtime=runc",
            "$((SECONDS + 4))",
            "'127.0.0.1:5043/ci/debian:bookworm' 'bash' '/d/u/scripts/build_script.bash'",
        ] {
            assert!(s.contains(want), "{want} missing in\n{s}");
        }
        assert!(s.starts_with('(') && s.ends_with(')'), "{s}");
        // bash reads it.
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // A site's runtime and binary: no node-side choice.
        let g = general("runtime = \"crun\"\napplication_path = \"/opt/p/podman\"");
        let s = render(&g, &image);
        assert!(s.contains("'--runtime=crun'"), "{s}");
        assert!(!s.contains("__jp_rt=--runtime=runc"), "{s}");
        assert!(s.contains("__jp_program='/opt/p/podman'"), "{s}");
    }

    /// A podman stand-in: logs its arguments, `create` fails when `FAKE_CREATE_FAIL` is
    /// set (with the text of a refused token), `start` prints a line and exits 7.
    const FAKE_PODMAN: &str = r#"#!/bin/bash
echo "$*" >>"$FAKE_LOG"
for a in "$@"; do case $a in --*) ;; *) sub=$a; break ;; esac; done
case $sub in
create)
    if [ -n "$FAKE_CREATE_FAIL" ]; then
        echo "Error: initializing source docker://r/x:1: reading manifest 1 in r/x: unauthorized: authentication required" >&2
        exit 125
    fi ;;
start) echo "hello from the container"; exit 7 ;;
esac
exit 0
"#;

    /// Run the launcher of job `job` with the fake podman in `dir`: (status, stdout).
    fn run_fake(dir: &Path, job: u64, fail: bool) -> (Option<i32>, String) {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("podman");
        std::fs::write(&fake, FAKE_PODMAN).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let g = general(&format!("application_path = \"{}\"", fake.display()));
        let uid = nix::unistd::getuid().as_raw();
        let pm = Podman::on_node(&g, uid, job);
        let image = Image::checked("r/x:1", &[]).unwrap();
        let auth = dir.join("podman-auth.json");
        let env = dir.join("podman-env");
        std::fs::write(&auth, "{}").unwrap();
        std::fs::write(&env, "HOME=/h\n").unwrap();
        let binds = [dir.to_path_buf()];
        let code = launcher(&Launch {
            podman: &pm,
            create: CreateSpec {
                name: "jacamar-1-build_script",
                image: &image,
                binds: &binds,
                workdir: dir,
                home: Path::new("/home/u"),
                env_file: &env,
                auth_file: Some(&auth),
                custom_options: &[],
                command: &["true".into()],
            },
            remove_after_create: &[&auth, &env],
            error_file: &dir.join("build_script.podman-error"),
            kill_timeout: Duration::from_secs(1),
        });
        let mut c = std::process::Command::new("bash");
        c.args(["-c", &code])
            .env("FAKE_LOG", dir.join("log"))
            .stdin(std::process::Stdio::null());
        if fail {
            c.env("FAKE_CREATE_FAIL", "1");
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn job_id() -> u64 {
        u64::from(std::process::id()) * 1000 + rand_part()
    }

    fn rand_part() -> u64 {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn the_launcher_creates_starts_and_removes_the_credentials_and_its_state() {
        let d = tempfile::tempdir().unwrap();
        let job = job_id();
        let (code, stdout) = run_fake(d.path(), job, false);
        assert_eq!(code, Some(7), "{stdout}");
        assert!(stdout.contains("hello from the container"), "{stdout}");
        assert!(!d.path().join("podman-auth.json").exists());
        assert!(!d.path().join("podman-env").exists());
        assert!(!d.path().join("build_script.podman-error").exists());
        let state = Podman::on_node(&general(""), nix::unistd::getuid().as_raw(), job)
            .state_dir()
            .to_path_buf();
        assert!(!state.exists(), "{} left", state.display());
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        let create = log.lines().find(|l| l.contains(" create ")).unwrap();
        assert!(
            create.contains(&format!("--root={}/storage", state.display()))
                && create.contains("--authfile="),
            "{log}"
        );
        for step in ["start --attach", "rm --all", "system reset --force"] {
            assert!(log.contains(step), "{step} not run: {log}");
        }
    }

    #[test]
    fn a_failed_create_leaves_its_reason_and_no_credentials() {
        let d = tempfile::tempdir().unwrap();
        let (code, _) = run_fake(d.path(), job_id(), true);
        assert_eq!(code, Some(CREATE_FAILED));
        let err = std::fs::read_to_string(d.path().join("build_script.podman-error")).unwrap();
        assert_eq!(
            crate::container::classify::classify(&err),
            crate::container::classify::Failure::Refused,
            "{err}"
        );
        assert!(!d.path().join("podman-auth.json").exists());
        assert!(!d.path().join("podman-env").exists());
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        assert!(!log.contains("start --attach"), "{log}");
    }

    #[test]
    fn a_state_dir_that_is_a_link_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let user_dir = PathBuf::from(format!("/tmp/jacamar-podman-{uid}"));
        let _ = std::fs::create_dir(&user_dir);
        std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let job = job_id();
        let state = user_dir.join(job.to_string());
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &state).unwrap();
        let (code, _) = run_fake(d.path(), job, false);
        std::fs::remove_file(&state).unwrap();
        assert_eq!(code, Some(CREATE_FAILED));
        let err = std::fs::read_to_string(d.path().join("build_script.podman-error")).unwrap();
        assert!(
            err.contains("is a link, another account's or open to others"),
            "{err}"
        );
        assert!(!d.path().join("podman-auth.json").exists());
        // Open to others.
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, _) = run_fake(d.path(), job, false);
        std::fs::remove_dir(&state).unwrap();
        assert_eq!(code, Some(CREATE_FAILED));
        let log = std::fs::read_to_string(d.path().join("log")).unwrap_or_default();
        assert!(!log.contains(" create "), "{log}");
    }

    #[test]
    fn a_placeholder_in_the_jobs_image_or_entrypoint_stays_quoted() {
        let g = general("");
        let image =
            Image::checked("reg/x@REMOVE@", &["@GLOBAL@' ; touch /tmp/p #".into()]).unwrap();
        let s = render(&g, &image);
        assert!(s.contains("__jp_image='reg/x@REMOVE@'"), "{s}");
        assert!(s.contains("@GLOBAL@'\\'' ; touch /tmp/p #"), "{s}");
        assert_eq!(fill("a@X@b@@c@Y", &[("X", "@X@")]), "a@X@b@@c@Y");
    }
}
