//! The batch schedulers' output parsers (src/batch/{slurm,pbs,lsf,flux,cobalt}.rs), the
//! wrapper's exit record and the shared poll's snapshot (src/batch/{wrapper,poller}.rs) on
//! arbitrary text. The first byte picks the parser; for the parsers of one job's answer the
//! text's first line is the job id asked for and the rest the output. No panic; the ids of
//! a listing are words of its input (a parser never makes up a job).
#![no_main]

use std::collections::BTreeMap;

use jacamar::batch::{cobalt, flux, lsf, pbs, poller, slurm, wrapper, JobState};
use libfuzzer_sys::fuzz_target;

/// Every key of a listing is a field of one line of the input, as `fields` splits a line.
fn ids_in_input<V>(input: &str, listing: &BTreeMap<String, V>, fields: impl Fn(&str) -> Vec<&str>) {
    for id in listing.keys() {
        assert!(!id.is_empty(), "an empty job id");
        assert!(
            input.lines().any(|l| fields(l).contains(&id.as_str())),
            "job id {id:?} is no field of the input"
        );
    }
}

/// The fields of a `|`-separated line, trimmed (squeue, sacct, bjobs, flux jobs).
fn bars(l: &str) -> Vec<&str> {
    l.split('|').map(str::trim).collect()
}

/// The words of a line (Cobalt's qstat), and each word's part before its first `.` (the
/// sequence number of a PBS id, `123` of `123.server`).
fn words(l: &str) -> Vec<&str> {
    l.split_whitespace()
        .flat_map(|w| [w, w.split('.').next().unwrap_or(w)])
        .collect()
}

/// What the executor does with a state: its success and its message.
fn state_ok(st: &JobState) {
    if let JobState::Finished(f) = st {
        let _ = f.success();
    }
    let _ = format!("{st:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text = text.as_ref();
    let (id, out) = text.split_once('\n').unwrap_or((text, ""));
    match which % 16 {
        0 => {
            let l = slurm::parse_squeue(text);
            ids_in_input(text, &l, bars);
            l.values().for_each(|v| state_ok(&v.state));
        }
        1 => {
            let l = slurm::parse_sacct_all(text);
            ids_in_input(text, &l, bars);
            l.values().for_each(state_ok);
        }
        2 => {
            if let Some(st) = slurm::parse_sacct(out, id) {
                state_ok(&st);
            }
        }
        3 => {
            if let Some(st) = slurm::parse_scontrol(text) {
                state_ok(&st);
            }
        }
        4 => {
            if let Some(id) = slurm::parse_submit(text) {
                assert!(text.contains(&id));
            }
            let _ = slurm::parse_exit(text);
            let _ = slurm::parse_time_limit(text);
            let _ = slurm::parse_begin(text);
        }
        5 => {
            let l = pbs::parse_qstat_table(text);
            ids_in_input(text, &l, words);
            l.values().for_each(|v| state_ok(&v.state));
        }
        6 => {
            if let Some(st) = pbs::parse_qstat(text) {
                state_ok(&st);
            }
            if let Some(id) = pbs::parse_submit(text) {
                assert!(text.contains(&id));
                let _ = pbs::sequence(&id);
            }
        }
        7 => {
            let l = lsf::parse_bjobs_list(text);
            ids_in_input(text, &l, bars);
            l.values().for_each(|v| state_ok(&v.state));
        }
        8 => {
            if let Some(st) = lsf::parse_bjobs(text) {
                state_ok(&st);
            }
            if let Some(id) = lsf::parse_submit(text) {
                assert!(text.contains(&id));
            }
        }
        9 => {
            let l = flux::parse_jobs_list(text);
            ids_in_input(text, &l, bars);
            l.values().for_each(|v| state_ok(&v.state));
        }
        10 => {
            if let Some(st) = flux::parse_jobs(text) {
                state_ok(&st);
            }
            if let Some(id) = flux::parse_submit(text) {
                assert!(text.contains(&id));
                if let Some(d) = flux::decimal_id(&id) {
                    assert!(!d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                }
            }
        }
        11 => {
            let l = cobalt::parse_qstat_all(text);
            ids_in_input(text, &l, words);
            l.values().for_each(state_ok);
            if let Some(st) = cobalt::parse_qstat(out, id) {
                state_ok(&st);
            }
        }
        12 => {
            if let Some(f) = cobalt::parse_cobaltlog(text) {
                let _ = f.success();
            }
            let _ = cobalt::parse_status_echo(text);
            if let Some(id) = cobalt::parse_submit(text) {
                assert!(text.contains(&id));
            }
        }
        13 => {
            let _ = wrapper::parse_exit_record(out, id);
        }
        14 => {
            if let Ok(s) = serde_json::from_str::<poller::Snapshot>(text) {
                s.jobs.values().for_each(|v| state_ok(&v.state));
            }
        }
        _ => {
            // One id through every scheduler's id parsers.
            let _ = flux::decimal_id(id);
            let _ = pbs::sequence(id);
            let _ = slurm::parse_exit(id);
        }
    }
});
