//! Scale bench of the batch executor against the real one-node Slurm
//! (`bash scripts/slurm/slurm-up.sh`), run as root: `cargo bench --bench scale`, or
//! `scripts/bench-scale.sh`, which also creates the bench users and the release build.
//!
//! For every N in `SCALE_N` and every user count in `SCALE_USERS` it starts N concurrent
//! `jacamar-auth run … build_script` processes of the release binaries (config and prepare
//! first, as the runner does; `downscope = "none"`, each run as its user, like
//! `Harness::batch`), jobs spread round-robin over the users `jrs_bench_u0..u3`. Each job
//! prints `start $SLURM_JOB_ID`, then `stamp $EPOCHREALTIME` every `SCALE_LINE_SECS` until
//! the bench creates a stop file. Measured:
//!
//! * status queries: every scheduler command goes through a per-user `scheduler_bin` wrapper
//!   that logs it; counted per user over a steady window of `SCALE_WINDOW_SECS` that starts
//!   when every job has printed its `start` line (no submission, cancel or end inside it);
//!   plus `sdiag`'s RPC counters by user and by message type, as before/after deltas of the
//!   window (no `sdiag --reset`: other users of the controller would lose their figures);
//! * CPU per job: utime+stime of jacamar-auth and jacamar from /proc (last sample before
//!   they exit, sampled every 2 s), and the whole tree's CPU from `wait4`'s rusage (includes
//!   the scheduler commands and their wrappers);
//! * RSS per job: VmRSS of jacamar-auth + jacamar, highest sum seen in the window;
//! * log latency: a `stamp` line's timestamp against its arrival on the run call's stdout;
//! * cancel-to-gone: SIGTERM to `SCALE_CANCEL` run calls' process groups (300 ms apart)
//!   after the window, until the job is absent from `squeue` (default states; polled every
//!   50 ms as root, filtered by the bench users, i.e. what `squeue --me` shows them).
//!
//! Then `SCALE_SHELL_N` idle shell-executor jobs (`sleep SCALE_SHELL_SECS`) of one user on
//! this host: CPU and RSS of the supervision alone.
//!
//! The node has 8 CPUs in slurm.conf and its partition does not oversubscribe (8 jobs at
//! once), so the bench sets `OverSubscribe=FORCE:64` on the partition at runtime (`scontrol
//! update`; 512 jobs at once) and puts the old value back at the end (also on SIGINT/SIGTERM,
//! after cancelling its jobs). Other users' jobs of that partition then share CPUs with the
//! bench's instead of queueing. A separate oversubscribed partition on the same node does
//! not work: Slurm (cons_tres) gives no job of a non-sharing partition a node that runs jobs
//! of a sharing partition, so every other user's job waited while the bench ran.
//!
//! Environment: `SCALE_N` (40,200,500), `SCALE_USERS` (1,4), `SCALE_DELAY` (command_delay,
//! 10s), `SCALE_WINDOW_SECS` (45), `SCALE_LINE_SECS` (3), `SCALE_CANCEL` (10),
//! `SCALE_SHELL_N` (500; 0 skips), `SCALE_SHELL_SECS` (60), `SCALE_PARTITION` (the default partition),
//! `SCALE_START_TIMEOUT_SECS` (60 + N/4), `JACAMAR_BIN_DIR` (target/release).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USERS: [&str; 4] = [
    "jrs_bench_u0",
    "jrs_bench_u1",
    "jrs_bench_u2",
    "jrs_bench_u3",
];

/// Process groups of live run calls, killed by the signal thread on SIGINT/SIGTERM.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// The partition whose OverSubscribe the bench changed, and the old value.
static CREATED_PARTITION: Mutex<Option<(String, String)>> = Mutex::new(None);

struct Settings {
    bin_dir: PathBuf,
    ns: Vec<usize>,
    users: Vec<usize>,
    delay: String,
    delay_secs: f64,
    window: u64,
    line: u64,
    cancel: usize,
    shell_n: usize,
    shell_secs: u64,
    partition: String,
    start_timeout: Option<u64>,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Settings {
        let bin_dir = std::env::var_os("JACAMAR_BIN_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("release"))
            })
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"));
        let delay = std::env::var("SCALE_DELAY").unwrap_or_else(|_| "10s".into());
        let delay_secs = humantime::parse_duration(&delay)
            .expect("SCALE_DELAY: a duration like 10s")
            .as_secs_f64();
        Settings {
            bin_dir,
            ns: env_list("SCALE_N", "40,200,500"),
            users: env_list("SCALE_USERS", "1,4")
                .into_iter()
                .map(|u| u.clamp(1, USERS.len()))
                .collect(),
            delay,
            delay_secs,
            window: env_u64("SCALE_WINDOW_SECS", 45),
            line: env_u64("SCALE_LINE_SECS", 3).max(1),
            cancel: env_u64("SCALE_CANCEL", 10) as usize,
            shell_n: env_u64("SCALE_SHELL_N", 500) as usize,
            shell_secs: env_u64("SCALE_SHELL_SECS", 60),
            partition: std::env::var("SCALE_PARTITION").unwrap_or_else(|_| default_partition()),
            start_timeout: std::env::var("SCALE_START_TIMEOUT_SECS")
                .ok()
                .and_then(|s| s.parse().ok()),
        }
    }
}

/// The partition jobs go to without `-p` (sinfo marks it with a `*`).
fn default_partition() -> String {
    sh("sinfo", &["-h", "-o", "%P"])
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.trim().strip_suffix('*').map(str::to_string))
        })
        .unwrap_or_else(|| "debug".into())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The value at quantile `p` (nearest rank) of `v`; NaN when empty.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn sh(cmd: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(cmd).args(args).stdin(Stdio::null()).output()
}

// ------------------------------------------------------------------ Slurm helpers

fn ctld_up() -> bool {
    sh("scontrol", &["ping"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"))
}

/// `sdiag`'s RPC counts: ("type:NAME" | "user:NAME") -> count.
fn sdiag() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let Ok(o) = sh("sdiag", &[]) else { return m };
    let mut section = "";
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if l.contains("statistics by message type") {
            section = "type";
        } else if l.contains("statistics by user") {
            section = "user";
        } else if !l.starts_with('\t') && !l.starts_with(' ') {
            section = "";
        } else if !section.is_empty() {
            let name = l.split_whitespace().next().unwrap_or("");
            let count = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("count:"))
                .and_then(|c| c.parse().ok());
            if let Some(c) = count {
                m.insert(format!("{section}:{name}"), c);
            }
        }
    }
    m
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Let the partition run hundreds of jobs at once: `OverSubscribe=FORCE:64` (64 jobs per CPU)
/// at runtime, put back as it was by [`cancel_all_and_drop_partition`].
fn ensure_partition(name: &str) -> Result<(), String> {
    let o = sh("scontrol", &["show", "partition", name]).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let was = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("OverSubscribe="))
        .ok_or_else(|| format!("partition {name} not found: {text}"))?
        .to_string();
    if was.starts_with("FORCE") {
        println!("partition {name}: OverSubscribe={was} already, used as it is");
        return Ok(());
    }
    let part = format!("PartitionName={name}");
    let o =
        sh("scontrol", &["update", &part, "OverSubscribe=FORCE:64"]).map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "scontrol update {part} OverSubscribe=FORCE:64: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    *CREATED_PARTITION.lock().unwrap() = Some((name.to_string(), was.clone()));
    println!(
        "partition {name}: OverSubscribe={was} -> FORCE:64 for this run (put back at the end)"
    );
    Ok(())
}

/// Cancel every job of the bench users, then put the partition's OverSubscribe back.
fn cancel_all_and_drop_partition() {
    for u in USERS {
        let _ = sh("scancel", &["-u", u]);
    }
    let Some((name, was)) = CREATED_PARTITION.lock().unwrap().take() else {
        return;
    };
    let part = format!("PartitionName={name}");
    let over = format!("OverSubscribe={was}");
    match sh("scontrol", &["update", &part, &over]) {
        Ok(o) if o.status.success() => println!("partition {name}: {over} again"),
        o => eprintln!(
            "could not put back {over} on partition {name} ({o:?}): run `scontrol update {part} {over}`"
        ),
    }
}

fn kill_live() {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let groups: Vec<i32> = LIVE.lock().unwrap().drain(..).collect();
    if groups.is_empty() {
        return;
    }
    // As the runner cancels: TERM to each run call's group; then KILL what is left.
    for pg in &groups {
        let _ = killpg(Pid::from_raw(*pg), Signal::SIGTERM);
    }
    std::thread::sleep(Duration::from_secs(10));
    for pg in &groups {
        let _ = killpg(Pid::from_raw(*pg), Signal::SIGKILL);
    }
    // jacamar runs in its own group: any of ours still there (its parent gone) is killed by pid.
    let uids: Vec<u32> = USERS
        .iter()
        .filter_map(|u| nix::unistd::User::from_name(u).ok().flatten())
        .map(|u| u.uid.as_raw())
        .collect();
    let exe = Settings::from_env().bin_dir.join("jacamar");
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let mine = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
                && std::fs::metadata(format!("/proc/{pid}"))
                    .is_ok_and(|m| uids.contains(&std::os::unix::fs::MetadataExt::uid(&m)));
            if mine {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// SIGINT/SIGTERM: kill our run calls, cancel our jobs, drop the partition, exit.
fn install_signal_thread() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().unwrap();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("scale bench: {sig:?}, cleaning up");
            kill_live();
            cancel_all_and_drop_partition();
            std::process::exit(130);
        }
    });
}

// ------------------------------------------------------------------ jobs

/// One user's fixed parts: account, config file, wrapper dir and its call log.
struct UserCtx {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    config: PathBuf,
    calls: PathBuf,
}

#[derive(Default)]
struct JobState {
    started: Option<f64>,
    slurm_id: Option<String>,
    latencies: Vec<(f64, f64)>,
    last_lines: Vec<String>,
}

struct Job {
    user: usize,
    runner: PathBuf,
    env: Vec<(String, String)>,
    pid: i32,
    state: Arc<Mutex<JobState>>,
    /// Last /proc sample: utime+stime ticks of jacamar-auth and of jacamar.
    cpu_ticks: Arc<Mutex<(u64, u64)>>,
    /// Highest VmRSS(jacamar-auth) + VmRSS(jacamar) seen while sampling RSS, KiB.
    rss_kib: Arc<Mutex<u64>>,
    hwm_kib: Arc<Mutex<u64>>,
    exit: Option<(i32, f64)>,
}

fn runner_script(body: &str) -> String {
    let mut q = String::new();
    for c in body.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '\'' => q.push_str("\\'"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    format!("#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n: | eval $'{q}'\nexit 0\n")
}

fn mkdir_mode(p: &Path, mode: u32) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Wrappers in `dir` for every Slurm command: log `<time> <tool> <args>` and run the real one.
fn wrappers(dir: &Path, log: &Path) {
    mkdir_mode(dir, 0o755);
    std::fs::write(log, "").unwrap();
    std::fs::set_permissions(log, std::fs::Permissions::from_mode(0o666)).unwrap();
    for tool in ["sbatch", "squeue", "sacct", "scontrol", "scancel"] {
        let real = sh("sh", &["-c", &format!("command -v {tool}")])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(!real.is_empty(), "{tool} not found");
        let p = dir.join(tool);
        std::fs::write(
            &p,
            format!(
                "#!/bin/bash\nprintf '%s %s %s\\n' \"$EPOCHREALTIME\" {tool} \"$*\" >>{}\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn auth_cmd(s: &Settings, u: &UserCtx, runner: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(s.bin_dir.join("jacamar-auth"));
    c.env_clear()
        .envs(env.iter().cloned())
        .current_dir(runner)
        .stdin(Stdio::null())
        .process_group(0)
        .uid(u.uid)
        .gid(u.gid);
    // The bench blocks SIGINT/SIGTERM in its threads (its signal thread waits for them), and a
    // child inherits the mask through exec: unblock everything, as a runner's child would have.
    // SAFETY: only async-signal-safe calls (sigemptyset, sigprocmask) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// config + prepare of one job, as the runner does; returns its environment.
fn prepare_job(s: &Settings, u: &UserCtx, root: &Path, id: usize) -> Result<Job, String> {
    let runner = root.join(format!("runner-{id}"));
    mkdir_mode(&runner, 0o700);
    nix::unistd::chown(
        &runner,
        Some(nix::unistd::Uid::from_raw(u.uid)),
        Some(nix::unistd::Gid::from_raw(u.gid)),
    )
    .unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), u.home.clone()),
        ("TMPDIR".into(), runner.display().to_string()),
        ("BUILD_FAILURE_EXIT_CODE".into(), "1".into()),
        ("SYSTEM_FAILURE_EXIT_CODE".into(), "2".into()),
        (
            "BUILD_EXIT_CODE_FILE".into(),
            runner.join("build_exit_code").display().to_string(),
        ),
        ("CUSTOM_ENV_CI_JOB_ID".into(), (100_000 + id).to_string()),
        ("CUSTOM_ENV_CI_JOB_TOKEN".into(), "glcbt-bench-token".into()),
        ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN".into(), "scalebch".into()),
        ("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID".into(), "0".into()),
        ("CUSTOM_ENV_CI_PROJECT_PATH".into(), "bench/scale".into()),
        ("CUSTOM_ENV_CI_JOB_TIMEOUT".into(), "3600".into()),
        ("CUSTOM_ENV_GITLAB_USER_LOGIN".into(), u.name.clone()),
        ("CUSTOM_ENV_CI_PIPELINE_SOURCE".into(), "push".into()),
        (
            "CUSTOM_ENV_SCHEDULER_PARAMETERS".into(),
            format!("-p {}", s.partition),
        ),
    ];
    let cfg = u.config.display().to_string();
    let out = auth_cmd(s, u, &runner, &env)
        .args(["config", "--configuration", &cfg])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "config of job {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    for (k, val) in v["job_env"].as_object().ok_or("no job_env")? {
        env.push((k.clone(), val.as_str().unwrap_or_default().to_string()));
    }
    let out = auth_cmd(s, u, &runner, &env)
        .arg("prepare")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "prepare of job {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Job {
        user: 0,
        runner,
        env,
        pid: 0,
        state: Arc::default(),
        cpu_ticks: Arc::default(),
        rss_kib: Arc::default(),
        hwm_kib: Arc::default(),
        exit: None,
    })
}

/// Spawn the run call of `job` with `script`; a thread reads its stdout.
fn spawn_run(s: &Settings, u: &UserCtx, job: &mut Job, script: &str) -> Result<(), String> {
    let p = job.runner.join("script-build_script");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
    let err = std::fs::File::create(job.runner.join("run.stderr")).unwrap();
    let mut child = auth_cmd(s, u, &job.runner, &job.env)
        .args(["run", &p.display().to_string(), "build_script"])
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    job.pid = child.id() as i32;
    LIVE.lock().unwrap().push(job.pid);
    let out = child.stdout.take().unwrap();
    // The Child is dropped without waiting: `wait_all` reaps it with wait4 (for rusage).
    drop(child);
    let state = job.state.clone();
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let t = now_s();
                let mut st = state.lock().unwrap();
                if let Some(i) = l.find("stamp ") {
                    if let Ok(ts) = l[i + 6..].trim().parse::<f64>() {
                        st.latencies.push((ts, t - ts));
                    }
                } else if let Some(i) = l.find("start ") {
                    if st.started.is_none() {
                        st.started = Some(t);
                        st.slurm_id = Some(l[i + 6..].trim().to_string());
                    }
                }
                st.last_lines.push(l);
                if st.last_lines.len() > 20 {
                    st.last_lines.remove(0);
                }
            }
        })
        .unwrap();
    Ok(())
}

/// /proc/PID/stat: (ppid, utime+stime ticks, comm).
fn stat_of(pid: i32) -> Option<(i32, u64, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, cpu, comm))
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// What the sampler updates for one job: jacamar-auth's pid, CPU ticks (auth, jacamar),
/// highest VmRSS sum, highest VmHWM sum.
type Sampled = (
    i32,
    Arc<Mutex<(u64, u64)>>,
    Arc<Mutex<u64>>,
    Arc<Mutex<u64>>,
);

/// Sample CPU (and, while `rss` is set, RSS) of every job's two processes every 2 s.
fn sampler(
    jobs: Vec<Sampled>,
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // One pass over /proc: the jacamar child of each jacamar-auth.
            let mut child_of: HashMap<i32, (i32, u64)> = HashMap::new();
            let mut own: HashMap<i32, u64> = HashMap::new();
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    if let Some((ppid, cpu, comm)) = stat_of(pid) {
                        if comm == "jacamar-auth" {
                            own.insert(pid, cpu);
                        } else if comm == "jacamar" {
                            child_of.insert(ppid, (pid, cpu));
                        }
                    }
                }
            }
            let sample_rss = rss.load(Ordering::Relaxed);
            for (pid, cpu, r, hwm) in &jobs {
                let Some(a) = own.get(pid) else { continue };
                let mut c = cpu.lock().unwrap();
                c.0 = *a;
                if let Some((cp, ccpu)) = child_of.get(pid) {
                    c.1 = *ccpu;
                    if sample_rss {
                        let sum = status_kib(*pid, "VmRSS:") + status_kib(*cp, "VmRSS:");
                        let h = status_kib(*pid, "VmHWM:") + status_kib(*cp, "VmHWM:");
                        let mut r = r.lock().unwrap();
                        *r = (*r).max(sum);
                        let mut hw = hwm.lock().unwrap();
                        *hw = (*hw).max(h);
                    }
                }
            }
            for _ in 0..20 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// The process is gone or a zombie (it is reaped only by [`wait_all`]).
fn ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Reap every run call (wait4, for its rusage) until `deadline`; returns how many are left.
fn wait_all(jobs: &mut [Job], deadline: Instant) -> usize {
    loop {
        let mut left = 0;
        for j in jobs.iter_mut().filter(|j| j.exit.is_none() && j.pid > 0) {
            let mut status = 0;
            // SAFETY: rusage is plain integers and timevals: all-zero bytes are a valid value.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: plain syscall on our own child with valid out-pointers.
            let r = unsafe { libc::wait4(j.pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == j.pid {
                let cpu = ru.ru_utime.tv_sec as f64
                    + ru.ru_utime.tv_usec as f64 / 1e6
                    + ru.ru_stime.tv_sec as f64
                    + ru.ru_stime.tv_usec as f64 / 1e6;
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                j.exit = Some((code, cpu));
                LIVE.lock().unwrap().retain(|p| *p != j.pid);
            } else if r < 0 {
                j.exit = Some((-1, 0.0));
            } else {
                left += 1;
            }
        }
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn user_ctx(name: &str, root: &Path, executor: &str, s: &Settings, data: &Path) -> UserCtx {
    let pw = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("user {name} missing (scripts/bench-scale.sh creates it)"));
    let bin = root.join(format!("bin-{name}"));
    let calls = root.join(format!("calls-{name}.log"));
    wrappers(&bin, &calls);
    let config = root.join(format!("jacamar-{name}.toml"));
    let batch = if executor == "slurm" {
        format!(
            "[batch]\ncommand_delay = \"{}\"\nscheduler_bin = \"{}\"\n",
            s.delay,
            bin.display()
        )
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "[general]\nexecutor = \"{executor}\"\ndata_dir = \"{}\"\nkill_timeout = \"5s\"\n[auth]\ndownscope = \"none\"\n{batch}",
            data.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    UserCtx {
        name: name.to_string(),
        uid: pw.uid.as_raw(),
        gid: pw.gid.as_raw(),
        home: pw.dir.display().to_string(),
        config,
        calls,
    }
}

// ------------------------------------------------------------------ one scenario

#[derive(Default)]
struct Outcome {
    label: String,
    n: usize,
    started: usize,
    ok: usize,
    start_secs: f64,
    window_secs: f64,
    /// Status calls (squeue, sacct, scontrol) per user in the window: max over users, per
    /// command_delay and per minute; and the tools used.
    per_delay_max: f64,
    per_min_max: f64,
    /// The shortest time between two successive status calls of one user in the window
    /// (min over users; infinite with fewer than two calls): >= command_delay means at most
    /// one per period, whatever the window's phase (a 43 s window can hold 5 calls 10 s
    /// apart: 5 / 4.3 = 1.16 "per command_delay" by the count alone).
    min_gap_secs: f64,
    status_tools: BTreeMap<String, usize>,
    sdiag_users_per_min: f64,
    sdiag_types: BTreeMap<String, u64>,
    sdiag_by_user: BTreeMap<String, u64>,
    cpu_own_ms: Vec<f64>,
    cpu_tree_ms: Vec<f64>,
    rss_mib: Vec<f64>,
    hwm_mib: Vec<f64>,
    lat: Vec<f64>,
    cancel: Vec<f64>,
    cancel_missing: usize,
    /// (Slurm job id, SIGTERM -> first scancel of it, s).
    to_scancel: Vec<(String, f64)>,
    notes: Vec<String>,
    wall_secs: f64,
}

fn scenario(s: &Settings, executor: &str, n: usize, nusers: usize) -> Outcome {
    let t_begin = Instant::now();
    let batch = executor == "slurm";
    let mut o = Outcome {
        label: if batch {
            format!("slurm N={n} users={nusers}")
        } else {
            format!("shell N={n} idle")
        },
        n,
        min_gap_secs: f64::INFINITY,
        ..Outcome::default()
    };
    println!("== {} ==", o.label);
    let root = PathBuf::from(format!(
        "/tmp/jrs-scale-{}-{executor}-{n}-{nusers}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    mkdir_mode(&root, 0o755);
    let data = root.join("data");
    mkdir_mode(&data, 0o1777);
    let stop_file = root.join("stop");
    let users: Vec<UserCtx> = USERS[..nusers]
        .iter()
        .map(|u| user_ctx(u, &root, executor, s, &data))
        .collect();

    // config + prepare, 3 at a time.
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let prepared: Mutex<Vec<(usize, Result<Job, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = prepare_job(s, &users[i % nusers], &root, i).map(|mut j| {
                    j.user = i % nusers;
                    j
                });
                prepared.lock().unwrap().push((i, r));
            });
        }
    });
    let mut prepared = prepared.into_inner().unwrap();
    prepared.sort_by_key(|p| p.0);
    let mut jobs = Vec::new();
    for (i, r) in prepared {
        match r {
            Ok(j) => jobs.push(j),
            Err(e) => {
                o.notes.push(format!("job {i} not prepared: {e}"));
                break;
            }
        }
    }
    println!(
        "config+prepare of {} jobs: {:.1} s",
        jobs.len(),
        t.elapsed().as_secs_f64()
    );

    let script = if batch {
        runner_script(&format!(
            "echo \"start $SLURM_JOB_ID\"\ni=0\nwhile [ ! -e {stop} ] && [ $i -lt 600 ]; do echo \"stamp $EPOCHREALTIME\"; sleep {line}; i=$((i+1)); done\necho end\n",
            stop = stop_file.display(),
            line = s.line
        ))
    } else {
        runner_script(&format!("echo \"start $$\"\nsleep {}\n", s.shell_secs))
    };

    // Start every run call.
    let t_spawn = Instant::now();
    for j in jobs.iter_mut() {
        if let Err(e) = spawn_run(s, &users[j.user], j, &script) {
            o.notes.push(format!("spawn failed: {e}"));
            break;
        }
    }
    let pgids: Vec<String> = jobs.iter().map(|j| j.pid.to_string()).collect();
    let _ = std::fs::write(root.join("pgids"), pgids.join("\n"));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let rss_on = Arc::new(AtomicBool::new(false));
    let samp = sampler(
        jobs.iter()
            .map(|j| {
                (
                    j.pid,
                    j.cpu_ticks.clone(),
                    j.rss_kib.clone(),
                    j.hwm_kib.clone(),
                )
            })
            .collect(),
        stop_sampler.clone(),
        rss_on.clone(),
    );

    // Wait until every job runs (printed its start line).
    let start_timeout = s.start_timeout.unwrap_or(60 + n as u64 / 4);
    let deadline = t_spawn + Duration::from_secs(start_timeout);
    let count_started = |jobs: &[Job]| {
        jobs.iter()
            .filter(|j| j.state.lock().unwrap().started.is_some())
            .count()
    };
    let mut last_print = Instant::now();
    while count_started(&jobs) < jobs.len() && Instant::now() < deadline {
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "  {} of {} running after {:.0} s",
                count_started(&jobs),
                jobs.len(),
                t_spawn.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        // Run calls that already ended (failed) will never start.
        let ended = jobs.iter().filter(|j| ended(j.pid)).count();
        if ended > 0 && count_started(&jobs) + ended >= jobs.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    o.started = count_started(&jobs);
    o.start_secs = t_spawn.elapsed().as_secs_f64();
    println!(
        "{} of {} jobs running after {:.1} s",
        o.started,
        jobs.len(),
        o.start_secs
    );
    if o.started < jobs.len() {
        // Where the others are: submitted (wrapper log) and Slurm's states of the users' jobs.
        let sbatches: usize = users
            .iter()
            .map(|u| {
                std::fs::read_to_string(&u.calls)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.split(' ').nth(1) == Some("sbatch"))
                    .count()
            })
            .sum();
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        let states = sh("squeue", &["-h", "-o", "%T %r", "-u", &names.join(",")])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for l in states.lines() {
            *by.entry(l).or_default() += 1;
        }
        o.notes.push(format!(
            "not all running: {sbatches} sbatch calls so far; squeue of the bench users: {by:?}"
        ));
        o.notes.push(format!(
            "only {} of {} jobs running after {:.0} s (SCALE_START_TIMEOUT_SECS)",
            o.started,
            jobs.len(),
            o.start_secs
        ));
    }

    // The steady window.
    let window = if batch { s.window } else { s.shell_secs / 2 };
    // Let the sampler take its first pass over running jobs.
    std::thread::sleep(Duration::from_secs(2));
    rss_on.store(true, Ordering::Relaxed);
    let sd0 = sdiag();
    let w0 = now_s();
    std::thread::sleep(Duration::from_secs(window.saturating_sub(2)));
    let w1 = now_s();
    let sd1 = sdiag();
    rss_on.store(false, Ordering::Relaxed);
    o.window_secs = w1 - w0;

    if batch {
        // Status calls in the window, per user.
        for u in &users {
            let text = std::fs::read_to_string(&u.calls).unwrap_or_default();
            let mut count = 0usize;
            let mut last: Option<f64> = None;
            for l in text.lines() {
                let mut w = l.split(' ');
                let (Some(t), Some(tool)) =
                    (w.next().and_then(|t| t.parse::<f64>().ok()), w.next())
                else {
                    continue;
                };
                if t >= w0 && t <= w1 && matches!(tool, "squeue" | "sacct" | "scontrol") {
                    count += 1;
                    if let Some(prev) = last {
                        o.min_gap_secs = o.min_gap_secs.min(t - prev);
                    }
                    last = Some(t);
                    *o.status_tools.entry(tool.to_string()).or_default() += 1;
                }
            }
            let per_delay = count as f64 / (o.window_secs / s.delay_secs);
            let per_min = count as f64 * 60.0 / o.window_secs;
            o.per_delay_max = o.per_delay_max.max(per_delay);
            o.per_min_max = o.per_min_max.max(per_min);
        }
        let d = delta(&sd0, &sd1);
        let ours: u64 = users
            .iter()
            .map(|u| d.get(&format!("user:{}", u.name)).copied().unwrap_or(0))
            .sum();
        o.sdiag_users_per_min = ours as f64 * 60.0 / o.window_secs / nusers as f64;
        for (k, v) in d {
            if let Some(t) = k.strip_prefix("type:") {
                o.sdiag_types.insert(t.to_string(), v);
            } else if let Some(u) = k.strip_prefix("user:") {
                o.sdiag_by_user.insert(u.to_string(), v);
            }
        }

        // Cancel a sample of running jobs.
        let started: Vec<usize> = (0..jobs.len())
            .filter(|&i| jobs[i].state.lock().unwrap().slurm_id.is_some())
            .collect();
        let k = s.cancel.min(started.len());
        let sample: Vec<usize> = (0..k).map(|c| started[c * started.len() / k]).collect();
        let ids: Vec<String> = sample
            .iter()
            .map(|&i| jobs[i].state.lock().unwrap().slurm_id.clone().unwrap())
            .collect();
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let gone: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let user_list = users
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>()
            .join(",");
        let monitor = {
            let (sent, gone, done, ids) = (sent.clone(), gone.clone(), done.clone(), ids.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                while !done.load(Ordering::Relaxed) && Instant::now() < until {
                    if let Ok(out) = sh("squeue", &["-h", "-o", "%i", "-u", &user_list]) {
                        if out.status.success() {
                            let now = Instant::now();
                            let listed: std::collections::HashSet<String> =
                                String::from_utf8_lossy(&out.stdout)
                                    .lines()
                                    .map(|l| l.trim().to_string())
                                    .collect();
                            let sent = sent.lock().unwrap();
                            let mut gone = gone.lock().unwrap();
                            for id in &ids {
                                if let Some(t0) = sent.get(id) {
                                    if !listed.contains(id) && !gone.contains_key(id) {
                                        gone.insert(id.clone(), (now - *t0).as_secs_f64());
                                    }
                                }
                            }
                            if gone.len() == ids.len() {
                                return;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let mut sent_wall: HashMap<String, f64> = HashMap::new();
        for (c, &i) in sample.iter().enumerate() {
            sent_wall.insert(ids[c].clone(), now_s());
            sent.lock().unwrap().insert(ids[c].clone(), Instant::now());
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(jobs[i].pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = monitor.join();
        done.store(true, Ordering::Relaxed);
        let gone = gone.lock().unwrap();
        o.cancel = gone.values().copied().collect();
        // SIGTERM -> the driver's scancel (wrapper log), and scancel -> gone.
        for u in &users {
            let text = std::fs::read_to_string(&u.calls).unwrap_or_default();
            for l in text.lines() {
                let mut w = l.splitn(3, ' ');
                let (Some(t), Some("scancel"), Some(args)) = (
                    w.next().and_then(|t| t.parse::<f64>().ok()),
                    w.next(),
                    w.next(),
                ) else {
                    continue;
                };
                let Some(id) = args.split(' ').next_back() else {
                    continue;
                };
                if let Some(t0) = sent_wall.get(id) {
                    if !o.to_scancel.iter().any(|x| x.0 == id) {
                        o.to_scancel.push((id.to_string(), t - t0));
                    }
                }
            }
        }
        o.cancel_missing = ids.len() - gone.len();
        if o.cancel_missing > 0 {
            o.notes.push(format!(
                "{} of {} cancelled jobs still listed after 60 s",
                o.cancel_missing,
                ids.len()
            ));
        }

        // Stop the others.
        std::fs::write(&stop_file, "").unwrap();
    }

    let end_wait = if batch {
        s.line as f64 + 3.0 * s.delay_secs + 60.0 + n as f64 / 5.0
    } else {
        s.shell_secs as f64 + 60.0
    };
    let left = wait_all(
        &mut jobs,
        Instant::now() + Duration::from_secs_f64(end_wait),
    );
    if left > 0 {
        o.notes.push(format!(
            "{left} run calls still running {end_wait:.0} s after the stop; killed"
        ));
        kill_live();
        wait_all(&mut jobs, Instant::now() + Duration::from_secs(10));
    }
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = samp.join();

    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        let st = j.state.lock().unwrap();
        if let Some((code, cpu)) = j.exit {
            if code == 0 {
                o.ok += 1;
            } else {
                let last = st
                    .last_lines
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .cloned()
                    .unwrap_or_default();
                *failures.entry(format!("exit {code}")).or_default() += 1;
                if failures.values().sum::<usize>() <= 3 && !batch {
                    o.notes.push(format!("a job exited {code}: {last}"));
                }
            }
            o.cpu_tree_ms.push(cpu * 1000.0);
        }
        let (a, b) = *j.cpu_ticks.lock().unwrap();
        o.cpu_own_ms.push((a + b) as f64 / tick * 1000.0);
        let r = *j.rss_kib.lock().unwrap();
        if r > 0 {
            o.rss_mib.push(r as f64 / 1024.0);
            o.hwm_mib.push(*j.hwm_kib.lock().unwrap() as f64 / 1024.0);
        }
        o.lat.extend(st.latencies.iter().map(|x| x.1));
    }
    if batch {
        let expect_fail = o.cancel.len() + o.cancel_missing;
        let failed = jobs.len() - o.ok;
        if failed != expect_fail {
            o.notes.push(format!(
                "{failed} run calls failed (expected {expect_fail}: the cancelled ones): {failures:?}"
            ));
            if let Some(j) = jobs.iter().find(|j| {
                j.exit.is_some_and(|e| e.0 != 0) && j.state.lock().unwrap().started.is_none()
            }) {
                let err = std::fs::read_to_string(j.runner.join("run.stderr")).unwrap_or_default();
                let out = j.state.lock().unwrap().last_lines.join(" | ");
                o.notes.push(format!(
                    "e.g. job at {}: stdout: {} stderr: {}",
                    j.runner.display(),
                    out.chars().take(400).collect::<String>(),
                    err.chars().take(400).collect::<String>()
                ));
            }
        }
    }

    // cleanup stage of each job, then the files.
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs.len() {
                    break;
                }
                let j = &jobs[i];
                let u = &users[j.user];
                let cfg = u.config.display().to_string();
                let _ = auth_cmd(s, u, &j.runner, &j.env)
                    .args(["cleanup", "--configuration", &cfg])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            });
        }
    });
    if batch {
        for u in &users {
            let _ = sh("scancel", &["-u", &u.name]);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    o.wall_secs = t_begin.elapsed().as_secs_f64();
    println!("{}", line_of(&o, s));
    for n in &o.notes {
        println!("  note: {n}");
    }
    o
}

fn f1(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.1}")
    }
}

fn f2(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}

fn line_of(o: &Outcome, s: &Settings) -> String {
    format!(
        "{}: {} running (after {:.0} s), {} ok; SIGTERM -> scancel p50 {} p95 {} s; status calls per user per command_delay {} (max user; {} /min; shortest gap {} s), sdiag RPCs per user {} /min; CPU per job own p50 {} ms p95 {} ms, with children p50 {} ms; RSS per job p50 {} p95 {} max {} MiB (HWM p95 {}); log latency p50 {} p95 {} s ({} lines); cancel-to-gone p50 {} p95 {} max {} s ({}); wall {:.0} s; status tools {:?}; sdiag by type {:?}; by user {:?}; delay {}",
        o.label,
        o.started,
        o.start_secs,
        o.ok,
        f2(pct(&o.to_scancel.iter().map(|x| x.1).collect::<Vec<_>>(), 0.5)),
        f2(pct(&o.to_scancel.iter().map(|x| x.1).collect::<Vec<_>>(), 0.95)),
        f2(o.per_delay_max),
        f1(o.per_min_max),
        f2(o.min_gap_secs),
        f1(o.sdiag_users_per_min),
        f1(pct(&o.cpu_own_ms, 0.5)),
        f1(pct(&o.cpu_own_ms, 0.95)),
        f1(pct(&o.cpu_tree_ms, 0.5)),
        f1(pct(&o.rss_mib, 0.5)),
        f1(pct(&o.rss_mib, 0.95)),
        f1(pct(&o.rss_mib, 1.0)),
        f1(pct(&o.hwm_mib, 0.95)),
        f2(pct(&o.lat, 0.5)),
        f2(pct(&o.lat, 0.95)),
        o.lat.len(),
        f2(pct(&o.cancel, 0.5)),
        f2(pct(&o.cancel, 0.95)),
        f2(pct(&o.cancel, 1.0)),
        o.cancel.len(),
        o.wall_secs,
        o.status_tools,
        o.sdiag_types,
        o.sdiag_by_user,
        s.delay,
    )
}

fn markdown(outs: &[Outcome], s: &Settings) -> String {
    let mut m = String::new();
    m.push_str("| scenario | running / ok | status queries per user per command_delay (per min) | sdiag RPCs per user per min | CPU per job, both processes (with scheduler commands) | RSS per job, both processes p50 / p95 / max | log latency p50 / p95 | cancel-to-gone p50 / p95 (n) |\n");
    m.push_str("|---|---|---|---|---|---|---|---|\n");
    for o in outs {
        let batch = o.label.starts_with("slurm");
        m.push_str(&format!(
            "| {} | {} / {} of {} | {} | {} | p50 {} ms, p95 {} ms ({} ms) | {} / {} / {} MiB | {} | {} |\n",
            o.label,
            o.started,
            o.ok,
            o.n,
            if batch {
                format!(
                    "{} ({}; gap >= {} s)",
                    f2(o.per_delay_max),
                    f1(o.per_min_max),
                    f2(o.min_gap_secs)
                )
            } else {
                "-".into()
            },
            if batch { f1(o.sdiag_users_per_min) } else { "-".into() },
            f1(pct(&o.cpu_own_ms, 0.5)),
            f1(pct(&o.cpu_own_ms, 0.95)),
            f1(pct(&o.cpu_tree_ms, 0.5)),
            f1(pct(&o.rss_mib, 0.5)),
            f1(pct(&o.rss_mib, 0.95)),
            f1(pct(&o.rss_mib, 1.0)),
            if batch {
                format!("{} / {} s", f2(pct(&o.lat, 0.5)), f2(pct(&o.lat, 0.95)))
            } else {
                "-".into()
            },
            if batch {
                format!(
                    "{} / {} s ({})",
                    f2(pct(&o.cancel, 0.5)),
                    f2(pct(&o.cancel, 0.95)),
                    o.cancel.len()
                )
            } else {
                "-".into()
            },
        ));
    }
    m.push_str(&format!(
        "\ncommand_delay {}, window {} s, a line every {} s; goals: <= 1 status query per user per command_delay, <= 10 MiB RSS per job, log latency p95 <= 1 s and cancel-to-gone p95 <= 2 s at 200 jobs.\n",
        s.delay, s.window, s.line
    ));
    m
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: measure only then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: skipped (run it with `cargo bench --bench scale` or scripts/bench-scale.sh)");
        return;
    }
    let s = Settings::from_env();
    if !s.bin_dir.join("jacamar-auth").is_file() || !s.bin_dir.join("jacamar").is_file() {
        eprintln!(
            "jacamar-auth and jacamar not found in {} (cargo build --release --bins, or set JACAMAR_BIN_DIR)",
            s.bin_dir.display()
        );
        std::process::exit(2);
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the scale bench runs as root (it runs each job as its user)");
        std::process::exit(2);
    }
    let batch_wanted = !s.ns.is_empty() && !s.users.is_empty();
    if batch_wanted && !ctld_up() {
        eprintln!("Slurm is not running: bash scripts/slurm/slurm-up.sh");
        std::process::exit(1);
    }
    // Hundreds of pipes and processes.
    let lim = libc::rlimit {
        rlim_cur: 16384,
        rlim_max: 16384,
    };
    // SAFETY: setrlimit with a valid pointer; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    install_signal_thread();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "jacamar-rs scale bench: binaries in {}; {} CPUs, Linux {}; {}",
        s.bin_dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        String::from_utf8_lossy(&sh("sinfo", &["-V"]).map(|o| o.stdout).unwrap_or_default()).trim()
    );
    let mut outs = Vec::new();
    if batch_wanted {
        if let Err(e) = ensure_partition(&s.partition) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        for &n in &s.ns {
            for &u in &s.users {
                outs.push(scenario(&s, "slurm", n, u));
                let _ = std::io::stdout().flush();
            }
        }
        cancel_all_and_drop_partition();
    }
    if s.shell_n > 0 {
        outs.push(scenario(&s, "shell", s.shell_n, 1));
    }
    println!("\n{}", markdown(&outs, &s));
    for o in &outs {
        if !o.sdiag_types.is_empty() {
            println!(
                "sdiag, {} (window {:.0} s): by user {:?}; by type (all users of the controller) {:?}",
                o.label, o.window_secs, o.sdiag_by_user, o.sdiag_types
            );
        }
        if !o.status_tools.is_empty() {
            println!(
                "status calls in the window, {}: {:?}",
                o.label, o.status_tools
            );
        }
        for n in &o.notes {
            println!("note, {}: {n}", o.label);
        }
    }
}
