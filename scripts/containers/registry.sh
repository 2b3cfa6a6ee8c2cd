#!/usr/bin/env bash
# A local Distribution registry for container-image tests (issue 19): TLS from a CA made
# here, htpasswd (bcrypt) auth, storage in DIR, the cached test image pushed into it.
#
#   scripts/containers/registry.sh start DIR   # as root; idempotent while running
#   scripts/containers/registry.sh env DIR     # prints `export` lines for a test (no secrets)
#   scripts/containers/registry.sh stop DIR    # stops it, removes the certs.d entry it made
#
# Environment (read by start):
#   JRS_REGISTRY_ADDR      the IPv4 address to listen on and name in the certificate
#                          (default 127.0.0.1; docker/ uses the cluster network's gateway)
#   JRS_REGISTRY_PORT      port on ADDR (default 5043)
#   JRS_REGISTRY_USER      htpasswd user (default gitlab-ci-token, as GitLab sends)
#   JRS_REGISTRY_PASSWORD  the password, i.e. the job token (default: 32 random hex chars)
#   JRS_IMAGE_CACHE        where setup.sh cached the image (default /var/cache/jacamar-rs/images)
# The password is written to DIR/password (0600) and never put on a command line: htpasswd
# reads it from stdin and skopeo gets an auth file (DIR/auth.json, 0600).
#
# Pushed repositories:
#   ADDR:PORT/ci/debian:bookworm             the image a job may use
#   ADDR:PORT/other/private:bookworm         a second "project" (same content); htpasswd auth
#                                            is all-or-nothing, so a refusal is tested with a
#                                            wrong password (HTTP 401); Distribution's htpasswd
#                                            auth cannot produce a per-repository 403.
#   ADDR:PORT/ci/missing:bookworm            never pushed: the "not found" case.
#
# Trust: podman/skopeo/buildah read /etc/containers/certs.d/ADDR:PORT/ca.crt (installed
# here; the path is recorded in DIR/installed so stop removes exactly it). ch-image (Python
# requests) does NOT read certs.d: give it the CA by environment, see docs/containers-facts.md.
set -euo pipefail

CACHE=${JRS_IMAGE_CACHE:-/var/cache/jacamar-rs/images}
IMAGE=$CACHE/debian-bookworm-minbase.tar

die() { printf 'registry.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'registry.sh: %s\n' "$*"; }

cmd=${1:-}; DIR=${2:-}
{ [ -n "$cmd" ] && [ -n "$DIR" ]; } || die "usage: registry.sh start|stop|env DIR"
case "$DIR" in /*) ;; *) DIR=$PWD/$DIR ;; esac

running_pid() {
    local pid
    [ -f "$DIR/registry.pid" ] || return 1
    pid=$(cat "$DIR/registry.pid")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "docker-registry serve $DIR/config.yml" || return 1
    echo "$pid"
}

do_env() {
    [ -f "$DIR/port" ] || die "$DIR has no registry (no $DIR/port); run start first"
    local port addr=127.0.0.1; port=$(cat "$DIR/port")
    [ -f "$DIR/addr" ] && addr=$(cat "$DIR/addr")
    cat <<EOT
export JRS_REGISTRY=$addr:$port
export JRS_REGISTRY_CA=$DIR/tls/ca.crt
export JRS_REGISTRY_USER=$(cat "$DIR/user")
export JRS_REGISTRY_PASSWORD_FILE=$DIR/password
export JRS_IMAGE=$addr:$port/ci/debian:bookworm
export JRS_IMAGE_OTHER=$addr:$port/other/private:bookworm
export JRS_IMAGE_MISSING=$addr:$port/ci/missing:bookworm
export JRS_IMAGE_MARKER=/etc/jacamar-test-image
EOT
}

do_stop() {
    local pid
    if pid=$(running_pid); then
        kill -TERM "$pid"
        for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -KILL "$pid"
        log "stopped registry pid $pid"
    else
        log "no registry running for $DIR"
    fi
    rm -f "$DIR/registry.pid"
    if [ -f "$DIR/installed" ]; then
        while IFS= read -r path; do
            case "$path" in
                /etc/containers/certs.d/[0-9]*.[0-9]*.[0-9]*.[0-9]*:[0-9]*/ca.crt)
                    rm -f "$path"; rmdir "$(dirname "$path")" 2>/dev/null || true
                    log "removed $path" ;;
                "dir /etc/containers/certs.d")
                    if rmdir /etc/containers/certs.d 2>/dev/null; then log "removed empty /etc/containers/certs.d"; fi ;;
                *) log "not removing unexpected path $path" ;;
            esac
        done < <(grep -v '^dir ' "$DIR/installed"; grep '^dir ' "$DIR/installed")
        rm -f "$DIR/installed"
    fi
}

do_start() {
    [ "$(id -u)" = 0 ] || die "start must run as root (installs the CA under /etc/containers/certs.d)"
    for b in docker-registry openssl htpasswd skopeo curl; do
        command -v "$b" >/dev/null || die "$b not found; run scripts/containers/setup.sh"
    done
    [ -s "$IMAGE" ] || die "$IMAGE missing; run scripts/containers/setup.sh"
    if pid=$(running_pid); then log "already running (pid $pid)"; do_env; return; fi

    local port=${JRS_REGISTRY_PORT:-5043}
    local addr=${JRS_REGISTRY_ADDR:-127.0.0.1}
    [[ $addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "JRS_REGISTRY_ADDR '$addr' is not an IPv4 address"
    local user=${JRS_REGISTRY_USER:-gitlab-ci-token}
    mkdir -p "$DIR/tls" "$DIR/storage" "$DIR/auth"
    chmod 0700 "$DIR/auth"
    printf '%s\n' "$port" > "$DIR/port"
    printf '%s\n' "$addr" > "$DIR/addr"
    printf '%s\n' "$user" > "$DIR/user"
    (umask 077
     if [ -n "${JRS_REGISTRY_PASSWORD:-}" ]; then printf '%s' "$JRS_REGISTRY_PASSWORD" > "$DIR/password"
     elif [ ! -s "$DIR/password" ]; then openssl rand -hex 16 | tr -d '\n' > "$DIR/password"; fi)

    # CA and server certificate (EC P-256, 2 days), SAN ADDR and localhost.
    if [ ! -s "$DIR/tls/server.crt" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$DIR/tls/ca.key" -out "$DIR/tls/ca.crt" -days 2 \
            -subj "/CN=jacamar-rs test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$DIR/tls/server.key" -out "$DIR/tls/server.csr" \
            -subj "/CN=$addr" 2>/dev/null
        printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:localhost\n' "$addr" > "$DIR/tls/server.ext"
        openssl x509 -req -in "$DIR/tls/server.csr" -CA "$DIR/tls/ca.crt" -CAkey "$DIR/tls/ca.key" \
            -CAcreateserial -out "$DIR/tls/server.crt" -days 2 -extfile "$DIR/tls/server.ext" 2>/dev/null
        chmod 0644 "$DIR/tls/ca.crt"
    fi
    # bcrypt entry; the password goes through stdin, not argv.
    htpasswd -B -i -c "$DIR/auth/htpasswd" "$user" < "$DIR/password" 2>/dev/null
    (umask 077
     printf '{"auths":{"%s:%s":{"auth":"%s"}}}\n' "$addr" "$port" \
         "$( { printf '%s:' "$user"; cat "$DIR/password"; } | base64 -w0)" > "$DIR/auth.json")

    cat > "$DIR/config.yml" <<EOT
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: $addr:$port
  tls:
    certificate: $DIR/tls/server.crt
    key: $DIR/tls/server.key
auth:
  htpasswd:
    realm: jacamar-rs-test
    path: $DIR/auth/htpasswd
EOT
    setsid docker-registry serve "$DIR/config.yml" >>"$DIR/registry.log" 2>&1 < /dev/null &
    echo $! > "$DIR/registry.pid"
    local code=""
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$DIR/tls/ca.crt" "https://$addr:$port/v2/" || true)
        [ "$code" = 401 ] && break
        sleep 0.1
    done
    [ "$code" = 401 ] || { tail -20 "$DIR/registry.log" >&2; die "registry did not answer 401 on https://$addr:$port/v2/ (got '$code')"; }
    log "registry up: https://$addr:$port (pid $(cat "$DIR/registry.pid")), log $DIR/registry.log"

    local certs=/etc/containers/certs.d/$addr:$port
    # Record the directories made here, so that stop leaves /etc/containers as it was.
    [ -d /etc/containers/certs.d ] || echo "dir /etc/containers/certs.d" >> "$DIR/installed"
    mkdir -p "$certs"
    cp "$DIR/tls/ca.crt" "$certs/ca.crt"; chmod 0644 "$certs/ca.crt"
    grep -qxF "$certs/ca.crt" "$DIR/installed" 2>/dev/null || echo "$certs/ca.crt" >> "$DIR/installed"
    log "CA installed for podman/skopeo: $certs/ca.crt"

    local repo
    for repo in ci/debian:bookworm other/private:bookworm; do
        skopeo copy -q --dest-authfile "$DIR/auth.json" --dest-tls-verify=true \
            "oci-archive:$IMAGE:bookworm" "docker://$addr:$port/$repo" \
            || die "skopeo copy to $addr:$port/$repo failed"
        log "pushed $addr:$port/$repo"
    done
    do_env
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    env) do_env ;;
    *) die "unknown command '$cmd'; usage: registry.sh start|stop|env DIR" ;;
esac
