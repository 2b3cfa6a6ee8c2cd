#!/usr/bin/env bash
# Run a demo CI job through every custom-executor stage: jacamar-sim plays GitLab Runner,
# jacamar-auth and jacamar are the driver, on the embedded default configuration
# (shell executor, downscope "none", data_dir "$HOME").
# Extra arguments go to jacamar-sim (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
cargo build --release --bins --quiet
exec target/release/jacamar-sim "$@"
