#!/usr/bin/env bash
# Test kit for the container-image integration tests of issue 19 (skeleton; no Rust test uses
# it yet). Source it for the helpers, or run it:
#
#   scripts/containers/kit.sh smoke      # as root: the whole path once, PASS/FAIL per check
#
# What a test needs and where it comes from:
#   image     scripts/containers/setup.sh caches /var/cache/jacamar-rs/images/
#             debian-bookworm-minbase.tar (OCI archive, tag bookworm, marker file
#             /etc/jacamar-test-image). The kit never builds it: it fails naming setup.sh.
#   registry  kit_registry_start DIR: registry.sh start DIR, then the JRS_* variables of
#             `registry.sh env DIR` (JRS_REGISTRY, JRS_REGISTRY_CA, JRS_REGISTRY_USER,
#             JRS_REGISTRY_PASSWORD_FILE, JRS_IMAGE, JRS_IMAGE_OTHER, JRS_IMAGE_MISSING).
#             The password is the "job token" of the test.
#   CA        podman: /etc/containers/certs.d/HOST:PORT/ca.crt (registry.sh installs it);
#             ch-image: REQUESTS_CA_BUNDLE=$JRS_REGISTRY_CA (a bundle file; replaces the
#             system store for that process). SSL_CERT_FILE is NOT honoured by ch-image.
#   account   kit_account NAME: useradd -m (Debian 12's useradd adds a 65536 subuid/subgid
#             range for a non-system account); the kit checks both ranges exist.
#   job dir   kit_job_dir NAME DIR: 0700, owned by the account; podman storage, runroot and
#             XDG_RUNTIME_DIR all live under it, so jobs never share podman state.
set -euo pipefail

KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KIT_IMAGE=${JRS_IMAGE_CACHE:-/var/cache/jacamar-rs/images}/debian-bookworm-minbase.tar

kit_die() { printf 'kit: error: %s\n' "$*" >&2; exit 1; }

kit_require() {
    [ "$(id -u)" = 0 ] || kit_die "must run as root"
    local b
    for b in podman runc ch-image ch-run ch-convert docker-registry skopeo htpasswd newuidmap setpriv; do
        command -v "$b" >/dev/null || kit_die "$b missing: run scripts/containers/setup.sh"
    done
    [ -s "$KIT_IMAGE" ] || kit_die "$KIT_IMAGE missing: run scripts/containers/setup.sh"
}

# crun 1.8 refuses cgroup v1 "hybrid" hosts (a cgroup2 mounted at /sys/fs/cgroup/unified):
# "crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2". runc works.
kit_oci_runtime() {
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo crun
    elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then echo runc
    else echo crun; fi
}

kit_registry_start() {  # DIR
    "$KIT_DIR/registry.sh" start "$1" >/dev/null
    eval "$("$KIT_DIR/registry.sh" env "$1")"
}
kit_registry_stop() { "$KIT_DIR/registry.sh" stop "$1"; }

kit_account() {  # NAME
    id "$1" >/dev/null 2>&1 || useradd -m -s /bin/bash "$1"
    grep -q "^$1:" /etc/subuid || kit_die "account $1 has no /etc/subuid range (usermod --add-subuids)"
    grep -q "^$1:" /etc/subgid || kit_die "account $1 has no /etc/subgid range (usermod --add-subgids)"
}

kit_job_dir() {  # NAME DIR
    install -d -m 0700 -o "$1" -g "$(id -gn "$1")" "$2" "$2/builds" "$2/podman" "$2/podman/xdg"
}

# The 0600 auth file a job gets (containers-auth.json format), built from the password file.
kit_authfile() {  # NAME DIR -> prints the path
    local f=$2/auth.json
    (umask 077; printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$JRS_REGISTRY" \
        "$( { printf '%s:' "$JRS_REGISTRY_USER"; cat "$JRS_REGISTRY_PASSWORD_FILE"; } | base64 -w0)" > "$f")
    chown "$1:$(id -gn "$1")" "$f"
    echo "$f"
}

# Run a bash script as the account, the way the driver downscopes (no PAM session).
kit_as() {  # NAME SCRIPT
    setpriv --reuid "$1" --regid "$1" --init-groups --reset-env bash -c "$2"
}

# podman's global options and environment for one job: everything under DIR/podman.
# A --root must always be used with the same --runroot (libpod's database records it).
kit_podman() {  # DIR -> prints a command prefix
    printf 'env XDG_RUNTIME_DIR=%s/podman/xdg podman --root %s/podman/storage --runroot %s/podman/xdg/run --storage-driver=overlay --runtime=%s --cgroup-manager=cgroupfs --events-backend=file' \
        "$1" "$1" "$1" "$(kit_oci_runtime)"
}

# Remove every container, the storage (subuid-owned files: only podman can) and the pause
# process of one job.
kit_cleanup_job() {  # NAME DIR
    local p; p=$(kit_podman "$2")
    kit_as "$1" "$p rm -a -f -t 0 >/dev/null 2>&1; $p system reset -f >/dev/null 2>&1; \
        [ -f $2/podman/xdg/libpod/tmp/pause.pid ] && kill \$(cat $2/podman/xdg/libpod/tmp/pause.pid) 2>/dev/null; true"
    rm -rf "$2"
}

kit_smoke() {
    kit_require
    local user=jrs_c19kit reg job pass=0 fail=0 out p
    reg=$(mktemp -d /var/tmp/jrs-kit-reg.XXXXXX); job=/home/$user/kitjob
    check() { if [ "$2" = 0 ]; then echo "PASS $1"; pass=$((pass+1)); else echo "FAIL $1: $3"; fail=$((fail+1)); fi; }
    JRS_REGISTRY_PORT=${JRS_REGISTRY_PORT:-5045} kit_registry_start "$reg"
    kit_account "$user"
    kit_job_dir "$user" "$job"
    kit_authfile "$user" "$job" >/dev/null
    p=$(kit_podman "$job")
    out=$(kit_as "$user" "cd $job; $p run --rm --userns=keep-id --network=host -v $job:$job --authfile $job/auth.json --tls-verify=true --pull=always -q $JRS_IMAGE sh -c 'id -un; cat /etc/jacamar-test-image'" 2>&1) || true
    case "$out" in *"$user"*"jacamar-rs test image"*) check podman_keep_id_marker 0 ;; *) check podman_keep_id_marker 1 "$out" ;; esac
    printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$JRS_REGISTRY" "$(printf '%s:wrong' "$JRS_REGISTRY_USER" | base64 -w0)" > "$job/bad.json"
    chown "$user" "$job/bad.json"; chmod 600 "$job/bad.json"
    out=$(kit_as "$user" "$p pull -q --authfile $job/bad.json $JRS_IMAGE" 2>&1) || true
    case "$out" in *"unauthorized: authentication required"*) check podman_refused_401 0 ;; *) check podman_refused_401 1 "$out" ;; esac
    out=$(kit_as "$user" "$p pull -q --authfile $job/auth.json $JRS_IMAGE_MISSING" 2>&1) || true
    case "$out" in *"manifest unknown"*) check podman_not_found 0 ;; *) check podman_not_found 1 "$out" ;; esac
    # ch-image: password by environment from a 0600 file, never argv.
    install -m 0600 -o "$user" "$JRS_REGISTRY_PASSWORD_FILE" "$job/token"
    # The registry dir is 0700 root: the account reads its own copy of the CA (an unreadable
    # REQUESTS_CA_BUNDLE is a Python traceback "Could not find a suitable TLS CA certificate
    # bundle, invalid path: ...", not a clean error).
    install -m 0644 "$JRS_REGISTRY_CA" "$job/ca.crt"
    out=$(kit_as "$user" "cd $job; export CH_IMAGE_USERNAME=$JRS_REGISTRY_USER CH_IMAGE_PASSWORD=\$(cat $job/token) REQUESTS_CA_BUNDLE=$job/ca.crt CH_IMAGE_STORAGE=$job/ch; { ch-image --no-cache pull --auth $JRS_IMAGE </dev/null >$job/pull.log 2>&1 || { tail -5 $job/pull.log; false; }; } && ch-convert -i ch-image $JRS_IMAGE $job/img >/dev/null && mkdir -p $job/img$job && ch-run -b $job:$job $job/img -- sh -c 'id -un; cat /etc/jacamar-test-image'" 2>&1) || true
    case "$out" in *"$user"*"jacamar-rs test image"*) check charliecloud_pull_run 0 ;; *) check charliecloud_pull_run 1 "$out" ;; esac
    kit_cleanup_job "$user" "$job"
    sleep 1  # conmon and the pause process take a moment to go after `rm -f` and the reset
    # shellcheck disable=SC2009  # zombies (defunct, reaped late by this VM's pid 1) are not left processes
    out=$(ps -u "$user" -o pid=,stat=,comm= | grep -v ' Z' || true)
    [ -z "$out" ]; check nothing_left $? "$out"
    kit_registry_stop "$reg" >/dev/null; rm -rf "$reg"
    userdel -r "$user" 2>/dev/null || true
    echo "kit smoke: $pass passed, $fail failed"
    [ "$fail" = 0 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
        smoke) kit_smoke ;;
        *) echo "usage: kit.sh smoke   (or source it for the kit_* helpers)" >&2; exit 2 ;;
    esac
fi
