#!/usr/bin/env bash
# Scale bench of the batch executor (benches/scale.rs, results in BENCHMARKS.md "Scale"):
# N concurrent CI jobs of 1 and of 4 users against the one-node Slurm, then idle
# shell-executor jobs. Run as root on a test machine, never from CI (about 15 minutes).
#
#   scripts/bench-scale.sh                       SCALE_N=40,200,500 SCALE_USERS=1,4, 500 shell jobs
#   SCALE_N=40 SCALE_USERS=1 SCALE_SHELL_N=0 scripts/bench-scale.sh    a quick look
#   JACAMAR_BIN_DIR=DIR ...                      measure binaries built elsewhere (no build then)
#
# Other knobs (see benches/scale.rs): SCALE_DELAY (command_delay, 10s), SCALE_WINDOW_SECS (45),
# SCALE_LINE_SECS (3), SCALE_CANCEL (10), SCALE_SHELL_SECS (60), SCALE_PARTITION (the default one).
#
# Prepares: the bench users jrs_bench_u0..u3 (useradd -m; u0 is the one-user case, so the
# bench never shares a user with other Slurm tests), the release build (nice'd: LTO is slow),
# a running Slurm (scripts/slurm/slurm-up.sh, which does nothing if it is up). The bench sets
# OverSubscribe=FORCE:64 on the partition at runtime (8 CPUs -> 512 jobs at once) and puts the
# old value back; on exit this script also cancels the bench users' jobs and puts the old value
# back if the bench could not (killed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the jobs run as the bench users)" >&2; exit 2; }
command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 2; }

for u in jrs_bench_u0 jrs_bench_u1 jrs_bench_u2 jrs_bench_u3; do
  getent passwd "$u" >/dev/null || useradd -m -s /bin/bash "$u"
done

if ! scontrol ping 2>/dev/null | grep -q "is UP"; then
  bash scripts/slurm/slurm-up.sh
fi

if [ -z "${JACAMAR_BIN_DIR:-}" ]; then
  nice -n 19 cargo build --release --bins --quiet
  export JACAMAR_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi
# Build the bench itself before the clock starts.
nice -n 19 cargo bench --quiet --bench scale --no-run

part="${SCALE_PARTITION:-$(sinfo -h -o %P | sed -n 's/\*$//p' | head -1)}"
was=$(scontrol show partition "$part" | grep -o 'OverSubscribe=[^ ]*' | head -1)
echo "partition $part: $was before the bench"
cleanup() {
  for u in jrs_bench_u0 jrs_bench_u1 jrs_bench_u2 jrs_bench_u3; do scancel -u "$u" 2>/dev/null || true; done
  now=$(scontrol show partition "$part" | grep -o 'OverSubscribe=[^ ]*' | head -1)
  if [ -n "$was" ] && [ "$now" != "$was" ]; then
    scontrol update "PartitionName=$part" "$was" && echo "partition $part: $was again"
  fi
}
trap cleanup EXIT

echo "nproc $(nproc), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
# The bench and every process it starts run at nice 10 (Slurm's daemons keep their priority).
nice -n 10 cargo bench --quiet --bench scale
