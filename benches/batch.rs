//! Batch executor figures against the real one-node Slurm (start it with
//! `bash scripts/slurm/slurm-up.sh`; run as root: the driver runs as `jacamar-ci`).
//!
//! `cargo bench --bench batch` prints: scheduler calls per job-minute (default and 1 s
//! command_delay, counted by a wrapper in `scheduler_bin`), log latency p50/p95, cancel
//! latency (SIGTERM -> gone from squeue) p50/p95, and the idle cost (CPU time, peak RSS)
//! of jacamar-auth and jacamar while a 60 s job runs. `BATCH_BENCH_QUICK=1` shortens it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUTH: &str = env!("CARGO_BIN_EXE_jacamar-auth");
const USER: &str = "jacamar-ci";

struct Job {
    dir: PathBuf,
    runner: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    uid: u32,
    gid: u32,
}

fn setup(n: u64, batch: &str) -> Job {
    let pw = nix::unistd::User::from_name(USER)
        .unwrap()
        .expect("user jacamar-ci (scripts/test.sh creates it)");
    let dir = PathBuf::from(format!(
        "/tmp/jacamar-batch-bench-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let runner = dir.join("runner");
    std::fs::create_dir(&runner).unwrap();
    nix::unistd::chown(&runner, Some(pw.uid), Some(pw.gid)).unwrap();
    let config = dir.join("jacamar.toml");
    std::fs::write(
        &config,
        format!(
            "[general]\nexecutor = \"slurm\"\ndata_dir = \"{}/data\"\nkill_timeout = \"5s\"\n[auth]\ndownscope = \"none\"\n[batch]\n{batch}\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let job_id = 900_000 + std::process::id() as u64 * 100 + n;
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), pw.dir.display().to_string()),
        ("TMPDIR".into(), runner.display().to_string()),
        ("BUILD_FAILURE_EXIT_CODE".into(), "1".into()),
        ("SYSTEM_FAILURE_EXIT_CODE".into(), "2".into()),
        (
            "BUILD_EXIT_CODE_FILE".into(),
            runner.join("code").display().to_string(),
        ),
        ("CUSTOM_ENV_CI_JOB_ID".into(), job_id.to_string()),
        ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN".into(), "benchrun".into()),
        ("CUSTOM_ENV_CI_PROJECT_PATH".into(), "g/p".into()),
        ("CUSTOM_ENV_CI_JOB_TIMEOUT".into(), "3600".into()),
    ];
    let mut job = Job {
        dir,
        runner,
        config,
        env: Vec::new(),
        uid: pw.uid.as_raw(),
        gid: pw.gid.as_raw(),
    };
    job.env = std::mem::take(&mut env);
    let out = job
        .auth(&[
            "config",
            "--configuration",
            &job.config.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "config: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, val) in v["job_env"].as_object().unwrap() {
        job.env.push((k.clone(), val.as_str().unwrap().to_string()));
    }
    assert!(job.auth(&["prepare"]).status().unwrap().success());
    job
}

impl Job {
    fn auth(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AUTH);
        c.args(args)
            .env_clear()
            .envs(self.env.iter().cloned())
            .current_dir(&self.runner);
        c.stdin(Stdio::null())
            .process_group(0)
            .uid(self.uid)
            .gid(self.gid);
        c
    }
    fn spawn(&self, script: &str) -> Child {
        let p = self.runner.join("script");
        std::fs::write(&p, script).unwrap();
        std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).unwrap();
        self.auth(&["run", &p.display().to_string(), "build_script"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    fn cleanup(&self) {
        let _ = self
            .auth(&[
                "cleanup",
                "--configuration",
                &self.config.display().to_string(),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A scheduler_bin whose tools count their calls, then run the real ones.
fn counting_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("calls");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Every Slurm tool the driver may run: a tool missing here fails the job (the driver
    // looks in scheduler_bin only).
    for t in ["sbatch", "squeue", "scontrol", "sacct", "scancel"] {
        let p = bin.join(t);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho {t} >> {}\nexec /usr/bin/{t} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn calls_per_minute(delay: &str, job_secs: u64) {
    let d = PathBuf::from(format!("/tmp/jacamar-batch-bench-bin-{}", delay));
    let bin = counting_bin(&d);
    let job = setup(
        1 + delay.len() as u64,
        &format!(
            "command_delay = \"{delay}\"\nscheduler_bin = \"{}\"",
            bin.display()
        ),
    );
    let start = Instant::now();
    let mut c = job.spawn(&format!("sleep {job_secs}\n"));
    let st = c.wait().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    // A failed job's counts say nothing about polling: stop, never print them as figures.
    assert!(
        st.success(),
        "the counted job (command_delay {delay}) failed: {st}; calls: {calls:?}"
    );
    let status = calls
        .lines()
        .filter(|l| matches!(*l, "squeue" | "scontrol" | "sacct"))
        .count();
    let total = calls.lines().count();
    println!(
        "calls per job-minute, command_delay {delay}: {:.1} status calls/min, {:.1} total/min ({total} calls over {secs:.1} s, job {job_secs} s: {})",
        status as f64 * 60.0 / secs,
        total as f64 * 60.0 / secs,
        calls.lines().collect::<Vec<_>>().join(" ")
    );
    job.cleanup();
    let _ = std::fs::remove_dir_all(&d);
}

fn log_latency(lines: usize) {
    let job = setup(10, "command_delay = \"10s\"");
    let mut c = job.spawn(&format!(
        "for i in $(seq {lines}); do echo \"stamp $(date +%s.%N)\"; sleep 0.3; done\n"
    ));
    let mut lat = Vec::new();
    for l in BufReader::new(c.stdout.take().unwrap()).lines() {
        let l = l.unwrap();
        if let Some(t) = l.strip_prefix("stamp ").and_then(|t| t.parse::<f64>().ok()) {
            lat.push(now_s() - t);
        }
    }
    c.wait().unwrap();
    let n = lat.len();
    println!(
        "log latency (default settings, {n} lines): p50 {:.3} s, p95 {:.3} s, max {:.3} s",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.95),
        pct(&mut lat, 1.0)
    );
    job.cleanup();
}

fn listed(name: &str) -> bool {
    let o = Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i"])
        .output()
        .unwrap();
    !o.stdout.is_empty()
}

fn cancel_latency(runs: u64, delay: &str) {
    let mut lat = Vec::new();
    for r in 0..runs {
        let job = setup(20 + r, &format!("command_delay = \"{delay}\""));
        let name = format!(
            "ci-{}",
            job.env
                .iter()
                .find(|(k, _)| k == "CUSTOM_ENV_CI_JOB_ID")
                .unwrap()
                .1
        );
        let mut c = job.spawn("trap 'exit 0' TERM\necho started\nsleep 300 &\nwait\n");
        let mut rd = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while rd.read_line(&mut line).unwrap() > 0 && !line.contains("started") {
            line.clear();
        }
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        while listed(&name) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        lat.push(t0.elapsed().as_secs_f64());
        let _ = c.wait();
        job.cleanup();
    }
    println!(
        "cancel latency, command_delay {delay} ({runs} runs): p50 {:.3} s, p95 {:.3} s",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.95)
    );
}

fn proc_cost(pid: i32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()??
        .max(1) as f64;
    let cpu = (f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, hwm))
}

fn idle_cost(secs: u64) {
    let job = setup(40, "");
    let mut c = job.spawn(&format!("sleep {secs}\n"));
    let auth = c.id() as i32;
    let mut last_auth = None;
    let mut last_user = None;
    while c.try_wait().unwrap().is_none() {
        if let Some(x) = proc_cost(auth) {
            last_auth = Some(x);
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(i) = stat.rfind(')') else { continue };
            if stat[i + 2..].split_whitespace().nth(1) == Some(&auth.to_string()) {
                if let Some(x) = proc_cost(p) {
                    last_user = Some(x);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let show = |n: &str, x: Option<(f64, u64)>| match x {
        Some((cpu, kb)) => println!(
            "idle cost over a {secs} s job, {n}: CPU {:.0} ms, peak RSS {:.1} MiB",
            cpu * 1000.0,
            kb as f64 / 1024.0
        ),
        None => println!("idle cost, {n}: not measured"),
    };
    show("jacamar-auth", last_auth);
    show("jacamar", last_user);
    job.cleanup();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: measure only then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ping = Command::new("scontrol").arg("ping").output();
    if !matches!(&ping, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("is UP")) {
        eprintln!("Slurm is not running: bash scripts/slurm/slurm-up.sh");
        std::process::exit(1);
    }
    let quick = std::env::var("BATCH_BENCH_QUICK").is_ok();
    let job_secs = if quick { 30 } else { 60 };
    calls_per_minute("10s", job_secs);
    calls_per_minute("1s", job_secs);
    log_latency(if quick { 20 } else { 60 });
    cancel_latency(if quick { 3 } else { 10 }, "1s");
    cancel_latency(if quick { 3 } else { 5 }, "10s");
    idle_cost(job_secs);
}
