//! The stage's shell with the runner's real scripts, for accounts made by `useradd -m` with
//! Debian's stock /etc/skel (whose `~/.bash_logout` runs `clear_console`, which fails without
//! a tty): the script's real status reaches the runner and `BUILD_EXIT_CODE_FILE`, the login
//! environment (a variable, an exported function, a PATH entry of `~/.profile`) reaches the
//! job, under the shell executor (setuid) and under Slurm; and a cancelled Slurm job's TERM
//! trap runs to its end inside the runner's subshell. Each test runs under the legacy and
//! the current shape of the runner's script ([`Shape`]).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::auth_kit::{ensure_user, give_token, harness, pki, JwksServer};
use crate::batch_slurm::{ci_user, lines_of, require_slurm, wait_exit, wait_line};
use crate::harness::{
    require_root, require_tool, runner_script_in, show, wait_for, Harness, Shape,
};
use crate::shape_tests;

const USER: &str = "jrs_shell_deb";

/// The marker of the block the tests add to a user's `~/.profile`.
const PROFILE_MARK: &str = "# jrs_shell test block";

/// What the block adds: an exported variable, an exported function and a PATH entry.
const PROFILE_BLOCK: &str = r#"# jrs_shell test block
export JRS_SHELL_PROFILE_VAR=from-profile
jrs_shell_fn() { echo "fn-from-profile $1"; }
export -f jrs_shell_fn
export PATH="$HOME/jrs-shell-bin:$PATH"
"#;

/// Checks that `home` (of `user`) holds Debian's stock `.bash_logout` and that it really
/// fails in a login-less, tty-less bash under `set -e` as that user: the condition the
/// tests must meet, so they cannot pass vacuously on a machine without it.
fn assert_logout_file_fails_without_a_tty(user: &nix::unistd::User) {
    let logout = user.dir.join(".bash_logout");
    let text = std::fs::read_to_string(&logout).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (useradd -m copies it from /etc/skel)",
            logout.display()
        )
    });
    assert!(
        text.contains("clear_console"),
        "{} is not Debian's stock one: {text}",
        logout.display()
    );
    assert!(
        Path::new("/usr/bin/clear_console").exists(),
        "/usr/bin/clear_console missing (Debian's package `bash` ships it)"
    );
    // A new session has no controlling tty; bash makes SHLVL 1, as in the login shell of a
    // stage (jacamar passes no SHLVL).
    let out = Command::new("setsid")
        .args([
            "-w",
            "bash",
            "-c",
            "set -e; . \"$HOME/.bash_logout\"; echo survived",
        ])
        .env_clear()
        .env("HOME", &user.dir)
        .env("PATH", "/usr/bin:/bin")
        .env("SHLVL", "0")
        .current_dir(&user.dir)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("survived"),
        "{}'s .bash_logout does not fail without a tty here: {}",
        user.name,
        show(&out)
    );
}

/// Add [`PROFILE_BLOCK`] to `user`'s `~/.profile` (once) and a `jrs-shell-tool` in the
/// directory it puts on PATH. The file is replaced by a rename, owned by the user.
fn add_profile_block(user: &nix::unistd::User) {
    let profile = user.dir.join(".profile");
    let text = std::fs::read_to_string(&profile).unwrap_or_default();
    let chown = |p: &Path| nix::unistd::chown(p, Some(user.uid), Some(user.gid)).unwrap();
    if !text.contains(PROFILE_MARK) {
        let tmp = user.dir.join(".profile.jrs-shell-tmp");
        std::fs::write(&tmp, format!("{text}\n{PROFILE_BLOCK}")).unwrap();
        chown(&tmp);
        std::fs::rename(&tmp, &profile).unwrap();
    }
    let bin = user.dir.join("jrs-shell-bin");
    std::fs::create_dir_all(&bin).unwrap();
    chown(&bin);
    let tool = bin.join("jrs-shell-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool-from-profile-path\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(&tool);
}

/// The job body that shows the login environment.
const SHOW_LOGIN_ENV: &str = "echo \"var=${JRS_SHELL_PROFILE_VAR:-unset}\"\n\
     jrs_shell_fn called\n\
     jrs-shell-tool\n\
     echo job-body-done\n";

fn assert_login_env(text: &str) {
    for want in [
        "var=from-profile",
        "fn-from-profile called",
        "tool-from-profile-path",
        "job-body-done",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the job log: {text}"
        );
    }
}

/// A setuid harness for the stock-skel user, after config and prepare.
fn setuid_job(server: &JwksServer) -> Harness {
    let mut h = harness(server, "setuid", "", "root_dir_creation = true", "");
    give_token(&mut h, server, USER);
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

fn skel_user() -> nix::unistd::User {
    let u = ensure_user(USER, &[], "/bin/bash");
    assert_logout_file_fails_without_a_tty(&u);
    add_profile_block(&u);
    u
}

shape_tests!(
    root:
    setuid_runner_script_of_a_skel_account_succeeds_with_its_login_environment,
    profile_flags_choose_the_profile_files_a_job_sees,
    setuid_runner_script_exit_3_reaches_the_build_exit_code_file,
    slurm_runner_script_of_a_skel_account_keeps_status_and_login_environment,
    cancelled_slurm_job_runs_its_term_trap_to_the_end_before_kill_timeout,
    cancelled_pbs_job_runs_its_term_trap_to_the_end,
);

fn setuid_runner_script_of_a_skel_account_succeeds_with_its_login_environment(shape: Shape) {
    if !require_root() || !require_tool("setsid") {
        return;
    }
    skel_user();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = setuid_job(&server);
    let out = h.run("build_script", &runner_script_in(shape, SHOW_LOGIN_ENV));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert_login_env(&String::from_utf8_lossy(&out.stdout));
    // Other stages, on the host too.
    let out = h.run("after_script", &runner_script_in(shape, "echo after-ran\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

/// `JACAMAR_NO_BASH_PROFILE` reads no profile file, `JACAMAR_ETC_PROFILE_ONLY` only
/// `/etc/profile` (which sets the user's PATH on Debian): neither sees `~/.profile`.
fn profile_flags_choose_the_profile_files_a_job_sees(shape: Shape) {
    if !require_root() || !require_tool("setsid") {
        return;
    }
    skel_user();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let body = "echo \"var=${JRS_SHELL_PROFILE_VAR:-unset} path=$PATH\"\n";
    let mut h = setuid_job(&server);
    let out = h.run("build_script", &runner_script_in(shape, body));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let login = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(login.contains("var=from-profile"), "{shape}: {login}");
    assert!(
        login.contains("/jrs-shell-bin:/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"),
        "{shape}: {login}"
    );
    h.set("CUSTOM_ENV_JACAMAR_ETC_PROFILE_ONLY", "1");
    let out = h.run("build_script", &runner_script_in(shape, body));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let etc = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        etc.contains("var=unset path=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games\n"),
        "{shape}: {etc}"
    );
    h.set("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "1");
    let out = h.run("build_script", &runner_script_in(shape, body));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let none = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        none.contains(
            "var=unset path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        ),
        "{shape}: {none}"
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn setuid_runner_script_exit_3_reaches_the_build_exit_code_file(shape: Shape) {
    if !require_root() || !require_tool("setsid") {
        return;
    }
    skel_user();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = setuid_job(&server);
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "echo before-exit\nexit 3\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some("3"),
        "{shape}: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("before-exit"),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

/// The batch user (`jacamar-ci`) with the stock skel files and the profile block.
fn batch_user() -> nix::unistd::User {
    let u = nix::unistd::User::from_name(&ci_user())
        .unwrap()
        .unwrap_or_else(|| panic!("user {} missing (scripts/test.sh creates it)", ci_user()));
    let logout = u.dir.join(".bash_logout");
    if !logout.exists() {
        std::fs::copy("/etc/skel/.bash_logout", &logout).unwrap();
        nix::unistd::chown(&logout, Some(u.uid), Some(u.gid)).unwrap();
    }
    assert_logout_file_fails_without_a_tty(&u);
    add_profile_block(&u);
    u
}

/// A batch harness (`executor`: slurm or pbs) as the batch user, after config and prepare.
fn batch(executor: &str, kill_timeout: &str) -> Harness {
    require_slurm();
    let mut h = Harness::batch(
        executor,
        &ci_user(),
        &format!("kill_timeout = \"{kill_timeout}\""),
        "command_delay = \"1s\"\nnfs_timeout = \"20s\"",
    );
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

fn slurm(kill_timeout: &str) -> Harness {
    batch("slurm", kill_timeout)
}

/// Slurm ids of the listed jobs named `name`.
fn active_jobs(name: &str) -> Vec<String> {
    let o = Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn slurm_runner_script_of_a_skel_account_keeps_status_and_login_environment(shape: Shape) {
    if !require_root() || !require_tool("setsid") {
        return;
    }
    batch_user();
    let h = slurm("5s");
    let out = h.run("build_script", &runner_script_in(shape, SHOW_LOGIN_ENV));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    assert_login_env(&String::from_utf8_lossy(&out.stdout));
    let out = h.run(
        "build_script",
        &runner_script_in(shape, "echo before-exit\nexit 3\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
    assert_eq!(
        h.build_exit_code().as_deref(),
        Some("3"),
        "{shape}: {}",
        show(&out)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

fn cancelled_slurm_job_runs_its_term_trap_to_the_end_before_kill_timeout(shape: Shape) {
    if !require_root() || !require_tool("setsid") {
        return;
    }
    batch_user();
    cancel_and_see_the_trap_end(slurm("30s"), true, shape);
}

/// PBS's cancel (`qdel`, here Debian's wrapper over Slurm: TERM to the whole job, SIGKILL
/// after Slurm's KillWait) goes through the same wrapper: the trap ends within that delay.
/// These wrappers' `qstat` says `C` while Slurm still runs the job (COMPLETING), so the
/// driver stops reading the log before the trap's last line: the trap's end is checked by
/// the file it writes.
fn cancelled_pbs_job_runs_its_term_trap_to_the_end(shape: Shape) {
    if !require_root() || !require_tool("setsid") || !require_tool("qsub") {
        return;
    }
    batch_user();
    cancel_and_see_the_trap_end(batch("pbs", "30s"), false, shape);
}

/// Run a runner-shaped build_script whose eval subshell traps TERM (2 s of work), cancel
/// the run call as the runner does, and check the trap ran to its end, the job left the
/// queue, and the run ended well before the kill_timeout (30 s) escalation. `in_log`: the
/// trap's last line must be in the job log (else only its marker file is checked).
fn cancel_and_see_the_trap_end(h: Harness, in_log: bool, shape: Shape) {
    const KILL_TIMEOUT: Duration = Duration::from_secs(30);
    let marker = h.data_dir.join(format!("trap-done-{}", h.job_id));
    let body = format!(
        "trap 'echo trap-start; sleep 2; echo trap-done; touch {m}; exit 7' TERM\n\
         echo job-ready\n\
         sleep 300\n\
         echo not-reached\n",
        m = marker.display()
    );
    let mut child = h.spawn_run("build_script", &runner_script_in(shape, &body));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "job-ready", Duration::from_secs(90), &mut seen),
        "{shape}: the job never started: {seen:?}"
    );
    let name = format!("ci-{}", h.job_id);
    assert_eq!(active_jobs(&name).len(), 1, "{shape}: {seen:?}");

    // The runner's cancel: SIGTERM to the run call's process group.
    let t0 = Instant::now();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut child, KILL_TIMEOUT + Duration::from_secs(60))
        .expect("the run call did not end");
    let took = t0.elapsed();
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    eprintln!("run ended {took:?} after the SIGTERM ({st:?}):\n{text}");
    assert!(!st.success(), "{shape}: {text}");
    assert!(
        text.contains("trap-start"),
        "{shape}: the trap never started: {text}"
    );
    assert!(
        !in_log || text.contains("trap-done"),
        "{shape}: the trap was cut short (no trap-done): {text}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || marker.exists()),
        "{shape}: the trap was cut short (its file never came): {text}"
    );
    assert!(!text.contains("not-reached"), "{shape}: {text}");
    assert!(
        !text.contains("still there after kill_timeout"),
        "{shape}: the job needed the kill_timeout escalation: {text}"
    );
    // The trap takes 2 s; the escalation would come at 30 s.
    assert!(
        took < KILL_TIMEOUT - Duration::from_secs(10),
        "{shape}: the run ended only after {took:?}: {text}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || active_jobs(&name).is_empty()),
        "{shape}: the job is still listed: {:?}",
        active_jobs(&name)
    );
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
}

/// The accounts of the profile-once tests, one per test and shape (`_legacy`, `_current`):
/// they count the profile's runs.
const ONCE_USER: &str = "jrs_shell_once";
const ONCE_USER_2: &str = "jrs_shell_once2";

/// A `~/.bash_profile` that counts its runs, exports a variable (with its shell's pid), a
/// function and a PATH entry, keeps a variable unexported, sets umask, a soft limit and an
/// ignored signal, and prints a line.
const ONCE_PROFILE: &str = r#"echo run >> "$HOME/profile-runs"
export ONCE_VAR="pid-$$"
once_fn() { echo "once-fn $1"; }
export -f once_fn
once_unexported=1
export PATH="$HOME/once-bin:$PATH"
umask 027
ulimit -S -n 200
trap '' USR1
echo "profile says hi"
"#;

/// What a stage shows of the login state.
const SHOW_ONCE: &str = "echo \"var=$ONCE_VAR unexported=${once_unexported:-unset}\"\n\
     once_fn called\n\
     echo \"path=$PATH\"\n\
     echo \"umask=$(umask) nofile=$(ulimit -S -n)\"\n\
     grep SigIgn /proc/$$/status\n";

/// A profile-once account, its profile written afresh, its run count reset.
fn once_user(name: &str) -> nix::unistd::User {
    let u = ensure_user(name, &[], "/bin/bash");
    let profile = u.dir.join(".bash_profile");
    std::fs::write(&profile, ONCE_PROFILE).unwrap();
    nix::unistd::chown(&profile, Some(u.uid), Some(u.gid)).unwrap();
    let _ = std::fs::remove_file(u.dir.join("profile-runs"));
    u
}

fn profile_runs(u: &nix::unistd::User) -> usize {
    std::fs::read_to_string(u.dir.join("profile-runs"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// A setuid job of `user` after config and prepare (`once`: with
/// `JACAMAR_BASH_PROFILE_ONCE`).
fn once_job(server: &JwksServer, user: &str, once: bool) -> Harness {
    let mut h = harness(server, "setuid", "", "root_dir_creation = true", "");
    give_token(&mut h, server, user);
    if once {
        h.set("CUSTOM_ENV_JACAMAR_BASH_PROFILE_ONCE", "true");
    }
    h.unobfuscated = true;
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// The job's `login-env.json` (below the data dir).
fn login_env_file(h: &Harness) -> Option<std::path::PathBuf> {
    fn find(d: &Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(d).ok()?.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "login-env.json") {
                return Some(p);
            }
            if p.is_dir() && !p.is_symlink() {
                if let Some(f) = find(&p) {
                    return Some(f);
                }
            }
        }
        None
    }
    find(&h.data_dir)
}

shape_tests!(
    root:
    profile_once_runs_the_login_profile_in_the_first_stage_only,
    profile_once_reads_the_profile_again_when_the_kept_state_is_unusable,
);

/// With `JACAMAR_BASH_PROFILE_ONCE`, the profile runs in the job's first stage only; later
/// stages get what it exported (a variable, a function, PATH), its umask, soft limit and
/// ignored signal, but not its unexported variable, not its output, and its `$$` is the
/// first stage's. The status of a replayed stage is the script's. Without the variable
/// the profile runs in every stage.
fn profile_once_runs_the_login_profile_in_the_first_stage_only(shape: Shape) {
    if !require_root() {
        return;
    }
    let user = format!("{ONCE_USER}_{shape}");
    let u = once_user(&user);
    let server = JwksServer::start(&[&pki().keys[0]]);

    let h = once_job(&server, &user, false);
    for stage in ["prepare_script", "build_script"] {
        let out = h.run(stage, &runner_script_in(shape, SHOW_ONCE));
        assert!(out.status.success(), "{stage}: {}", show(&out));
    }
    assert_eq!(
        profile_runs(&u),
        2,
        "the default reads the profile every stage"
    );
    assert!(h.cleanup().status.success());

    let _ = std::fs::remove_file(u.dir.join("profile-runs"));
    let h = once_job(&server, &user, true);
    let first = h.run("prepare_script", &runner_script_in(shape, SHOW_ONCE));
    assert!(first.status.success(), "{}", show(&first));
    let first = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(first.contains("profile says hi"), "{first}");
    assert_eq!(profile_runs(&u), 1);
    let var = first
        .lines()
        .find_map(|l| l.strip_prefix("var="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no var line: {first}"))
        .to_string();
    assert!(var.starts_with("pid-"), "{first}");
    assert!(
        login_env_file(&h).is_some(),
        "nothing kept for the later stages"
    );

    for stage in ["get_sources", "build_script", "after_script"] {
        let out = h.run(stage, &runner_script_in(shape, SHOW_ONCE));
        assert!(out.status.success(), "{stage}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(profile_runs(&u), 1, "{stage} read the profile: {text}");
        assert!(!text.contains("profile says hi"), "{stage}: {text}");
        for want in [
            format!("var={var} unexported=unset"),
            "once-fn called".to_string(),
            format!("path={}/once-bin:", u.dir.display()),
            "umask=0027 nofile=200".to_string(),
        ] {
            assert!(text.contains(&want), "{stage}: {want:?} missing: {text}");
        }
        // SIGUSR1 (10) ignored: bit 9 of SigIgn.
        let sigign = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("{stage}: no SigIgn line: {text}"));
        assert_ne!(sigign & (1 << 9), 0, "{stage}: USR1 is not ignored: {text}");
    }
    let out = h.run("build_script", &runner_script_in(shape, "exit 3\n"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(h.build_exit_code().as_deref(), Some("3"), "{}", show(&out));
    assert_eq!(profile_runs(&u), 1);
    assert!(h.cleanup().status.success());
}

/// A kept state that cannot be read is said in the job log, and the stage reads the profile
/// again (and keeps a new state for the next one).
fn profile_once_reads_the_profile_again_when_the_kept_state_is_unusable(shape: Shape) {
    if !require_root() {
        return;
    }
    let user = format!("{ONCE_USER_2}_{shape}");
    let u = once_user(&user);
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = once_job(&server, &user, true);
    let out = h.run("prepare_script", &runner_script_in(shape, "echo one\n"));
    assert!(out.status.success(), "{}", show(&out));
    let file = login_env_file(&h).expect("nothing kept");
    std::fs::write(&file, "{ not json").unwrap();
    nix::unistd::chown(&file, Some(u.uid), Some(u.gid)).unwrap();
    let out = h.run("get_sources", &runner_script_in(shape, SHOW_ONCE));
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JACAMAR_BASH_PROFILE_ONCE") && err.contains("reads the profile"),
        "{}",
        show(&out)
    );
    assert_eq!(profile_runs(&u), 2);
    let out = h.run("build_script", &runner_script_in(shape, SHOW_ONCE));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(profile_runs(&u), 2, "{}", show(&out));
    assert!(h.cleanup().status.success());
}
