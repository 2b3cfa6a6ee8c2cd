# FAKE scheduler library for jacamar-rs tests; not the real scheduler.
#
# Sourced by the fake flux, bsub/bjobs/bkill and Cobalt qsub/qstat/qdel in this directory.
# Flux, LSF and Cobalt cannot run on the test machine, so these fakes play them, following
# each tool's documented command line and output. Jobs are real processes: each submitted
# script runs in the background in its own session (its process group is "the job"), so
# output, exit codes, signals and cancellation are real. The job table lives in the
# directory named by FAKE_SCHED_DIR: jobs/<id>/{state,pgid,rc,name,cancelled,...}.
#
# FAKE_SCHED_QUEUE_DELAY: seconds a job stays queued before it starts (default 0.3).
# FAKE_SCHED_KILL_GRACE: seconds between the TERM and the KILL of a plain cancel (default 2).

fake_init() {
    if [ -z "${FAKE_SCHED_DIR:-}" ]; then
        echo "$(basename "$0"): FAKE_SCHED_DIR is not set (the fake scheduler's state dir)" >&2
        exit 2
    fi
    mkdir -p "$FAKE_SCHED_DIR/jobs"
    # Every call, for the tests to check what the driver ran.
    echo "$(basename "$0") $*" >>"$FAKE_SCHED_DIR/calls"
    FAKE_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if [ ! -x "$FAKE_LIB/fake-monitor" ]; then
        echo "$(basename "$0"): $FAKE_LIB/fake-monitor is missing (fake scheduler broken)" >&2
        exit 2
    fi
}

# Next job id (a counter under a lock).
fake_new_id() {
    (
        flock 9
        n=$(cat "$FAKE_SCHED_DIR/next" 2>/dev/null || echo 1000)
        echo $((n + 1)) >"$FAKE_SCHED_DIR/next"
        echo "$n"
    ) 9>"$FAKE_SCHED_DIR/lock"
}

fake_job_dir() { echo "$FAKE_SCHED_DIR/jobs/$1"; }

fake_exists() { [ -n "$1" ] && [ -d "$FAKE_SCHED_DIR/jobs/$1" ]; }

# fake_start ID CWD OUT ERR COMMAND...: queue the job and start its monitor, detached.
fake_start() {
    local id=$1 cwd=$2 out=$3 err=$4
    shift 4
    local d
    d=$(fake_job_dir "$id")
    mkdir -p "$d"
    printf '%s\n' "$@" >"$d/command"
    echo "$(id -un)" >"$d/user"
    echo QUEUED >"$d/state"
    setsid bash "$FAKE_LIB/fake-monitor" "$d" "$cwd" "$out" "$err" "$@" \
        </dev/null >/dev/null 2>&1 &
}

# The job's state word: QUEUED, RUN, or DONE (rc file written).
fake_state() {
    local d
    d=$(fake_job_dir "$1")
    if [ -e "$d/rc" ]; then echo DONE; else cat "$d/state" 2>/dev/null || echo QUEUED; fi
}

# fake_signal ID SIG: deliver SIG to the job's process group (if it runs).
fake_signal() {
    local d pg
    d=$(fake_job_dir "$1")
    pg=$(cat "$d/pgid" 2>/dev/null || true)
    [ -n "$pg" ] && [ ! -e "$d/rc" ] && kill -s "$2" -- "-$pg" 2>/dev/null
    return 0
}

# fake_cancel ID: the scheduler's cancel: mark it, TERM the job, KILL it after the grace
# period (from a detached killer, as the scheduler's daemon would).
fake_cancel() {
    local d
    d=$(fake_job_dir "$1")
    [ -e "$d/rc" ] && return 1
    touch "$d/cancelled"
    fake_signal "$1" TERM
    setsid bash -c 'sleep "$1"; pg=$(cat "$2/pgid" 2>/dev/null); [ -n "$pg" ] && [ ! -e "$2/rc" ] && kill -KILL -- "-$pg" 2>/dev/null; exit 0' \
        fake-killer "${FAKE_SCHED_KILL_GRACE:-2}" "$d" </dev/null >/dev/null 2>&1 &
    return 0
}
