# Shared by docker/*.sh (sourced, not run). Names of everything the cluster owns.
set -euo pipefail
DOCKER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DOCKER_DIR/.." && pwd)
export COMPOSE_PROJECT_NAME=jacamar-rs
COMPOSE_FILE_PATH="$DOCKER_DIR/docker-compose.yml"
BASE_IMAGE=local/debian:bookworm
NODE_IMAGE=local/jacamar-rs-node:latest
RUNNER_IMAGE=local/jacamar-rs-runner:latest
NETWORK=jacamar-rs-cluster
RUNNER_IP=10.213.77.5
# Containers (container_name in docker-compose.yml).
CTL=jrs-controller C1=jrs-c1 C2=jrs-c2 RUNNER=jrs-runner
# The CI user, the same uid on every node (created in node/Dockerfile).
CI_USER=ciuser
# The legacy builder: the daemon is Debian's 20.10 and buildx is not installed.
export DOCKER_BUILDKIT=0
# Prefer the client that matches Debian's daemon when both exist.
if [ -x /usr/bin/docker ]; then docker() { /usr/bin/docker "$@"; }; fi

T0=$(date +%s%N)
log() { printf '[%s %5.1fs] %s\n' "$(basename "$0" .sh)" "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
compose() { docker-compose -f "$COMPOSE_FILE_PATH" "$@"; }

# wait_until SECONDS CMD...: retry CMD every 0.5 s; false when it never succeeded.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
# State of a Slurm node as the controller sees it (idle, allocated, down*, ...).
node_state() { docker exec "$CTL" sinfo -h -n "$1" -o %T 2>/dev/null | head -n1; }
node_idle() { case "$(node_state "$1")" in idle|mixed|allocated) return 0 ;; *) return 1 ;; esac; }
