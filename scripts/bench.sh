#!/usr/bin/env bash
# End-to-end figures of the driver (see benches/driver.rs and BENCHMARKS.md): builds the
# release binaries, then runs the bench against them and prints a table and its markdown.
#
#   scripts/bench.sh                 full run (~100 runs per figure, a 60 s idle job)
#   BENCH_QUICK=1 scripts/bench.sh   smoke run (few runs, a 5 s idle job)
#   BENCH_IDLE_SECS=20 ...           length of the idle job
#   JACAMAR_BIN_DIR=DIR ...          measure binaries built elsewhere (no build then)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 2; }
command -v bash >/dev/null || { echo "bash is required" >&2; exit 2; }

if [ -z "${JACAMAR_BIN_DIR:-}" ]; then
  cargo build --release --bins --quiet
  export JACAMAR_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi
echo "nproc $(nproc), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
cargo bench --quiet --bench driver
