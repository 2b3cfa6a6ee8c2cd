#!/usr/bin/env bash
# gitlab-runner.sh [TAG] - the real GitLab Runner at release TAG (v18.0.5 by default, or
# v16.9.2), built once from the runner's source archives in the project's shared directory, and
# print the absolute path of the binary as the LAST line of stdout (all other output goes to
# stderr). The end-to-end tests (tests/e2e/) run jobs through both releases.
#
# The build itself is the shared script <shared>/scripts/build-gitlab-runner.sh TAG OUTDIR: it
# unpacks <shared>/vendor/gitlab-runner/gitlab-runner-TAG.tar.gz, fetches the Go modules through
# the Go module proxy and builds with the machine's Go (v18.0.5 without the executors the custom
# executor never uses, whose modules the proxy refuses; v16.9.2 unmodified). A cold build takes
# 4-6 minutes on 2 cores; a cached call returns at once.
#
# Environment:
#   JACAMAR_SHARED_DIR          the project's shared directory (default: `shared` beside the
#                               checkout, i.e. <checkout>/../shared, else /work/shared)
#   GITLAB_RUNNER_BUILD_SCRIPT  the build script (default $JACAMAR_SHARED_DIR/scripts/build-gitlab-runner.sh)
#   GITLAB_RUNNER_BUILD_DIR     where binaries are cached, outside the clone so that fresh clones
#                               reuse them (default /var/cache/gitlab-runner-build)
# Runs as root without stdin (CI). Go comes with this kind of machine (/usr/local/go, which may be
# missing from PATH in a bare CI environment); where there is none, scripts/lib/go-toolchain.sh
# bootstraps it through the Go module proxy.
set -euo pipefail
LOG_TAG=gitlab-runner
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/go-toolchain.sh
. "$HERE/lib/go-toolchain.sh"

TAG=${1:-v18.0.5}
case "$TAG" in
  v18.0.5 | v16.9.2) ;;
  *) die "unsupported runner release '$TAG': the shared sources hold v18.0.5 and v16.9.2" ;;
esac

# The shared directory: JACAMAR_SHARED_DIR, else `shared` beside the checkout, else this
# machine's /work/shared (a CI clone may live elsewhere than the developer checkout).
if [ -n "${JACAMAR_SHARED_DIR:-}" ]; then
  SHARED=$JACAMAR_SHARED_DIR
elif [ -f "$HERE/../../shared/scripts/build-gitlab-runner.sh" ]; then
  SHARED=$HERE/../../shared
else
  SHARED=/work/shared
fi
BUILD=${GITLAB_RUNNER_BUILD_SCRIPT:-$SHARED/scripts/build-gitlab-runner.sh}
OUTDIR=${GITLAB_RUNNER_BUILD_DIR:-/var/cache/gitlab-runner-build}
[ -f "$BUILD" ] || die "the runner's build script is missing: $BUILD
  (it comes with the project's shared directory, expected beside the checkout at $SHARED;
  set JACAMAR_SHARED_DIR to that directory, or GITLAB_RUNNER_BUILD_SCRIPT to the script)"

ensure_go   # puts a go on PATH for the build script
out=$(bash "$BUILD" "$TAG" "$OUTDIR" </dev/null) || die "building gitlab-runner $TAG failed ($BUILD $TAG $OUTDIR)"
BIN=$(printf '%s\n' "$out" | tail -n1)
[ -x "$BIN" ] || die "the build script printed '$BIN' last, which is not an executable"
ver=$("$BIN" --version 2>/dev/null | sed -n 's/^Version: *//p')
[ "$ver" = "${TAG#v}" ] || die "$BIN reports version '$ver', expected ${TAG#v}"
log "$TAG: $BIN"
printf '%s\n' "$BIN"
