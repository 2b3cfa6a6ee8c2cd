#!/usr/bin/env bash
# One CI job through every stage on the running cluster (docker/up.sh): jacamar-sim, the
# runner stand-in, drives jacamar-auth on the runner node as the non-root user ciuser with
# executor = "slurm"; the job runs on a compute node. Prints the node that ran it. Then the
# same with executor = "pbs" (the Torque wrappers over Slurm). Exit 0 when both succeed.
source "$(dirname "$0")/lib.sh"

# The CI user has the same uid on every node (the shared filesystem depends on it).
uids=$(for c in "$CTL" "$C1" "$C2" "$RUNNER"; do docker exec "$c" id -u "$CI_USER"; done | sort -u)
[ "$(wc -l <<<"$uids")" = 1 ] || die "uid of $CI_USER differs between nodes: $uids"

# sim_job EXECUTOR CONFIG: one job; sets $out (the job log) and $rc.
sim_job() {
  local id=$(( $(date +%s%N) / 1000000 % 1000000000 ))
  rc=0
  out=$(docker exec -u "$CI_USER" -w "/home/$CI_USER" "$RUNNER" jacamar-sim --driver /opt/jacamar/bin/jacamar-auth \
          --configuration "/etc/gitlab-runner/$2" --job-id "$id" \
          --script 'echo "JOB-RAN-ON $(hostname -s) as $(id -un) uid $(id -u) in ${SLURM_JOB_ID:+slurm job $SLURM_JOB_ID}"' 2>&1) || rc=$?
}

fail=0
for pair in slurm:jacamar.toml pbs:jacamar-pbs.toml; do
  ex=${pair%%:*}
  sim_job "$ex" "${pair#*:}"
  line=$(grep -a '^JOB-RAN-ON ' <<<"$out" | tail -n1 || true)
  node=$(awk '{print $2}' <<<"$line")
  if [ "$rc" = 0 ] && [[ $node == c[12] ]] && [[ $line == *" as $CI_USER "* ]]; then
    echo "smoke: executor=$ex: CI job succeeded on compute node $node ($line)"
  else
    echo "smoke: executor=$ex: FAILED (jacamar-sim exit $rc, node '${node:-?}'); job log:" >&2
    sed 's/^/  | /' <<<"$out" >&2
    fail=1
  fi
done
log "done"
exit "$fail"
