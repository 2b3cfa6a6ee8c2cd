#!/usr/bin/env bash
# Job wall time through the real GitLab Runner (benches/jobs.rs, BENCHMARKS.md "Job wall time
# through the real runner"): trivial jobs run by jacamar-rs (setuid to a `useradd -m` account)
# against pass-through custom executors, with a plain account and one whose ~/.bash_profile
# sleeps 0.3 s. Needs root and git; builds the runner releases once (scripts/gitlab-runner.sh).
#
#   scripts/bench-jobs.sh                          10 jobs per executor, runner v16.9.2
#   JOBS_BENCH_N=20 JOBS_BENCH_RUNNER=v18.0.5 scripts/bench-jobs.sh
#   JOBS_BENCH_BEFORE_DIR=/path/to/other/target/release scripts/bench-jobs.sh   (before/after)
#   JOBS_BENCH_ACCOUNTS=plain JOBS_BENCH_N=60 scripts/bench-jobs.sh              (one account)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-jobs.sh: run as root (the bench creates accounts and runs setuid jobs)" >&2; exit 2; }
command -v git >/dev/null || { echo "bench-jobs.sh: git is required" >&2; exit 2; }
JACAMAR_E2E_RUNNER_V18_0_5=$(bash scripts/gitlab-runner.sh v18.0.5 </dev/null | tail -n1)
JACAMAR_E2E_RUNNER_V16_9_2=$(bash scripts/gitlab-runner.sh v16.9.2 </dev/null | tail -n1)
export JACAMAR_E2E_RUNNER_V18_0_5 JACAMAR_E2E_RUNNER_V16_9_2
# The runner's helper commands are looked up as `gitlab-runner` on the job user's PATH.
if [ -L /usr/local/bin/gitlab-runner ] || [ ! -e /usr/local/bin/gitlab-runner ]; then
  ln -sfn "$JACAMAR_E2E_RUNNER_V18_0_5" /usr/local/bin/gitlab-runner
fi
echo "nproc $(nproc), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
cargo bench --quiet --features root-tests --bench jobs
