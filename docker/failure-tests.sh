#!/usr/bin/env bash
# Multi-host failure tests on the running cluster (docker/up.sh). Each test prints
# PASS/FAIL with the reason; the last line is "N passed, M failed"; exit 1 on any failure.
# CI jobs are driven as ciuser on the runner node by jacamar-sim (whole jobs) or mini-runner
# (one call at a time), never by the real GitLab Runner (see README.md).
#   fuse_view_is_nfs_like   the runner's /ecp hides new files and keeps stale sizes
#   stream_from_c1          a job on c1 streams its output live through that view
#   last_line_after_job_end   ... and its last line, written as it ends, is not lost
#   cleanup_removes_scripts_dir  ... and cleanup removes the job's scripts dir
#   late_output_file        the output file shows up on the runner only after the job ended:
#                           waited for within nfs_timeout (and reported when nfs_timeout is short)
#   compute_node_killed     docker kill c1 mid-job: the CI job ends as a system failure (exit 2)
#                           naming the node failure (NODE_FAIL)
#   controller_paused       docker pause of the controller for 20 s mid-job is survived
#   runner_disconnected     the runner node off the network for 20 s mid-job is survived
#   runner_restarted        the runner's container restarted mid-job, then cleanup: no job left
# FAILURE_TESTS="a b" runs only those.
source "$(dirname "$0")/lib.sh"
OUTAGE=${JACAMAR_DOCKER_OUTAGE:-20}
# Each test's job log stays in $work for reading after the run (emptied at the start).
work=${JACAMAR_DOCKER_LOGS:-/tmp/jacamar-rs-failure-tests}
rm -rf "$work"; mkdir -p "$work"
passed=0 failed=0
pass() { echo "PASS $1: $2"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# Put the cluster back however a test ended.
restore() {
  [ "$(docker inspect -f '{{.State.Paused}}' "$CTL" 2>/dev/null)" = true ] && docker unpause "$CTL" >/dev/null
  if ! docker inspect -f '{{json .NetworkSettings.Networks}}' "$RUNNER" 2>/dev/null | grep -q "$NETWORK"; then
    docker network connect --ip "$RUNNER_IP" --alias runner "$NETWORK" "$RUNNER" || true
  fi
  [ "$(docker inspect -f '{{.State.Running}}' "$C1" 2>/dev/null)" = true ] || docker start "$C1" >/dev/null || true
  [ "$(docker inspect -f '{{.State.Running}}' "$RUNNER" 2>/dev/null)" = true ] || docker start "$RUNNER" >/dev/null || true
}
trap restore EXIT

JOB_SEQ=$(( $(date +%s) % 100000 * 100 ))
next_id() { JOB_SEQ=$((JOB_SEQ + 1)); id=$JOB_SEQ; }  # sets $id (no subshell: the counter must advance)
# Slurm's view of the CI job ID (the driver names it ci-ID): "STATE NODE", empty when gone.
slurm_of() { docker exec "$CTL" squeue -h -n "ci-$1" -o '%T %N' 2>/dev/null | head -n1; }
running_on() { [ "$(slurm_of "$1")" = "RUNNING $2" ]; }
as_ci() { docker exec -u "$CI_USER" -w "/home/$CI_USER" "$@"; }

# sim_start NAME ID CONFIG SCRIPT [VAR=VALUE...]: jacamar-sim in the background on the runner
# node; its job log goes to $work/NAME.log, its summary to /tmp/NAME.json in the container.
sim_start() {
  local name=$1 id=$2 conf=$3 script=$4; shift 4
  local vars=(); for v in "$@"; do vars+=(--var "$v"); done
  as_ci "$RUNNER" jacamar-sim --driver /opt/jacamar/bin/jacamar-auth --configuration "$conf" --job-id "$id" \
    --summary "/tmp/$name.json" "${vars[@]}" --script "$script" >"$work/$name.log" 2>&1 &
  SIM_PID=$!
}
# sim_wait SECONDS: sets SIM_RC (124 when it did not end in time).
sim_wait() {
  local deadline=$(( $(date +%s) + $1 ))
  while kill -0 "$SIM_PID" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then kill "$SIM_PID" 2>/dev/null; SIM_RC=124; return; fi
    sleep 0.5
  done
  SIM_RC=0; wait "$SIM_PID" || SIM_RC=$?
}
summary_field() { docker exec "$RUNNER" jq -r ".$2 // \"\"" "/tmp/$1.json" 2>/dev/null || true; }
ticks_script() { echo "for i in \$(seq 1 $1); do echo \"tick \$i on \$(hostname -s)\"; sleep 1; done; echo TICKS-DONE"; }
all_ticks() { # all_ticks LOG N NODE: every tick line (the end marker is last_line_after_job_end's)
  local i; for i in $(seq 1 "$2"); do grep -qx "tick $i on $3" "$1" || return 1; done
}
want() { [ -z "${FAILURE_TESTS:-}" ] || [[ " $FAILURE_TESTS " == *" $1 "* ]]; }

# ------------------------------------------------------------------------------------------
t=fuse_view_is_nfs_like
if want $t; then
  p=probe-$$
  r=$(as_ci "$RUNNER" bash -c "
    d=/srv/ecp-direct/$CI_USER; v=/ecp/$CI_USER
    stat \$v/$p >/dev/null 2>&1; echo x > \$d/$p             # looked up (absent), then created by 'another client'
    test -e \$v/$p && echo new-file-visible || echo new-file-hidden
    sleep \${JACAMAR_FUSE_CACHE:-10}; sleep 1
    test -e \$v/$p && echo visible-after-cache || echo still-hidden
    stat -c %s \$v/$p >/dev/null; echo more >> \$d/$p        # size cached, then the file grows
    echo size-view=\$(stat -c %s \$v/$p) size-direct=\$(stat -c %s \$d/$p)
    rm -f \$d/$p" 2>&1)
  if grep -q new-file-hidden <<<"$r" && grep -q visible-after-cache <<<"$r" && grep -q 'size-view=2 size-direct=7' <<<"$r"; then
    pass $t "a new file stays hidden until the entry cache expires, sizes go stale: $(tr '\n' ' ' <<<"$r")"
  else
    fail $t "the FUSE view does not behave like an NFS client: $(tr '\n' ' ' <<<"$r")"
  fi
fi

# ------------------------------------------------------------------------------------------
t=stream_from_c1
if want $t; then
  next_id; n=20
  sim_start $t "$id" /etc/gitlab-runner/jacamar.toml "$(ticks_script $n)" "SCHEDULER_PARAMETERS=-w c1"
  live=""
  deadline=$(( $(date +%s) + 90 ))
  while [ "$(date +%s)" -lt "$deadline" ] && kill -0 "$SIM_PID" 2>/dev/null; do
    if running_on "$id" c1 && grep -q '^tick [0-9]* on c1$' "$work/$t.log"; then
      live=$(grep '^tick [0-9]* on c1$' "$work/$t.log" | tail -n1); break
    fi
    sleep 0.5
  done
  sim_wait 120
  if [ -z "$live" ]; then
    fail $t "no output reached the runner while the job ran on c1 (exit $SIM_RC); log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
  elif [ "$SIM_RC" != 0 ] || ! all_ticks "$work/$t.log" $n c1; then
    fail $t "streamed live ('$live' while RUNNING on c1) but the job ended with exit $SIM_RC or lines are missing: $(grep -c '^tick' "$work/$t.log") of $n ticks; log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
  else
    pass $t "'$live' reached the runner while the job was RUNNING on c1; all $n tick lines arrived; job succeeded"
  fi
  # The job's last line is written just before it ends, when the view's cached size is stale.
  t2=last_line_after_job_end
  if grep -qx TICKS-DONE "$work/$t.log"; then
    pass $t2 "the job's last line (written as it ended) reached the job log"
  else
    fail $t2 "the job's last line 'TICKS-DONE' is missing from the job log (exit $SIM_RC): the output file's size was stale on the runner when the job ended (FUSE attr cache ${JACAMAR_FUSE_CACHE:-10}s; the tailer stops after a 1.5 s quiet settle; a re-open does not refresh FUSE attributes, unlike NFS close-to-open)"
  fi
  t3=cleanup_removes_scripts_dir
  left=$(docker exec "$RUNNER" find /srv/ecp-direct/$CI_USER/scripts -mindepth 4 -maxdepth 4 -name "$id" 2>/dev/null || true)
  if [ -z "$left" ]; then
    pass $t3 "cleanup removed the job's scripts dir through the FUSE view"
  else
    fail $t3 "cleanup left $left ($(docker exec "$RUNNER" ls -A "$left" | tr '\n' ' ')); runner log: $(grep -a 'cleanup gave up' "$work/$t.log" | head -n1)"
  fi
fi

# ------------------------------------------------------------------------------------------
t=late_output_file
if want $t; then
  next_id
  script='echo late-1 on $(hostname -s); echo late-2; echo LATE-DONE'
  start=$(date +%s)
  sim_start $t "$id" /etc/gitlab-runner/jacamar.toml "$script" "SCHEDULER_PARAMETERS=-w c1"
  sim_wait 120; secs=$(( $(date +%s) - start )); rc1=$SIM_RC
  # The same with nfs_timeout = 2s: shorter than the view's entry cache.
  as_ci "$RUNNER" bash -c "sed 's/^nfs_timeout = .*/nfs_timeout = \"2s\"/' /etc/gitlab-runner/jacamar.toml > /tmp/jacamar-nfs2s.toml"
  next_id; id2=$id
  sim_start ${t}_2s "$id2" /tmp/jacamar-nfs2s.toml "$script" "SCHEDULER_PARAMETERS=-w c1"
  sim_wait 120; rc2=$SIM_RC
  warn=$(grep -a 'never appeared' "$work/${t}_2s.log" | head -n1 || true)
  if [ "$rc1" = 0 ] && grep -qx LATE-DONE "$work/$t.log" && grep -q '^late-1 on c1' "$work/$t.log" \
     && ! grep -q 'never appeared' "$work/$t.log"; then
    if [ -n "$warn" ] && ! grep -qx LATE-DONE "$work/${t}_2s.log"; then
      pass $t "nfs_timeout 30s: all output arrived (job ${secs}s end to end); nfs_timeout 2s: output lost and reported (exit $rc2): '$warn'"
    elif grep -qx LATE-DONE "$work/${t}_2s.log"; then
      pass $t "nfs_timeout 30s: all output arrived (job ${secs}s end to end); with nfs_timeout 2s the file was seen in time too (the cache expired early), so the short case proved nothing this run"
    else
      fail $t "nfs_timeout 2s: output lost without the 'never appeared' warning (exit $rc2); log tail: $(tail -6 "$work/${t}_2s.log" | tr '\n' '|')"
    fi
  else
    fail $t "nfs_timeout 30s: exit $rc1, output incomplete; log tail: $(tail -8 "$work/$t.log" | tr '\n' '|')"
  fi
fi

# ------------------------------------------------------------------------------------------
t=compute_node_killed
if want $t; then
  next_id
  sim_start $t "$id" /etc/gitlab-runner/jacamar.toml 'echo started on $(hostname -s); sleep 600; echo NOT-REACHED' "SCHEDULER_PARAMETERS=-w c1"
  if ! wait_until 60 running_on "$id" c1; then
    fail $t "the job never ran on c1 (squeue: '$(slurm_of "$id")')"; sim_wait 5
  else
    sleep 3
    docker kill "$C1" >/dev/null; killed=$(date +%s)
    sim_wait 180; secs=$(( $(date +%s) - killed ))
    result=$(summary_field $t result); reason=$(summary_field $t failure_reason)
    # build_script's run call: jacamar-auth exits SYSTEM_FAILURE_EXIT_CODE (2, as
    # jacamar-sim sets it, like the runner) on a system failure (docs/batch-outcomes.md).
    run_rc=$(docker exec "$RUNNER" jq -r '[.calls[] | select(.kind == "run" and .stage == "build_script")] | last | .exit_code // ""' "/tmp/$t.json" 2>/dev/null || true)
    # The driver's line for a NODE_FAIL end: "slurm job N ended NODE_FAIL (...)" and
    # "a node of the job failed".
    ended=$(grep -a 'ended NODE_FAIL' "$work/$t.log" | head -n1 || true)
    named=$(grep -a 'a node of the job failed' "$work/$t.log" | head -n1 || true)
    if [ "$SIM_RC" = 124 ]; then
      fail $t "the CI job did not end within 180 s of docker kill c1; log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
    elif [ "$SIM_RC" = 0 ]; then
      fail $t "the CI job succeeded although its node was killed"
    elif [ "$result" != system_failure ] || [ "$SIM_RC" != 2 ] || [ "$run_rc" != 2 ]; then
      fail $t "the CI job ended as '$result' (jacamar-sim exit $SIM_RC, run call exit '$run_rc'), not as a system failure (exit 2); failure_reason '$reason'; log tail: $(tail -6 "$work/$t.log" | tr '\n' '|')"
    elif [ -z "$ended" ] || [ -z "$named" ]; then
      fail $t "a system failure, but the job log does not name the node failure (ended NODE_FAIL: '$ended'; 'a node of the job failed': '$named'); log tail: $(tail -6 "$work/$t.log" | tr '\n' '|')"
    else
      pass $t "CI job ended ${secs}s after the kill as a system failure (run call exit $run_rc, failure_reason '$reason'); log: '$ended'$([ "$named" = "$ended" ] || echo " / '$named'")"
    fi
  fi
  docker start "$C1" >/dev/null 2>&1 || true
  wait_until 90 node_idle c1 || docker exec "$CTL" scontrol update NodeName=c1 State=RESUME >/dev/null 2>&1 || true
  wait_until 60 node_idle c1 || echo "  (note: c1 is '$(node_state c1)' after the restart)"
fi

# ------------------------------------------------------------------------------------------
# outage_test NAME DESCRIPTION START_CMD STOP_CMD: a 40 s job on c2; after it has run a few
# seconds, START_CMD, OUTAGE seconds, STOP_CMD. Survived = success, every line, and the
# driver's lines for the scheduler failing (or not answering) and answering again.
outage_test() {
  local t=$1 what=$2 start_cmd=$3 stop_cmd=$4 id n=40
  next_id
  sim_start "$t" "$id" /etc/gitlab-runner/jacamar.toml "$(ticks_script $n)" "SCHEDULER_PARAMETERS=-w c2"
  if ! wait_until 60 running_on "$id" c2; then
    fail "$t" "the job never ran on c2 (squeue: '$(slurm_of "$id")')"; sim_wait 120; return
  fi
  sleep 4
  eval "$start_cmd"
  # A probe: what one squeue on the runner does during the outage (blocks? fails?).
  docker exec -u "$CI_USER" "$RUNNER" bash -c 'a=$(date +%s); squeue --me -h >/dev/null 2>&1; rc=$?; echo "rc=$rc after $(( $(date +%s) - a ))s"' >"$work/$t.probe" 2>&1 &
  local probe=$!
  sleep "$OUTAGE"; eval "$stop_cmd"
  wait "$probe" || true
  sim_wait 240
  local failing answering
  # A scheduler command that fails (then answers again), or one that blocks through the
  # outage (Slurm's client retries a controller it cannot reach): either pair is logged.
  failing=$(grep -a -e 'scheduler command failed' -e 'has not answered for' "$work/$t.log" | head -n1 || true)
  answering=$(grep -a -e 'scheduler answering again' -e ' answered after ' "$work/$t.log" | head -n1 || true)
  if [ "$SIM_RC" != 0 ] || ! all_ticks "$work/$t.log" $n c2; then
    fail "$t" "$what: exit $SIM_RC, $(grep -c '^tick' "$work/$t.log") of $n lines; log: $(grep -av '^tick' "$work/$t.log" | tail -8 | tr '\n' '|')"
  elif [ -z "$failing" ] || [ -z "$answering" ]; then
    fail "$t" "$what: survived (job succeeded, all $n lines) but the driver logged nothing about the outage (failing or stalled: '$failing', answering: '$answering'); an squeue started on the runner as the outage began ended $(cat "$work/$t.probe")"
  else
    pass "$t" "$what: job succeeded with all $n lines; log: '$failing' then '$answering' (probe squeue during the outage: $(cat "$work/$t.probe"))"
  fi
}

t=controller_paused
want $t && outage_test $t "controller paused ${OUTAGE}s" \
  'docker pause "$CTL" >/dev/null' 'docker unpause "$CTL" >/dev/null'

t=runner_disconnected
want $t && outage_test $t "runner node disconnected ${OUTAGE}s" \
  'docker network disconnect "$NETWORK" "$RUNNER"' \
  'docker network connect --ip "$RUNNER_IP" --alias runner "$NETWORK" "$RUNNER"'

# ------------------------------------------------------------------------------------------
t=runner_restarted
if want $t; then
  next_id; dir=/tmp/mini-$id
  mr() { as_ci "$RUNNER" mini-runner "$@"; }
  if ! { mr init "$dir" "$CI_USER" "$id" "SCHEDULER_PARAMETERS=-w c2" && mr config "$dir" >/dev/null && mr prepare "$dir" >/dev/null; } >"$work/$t.setup" 2>&1; then
    fail $t "config/prepare failed: $(tail -5 "$work/$t.setup" | tr '\n' '|')"
  else
    echo 'echo started on $(hostname -s); sleep 600; echo NOT-REACHED' | as_ci -i "$RUNNER" mini-runner run "$dir" build_script >"$work/$t.log" 2>&1 &
    if ! wait_until 60 running_on "$id" c2; then
      fail $t "the job never ran on c2 (squeue: '$(slurm_of "$id")')"
    else
      sleep 2
      docker restart -t 2 "$RUNNER" >/dev/null
      wait_until 60 docker exec "$RUNNER" mountpoint -q /ecp || true
      after_restart=$(slurm_of "$id")
      rc=0; out=$(mr cleanup "$dir" 2>&1) || rc=$?
      if wait_until 60 test -z "$(slurm_of "$id")"; then
        pass $t "after the restart the Slurm job was '${after_restart:-gone}'; cleanup (exit $rc) left no job in the queue: $(grep -a -i 'cancel\|slurm' <<<"$out" | head -n2 | tr '\n' '|')"
      else
        fail $t "job still in the queue after cleanup (exit $rc): '$(slurm_of "$id")'; cleanup said: $(tail -5 <<<"$out" | tr '\n' '|')"
        docker exec "$CTL" scancel -n "ci-$id" || true
      fi
    fi
  fi
  wait 2>/dev/null || true
fi

echo "(job logs: $work)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
