//! Reading processes from `/proc`: the one place that walks it and parses
//! `/proc/<pid>/stat` (the sweep of [`super::group`], the cgroup names of [`super::cgroup`]).

/// One process seen in /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// State `Z` (zombie) or `X` (dead): gone but for its parent's reap.
    pub zombie: bool,
}

/// The fields of `/proc/<pid>/stat` after the command name, from the state on. The name
/// may hold spaces and parentheses, so they are read after the last `)`; `None` for text
/// without one.
fn fields_after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parse `/proc/<pid>/stat`; `None` when a field is missing or not a number.
pub fn parse_stat(pid: i32, stat: &str) -> Option<ProcInfo> {
    let mut fields = fields_after_comm(stat)?;
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgid,
        zombie: state == "Z" || state == "X",
    })
}

/// The start time (field 22, clock ticks after boot) in `/proc/<pid>/stat` text.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    fields_after_comm(stat)?.nth(19)?.parse().ok()
}

/// The start time of process `pid`; `None` when it is gone (or /proc is not there).
pub fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process currently visible in /proc (empty without /proc). A process that ends
/// during the walk is left out.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        parse_stat(pid, &stat)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_name() {
        let s = "1234 (a b) c)) S 77 1234 1234 0 -1 4194560";
        let p = parse_stat(1234, s).unwrap();
        assert_eq!((p.ppid, p.pgid, p.zombie), (77, 1234, false));
        let z = parse_stat(5, "5 (x) Z 1 5 5").unwrap();
        assert!(z.zombie);
        assert!(parse_stat(5, "garbage").is_none());
    }

    #[test]
    fn start_time_is_field_22() {
        let s = "9 (a) b) S 1 9 9 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(s), Some(123456));
        assert_eq!(parse_start_time("9 (a) S 1"), None);
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(all_processes().iter().any(|p| p.pid == me));
    }
}
