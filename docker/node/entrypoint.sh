#!/bin/bash
# The role of this container: controller (munged + slurmctld), compute (munged + slurmd),
# runner (munged + the FUSE view of /ecp; jacamar-rs is driven with docker exec).
set -euo pipefail
role=${1:?usage: entrypoint.sh controller|compute|runner}

# The shared filesystem: /home (and /ecp on the compute nodes) are docker volumes mounted
# in every container. The site admin's part: the user's home and data dir exist.
install -d -o ciuser -g ciuser -m 0755 /home/ciuser
ecp=/ecp
[ "$role" = runner ] && ecp=/srv/ecp-direct
install -d -m 0755 "$ecp"
install -d -o ciuser -g ciuser -m 0700 "$ecp/ciuser"

# munge (a restarted container may hold stale pid/socket files)
install -d -o munge -g munge -m 0755 /run/munge
rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 100); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

# Rootless podman (jobs with an `image:`; on the compute nodes for the Slurm job's stages, on
# the runner for after_script): a user namespace may mount a new proc only when no part of
# the node's /proc is hidden, so docker's overmounts of /proc (masked /proc/kcore ...,
# read-only /proc/sys ...) go, as `--security-opt systempaths=unconfined` would do
# (docker-compose v1 cannot pass it). Needs SYS_ADMIN (docker-compose.yml). /tmp is a
# volume, open to all as /tmp is.
podman_ready() {
  awk '$5 ~ "^/proc/" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m"
  done
  chmod 1777 /tmp
}

case "$role" in
  controller)
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld
    exec slurmctld -D -i ;;
  compute)
    podman_ready
    install -d -m 0755 /var/spool/slurmd
    rm -f /run/slurmd.pid
    exec slurmd -D -N "$(hostname -s)" ;;
  runner)
    podman_ready
    # An NFS-like view of the shared data dir: a FUSE mount with long attribute and
    # (negative) entry caches, so sizes go stale and new files appear late, as on an NFS
    # client. JACAMAR_FUSE_CACHE seconds (default 10).
    t=${JACAMAR_FUSE_CACHE:-10}
    mountpoint -q /ecp && umount -l /ecp
    install -d -m 0755 /ecp
    bindfs -o "allow_other,attr_timeout=$t,entry_timeout=$t,negative_timeout=$t" /srv/ecp-direct /ecp
    exec sleep infinity ;;
  *) echo "unknown role $role" >&2; exit 2 ;;
esac
