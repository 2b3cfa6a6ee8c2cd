#!/usr/bin/env bash
# Build the installable packages into target/packages/ from one release build:
#   jacamar-rs_<version>_amd64.deb        jacamar-rs-<version>-1.x86_64.rpm
#   jacamar-rs-caps_<version>_amd64.deb   jacamar-rs-caps-<version>-1.x86_64.rpm
# The plain flavour is for a runner running as root; the caps flavour makes jacamar-auth
# root:gitlab-runner 0750 with cap_setuid,cap_setgid=ep (packaging/caps-post.sh). Both
# install /opt/jacamar/bin/{jacamar-auth,jacamar} and the examples in
# /usr/share/doc/jacamar-rs/examples, and conflict with each other. Metadata:
# [package.metadata.deb] and [package.metadata.generate-rpm] (variant "caps") in Cargo.toml.
#
# Usage: scripts/package.sh [--no-build]   (--no-build: package target/release as it is)
# cargo-deb and cargo-generate-rpm are installed with `cargo install --locked` at the
# versions below when ~/.cargo/bin lacks them (once per machine: about 3 min on 2 cores).
# Cached: when the four packages exist and nothing they are made from changed (the two
# binaries, Cargo.toml, packaging/, configs/*.toml, README.md, the tools' versions: a
# sha256 in target/packages/.inputs), the packages are left as they are (same bytes), so
# a caller's docker layer cache stays valid. JACAMAR_PACKAGE_FORCE=1 rebuilds them.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
OUT=target/packages

build=1
case "${1:-}" in
  "") ;;
  --no-build) build=0 ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
esac

command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "packages are built for x86_64 (amd64) only" >&2; exit 2; }

# The cargo subcommand `crate` at `version`, installed once (cargo install --list knows it).
ensure_tool() {
  local crate=$1 version=$2 have
  have=$(cargo install --list | awk -v c="$crate" '$1 == c { sub(/^v/, "", $2); sub(/:$/, "", $2); print $2 }')
  if [ "$have" = "$version" ]; then
    return
  fi
  echo "installing $crate $version (was: ${have:-none})"
  nice cargo install --locked "$crate" --version "$version"
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

pkgid=$(cargo pkgid)
version=${pkgid##*[#@]}
[ -n "$version" ] || { echo "no version in Cargo.toml ($pkgid)" >&2; exit 2; }

if [ "$build" = 1 ]; then
  # The release profile (fat LTO, one codegen unit) is slow: build once, nice'd, and
  # package both flavours from the same binaries.
  nice cargo build --release --bin jacamar-auth --bin jacamar
fi
for bin in jacamar-auth jacamar; do
  [ -x "target/release/$bin" ] || { echo "target/release/$bin is missing (build without --no-build)" >&2; exit 2; }
done

mkdir -p "$OUT"
outputs=("$OUT/jacamar-rs_${version}_amd64.deb" "$OUT/jacamar-rs-caps_${version}_amd64.deb"
         "$OUT/jacamar-rs-${version}-1.x86_64.rpm" "$OUT/jacamar-rs-caps-${version}-1.x86_64.rpm")
# Everything the packages are made from, as one hash (file names included).
inputs=$( {
  echo "cargo-deb $CARGO_DEB_VERSION cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION version $version"
  sha256sum target/release/jacamar-auth target/release/jacamar Cargo.toml README.md configs/*.toml
  find packaging -type f | LC_ALL=C sort | xargs sha256sum
  find packaging -type f -printf '%m %p\n' | LC_ALL=C sort
} | sha256sum | cut -d' ' -f1)
fresh=1
for f in "${outputs[@]}"; do [ -s "$f" ] || fresh=0; done
if [ "$fresh" = 1 ] && [ "${JACAMAR_PACKAGE_FORCE:-0}" != 1 ] \
   && [ "$(cat "$OUT/.inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "packages up to date (inputs unchanged: $OUT/.inputs)"
  ls -l "${outputs[@]}"
  exit 0
fi
rm -f "$OUT/.inputs" "$OUT"/jacamar-rs*_"$version"_amd64.deb "$OUT"/jacamar-rs*-"$version"-1.x86_64.rpm

# --no-strip: the .deb and the .rpm ship the same bytes (the release profile already drops
# debuginfo; cargo-deb would strip the symbols too, cargo-generate-rpm does not).
cargo deb --no-build --no-strip --output "$OUT/jacamar-rs_${version}_amd64.deb"
cargo deb --no-build --no-strip --variant caps --output "$OUT/jacamar-rs-caps_${version}_amd64.deb"
cargo generate-rpm --output "$OUT/jacamar-rs-${version}-1.x86_64.rpm"
cargo generate-rpm --variant caps --output "$OUT/jacamar-rs-caps-${version}-1.x86_64.rpm"

echo "$inputs" > "$OUT/.inputs"
ls -l "${outputs[@]}"
