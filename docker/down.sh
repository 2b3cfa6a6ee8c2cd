#!/usr/bin/env bash
# Remove the cluster's containers, network and volumes (docker-compose down -v); the images
# stay (local/debian:bookworm, local/jacamar-rs-node, local/jacamar-rs-runner), so the next
# up.sh is warm. dockerd keeps running (other users of this machine may need it).
source "$(dirname "$0")/lib.sh"
if ! docker info >/dev/null 2>&1; then log "dockerd is not running: nothing to remove"; exit 0; fi
# A paused container cannot be stopped: unpause first (a failure test may have been cut short).
for c in "$CTL" "$C1" "$C2" "$RUNNER"; do
  [ "$(docker inspect -f '{{.State.Paused}}' "$c" 2>/dev/null)" = true ] && docker unpause "$c" >/dev/null
done
compose down -v --remove-orphans -t 5 2>&1 | sed 's/^/  /' >&2
log "removed containers, network and volumes (images kept)"
