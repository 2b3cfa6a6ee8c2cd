//! What a job's `image:` costs (issue 19): the wall time of a user stage run in the image
//! with rootless podman against the same stage on the host, and the peak memory of the
//! processes involved, as ratios within one run.
//!
//! Each round runs two jobs through `jacamar-sim` (the runner's calls, its scripts and its
//! job response) as an ordinary account with `downscope = "none"` (jacamar-auth, jacamar and
//! podman all run as that account, as podman does under setuid downscope), with
//! `run_mechanism = "podman"`: one without an image, one with the test image from a local
//! registry (TLS, htpasswd, the job token as the password: scripts/containers/registry.sh).
//! Both jobs are `script = ["true"]`, `after_script = ["true"]`: `build_script` of the image
//! job is the first pull (every job has its own podman storage), `after_script` the cached
//! image (the registry is still asked: `--pull=always`). The order of the two jobs alternates
//! from round to round. A sampler reads `VmHWM` of the account's processes every 10 ms.
//!
//! Run as root: `cargo build --release --bins && cargo bench --bench containers` (needs the
//! tools and image of scripts/containers/setup.sh). `BENCH_ROUNDS` (default 7), and
//! `JACAMAR_BIN_DIR` (default: the bench's own build of the binaries), `BENCH_MECHANISM`
//! (`podman`, the default, or `charliecloud`: ch-image pull, ch-convert and ch-run at every
//! user stage). Nothing is asserted on timings.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const USER: &str = "jrs_c19_bench";
const IMAGE_ARCHIVE: &str = "/var/cache/jacamar-rs/images/debian-bookworm-minbase.tar";
/// The processes whose peak RSS is reported (by `comm`).
const WATCHED: &[&str] = &[
    "jacamar-auth",
    "jacamar",
    "podman",
    "conmon",
    "catatonit",
    "ch-image",
    "ch-convert",
];

type Res<T> = Result<T, String>;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

fn sh(cmd: &mut Command) -> Res<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn account() -> Res<nix::unistd::User> {
    if nix::unistd::User::from_name(USER).ok().flatten().is_none() {
        sh(Command::new("useradd").args(["-m", "-s", "/bin/bash", USER]))?;
    }
    let u = nix::unistd::User::from_name(USER)
        .ok()
        .flatten()
        .ok_or(format!("useradd {USER} failed"))?;
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
            return Err(format!("{USER} has no range in {f}"));
        }
    }
    Ok(u)
}

/// The local registry: started on a free port, stopped when dropped.
struct Registry {
    dir: PathBuf,
    host: String,
}

impl Registry {
    fn start(token: &str) -> Res<Registry> {
        let dir = std::env::temp_dir().join(format!("jrs-c19-bench-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let reg = Registry {
            dir,
            host: format!("127.0.0.1:{port}"),
        };
        sh(Command::new(scripts().join("registry.sh"))
            .arg("start")
            .arg(&reg.dir)
            .env("JRS_REGISTRY_PORT", port.to_string())
            .env("JRS_REGISTRY_PASSWORD", token))?;
        Ok(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("registry.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containers")
}

/// Peak `VmHWM` (kB) per watched `comm` of `uid`'s processes, sampled until `stop`.
fn sampler(uid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<String, u64>> {
    std::thread::spawn(move || {
        let mut peak: BTreeMap<String, u64> = BTreeMap::new();
        while !stop.load(Ordering::SeqCst) {
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let p = e.path();
                if !e
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    || std::fs::metadata(&p).map(|m| m.uid()).ok() != Some(uid)
                {
                    continue;
                }
                let Ok(status) = std::fs::read_to_string(p.join("status")) else {
                    continue;
                };
                let field = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                };
                let Some(name) = field("Name:") else { continue };
                if !WATCHED.contains(&name.as_str()) {
                    continue;
                }
                let kb = field("VmHWM:")
                    .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                let e = peak.entry(name).or_default();
                *e = (*e).max(kb);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// One job through jacamar-sim as the account: its calls' wall times (ms) by stage, and the
/// peak RSS of its processes.
struct Job {
    ms: BTreeMap<String, f64>,
    peak_kb: BTreeMap<String, u64>,
}

fn run_job(
    bins: &Path,
    dir: &Path,
    user: &nix::unistd::User,
    image: Option<(&str, &str)>,
    id: u64,
) -> Res<Job> {
    let summary = dir.join(format!("summary-{id}.json"));
    let mut c = Command::new(bins.join("jacamar-sim"));
    c.arg("--driver")
        .arg(bins.join("jacamar-auth"))
        .arg("--configuration")
        .arg(dir.join("jacamar.toml"))
        .arg("--job")
        .arg(dir.join("job.toml"))
        .arg("--summary")
        .arg(&summary)
        .args(["--job-id", &id.to_string()]);
    if let Some((name, host)) = image {
        c.args(["--image", name, "--registry-credential", host])
            .arg("--job-token-file")
            .arg(dir.join("token"));
    }
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &user.dir)
        .env("USER", USER)
        .current_dir(dir)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::null());
    let stop = Arc::new(AtomicBool::new(false));
    let s = sampler(user.uid.as_raw(), stop.clone());
    let out = c.output().map_err(|e| e.to_string());
    stop.store(true, Ordering::SeqCst);
    let peak_kb = s.join().map_err(|_| "sampler panicked")?;
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "job {id} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary).map_err(|e| format!("{}: {e}", summary.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let mut ms = BTreeMap::new();
    let mut end = 0.0f64;
    for call in v["calls"].as_array().into_iter().flatten() {
        let (a, b) = (
            call["started_ms"].as_f64().unwrap_or(0.0),
            call["ended_ms"].as_f64().unwrap_or(0.0),
        );
        let name = call["stage"]
            .as_str()
            .or(call["kind"].as_str())
            .unwrap_or("?")
            .to_string();
        *ms.entry(name).or_default() += b - a;
        end = end.max(b);
    }
    ms.insert("whole job".into(), end);
    Ok(Job { ms, peak_kb })
}

fn run() -> Res<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err("run as root (the bench makes an account and a registry)".into());
    }
    if !Path::new(IMAGE_ARCHIVE).is_file() {
        return Err(format!(
            "{IMAGE_ARCHIVE} is missing: run scripts/containers/setup.sh"
        ));
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(7);
    let mech = std::env::var("BENCH_MECHANISM").unwrap_or_else(|_| "podman".into());
    if !matches!(mech.as_str(), "podman" | "charliecloud") {
        return Err(format!(
            "BENCH_MECHANISM = {mech:?}: podman or charliecloud"
        ));
    }
    let bins = std::env::var_os("JACAMAR_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_jacamar-auth"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    let user = account()?;
    let token = format!("glcbt-bench-{:08x}", std::process::id());
    let reg = Registry::start(&token)?;
    let image = format!("{}/ci/debian:bookworm", reg.host);
    let dir = tempfile::Builder::new()
        .prefix("jrs-c19-bench")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // The jobs write their summaries there.
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str, mode: u32| -> Res<()> {
        let p = dir.path().join(name);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        nix::unistd::chown(&p, Some(user.uid), Some(user.gid)).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    };
    write(
        "jacamar.toml",
        &format!("[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\nrun_mechanism = \"{mech}\"\n[auth]\ndownscope = \"none\"\n"),
        0o644,
    )?;
    write(
        "job.toml",
        "name = \"bench\"\nscript = [\"true\"]\nafter_script = [\"true\"]\n",
        0o644,
    )?;
    write("token", &format!("{token}\n"), 0o600)?;
    println!(
        "jacamar-rs container bench ({mech}): {rounds} rounds, binaries in {}, image {image}, account {USER}",
        bins.display()
    );
    let mut host: Vec<Job> = Vec::new();
    let mut podman: Vec<Job> = Vec::new();
    let base = u64::from(std::process::id()) * 100;
    for r in 0..rounds {
        let id = base + 2 * r as u64;
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_image in order {
            let img = with_image.then_some((image.as_str(), reg.host.as_str()));
            let j = run_job(&bins, dir.path(), &user, img, id + u64::from(with_image))?;
            eprintln!(
                "round {r} {}: build_script {:.0} ms, after_script {:.0} ms, cleanup {:.0} ms",
                if with_image { mech.as_str() } else { "host" },
                j.ms.get("build_script").copied().unwrap_or(f64::NAN),
                j.ms.get("after_script").copied().unwrap_or(f64::NAN),
                j.ms.get("cleanup").copied().unwrap_or(f64::NAN),
            );
            if with_image { &mut podman } else { &mut host }.push(j);
        }
    }
    let col = |jobs: &[Job], k: &str| -> Vec<f64> {
        jobs.iter().filter_map(|j| j.ms.get(k).copied()).collect()
    };
    println!();
    println!("| figure (ms) | no image: median (min-max) | {mech}: median (min-max) | ratio of medians |");
    println!("|---|---|---|---|");
    for (label, k) in [
        (
            "user stage 1: build_script (image: first pull + run)",
            "build_script",
        ),
        (
            "user stage 2: after_script (image: the job's second stage)",
            "after_script",
        ),
        ("cleanup (image: the job's container state)", "cleanup"),
        ("whole job", "whole job"),
    ] {
        let (h, p) = (col(&host, k), col(&podman, k));
        let ((h0, h1), (p0, p1)) = (min_max(&h), min_max(&p));
        println!(
            "| {label} | {:.0} ({h0:.0}-{h1:.0}) | {:.0} ({p0:.0}-{p1:.0}) | {:.1} |",
            median(&h),
            median(&p),
            median(&p) / median(&h)
        );
    }
    println!();
    println!("| peak RSS (MB), max over the job's processes of that name | no image: median (min-max) | {mech}: median (min-max) |");
    println!("|---|---|---|");
    for name in WATCHED {
        let kb = |jobs: &[Job]| -> Vec<f64> {
            jobs.iter()
                .filter_map(|j| j.peak_kb.get(*name).map(|k| *k as f64 / 1024.0))
                .collect()
        };
        let (h, p) = (kb(&host), kb(&podman));
        let cell = |v: &[f64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                let (a, b) = min_max(v);
                format!("{:.1} ({a:.1}-{b:.1})", median(v))
            }
        };
        println!("| {name} | {} | {} |", cell(&h), cell(&p));
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without
    // it, and must not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("containers bench: skipped (run it with `cargo bench --bench containers`)");
        return;
    }
    if let Err(e) = run() {
        eprintln!("containers bench: {e}");
        std::process::exit(2);
    }
}
