# shellcheck shell=bash
# Shared by scripts/gitlab-runner.sh and scripts/upstream-jacamar.sh (sourced, not run).
#
# Finds or installs a Go toolchain, fetches one module version through the Go module proxy and
# copies its source out of the read-only module cache. Everything here logs to stderr: the
# calling scripts keep stdout for their single result line.
#
# Go on this kind of machine: it comes preinstalled under /usr/local/go (which may be missing
# from PATH in a bare CI environment). Where there is no Go at all, Debian's golang-go is
# installed only as a bootstrap, and it downloads the real toolchain, published as the module
# golang.org/toolchain on the Go module proxy (the same version the machine ships, see
# JACAMAR_GO_TOOLCHAIN below), into the cache dir. No other download site is used.
#
# Environment:
#   JACAMAR_GO_CACHE      cache root that survives fresh clones (default /var/cache/jacamar-rs/go)
#   JACAMAR_GO_TOOLCHAIN  Go version to bootstrap when no go is found (default 1.26.8)
#   JACAMAR_GO_BUILD_P    value for go build -p (default 1: the machine is shared)

: "${JACAMAR_GO_CACHE:=/var/cache/jacamar-rs/go}"
: "${JACAMAR_GO_TOOLCHAIN:=1.26.8}"
: "${JACAMAR_GO_BUILD_P:=1}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[%s] %s\n' "${LOG_TAG:-go}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${LOG_TAG:-go}" "$*" >&2; exit 1; }

# A bare CI environment may lack HOME; the go command needs a module cache and a build cache.
go_env_defaults() {
  if [ -z "${HOME:-}" ]; then
    export HOME=/root
  fi
  # Keep the caches where the go command puts them by default (under $HOME) so later runs and
  # other Go builds on the machine share them.
}

# version_ge A B: true when Go version A >= B (both like 1.26.5).
version_ge() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

go_version_of() { "$1" env GOVERSION 2>/dev/null | sed 's/^go//'; }

# Installs Debian's golang-go (bootstrap only), then fetches golang.org/toolchain at
# JACAMAR_GO_TOOLCHAIN through the module proxy into $JACAMAR_GO_CACHE/toolchain/go<ver>.
bootstrap_go() {
  local want=$JACAMAR_GO_TOOLCHAIN arch dest tmpdir out dir boot
  dest=$JACAMAR_GO_CACHE/toolchain/go$want
  if [ -x "$dest/bin/go" ] && [ "$(go_version_of "$dest/bin/go")" = "$want" ]; then
    GO=$dest/bin/go; return 0
  fi
  [ "$(id -u)" = 0 ] || die "no go found and not root: cannot apt-get install golang-go"
  log "no Go toolchain found: installing Debian's golang-go to bootstrap Go $want"
  if ! apt-get install -y -qq --no-install-recommends golang-go </dev/null >&2; then
    apt-get update -qq </dev/null >&2 || true
    apt-get install -y -qq --no-install-recommends golang-go </dev/null >&2 \
      || die "apt-get install golang-go failed"
  fi
  boot=/usr/lib/go/bin/go; [ -x "$boot" ] || boot=/usr/bin/go
  [ -x "$boot" ] || die "golang-go is installed but no go binary was found"
  case "$(uname -m)" in
    x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) die "unsupported machine $(uname -m)" ;;
  esac
  tmpdir=$(mktemp -d)
  log "fetching golang.org/toolchain@v0.0.1-go$want.linux-$arch with $("$boot" version)"
  if ! out=$(cd "$tmpdir" && GOFLAGS=-mod=mod "$boot" mod download -json \
        "golang.org/toolchain@v0.0.1-go$want.linux-$arch" 2>&1); then
    rm -rf "$tmpdir"
    die "the Go module proxy refused the toolchain. Command:
  GOFLAGS=-mod=mod $boot mod download -json golang.org/toolchain@v0.0.1-go$want.linux-$arch
Output:
$out"
  fi
  rm -rf "$tmpdir"
  dir=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
  [ -d "$dir/bin" ] || die "toolchain download gave no source dir; output was: $out"
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.tmp"
  cp -r "$dir" "$dest.tmp"
  chmod -R u+w "$dest.tmp"
  # Module zips carry no exec bits: restore them on the toolchain's programs.
  chmod -R a+x "$dest.tmp/bin" "$dest.tmp/pkg/tool"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  GO=$dest/bin/go
  [ "$(go_version_of "$GO")" = "$want" ] || die "bootstrapped toolchain at $GO does not report go$want"
  log "Go $want installed at $dest"
}

# Sets GO to a usable go binary and puts its bin dir first on PATH.
# JACAMAR_GO_FORCE_BOOTSTRAP=1 ignores any installed go (used to test the bootstrap path).
ensure_go() {
  go_env_defaults
  GO=
  if [ "${JACAMAR_GO_FORCE_BOOTSTRAP:-0}" != 1 ]; then
    if command -v go >/dev/null 2>&1; then
      GO=$(command -v go)
    elif [ -x /usr/local/go/bin/go ]; then
      GO=/usr/local/go/bin/go
    fi
    # Debian's golang-go (1.19) is far too old for either module: treat it as missing.
    if [ -n "$GO" ] && ! version_ge "$(go_version_of "$GO")" 1.22; then
      log "ignoring $GO (go$(go_version_of "$GO") is too old)"
      GO=
      [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
    fi
  fi
  [ -n "$GO" ] || bootstrap_go
  PATH="$(dirname "$GO"):$PATH"; export PATH
  # The machine's Go does not switch toolchains by itself; a module needing a newer Go is
  # reported by require_go_for below instead of silently fetching another toolchain.
  export GOTOOLCHAIN=local
  log "using $GO ($("$GO" version))"
}

# shellcheck disable=SC2034 # MOD_DIR and MOD_SUM are read by the calling scripts
# fetch_module PATH@VERSION: downloads it through the module proxy; sets MOD_DIR (read-only
# source in the module cache) and MOD_SUM. Fails loudly with the exact command and error.
fetch_module() {
  local modver=$1 out rc tmpdir
  tmpdir=$(mktemp -d)
  log "go mod download $modver"
  set +e
  out=$(cd "$tmpdir" && GOFLAGS=-mod=mod "$GO" mod download -json "$modver" 2>&1)
  rc=$?
  set -e
  rm -rf "$tmpdir"
  if [ "$rc" != 0 ] || printf '%s' "$out" | grep -q '"Error"'; then
    die "the Go module proxy did not serve $modver (exit $rc). Command:
  GOFLAGS=-mod=mod go mod download -json $modver
Output:
$out"
  fi
  MOD_DIR=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
  MOD_SUM=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
  [ -d "$MOD_DIR" ] || die "go mod download gave no source dir for $modver; output was: $out"
}

# require_go_for DIR: fails when the module's go.mod needs a newer Go than $GO.
require_go_for() {
  local need have
  need=$(sed -n 's/^go \([0-9][0-9.]*\).*/\1/p' "$1/go.mod" | head -n1)
  have=$(go_version_of "$GO")
  if [ -n "$need" ] && ! version_ge "$have" "$need"; then
    die "$1/go.mod needs go $need but $GO is go$have (set JACAMAR_GO_TOOLCHAIN and remove that go from PATH, or install a newer Go)"
  fi
}

# copy_source DIR DEST: a writable copy of a module's source (the module cache is read-only).
copy_source() {
  rm -rf "$2"
  mkdir -p "$(dirname "$2")"
  cp -r "$1" "$2"
  chmod -R u+w "$2"
}

# check_deps DIR PKG...: downloads what the packages import (go list -deps) and, when the module
# proxy refuses any of it or a replace points at a directory the module zip lacks, fails with
# every such module, the command that reproduces the refusal and the error it gives.
check_deps() {
  local dir=$1 errs mods m out problems='' ; shift
  log "fetching the dependencies of $* (go list -deps)"
  errs=$(cd "$dir" && nice -n 19 env GOFLAGS="-buildvcs=false -mod=readonly" \
           "$GO" list -e -deps -f '{{with .Error}}{{.Err}}{{end}}' "$@" 2>&1) || true
  [ -n "$errs" ] || return 0
  mods=$(printf '%s\n' "$errs" | grep -o '[A-Za-z0-9._~/-]*@v[0-9][^: ]*: reading [^ ]*: [0-9][0-9]*' \
           | sed 's/: reading .*//' | sort -u) || true
  for m in $mods; do
    out=$(cd / && GOFLAGS=-mod=mod "$GO" mod download -json "$m" 2>&1 | grep '"Error"' | head -n1) || true
    out=$(printf '%s' "$out" | sed 's/^[[:space:]]*"Error": "//; s/",\{0,1\}$//')
    problems+="
  refused: $m
    command: GOFLAGS=-mod=mod go mod download -json $m
    error:   ${out:-$(printf '%s\n' "$errs" | grep -m1 -F "$m")}"
  done
  while IFS= read -r m; do
    [ -n "$m" ] && problems+="
  missing: $m (a replace directive in go.mod names a directory that the module zip does not contain)"
  done < <(printf '%s\n' "$errs" | grep -o '[^ ]*@v[^ :]*: replacement directory [^ ]* does not exist' | sort -u)
  if [ -z "$problems" ]; then
    die "go list -deps reported errors in $dir:
$errs"
  fi
  die "cannot build: the Go module proxy does not serve everything this module needs.
Command: cd $dir && GOFLAGS=-mod=readonly go list -e -deps $*$problems"
}

# go_build ARGS...: the go build command, niced and one package at a time.
go_build() {
  nice -n 19 env GOFLAGS="-buildvcs=false -mod=readonly -p=$JACAMAR_GO_BUILD_P" "$GO" build "$@"
}
