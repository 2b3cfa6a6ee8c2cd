//! `batch::persist::parse`, the record of submitted jobs kept in the job's own directories
//! (so the job's account can write it), on arbitrary text. No panic; every recorded job's
//! scheduler and id are words of a complete `job` line of the input, and a job marked done
//! has a complete `done <id>` line.
#![no_main]

use jacamar::batch::persist::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let jobs = parse(&text);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let lines: Vec<Vec<&str>> = complete
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(jobs.len() <= lines.len());
    for j in &jobs {
        assert!(
            lines
                .iter()
                .any(|w| w.len() >= 3 && w[0] == "job" && w[1] == j.scheduler && w[2] == j.id),
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
