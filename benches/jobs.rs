//! Job wall time through the real GitLab Runner: a trivial CI job (`echo hello`, with the
//! runner's own stages: prepare_script, get_sources with a real `git fetch` from the fake
//! GitLab of tests/e2e, the script, the cleanups) run by `jacamar-auth` as README.md's
//! "Deployment" section wires it (setuid to a `useradd -m` account, a verified id_token),
//! against minimal pass-through custom executors, in interleaved rounds.
//!
//! Time of a job = from the runner taking it (`POST /api/v4/jobs/request`) to its final
//! update (`PUT /api/v4/jobs/:id` with success), as GitLab sees it: config_exec,
//! prepare_exec, every run_exec and cleanup_exec. The runner's poll wait is not in it.
//!
//! Accounts: `jrs_bench_plain` (Debian's /etc/skel profile) and `jrs_bench_slowprof`, whose
//! `~/.bash_profile` sleeps 0.3 s before reading `~/.profile` (a stand-in for a site profile
//! that loads a module system).
//!
//! Executors, each with its own runner (`concurrent = 4`, `check_interval = 1`) and fake
//! GitLab:
//! * pass-through as root: `run_exec` is `exec bash "$1"` (the runner's own account, no
//!   profile, no account switch; the floor);
//! * pass-through as the user: `config_exec` puts the builds dir in the user's home,
//!   `run_exec` is `cd / && exec setpriv --reuid=U --regid=U --init-groups --reset-env bash
//!   --login -c 'exec bash --noprofile --norc -s' < "$1"` (a login shell per stage, as the
//!   job's account: what a driver without supervision does);
//! * jacamar-rs (release binaries), default; with `JACAMAR_NO_BASH_PROFILE`; with
//!   `JACAMAR_BASH_PROFILE_ONCE`.
//!
//! Run with `scripts/bench-jobs.sh` (root; builds the release binaries and the runner).
//! `JOBS_BENCH_N` jobs per executor (default 10), `JOBS_BENCH_RUNNER=v18.0.5` for the other
//! runner release (default v16.9.2), `JOBS_BENCH_BEFORE_DIR=DIR` adds the jacamar-auth in
//! DIR (another build) as one more executor of the same rounds, `JOBS_BENCH_ACCOUNTS=plain`
//! (or `slow`) runs one account's series only. Nothing here asserts on timings.

#[path = "../tests/integration/auth_kit.rs"]
mod auth_kit;
#[allow(dead_code)]
#[path = "../tests/e2e/coordinator.rs"]
mod coordinator;
#[path = "../tests/integration/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/e2e/site.rs"]
mod site;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use site::{JobSpec, Site, SiteOpts, Version};

const PLAIN: &str = "jrs_bench_plain";
const SLOW: &str = "jrs_bench_slowprof";
/// What the slow account's `~/.bash_profile` holds.
const SLOW_PROFILE: &str = "sleep 0.3\n[ -f ~/.profile ] && . ~/.profile\n";
/// How long one job may take.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// One series: jobs of `login` on `site` with the job variables `vars`.
struct Variant {
    name: String,
    site: usize,
    login: &'static str,
    vars: Vec<(&'static str, &'static str)>,
    /// The pass-through series this one is compared with (index into the variants).
    against: Option<usize>,
    times: Vec<f64>,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("jobs bench: skipped (run it with scripts/bench-jobs.sh)");
        return;
    }
    let version = match std::env::var("JOBS_BENCH_RUNNER").as_deref() {
        Ok("v18.0.5") => Version::V18_0_5,
        _ => Version::V16_9_2,
    };
    let n: usize = std::env::var("JOBS_BENCH_N")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10);
    let Some(bin) = site::prerequisites(version) else {
        return;
    };
    auth_kit::ensure_user(PLAIN, &[], "/bin/bash");
    let slow = auth_kit::ensure_user(SLOW, &[], "/bin/bash");
    let profile = slow.dir.join(".bash_profile");
    std::fs::write(&profile, SLOW_PROFILE).unwrap();
    nix::unistd::chown(&profile, Some(slow.uid), Some(slow.gid)).unwrap();

    let mut sites = vec![
        Site::new(version, bin.clone(), SiteOpts::default()),
        Site::new(version, bin.clone(), SiteOpts::default()),
        Site::new(version, bin.clone(), SiteOpts::default()),
    ];
    sites[0].validate();
    pass_through(&sites[1], true);
    pass_through(&sites[2], false);
    let before = std::env::var_os("JOBS_BENCH_BEFORE_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &before {
        let s = Site::new(version, bin, SiteOpts::default());
        // The same site, wired to the other build's jacamar-auth.
        let toml = std::fs::read_to_string(&s.runner_toml).unwrap();
        let other = dir.join("jacamar-auth").display().to_string();
        std::fs::write(&s.runner_toml, toml.replace(harness::AUTH, &other)).unwrap();
        sites.push(s);
    }
    for s in &mut sites {
        s.start_runner();
    }

    let mut variants = vec![Variant {
        name: "pass-through as root: `bash SCRIPT`".into(),
        site: 1,
        login: PLAIN,
        vars: vec![],
        against: None,
        times: vec![],
    }];
    let accounts: Vec<&'static str> = match std::env::var("JOBS_BENCH_ACCOUNTS").as_deref() {
        Ok("plain") => vec![PLAIN],
        Ok("slow") => vec![SLOW],
        _ => vec![PLAIN, SLOW],
    };
    for login in accounts {
        let pt = variants.len();
        variants.push(Variant {
            name: format!("{login}: pass-through as the user, login shell per stage"),
            site: 2,
            login,
            vars: vec![],
            against: None,
            times: vec![],
        });
        for (what, vars) in [
            ("jacamar-rs, default (login profile every stage)", vec![]),
            (
                "jacamar-rs, JACAMAR_BASH_PROFILE_ONCE=true",
                vec![("JACAMAR_BASH_PROFILE_ONCE", "true")],
            ),
            (
                "jacamar-rs, JACAMAR_NO_BASH_PROFILE=true",
                vec![("JACAMAR_NO_BASH_PROFILE", "true")],
            ),
        ] {
            variants.push(Variant {
                name: format!("{login}: {what}"),
                site: 0,
                login,
                vars,
                against: Some(pt),
                times: vec![],
            });
        }
        if let Some(dir) = &before {
            variants.push(Variant {
                name: format!("{login}: jacamar-rs of {}, default", dir.display()),
                site: 3,
                login,
                vars: vec![],
                against: Some(pt),
                times: vec![],
            });
        }
    }

    println!(
        "jobs bench: runner {}, {n} jobs per executor, jacamar-auth {}",
        version.tag(),
        harness::AUTH
    );
    // One job of each first (the JWKS cache, the page cache, the runner's first job).
    for v in &variants {
        run_job(&sites[v.site], v);
    }
    for round in 0..n {
        let k = variants.len();
        for i in 0..k {
            let idx = (round + i) % k;
            let t = run_job(&sites[variants[idx].site], &variants[idx]);
            variants[idx].times.push(t);
        }
        eprintln!("round {} of {n} done", round + 1);
    }
    for s in &mut sites {
        s.stop();
    }

    let floor = median(&variants[0].times);
    println!();
    println!("| Executor, account | Job wall time, median (p10-p90) of {n} | vs the same account's pass-through | vs pass-through as root |");
    println!("|---|---|---|---|");
    for v in &variants {
        let m = median(&v.times);
        let vs = v.against.map_or(String::from("-"), |a| {
            format!("{:.2}x", m / median(&variants[a].times))
        });
        println!(
            "| {} | {:.3} s ({:.3}-{:.3}) | {vs} | {:.2}x |",
            v.name,
            m,
            pct(&v.times, 10.0),
            pct(&v.times, 90.0),
            m / floor
        );
    }
}

/// The runner of `site` becomes a pass-through custom executor (`as_root`: `bash SCRIPT` as
/// the runner's account; otherwise a login shell as the job's user, the builds dir in its
/// home).
fn pass_through(site: &Site, as_root: bool) {
    let dir = site.tmp.path().join("pass-through");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let (dirs, hooks) = if as_root {
        let run = write("run.sh", "#!/bin/bash\nexec bash \"$1\"\n");
        (
            format!(
                "  builds_dir = \"{d}/builds\"\n  cache_dir = \"{d}/cache\"\n",
                d = dir.display()
            ),
            format!("    run_exec = \"{}\"\n", run.display()),
        )
    } else {
        let config = write(
            "config.sh",
            "#!/bin/bash\nh=$(getent passwd \"$CUSTOM_ENV_GITLAB_USER_LOGIN\" | cut -d: -f6)\n\
             printf '{\"builds_dir\":\"%s/pt-builds\",\"cache_dir\":\"%s/pt-cache\",\"builds_dir_is_shared\":false}\\n' \"$h\" \"$h\"\n",
        );
        let run = write(
            "run.sh",
            "#!/bin/bash\nu=$CUSTOM_ENV_GITLAB_USER_LOGIN\n\
             cd / && exec setpriv --reuid=\"$u\" --regid=\"$u\" --init-groups --reset-env \
             bash --login -c 'exec bash --noprofile --norc -s' < \"$1\"\n",
        );
        (
            String::new(),
            format!(
                "    config_exec = \"{}\"\n    run_exec = \"{}\"\n",
                config.display(),
                run.display()
            ),
        )
    };
    let runner = format!(
        "concurrent = 4\ncheck_interval = 1\n\n[[runners]]\n  name = \"bench-pass-through\"\n  \
         url = \"{}\"\n  id = 1\n  token = \"{}\"\n  executor = \"custom\"\n{dirs}  [runners.custom]\n{hooks}",
        site.url(),
        coordinator::RUNNER_TOKEN
    );
    std::fs::write(&site.runner_toml, runner).unwrap();
}

/// Queue one job of `v` on `site`, wait for it to succeed; its wall time in seconds.
fn run_job(site: &Site, v: &Variant) -> f64 {
    let mut spec = JobSpec::new("bench", &["echo hello"]);
    spec.login = Some(v.login.to_string());
    for (k, val) in &v.vars {
        spec = spec.var(k, val);
    }
    let job = site.queue(&spec);
    let f = site.wait_final(&job, JOB_LIMIT);
    assert_eq!(
        f.state,
        "success",
        "{}: {f:?}\n{}",
        v.name,
        site.explain(&job)
    );
    site.coord
        .job_duration(job.id)
        .unwrap_or_else(|| panic!("{}: no duration for job {}", v.name, job.id))
        .as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}
