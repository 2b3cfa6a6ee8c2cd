//! `limit_build_dir` claim latency: time for one job to claim a directory when 0, 50 and 500
//! lock files of other (unexpired) jobs exist, and when 16 claimants race at once.
//! Prints p50/p95/max per scenario. Run: `cargo bench --bench builddirs`.
//! `BUILDDIRS_BENCH_DIR` picks the file system (default: the system temp dir).

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use jacamar::fs::claim::{lock_name, record, unix_now, ClaimDir, ClaimSettings};
use jacamar::fs::{DirPolicy, UserInfo};

fn me() -> (DirPolicy, UserInfo) {
    let uid = nix::unistd::getuid().as_raw();
    (
        DirPolicy {
            uid,
            group_permissions: false,
        },
        UserInfo {
            name: "bench".into(),
            uid,
            gid: nix::unistd::getgid().as_raw(),
            home: "/".into(),
        },
    )
}

fn settings(job_id: u64) -> ClaimSettings {
    let mut s = ClaimSettings::new(job_id, 0, Some(Duration::from_secs(3600)));
    s.retry_interval = Duration::from_millis(1);
    s
}

fn fresh_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    d
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<36} n={:<5} p50={:>7.3} ms  p95={:>7.3} ms  max={:>7.3} ms",
        samples.len(),
        ms(pick(0.50)),
        ms(pick(0.95)),
        ms(*samples.last().unwrap())
    );
}

fn existing(root: &Path, held: u32, rounds: u64) {
    let (policy, user) = me();
    let dir = fresh_dir(root, &format!("existing_{held}"));
    let far = unix_now() + 86_400;
    for slot in 0..held {
        std::fs::write(
            dir.join(lock_name(slot)),
            record(1_000_000 + u64::from(slot), far, "h"),
        )
        .unwrap();
        std::fs::create_dir(dir.join(format!("{slot:03}"))).unwrap();
    }
    let claims = ClaimDir::open(&dir, &policy, &user).unwrap();
    let mut samples = Vec::new();
    for job in 1..=rounds {
        let s = settings(job);
        let t = Instant::now();
        let c = claims.claim(&s, &mut |_| {}).unwrap();
        samples.push(t.elapsed());
        assert_eq!(c.slot, held);
        claims.release(job, false).unwrap();
    }
    report(&format!("claim, {held} existing lock files"), samples);
}

fn concurrent(root: &Path, claimants: u64, rounds: u64) {
    let dir = fresh_dir(root, "concurrent");
    let mut samples = Vec::new();
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(claimants as usize));
        let handles: Vec<_> = (0..claimants)
            .map(|i| {
                let (dir, barrier) = (dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let (policy, user) = me();
                    // Own descriptors per claimant: OFD locks exclude each other across threads.
                    let claims = ClaimDir::open(&dir, &policy, &user).unwrap();
                    let job = round * 1000 + i + 1;
                    barrier.wait();
                    let t = Instant::now();
                    claims.claim(&settings(job), &mut |_| {}).unwrap();
                    let took = t.elapsed();
                    (claims, job, took)
                })
            })
            .collect();
        let done: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (claims, job, took) in done {
            samples.push(took);
            claims.release(job, false).unwrap();
        }
    }
    report(&format!("claim, {claimants} concurrent claimants"), samples);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, concurrent_rounds) = if full { (200, 40) } else { (5, 2) };
    let base = std::env::var_os("BUILDDIRS_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).unwrap();
    println!("limit_build_dir claims in {}", base.display());
    for held in [0, 50, 500] {
        existing(tmp.path(), held, rounds);
    }
    concurrent(tmp.path(), 16, concurrent_rounds);
}
