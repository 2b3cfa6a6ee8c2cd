//! Shared per-user status polling for PBS (Debian's `slurm-wlm-torque` over the real Slurm)
//! and for the FAKE Flux, LSF and Cobalt CLIs of tests/fakes/ (docs/batch-polling.md, one
//! section per scheduler): N concurrent jobs of one user on one host, their scheduler
//! commands counted through a `[batch] scheduler_bin` dir of wrappers that log every call.
//! At most two status commands per `command_delay`, none naming several jobs, and every job
//! ends with its own exit code. Jobs run as the non-root `jacamar-ci`; needs root.

use std::path::Path;
use std::time::Duration;

use crate::batch_slurm::{ci_user, require_slurm, wait_exit};
use crate::harness::{require_root, runner_script, Harness};
use crate::sched_bin::{batch_harness, exec_real, fake_clis, shared_data_dir, which, SchedBin};

/// A harness of `executor` for `jacamar-ci` with `[batch]` lines `batch` and the data dir
/// `shared`, prepared.
fn harness(executor: &str, batch: &str, shared: &Path) -> Harness {
    batch_harness(executor, batch, Some(shared))
}

/// Job `i`'s script: runs a few seconds, then exits with `i % 4`.
fn script(i: usize, secs: u32) -> String {
    runner_script(&format!(
        "echo \"job {i} start\"\nsleep {secs}\nexit {}\n",
        i % 4
    ))
}

/// Run every harness's build stage at once; each must end with its own exit code.
fn run_all(hs: &[Harness], secs: u32) {
    let runs: Vec<_> = hs
        .iter()
        .enumerate()
        .map(|(i, h)| h.spawn_run("build_script", &script(i, secs)))
        .collect();
    for (i, mut child) in runs.into_iter().enumerate() {
        let st = wait_exit(&mut child, Duration::from_secs(600)).expect("run did not end");
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("job {i} start")), "job {i}: {text}");
        if i % 4 == 0 {
            assert!(st.success(), "job {i}: {text}");
        } else {
            assert_eq!(st.code(), Some(1), "job {i}: {text}");
            let code = (i % 4).to_string();
            assert_eq!(
                hs[i].build_exit_code().as_deref(),
                Some(code.as_str()),
                "job {i}: {text}"
            );
        }
    }
}

/// The status calls (`is_status`) of `calls` since the first of `submits` submissions:
/// at most two per `period` seconds, each naming at most one job (`ids` counts the job
/// operands of a call), and at least two per-user listings (`is_listing`). Returns the
/// status calls for the caller's own checks.
fn check_counts(
    calls: &[(f64, String, String)],
    submit: &str,
    submits: usize,
    period: f64,
    is_status: impl Fn(&str, &str) -> bool,
    is_listing: impl Fn(&str) -> bool,
    ids: impl Fn(&str) -> usize,
) {
    let sub: Vec<f64> = calls
        .iter()
        .filter(|(_, t, a)| t == submit && (submit != "flux" || a.starts_with("submit")))
        .map(|c| c.0)
        .collect();
    assert_eq!(sub.len(), submits, "{calls:#?}");
    let status: Vec<&(f64, String, String)> =
        calls.iter().filter(|(_, t, a)| is_status(t, a)).collect();
    let first = sub.iter().cloned().fold(f64::MAX, f64::min);
    let last = status.iter().map(|c| c.0).fold(first, f64::max);
    let periods = ((last - first) / period).ceil().max(1.0);
    assert!(
        status.len() as f64 / periods <= 2.0,
        "{} status calls in {periods} periods of {period}s: {status:#?}",
        status.len()
    );
    for (_, tool, args) in &status {
        assert!(ids(args) <= 1, "a multi-id status query: {tool} {args}");
    }
    let listings = status.iter().filter(|c| is_listing(&c.2)).count();
    assert!(listings >= 2, "no per-user listing: {status:#?}");
    eprintln!(
        "{submits} jobs: {} status calls ({listings} per-user listings) in {periods} periods",
        status.len()
    );
}

/// The operands of a command line that are not options nor option values (`opts_with_value`
/// take the next word).
fn operands(args: &str, opts_with_value: &[&str]) -> usize {
    let w: Vec<&str> = args.split(' ').filter(|a| !a.is_empty()).collect();
    let mut n = 0;
    let mut i = 0;
    while i < w.len() {
        if opts_with_value.contains(&w[i]) {
            i += 2;
            continue;
        }
        if !w[i].starts_with('-') {
            n += 1;
        }
        i += 1;
    }
    n
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn pbs_twenty_jobs_of_one_user_share_one_qstat_per_period() {
    if !require_root() {
        return;
    }
    require_slurm();
    let bin = SchedBin::new(
        "jrs-pusers-bin-",
        &[
            ("qsub", exec_real(&which("qsub"))),
            ("qstat", exec_real(&which("qstat"))),
            ("qdel", exec_real(&which("qdel"))),
        ],
    );
    let (_keep, data) = shared_data_dir("jrs-pusers-data-");
    let batch = format!(
        "command_delay = \"2s\"\nnfs_timeout = \"20s\"\nscheduler_bin = \"{}\"",
        bin.path().display()
    );
    let hs: Vec<Harness> = (0..20).map(|_| harness("pbs", &batch, &data)).collect();
    run_all(&hs, 10);
    let calls = bin.calls();
    let user = ci_user();
    check_counts(
        &calls,
        "qsub",
        20,
        2.0,
        |t, _| t == "qstat",
        |a| a == format!("-u {user}"),
        |a| operands(a, &["-u"]),
    );
    for h in &hs {
        assert!(h.cleanup().status.success());
    }
}

/// `n` jobs of one user on the FAKE `executor` (`flux`, `lsf`, `cobalt`), polled every
/// second: their calls.
fn fake_run(executor: &str, tools: &[&str], n: usize) -> Vec<(f64, String, String)> {
    let (keep, data) = shared_data_dir("jrs-pusers-data-");
    let (fakes, state) = fake_clis(keep.path());
    let sub = if executor == "cobalt" { "cobalt/" } else { "" };
    let bin = SchedBin::new(
        "jrs-pusers-bin-",
        &tools
            .iter()
            .map(|t| (*t, exec_real(&fakes.join(format!("{sub}{t}")))))
            .collect::<Vec<_>>(),
    );
    let batch = format!(
        "command_delay = \"1s\"\nnfs_timeout = \"5s\"\nscheduler_bin = \"{}\"\nenv_vars = [\"FAKE_SCHED_DIR={}\"]",
        bin.path().display(),
        state.display()
    );
    let hs: Vec<Harness> = (0..n).map(|_| harness(executor, &batch, &data)).collect();
    run_all(&hs, 5);
    for h in &hs {
        assert!(h.cleanup().status.success());
    }
    bin.calls()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn lsf_fake_jobs_of_one_user_share_one_bjobs_per_period() {
    if !require_root() {
        return;
    }
    let calls = fake_run("lsf", &["bsub", "bjobs", "bkill"], 8);
    let user = ci_user();
    check_counts(
        &calls,
        "bsub",
        8,
        1.0,
        |t, _| t == "bjobs",
        |a| a.starts_with(&format!("-u {user} -a ")),
        // The -o formats hold blanks: one word each here.
        |a| {
            let a = a
                .replace(
                    "jobid stat exit_code exit_reason pend_reason delimiter='|'",
                    "F",
                )
                .replace("stat exit_code exit_reason pend_reason delimiter='|'", "F");
            operands(&a, &["-u", "-o"])
        },
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn flux_fake_jobs_of_one_user_share_one_flux_jobs_per_period() {
    if !require_root() {
        return;
    }
    let calls = fake_run("flux", &["flux"], 8);
    let user = ci_user();
    check_counts(
        &calls,
        "flux",
        8,
        1.0,
        |t, a| t == "flux" && a.starts_with("jobs "),
        |a| a.contains(&format!("--user={user}")) && a.contains(" -a "),
        // `jobs` itself is an operand; the format has no blanks.
        |a| operands(a, &["-o"]) - 1,
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn cobalt_fake_jobs_of_one_user_share_one_qstat_per_period() {
    if !require_root() {
        return;
    }
    let calls = fake_run("cobalt", &["qsub", "qstat", "qdel"], 8);
    let user = ci_user();
    check_counts(
        &calls,
        "qsub",
        8,
        1.0,
        |t, _| t == "qstat",
        |a| a == format!("-u {user}"),
        |a| operands(a, &["-u"]),
    );
}
