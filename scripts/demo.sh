#!/usr/bin/env bash
# Run a demo CI job through every custom-executor stage: jacamar-sim plays GitLab Runner,
# jacamar-auth and jacamar are the driver, on the embedded default configuration
# (shell executor, downscope "none", data_dir "$HOME").
# Extra arguments go to jacamar-sim (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
# The driver links libseccomp (its seccomp filters): install the headers as root, or say how.
if ! { [ -e /usr/lib/x86_64-linux-gnu/libseccomp.so ] || pkg-config --exists libseccomp 2>/dev/null \
       || ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so '; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing libseccomp-dev (the driver links libseccomp)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev </dev/null
  else
    echo "missing libseccomp-dev: run 'sudo apt-get install libseccomp-dev' (or your system's libseccomp development package), then again: $0" >&2
    exit 2
  fi
fi
cargo build --release --bins --quiet
exec target/release/jacamar-sim "$@"
