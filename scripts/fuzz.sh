#!/usr/bin/env bash
# Fuzz every target of fuzz/ (docs/fuzzing.md) for SECONDS each, one after the other:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 30 s, every target)
#
# Installs the nightly toolchain and cargo-fuzz when missing (as root in CI, no stdin).
# Prints per target the executions and whether it found anything; exits non-zero when a
# target crashed, timed out, ran out of memory or did not build, printing the path of the
# input that did it (fuzz/artifacts/TARGET/...). The committed seeds (fuzz/corpus/TARGET)
# are read, never written: new inputs go to fuzz/target/corpus/TARGET, kept between runs.
# FUZZ_ARGS adds libFuzzer options to every target (e.g. FUZZ_ARGS=-jobs=1).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
shift || true
all=(config runner_config frames sched batch_record jwt script_quote)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
case "$secs" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

command -v rustup >/dev/null || { echo "fuzz: rustup is required (for the nightly toolchain)" >&2; exit 2; }
# libFuzzer and AddressSanitizer need nightly's -Z flags.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal </dev/null
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz </dev/null
fi
echo "fuzz: $(rustup run nightly rustc --version), $(cargo fuzz --version)"

cd fuzz
# Release with debug assertions and overflow checks, AddressSanitizer (cargo fuzz's defaults).
cargo +nightly fuzz build </dev/null

# Options per target: a dictionary (fuzz/dict/: integer boundaries, and the words of the
# configuration or of the schedulers' outputs). frames: allocation above MAX_HANDOFF
# (256 MiB) is a finding. script_quote starts one bash per input: short inputs suffice.
target_args() {
  case "$1" in
    config | runner_config) echo "-dict=dict/config.dict" ;;
    sched) echo "-dict=dict/sched.dict" ;;
    frames) echo "-dict=dict/ints.dict -malloc_limit_mb=300" ;;
    script_quote) echo "-max_len=512" ;;
    *) echo "-dict=dict/ints.dict" ;;
  esac
}

failed=()
summary=()
mkdir -p target/logs
for t in "${targets[@]}"; do
  [ -f "fuzz_targets/$t.rs" ] || { echo "fuzz: no target $t" >&2; exit 2; }
  mkdir -p "target/corpus/$t" "artifacts/$t"
  log="target/logs/$t.log"
  echo "=== fuzz $t (${secs} s)"
  rc=0
  # shellcheck disable=SC2046,SC2086 # word splitting of the option lists is wanted
  nice -n 19 cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    $(target_args "$t") ${FUZZ_ARGS:-} </dev/null >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  if [ -z "$execs" ]; then
    execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
  fi
  corpus=$(find "target/corpus/$t" -type f | wc -l)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
  if [ "$rc" = 0 ] && [ -z "$artifact" ]; then
    line="$t: ${execs:-?} executions in ${secs} s, corpus ${corpus} inputs, nothing found"
  else
    line="$t: FOUND (exit $rc) after ${execs:-?} executions: ${artifact:-no input written}"
    failed+=("$t")
    # What libFuzzer said: the panic or the sanitizer's report, and the input's path.
    grep -E "panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|out-of-memory|timeout|Test unit written|Failing input|^error" "$log" | head -n 20 >&2 || true
    echo "fuzz: whole log: fuzz/$log" >&2
    [ -n "$artifact" ] && echo "fuzz: reproduce: (cd fuzz && cargo +nightly fuzz run $t $artifact)" >&2
  fi
  echo "$line"
  summary+=("$line")
done

echo "=== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
