#!/usr/bin/env bash
# Bring up the multi-host test cluster (controller, c1, c2, runner) from nothing, as root,
# without stdin. Idempotent: a second run rebuilds nothing that is unchanged and leaves
# running containers alone (docker-compose recreates only what changed).
#   1. Debian's docker.io, docker-compose (v1), debootstrap (and curl, jq, git, openssl for
#      the fake GitLab and the scripts driving it), installed if missing;
#      dockerd started if not answering.
#   2. The base image local/debian:bookworm from `debootstrap --variant=minbase bookworm`
#      (skipped when the image exists: no registry is reachable, nothing is pulled).
#   3. jacamar-rs release binaries (nice cargo build --release; a no-op when fresh) and the
#      packages (scripts/package.sh, cached); the plain .deb and the real GitLab Runner
#      (scripts/gitlab-runner.sh v18.0.5, cached) are staged for the runner image.
#   4. The service images (node/Dockerfile, runner/Dockerfile) and `docker-compose up -d`.
#   5. Waits until both compute nodes are idle and the runner's FUSE view is mounted.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
export DEBIAN_FRONTEND=noninteractive

# --- 1. tools and the daemon
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
# For the fake GitLab on the host (tests/e2e/cluster_fake.rs: its repository, its PKI) and
# the scripts that drive it (smoke.sh, failure-tests.sh).
for t in curl jq git openssl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt-cache show docker.io >/dev/null 2>&1 || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/tmp/jacamar-rs-docker-apt.log 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null; }
  # The client may have been found first on PATH before the install; re-evaluate.
  if [ -x /usr/bin/docker ]; then docker() { /usr/bin/docker "$@"; }; fi
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
  wait_until 60 docker info || die "dockerd did not come up; see /var/log/dockerd.log"
fi

# --- 2. the base image
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE exists"
else
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /var/tmp/jacamar-rs-rootfs.XXXXXX)
  log "debootstrap --variant=minbase bookworm from $mirror (about 30 s)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/jacamar-rs-debootstrap.log 2>&1 \
    || { tail -20 /tmp/jacamar-rs-debootstrap.log >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "imported $BASE_IMAGE"
fi

# --- 3. jacamar-rs: the plain flavour's .deb (scripts/package.sh) and the GitLab Runner
if [ "${JACAMAR_DOCKER_NO_BUILD:-0}" != 1 ]; then
  command -v cargo >/dev/null || die "cargo is required to build the release binaries"
  log "cargo build --release (a no-op when up to date)"
  (cd "$REPO_DIR" && nice cargo build --release --bins --quiet)
  # Cached: leaves the packages alone (same bytes) when nothing they are made from changed.
  log "scripts/package.sh --no-build (log: /tmp/jacamar-rs-package.log; the first time on a machine it also cargo-installs cargo-deb and cargo-generate-rpm: minutes)"
  "$REPO_DIR/scripts/package.sh" --no-build </dev/null >/tmp/jacamar-rs-package.log 2>&1 \
    || { tail -20 /tmp/jacamar-rs-package.log >&2; die "scripts/package.sh failed"; }
  # The fake GitLab smoke.sh and failure-tests.sh start (tests/e2e/cluster_fake.rs) is a mode
  # of the e2e test binary: built now, so that they only check it is fresh.
  log "cargo test --features root-tests --test e2e --no-run (the fake GitLab; a no-op when up to date)"
  (cd "$REPO_DIR" && nice cargo test --features root-tests --test e2e --no-run --quiet 2>/tmp/jacamar-rs-e2e-build.log) \
    || { tail -20 /tmp/jacamar-rs-e2e-build.log >&2; die "building the e2e test binary failed"; }
fi
version=$(cd "$REPO_DIR" && cargo pkgid); version=${version##*[#@]}
deb="$REPO_DIR/target/packages/jacamar-rs_${version}_amd64.deb"
[ -s "$deb" ] || die "missing $deb (scripts/package.sh)"
# Staged in the runner's build context, copied only when different, so that the image's
# install layer stays cached (the legacy builder compares contents, not times).
pkg="$DOCKER_DIR/runner/pkg"
mkdir -p "$pkg"
find "$pkg" -name '*.deb' ! -name "${deb##*/}" -delete
cmp -s "$deb" "$pkg/${deb##*/}" || cp "$deb" "$pkg/${deb##*/}"
# The real GitLab Runner v18.0.5 (scripts/gitlab-runner.sh: built once, cached in
# /var/cache/gitlab-runner-build; a cold build takes minutes), staged like the .deb.
log "scripts/gitlab-runner.sh v18.0.5 (cached; log: /tmp/jacamar-rs-gitlab-runner.log)"
runner_bin=$(bash "$REPO_DIR/scripts/gitlab-runner.sh" v18.0.5 </dev/null 2>/tmp/jacamar-rs-gitlab-runner.log | tail -n1) \
  || { tail -20 /tmp/jacamar-rs-gitlab-runner.log >&2; die "scripts/gitlab-runner.sh v18.0.5 failed"; }
[ -x "$runner_bin" ] || die "scripts/gitlab-runner.sh printed '$runner_bin', not an executable"
stage="$DOCKER_DIR/runner/bin"
mkdir -p "$stage"
# Staged by earlier versions of this script (jacamar-sim, the runner stand-in, is no longer
# in the image).
rm -f "$stage/jacamar-auth" "$stage/jacamar" "$stage/jacamar-sim"
cmp -s "$runner_bin" "$stage/gitlab-runner" || cp "$runner_bin" "$stage/gitlab-runner"

# --- 4. images and containers
log "building $NODE_IMAGE"
docker build -q -t "$NODE_IMAGE" "$DOCKER_DIR/node" >/dev/null
log "building $RUNNER_IMAGE"
docker build -q -t "$RUNNER_IMAGE" "$DOCKER_DIR/runner" >/dev/null
log "docker-compose up -d"
compose up -d --remove-orphans 2>&1 | sed 's/^/  /' >&2

# --- 5. ready?
wait_until 60 docker exec "$CTL" scontrol ping \
  || { docker logs --tail 30 "$CTL" >&2; die "slurmctld not answering"; }
for n in c1 c2; do
  if ! wait_until 60 node_idle "$n"; then
    # A node that was killed and is back (ReturnToService=2 usually does this itself).
    docker exec "$CTL" scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
    wait_until 30 node_idle "$n" || { docker exec "$CTL" sinfo -R >&2; die "node $n not idle ($(node_state "$n"))"; }
  fi
done
wait_until 60 docker exec "$RUNNER" mountpoint -q /ecp || { docker logs --tail 30 "$RUNNER" >&2; die "runner: /ecp (FUSE view) not mounted"; }
wait_until 30 docker exec "$RUNNER" scontrol ping || die "runner cannot reach slurmctld"
log "ready: $(docker exec "$CTL" sinfo -h -o '%P %D %T %N' | tr '\n' ' ')"
