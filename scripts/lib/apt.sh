# shellcheck shell=bash
# Shared by scripts/slurm/slurm-up.sh and scripts/containers/setup.sh (sourced, not run).
#
# apt_install_no_daemons LOG PKG...: installs the packages with apt-get, non-interactively and
# without recommends, while a policy-rc.d keeps their maintainer scripts from starting daemons
# (these machines have no init system; the callers start and own the daemons they need).
# The package lists are refreshed first when apt does not know the first package, and once
# more before a second try when the install fails. apt's output goes to LOG; on failure its
# last 30 lines go to stderr and the function returns 1. A policy-rc.d that was already there
# is left alone; the one made here is removed whatever happens.
apt_install_no_daemons() {
    local log=$1
    shift
    local made_policy=0 rc=0
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    if ! apt-cache show "$1" >/dev/null 2>&1; then
        apt-get update -qq </dev/null >>"$log" 2>&1 || true
    fi
    if ! apt-get install -y -qq --no-install-recommends "$@" </dev/null >>"$log" 2>&1; then
        apt-get update -qq </dev/null >>"$log" 2>&1 || true
        if ! apt-get install -y -qq --no-install-recommends "$@" </dev/null >>"$log" 2>&1; then
            tail -30 "$log" >&2
            rc=1
        fi
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return "$rc"
}
