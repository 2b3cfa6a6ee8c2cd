//! Pipeline-scoped allocations (issue 20, docs/allocations-design.md "Tests"; the user's
//! page is docs/allocations.md) against the real one-node Slurm, jobs run as the non-root
//! `jacamar-ci` with `downscope = "none"`, scheduler commands through counting wrappers
//! (`[batch] scheduler_bin`).
//!
//! A pipeline here is several [`Harness`] values (one per CI job) with the same user, the
//! same `[batch]` lines and one shared data dir (so one base dir and one `.jacamar-alloc`),
//! each with its own CI job id. Every test gets its own pipeline id ([`Pipeline::new`]), so
//! no two tests can share an allocation; a [`Pipeline`] dropped while allocations of its key
//! are still listed (a failed test) cancels them by name, and only them.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch_slurm::{ci_user, heartbeat_job, lines_of, require_slurm, wait_exit, wait_line};
use crate::harness::{
    alive, children, descendants, require_root, runner_script_in, show, wait_for, Harness, Shape,
};
use crate::sched_bin::{exec_real, shared_data_dir, use_data_dir, which, SchedBin};
use crate::shape_tests;

const GENERAL: &str = "kill_timeout = \"5s\"";
/// The scheduler arguments of every pipeline unless a test says otherwise: a time limit, so
/// even an allocation the holder failed to end leaves the queue within minutes.
const ARGS: &str = "-n 1 --time=10";
/// The Slurm tools the driver runs in reuse mode (srun for the steps).
const TOOLS: [&str; 6] = ["sbatch", "srun", "squeue", "sacct", "scontrol", "scancel"];

/// A pipeline id no other test (nor an earlier run of this one) uses: the test's own
/// constant `k`, then microseconds of the clock.
fn unique_id(k: u32) -> String {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{k}{:010}", us % 10_000_000_000)
}

/// The CI user's (uid, gid, home).
fn ci_account() -> (u32, u32, PathBuf) {
    let pw = nix::unistd::User::from_name(&ci_user())
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "user {} does not exist (scripts/test.sh creates it)",
                ci_user()
            )
        });
    (pw.uid.as_raw(), pw.gid.as_raw(), pw.dir)
}

/// One pipeline's shared state: the data dir, the counting wrappers, the `[batch]` lines,
/// the project and pipeline ids and the scheduler arguments its jobs get.
struct Pipeline {
    data: PathBuf,
    bin: SchedBin,
    batch: String,
    project: String,
    id: String,
    args: String,
    /// Allocation ids seen in this pipeline's logs, and scheduler jobs the test submitted
    /// itself: cancelled on drop if still listed.
    ours: Mutex<Vec<String>>,
    _data_dir: tempfile::TempDir,
}

impl Pipeline {
    /// A pipeline with `allocation_reuse = true` and an idle timeout of 10 s (the least
    /// `validate` accepts), `k` the test's own constant for its pipeline id.
    fn new(k: u32) -> Pipeline {
        Pipeline::configured(
            k,
            "allocation_reuse = true\nallocation_idle_timeout = \"10s\"",
        )
    }

    /// A pipeline whose `[batch]` table has `alloc_lines` besides the usual ones.
    fn configured(k: u32, alloc_lines: &str) -> Pipeline {
        require_slurm();
        let tools: Vec<(&str, String)> = TOOLS
            .into_iter()
            .map(|t| (t, exec_real(&which(t))))
            .collect();
        let bin = SchedBin::new("jrs-alloc-bin-", &tools);
        let (data_dir, data) = shared_data_dir("jrs-alloc-data-");
        let batch = format!(
            "command_delay = \"1s\"\nnfs_timeout = \"20s\"\nscheduler_bin = \"{}\"\n{alloc_lines}",
            bin.path().display()
        );
        Pipeline {
            data,
            bin,
            batch,
            project: format!("7{k}"),
            id: unique_id(k),
            args: ARGS.to_string(),
            ours: Mutex::new(Vec::new()),
            _data_dir: data_dir,
        }
    }

    /// A prepared CI job of this pipeline, opted in.
    fn job(&self) -> Harness {
        self.job_with(&[])
    }

    /// A prepared CI job of this pipeline, opted in, with the variables `vars` set over
    /// the pipeline's own (project, pipeline, arguments, the opt-in).
    fn job_with(&self, vars: &[(&str, &str)]) -> Harness {
        self.make_job(true, vars)
    }

    /// A prepared CI job of this pipeline that does not set `JACAMAR_REUSE_ALLOCATION`.
    fn job_not_opted_in(&self) -> Harness {
        self.make_job(false, &[])
    }

    fn make_job(&self, opt_in: bool, vars: &[(&str, &str)]) -> Harness {
        let mut h = Harness::batch("slurm", &ci_user(), GENERAL, &self.batch);
        use_data_dir(&mut h, &self.data);
        if opt_in {
            h.set("CUSTOM_ENV_JACAMAR_REUSE_ALLOCATION", "pipeline");
        }
        h.set("CUSTOM_ENV_CI_PROJECT_ID", &self.project);
        h.set("CUSTOM_ENV_CI_PIPELINE_ID", &self.id);
        h.set("CUSTOM_ENV_SCHEDULER_PARAMETERS", &self.args);
        for (k, v) in vars {
            h.set(k, v);
        }
        h.config_json();
        let out = h.prepare();
        assert!(out.status.success(), "prepare: {}", show(&out));
        h
    }

    /// The user's `.jacamar-alloc` dir (every job of the pipeline has the same base dir).
    fn alloc_dir(&self) -> PathBuf {
        self.data.join(ci_user()).join(".jacamar-alloc")
    }

    /// The 32-hex-digit keys of the files in [`Self::alloc_dir`].
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = std::fs::read_dir(self.alloc_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let key = name.split('.').next()?.to_string();
                        (key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
                            .then_some(key)
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Remember `id` as this pipeline's (cancelled on drop if still listed).
    fn note(&self, id: &str) {
        let mut ours = self.ours.lock().unwrap_or_else(|e| e.into_inner());
        if !ours.iter().any(|o| o == id) {
            ours.push(id.to_string());
        }
    }

    /// `(id, name, state)` of the listed (default `squeue`) jobs of this pipeline: named
    /// `jacamar-alloc-<prefix of one of our keys>`, or noted. None when squeue fails.
    fn listed(&self) -> Option<Vec<(String, String, String)>> {
        let o = Command::new("squeue")
            .args(["-h", "-u", &ci_user(), "-o", "%i|%j|%T"])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let keys = self.keys();
        let ours = self.ours.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    let mut w = l.trim().splitn(3, '|');
                    let (id, name, state) = (w.next()?, w.next()?, w.next()?);
                    let by_name = name
                        .strip_prefix("jacamar-alloc-")
                        .is_some_and(|h| !h.is_empty() && keys.iter().any(|k| k.starts_with(h)));
                    (by_name || ours.iter().any(|o| o == id))
                        .then(|| (id.to_string(), name.to_string(), state.to_string()))
                })
                .collect(),
        )
    }

    /// Wait (at most `limit`) until nothing of this pipeline is listed; fails showing what is.
    fn assert_gone_within(&self, limit: Duration, why: &str) {
        let gone = wait_for(limit, || self.listed().is_some_and(|l| l.is_empty()));
        assert!(
            gone,
            "{why}: still listed after {limit:?}: {:?} (keys {:?})",
            self.listed(),
            self.keys()
        );
    }

    /// The calls of `tool` through the wrappers: their arguments.
    fn calls(&self, tool: &str) -> Vec<String> {
        self.bin
            .calls()
            .into_iter()
            .filter(|(_, t, _)| t == tool)
            .map(|(_, _, a)| a)
            .collect()
    }
}

impl Drop for Pipeline {
    /// A failed test leaves nothing in the queue: what is still listed of this pipeline is
    /// cancelled by name (our keys) and by the ids we noted, never anything else.
    fn drop(&mut self) {
        let Some(left) = self.listed() else {
            eprintln!("alloc: squeue failed; cannot check for leftovers");
            return;
        };
        for (id, name, _) in left {
            let st = if name.starts_with("jacamar-alloc-") {
                Command::new("scancel")
                    .args(["-u", &ci_user(), "-n", &name])
                    .status()
            } else {
                Command::new("scancel").args(["--", &id]).status()
            };
            eprintln!("alloc: cancelled leftover {id} ({name}): {st:?}");
        }
    }
}

/// stdout and stderr of `o`, as text.
fn text_of(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The text after the first `prefix` in `text`'s lines.
fn after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
}

fn leading_digits(s: &str) -> String {
    s.chars().take_while(char::is_ascii_digit).collect()
}

/// The allocation id of `Submitted slurm job <id> (jacamar-alloc-...`.
fn submitted_alloc(text: &str) -> Option<String> {
    let rest = after(text, "Submitted slurm job ")?;
    let id = leading_digits(rest);
    rest[id.len()..]
        .starts_with(" (jacamar-alloc-")
        .then_some(id)
        .filter(|id| !id.is_empty())
}

/// The allocation id of `Using slurm allocation <id> of pipeline <P> (`.
fn used_alloc(text: &str, pipeline: &str) -> Option<String> {
    let rest = after(text, "Using slurm allocation ")?;
    let id = leading_digits(rest);
    rest[id.len()..]
        .starts_with(&format!(" of pipeline {pipeline} ("))
        .then_some(id)
        .filter(|id| !id.is_empty())
}

/// `(allocation, step)` of `Running as slurm step <id>.<step>; output: `.
fn step_of(text: &str) -> Option<(String, String)> {
    let rest = after(text, "Running as slurm step ")?;
    let (full, _) = rest.split_once("; output: ")?;
    let (a, s) = full.split_once('.')?;
    Some((a.to_string(), s.to_string()))
}

/// The job body printing what Slurm says about where it runs.
const PROBE: &str = "echo \"alloc-probe job=${SLURM_JOB_ID:-none} step=${SLURM_STEP_ID:-none}\"\n";

/// `(SLURM_JOB_ID, SLURM_STEP_ID)` printed by [`PROBE`].
fn probe_of(text: &str) -> Option<(String, String)> {
    let rest = after(text, "alloc-probe job=")?;
    let (job, step) = rest.split_once(" step=")?;
    Some((job.to_string(), step.trim().to_string()))
}

fn is_uint(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Slurm's state of job `id` (finished jobs too, until MinJobAge), or None.
fn state_of(id: &str) -> Option<String> {
    let o = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", id, "-o", "%T"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

/// The listed steps of the CI user named `name`: their `<job>.<step>` ids (squeue's
/// `--name` does not filter steps, F3: filtered here).
fn steps_named(name: &str) -> Vec<String> {
    let o = Command::new("squeue")
        .args(["-h", "-s", "-u", &ci_user(), "-o", "%i|%j"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (id, n) = l.trim().split_once('|')?;
            (n == name).then(|| id.to_string())
        })
        .collect()
}

/// The listed steps of job `id` other than its batch and extern steps.
fn steps_in(id: &str) -> Vec<String> {
    let o = Command::new("squeue")
        .args(["-h", "-s", "-j", id, "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|s| !s.ends_with(".batch") && !s.ends_with(".extern") && !s.is_empty())
        .collect()
}

/// The lines of `h`'s scripts-dir record (`batch-jobs`), before cleanup removes it.
fn record_lines(h: &Harness) -> Vec<String> {
    std::fs::read_to_string(h.scripts_job_dir().join("batch-jobs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Run one job of `p` with `body` in `shape`: (output, log text, allocation, step id). The
/// allocation is the one of the `Using` line, noted; the step the one the log names.
fn run_job(
    p: &Pipeline,
    h: &Harness,
    shape: Shape,
    body: &str,
) -> (Output, String, String, String) {
    let out = h.run("build_script", &runner_script_in(shape, body));
    let text = text_of(&out);
    if let Some(id) = submitted_alloc(&text) {
        p.note(&id);
    }
    let alloc = used_alloc(&text, &p.id)
        .unwrap_or_else(|| panic!("{shape}: no `Using slurm allocation` line: {}", show(&out)));
    p.note(&alloc);
    let (step_alloc, step) =
        step_of(&text).unwrap_or_else(|| panic!("{shape}: no step line: {}", show(&out)));
    assert_eq!(
        step_alloc,
        alloc,
        "{shape}: step of another allocation: {}",
        show(&out)
    );
    assert!(is_uint(&step), "{shape}: step id {step:?}: {}", show(&out));
    (out, text, alloc, step)
}

/// The lines of a spawned run call as they arrive, with their times.
fn wait_line_at(
    rx: &mpsc::Receiver<(Instant, String)>,
    pat: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> Option<Instant> {
    let until = Instant::now() + limit;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((t, l)) => {
                let hit = l.contains(pat);
                seen.push(l);
                if hit {
                    return Some(t);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Submit `sleep 300` named `name` with `-n1 --time=5`, as the CI user (`as_ci`) or as
/// root: the job's id.
fn sbatch_plain(name: &str, as_ci: bool) -> String {
    let mut c = Command::new(which("sbatch"));
    c.args([
        "--parsable",
        "-n1",
        "--time=5",
        "-J",
        name,
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 300",
    ])
    .current_dir("/tmp")
    .stdin(Stdio::null());
    if as_ci {
        let (uid, gid, home) = ci_account();
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home)
            .uid(uid)
            .gid(gid);
    }
    let out = c.output().unwrap();
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        out.status.success() && is_uint(&id),
        "sbatch of {name}: {}",
        show(&out)
    );
    id
}

/// Write `line` as the record `path`, as the user's own file (0600), as a job could.
fn forge_record(path: &Path, line: &[u8]) {
    std::fs::write(path, line).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (uid, gid, _) = ci_account();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

shape_tests!(
    root:
    three_jobs_of_a_pipeline_share_one_allocation,
    a_cancelled_job_runs_its_trap_and_the_allocation_stays,
    a_killed_driver_leaves_no_step_after_cleanup,
    the_allocations_time_limit_is_a_time_limit_failure,
);

/// Design test 1: one `sbatch`, three `srun`, the same `SLURM_JOB_ID` in each job, integer
/// `SLURM_STEP_ID`s, the third job's `exit 7` as build exit code 7; the files and records of
/// the design; the allocation ends by itself after the pipeline.
fn three_jobs_of_a_pipeline_share_one_allocation(shape: Shape) {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(1);
    let (uid, _, _) = ci_account();
    let mut allocs = Vec::new();
    let mut steps = Vec::new();
    let mut ci_jobs = Vec::new();
    for n in 0..3 {
        let h = p.job();
        ci_jobs.push(h.job_id);
        let body = if n == 2 {
            format!("{PROBE}exit 7\n")
        } else {
            PROBE.to_string()
        };
        let (out, text, alloc, step) = run_job(&p, &h, shape, &body);
        if n == 2 {
            assert_eq!(out.status.code(), Some(1), "{shape}: {}", show(&out));
            assert_eq!(h.build_exit_code().as_deref(), Some("7"), "{shape}: {text}");
        } else {
            assert!(out.status.success(), "{shape} job {n}: {text}");
        }
        let (job, slurm_step) =
            probe_of(&text).unwrap_or_else(|| panic!("{shape} job {n}: no probe: {text}"));
        assert_eq!(job, alloc, "{shape} job {n}: SLURM_JOB_ID: {text}");
        assert!(
            is_uint(&slurm_step),
            "{shape} job {n}: SLURM_STEP_ID {slurm_step:?}: {text}"
        );
        assert_eq!(slurm_step, step, "{shape} job {n}: {text}");
        if n == 0 {
            let want = format!(
                "Pipeline allocation (JACAMAR_REUSE_ALLOCATION=pipeline): none for pipeline {} with these arguments; submitting one (idle timeout ",
                p.id
            );
            assert!(text.contains(&want), "{shape}: {want:?} missing: {text}");
            assert_eq!(
                submitted_alloc(&text).as_deref(),
                Some(alloc.as_str()),
                "{text}"
            );
            assert!(
                text.contains(&format!("as pipeline {}'s allocation", p.id)),
                "{shape}: {text}"
            );
            assert!(
                text.contains(&format!(
                    "Using slurm allocation {alloc} of pipeline {} (this job waited ",
                    p.id
                )),
                "{shape}: {text}"
            );
        } else {
            assert!(
                !text.contains("Submitted slurm job"),
                "{shape} job {n}: {text}"
            );
            assert!(
                text.contains(&format!(
                    "Using slurm allocation {alloc} of pipeline {} (created ",
                    p.id
                )) && text.contains("ago by an earlier job; no queue wait)"),
                "{shape} job {n}: {text}"
            );
        }
        assert!(
            text.contains(&format!(
                "Allocation {alloc} stays for the pipeline's next job; it ends after "
            )),
            "{shape} job {n}: {text}"
        );
        // The scripts dir's record names the allocation and the step.
        let rec = record_lines(&h);
        assert!(
            rec.iter().any(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                w.len() == 4
                    && w[..3] == ["alloc", "slurm", alloc.as_str()]
                    && w[3].len() == 32
                    && w[3].bytes().all(|b| b.is_ascii_hexdigit())
            }),
            "{shape} job {n}: no alloc line in batch-jobs: {rec:?}"
        );
        assert!(
            rec.contains(&format!("step slurm {alloc}.{step}")),
            "{shape} job {n}: no step line in batch-jobs: {rec:?}"
        );
        let out = h.cleanup();
        assert!(
            out.status.success(),
            "{shape} job {n} cleanup: {}",
            show(&out)
        );
        assert_eq!(
            state_of(&alloc).as_deref(),
            Some("RUNNING"),
            "{shape} job {n}: the allocation must stay for the next job"
        );
        allocs.push(alloc);
        steps.push(step);
    }
    assert!(
        allocs.iter().all(|a| *a == allocs[0]),
        "{shape}: {allocs:?}"
    );
    let mut distinct = steps.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{shape}: steps {steps:?}");

    // The files in the user's base dir.
    let dir = p.alloc_dir();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{shape}: {} mode {mode:o}", dir.display());
    assert!(dir.join("lock").is_file(), "{shape}: no lock file");
    let keys = p.keys();
    assert_eq!(keys.len(), 1, "{shape}: {keys:?}");
    let key = &keys[0];
    let rec = std::fs::read_to_string(dir.join(format!("{key}.rec"))).unwrap();
    let w: Vec<&str> = rec.trim_end_matches('\n').split(' ').collect();
    assert!(
        rec.ends_with('\n')
            && w.len() == 5
            && w[..3] == ["v1", "slurm", allocs[0].as_str()]
            && is_uint(w[3])
            && w[4] == uid.to_string(),
        "{shape}: record {rec:?}"
    );
    let leases = dir.join(format!("{key}.leases"));
    assert!(leases.join(".last").exists(), "{shape}: no .last stamp");
    let held: Vec<_> = std::fs::read_dir(&leases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".last")
        .collect();
    assert!(
        held.is_empty(),
        "{shape}: leases left after the jobs: {held:?}"
    );
    assert!(
        dir.join(format!("{key}.holder.out")).exists(),
        "{shape}: no holder output"
    );

    // One submission, three steps, each in the allocation, named after its CI job.
    let sbatch = p.calls("sbatch");
    assert_eq!(sbatch.len(), 1, "{shape}: {sbatch:#?}");
    assert!(sbatch[0].contains("jacamar-alloc-"), "{shape}: {sbatch:?}");
    let srun = p.calls("srun");
    assert_eq!(srun.len(), 3, "{shape}: {srun:#?}");
    for (s, job) in srun.iter().zip(&ci_jobs) {
        let named =
            s.contains(&format!("-J ci-{job} ")) || s.contains(&format!("--job-name=ci-{job} "));
        assert!(
            s.contains(&format!("--jobid={} ", allocs[0])) && s.contains("--overlap") && named,
            "{shape}: srun of CI job {job}: {s}"
        );
    }
    p.assert_gone_within(Duration::from_secs(60), "idle timeout 10 s");
}

/// Design test 2: another pipeline, other scheduler arguments, another project: each its
/// own allocation; the first pipeline's next job still finds its own.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn another_pipeline_gets_its_own_allocation() {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(2);
    let other_pipeline = unique_id(52);
    let other_project = format!("8{}", p.project);
    let cases: [(&str, Vec<(&str, &str)>); 5] = [
        ("P", vec![]),
        (
            "another pipeline",
            vec![("CUSTOM_ENV_CI_PIPELINE_ID", other_pipeline.as_str())],
        ),
        (
            "other arguments",
            vec![("CUSTOM_ENV_SCHEDULER_PARAMETERS", "-n 1 --time=9")],
        ),
        (
            "another project",
            vec![("CUSTOM_ENV_CI_PROJECT_ID", other_project.as_str())],
        ),
        ("P again", vec![]),
    ];
    let mut got = Vec::new();
    for (what, vars) in &cases {
        let h = p.job_with(vars);
        let out = h.run("build_script", &runner_script_in(Shape::Current, PROBE));
        let text = text_of(&out);
        assert!(out.status.success(), "{what}: {}", show(&out));
        if let Some(id) = submitted_alloc(&text) {
            p.note(&id);
        }
        let pipeline = vars
            .iter()
            .find(|(k, _)| *k == "CUSTOM_ENV_CI_PIPELINE_ID")
            .map_or(p.id.as_str(), |(_, v)| *v);
        let alloc = used_alloc(&text, pipeline)
            .unwrap_or_else(|| panic!("{what}: no `Using` line: {text}"));
        p.note(&alloc);
        let (job, _) = probe_of(&text).unwrap_or_else(|| panic!("{what}: no probe: {text}"));
        assert_eq!(job, alloc, "{what}: {text}");
        assert!(h.cleanup().status.success(), "{what}: cleanup");
        got.push((what, alloc, text));
    }
    for i in 1..4 {
        for j in 0..i {
            assert_ne!(
                got[i].1, got[j].1,
                "{} and {} share an allocation:\n{}\n---\n{}",
                got[i].0, got[j].0, got[i].2, got[j].2
            );
        }
    }
    assert_eq!(got[4].1, got[0].1, "P's next job: {}", got[4].2);
    assert!(
        got[4].2.contains("ago by an earlier job; no queue wait)"),
        "{}",
        got[4].2
    );
    assert_eq!(p.calls("sbatch").len(), 4, "{:#?}", p.bin.calls());
    assert_eq!(p.calls("srun").len(), 5, "{:#?}", p.bin.calls());
    p.assert_gone_within(
        Duration::from_secs(90),
        "four allocations, idle timeout 10 s",
    );
}

/// Design test 3: the runner's SIGTERM to `jacamar-auth` while a job runs as a step: only
/// that step is asked to stop (SIGTERM), the job's trap runs, the allocation stays RUNNING
/// after cleanup and the next job of the pipeline runs in it.
fn a_cancelled_job_runs_its_trap_and_the_allocation_stays(shape: Shape) {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(3);
    let h1 = p.job();
    let (out, text, alloc, _) = run_job(&p, &h1, shape, PROBE);
    assert!(out.status.success(), "{shape}: {text}");
    assert!(h1.cleanup().status.success(), "{shape}: cleanup 1");

    let h2 = p.job();
    let marker = p.data.join(format!("trap-{}", h2.job_id));
    let body = format!(
        "trap 'echo trapped TERM; touch {m}; exit 3' TERM\necho started\nsleep 300 &\nwait\necho not reached\n",
        m = marker.display()
    );
    let mut child = h2.spawn_run("build_script", &runner_script_in(shape, &body));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(120), &mut seen),
        "{shape}: job 2 did not start: {seen:#?}"
    );
    let joined = seen.join("\n");
    let (step_alloc, step) =
        step_of(&joined).unwrap_or_else(|| panic!("{shape}: no step line: {joined}"));
    assert_eq!(step_alloc, alloc, "{shape}: {joined}");
    assert_eq!(
        steps_named(&format!("ci-{}", h2.job_id)),
        [format!("{alloc}.{step}")],
        "{shape}: the step is not listed under its CI job's name"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(90)).expect("run call did not exit");
    assert!(!st.success(), "{shape}: a cancelled job succeeded");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert!(
        text.contains(&format!("Cancelling slurm step {alloc}.{step} ("))
            && text.contains("): asking it to stop (SIGTERM)"),
        "{shape}: {text}"
    );
    assert!(
        text.contains("trapped TERM"),
        "{shape}: trap output missing: {text}"
    );
    assert!(!text.contains("not reached"), "{shape}: {text}");
    assert!(
        marker.exists(),
        "{shape}: the job's TERM trap did not run: {text}"
    );
    let want = shape.cancelled_status(3).to_string();
    assert_eq!(
        h2.build_exit_code().as_deref(),
        Some(want.as_str()),
        "{shape}: {text}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || steps_named(&format!(
            "ci-{}",
            h2.job_id
        ))
        .is_empty()),
        "{shape}: the cancelled step is still listed"
    );
    // A graceful cancel keeps the job dir: after_script runs on the host.
    let out = h2.run("after_script", &runner_script_in(shape, "echo after ran\n"));
    assert!(out.status.success(), "{shape}: {}", show(&out));
    let out = h2.cleanup();
    assert!(out.status.success(), "{shape}: cleanup 2: {}", show(&out));
    assert_eq!(
        state_of(&alloc).as_deref(),
        Some("RUNNING"),
        "{shape}: the cancel must not end the pipeline's allocation: {text}"
    );

    let h3 = p.job();
    let (out, text3, alloc3, _) = run_job(&p, &h3, shape, PROBE);
    assert!(out.status.success(), "{shape}: {text3}");
    assert_eq!(
        alloc3, alloc,
        "{shape}: job 3 did not reuse the allocation: {text3}"
    );
    assert!(
        text3.contains("ago by an earlier job; no queue wait)"),
        "{shape}: {text3}"
    );
    assert!(h3.cleanup().status.success(), "{shape}: cleanup 3");
    assert_eq!(p.calls("sbatch").len(), 1, "{shape}: {:#?}", p.bin.calls());
    assert_eq!(p.calls("srun").len(), 3, "{shape}: {:#?}", p.bin.calls());
    p.assert_gone_within(Duration::from_secs(60), "idle timeout 10 s");
}

/// Design test 4: with `allocation_idle_timeout = "20s"` the allocation is alive right after
/// the pipeline's last cleanup, still there 10 s later, and gone (COMPLETED, the holder's
/// own end: no scancel) within 20 s + the holder's period (2 s) + 3 s.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn the_allocation_ends_by_itself_after_the_idle_timeout() {
    if !require_root() {
        return;
    }
    let p = Pipeline::configured(
        4,
        "allocation_reuse = true\nallocation_idle_timeout = \"20s\"",
    );
    let mut alloc = String::new();
    for n in 0..2 {
        let h = p.job();
        let (out, text, a, _) = run_job(&p, &h, Shape::Current, PROBE);
        assert!(out.status.success(), "job {n}: {text}");
        if n == 0 {
            assert!(text.contains("(idle timeout 20s"), "job {n}: {text}");
        }
        assert!(text.contains("it ends after 20s unused"), "job {n}: {text}");
        if n == 1 {
            assert_eq!(a, alloc, "job 1 did not reuse: {text}");
        }
        alloc = a;
        assert!(h.cleanup().status.success(), "job {n}: cleanup");
    }
    let t0 = Instant::now();
    assert_eq!(
        state_of(&alloc).as_deref(),
        Some("RUNNING"),
        "the allocation ended before its idle timeout"
    );
    let early = wait_for(Duration::from_secs(10), || {
        p.listed().is_some_and(|l| l.is_empty())
    });
    assert!(
        !early,
        "gone {:?} after the last cleanup, idle timeout 20 s",
        t0.elapsed()
    );
    let limit = Duration::from_secs(20 + 2 + 3).saturating_sub(t0.elapsed());
    p.assert_gone_within(limit, "idle 20 s + period 2 s + 3 s after the last cleanup");
    eprintln!(
        "allocation {alloc} gone {:?} after the last cleanup",
        t0.elapsed()
    );
    assert_eq!(
        state_of(&alloc).as_deref(),
        Some("COMPLETED"),
        "the holder's exit ends the allocation"
    );
    assert!(p.calls("scancel").is_empty(), "{:#?}", p.bin.calls());
    let key = &p.keys()[0];
    assert!(
        !p.alloc_dir().join(format!("{key}.rec")).exists(),
        "the holder leaves its record behind"
    );
}

/// Design test 5: two jobs of a pipeline started together, no allocation yet: one
/// submission, both run in it.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn two_jobs_at_once_create_one_allocation() {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(5);
    let hs = [p.job(), p.job()];
    let outs: Vec<Output> = std::thread::scope(|s| {
        let runs: Vec<_> = hs
            .iter()
            .map(|h| {
                s.spawn(|| {
                    h.run(
                        "build_script",
                        &runner_script_in(Shape::Current, &format!("{PROBE}sleep 2\n")),
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut allocs = Vec::new();
    for (n, out) in outs.iter().enumerate() {
        let text = text_of(out);
        if let Some(id) = submitted_alloc(&text) {
            p.note(&id);
        }
        assert!(out.status.success(), "job {n}: {}", show(out));
        let a = used_alloc(&text, &p.id).unwrap_or_else(|| panic!("job {n}: {text}"));
        p.note(&a);
        let (job, _) = probe_of(&text).unwrap_or_else(|| panic!("job {n}: {text}"));
        assert_eq!(job, a, "job {n}: {text}");
        allocs.push(a);
    }
    for h in &hs {
        assert!(h.cleanup().status.success(), "cleanup");
    }
    assert_eq!(allocs[0], allocs[1], "{allocs:?}");
    let submitted: usize = outs
        .iter()
        .map(|o| text_of(o).matches("Submitted slurm job").count())
        .sum();
    assert_eq!(submitted, 1, "one job submits");
    assert_eq!(p.calls("sbatch").len(), 1, "{:#?}", p.bin.calls());
    assert_eq!(p.calls("srun").len(), 2, "{:#?}", p.bin.calls());
    p.assert_gone_within(Duration::from_secs(60), "idle timeout 10 s");
}

/// Design test 6: the job's driver (`jacamar`) SIGKILLed mid-step; `jacamar-auth`'s sweep
/// kills srun and its helper (what leaves a step running without srun, F3); cleanup then
/// cancels the step: none of the job's is listed, its heartbeat stops, and the allocation
/// itself stays for the pipeline.
fn a_killed_driver_leaves_no_step_after_cleanup(shape: Shape) {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(6);
    let h = p.job();
    let beat = p.data.join(format!("beat-{}", h.job_id));
    let mut child = h.spawn_run(
        "build_script",
        &runner_script_in(shape, &heartbeat_job(&beat)),
    );
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(120), &mut seen),
        "{shape}: the job did not start: {seen:#?}"
    );
    let joined = seen.join("\n");
    if let Some(id) = submitted_alloc(&joined) {
        p.note(&id);
    }
    let (alloc, step) = step_of(&joined).unwrap_or_else(|| panic!("{shape}: {joined}"));
    p.note(&alloc);
    let name = format!("ci-{}", h.job_id);
    assert_eq!(steps_named(&name), [format!("{alloc}.{step}")], "{shape}");
    let ours = descendants(child.id() as i32);
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let sruns: Vec<i32> = ours
        .iter()
        .copied()
        .filter(|&q| comm(q).trim() == "srun")
        .collect();
    assert!(
        !sruns.is_empty(),
        "{shape}: no srun under the run call: {ours:?}"
    );
    for q in children(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(q),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let st = wait_exit(&mut child, Duration::from_secs(60)).expect("jacamar-auth did not exit");
    assert!(!st.success(), "{shape}");
    assert!(
        wait_for(Duration::from_secs(60), || ours.iter().all(|&q| !alive(q))),
        "{shape}: processes of the run call left: {:?}",
        ours.iter().filter(|&&q| alive(q)).collect::<Vec<_>>()
    );
    let survived = !steps_named(&name).is_empty();
    let out = h.cleanup();
    assert!(out.status.success(), "{shape}: cleanup: {}", show(&out));
    assert!(
        wait_for(Duration::from_secs(30), || steps_named(&name).is_empty()),
        "{shape}: step {alloc}.{step} still listed after cleanup (it survived the kill: {survived}): {}",
        show(&out)
    );
    let count = || {
        std::fs::read_to_string(&beat)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let n0 = count();
    assert!(
        !wait_for(Duration::from_secs(3), || count() > n0),
        "{shape}: the job still beats after cleanup"
    );
    assert_eq!(
        state_of(&alloc).as_deref(),
        Some("RUNNING"),
        "{shape}: cleanup must cancel the job's step, never the pipeline's allocation: {}",
        show(&out)
    );
    p.assert_gone_within(Duration::from_secs(60), "idle timeout 10 s");
}

/// Design test 7: records forged in the user's `.jacamar-alloc` (as the job itself can):
/// text that is not a record (an option, an escape sequence) is refused with an escaped
/// warning and never reaches a command line; a record naming another user's job, or a job
/// of the user that is not an allocation, is refused (or Slurm says Access/permission
/// denied); each time the job runs in a new allocation of its own and the other jobs are
/// left alone.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn a_forged_record_is_refused() {
    if !require_root() {
        return;
    }
    let p = Pipeline::new(7);
    let (uid, _, _) = ci_account();
    let h = p.job();
    let (out, text, first, _) = run_job(&p, &h, Shape::Current, PROBE);
    assert!(out.status.success(), "{text}");
    assert!(h.cleanup().status.success(), "cleanup");
    let keys = p.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let rec = p.alloc_dir().join(format!("{}.rec", keys[0]));
    assert!(rec.is_file(), "no record at {}", rec.display());

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let foreign = sbatch_plain(&format!("jrs-alloc-foreign-{}", p.id), false);
    p.note(&foreign);
    let unrelated = sbatch_plain(&format!("jrs-alloc-unrelated-{}", p.id), true);
    p.note(&unrelated);
    let cases: [(&str, Vec<u8>, Option<&str>); 4] = [
        (
            "an option as the id",
            format!("v1 slurm --uid=0 {now} {uid}\n").into_bytes(),
            None,
        ),
        (
            "an escape sequence",
            format!("v1 slurm 7\x1b[31mred {now} {uid}\n").into_bytes(),
            None,
        ),
        (
            "another user's job",
            format!("v1 slurm {foreign} {now} {uid}\n").into_bytes(),
            Some(foreign.as_str()),
        ),
        (
            "the user's job that is no allocation",
            format!("v1 slurm {unrelated} {now} {uid}\n").into_bytes(),
            Some(unrelated.as_str()),
        ),
    ];
    let mut allocs = vec![first.clone()];
    for (what, line, named) in &cases {
        forge_record(&rec, line);
        let h = p.job();
        let out = h.run("build_script", &runner_script_in(Shape::Current, PROBE));
        let text = text_of(&out);
        if let Some(id) = submitted_alloc(&text) {
            p.note(&id);
        }
        assert!(out.status.success(), "{what}: {}", show(&out));
        assert!(
            !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
            "{what}: a raw escape sequence reached the log: {}",
            show(&out)
        );
        let alloc = used_alloc(&text, &p.id).unwrap_or_else(|| panic!("{what}: {text}"));
        p.note(&alloc);
        assert!(
            submitted_alloc(&text).as_deref() == Some(alloc.as_str()),
            "{what}: no new allocation: {text}"
        );
        assert!(!allocs.contains(&alloc), "{what}: {alloc} again: {text}");
        let (job, _) = probe_of(&text).unwrap_or_else(|| panic!("{what}: {text}"));
        assert_eq!(job, alloc, "{what}: {text}");
        match named {
            None => {
                let warning = text
                    .lines()
                    .find(|l| {
                        l.contains("is not an allocation record: ") && l.ends_with(": ignored")
                    })
                    .unwrap_or_else(|| panic!("{what}: no warning: {text}"));
                assert!(
                    warning.contains("WARNING: ")
                        && warning.contains(&format!("{}.rec", keys[0]))
                        && warning.contains("line 1: "),
                    "{what}: {warning}"
                );
            }
            Some(id) => {
                assert_ne!(&alloc, id, "{what}: ran in the forged job: {text}");
                assert!(
                    matches!(state_of(id).as_deref(), Some("RUNNING" | "PENDING")),
                    "{what}: job {id} was touched: {:?}",
                    state_of(id)
                );
            }
        }
        assert!(h.cleanup().status.success(), "{what}: cleanup");
        allocs.push(alloc);
    }
    // No Slurm command got a forged word; the user's unrelated job never got a step (another
    // user's job may have been tried: Slurm refuses it, F4).
    for (_, tool, args) in p.bin.calls() {
        assert!(
            !args.contains("--uid") && !args.contains('\u{1b}') && !args.contains("[31m"),
            "{tool} got a forged word: {args}"
        );
        assert!(
            !(tool == "srun" && args.contains(&format!("--jobid={unrelated}"))),
            "a step was started in the user's unrelated job: {args}"
        );
    }
    assert!(
        steps_in(&unrelated).is_empty(),
        "{:?}",
        steps_in(&unrelated)
    );
    assert!(steps_in(&foreign).is_empty(), "{:?}", steps_in(&foreign));
    assert_eq!(p.calls("sbatch").len(), 5, "{:#?}", p.bin.calls());
    for id in [&foreign, &unrelated] {
        let _ = Command::new("scancel").args(["--", id]).status();
    }
    p.assert_gone_within(
        Duration::from_secs(90),
        "five allocations (four replaced by a forged record), idle timeout 10 s",
    );
}

/// Design test 8: without `allocation_reuse` the variable is one log line and the job is an
/// ordinary batch job; a value other than `pipeline` likewise; no variable, no line.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn without_allocation_reuse_the_variable_changes_nothing() {
    if !require_root() {
        return;
    }
    let off = Pipeline::configured(8, "");
    let on = Pipeline::new(58);
    let h_off = off.job();
    let h_yes = on.job_with(&[("CUSTOM_ENV_JACAMAR_REUSE_ALLOCATION", "yes")]);
    let h_none = on.job_not_opted_in();
    let cases: [(&str, &Pipeline, &Harness, Option<&str>); 3] = [
        (
            "reuse off",
            &off,
            &h_off,
            Some(
                "JACAMAR_REUSE_ALLOCATION=pipeline ignored: allocation_reuse is off on this runner",
            ),
        ),
        (
            "value yes",
            &on,
            &h_yes,
            Some("JACAMAR_REUSE_ALLOCATION=\"yes\" ignored: the only value is \"pipeline\""),
        ),
        ("no variable", &on, &h_none, None),
    ];
    for (what, p, h, line) in cases {
        let before_sbatch = p.calls("sbatch").len();
        let out = h.run("build_script", &runner_script_in(Shape::Current, PROBE));
        let text = text_of(&out);
        assert!(out.status.success(), "{what}: {}", show(&out));
        match line {
            Some(l) => assert_eq!(text.matches(l).count(), 1, "{what}: {l:?}: {text}"),
            None => assert!(!text.contains("JACAMAR_REUSE_ALLOCATION"), "{what}: {text}"),
        }
        assert!(!text.contains("Pipeline allocation"), "{what}: {text}");
        assert!(!text.contains("Using slurm allocation"), "{what}: {text}");
        let submitted = after(&text, "Submitted slurm job ").map(leading_digits);
        let (job, step) = probe_of(&text).unwrap_or_else(|| panic!("{what}: {text}"));
        assert_eq!(submitted.as_deref(), Some(job.as_str()), "{what}: {text}");
        assert_eq!(step, "none", "{what}: a batch job is no step: {text}");
        let sbatch = p.calls("sbatch");
        assert_eq!(sbatch.len(), before_sbatch + 1, "{what}: {sbatch:#?}");
        assert!(
            !sbatch.last().unwrap().contains("jacamar-alloc"),
            "{what}: {sbatch:?}"
        );
        assert!(p.calls("srun").is_empty(), "{what}: {:?}", p.calls("srun"));
        assert!(
            !p.alloc_dir().exists(),
            "{what}: {} made",
            p.alloc_dir().display()
        );
        assert!(h.cleanup().status.success(), "{what}: cleanup");
    }
}

/// Design test 9: the PBS executor (Debian's Torque wrappers over Slurm) cannot run a job
/// inside an allocation: one log line, then the ordinary PBS job.
#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root: feature root-tests")]
fn pbs_ignores_the_variable_with_one_line() {
    if !require_root() {
        return;
    }
    crate::batch_pbs::require_torque();
    let mut h = Harness::batch(
        "pbs",
        &ci_user(),
        GENERAL,
        "command_delay = \"1s\"\nnfs_timeout = \"10s\"\nallocation_reuse = true\nallocation_idle_timeout = \"10s\"",
    );
    h.set("CUSTOM_ENV_JACAMAR_REUSE_ALLOCATION", "pipeline");
    h.set("CUSTOM_ENV_CI_PROJECT_ID", "79");
    h.set("CUSTOM_ENV_CI_PIPELINE_ID", &unique_id(9));
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "prepare: {}", show(&out));
    let out = h.run(
        "build_script",
        &runner_script_in(
            Shape::Current,
            "echo \"pbs ran in ${SLURM_JOB_ID:-none}\"\n",
        ),
    );
    let text = text_of(&out);
    assert!(out.status.success(), "{}", show(&out));
    let line =
        "JACAMAR_REUSE_ALLOCATION=pipeline ignored: the pbs executor cannot run a job inside an allocation";
    assert_eq!(text.matches(line).count(), 1, "{text}");
    assert!(text.contains("Submitted pbs job"), "{text}");
    assert!(text.contains("pbs ran in "), "{text}");
    assert!(!text.contains("Pipeline allocation"), "{text}");
    assert!(!h.base_dir().join(".jacamar-alloc").exists(), "{text}");
    assert!(h.cleanup().status.success(), "cleanup");
}

/// Design test 10: the allocation's own time limit (`--time=1`) ends the running step with
/// a TERM (its trap runs) 60-90 s after the allocation started (69 s measured, F5), and the
/// job is a build failure that says the pipeline's allocation reached its time limit.
fn the_allocations_time_limit_is_a_time_limit_failure(shape: Shape) {
    if !require_root() {
        return;
    }
    let mut p = Pipeline::new(10);
    p.args = "-n 1 --time=1".to_string();
    let h = p.job();
    let body = "trap 'echo trapped TERM; exit 3' TERM\necho started\nsleep 600 &\nwait\necho not reached\n";
    let mut child = h.spawn_run("build_script", &runner_script_in(shape, body));
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let using = wait_line_at(
        &rx,
        "Using slurm allocation",
        Duration::from_secs(120),
        &mut seen,
    )
    .unwrap_or_else(|| panic!("{shape}: no allocation: {seen:#?}"));
    let joined = seen.join("\n");
    let alloc = used_alloc(&joined, &p.id).unwrap_or_else(|| panic!("{shape}: {joined}"));
    p.note(&alloc);
    let trapped = wait_line_at(&rx, "trapped TERM", Duration::from_secs(150), &mut seen)
        .unwrap_or_else(|| panic!("{shape}: no TERM within 150 s: {seen:#?}"));
    let after_start = trapped.duration_since(using);
    assert!(
        (Duration::from_secs(55)..=Duration::from_secs(95)).contains(&after_start),
        "{shape}: TERM {after_start:?} after the allocation started (limit 60 s): {seen:#?}"
    );
    let st = wait_exit(&mut child, Duration::from_secs(90)).expect("run call did not exit");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text = seen.join("\n");
    assert_eq!(st.code(), Some(1), "{shape}: {text}");
    assert!(!text.contains("not reached"), "{shape}: {text}");
    assert!(
        text.contains("DUE TO TIME LIMIT"),
        "{shape}: Slurm's line: {text}"
    );
    assert!(
        text.contains("allocation reached its time limit"),
        "{shape}: the time-limit failure: {text}"
    );
    let code: i32 = h.build_exit_code().unwrap_or_default().parse().unwrap_or(0);
    assert_ne!(code, 0, "{shape}: {text}");
    assert!(h.cleanup().status.success(), "{shape}: cleanup");
    p.assert_gone_within(Duration::from_secs(60), "the allocation reached its limit");
    assert_eq!(state_of(&alloc).as_deref(), Some("TIMEOUT"), "{shape}");
}

/// Design test 11: slurmctld stopped for 20 s between job 1 and job 2 (job 2 starts during
/// the outage) and again for 20 s during job 2's step: the pipeline finishes on one
/// allocation, and the holder (which needs no controller) ends it afterwards. Stops the
/// shared slurmctld, so it is ignored in the parallel suite and run alone by scripts/test.sh.
#[test]
#[ignore = "stops slurmctld twice for 20 s; scripts/test.sh runs it alone after the suite"]
fn a_controller_restart_mid_pipeline() {
    if !require_root() {
        return;
    }
    use crate::scale_poll::{serial, stop_slurmctld};
    let _serial = serial();
    let p = Pipeline::new(11);
    let h1 = p.job();
    let (out, text, alloc, _) = run_job(&p, &h1, Shape::Current, PROBE);
    assert!(out.status.success(), "job 1: {text}");
    assert!(h1.cleanup().status.success(), "job 1: cleanup");

    let h2 = p.job();
    let mut child;
    let rx;
    {
        let _stopped = stop_slurmctld();
        child = h2.spawn_run(
            "build_script",
            &runner_script_in(
                Shape::Current,
                &format!("{PROBE}echo started\nsleep 50\necho finished\n"),
            ),
        );
        rx = lines_of(&mut child);
        // The outage itself: 20 s without a controller while job 2 starts.
        std::thread::sleep(Duration::from_secs(20));
    }
    let mut seen = Vec::new();
    assert!(
        wait_line(&rx, "started", Duration::from_secs(180), &mut seen),
        "job 2 did not start after the outage: {seen:#?}"
    );
    {
        let _stopped = stop_slurmctld();
        // The second outage, while job 2's step runs.
        std::thread::sleep(Duration::from_secs(20));
    }
    let st = wait_exit(&mut child, Duration::from_secs(240)).expect("job 2 did not end");
    seen.extend(rx.try_iter().map(|(_, l)| l));
    let text2 = seen.join("\n");
    assert!(st.success(), "job 2: {text2}");
    assert!(text2.contains("finished"), "job 2: {text2}");
    assert_eq!(
        used_alloc(&text2, &p.id).as_deref(),
        Some(alloc.as_str()),
        "job 2: {text2}"
    );
    assert!(!text2.contains("Submitted slurm job"), "job 2: {text2}");
    assert!(h2.cleanup().status.success(), "job 2: cleanup");

    let h3 = p.job();
    let (out, text3, alloc3, _) = run_job(&p, &h3, Shape::Current, PROBE);
    assert!(out.status.success(), "job 3: {text3}");
    assert_eq!(alloc3, alloc, "job 3: {text3}");
    assert!(h3.cleanup().status.success(), "job 3: cleanup");
    assert_eq!(p.calls("sbatch").len(), 1, "{:#?}", p.bin.calls());
    p.assert_gone_within(
        Duration::from_secs(60),
        "the holder ends it after the outages",
    );
    assert_eq!(state_of(&alloc).as_deref(), Some("COMPLETED"));
}
