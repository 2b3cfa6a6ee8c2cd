//! `batch::persist::parse`, the record of submitted jobs kept in the job's own directories
//! (so the job's account can write it), on arbitrary text, for the scheduler the first byte
//! picks with its own id check. No panic; every job it gives is of that scheduler, with an
//! id that passes the scheduler's check (the ids `cleanup` hands to `scancel`, `qdel`, ...),
//! from a complete `job` line of the input; a job marked done has a complete `done <id>`
//! line; every other `job` line is refused.
#![no_main]

use jacamar::batch::persist::parse;
use jacamar::batch::{cobalt, flux, lsf, pbs, slurm};
use libfuzzer_sys::fuzz_target;

type Valid = fn(&str) -> bool;

const SCHEDULERS: [(&str, Valid); 5] = [
    ("slurm", slurm::valid_id),
    ("pbs", pbs::valid_id),
    ("lsf", lsf::valid_id),
    ("flux", flux::valid_id),
    ("cobalt", cobalt::valid_id),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (name, valid) = SCHEDULERS[usize::from(which) % SCHEDULERS.len()];
    let text = String::from_utf8_lossy(rest);
    let read = parse(&text, name, &valid);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let lines: Vec<Vec<&str>> = complete
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let job_lines = lines.iter().filter(|w| w.first() == Some(&"job")).count();
    assert_eq!(read.jobs.len() + read.refused.len(), job_lines);
    for j in &read.jobs {
        assert_eq!(j.scheduler, name);
        assert!(valid(&j.id), "{j:?}: an id its scheduler refuses");
        assert!(
            lines
                .iter()
                .any(|w| w.len() == 3 && w[0] == "job" && w[1] == name && w[2] == j.id),
            "recorded {j:?} is not a job line of the input"
        );
        if j.done {
            assert!(
                lines
                    .iter()
                    .any(|w| w.len() == 2 && w[0] == "done" && w[1] == j.id),
                "{j:?} marked done without a done line"
            );
        }
    }
});
