//! `batch::persist::parse`, the record of submitted jobs kept in the job's own directories
//! (so the job's account can write it), on arbitrary text, for each scheduler (the first
//! byte picks it, the rest is the record). No panic; every recorded job is a complete
//! `job <scheduler> <id>` line of the input with an id of the scheduler's own form, a job
//! marked done has a complete `done <id>` line, and every refused line is reported without
//! a raw control character.
#![no_main]

use jacamar::batch::persist::parse;
use jacamar::batch::{cobalt, flux, lsf, pbs, slurm};
use libfuzzer_sys::fuzz_target;

/// The schedulers: their names and id forms.
const SCHEDULERS: [(&str, fn(&str) -> bool); 5] = [
    ("slurm", slurm::valid_id),
    ("pbs", pbs::valid_id),
    ("flux", flux::valid_id),
    ("lsf", lsf::valid_id),
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
    assert!(read.jobs.len() + read.refused.len() <= lines.len());
    for j in &read.jobs {
        assert!(j.scheduler == name && valid(&j.id), "{j:?} recorded for {name}");
        assert!(
            lines
                .iter()
                .any(|w| w.len() == 3 && w[0] == "job" && w[1] == j.scheduler && w[2] == j.id),
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
    for r in &read.refused {
        assert!(!r.chars().any(char::is_control), "refused line shown raw: {r:?}");
    }
});
