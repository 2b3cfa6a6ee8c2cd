#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks, the unit and integration tests, each fuzz target briefly
# (scripts/fuzz.sh, docs/fuzzing.md), then the multi-host docker cluster's tests
# (docker/README.md), as root (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
# [auth]: libseccomp-dev links the seccomp filters; libcap2-bin (setcap) for the
# caps-only service account test; sudo for downscope = "sudo"; openssl makes the test PKI
# and RSA keys; hostname for the seccomp test. bindfs (and fuse3 for its umount) for the
# NFS-like view of tests/integration/nfs_view.rs.
auth_pkgs=(libseccomp-dev libcap2-bin sudo openssl hostname)
# git for the end-to-end tests' job sources (tests/e2e, through the real GitLab Runner).
for p in bash procps util-linux passwd e2fsprogs bindfs fuse3 git "${auth_pkgs[@]}"; do
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

# --- what the tests leave on the machine, removed however the run ends: the accounts and
# groups they create (every name starts with jrs_, plus the bot account project_77_bot_jrs;
# jacamar-ci of scripts/slurm/slurm-up.sh stays, it belongs to the Slurm setup), their
# processes and Slurm jobs first, the sudoers drop-ins, the test PKI (a CA private key) and
# other /tmp/jrs-* leftovers, a /etc/nologin of the nologin test, empty per-job cgroups.
test_names() { # $1: passwd or group
  getent "$1" | cut -d: -f1 | grep -E '^(jrs_[a-z0-9]+_[a-z0-9_]+|project_77_bot_jrs)$' || true
}
cleanup_test_leftovers() {
  local u g cg home uid
  for u in $(test_names passwd); do
    home=$(getent passwd "$u" | cut -d: -f6)
    uid=$(id -u "$u" 2>/dev/null) || uid=gone
    command -v scancel >/dev/null && scancel -u "$u" 2>/dev/null
    for _ in $(seq 50); do
      pkill -KILL -u "$u" 2>/dev/null || break
      sleep 0.1
    done
    userdel -r "$u" 2>/dev/null
    if getent passwd "$u" >/dev/null; then echo "cleanup: userdel $u failed" >&2; fi
    case "$home" in /home/jrs_*|/home/project_77_bot_jrs) rm -rf "$home" ;; esac
    # A container test that failed half-way leaves the job's node-local state (per uid).
    rm -rf "/tmp/jacamar-podman-$uid" "/tmp/jacamar-ch-$uid" || true
  done
  for g in $(test_names group); do
    groupdel "$g" || echo "cleanup: groupdel $g failed" >&2
  done
  rm -f /etc/sudoers.d/jacamar-rs-test /etc/sudoers.d/jacamar-rs-superv
  if [ -f /etc/nologin ] && [ "$(cat /etc/nologin)" = "jrs test maintenance" ]; then
    rm -f /etc/nologin
  fi
  rm -rf /tmp/jrs-*
  cg=$(findmnt -n -t cgroup2 -o TARGET 2>/dev/null | head -n1)
  # rmdir removes a cgroup only when no process is left in it.
  [ -n "$cg" ] && find "$cg" -depth -type d -name 'jacamar-rs.*' -exec rmdir {} \; 2>/dev/null
  return 0
}
# The docker cluster is removed (docker/down.sh) however the run ends, once up.sh started.
docker_started=0
on_exit() {
  if [ "$docker_started" = 1 ]; then docker/down.sh </dev/null || echo "docker/down.sh failed" >&2; fi
  if [ "$(id -u)" = 0 ] && [ "${JACAMAR_TEST_KEEP_LEFTOVERS:-0}" != 1 ]; then
    cleanup_test_leftovers
  fi
}
trap on_exit EXIT

# --- batch executors: a real one-node Slurm, the Torque wrappers (qsub/qstat/qdel
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

# --- the real GitLab Runner for the end-to-end tests (tests/e2e): both releases, built once
# from the shared sources by scripts/gitlab-runner.sh (cached in /var/cache/gitlab-runner-build,
# outside the clone; a cold build takes 4-6 minutes each). The job's helper commands
# (`gitlab-runner artifacts-uploader`, ...) are looked up as `gitlab-runner` on the job user's
# PATH, as on a site where the runner is installed: /usr/local/bin/gitlab-runner links to the
# v18.0.5 build (an existing regular file there, a site's own runner, is left alone).
if [ "$(id -u)" = 0 ]; then
  JACAMAR_E2E_RUNNER_V18_0_5=$(bash scripts/gitlab-runner.sh v18.0.5 </dev/null | tail -n1)
  JACAMAR_E2E_RUNNER_V16_9_2=$(bash scripts/gitlab-runner.sh v16.9.2 </dev/null | tail -n1)
  export JACAMAR_E2E_RUNNER_V18_0_5 JACAMAR_E2E_RUNNER_V16_9_2
  if [ -L /usr/local/bin/gitlab-runner ] || [ ! -e /usr/local/bin/gitlab-runner ]; then
    ln -sfn "$JACAMAR_E2E_RUNNER_V18_0_5" /usr/local/bin/gitlab-runner
  fi
fi

# --- container images (issue 19, tests/integration/containers.rs, tests/e2e/images.rs,
# benches/containers.rs): podman, runc, charliecloud,
# the Distribution registry, skopeo, htpasswd, uidmap, squashfs tools, and the debootstrap test
# image (cached in /var/cache/jacamar-rs/images, outside the clone; a cold build takes about
# a minute). Idempotent; a machine where they cannot be installed fails here.
if [ "$(id -u)" = 0 ]; then
  bash scripts/containers/setup.sh </dev/null
fi

# The root suites are built and run with the `root-tests` feature (Cargo.toml): without it
# the tests that need root are ignored and tests/e2e is not built; this script runs as root,
# so every test runs.
cargo fmt --all -- --check
cargo clippy --all-targets --features root-tests --quiet -- -D warnings \
  -W clippy::undocumented_unsafe_blocks
cargo build --bins --quiet
suite=0
cargo test --features root-tests --all-targets --no-fail-fast 2>&1 || suite=$?
# Alone, after the parallel suite: this test stops slurmctld for 20 s, which any other Slurm
# test running at the same time would see as an outage.
cargo test --features root-tests --test integration -- --ignored --exact \
  scale_poll::a_controller_restart_mid_job_is_a_log_line 2>&1
# Alone too, for the same reason: stops slurmctld twice for 20 s during a pipeline that reuses
# one allocation (docs/allocations.md).
cargo test --features root-tests --test integration -- --ignored --exact \
  alloc::a_controller_restart_mid_pipeline 2>&1

# --- fuzzing (docs/fuzzing.md): every target of fuzz/ briefly, from its committed seeds
# (installs nightly and cargo-fuzz when missing). A finding fails the run, its input's path
# printed; the docker part still runs. JACAMAR_TEST_FUZZ_SECONDS: the time per target.
fuzz_rc=0
echo "=== fuzz" >&2
fuzz_t0=$SECONDS
bash scripts/fuzz.sh "${JACAMAR_TEST_FUZZ_SECONDS:-15}" </dev/null || fuzz_rc=$?
echo "=== fuzz: exit $fuzz_rc after $((SECONDS - fuzz_t0)) s" >&2

# --- the multi-host docker cluster (docker/README.md): up, CI jobs per batch executor through
# the real GitLab Runner on the runner node (a fake GitLab from tests/e2e on the host), the
# packages in fresh containers, the multi-host failure tests, down (also in on_exit).
# Installs docker.io, docker-compose, debootstrap and the packaging tools itself; the base
# image and the cargo installs stay on the machine. Every step runs; any failure fails the
# run. Opt-out only by JACAMAR_TEST_NO_DOCKER=1 (CI never sets it).
docker_rc=0
if [ "${JACAMAR_TEST_NO_DOCKER:-0}" = 1 ]; then
  echo "!!!!!!!! JACAMAR_TEST_NO_DOCKER=1: the docker cluster, the package check and the" >&2
  echo "!!!!!!!! multi-host failure tests were NOT run; this is not a full test run" >&2
else
  [ "$(id -u)" = 0 ] || { echo "the docker cluster needs root" >&2; exit 2; }
  docker_step() { # docker_step SCRIPT: run it, time it, remember a failure
    local t0=$SECONDS rc=0
    echo "=== docker/$1" >&2
    "docker/$1" </dev/null || rc=$?
    echo "=== docker/$1: exit $rc after $((SECONDS - t0)) s" >&2
    [ "$rc" = 0 ] || docker_rc=1
    return "$rc"
  }
  docker_started=1
  if docker_step up.sh; then
    docker_step smoke.sh || true
    docker_step package-test.sh || true
    docker_step failure-tests.sh || true
  fi
  docker_step down.sh && docker_started=0
fi
[ "$suite" = 0 ] || exit "$suite"
[ "$fuzz_rc" = 0 ] || exit "$fuzz_rc"
exit "$docker_rc"
