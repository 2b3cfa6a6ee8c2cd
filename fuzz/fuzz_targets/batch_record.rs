//! `batch::persist::parse`, the record of submitted jobs kept in the job's own directories
//! (so the job's account can write it), on arbitrary text, for the scheduler the first byte
//! picks with its own id check. No panic; every job it gives is of that scheduler, with an
//! id that passes the scheduler's check (the ids `cleanup` hands to `scancel`, `qdel`, ...),
//! from a complete `job` line of the input; a job marked done has a complete `done <id>`
//! line; every other `job` line is refused. Likewise for a job in a pipeline's shared
//! allocation: every `alloc` it gives has a valid id and a 32-hex-digit key, every `step` a
//! valid `<id>.<digits>`, each from a complete line of the input, and every other `alloc` or
//! `step` line is refused.
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
    let count = |kind: &str| lines.iter().filter(|w| w.first() == Some(&kind)).count();
    assert_eq!(
        read.jobs.len() + read.allocations.len() + read.steps.len() + read.refused.len(),
        count("job") + count("alloc") + count("step")
    );
    for (id, key) in &read.allocations {
        assert!(valid(id), "allocation {id:?}: an id its scheduler refuses");
        assert!(
            key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "allocation key {key:?}"
        );
        assert!(
            lines
                .iter()
                .any(|w| w.len() == 4 && w[0] == "alloc" && w[1] == name && w[2] == id && w[3] == key),
            "allocation {id} {key} is not an alloc line of the input"
        );
    }
    for st in &read.steps {
        let (job, n) = st.id.split_once('.').expect("a step id has a dot");
        assert!(valid(job), "step {st:?}: a job id its scheduler refuses");
        assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()), "step {st:?}");
        assert!(
            lines
                .iter()
                .any(|w| w.len() == 3 && w[0] == "step" && w[1] == name && w[2] == st.id),
            "step {st:?} is not a step line of the input"
        );
    }
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
