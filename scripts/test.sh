#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks, the unit and integration tests, as root (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
# [auth] (issue 3): libseccomp-dev links the seccomp filters; libcap2-bin (setcap) for the
# caps-only service account test; sudo for downscope = "sudo"; openssl makes the test PKI
# and RSA keys; hostname for the seccomp test.
auth_pkgs=(libseccomp-dev libcap2-bin sudo openssl hostname)
for p in bash procps util-linux passwd "${auth_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" </dev/null
  else
    echo "missing packages: ${need_pkgs[*]} (run as root to install them)" >&2; exit 2
  fi
fi
command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 2; }

# --- batch executors (issue 4): a real one-node Slurm, the Torque wrappers (qsub/qstat/qdel
# over Slurm) for the PBS executor, and the non-root user the batch tests submit as. The
# script is idempotent; a machine where Slurm cannot start fails here, loudly. Set
# JACAMAR_TEST_NO_SLURM=1 to skip starting it (the batch tests then fail, they never pass).
if [ "${JACAMAR_TEST_NO_SLURM:-0}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "the batch tests need root to start Slurm" >&2; exit 2; }
  SLURM_CI_USER=jacamar-ci bash scripts/slurm/slurm-up.sh </dev/null
  if ! command -v qsub >/dev/null; then
    apt-cache show slurm-wlm-torque >/dev/null 2>&1 || apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm-torque </dev/null
  fi
fi
# --- end batch executors

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo build --bins --quiet
cargo test --all-targets --no-fail-fast 2>&1
