//! End-to-end figures of the driver, measured on the release binaries as the runner drives
//! them (see `tests/integration/harness.rs` for the same approach in tests):
//!
//! 1. per-stage overhead: `jacamar-auth run` -> `jacamar` -> `bash --login` against
//!    `bash --login` alone, interleaved A/B;
//! 2. signal forwarding: SIGTERM to jacamar-auth's group -> the job's TERM trap runs;
//! 3. kill escalation: a job ignoring SIGTERM is gone `kill_timeout` after the signal;
//! 4. idle supervision: CPU time and peak RSS of jacamar-auth and jacamar over a sleeping job.
//!
//! Run with `scripts/bench.sh` (or `cargo build --release --bins && cargo bench --bench
//! driver`). `JACAMAR_BIN_DIR` points at the binaries (default: target/release),
//! `JACAMAR_BIN_DIR_BEFORE` at other binaries measured in the same rounds of figures 1 and
//! 1b (before/after in one session), `BENCH_ONLY=overhead,signals,escalation,idle` picks
//! figures, `BENCH_GAP_MS` pauses before every timed run of figures 1-1c (stages spaced as
//! the runner spaces them), `BENCH_QUICK=1` is a smoke run, `BENCH_IDLE_SECS` sets the idle job's length
//! (default 60).
//! Nothing here asserts on timings: it reports medians and percentiles measured in one run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    bin_dir: PathBuf,
    /// `JACAMAR_BIN_DIR_BEFORE`: other binaries measured in the same pairs as a third side
    /// of figures 1 and 1b (before/after in one session).
    before_dir: Option<PathBuf>,
    /// `BENCH_ONLY`: the figures to run (`overhead`, `signals`, `escalation`, `idle`).
    only: Option<Vec<String>>,
    /// `BENCH_GAP_MS`: a pause before every timed run of figures 1-1c (default 0), for
    /// stages spaced as the runner spaces them (some kernel costs depend on it).
    gap: Duration,
    quick: bool,
    overhead_pairs: usize,
    signal_runs: usize,
    escalation_runs: usize,
    kill_timeout_ms: u64,
    idle_secs: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let bin_dir = std::env::var_os("JACAMAR_BIN_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("release"))
            })
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"));
        let idle_secs = std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(if quick { 5 } else { 60 });
        let before_dir = std::env::var_os("JACAMAR_BIN_DIR_BEFORE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|w| w.trim().to_string()).collect());
        let gap = Duration::from_millis(
            std::env::var("BENCH_GAP_MS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        );
        Settings {
            bin_dir,
            before_dir,
            only,
            gap,
            quick,
            overhead_pairs: if quick { 10 } else { 100 },
            signal_runs: if quick { 10 } else { 100 },
            escalation_runs: if quick { 3 } else { 10 },
            kill_timeout_ms: 1000,
            idle_secs,
        }
    }

    fn auth(&self) -> PathBuf {
        self.bin_dir.join("jacamar-auth")
    }
}

// ---------------------------------------------------------------------------------------
// The runner's part (after tests/integration/harness.rs)

/// One job as the runner sees it: a 0700 temp dir, the runner's environment with the job's
/// `CUSTOM_ENV_*` variables, `job_env` from `config` carried to later calls.
struct Job {
    auth: PathBuf,
    tmp: tempfile::TempDir,
    runner_dir: PathBuf,
    config_path: PathBuf,
    env: BTreeMap<String, String>,
}

impl Job {
    /// A job with `kill_timeout`, through `config` and `prepare`.
    fn start(s: &Settings, kill_timeout: &str) -> Res<Job> {
        Job::start_with(s.auth(), kill_timeout)
    }

    /// The same with the `jacamar-auth` at `auth`.
    fn start_with(auth: PathBuf, kill_timeout: &str) -> Res<Job> {
        let tmp = tempfile::Builder::new()
            .prefix("jacamar-bench")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let data_dir = tmp.path().join("data");
        let runner_dir = tmp.path().join("runner-tmp");
        for (d, mode) in [(&data_dir, 0o755), (&runner_dir, 0o700)] {
            std::fs::create_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let config_path = tmp.path().join("jacamar.toml");
        let config = format!(
            "[general]\nexecutor = \"shell\"\ndata_dir = \"{}\"\nkill_timeout = \"{kill_timeout}\"\n\n[auth]\ndownscope = \"none\"\n",
            data_dir.display()
        );
        std::fs::write(&config_path, config).map_err(|e| format!("config: {e}"))?;

        let job_id = 1_000_000 + u64::from(std::process::id());
        let mut env = BTreeMap::new();
        let rd = runner_dir.display().to_string();
        for (k, v) in [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", std::env::var("HOME").unwrap_or("/root".into())),
            ("TMPDIR", rd.clone()),
            ("BUILD_FAILURE_EXIT_CODE", "1".into()),
            ("SYSTEM_FAILURE_EXIT_CODE", "2".into()),
            ("BUILD_EXIT_CODE_FILE", format!("{rd}/build_exit_code")),
            ("JOB_RESPONSE_FILE", format!("{rd}/response.json")),
            ("CUSTOM_ENV_CI_JOB_ID", job_id.to_string()),
            ("CUSTOM_ENV_CI_JOB_TOKEN", "glcbt-bench-token".into()),
            ("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN", "benchrnr".into()),
            ("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID", "0".into()),
            ("CUSTOM_ENV_CI_PROJECT_PATH", "group/bench".into()),
            ("CUSTOM_ENV_CI_JOB_TIMEOUT", "3600".into()),
            ("CUSTOM_ENV_GITLAB_USER_LOGIN", whoami()),
            ("CUSTOM_ENV_CI_PIPELINE_SOURCE", "push".into()),
        ] {
            env.insert(k.to_string(), v);
        }
        let mut job = Job {
            auth,
            tmp,
            runner_dir,
            config_path,
            env,
        };
        job.config()?;
        let out = job
            .auth(&["prepare"])
            .output()
            .map_err(|e| format!("prepare: {e}"))?;
        if !out.status.success() {
            return Err(format!("prepare failed: {}", show(&out)));
        }
        Ok(job)
    }

    /// A `jacamar-auth` call with the runner's environment, its own process group.
    fn auth(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.auth);
        c.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.runner_dir)
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    fn config(&mut self) -> Res<()> {
        let cfg = self.config_path.display().to_string();
        let out = self
            .auth(&["config", "--configuration", &cfg])
            .output()
            .map_err(|e| format!("config: {e}"))?;
        if !out.status.success() {
            return Err(format!("config failed: {}", show(&out)));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("config stdout is not JSON ({e}): {}", show(&out)))?;
        if let Some(env) = v["job_env"].as_object() {
            for (k, val) in env {
                self.env
                    .insert(k.clone(), val.as_str().unwrap_or_default().to_string());
            }
        }
        Ok(())
    }

    /// The runner's script file for `stage`.
    fn script_file(&self, stage: &str, script: &str) -> Res<PathBuf> {
        let p = self.runner_dir.join(format!("script-{stage}"));
        std::fs::write(&p, script).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    /// `jacamar-auth run SCRIPT STAGE`, output piped as the runner does.
    fn spawn_run(&self, script: &Path, stage: &str) -> Res<Child> {
        self.auth(&["run", &script.display().to_string(), stage])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn jacamar-auth: {e}"))
    }

    /// A FIFO in the job's temp dir, held open read-write by us so that the job's writes
    /// never block on open and our reads never see EOF.
    fn fifo(&self, name: &str) -> Res<(PathBuf, File)> {
        let p = self.tmp.path().join(name);
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("mkfifo {}: {e}", p.display()))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        Ok((p, f))
    }

    fn cleanup(&self) {
        let cfg = self.config_path.display().to_string();
        let _ = self
            .auth(&["cleanup", "--configuration", &cfg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

fn show(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Wait until `f` is readable (or `limit` passes) and read what is there.
fn read_within(f: &mut File, limit: Duration) -> Res<String> {
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return Err(format!("nothing arrived within {limit:?}")),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).map_err(|e| format!("read fifo: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Wait for `child` at most `limit`; kill its group if it is still there.
fn reap(child: &mut Child, limit: Duration) -> Res<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!("jacamar-auth still running after {limit:?}"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Whether `pid` is alive (a zombie counts as gone: it runs no more).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
    }
}

// ---------------------------------------------------------------------------------------
// Statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `v` (not necessarily sorted), `p` in 0..=100.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// One line of the report: figure, value, target, verdict.
struct Row {
    figure: String,
    value: String,
    target: String,
    met: Option<bool>,
}

fn row(figure: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: String::new(),
        met: None,
    }
}

fn judged(figure: impl Into<String>, value: String, target: &str, met: bool) -> Row {
    Row {
        figure: figure.into(),
        value,
        target: target.into(),
        met: Some(met),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Per-stage overhead

fn overhead(s: &Settings) -> Res<Vec<Row>> {
    let job = Job::start(s, "5s")?;
    let before = match &s.before_dir {
        Some(d) => Some(Job::start_with(d.join("jacamar-auth"), "5s")?),
        None => None,
    };
    let mut rows = overhead_with(s, &job, before.as_ref(), true)?;
    rows.extend(overhead_with(s, &job, before.as_ref(), false)?);
    rows.extend(exec_chain(s, &job)?);
    Ok(rows)
}

/// The bash the driver runs for an empty script, alone: the job's environment, in the
/// user's home, output piped (`flags` before the script).
fn bash_alone(home: &Path, flags: &[&str], script: &Path) -> Command {
    let user = whoami();
    let mut c = Command::new("bash");
    c.args(flags)
        .arg(script)
        .env_clear()
        .env("HOME", home)
        .env("USER", &user)
        .env("LOGNAME", &user)
        .env("SHELL", "/bin/bash")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    c
}

/// Wall time of `c` (which must succeed), in ms.
fn time(mut c: Command, what: &str) -> Res<f64> {
    let t0 = Instant::now();
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    let took = ms(t0.elapsed());
    if !out.status.success() {
        return Err(format!("{what} failed: {}", show(&out)));
    }
    Ok(took)
}

/// Run the `sides` in interleaved rounds (3 warm-up rounds; the order rotates from round to
/// round, so no side always runs first); the times of each side, in ms.
fn interleaved(
    n: usize,
    gap: Duration,
    sides: &[(&str, &dyn Fn() -> Command)],
) -> Res<Vec<Vec<f64>>> {
    for _ in 0..3 {
        for (what, make) in sides {
            time(make(), what)?;
        }
    }
    let mut times = vec![Vec::with_capacity(n); sides.len()];
    for i in 0..n {
        for k in 0..sides.len() {
            let idx = (i + k) % sides.len();
            let (what, make) = &sides[idx];
            std::thread::sleep(gap);
            times[idx].push(time(make(), what)?);
        }
    }
    Ok(times)
}

/// The added time of `a` over `base`, paired run by run.
fn added_row(figure: String, a: &[f64], base: &[f64], judge: bool) -> Row {
    let diff: Vec<f64> = a.iter().zip(base).map(|(x, y)| x - y).collect();
    let added = median(&diff);
    let value = format!(
        "{added:.2} ms (p10 {:.2}, p90 {:.2}; difference of medians {:.2}; ratio {:.2}x)",
        pct(&diff, 10.0),
        pct(&diff, 90.0),
        median(a) - median(base),
        median(a) / median(base)
    );
    if judge {
        judged(figure, value, "<= 3 ms", added <= 3.0)
    } else {
        row(figure, value)
    }
}

/// `login`: `bash --login` (the default, reads the account's profile); otherwise the job sets
/// `JACAMAR_NO_BASH_PROFILE` and the baseline is `bash --noprofile --norc`, which takes the
/// profile's own cost and noise out of both sides. With `before`, its driver is a third side
/// of every round.
fn overhead_with(s: &Settings, job: &Job, before: Option<&Job>, login: bool) -> Res<Vec<Row>> {
    let script = job.script_file("build_script", "")?;
    let before_script = match before {
        Some(b) => Some(b.script_file("build_script", "")?),
        None => None,
    };
    // `jacamar` runs bash with the job's environment, in the user's home, output piped.
    let home = PathBuf::from(std::env::var("HOME").unwrap_or("/root".into()));
    let flags: &[&str] = if login {
        &["--login"]
    } else {
        &["--noprofile", "--norc"]
    };
    let driver_of = |j: &Job, script: &Path| {
        let mut c = j.auth(&["run", &script.display().to_string(), "build_script"]);
        if !login {
            c.env("CUSTOM_ENV_JACAMAR_NO_BASH_PROFILE", "true");
        }
        c
    };
    let bash = || bash_alone(&home, flags, &script);
    let driver = || driver_of(job, &script);
    let mut sides: Vec<(&str, &dyn Fn() -> Command)> =
        vec![("bash", &bash), ("jacamar-auth run", &driver)];
    let old = || driver_of(before.unwrap(), before_script.as_ref().unwrap());
    if before.is_some() {
        sides.push(("jacamar-auth run (before)", &old));
    }
    let times = interleaved(s.overhead_pairs, s.gap, &sides)?;
    let (b, a) = (&times[0], &times[1]);
    let n = s.overhead_pairs;
    let (tag, bash) = if login {
        ("1", "bash --login")
    } else {
        ("1b", "bash --noprofile --norc")
    };
    let mut rows = vec![
        row(
            format!("{tag}. {bash} (empty script), median of {n}"),
            format!("{:.2} ms (p90 {:.2})", median(b), pct(b, 90.0)),
        ),
        row(
            format!("{tag}. jacamar-auth run -> jacamar -> {bash}, median of {n}"),
            format!("{:.2} ms (p90 {:.2})", median(a), pct(a, 90.0)),
        ),
        added_row(
            format!("{tag}. added per stage, median of paired differences"),
            a,
            b,
            true,
        ),
    ];
    if let (Some(d), Some(old)) = (&s.before_dir, times.get(2)) {
        rows.push(row(
            format!("{tag}. before ({}): run, median of {n}", d.display()),
            format!("{:.2} ms (p90 {:.2})", median(old), pct(old, 90.0)),
        ));
        rows.push(added_row(
            format!("{tag}. before: added per stage, median of paired differences"),
            old,
            b,
            false,
        ));
    }
    Ok(rows)
}

/// 1c. What the login exec chain itself costs (bash only, no driver): `bash --login -c
/// 'exec "$BASH" --noprofile --norc "$0"' SCRIPT` (what `jacamar` runs, so that
/// `~/.bash_logout` never runs) against `bash --login SCRIPT`, both with an empty home, so
/// only /etc/profile is read.
fn exec_chain(s: &Settings, job: &Job) -> Res<Vec<Row>> {
    let script = job.script_file("build_script", "")?;
    let home = job.tmp.path().join("empty-home");
    std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    let plain = || bash_alone(&home, &["--login"], &script);
    let chain = || {
        bash_alone(
            &home,
            &["--login", "-c", r#"exec "$BASH" --noprofile --norc "$0""#],
            &script,
        )
    };
    let times = interleaved(
        s.overhead_pairs,
        s.gap,
        &[("bash --login", &plain), ("chain", &chain)],
    )?;
    Ok(vec![added_row(
        format!(
            "1c. the login exec chain (bash --login -c 'exec bash ...') over bash --login, empty home, median of {}",
            s.overhead_pairs
        ),
        &times[1],
        &times[0],
        false,
    )])
}

// ---------------------------------------------------------------------------------------
// 2. Signal forwarding

fn signal_forwarding(s: &Settings) -> Res<Vec<Row>> {
    let job = Job::start(s, "5s")?;
    let (ready_p, mut ready) = job.fifo("ready")?;
    let (fired_p, mut fired) = job.fifo("fired")?;
    // The trap writes with builtins only (no fork) to the FIFO we are blocked on.
    let script = job.script_file(
        "build_script",
        &format!(
            "trap 'printf x > {f}; exit 143' TERM\nsleep 300 &\nprintf r > {r}\nwait $!\n",
            f = fired_p.display(),
            r = ready_p.display()
        ),
    )?;
    let mut lat = Vec::new();
    let mut failures = 0usize;
    for _ in 0..s.signal_runs {
        let mut child = job.spawn_run(&script, "build_script")?;
        let pgid = Pid::from_raw(child.id() as i32);
        let one = (|| -> Res<f64> {
            read_within(&mut ready, Duration::from_secs(20))?;
            // `printf r` ran just before `wait`: give bash a moment to get there.
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            killpg(pgid, Signal::SIGTERM).map_err(|e| format!("killpg: {e}"))?;
            read_within(&mut fired, Duration::from_secs(5))?;
            Ok(ms(t0.elapsed()))
        })();
        let st = reap(&mut child, Duration::from_secs(10));
        match (one, st) {
            (Ok(d), Ok(_)) => lat.push(d),
            (Err(e), _) | (_, Err(e)) => {
                failures += 1;
                eprintln!("signal forwarding: a run failed: {e}");
            }
        }
    }
    if lat.is_empty() {
        return Err("signal forwarding: no run succeeded".into());
    }
    let p99 = pct(&lat, 99.0);
    let n = lat.len();
    let mut rows = vec![
        row(
            format!("2. SIGTERM -> trap ran, p50 of {n}"),
            format!("{:.2} ms", pct(&lat, 50.0)),
        ),
        judged(
            format!("2. SIGTERM -> trap ran, p99 of {n}"),
            format!("{p99:.2} ms (max {:.2})", max(&lat)),
            "<= 10 ms",
            p99 <= 10.0,
        ),
    ];
    if failures > 0 {
        rows.push(row("2. failed runs", failures.to_string()));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// 3. Kill escalation

fn escalation(s: &Settings) -> Res<Vec<Row>> {
    let kt = s.kill_timeout_ms;
    let job = Job::start(s, &format!("{kt}ms"))?;
    let (ready_p, mut ready) = job.fifo("ready")?;
    // `trap '' TERM` is inherited as "ignored" by the background sleep too.
    let script = job.script_file(
        "build_script",
        &format!(
            "trap '' TERM\nsleep 300 &\nprintf '%s %s\\n' $$ $! > {r}\nwait $!\n",
            r = ready_p.display()
        ),
    )?;
    let (mut gone, mut exited) = (Vec::new(), Vec::new());
    let mut failures = 0usize;
    for _ in 0..s.escalation_runs {
        let mut child = job.spawn_run(&script, "build_script")?;
        let pgid = Pid::from_raw(child.id() as i32);
        let one = (|| -> Res<(f64, f64)> {
            let line = read_within(&mut ready, Duration::from_secs(20))?;
            let pids: Vec<i32> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if pids.len() != 2 {
                return Err(format!("unexpected ready line {line:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            killpg(pgid, Signal::SIGTERM).map_err(|e| format!("killpg: {e}"))?;
            let (mut t_gone, mut t_exit) = (None, None);
            while t_gone.is_none() || t_exit.is_none() {
                if t0.elapsed() > Duration::from_millis(kt) + Duration::from_secs(10) {
                    return Err("the job or jacamar-auth outlived kill_timeout by 10 s".into());
                }
                if t_gone.is_none() && pids.iter().all(|&p| !alive(p)) {
                    t_gone = Some(t0.elapsed());
                }
                if t_exit.is_none() {
                    if let Ok(Some(_)) = child.try_wait() {
                        t_exit = Some(t0.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            let k = kt as f64;
            Ok((
                ms(t_gone.unwrap_or_default()) - k,
                ms(t_exit.unwrap_or_default()) - k,
            ))
        })();
        let st = reap(&mut child, Duration::from_secs(10));
        match (one, st) {
            (Ok((g, x)), Ok(_)) => {
                gone.push(g);
                exited.push(x);
            }
            (Err(e), _) | (_, Err(e)) => {
                failures += 1;
                eprintln!("kill escalation: a run failed: {e}");
            }
        }
    }
    if gone.is_empty() {
        return Err("kill escalation: no run succeeded".into());
    }
    let n = gone.len();
    let worst = max(&gone);
    let mut rows = vec![
        judged(
            format!("3. SIGTERM -> job gone, minus kill_timeout {kt} ms ({n} runs)"),
            format!("median {:+.2} ms, max {worst:+.2} ms", median(&gone)),
            "within 50 ms",
            worst.abs() <= 50.0 && gone.iter().all(|g| *g >= 0.0),
        ),
        row(
            format!("3. SIGTERM -> jacamar-auth exited, minus kill_timeout ({n} runs)"),
            format!(
                "median {:+.2} ms, max {:+.2} ms",
                median(&exited),
                max(&exited)
            ),
        ),
    ];
    if failures > 0 {
        rows.push(row("3. failed runs", failures.to_string()));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// 4. Idle supervision

/// CPU time (utime + stime of every thread, live or exited) in ms, from /proc/PID/stat.
fn cpu_ms(pid: i32, ticks: f64) -> Res<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| format!("/proc/{pid}/stat: no ')'"))?;
    // After the comm: state is field 3; utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Res<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {}", i + 3))
    };
    Ok((num(11)? + num(12)?) * 1000.0 / ticks)
}

/// Time on CPU of the live threads in ms, from /proc/PID/task/*/schedstat (ns resolution,
/// where /proc/PID/stat has clock ticks).
fn sched_ms(pid: i32) -> Option<f64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 / 1e6)
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: i32, key: &str) -> Res<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no {key}"))
}

struct Sample {
    cpu: f64,
    sched: Option<f64>,
    hwm_kib: f64,
    rss_kib: f64,
    threads: f64,
}

fn sample(pid: i32, ticks: f64) -> Res<Sample> {
    Ok(Sample {
        cpu: cpu_ms(pid, ticks)?,
        sched: sched_ms(pid),
        hwm_kib: status_kib(pid, "VmHWM")?,
        rss_kib: status_kib(pid, "VmRSS")?,
        threads: status_kib(pid, "Threads")?,
    })
}

fn idle(s: &Settings) -> Res<Vec<Row>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let job = Job::start(s, "5s")?;
    let (ready_p, mut ready) = job.fifo("ready")?;
    let (end_p, mut at_end) = job.fifo("at-end")?;
    let (go_p, mut go) = job.fifo("go")?;
    // $PPID of the job's bash is jacamar. At the end the job waits for us to sample.
    let script = job.script_file(
        "build_script",
        &format!(
            "printf '%s\\n' $PPID > {r}\nsleep {n}\nprintf e > {e}\nread -r _ < {g}\n",
            r = ready_p.display(),
            n = s.idle_secs,
            e = end_p.display(),
            g = go_p.display()
        ),
    )?;
    let mut child = job.spawn_run(&script, "build_script")?;
    let auth_pid = child.id() as i32;
    let result = (|| -> Res<(Sample, Sample, Sample, Sample)> {
        let line = read_within(&mut ready, Duration::from_secs(20))?;
        let jac_pid: i32 = line
            .trim()
            .parse()
            .map_err(|_| format!("unexpected ready line {line:?}"))?;
        let start = (sample(auth_pid, ticks)?, sample(jac_pid, ticks)?);
        read_within(&mut at_end, Duration::from_secs(s.idle_secs + 30))?;
        let end = (sample(auth_pid, ticks)?, sample(jac_pid, ticks)?);
        Ok((start.0, start.1, end.0, end.1))
    })();
    let _ = go.write_all(b"go\n");
    let st = reap(&mut child, Duration::from_secs(10));
    let (a0, j0, a1, j1) = result?;
    st?;

    let secs = s.idle_secs;
    let total = a1.cpu + j1.cpu;
    let mib = |k: f64| k / 1024.0;
    let sched = |x: &Sample| x.sched.map_or("n/a".to_string(), |v| format!("{v:.1} ms"));
    let sched_idle = |a: &Sample, b: &Sample| match (a.sched, b.sched) {
        (Some(x), Some(y)) => format!("{:.2} ms", y - x),
        _ => "n/a".into(),
    };
    let worst_hwm = mib(a1.hwm_kib.max(j1.hwm_kib));
    Ok(vec![
        row(
            format!("4. jacamar-auth CPU over a {secs} s job (utime+stime)"),
            format!(
                "{:.0} ms (of which idle phase {:.0} ms; on-CPU {} / idle {}; {} threads)",
                a1.cpu,
                a1.cpu - a0.cpu,
                sched(&a1),
                sched_idle(&a0, &a1),
                a1.threads
            ),
        ),
        row(
            format!("4. jacamar CPU over a {secs} s job (utime+stime)"),
            format!(
                "{:.0} ms (of which idle phase {:.0} ms; on-CPU {} / idle {}; {} threads)",
                j1.cpu,
                j1.cpu - j0.cpu,
                sched(&j1),
                sched_idle(&j0, &j1),
                j1.threads
            ),
        ),
        match (a1.sched, j1.sched) {
            // Judged on the finer of the two clocks when there is one.
            (Some(x), Some(y)) => judged(
                "4. CPU of both, whole job",
                format!(
                    "{:.1} ms on-CPU (utime+stime {total:.0} ms, clock tick {:.0} ms)",
                    x + y,
                    1000.0 / ticks
                ),
                "< 20 ms",
                x + y < 20.0 && total < 20.0,
            ),
            _ => judged(
                "4. CPU of both, whole job",
                format!("{total:.0} ms (clock tick {:.0} ms)", 1000.0 / ticks),
                "< 20 ms",
                total < 20.0,
            ),
        },
        judged(
            "4. peak RSS (VmHWM) jacamar-auth / jacamar",
            format!(
                "{:.2} MiB / {:.2} MiB (VmRSS {:.2} / {:.2})",
                mib(a1.hwm_kib),
                mib(j1.hwm_kib),
                mib(a1.rss_kib),
                mib(j1.rss_kib)
            ),
            "< 10 MiB each",
            worst_hwm < 10.0,
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// Report

fn verdict(r: &Row) -> &'static str {
    match r.met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "",
    }
}

fn print_table(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.target.len()).max().unwrap_or(0);
    for r in rows {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r.figure,
            r.value,
            r.target,
            verdict(r)
        );
    }
}

fn print_markdown(rows: &[Row]) {
    println!("| Figure | Measured | Target | |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.figure,
            r.value,
            r.target,
            verdict(r)
        );
    }
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without
    // it, and must not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "driver bench: skipped (run it with `cargo bench --bench driver` or scripts/bench.sh)"
        );
        return;
    }
    let s = Settings::from_env();
    if !s.auth().is_file() || !s.bin_dir.join("jacamar").is_file() {
        eprintln!(
            "jacamar-auth and jacamar not found in {} (build them with `cargo build --release --bins`, or set JACAMAR_BIN_DIR)",
            s.bin_dir.display()
        );
        std::process::exit(2);
    }
    println!(
        "jacamar-rs driver bench{}: binaries in {}; {}",
        if s.quick { " (quick)" } else { "" },
        s.bin_dir.display(),
        machine()
    );
    let mut rows = Vec::new();
    let mut failed = false;
    type Bench = fn(&Settings) -> Res<Vec<Row>>;
    let benches: [(&str, &str, Bench); 4] = [
        ("overhead", "per-stage overhead", overhead),
        ("signals", "signal forwarding", signal_forwarding),
        ("escalation", "kill escalation", escalation),
        ("idle", "idle supervision", idle),
    ];
    for (key, name, f) in benches {
        if s.only.as_ref().is_some_and(|o| !o.iter().any(|w| w == key)) {
            continue;
        }
        eprintln!("running: {name} ...");
        let t0 = Instant::now();
        match f(&s) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                failed = true;
                eprintln!("{name}: {e}");
                rows.push(row(
                    format!("{name}: FAILED"),
                    e.lines().next().unwrap_or(""),
                ));
            }
        }
        eprintln!("  ({:.1} s)", t0.elapsed().as_secs_f64());
    }
    println!();
    print_table(&rows);
    println!();
    println!("--- markdown ---");
    print_markdown(&rows);
    if failed {
        std::process::exit(1);
    }
}
