//! The holder: the bash script that is a pipeline allocation's batch step (submitted with
//! `sbatch` as the script file), which keeps the allocation while it is used and ends it,
//! by exiting, once it was unused for the idle timeout (docs/allocations-design.md,
//! "The holder"; ported from `holder` in scripts/slurm/alloc-proto.sh).
//!
//! Used means: a fresh lease in `<key>.leases/` ([`super::dir`]), or a step of the
//! allocation other than `batch`/`extern` on this node (`scontrol listpids`, which asks the
//! local slurmstepds, not slurmctld). The holder makes no slurmctld RPC per period.

use std::path::Path;
use std::time::Duration;

use super::dir::LEASE_FRESH;
use super::Key;
use crate::batch::path_arg;
use crate::shell::sh_quote;

/// What the holder script is made of.
pub struct HolderParams<'a> {
    /// The allocation directory ([`super::AllocDir::path`]).
    pub dir: &'a Path,
    pub key: &'a Key,
    /// `[batch] allocation_idle_timeout` (10 s ..= 1 h).
    pub idle: Duration,
    /// The `scontrol` program to call for `listpids` (`scheduler_bin/scontrol`, or the one
    /// found on PATH).
    pub scontrol: &'a Path,
}

/// The shortest period the holder checks at.
const PERIOD_MIN: Duration = Duration::from_secs(2);

/// The longest period the holder checks at.
const PERIOD_MAX: Duration = Duration::from_secs(30);

/// How long the holder waits for the allocation lock (`flock -w`) before trying again a
/// period later.
const LOCK_WAIT_SECS: u64 = 30;

/// The period the holder checks at: a tenth of the idle timeout, at least 2 s and at most
/// 30 s. The allocation ends within idle + period (+ about a second for Slurm) after its
/// last use.
pub fn period(idle: Duration) -> Duration {
    (idle / 10).clamp(PERIOD_MIN, PERIOD_MAX)
}

/// The holder script; `@DIR@`, `@KEY@`, `@IDLE@`, `@PERIOD@`, `@SCONTROL@`, `@FRESH@`,
/// `@LOCK_WAIT@` are filled in (each quoted).
const TEMPLATE: &str = r#"#!/bin/bash
# jacamar: the holder of a pipeline allocation (docs/allocations-design.md, "The holder").
# It is the allocation's batch step. It ends the allocation, by exiting, once nothing used it
# for the idle timeout: no fresh lease (a file named by a CI job id in the leases directory,
# modified within the last FRESH seconds) and no step other than batch/extern on this node.
# It asks slurmctld nothing: leases are files, `scontrol listpids` asks the local slurmstepds.
# No `set -e`: a failed check is a busy or an idle answer, never the end of the allocation.
set -u
dir=@DIR@
key=@KEY@
idle=@IDLE@
period=@PERIOD@
scontrol=@SCONTROL@
fresh=@FRESH@
lock_wait=@LOCK_WAIT@
leases=$dir/$key.leases
rec=$dir/$key.rec
lock=$dir/lock

say() { printf '%s [holder] %s\n' "$(date +%T.%3N)" "$*"; }
now() { date +%s; }
# The mtime of $1 in seconds since the epoch, 0 when it cannot be read.
mtime() { stat -c %Y -- "$1" 2>/dev/null || echo 0; }

# How many leases are fresh: regular files with all-digit names, modified at most $fresh s ago.
fresh_leases() {
    local n=0 f cut
    cut=$(($(now) - fresh))
    for f in "$leases"/*; do
        case ${f##*/} in '' | *[!0-9]*) continue ;; esac
        if [ ! -f "$f" ] || [ -L "$f" ]; then continue; fi
        if [ "$(mtime "$f")" -ge "$cut" ]; then n=$((n + 1)); fi
    done
    echo "$n"
}

# How many steps of this job other than batch and extern run on this node.
local_steps() {
    "$scontrol" listpids "$SLURM_JOB_ID" 2>/dev/null |
        awk 'NR > 1 && $3 != "batch" && $3 != "extern" { print $3 }' | sort -u | wc -l
}

if [ -z "${SLURM_JOB_ID:-}" ]; then
    say "SLURM_JOB_ID is not set: not a Slurm job, nothing to hold"
    exit 2
fi
sleeper=
trap 'say "TERM (scancel or time limit): exiting"; if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null; fi; exit 143' TERM
say "allocation $SLURM_JOB_ID up on $(hostname), idle timeout ${idle}s, period ${period}s"
last=$(now)
busy=
while :; do
    # In the background, so that a TERM is handled at once, not after the sleep.
    sleep "$period" &
    sleeper=$!
    wait "$sleeper"
    sleeper=
    n_leases=$(fresh_leases)
    n_steps=$(local_steps)
    if [ "$n_leases" -gt 0 ] || [ "$n_steps" -gt 0 ]; then
        if [ -z "$busy" ]; then say "busy: $n_leases lease(s), $n_steps step(s)"; fi
        busy=1
        last=$(now)
        continue
    fi
    # The last lease to go stamped .last: a step shorter than the period counts too.
    stamp=$(mtime "$leases/.last")
    if [ "$stamp" -gt "$last" ]; then last=$stamp; fi
    if [ -n "$busy" ]; then say "idle since $(date -d "@$last" +%T)"; fi
    busy=
    # Whole seconds on both sides: -le, so never early.
    if [ $(($(now) - last)) -le "$idle" ]; then continue; fi
    # Under the lock: a driver that reuses the allocation makes its lease before unlocking,
    # so either the lease is seen here or the record is gone before the driver reads it.
    if ! exec 9>>"$lock"; then
        say "cannot open $lock: trying again in ${period}s"
        continue
    fi
    if ! flock -w "$lock_wait" 9; then
        say "$lock still locked after ${lock_wait}s: trying again in ${period}s"
        exec 9>&-
        continue
    fi
    stamp=$(mtime "$leases/.last")
    if [ "$(fresh_leases)" -gt 0 ] || [ $(($(now) - stamp)) -le "$idle" ]; then
        flock -u 9
        exec 9>&-
        say "used again meanwhile: staying"
        last=$(now)
        continue
    fi
    version='' id=''
    if [ -f "$rec" ] && [ ! -L "$rec" ]; then
        read -r version _ id _ 2>/dev/null <"$rec"
    fi
    if [ "$version" = v1 ] && [ "$id" = "$SLURM_JOB_ID" ]; then
        if rm -f -- "$rec"; then
            what="record removed"
            # No allocation of this key is left: its script, its .last and its leases
            # (stale ones of killed drivers) go too; this output file stays for people
            # (the next driver prunes it after a day).
            rm -f -- "$dir/$key.holder.bash" "$leases"/.last "$leases"/[0-9]* 2>/dev/null
            rmdir -- "$leases" 2>/dev/null
        else
            what="could not remove the record $rec"
        fi
    elif [ -e "$rec" ] || [ -L "$rec" ]; then
        what="the record is not this job's: left as it is"
    else
        what="no record"
    fi
    flock -u 9
    exec 9>&-
    say "idle for ${idle}s: $what, ending the allocation"
    exit 0
done
"#;

/// Whole seconds, rounded up (so a comparison with them is never early).
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The holder script for `p`, run in the allocation's batch step. Every parameter is
/// quoted with [`sh_quote`]. Its logic (ported from scripts/slurm/alloc-proto.sh):
///
/// ```text
/// last = start; every period:
///   busy = a fresh lease (all-digit name in <key>.leases, mtime within 180 s)
///          or `scontrol listpids $SLURM_JOB_ID` lists a step other than batch/extern
///   busy -> last = now; next period
///   last = max(last, mtime(<key>.leases/.last))
///   now - last <= idle (whole seconds) -> next period
///   flock -w 30 <dir>/lock; fresh lease, or .last within idle -> unlock, last = now, next period
///   <key>.rec is "v1 <scheduler> $SLURM_JOB_ID ..." -> remove it (another job's: left)
///   unlock; "idle for Ns: record removed, ending the allocation"; exit 0
/// TERM -> exit 143 (at once: the period's sleep runs in the background)
/// ```
///
/// Timestamped lines go to stdout (`<key>.holder.out`), for people.
pub fn script(p: &HolderParams<'_>) -> String {
    let period = period(p.idle);
    TEMPLATE
        .replace("@DIR@", &sh_quote(&path_arg(p.dir)))
        .replace("@KEY@", &sh_quote(p.key.as_str()))
        .replace("@IDLE@", &sh_quote(&secs_up(p.idle).to_string()))
        .replace(
            "@PERIOD@",
            &sh_quote(&format!(
                "{}.{:03}",
                period.as_secs(),
                period.subsec_millis()
            )),
        )
        .replace("@SCONTROL@", &sh_quote(&path_arg(p.scontrol)))
        .replace("@FRESH@", &sh_quote(&LEASE_FRESH.as_secs().to_string()))
        .replace("@LOCK_WAIT@", &sh_quote(&LOCK_WAIT_SECS.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::alloc::{AllocDir, AllocRecord};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    #[test]
    fn the_period_is_a_tenth_of_the_idle_timeout_within_2_and_30_seconds() {
        let s = Duration::from_secs;
        assert_eq!(period(s(10)), s(2));
        assert_eq!(period(s(19)), s(2));
        assert_eq!(period(s(25)), Duration::from_millis(2500));
        assert_eq!(period(s(100)), s(10));
        assert_eq!(period(s(300)), s(30));
        assert_eq!(period(s(3600)), s(30));
    }

    fn params_script(dir: &Path, key: &Key, idle: Duration, scontrol: &Path) -> String {
        script(&HolderParams {
            dir,
            key,
            idle,
            scontrol,
        })
    }

    #[test]
    fn the_script_quotes_its_parameters_and_passes_bash_n_and_shellcheck() {
        let key = Key::derive(1000, "1", "2", &[]);
        let s = params_script(
            Path::new("/home/o'brien/my dir/.jacamar-alloc"),
            &key,
            Duration::from_millis(10_500),
            Path::new("/opt/slurm bin/scontrol"),
        );
        assert!(
            s.contains("dir='/home/o'\\''brien/my dir/.jacamar-alloc'\n"),
            "{s}"
        );
        assert!(s.contains(&format!("key='{}'\n", key.as_str())));
        assert!(s.contains("idle='11'\n"), "rounded up: {s}");
        assert!(s.contains("period='2.000'\n"));
        assert!(s.contains("scontrol='/opt/slurm bin/scontrol'\n"));
        assert!(s.contains("fresh='180'\n"));
        for p in [
            "@DIR@",
            "@KEY@",
            "@IDLE@",
            "@PERIOD@",
            "@SCONTROL@",
            "@FRESH@",
            "@LOCK_WAIT@",
        ] {
            assert!(!s.contains(p), "{p} left: {s}");
        }
        assert!(
            !s.lines().any(|l| l.trim_start().starts_with("set -e")),
            "set -e ends the holder early"
        );

        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("holder.bash");
        std::fs::write(&file, &s).unwrap();
        let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        match Command::new("shellcheck")
            .args(["-S", "warning", "-s", "bash"])
            .arg(&file)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "shellcheck: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("shellcheck is not installed: the holder was checked with bash -n only")
            }
            Err(e) => panic!("running shellcheck: {e}"),
        }
    }

    /// An executable `scontrol` stub in `dir` whose `listpids` prints `lines`.
    fn stub_scontrol(dir: &Path, name: &str, lines: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nprintf '%s' '{lines}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The holder of `key` started with bash as the job 999 would run it.
    fn start(dir: &AllocDir, key: &Key, scontrol: &Path) -> Child {
        let text = params_script(dir.path(), key, Duration::from_secs(10), scontrol);
        let script = dir.write_holder(key, &text).unwrap();
        let out = std::fs::File::create(dir.holder_out(key)).unwrap();
        Command::new("bash")
            .arg(&script)
            .env("SLURM_JOB_ID", "999")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn record(id: &str) -> AllocRecord {
        AllocRecord {
            scheduler: "slurm".into(),
            id: id.into(),
            submitted_unix: 1_700_000_000,
            uid: 1000,
        }
    }

    /// Wait for `child` to exit, at most until `deadline`.
    fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Three holders of job 999 at once, idle 10 s (period 2 s):
    /// A (a lease, the record names 999), B (a lease, the record names 1000), C (no lease,
    /// the record names 999, `listpids` shows a step). All stay 12 s; after A's and B's
    /// leases are released, A and B exit 0 within idle + period + 2 s, and not before the
    /// idle timeout, A having removed its record, B having left the other job's; C stays
    /// busy until a TERM, which ends it at once with 143.
    #[test]
    fn the_holder_stays_while_used_and_ends_itself_after_the_idle_timeout() {
        let base = tempfile::Builder::new()
            .prefix("alloc holder's base ")
            .tempdir()
            .unwrap();
        let dir = AllocDir::open(base.path()).unwrap();
        let header = "PID      JOBID    STEPID   LOCALID GLOBALID\n";
        let idle_stub = stub_scontrol(
            base.path(),
            "scontrol",
            &format!("{header}12997    999     batch    0       0\n12998    999     batch    -       -\n"),
        );
        let step_stub = stub_scontrol(
            base.path(),
            "scontrol-step",
            &format!("{header}12997    999     batch    0       0\n24101    999     3        0       0\n"),
        );
        let (ka, kb, kc) = (
            Key::derive(1000, "1", "10", &[]),
            Key::derive(1000, "1", "11", &[]),
            Key::derive(1000, "1", "12", &[]),
        );
        dir.write_record(&ka, &record("999")).unwrap();
        dir.write_record(&kb, &record("1000")).unwrap();
        dir.write_record(&kc, &record("999")).unwrap();
        dir.make_lease(&ka, 41).unwrap();
        dir.make_lease(&kb, 42).unwrap();

        let mut a = start(&dir, &ka, &idle_stub);
        let mut b = start(&dir, &kb, &idle_stub);
        let mut c = start(&dir, &kc, &step_stub);
        let out = |k: &Key| std::fs::read_to_string(dir.holder_out(k)).unwrap_or_default();

        std::thread::sleep(Duration::from_secs(12));
        for (name, child, k) in [("A", &mut a, &ka), ("B", &mut b, &kb), ("C", &mut c, &kc)] {
            assert!(
                child.try_wait().unwrap().is_none(),
                "holder {name} ended while used:\n{}",
                out(k)
            );
        }

        dir.release_lease(&ka, 41).unwrap();
        dir.release_lease(&kb, 42).unwrap();
        let released = Instant::now();
        let deadline = released + Duration::from_secs(10 + 2 + 2);
        // Both polled together, so each one's end time is its own.
        let mut ends: [Option<(std::process::ExitStatus, Duration)>; 2] = [None, None];
        while ends.iter().any(Option::is_none) && Instant::now() < deadline {
            for (end, child) in ends.iter_mut().zip([&mut a, &mut b]) {
                if end.is_none() {
                    *end = child.try_wait().unwrap().map(|st| (st, released.elapsed()));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for ((name, k), end) in [("A", &ka), ("B", &kb)].into_iter().zip(ends) {
            let Some((st, took)) = end else {
                panic!(
                    "holder {name} still there {:?} after the release:\n{}",
                    released.elapsed(),
                    out(k)
                );
            };
            assert_eq!(
                st.code(),
                Some(0),
                "holder {name} after {took:?}:\n{}",
                out(k)
            );
            assert!(
                took >= Duration::from_secs(10),
                "holder {name} ended {took:?} after the release, before the idle timeout:\n{}",
                out(k)
            );
        }
        assert!(!dir.record_path(&ka).exists(), "A's record:\n{}", out(&ka));
        assert!(
            out(&ka).contains("idle for 10s: record removed, ending the allocation"),
            "{}",
            out(&ka)
        );
        assert!(
            dir.record_path(&kb).exists(),
            "B removed another job's record"
        );
        assert!(
            out(&kb).contains("the record is not this job's"),
            "{}",
            out(&kb)
        );

        assert!(
            c.try_wait().unwrap().is_none(),
            "holder C ended with a step running:\n{}",
            out(&kc)
        );
        assert!(
            out(&kc).contains("busy: 0 lease(s), 1 step(s)"),
            "{}",
            out(&kc)
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let st = wait_until(&mut c, Instant::now() + Duration::from_secs(2));
        assert_eq!(st.and_then(|s| s.code()), Some(143), "{}", out(&kc));
        assert!(out(&kc).contains("TERM (scancel or time limit): exiting"));
        assert!(dir.record_path(&kc).exists());
    }

    #[test]
    fn without_slurm_job_id_the_holder_ends_at_once() {
        let base = tempfile::tempdir().unwrap();
        let dir = AllocDir::open(base.path()).unwrap();
        let key = Key::derive(1, "1", "1", &[]);
        let text = params_script(
            dir.path(),
            &key,
            Duration::from_secs(10),
            Path::new("/bin/false"),
        );
        let script = dir.write_holder(&key, &text).unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .env_remove("SLURM_JOB_ID")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SLURM_JOB_ID is not set"));
    }
}
