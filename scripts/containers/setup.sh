#!/usr/bin/env bash
# Groundwork for issue 19 (container images): installs the rootless container tools from
# Debian 12 and builds a small test image, cached outside the clone.
#
#   sudo scripts/containers/setup.sh            # idempotent, no stdin
#
# Installs: podman (+crun and runc, conmon, catatonit for --init and the rootless pause
# process, slirp4netns for a non-host network), charliecloud (ch-run, ch-image,
# ch-convert), docker-registry (Distribution 2.8), skopeo, apache2-utils (htpasswd -B),
# uidmap (newuidmap/newgidmap), fuse-overlayfs, squashfs-tools, squashfuse, debootstrap, git
# (ch-image's build cache).
# Image: `debootstrap --variant=minbase bookworm` from the machine's own apt mirror, packed
# as an OCI archive (one layer) that `skopeo copy oci-archive:...` can push. It carries a
# marker file /etc/jacamar-test-image so a test can prove it ran inside the image.
# Cache: $JRS_IMAGE_CACHE (default /var/cache/jacamar-rs/images); rebuilt only when missing.
set -euo pipefail

CACHE=${JRS_IMAGE_CACHE:-/var/cache/jacamar-rs/images}
IMAGE=$CACHE/debian-bookworm-minbase.tar
MARKER_TEXT="jacamar-rs test image debian-bookworm-minbase"

log() { printf 'setup.sh: %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/../lib/apt.sh"

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, writes $CACHE)"

PKGS=(podman crun runc conmon catatonit slirp4netns golang-github-containers-common
      charliecloud-runtime charliecloud-builders
      docker-registry skopeo apache2-utils uidmap fuse-overlayfs
      squashfs-tools squashfuse debootstrap git openssl ca-certificates)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    # docker-registry's postinst would start its systemd service without the guard.
    apt_install_no_daemons /tmp/jacamar-containers-apt.log "${missing[@]}" || die "apt-get install failed"
else
    log "packages already installed"
fi
# The Debian package's own service (if something started it) would hold :5000; our registry
# runs from registry.sh with its own config, so stop only a running packaged service.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    log "stopping the packaged docker-registry service (registry.sh runs its own)"
    systemctl stop docker-registry || true
fi

for b in podman crun conmon ch-run ch-image ch-convert docker-registry skopeo htpasswd \
         newuidmap newgidmap fuse-overlayfs mksquashfs squashfuse debootstrap; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/bin/$b" ] || [ -x "/usr/libexec/podman/$b" ] \
        || die "after install, $b is still missing"
done
log "versions: $(podman --version); ch-run $(USER=root ch-run --version 2>&1); $(skopeo --version); registry $(docker-registry --version 2>&1 | awk '{print $3}')"

if [ -s "$IMAGE" ]; then
    log "image cached: $IMAGE ($(du -h "$IMAGE" | cut -f1)), not rebuilt"
    exit 0
fi

MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || die "no apt mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

mkdir -p "$CACHE"
WORK=$(mktemp -d /var/tmp/jrs-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
log "debootstrap --variant=minbase bookworm from $MIRROR (about 30 s)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
printf '%s\n' "$MARKER_TEXT" > "$ROOTFS/etc/jacamar-test-image"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

# OCI image layout by hand (one gzip layer), so no container engine or root storage is needed.
OCI=$WORK/oci
mkdir -p "$OCI/blobs/sha256"
tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$WORK/layer.tar" .
DIFF_ID=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -n -1 "$WORK/layer.tar"
LAYER=$(sha256sum "$WORK/layer.tar.gz" | cut -d' ' -f1)
LAYER_SIZE=$(stat -c %s "$WORK/layer.tar.gz")
mv "$WORK/layer.tar.gz" "$OCI/blobs/sha256/$LAYER"
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
printf '{"created":"%s","architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"jacamar-rs scripts/containers/setup.sh: debootstrap --variant=minbase bookworm"}]}' \
    "$CREATED" "$DIFF_ID" "$CREATED" > "$WORK/config.json"
CONFIG=$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
CONFIG_SIZE=$(stat -c %s "$WORK/config.json")
mv "$WORK/config.json" "$OCI/blobs/sha256/$CONFIG"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$CONFIG" "$CONFIG_SIZE" "$LAYER" "$LAYER_SIZE" > "$WORK/manifest.json"
MANIFEST=$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)
MANIFEST_SIZE=$(stat -c %s "$WORK/manifest.json")
mv "$WORK/manifest.json" "$OCI/blobs/sha256/$MANIFEST"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bookworm"}}]}' \
    "$MANIFEST" "$MANIFEST_SIZE" > "$OCI/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$OCI/oci-layout"
tar -C "$OCI" -cf "$IMAGE.tmp" oci-layout index.json blobs
mv "$IMAGE.tmp" "$IMAGE"
skopeo inspect "oci-archive:$IMAGE:bookworm" >/dev/null || die "skopeo cannot read $IMAGE"
log "image built: $IMAGE ($(du -h "$IMAGE" | cut -f1)), reference oci-archive:$IMAGE:bookworm, marker /etc/jacamar-test-image"
