#!/usr/bin/env bash
# upstream-jacamar.sh - build upstream Jacamar CI (jacamar and jacamar-auth) once, from the Go
# module proxy, and print the directory holding both binaries as the LAST line of stdout (all
# other output goes to stderr).
#
# Upstream Jacamar CI uses plain v0.x tags, so a release is named directly. It needs cgo and
# libseccomp (installed here when missing). The two programs are the main packages named
# jacamar and jacamar-auth under the module's cmd/ tree, found with go list.
#
# State on this machine (checked when this script was written): the module proxy refuses this
# module outright (403 on its version list and on every version asked for), so this script stops
# at the download step with the exact command and error. UPSTREAM_JACAMAR_VERSION could not be
# checked against upstream's tag list for that reason.
#
# Cache: $UPSTREAM_JACAMAR_CACHE_DIR (default $JACAMAR_GO_CACHE/jacamar-ci-<version>,
# JACAMAR_GO_CACHE defaults to /var/cache/jacamar-rs/go) holds both binaries and a stamp naming
# the module version and checksum they were built from; with a matching stamp and binaries whose
# --version names the version, nothing is built. UPSTREAM_JACAMAR_REBUILD=1 forces a rebuild.
# UPSTREAM_JACAMAR_LDFLAGS adds go build -ldflags (e.g. upstream's -X version settings).
set -euo pipefail
LOG_TAG=upstream-jacamar
# shellcheck source=scripts/lib/go-toolchain.sh
. "$(dirname "$0")/lib/go-toolchain.sh"

MODULE=gitlab.com/ecp-ci/jacamar-ci
MODULE_VERSION=${UPSTREAM_JACAMAR_VERSION:-v0.20.0}
WANT=${MODULE_VERSION#v}
CACHE_DIR=${UPSTREAM_JACAMAR_CACHE_DIR:-$JACAMAR_GO_CACHE/jacamar-ci-$MODULE_VERSION}
STAMP=$CACHE_DIR/.built-from
PROGRAMS=(jacamar jacamar-auth)

# cached_ok: the stamp names this module version and both programs report the version.
cached_ok() {
  local p out
  [ -f "$STAMP" ] && grep -qx "$MODULE@$MODULE_VERSION .*" "$STAMP" || return 1
  for p in "${PROGRAMS[@]}"; do
    [ -x "$CACHE_DIR/$p" ] || return 1
    out=$("$CACHE_DIR/$p" --version 2>&1) || return 1
    printf '%s\n' "$out" | grep -qF "$WANT" || return 1
  done
}

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock 9

if [ "${UPSTREAM_JACAMAR_REBUILD:-0}" != 1 ] && cached_ok; then
  log "cached: $CACHE_DIR ($MODULE_VERSION)"
  printf '%s\n' "$CACHE_DIR"
  exit 0
fi

# cgo toolchain and libseccomp for upstream's seccomp filters.
need=()
for p in gcc libc6-dev pkg-config libseccomp-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages ${need[*]} (run as root to install them)"
  log "installing ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >&2 || {
    apt-get update -qq </dev/null >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >&2
  } || die "apt-get install ${need[*]} failed"
fi

ensure_go
t0=$(date +%s)
fetch_module "$MODULE@$MODULE_VERSION"
log "source: $MOD_DIR ($MOD_SUM)"
require_go_for "$MOD_DIR"

SRC=$CACHE_DIR/src
copy_source "$MOD_DIR" "$SRC"

# The main packages under cmd/, by their last path element.
mains=$(cd "$SRC" && GOFLAGS="-buildvcs=false -mod=readonly" \
          "$GO" list -e -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./cmd/... 2>/dev/null) || true
declare -A pkg_of=()
for p in "${PROGRAMS[@]}"; do
  pkg_of[$p]=$(printf '%s\n' "$mains" | grep -E "/$p\$" | head -n1 || true)
  [ -n "${pkg_of[$p]}" ] || die "no main package named $p under $SRC/cmd; main packages there:
${mains:-(none)}"
done
check_deps "$SRC" "${pkg_of[@]}"

rm -f "$STAMP"
for p in "${PROGRAMS[@]}"; do
  log "building $p from ${pkg_of[$p]} (cgo, nice 19, -p=$JACAMAR_GO_BUILD_P)"
  (cd "$SRC" && CGO_ENABLED=1 go_build -trimpath -ldflags "${UPSTREAM_JACAMAR_LDFLAGS:-}" \
     -o "$CACHE_DIR/$p.tmp" "${pkg_of[$p]}") \
    || die "go build of ${pkg_of[$p]} ($MODULE@$MODULE_VERSION) failed (source in $SRC)"
  mv -f "$CACHE_DIR/$p.tmp" "$CACHE_DIR/$p"
done

# Both programs must name the pinned version; upstream injects it at link time, so a build
# without its -X settings says something else: show them where to look instead of guessing.
for p in "${PROGRAMS[@]}"; do
  out=$("$CACHE_DIR/$p" --version 2>&1) || die "$CACHE_DIR/$p --version failed:
$out"
  printf '%s\n' "$out" | grep -qF "$WANT" || die "$CACHE_DIR/$p --version does not name $WANT:
$out
Upstream's link-time settings (pass them in UPSTREAM_JACAMAR_LDFLAGS):
$(grep -rn -- '-X ' "$SRC/Makefile" "$SRC"/build "$SRC"/scripts 2>/dev/null | head -n 20 || true)"
done
printf '%s %s\n' "$MODULE@$MODULE_VERSION" "$MOD_SUM" >"$STAMP"
rm -rf "$SRC"
log "built ${PROGRAMS[*]} in $CACHE_DIR in $(( $(date +%s) - t0 ))s"
printf '%s\n' "$CACHE_DIR"
