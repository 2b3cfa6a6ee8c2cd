#!/usr/bin/env bash
# Multi-host failure tests on the running cluster (docker/up.sh). Each test prints
# PASS/FAIL with the reason; the last line is "N passed, M failed"; exit 1 on any failure.
# CI jobs go through the real GitLab Runner on the runner node (as smoke.sh: the fake GitLab
# of tests/e2e/cluster_fake.rs on the host, `gitlab-runner run` as root, jacamar-auth
# downscoping to ciuser with setuid); only runner_restarted plays the runner by hand
# (mini-runner, one custom-executor call at a time): it restarts the runner node between two
# calls, which no runner survives (see README.md).
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
#   runner_restarted        the runner's container restarted mid-job (mini-runner), then
#                           cleanup: no job left
# FAILURE_TESTS="a b" runs only those.
source "$(dirname "$0")/lib.sh"
OUTAGE=${JACAMAR_DOCKER_OUTAGE:-20}
# Each test's job log stays in $work for reading after the run (emptied at the start).
work=${JACAMAR_DOCKER_LOGS:-/tmp/jacamar-rs-failure-tests}
rm -rf "$work"; mkdir -p "$work"
passed=0 failed=0
pass() { echo "PASS $1: $2"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# Put the cluster back however a test ended; stop the runner and the fake GitLab.
restore() {
  [ "$(docker inspect -f '{{.State.Paused}}' "$CTL" 2>/dev/null)" = true ] && docker unpause "$CTL" >/dev/null
  if ! docker inspect -f '{{json .NetworkSettings.Networks}}' "$RUNNER" 2>/dev/null | grep -q "$NETWORK"; then
    docker network connect --ip "$RUNNER_IP" --alias runner "$NETWORK" "$RUNNER" || true
  fi
  [ "$(docker inspect -f '{{.State.Running}}' "$C1" 2>/dev/null)" = true ] || docker start "$C1" >/dev/null || true
  [ "$(docker inspect -f '{{.State.Running}}' "$RUNNER" 2>/dev/null)" = true ] || docker start "$RUNNER" >/dev/null || true
  runner_service_stop
  docker exec "$RUNNER" cat "$RUNNER_LOG" >"$work/gitlab-runner.log" 2>/dev/null || true
  [ -n "${FAKE_CTL:-}" ] && curl -sS "$FAKE_CTL/requests" >"$work/requests.log" 2>/dev/null
  fake_gitlab_stop
}
trap restore EXIT
fake_gitlab_start "$work/fake-gitlab.log"
runner_service_start

# mini-runner's job ids (the fake GitLab numbers the jobs it queues itself).
JOB_SEQ=$(( $(date +%s) % 100000 * 100 ))
next_id() { JOB_SEQ=$((JOB_SEQ + 1)); id=$JOB_SEQ; }  # sets $id (no subshell: the counter must advance)
# Slurm's view of the CI job ID (the driver names it ci-ID): "STATE NODE", empty when gone.
slurm_of() { docker exec "$CTL" squeue -h -n "ci-$1" -o '%T %N' 2>/dev/null | head -n1; }
running_on() { [ "$(slurm_of "$1")" = "RUNNING $2" ]; }
as_ci() { docker exec -u "$CI_USER" -w "/home/$CI_USER" "$@"; }

# job_start NAME RUNNER_TOKEN SCRIPT [VAR=VALUE...]: queue a CI job of one script line (with
# the CI variables given) for that runner of the real GitLab Runner; sets $id and $JOB_NAME.
job_start() {
  local name=$1 token=$2 script=$3 vars='{}' kv; shift 3
  for kv in "$@"; do vars=$(jq -c --arg k "${kv%%=*}" --arg v "${kv#*=}" '. + {($k): $v}' <<<"$vars"); done
  id=$(fake_job "$token" "$(jq -nc --arg n "$name" --arg s "$script" --argjson v "$vars" '{name: $n, script: [$s], variables: $v}')")
  JOB_NAME=$name
  [ -n "$id" ] || die "the fake GitLab did not queue the job $name"
}
# job_log: the job log so far (what the runner sent the fake GitLab) in $work/$JOB_NAME.log.
job_log() { fake_trace "$id" >"$work/$JOB_NAME.log" 2>/dev/null || true; }
# job_wait SECONDS: wait for the runner's final update of $id; sets JOB_STATE (success, failed,
# or timeout when none came in time), JOB_REASON (failure_reason), JOB_CODE (exit_code).
job_wait() {
  if fake_wait_final "$id" "$1"; then
    JOB_STATE=$(jq -r .state <<<"$FINAL"); JOB_REASON=$(jq -r '.failure_reason // ""' <<<"$FINAL")
    JOB_CODE=$(jq -r '.exit_code // ""' <<<"$FINAL")
  else
    JOB_STATE=timeout JOB_REASON= JOB_CODE=
  fi
  job_log
}
job_alive() { [ -z "$(fake_final "$id" 2>/dev/null)" ]; }
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
  n=20
  job_start $t "$RUNNER_SLURM" "$(ticks_script $n)" "SCHEDULER_PARAMETERS=-w c1"
  live=""
  deadline=$(( $(date +%s) + 90 ))
  while [ "$(date +%s)" -lt "$deadline" ] && job_alive; do
    if running_on "$id" c1 && fake_trace "$id" | grep -q '^tick [0-9]* on c1$'; then
      live=$(fake_trace "$id" | grep '^tick [0-9]* on c1$' | tail -n1); break
    fi
    sleep 0.5
  done
  job_wait 120
  if [ -z "$live" ]; then
    fail $t "no output reached GitLab while the job ran on c1 (job $JOB_STATE); log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
  elif [ "$JOB_STATE" != success ] || ! all_ticks "$work/$t.log" $n c1; then
    fail $t "streamed live ('$live' while RUNNING on c1) but the job ended '$JOB_STATE' ($JOB_REASON) or lines are missing: $(grep -c '^tick' "$work/$t.log") of $n ticks; log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
  else
    pass $t "'$live' reached GitLab's job log while the job was RUNNING on c1; all $n tick lines arrived; job succeeded"
  fi
  # The job's last line is written just before it ends, when the view's cached size is stale.
  t2=last_line_after_job_end
  if grep -qx TICKS-DONE "$work/$t.log"; then
    pass $t2 "the job's last line (written as it ended) reached the job log"
  else
    fail $t2 "the job's last line 'TICKS-DONE' is missing from the job log (job $JOB_STATE): the output file's size was stale on the runner when the job ended (FUSE attr cache ${JACAMAR_FUSE_CACHE:-10}s; the tailer stops after a 1.5 s quiet settle; a re-open does not refresh FUSE attributes, unlike NFS close-to-open)"
  fi
  # scripts/<runner short token>/<concurrent id>/group/project/<job id>, checked on the volume
  # itself (not through the runner's cached view).
  t3=cleanup_removes_scripts_dir
  scripts=/srv/ecp-direct/$CI_USER/scripts
  made=$(grep -a -o "output: /ecp/$CI_USER/scripts/[^ ]*/$id/build_script.out" "$work/$t.log" | head -n1 || true)
  left=$(docker exec "$RUNNER" find "$scripts" -mindepth 5 -maxdepth 5 -type d -name "$id" 2>/dev/null || true)
  if [ -z "$made" ]; then
    fail $t3 "the job log does not name the job's scripts dir (jacamar's 'Submitted ... output: ...' line); nothing to check"
  elif [ -z "$left" ]; then
    pass $t3 "cleanup removed the job's scripts dir (${made#output: }'s directory) through the FUSE view"
  else
    fail $t3 "cleanup left $left ($(docker exec "$RUNNER" ls -A "$left" | tr '\n' ' ')); runner log: $(docker exec "$RUNNER" grep -a 'cleanup gave up' "$RUNNER_LOG" | head -n1)"
  fi
fi

# ------------------------------------------------------------------------------------------
t=late_output_file
if want $t; then
  script='echo late-1 on $(hostname -s); echo late-2; echo LATE-DONE'
  start=$(date +%s)
  job_start $t "$RUNNER_SLURM" "$script" "SCHEDULER_PARAMETERS=-w c1"
  job_wait 120; secs=$(( $(date +%s) - start )); st1=$JOB_STATE
  # The same through the runner whose configuration has nfs_timeout = "2s" (jacamar-nfs2s.toml):
  # shorter than the view's entry cache.
  job_start ${t}_2s "$RUNNER_NFS2S" "$script" "SCHEDULER_PARAMETERS=-w c1"
  job_wait 120; st2="$JOB_STATE${JOB_REASON:+ ($JOB_REASON)}"
  warn=$(grep -a 'never appeared' "$work/${t}_2s.log" | head -n1 || true)
  if [ "$st1" = success ] && grep -qx LATE-DONE "$work/$t.log" && grep -q '^late-1 on c1' "$work/$t.log" \
     && ! grep -q 'never appeared' "$work/$t.log"; then
    if [ -n "$warn" ] && ! grep -qx LATE-DONE "$work/${t}_2s.log"; then
      pass $t "nfs_timeout 30s: all output arrived (job ${secs}s end to end); nfs_timeout 2s: output lost and reported (job $st2): '$warn'"
    elif grep -qx LATE-DONE "$work/${t}_2s.log"; then
      pass $t "nfs_timeout 30s: all output arrived (job ${secs}s end to end); with nfs_timeout 2s the file was seen in time too (the cache expired early), so the short case proved nothing this run"
    else
      fail $t "nfs_timeout 2s: output lost without the 'never appeared' warning (job $st2); log tail: $(tail -6 "$work/${t}_2s.log" | tr '\n' '|')"
    fi
  else
    fail $t "nfs_timeout 30s: job $st1, output incomplete; log tail: $(tail -8 "$work/$t.log" | tr '\n' '|')"
  fi
fi

# ------------------------------------------------------------------------------------------
t=compute_node_killed
if want $t; then
  job_start $t "$RUNNER_SLURM" 'echo started on $(hostname -s); sleep 600; echo NOT-REACHED' "SCHEDULER_PARAMETERS=-w c1"
  if ! wait_until 60 running_on "$id" c1; then
    fail $t "the job never ran on c1 (squeue: '$(slurm_of "$id")')"; job_wait 5
  else
    sleep 3
    docker kill "$C1" >/dev/null; killed=$(date +%s)
    job_wait 180; secs=$(( $(date +%s) - killed ))
    # build_script's run call exits SYSTEM_FAILURE_EXIT_CODE (2) on a system failure
    # (docs/batch-outcomes.md); the runner reports runner_system_failure and says so.
    sysfail=$(grep -a 'Job failed (system failure): exit status 2' "$work/$t.log" | head -n1 || true)
    # The driver's line for a NODE_FAIL end: "slurm job N ended NODE_FAIL (...)" and
    # "a node of the job failed".
    ended=$(grep -a 'ended NODE_FAIL' "$work/$t.log" | head -n1 || true)
    named=$(grep -a 'a node of the job failed' "$work/$t.log" | head -n1 || true)
    if [ "$JOB_STATE" = timeout ]; then
      fail $t "the CI job did not end within 180 s of docker kill c1; log tail: $(tail -5 "$work/$t.log" | tr '\n' '|')"
    elif [ "$JOB_STATE" = success ]; then
      fail $t "the CI job succeeded although its node was killed"
    elif [ "$JOB_REASON" != runner_system_failure ] || [ -z "$sysfail" ]; then
      fail $t "the CI job ended '$JOB_STATE' with failure_reason '$JOB_REASON' (exit_code '$JOB_CODE'), not as a system failure (run call exit 2); log tail: $(tail -6 "$work/$t.log" | tr '\n' '|')"
    elif [ -z "$ended" ] || [ -z "$named" ]; then
      fail $t "a system failure, but the job log does not name the node failure (ended NODE_FAIL: '$ended'; 'a node of the job failed': '$named'); log tail: $(tail -6 "$work/$t.log" | tr '\n' '|')"
    else
      pass $t "CI job ended ${secs}s after the kill as a system failure (failure_reason $JOB_REASON, '$sysfail'); log: '$ended'$([ "$named" = "$ended" ] || echo " / '$named'")"
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
  local t=$1 what=$2 start_cmd=$3 stop_cmd=$4 n=40
  job_start "$t" "$RUNNER_SLURM" "$(ticks_script $n)" "SCHEDULER_PARAMETERS=-w c2"
  if ! wait_until 60 running_on "$id" c2; then
    fail "$t" "the job never ran on c2 (squeue: '$(slurm_of "$id")')"; job_wait 120; return
  fi
  sleep 4
  eval "$start_cmd"
  # A probe: what one squeue on the runner does during the outage (blocks? fails?).
  docker exec -u "$CI_USER" "$RUNNER" bash -c 'a=$(date +%s); squeue --me -h >/dev/null 2>&1; rc=$?; echo "rc=$rc after $(( $(date +%s) - a ))s"' >"$work/$t.probe" 2>&1 &
  local probe=$!
  sleep "$OUTAGE"; eval "$stop_cmd"
  wait "$probe" || true
  job_wait 240
  local failing answering
  # A scheduler command that fails (then answers again), or one that blocks through the
  # outage (Slurm's client retries a controller it cannot reach): either pair is logged.
  failing=$(grep -a -e 'scheduler command failed' -e 'has not answered for' "$work/$t.log" | head -n1 || true)
  answering=$(grep -a -e 'scheduler answering again' -e ' answered after ' "$work/$t.log" | head -n1 || true)
  if [ "$JOB_STATE" != success ] || ! all_ticks "$work/$t.log" $n c2; then
    fail "$t" "$what: job $JOB_STATE ${JOB_REASON:+($JOB_REASON)}, $(grep -c '^tick' "$work/$t.log") of $n lines; log: $(grep -av '^tick' "$work/$t.log" | tail -8 | tr '\n' '|')"
  elif [ -z "$failing" ] || [ -z "$answering" ]; then
    fail "$t" "$what: survived (job succeeded, all $n lines) but the driver logged nothing about the outage (failing or stalled: '$failing', answering: '$answering'); an squeue started on the runner as the outage began ended $(cat "$work/$t.probe")"
  else
    pass "$t" "$what: job succeeded with all $n lines; log: '$failing' then '$answering' (probe squeue during the outage: $(cat "$work/$t.probe"))"
  fi
}

t=controller_paused
want $t && outage_test $t "controller paused ${OUTAGE}s" \
  'docker pause "$CTL" >/dev/null' 'docker unpause "$CTL" >/dev/null'

# The runner node loses the fake GitLab too: the runner keeps the job log and sends it when
# the network is back.
t=runner_disconnected
want $t && outage_test $t "runner node disconnected ${OUTAGE}s" \
  'docker network disconnect "$NETWORK" "$RUNNER"' \
  'docker network connect --ip "$RUNNER_IP" --alias runner "$NETWORK" "$RUNNER"'

# ------------------------------------------------------------------------------------------
t=runner_restarted
if want $t; then
  # The node restarts under the runner: the runner service goes with it (a node that reboots
  # loses its runner too); stopped here first, mini-runner plays the runner's calls instead.
  runner_service_stop
  next_id; dir=/tmp/mini-$id
  # As root, with the site's jacamar.toml (setuid to ciuser), the job's id_token minted by the
  # fake GitLab (its JWKS verifies it).
  tok=$(curl -sSf -X POST --data-binary "{\"job_id\": $id, \"login\": \"$CI_USER\"}" "$FAKE_CTL/id_token" | jq -r .token)
  mr() { docker exec -i -e MINI_RUNNER_SERVER_URL="$FAKE_URL" "$RUNNER" mini-runner "$@"; }
  if ! { mr init "$dir" "$CI_USER" "$id" "SCHEDULER_PARAMETERS=-w c2" "SITE_ID_TOKEN=$tok" </dev/null \
         && mr config "$dir" </dev/null >/dev/null && mr prepare "$dir" </dev/null >/dev/null; } >"$work/$t.setup" 2>&1; then
    fail $t "config/prepare failed: $(tail -5 "$work/$t.setup" | tr '\n' '|')"
  else
    echo 'echo started on $(hostname -s) as $(id -un); sleep 600; echo NOT-REACHED' | mr run "$dir" build_script >"$work/$t.log" 2>&1 &
    run_pid=$!
    if ! wait_until 60 running_on "$id" c2; then
      fail $t "the job never ran on c2 (squeue: '$(slurm_of "$id")')"
    else
      sleep 2
      docker restart -t 2 "$RUNNER" >/dev/null
      wait_until 60 docker exec "$RUNNER" mountpoint -q /ecp || true
      after_restart=$(slurm_of "$id")
      rc=0; out=$(mr cleanup "$dir" </dev/null 2>&1) || rc=$?
      if wait_until 60 test -z "$(slurm_of "$id")"; then
        pass $t "after the restart the Slurm job was '${after_restart:-gone}'; cleanup (exit $rc) left no job in the queue: $(grep -a -i 'cancel\|slurm' <<<"$out" | head -n2 | tr '\n' '|')"
      else
        fail $t "job still in the queue after cleanup (exit $rc): '$(slurm_of "$id")'; cleanup said: $(tail -5 <<<"$out" | tr '\n' '|')"
        docker exec "$CTL" scancel -n "ci-$id" || true
      fi
    fi
    kill "$run_pid" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
  fi
fi

echo "(job logs: $work)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
