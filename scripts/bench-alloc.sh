#!/usr/bin/env bash
# Benchmark of pipeline allocations (docs/allocations-design.md "Benchmark", docs/allocations.md):
# a five-job pipeline run by jacamar-sim as GitLab Runner would (config, prepare, the run
# stages, cleanup per job, one job after the other), once as ordinary batch jobs and once with
# JACAMAR_REUSE_ALLOCATION=pipeline, on the one-node Slurm with a queue wait made on purpose:
# before each job, user B submits a filler that takes every CPU the pipeline's live allocation
# does not hold, for W seconds, and the job starts once the filler runs (allocations-facts.md
# F6: a new allocation then waits W + 0.0-0.9 s, a step in a held allocation starts at once).
#
#   scripts/bench-alloc.sh            W = 30 s
#   scripts/bench-alloc.sh 10         W = 10 s
#
# Prints per pipeline: the queue wait (Slurm's StartTime - SubmitTime of every job submitted,
# and the "waited" of the log's `Using slurm allocation` lines), the wall time of the five jobs,
# the scheduler calls by command (counting wrappers as [batch] scheduler_bin) and the slurmctld
# RPCs by message type and of user A (sdiag before and after: deltas, never `sdiag -r`).
#
# Run as root, ALONE on the cluster (a pending filler blocks everybody's jobs but backfill,
# F6), never from CI. Creates the accounts jrs_alloc_a and jrs_alloc_b (useradd -m), builds the
# release binaries (nice'd) unless ALLOC_BENCH_BIN_DIR names a dir with jacamar-auth and
# jacamar-sim. Other knobs: ALLOC_BENCH_JOBS (5), ALLOC_BENCH_IDLE (allocation_idle_timeout,
# 20s), ALLOC_BENCH_ARGS (SCHEDULER_PARAMETERS, "-n 1 --time=30").
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-alloc.sh: run as root (the jobs run as the bench users)" >&2; exit 2; }
W=${1:-30}
case $W in '' | *[!0-9]*) echo "bench-alloc.sh: W must be whole seconds, got '$W'" >&2; exit 2 ;; esac
JOBS=${ALLOC_BENCH_JOBS:-5}
IDLE=${ALLOC_BENCH_IDLE:-20s}
ARGS=${ALLOC_BENCH_ARGS:--n 1 --time=30}
case $IDLE in *[0-9]s) IDLE_S=${IDLE%s} ;; *) echo "bench-alloc.sh: ALLOC_BENCH_IDLE must be <seconds>s, got '$IDLE'" >&2; exit 2 ;; esac
case $IDLE_S in *[!0-9]*) echo "bench-alloc.sh: ALLOC_BENCH_IDLE must be <seconds>s, got '$IDLE'" >&2; exit 2 ;; esac
A=jrs_alloc_a
B=jrs_alloc_b
TOOLS=(sbatch srun squeue scontrol scancel sacct)

for u in "$A" "$B"; do
  getent passwd "$u" >/dev/null || useradd -m -s /bin/bash "$u"
done
scontrol ping 2>/dev/null | grep -q "is UP" || bash scripts/slurm/slurm-up.sh

if [ -z "${ALLOC_BENCH_BIN_DIR:-}" ]; then
  nice -n 19 cargo build --release --bins --quiet
  ALLOC_BENCH_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi
BIN=$ALLOC_BENCH_BIN_DIR
for b in jacamar jacamar-auth jacamar-sim; do
  [ -x "$BIN/$b" ] || { echo "bench-alloc.sh: $BIN/$b missing" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/jrs-bench-alloc.XXXXXX)
chmod 0755 "$WORK"
on_exit() {
  scancel -u "$A" 2>/dev/null || true
  scancel -u "$B" 2>/dev/null || true
  rm -rf "$WORK"
}
trap on_exit EXIT

# The binaries where the bench users can run them (the checkout's target/ may not be readable).
mkdir -m 0755 "$WORK/bin"
cp "$BIN/jacamar" "$BIN/jacamar-auth" "$BIN/jacamar-sim" "$WORK/bin/"

# Counting wrappers: each appends `<tool> <args>` to $LOG and runs the real tool.
mkdir -m 0755 "$WORK/sched"
LOG=$WORK/sched/calls.log
for t in "${TOOLS[@]}"; do
  real=$(command -v "$t") || { echo "bench-alloc.sh: $t not found" >&2; exit 2; }
  printf '#!/bin/bash\nprintf "%%s %%s\\n" %s "$*" >>%s\nexec %s "$@"\n' "$t" "$LOG" "$real" >"$WORK/sched/$t"
  chmod 0755 "$WORK/sched/$t"
done

# as USER CMD...: run CMD as USER with a clean environment, no tty, stdin /dev/null.
as() {
  local u=$1
  shift
  (cd /tmp && setpriv --reuid="$u" --regid="$u" --init-groups env -i HOME="$(getent passwd "$u" | cut -d: -f6)" \
    USER="$u" PATH=/usr/local/bin:/usr/bin:/bin "$@" </dev/null)
}

# config REUSE: a jacamar configuration for user A (downscope "none": the driver runs as A).
config() {
  local f=$WORK/jacamar-$1.toml data=$WORK/data-$1
  mkdir -m 1777 "$data"
  cat >"$f" <<EOF
[general]
executor = "slurm"
data_dir = "$data"
kill_timeout = "10s"
[auth]
downscope = "none"
[batch]
command_delay = "1s"
scheduler_bin = "$WORK/sched"
allocation_reuse = $1
allocation_idle_timeout = "$IDLE"
EOF
  chmod 0644 "$f"
  echo "$f"
}

TOTAL=$(scontrol show node | sed -n 's/.*CPUTot=\([0-9]*\).*/\1/p' | head -1)
[ -n "$TOTAL" ] || { echo "bench-alloc.sh: no CPUTot from scontrol show node" >&2; exit 2; }

# held: CPUs of A's live allocations (0 without reuse, once a job has ended).
held() {
  squeue -h -u "$A" -o '%j %C' | awk '$1 ~ /^jacamar-alloc-/ { s += $2 } END { print s + 0 }'
}

FILLER=
# filler: user B's previous filler cancelled, a new one for the CPUs A does not hold, running.
filler() {
  [ -z "$FILLER" ] || as "$B" scancel "$FILLER" 2>/dev/null || true
  local n=$((TOTAL - $(held)))
  FILLER=$(as "$B" sbatch --parsable -N1 -n "$n" -J jrs-alloc-filler -o /dev/null --wrap "sleep $W")
  FILLER=${FILLER%%;*}
  local until=$((SECONDS + W + 120))
  until [ "$(squeue -h -j "$FILLER" -o %T 2>/dev/null)" = RUNNING ]; do
    [ "$SECONDS" -lt "$until" ] || { echo "bench-alloc.sh: filler $FILLER never ran" >&2; exit 1; }
    sleep 0.1
  done
}

# sdiag_counts: `<section>:<name> <count>` for every RPC line (by message type, by user).
sdiag_counts() {
  sdiag | awk '
    /by message type/ { sec = "type"; next }
    /by user/ { sec = "user"; next }
    /Pending RPC/ { sec = "" }
    /^Data since/ { print "since:" $3 $4 $5 $6, 0 }
    sec != "" && /count:/ {
      name = $1
      for (i = 1; i <= NF; i++) if ($i ~ /^count:/) { split($i, c, ":"); print sec ":" name, c[2] }
    }'
}

# wait_clear: until nothing of A is listed (the allocation's holder ended it), bounded.
wait_clear() {
  local until=$((SECONDS + IDLE_S + 120))
  while [ -n "$(squeue -h -u "$A" -o %i)" ]; do
    [ "$SECONDS" -lt "$until" ] || { echo "bench-alloc.sh: jobs of $A left: $(squeue -h -u "$A")" >&2; return 1; }
    sleep 0.5
  done
}

# pipeline NAME REUSE: run the pipeline, print its numbers.
pipeline() {
  local name=$1 reuse=$2 cfg pid=$((RANDOM * 32768 + RANDOM)) i t0 t1 job out
  local -a vars=(--var "CI_PROJECT_ID=1" --var "CI_PIPELINE_ID=$pid" --var "SCHEDULER_PARAMETERS=$ARGS")
  [ "$reuse" = true ] && vars+=(--var "JACAMAR_REUSE_ALLOCATION=pipeline")
  cfg=$(config "$reuse")
  : >"$LOG"
  chmod 0666 "$LOG"
  wait_clear
  sdiag_counts >"$WORK/sdiag-before"
  local ids="" wall=0
  t0=$(date +%s.%N)
  for i in $(seq 1 "$JOBS"); do
    filler
    job=$((pid * 10 + i))
    out=$WORK/$name-$i.log
    local j0 j1
    j0=$(date +%s.%N)
    # shellcheck disable=SC2016 # expanded by the job's shell, not here
    as "$A" "$WORK/bin/jacamar-sim" --driver "$WORK/bin/jacamar-auth" --configuration "$cfg" \
      --job-id "$job" --user "$A" "${vars[@]}" \
      --script 'echo "bench job $CI_JOB_ID in ${SLURM_JOB_ID:-none}.${SLURM_STEP_ID:-batch}"' \
      >"$out" 2>&1 || { echo "bench-alloc.sh: $name job $i failed:" >&2; cat "$out" >&2; exit 1; }
    j1=$(date +%s.%N)
    awk -v n="$name" -v i="$i" -v a="$j0" -v b="$j1" 'BEGIN { printf "  %s job %d: %.1f s\n", n, i, b - a }'
    ids="$ids $(sed -n 's/.*Submitted slurm job \([0-9]*\).*/\1/p' "$out")"
  done
  t1=$(date +%s.%N)
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  [ -z "$FILLER" ] || as "$B" scancel "$FILLER" 2>/dev/null || true
  FILLER=
  wait_clear
  sdiag_counts >"$WORK/sdiag-after"

  # Queue wait per submitted job, from Slurm (whole seconds; slurmctld keeps ended jobs for MinJobAge).
  local qwait=0 id sub start
  for id in $ids; do
    sub='' start=''
    read -r sub start < <(scontrol show job "$id" 2>/dev/null |
      sed -n 's/.*SubmitTime=\([^ ]*\).*/\1/p; s/.*StartTime=\([^ ]*\).*/\1/p' | tr '\n' ' ') || true
    if [ -n "${sub:-}" ] && [ -n "${start:-}" ]; then
      qwait=$((qwait + $(date -d "$start" +%s) - $(date -d "$sub" +%s)))
    fi
  done
  echo "== $name: $JOBS jobs, W = $W s, arguments '$ARGS'"
  printf '  wall time (first filler to the last job'"'"'s end): %.1f s\n' "$wall"
  echo "  submitted:$ids"
  echo "  queue wait (Slurm StartTime - SubmitTime, summed): $qwait s"
  echo "  'waited' lines of the log:"
  grep -ho 'Using slurm allocation .*' "$WORK/$name"-*.log | sed 's/^/    /' || echo "    (none)"
  echo "  scheduler calls (counting wrappers):"
  for t in "${TOOLS[@]}"; do
    printf '    %-9s %d\n' "$t" "$(awk -v t="$t" '$1 == t { n++ } END { print n + 0 }' "$LOG")"
  done
  echo "  slurmctld RPCs (sdiag deltas; type: all users, user: $A):"
  if [ "$(grep '^since:' "$WORK/sdiag-before")" != "$(grep '^since:' "$WORK/sdiag-after")" ]; then
    echo "    sdiag's counters were reset during the pipeline (slurmctld restarted): no deltas"
    return 0
  fi
  awk 'NR == FNR { before[$1] = $2; next } { d = $2 - before[$1]; if (d > 0) printf "    %-45s %d\n", $1, d }' \
    "$WORK/sdiag-before" "$WORK/sdiag-after" | grep -E "type:|user:$A" || echo "    (none)"
}

echo "nproc $(nproc), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "node CPUs $TOTAL, W = $W s, idle timeout $IDLE"
pipeline batch false
pipeline reuse true
