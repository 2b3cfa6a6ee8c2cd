#!/usr/bin/env bash
# gitlab-runner.sh - build the real GitLab Runner once, from the Go module proxy, and print the
# absolute path of the binary as the LAST line of stdout (all other output goes to stderr).
#
# The runner's module path has no /vN suffix, so its v17+/v18+/v19+ tags are not valid module
# versions: a release can only be named by a pseudo-version. The module proxy this machine
# reaches serves the version that @latest resolves to and refused the release commits asked for
# (v19.3.0, v19.2.2, v18.11.4, by hash and by pseudo-version). The pin below is that served
# version: a commit of the runner's main branch whose VERSION file says 19.4.0 (a pre-release).
#
# State on this machine (checked when this script was written): the module itself downloads,
# but the proxy refuses nine of the gitlab.com modules it imports, and its go.mod replaces a
# nested module with a directory that module zips never contain; the build stops before
# compiling and lists each refused module with the command that reproduces the refusal.
#
# Cache: $GITLAB_RUNNER_CACHE_DIR (default $JACAMAR_GO_CACHE/gitlab-runner-<module version>,
# JACAMAR_GO_CACHE defaults to /var/cache/jacamar-rs/go) holds the binary; a cached binary that
# reports the pinned version is reused without building. Set GITLAB_RUNNER_REBUILD=1 to force a
# rebuild. Runs as root without stdin (CI); installs Go itself when there is none.
set -euo pipefail
LOG_TAG=gitlab-runner
# shellcheck source=scripts/lib/go-toolchain.sh
. "$(dirname "$0")/lib/go-toolchain.sh"

MODULE=gitlab.com/gitlab-org/gitlab-runner
MODULE_VERSION=v1.11.1-0.20260903214710-fc1f1862bd91   # main @ fc1f1862bd91, VERSION 19.4.0
RUNNER_REVISION=fc1f1862                                 # first 8 hex digits, as upstream shows it
RUNNER_BASE_VERSION=19.4.0                               # the module's VERSION file at that commit
# Upstream names an untagged build <VERSION>~pre.<commits since last tag>.g<revision>; the commit
# count needs the git history, which a module zip does not carry, so it is left out here.
RUNNER_VERSION="$RUNNER_BASE_VERSION~pre.g$RUNNER_REVISION"

CACHE_DIR=${GITLAB_RUNNER_CACHE_DIR:-$JACAMAR_GO_CACHE/gitlab-runner-$MODULE_VERSION}
BIN=$CACHE_DIR/gitlab-runner

# cached_ok: the binary exists and reports the pinned version and revision.
cached_ok() {
  local out
  [ -x "$BIN" ] || return 1
  out=$("$BIN" --version 2>/dev/null) || return 1
  printf '%s\n' "$out" | grep -qx "Version: *$RUNNER_VERSION" &&
    printf '%s\n' "$out" | grep -qx "Git revision: *$RUNNER_REVISION"
}

mkdir -p "$CACHE_DIR"
# One build at a time per cache dir; a second caller waits and then finds the binary.
exec 9>"$CACHE_DIR/.lock"
flock 9

if [ "${GITLAB_RUNNER_REBUILD:-0}" != 1 ] && cached_ok; then
  log "cached: $BIN ($RUNNER_VERSION)"
  printf '%s\n' "$BIN"
  exit 0
fi

ensure_go
t0=$(date +%s)
fetch_module "$MODULE@$MODULE_VERSION"
log "source: $MOD_DIR ($MOD_SUM)"
require_go_for "$MOD_DIR"

SRC=$CACHE_DIR/src
copy_source "$MOD_DIR" "$SRC"
check_deps "$SRC" .
# The same -X settings as upstream's Makefile (NAME, VERSION, BRANCH left at its default),
# plus the revision, which upstream takes from git; -w as upstream; cgo off as upstream.
pkg=$MODULE/common
ldflags="-X $pkg.NAME=gitlab-runner -X $pkg.VERSION=$RUNNER_VERSION -X $pkg.REVISION=$RUNNER_REVISION -w"
log "building (nice 19, -p=$JACAMAR_GO_BUILD_P): this takes a while on a shared machine"
(cd "$SRC" && CGO_ENABLED=0 go_build -trimpath -ldflags "$ldflags" -o "$BIN.tmp" .) \
  || die "go build of $MODULE@$MODULE_VERSION failed (source in $SRC)"
mv -f "$BIN.tmp" "$BIN"
rm -rf "$SRC"
cached_ok || die "built $BIN but its --version does not report $RUNNER_VERSION ($RUNNER_REVISION):
$("$BIN" --version 2>&1 || true)"
log "built $BIN in $(( $(date +%s) - t0 ))s, $(du -h "$BIN" | cut -f1)"
printf '%s\n' "$BIN"
