//! The supervision boundary holds even when the job kills
//! `jacamar` itself, no descriptor inherited by `jacamar-auth` reaches the job, and the job
//! cannot reach into `jacamar` (same uid) to take its status pipe.
//!
//! Every job here is a runner-shaped script, under the legacy (`: | eval $'...'`) and the
//! current (`(trap 'exit 1' TERM; eval $'...') < /dev/null`) shape ([`Shape`]), run through
//! the real stages with real accounts (`jrs_superv_*`), real setuid/sudo, a real JWKS server
//! and minted id_tokens.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::auth_kit::{ensure_user, give_token, harness, pki, JwksServer};
use crate::harness::{
    alive, pids_in, require_root, require_tool, runner_script_in, show, wait_for, Harness, Shape,
};
use crate::shape_tests;

/// Live (non-zombie) processes whose real uid is `uid`.
fn procs_of_uid(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real = st
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills (by pid, repeatedly) every process of a test account when dropped, so a failing
/// test (the old code) never leaves a fork loop running on the shared machine.
struct KillUid(u32);

impl Drop for KillUid {
    fn drop(&mut self) {
        let uid = self.0;
        wait_for(Duration::from_secs(30), || {
            let left = procs_of_uid(uid);
            for &p in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            left.is_empty()
        });
    }
}

/// The test account `base` of one shape's test: the two shapes' tests run in parallel, and
/// each kills every process of its account when it ends ([`KillUid`]).
fn account(base: &str, shape: Shape) -> String {
    format!("{base}_{}", shape.name())
}

/// A directory the job's user may write (for the pids its job records).
fn user_dir(h: &Harness, user: &nix::unistd::User) -> PathBuf {
    let d = h.tmp.path().join(format!("mark-{}", user.name));
    std::fs::create_dir_all(&d).unwrap();
    nix::unistd::chown(&d, Some(user.uid), Some(user.gid)).unwrap();
    d
}

/// A harness for `user` with `downscope` after config and prepare.
fn ready(server: &JwksServer, downscope: &str, user: &str, auth: &str) -> Harness {
    let mut h = harness(
        server,
        downscope,
        "",
        &format!("root_dir_creation = true\n{auth}"),
        "",
    );
    give_token(&mut h, server, user);
    h.unobfuscated = true;
    let out = h.config();
    assert!(out.status.success(), "config: {}", show(&out));
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    h
}

/// The escape of item 4: a process that left the job's group and session, then the job
/// SIGKILLs `jacamar` (its shell's parent) so that nobody is left to sweep it.
fn escape_body(marks: &Path) -> String {
    let m = marks.display();
    format!(
        "setsid sleep 600 &\necho $! >> {m}/pids\nsleep 300 &\necho $! >> {m}/pids\n\
         echo $$ >> {m}/pids\nkill -KILL $PPID\nsleep 300\n"
    )
}

/// A fork loop that left the session, then the same kill of `jacamar`. `ulimit -u` keeps
/// the old code's leftover from exhausting the machine's pids.
fn fork_loop_body(marks: &Path) -> String {
    let m = marks.display();
    format!(
        "ulimit -u 300\nsetsid bash -c 'while :; do sleep 100 & done' &\necho $! >> {m}/pids\n\
         while [ \"$(pgrep -c -P $(tail -1 {m}/pids) || true)\" -lt 20 ]; do sleep 0.05; done\n\
         kill -KILL $PPID\nsleep 300\n"
    )
}

fn assert_nothing_left(shape: Shape, uid: u32, marks: &Path, out: &Output) {
    // jacamar-auth has reaped everything before returning: no wait is needed.
    let left = procs_of_uid(uid);
    let pids: Vec<i32> = pids_in(&marks.join("pids"))
        .into_iter()
        .filter(|&p| alive(p))
        .collect();
    assert!(
        left.is_empty() && pids.is_empty(),
        "{shape}: processes of the job outlived the run call: uid {uid} has {left:?}, recorded \
         pids alive {pids:?}\n{}",
        show(out)
    );
}

shape_tests!(
    unprivileged_job_that_kills_jacamar_leaves_no_process_behind,
    descriptors_inherited_by_jacamar_auth_never_reach_an_unprivileged_job,
);
shape_tests!(
    root:
    setuid_job_that_kills_jacamar_leaves_no_process_behind,
    setuid_fork_loop_ends_after_jacamar_is_killed,
    sudo_job_that_kills_jacamar_leaves_no_process_behind,
    caps_only_service_account_sweeps_an_escaped_job_and_its_fork_loop,
    descriptors_inherited_by_jacamar_auth_never_reach_a_setuid_job,
    descriptors_inherited_by_a_non_root_jacamar_auth_never_reach_the_job,
    sudo_pipes_on_descriptors_100_and_101_still_reach_jacamar,
    setuid_pipes_on_high_descriptors_still_reach_jacamar,
);

fn setuid_job_that_kills_jacamar_leaves_no_process_behind(shape: Shape) {
    if !require_root() {
        return;
    }
    let user = ensure_user(&account("jrs_superv_a", shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "setuid", &user.name, "");
    let marks = user_dir(&h, &user);
    let out = h.run(
        "build_script",
        &runner_script_in(shape, &escape_body(&marks)),
    );
    assert!(
        pids_in(&marks.join("pids")).len() >= 3,
        "{shape}: the job did not start: {}",
        show(&out)
    );
    assert!(!out.status.success(), "{shape}: {}", show(&out));
    assert_nothing_left(shape, user.uid.as_raw(), &marks, &out);
}

fn setuid_fork_loop_ends_after_jacamar_is_killed(shape: Shape) {
    if !require_root() || !require_tool("pgrep") {
        return;
    }
    let user = ensure_user(&account("jrs_superv_b", shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "setuid", &user.name, "");
    let marks = user_dir(&h, &user);
    let out = h.run(
        "build_script",
        &runner_script_in(shape, &fork_loop_body(&marks)),
    );
    assert!(
        !pids_in(&marks.join("pids")).is_empty(),
        "{shape}: the job did not start: {}",
        show(&out)
    );
    assert_nothing_left(shape, user.uid.as_raw(), &marks, &out);
}

fn sudo_job_that_kills_jacamar_leaves_no_process_behind(shape: Shape) {
    if !require_root() || !require_tool("sudo") {
        return;
    }
    let user = ensure_user(&account("jrs_superv_d", shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    sudoers();
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "sudo", &user.name, "");
    let marks = user_dir(&h, &user);
    let out = h.run(
        "build_script",
        &runner_script_in(shape, &escape_body(&marks)),
    );
    assert!(
        pids_in(&marks.join("pids")).len() >= 3,
        "{shape}: the job did not start: {}",
        show(&out)
    );
    assert_nothing_left(shape, user.uid.as_raw(), &marks, &out);
}

/// The sudoers lines of README.md for the test's own jacamar (root is the service account).
fn sudoers() {
    let jacamar = Path::new(crate::harness::AUTH).with_file_name("jacamar");
    let lines = jacamar::privdrop::downscope::sudoers_lines("root", &jacamar);
    let drop_in = "/etc/sudoers.d/jacamar-rs-superv";
    std::fs::write(drop_in, &lines).unwrap();
    std::fs::set_permissions(drop_in, std::fs::Permissions::from_mode(0o440)).unwrap();
}

fn unprivileged_job_that_kills_jacamar_leaves_no_process_behind(shape: Shape) {
    // downscope = "none": the job runs as jacamar-auth's own account (root here); only the
    // pids the job recorded identify it.
    let h = Harness::new("kill_timeout = \"2s\"");
    let mut h = h;
    h.config_json();
    assert!(h.prepare().status.success());
    let marks = h.tmp.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let out = h.run(
        "build_script",
        &runner_script_in(shape, &escape_body(&marks)),
    );
    let pids = pids_in(&marks.join("pids"));
    assert!(
        pids.len() >= 3,
        "{shape}: the job did not start: {}",
        show(&out)
    );
    let left: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
    for &p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "{shape}: processes of the job outlived the run call: {left:?}\n{}",
        show(&out)
    );
}

/// The caps-only deployment: a copy of jacamar-auth with `cap_setuid,cap_setgid=ep` run by a
/// non-root service account, which may not signal the user's processes itself.
fn caps_only_service_account_sweeps_an_escaped_job_and_its_fork_loop(shape: Shape) {
    if !require_root() || !require_tool("setcap") || !require_tool("pgrep") {
        return;
    }
    let svc = ensure_user("jrs_superv_svc", &[], "/bin/bash");
    let user = ensure_user(&account("jrs_superv_c", shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "setuid", "data_dir = \"$HOME\"", "", "");
    give_token(&mut h, &server, &user.name);
    let auth = crate::auth_kit::caps_service_copy(&mut h, &svc);
    let marks = user_dir(&h, &user);
    let runner_dir = h.runner_dir.clone();
    let as_svc = |env: &BTreeMap<String, String>, args: &[&str]| {
        crate::auth_kit::svc_command(&auth, &svc, &runner_dir, env, args)
    };
    let cfg = h.config_path.display().to_string();
    let out = as_svc(&h.env, &["config", "--configuration", &cfg])
        .output()
        .unwrap();
    assert!(out.status.success(), "config: {}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, val) in v["job_env"].as_object().unwrap() {
        h.env.insert(k.clone(), val.as_str().unwrap().to_string());
    }
    let out = as_svc(&h.env, &["prepare"]).output().unwrap();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let body = format!("{}{}", escape_body(&marks), fork_loop_body(&marks)).replacen(
        "kill -KILL $PPID\nsleep 300\n",
        "",
        1,
    );
    let script = h.runner_dir.join("script-build");
    std::fs::write(&script, runner_script_in(shape, &body)).unwrap();
    nix::unistd::chown(&script, Some(svc.uid), Some(svc.gid)).unwrap();
    let out = as_svc(
        &h.env,
        &["run", &script.display().to_string(), "build_script"],
    )
    .output()
    .unwrap();
    assert!(
        pids_in(&marks.join("pids")).len() >= 4,
        "{shape}: the job did not start: {}",
        show(&out)
    );
    assert_nothing_left(shape, user.uid.as_raw(), &marks, &out);
}

// ---------------------------------------------------------------- item 8: descriptors

/// `jacamar-auth` started with `file` open (without close-on-exec) on every descriptor
/// of `fds`, the way a wrapper script or socket activation would leave it.
fn auth_with_fds(h: &Harness, args: &[&str], file: &std::fs::File, fds: Vec<i32>) -> Command {
    let mut c = h.auth(args);
    let src = file.as_raw_fd();
    // SAFETY: fcntl/dup2 are async-signal-safe; `fds` is moved in and not reallocated.
    unsafe {
        c.pre_exec(move || {
            // A copy far above the targets, so that `src` itself can be one of them.
            let high = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 900);
            if high < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &fds {
                if libc::dup2(high, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c
}

fn run_with_fds(
    h: &Harness,
    shape: Shape,
    body: &str,
    fds: Vec<i32>,
    file: &std::fs::File,
) -> Output {
    let p = h.script_file("build_script", &runner_script_in(shape, body));
    auth_with_fds(
        h,
        &["run", &p.display().to_string(), "build_script"],
        file,
        fds,
    )
    .output()
    .unwrap()
}

/// A secret only root can open by name; the job must not reach it through a descriptor.
fn secret(h: &Harness) -> (PathBuf, std::fs::File) {
    let path = h.tmp.path().join("secret-of-the-runner");
    std::fs::write(&path, "runner-secret-4711\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    (path, f)
}

/// Lists the shell's and jacamar's descriptors and tries to read descriptors 7 and 100.
const FD_PROBE: &str =
    "for f in /proc/$$/fd/*; do echo \"shell-fd ${f##*/} $(readlink $f)\"; done\n\
for f in /proc/$PPID/fd/*; do echo \"jacamar-fd ${f##*/} $(readlink $f)\"; done\n\
cat /proc/self/fd/7 2>/dev/null || echo no-fd-7\n\
cat /proc/self/fd/100 2>/dev/null || echo no-fd-100\n";

/// jacamar reported the script's own result, success (`~/.bash_logout` of an account made
/// from the stock /etc/skel cannot change it: see `sec_shell`).
fn reported(out: &Output) -> bool {
    out.status.success()
}

fn assert_no_leak(shape: Shape, out: &Output, secret: &Path) {
    assert!(reported(out), "{shape}: {}", show(out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no-fd-7") && text.contains("no-fd-100"),
        "{shape}: {text}"
    );
    assert!(
        !text.contains("runner-secret-4711"),
        "{shape}: the job read it: {text}"
    );
    assert!(
        !text.contains(&secret.display().to_string()),
        "{shape}: an inherited descriptor reached the job or jacamar: {text}"
    );
    let shell: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("shell-fd "))
        .filter_map(|l| l.split_once(' '))
        // An empty target: the descriptor of the glob's own directory listing, closed since.
        .filter(|(_, target)| !target.is_empty())
        .map(|(fd, _)| fd)
        .collect();
    assert!(!shell.is_empty(), "{shape}: {text}");
    for fd in shell {
        assert!(
            ["0", "1", "2", "255"].contains(&fd),
            "{shape}: the job's shell holds descriptor {fd}: {text}"
        );
    }
}

fn descriptors_inherited_by_jacamar_auth_never_reach_a_setuid_job(shape: Shape) {
    if !require_root() {
        return;
    }
    let user = ensure_user(&account("jrs_superv_e", shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "setuid", &user.name, "");
    let (path, file) = secret(&h);
    let out = run_with_fds(&h, shape, FD_PROBE, vec![7, 100], &file);
    assert_no_leak(shape, &out, &path);
}

fn descriptors_inherited_by_jacamar_auth_never_reach_an_unprivileged_job(shape: Shape) {
    let mut h = Harness::new("");
    h.config_json();
    assert!(h.prepare().status.success());
    let (path, file) = secret(&h);
    let out = run_with_fds(&h, shape, FD_PROBE, vec![7, 100], &file);
    assert_no_leak(shape, &out, &path);
}

/// The hookless `posix_spawn` path: a non-root runner account with `downscope = "none"`
/// and nothing to change in the child.
fn descriptors_inherited_by_a_non_root_jacamar_auth_never_reach_the_job(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut h = Harness::batch("shell", "jacamar-ci", "", "");
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    let (path, file) = secret(&h);
    let out = run_with_fds(&h, shape, FD_PROBE, vec![7, 100], &file);
    assert_no_leak(shape, &out, &path);
}

/// Descriptors 3..=k taken by inherited files push jacamar-auth's pipes up; for some k they
/// land on 100 and 101, the temporaries the sudo path used to move them through.
fn pipes_survive_any_numbering(shape: Shape, downscope: &str, user: &str) {
    let user = ensure_user(&account(user, shape), &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    if downscope == "sudo" {
        sudoers();
    }
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, downscope, &user.name, "");
    let (path, file) = secret(&h);
    for k in 80..=100 {
        let out = run_with_fds(&h, shape, "echo stage-ran\n", (3..=k).collect(), &file);
        assert!(
            reported(&out) && String::from_utf8_lossy(&out.stdout).contains("stage-ran"),
            "{shape}: with descriptors 3..={k} inherited (build exit code {:?}): {}",
            h.build_exit_code(),
            show(&out)
        );
    }
    let out = run_with_fds(&h, shape, FD_PROBE, (3..=100).collect(), &file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&path.display().to_string()), "{text}");
}

fn sudo_pipes_on_descriptors_100_and_101_still_reach_jacamar(shape: Shape) {
    if !require_root() || !require_tool("sudo") {
        return;
    }
    pipes_survive_any_numbering(shape, "sudo", "jrs_superv_f");
}

fn setuid_pipes_on_high_descriptors_still_reach_jacamar(shape: Shape) {
    if !require_root() {
        return;
    }
    pipes_survive_any_numbering(shape, "setuid", "jrs_superv_g");
}

/// A jacamar-auth that the runner SIGKILLed cannot remove its job's cgroup; the next call
/// removes it once it is empty (a live owner's cgroup is never touched).
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn empty_cgroups_of_a_dead_jacamar_auth_are_removed_by_the_next_call() {
    if !require_root() {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = jacamar::supervisor::cgroup::cgroup2_mount(&mountinfo)
        .expect("this test needs a cgroup v2 hierarchy (none is mounted)");
    let ours = jacamar::supervisor::cgroup::own_cgroup(
        &std::fs::read_to_string("/proc/self/cgroup").unwrap(),
    )
    .unwrap();
    // Pid 1 never started at tick 1: the owner of this name is gone.
    let stale = mount.join(&ours).join("jacamar-rs.1.1");
    std::fs::create_dir_all(&stale).unwrap();
    let mut h = Harness::new("");
    h.config_json();
    assert!(h.prepare().status.success());
    assert!(!stale.exists(), "{} is still there", stale.display());
}

// ------------------------------------------- issue 16, finding 2: the status pipe

/// The job's attack on its own `jacamar` (same uid): find it among the job's ancestors,
/// read the status descriptor's number from its command line, and take that descriptor with
/// `pidfd_open` + `pidfd_getfd` (syscalls 434 and 438, the same number on every
/// architecture), or else by opening `/proc/<jacamar>/fd/<n>` (refused even while
/// `jacamar` was dumpable: the pipe belongs to jacamar-auth's account, mode 0600). `forge`
/// writes a success line; `flood N` writes N MiB. Prints `POC: pidfd_getfd <errno name>` and
/// `POC: open /proc/<jacamar>/fd <errno name>` when the kernel refuses.
const POC: &str = r#"import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def parent(pid):
    s = open(f"/proc/{pid}/stat").read()
    return int(s[s.rfind(")") + 2:].split()[1])
pid = os.getppid()
while pid > 1 and open(f"/proc/{pid}/comm").read().strip() != "jacamar":
    pid = parent(pid)
if pid <= 1:
    print("POC: no jacamar among my ancestors", flush=True)
    sys.exit(1)
argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
fd = int(argv[argv.index(b"--status-fd") + 1])
st = -1
pidfd = libc.syscall(434, pid, 0)
if pidfd < 0:
    print("POC: pidfd_open", errno.errorcode[ctypes.get_errno()], flush=True)
else:
    st = libc.syscall(438, pidfd, fd, 0)
    if st < 0:
        print("POC: pidfd_getfd", errno.errorcode[ctypes.get_errno()], flush=True)
try:
    via_proc = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY)
    print("POC: opened /proc/<jacamar>/fd", flush=True)
except OSError as e:
    print("POC: open /proc/<jacamar>/fd", errno.errorcode[e.errno], flush=True)
    via_proc = -1
st = st if st >= 0 else via_proc
if st < 0:
    sys.exit(0)
print(f"POC: took jacamar {pid}'s status descriptor {fd}", flush=True)
if sys.argv[1] == "forge":
    os.write(st, b'{"status":"success"}\n')
    print("POC: forged a success line", flush=True)
else:
    chunk, written = b"x" * (1 << 20), 0
    try:
        for _ in range(int(sys.argv[2])):
            view = memoryview(chunk)
            while view:
                n = os.write(st, view)
                view, written = view[n:], written + n
    except BrokenPipeError:
        print("POC: broken pipe", flush=True)
    print(f"POC: wrote {written} bytes", flush=True)
"#;

/// The attack's script in a file the job's user can read.
fn poc_file(h: &Harness, user: &nix::unistd::User) -> PathBuf {
    let p = user_dir(h, user).join("poc.py");
    std::fs::write(&p, POC).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// The kernel refused the job both ways to jacamar's descriptor.
fn job_was_refused_the_descriptor(out: &Output) -> bool {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.contains("POC: pidfd_getfd EPERM")
        && stdout.contains("POC: open /proc/<jacamar>/fd EACCES")
}

/// A job that writes a success line into `jacamar`'s status pipe and then fails (`exit 7`)
/// must not have its stage reported as a success; `jacamar` is not dumpable, so the kernel
/// refuses it the descriptor (EPERM) and the stage is the script's build failure.
fn forged_success_never_reaches_the_runner(downscope: &str, user: &str) {
    let user = ensure_user(user, &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, downscope, &user.name, "");
    let poc = poc_file(&h, &user);
    let body = format!("python3 {} forge\nexit 7\n", poc.display());
    let out = h.run("build_script", &runner_script_in(Shape::Current, &body));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("POC: "),
        "the attack did not run: {}",
        show(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the stage of a job that exits 7 was not its build failure: {}",
        show(&out)
    );
    assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{}", show(&out));
    assert!(
        job_was_refused_the_descriptor(&out),
        "the kernel let the job take jacamar's status descriptor: {}",
        show(&out)
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_job_cannot_forge_its_status_through_jacamars_pipe() {
    if !require_root() || !require_tool("python3") {
        return;
    }
    forged_success_never_reaches_the_runner("setuid", "jrs_superv_h");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn sudo_job_cannot_forge_its_status_through_jacamars_pipe() {
    if !require_root() || !require_tool("python3") || !require_tool("sudo") {
        return;
    }
    sudoers();
    forged_success_never_reaches_the_runner("sudo", "jrs_superv_i");
}

/// Peak resident set (`VmHWM`) of `pid` in KiB; `None` once it is gone.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A job that floods `jacamar`'s status pipe (200 MiB) never grows the root `jacamar-auth`
/// beyond a few MiB: the status is read up to its bound, and the job cannot take the
/// descriptor at all.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_job_cannot_flood_jacamar_auth_through_the_status_pipe() {
    if !require_root() || !require_tool("python3") {
        return;
    }
    let user = ensure_user("jrs_superv_j", &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "setuid", &user.name, "");
    let poc = poc_file(&h, &user);
    let body = format!("python3 {} flood 200\n", poc.display());
    let mut child = h.spawn_run("build_script", &runner_script_in(Shape::Current, &body));
    let pid = child.id();
    let mut peak = 0;
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().unwrap();
    eprintln!("jacamar-auth peak RSS (VmHWM) during the flood: {peak} KiB");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("POC: "),
        "the attack did not run: {}",
        show(&out)
    );
    assert!(
        peak > 0 && peak < 64 * 1024,
        "jacamar-auth grew to {peak} KiB while the job flooded the status pipe: {}",
        show(&out)
    );
    assert!(
        job_was_refused_the_descriptor(&out),
        "the kernel let the job take jacamar's status descriptor: {}",
        show(&out)
    );
}

/// As root, `jacamar` is created inside the job's cgroup (`clone3(CLONE_INTO_CGROUP)`), not
/// moved there by a write of `0` to `cgroup.procs` between fork and exec: that move waits
/// for an RCU grace period in the kernel, 5-40 ms of every stage (BENCHMARKS.md). The job
/// is still in the cgroup, and the run's status is the job's. Seen with `strace -f` on the
/// real jacamar-auth of a setuid job.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_jacamar_is_born_in_the_job_cgroup_not_moved_there() {
    let Some(trace) = traced_cgroup_job("jrs_superv_h", false) else {
        return;
    };
    assert!(
        trace
            .lines()
            .any(|l| l.contains("clone3(") && l.contains("CLONE_INTO_CGROUP")),
        "jacamar-auth did not create jacamar inside the cgroup:\n{trace}"
    );
    let before_exec = before_jacamar_exec(&trace);
    assert!(
        !before_exec
            .iter()
            .any(|l| l.contains("write(") && l.contains("\"0\"")),
        "jacamar's process moved itself into the cgroup before exec:\n{}",
        before_exec.join("\n")
    );
}

/// Where `clone3` is refused (ENOSYS, as Docker's default seccomp profile answers it), the
/// child of a setuid job still joins the job's cgroup before exec, by writing `cgroup.procs`.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn setuid_jacamar_joins_the_job_cgroup_where_clone3_is_refused() {
    let Some(trace) = traced_cgroup_job("jrs_superv_i", true) else {
        return;
    };
    let before_exec = before_jacamar_exec(&trace);
    assert!(
        before_exec
            .iter()
            .any(|l| l.contains("write(") && l.contains("\"0\"")),
        "jacamar's process did not join the cgroup before exec:\n{trace}"
    );
}

/// The trace lines of the process that execs `jacamar`, up to that `execve`.
fn before_jacamar_exec(trace: &str) -> Vec<&str> {
    let pid = trace
        .lines()
        .find(|l| l.contains("execve(") && l.contains("/jacamar\""))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no execve of jacamar in the trace:\n{trace}"));
    trace
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(pid))
        .take_while(|l| !l.contains("execve("))
        .collect()
}

/// A setuid job of `user` that records its cgroup and exits 3, run by jacamar-auth under
/// `strace -f` (`refuse_clone3`: under a seccomp filter answering `clone3` with ENOSYS).
/// Checks that the run failed with the job's status and the job was in the job's cgroup;
/// returns the trace. None: skipped (no root or strace).
fn traced_cgroup_job(user: &str, refuse_clone3: bool) -> Option<String> {
    if !require_root() || !require_tool("strace") {
        return None;
    }
    let user = ensure_user(user, &[], "/bin/bash");
    let _guard = KillUid(user.uid.as_raw());
    let server = JwksServer::start(&[&pki().keys[0]]);
    let h = ready(&server, "setuid", &user.name, "");
    let marks = user_dir(&h, &user);
    let script = h.script_file(
        "build_script",
        &runner_script_in(
            Shape::Legacy,
            &format!(
                "cat /proc/self/cgroup > {}/cgroup\nexit 3\n",
                marks.display()
            ),
        ),
    );
    let trace = h.tmp.path().join("strace.out");
    h.write_response();
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-s",
        "64",
        "-e",
        "trace=clone,clone3,fork,vfork,write,execve",
    ])
    .arg("-o")
    .arg(&trace)
    .arg(crate::harness::AUTH)
    .args(["-u", "run"])
    .arg(&script)
    .arg("build_script")
    .env_clear()
    .envs(&h.env)
    .current_dir(&h.runner_dir)
    .stdin(std::process::Stdio::null())
    .process_group(0);
    if refuse_clone3 {
        // SAFETY: the hook only calls prctl with a filter built before the fork (a static
        // program on this stack frame, alive until exec); strace then runs under it and
        // so does everything it starts.
        unsafe {
            cmd.pre_exec(refuse_clone3_filter);
        }
    }
    let out = cmd.output().unwrap();
    let trace = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}\n{trace}", show(&out));
    let cgroup = std::fs::read_to_string(marks.join("cgroup")).unwrap_or_default();
    assert!(
        cgroup.contains("/jacamar-rs."),
        "the job is not in the job's cgroup: {cgroup:?}\n{}",
        show(&out)
    );
    Some(trace)
}

/// Install a seccomp filter answering `clone3` with ENOSYS (x86_64 and aarch64 numbers:
/// 435 on both), everything else allowed. Raw syscalls only (called between fork and exec).
fn refuse_clone3_filter() -> std::io::Result<()> {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insns = [
        // seccomp_data.nr is at offset 0.
        libc::sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 0,
            jf: 1,
            k: 435,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a pointer to a program that lives until the call returns.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
