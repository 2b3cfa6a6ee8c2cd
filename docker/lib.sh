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

# --- the real GitLab Runner on the runner node, and the fake GitLab it talks to ------------
# The fake GitLab (tests/e2e/cluster_fake.rs, test code) runs on the host, listening on the
# cluster network's gateway, which the containers reach although the network is internal.
# Its address and the runners' tokens are also in runner/config.toml and runner/jacamar*.toml.
FAKE_GITLAB_IP=10.213.77.1
FAKE_GITLAB_PORT=8443
RUNNER_SLURM=glrt-jrsSlurm1_docker_cluster
RUNNER_PBS=glrt-jrsPbs001_docker_cluster
RUNNER_NFS2S=glrt-jrsNfs2s1_docker_cluster
RUNNER_CONF=/etc/gitlab-runner/config.toml
# The runner's own log and pid file in the runner container.
RUNNER_LOG=/var/log/gitlab-runner.log
RUNNER_PID=/run/gitlab-runner.pid

# fake_gitlab_start LOGFILE: build the e2e test binary (a no-op when fresh), start its fake
# GitLab in the background (killed with this script: it has PR_SET_PDEATHSIG), wait for its
# FAKE-GITLAB line; sets FAKE_PID, FAKE_URL, FAKE_CTL, FAKE_CA, FAKE_DIRS. Then the site CA
# goes to the runner node (tls-ca-file of config.toml and jacamar*.toml).
fake_gitlab_start() {
  local logf=$1 bin line deadline
  bin=$(cd "$REPO_DIR" && nice cargo test --features root-tests --test e2e --no-run --message-format=json 2>"$logf.build" \
          | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .target.name == "e2e") | .executable // empty' | tail -n1) \
    || { tail -20 "$logf.build" >&2; die "building the e2e test binary (the fake GitLab) failed"; }
  [ -x "$bin" ] || { tail -20 "$logf.build" >&2; die "no e2e test binary (cargo test --features root-tests --test e2e --no-run)"; }
  JACAMAR_FAKE_GITLAB_ADDR=$FAKE_GITLAB_IP JACAMAR_FAKE_GITLAB_PORT=$FAKE_GITLAB_PORT \
  JACAMAR_FAKE_GITLAB_RUNNERS="$RUNNER_SLURM,$RUNNER_PBS,$RUNNER_NFS2S" \
    "$bin" --ignored --exact cluster_fake::serve_fake_gitlab --nocapture --test-threads 1 \
    >"$logf" 2>&1 </dev/null &
  FAKE_PID=$!
  deadline=$(( $(date +%s) + 60 ))
  until line=$(grep -a -m1 -o 'FAKE-GITLAB {.*}' "$logf"); do
    kill -0 "$FAKE_PID" 2>/dev/null || { cat "$logf" >&2; die "the fake GitLab exited before it was ready"; }
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$logf" >&2; die "the fake GitLab was not ready within 60 s"; }
    sleep 0.2
  done
  line=${line#FAKE-GITLAB }
  FAKE_URL=$(jq -r .url <<<"$line"); FAKE_CTL=$(jq -r .control <<<"$line"); FAKE_CA=$(jq -r .ca_pem <<<"$line")
  FAKE_DIRS=$(jq -r '.pki_dir, .work_dir' <<<"$line")
  [ "$FAKE_URL" = "https://$FAKE_GITLAB_IP:$FAKE_GITLAB_PORT" ] || die "the fake GitLab serves $FAKE_URL, the runner node expects https://$FAKE_GITLAB_IP:$FAKE_GITLAB_PORT"
  docker cp "$FAKE_CA" "$RUNNER:/etc/gitlab-runner/site-ca.pem" >/dev/null
  docker exec "$RUNNER" chmod 0644 /etc/gitlab-runner/site-ca.pem
  log "fake GitLab $FAKE_URL (pid $FAKE_PID, control $FAKE_CTL, log $logf)"
}
# fake_gitlab_stop: kill the fake (by its pid) and remove its PKI (a CA private key) and repo.
fake_gitlab_stop() {
  [ -n "${FAKE_PID:-}" ] || return 0
  kill "$FAKE_PID" 2>/dev/null || true
  wait "$FAKE_PID" 2>/dev/null || true
  local d; for d in ${FAKE_DIRS:-}; do case "$d" in /tmp/jrs-*) rm -rf "$d" ;; esac; done
  FAKE_PID=
}

# runner_service_start: on the runner node, check both files as README.md's step 3 says (every
# jacamar configuration the runners name), then `gitlab-runner run` as root in the background,
# as a site's service runs it (pid in $RUNNER_PID, log in $RUNNER_LOG).
runner_service_start() {
  local f out
  for f in jacamar.toml jacamar-pbs.toml jacamar-nfs2s.toml; do
    out=$(docker exec "$RUNNER" /opt/jacamar/bin/jacamar-auth validate --configuration "/etc/gitlab-runner/$f" \
            --runner-config "$RUNNER_CONF" 2>&1) || die "jacamar-auth validate of $f and $RUNNER_CONF: $out"
  done
  local pid
  pid=$(docker exec "$RUNNER" cat "$RUNNER_PID" 2>/dev/null || true)
  [ -z "$pid" ] || [ "$(docker exec "$RUNNER" cat "/proc/$pid/comm" 2>/dev/null)" != gitlab-runner ] \
    || die "a gitlab-runner is already running on the runner node (pid $pid, $RUNNER_PID)"
  docker exec -d "$RUNNER" sh -c "echo \$\$ > $RUNNER_PID; exec gitlab-runner run --config $RUNNER_CONF --working-directory /var/lib/gitlab-runner --service gitlab-runner >>$RUNNER_LOG 2>&1 </dev/null"
  wait_until 20 docker exec "$RUNNER" grep -q 'Configuration loaded' "$RUNNER_LOG" \
    || { docker exec "$RUNNER" tail -20 "$RUNNER_LOG" >&2; die "gitlab-runner did not start on the runner node"; }
  log "gitlab-runner $(docker exec "$RUNNER" gitlab-runner --version | sed -n 's/^Version: *//p') running on $RUNNER as root (log $RUNNER_LOG)"
}
# runner_service_stop: SIGQUIT (stop taking jobs, finish the running ones), up to 60 s, then SIGTERM.
# The pid file may outlive its process (a restarted container): only a gitlab-runner is signalled.
runner_service_stop() {
  local pid
  pid=$(docker exec "$RUNNER" cat "$RUNNER_PID" 2>/dev/null) || return 0
  if [ "$(docker exec "$RUNNER" cat "/proc/$pid/comm" 2>/dev/null)" != gitlab-runner ]; then
    docker exec "$RUNNER" rm -f "$RUNNER_PID"; return 0
  fi
  docker exec "$RUNNER" kill -QUIT "$pid" 2>/dev/null || { docker exec "$RUNNER" rm -f "$RUNNER_PID"; return 0; }
  wait_until 60 docker exec "$RUNNER" sh -c "! kill -0 $pid" || docker exec "$RUNNER" kill -TERM "$pid" 2>/dev/null || true
  wait_until 20 docker exec "$RUNNER" sh -c "! kill -0 $pid" || true
  docker exec "$RUNNER" rm -f "$RUNNER_PID"
}

# fake_job RUNNER_TOKEN JOB_JSON: queue a CI job (tests/e2e/cluster_fake.rs's POST /jobs; the
# runner token is added, the login defaults to the CI user); prints its id.
fake_job() {
  local body
  body=$(jq -c --arg r "$1" --arg u "$CI_USER" '{runner: $r, login: $u} + .' <<<"$2")
  # By stdin: a job's spec may hold its job token (a registry credential).
  curl -sSf -X POST --data-binary @- "$FAKE_CTL/jobs" <<<"$body" | jq -r .id
}
# fake_job_json ID: what the fake knows of the job (status, trace, final, artifacts).
fake_job_json() { curl -sSf "$FAKE_CTL/jobs/$1"; }
# fake_trace ID: the job log as the runner sent it, readable: no CR, colours or section markers.
fake_trace() { fake_job_json "$1" | jq -r .trace | clean_log; }
clean_log() { sed -E 's/section_(start|end):[0-9]+:[A-Za-z0-9_]+(\[[^]]*\])?\r//g; s/\x1b\[[0-9;]*[A-Za-z]//g' | tr -d '\r'; }
# fake_final ID: the job's final update as compact JSON, empty while it has none.
fake_final() { fake_job_json "$1" | jq -c '.final // empty'; }
# fake_wait_final ID SECONDS: wait for the final update; sets FINAL (empty on time-out).
fake_wait_final() {
  local deadline=$(( $(date +%s) + $2 ))
  FINAL=
  while [ -z "$FINAL" ]; do
    FINAL=$(fake_final "$1" 2>/dev/null || true)
    [ -n "$FINAL" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# --- the image registry of jobs with an `image:` (scripts/containers/registry.sh) ----------
# On the host at the cluster network's gateway, as the fake GitLab: TLS from a CA made for the
# run, htpasswd whose password is the job token of the image job (one job, one token).
REGISTRY_IP=$FAKE_GITLAB_IP
REGISTRY_PORT=5050
REGISTRY_HOSTPORT=$REGISTRY_IP:$REGISTRY_PORT
# registry_start DIR PASSWORD: start it (the test image pushed as ci/debian:bookworm) and put
# its CA where podman reads it on both compute nodes:
# /etc/containers/certs.d/HOST:PORT/ca.crt. The password goes by environment, not argv.
registry_start() {
  local dir=$1 n
  command -v docker-registry >/dev/null && command -v skopeo >/dev/null && command -v htpasswd >/dev/null \
    || "$REPO_DIR/scripts/containers/setup.sh" >/tmp/jacamar-rs-containers-setup.log 2>&1 \
    || { tail -20 /tmp/jacamar-rs-containers-setup.log >&2; die "scripts/containers/setup.sh failed"; }
  JRS_REGISTRY_ADDR=$REGISTRY_IP JRS_REGISTRY_PORT=$REGISTRY_PORT JRS_REGISTRY_PASSWORD=$2 \
    "$REPO_DIR/scripts/containers/registry.sh" start "$dir" >"$dir.log" 2>&1 \
    || { cat "$dir.log" >&2; die "the registry did not start (scripts/containers/registry.sh)"; }
  for n in "$C1" "$C2" "$RUNNER"; do
    docker exec "$n" install -d -m 0755 "/etc/containers/certs.d/$REGISTRY_HOSTPORT"
    docker cp "$dir/tls/ca.crt" "$n:/etc/containers/certs.d/$REGISTRY_HOSTPORT/ca.crt" >/dev/null
    docker exec "$n" chmod 0644 "/etc/containers/certs.d/$REGISTRY_HOSTPORT/ca.crt"
  done
  log "registry https://$REGISTRY_HOSTPORT (log $dir.log), its CA on $C1, $C2 and $RUNNER"
}
# registry_stop DIR: stop it (by its pid file) and remove its CA from the nodes and the host.
registry_stop() {
  local dir=$1 n
  [ -d "$dir" ] || return 0
  "$REPO_DIR/scripts/containers/registry.sh" stop "$dir" >>"$dir.log" 2>&1 || true
  for n in "$C1" "$C2" "$RUNNER"; do docker exec "$n" rm -rf "/etc/containers/certs.d/$REGISTRY_HOSTPORT" 2>/dev/null || true; done
}
# podman_leftovers NODE: the CI user's podman, conmon, catatonit or pause processes on NODE and
# its podman state directories (/tmp/jacamar-podman-UID/*), one a line; empty when clean.
podman_leftovers() {
  docker exec "$1" sh -c "ps -u $CI_USER -o pid=,args= | grep -E 'podman|conmon|catatonit|pause' | grep -v grep;
    ls -d /tmp/jacamar-podman-\$(id -u $CI_USER)/* 2>/dev/null" || true
}
