#!/usr/bin/env bash
# CI jobs through the REAL GitLab Runner (v18.0.5) on the running cluster (docker/up.sh).
# The fake GitLab (tests/e2e/cluster_fake.rs, test code) starts on the host at the cluster
# network's gateway; `gitlab-runner run` starts as root on the runner node with
# /etc/gitlab-runner/config.toml (custom executor -> jacamar-auth from the .deb); for each
# batch executor (the runners "slurm" and "pbs") two jobs are queued at once:
#   ok     every stage: get_sources clones the fake's repository with the job token, the
#          script runs as ciuser (setuid: its id_token verified against the fake's JWKS over
#          TLS) in a batch job on a compute node, prints the clone's README and writes an
#          artifact, which the helper uploads from the runner node; after_script runs.
#   exit3  the script ends with `exit 3`: a script failure with exit code 3.
# And one job with an `image:` for the runner "slurm" (run_mechanism = "podman"): its image is
# pulled from a registry on the host (TLS, htpasswd whose password is the job's token, sent
# in the job response's `credentials` as GitLab does) and runs rootless inside the Slurm job
# on a compute node; its log must show the image's marker, ciuser and SLURM_JOB_ID, its
# after_script runs in the image on the runner node, and no podman, conmon or pause process of
# ciuser may remain on the nodes after it.
# And a pipeline of three jobs with JACAMAR_REUSE_ALLOCATION=pipeline (docs/allocations.md):
# one allocation, a step per job, the third's exit code, the allocation gone after its idle time.
# Checked on what the fake recorded: the runner's final PUT (state, failure_reason,
# exit_code), the job log (trace) and the artifacts. Exit 0 when all four are as expected.
# Logs: /tmp/jacamar-rs-smoke/ (each job's log, the runner's log, the fake's requests).
source "$(dirname "$0")/lib.sh"
work=${JACAMAR_DOCKER_LOGS:-/tmp/jacamar-rs-smoke}
rm -rf "$work"; mkdir -p "$work"

# The CI user has the same uid on every node (the shared filesystem depends on it).
uids=$(for c in "$CTL" "$C1" "$C2" "$RUNNER"; do docker exec "$c" id -u "$CI_USER"; done | sort -u)
[ "$(wc -l <<<"$uids")" = 1 ] || die "uid of $CI_USER differs between nodes: $uids"
ci_uid=$uids

finish() {
  runner_service_stop
  docker exec "$RUNNER" cat "$RUNNER_LOG" >"$work/gitlab-runner.log" 2>/dev/null || true
  [ -n "${FAKE_CTL:-}" ] && curl -sS "$FAKE_CTL/requests" >"$work/requests.log" 2>/dev/null
  fake_gitlab_stop
  registry_stop "$work/registry"
}
trap finish EXIT
fake_gitlab_start "$work/fake-gitlab.log"
image_token=glcbt-image$(openssl rand -hex 12)
t_registry=$(date +%s%N)
registry_start "$work/registry" "$image_token"
log "registry up and image pushed in $(( ($(date +%s%N) - t_registry) / 1000000 )) ms"
runner_service_start

ok_job='{"name": "smoke",
  "script": ["echo \"JOB-RAN-ON $(hostname -s) as $(id -un) uid $(id -u) batch job ${SLURM_JOB_ID:-?}\"",
             "cat README.md",
             "mkdir -p out && echo \"artifact of job $CI_JOB_ID\" > out/result.txt"],
  "after_script": ["echo \"AFTER-SCRIPT-RAN as $(id -un)\""],
  "artifacts": ["out/"]}'
exit3_job='{"name": "exit3", "script": ["echo \"BEFORE-EXIT on $(hostname -s)\"", "exit 3", "echo NOT-REACHED"]}'

image_job=$(jq -n --arg t "$image_token" --arg r "$REGISTRY_HOSTPORT" '{name: "image",
  script: ["echo \"IMAGE-JOB-RAN on ${SLURM_JOB_NODELIST:-?} as $(id -un) uid $(id -u) slurm job ${SLURM_JOB_ID:-none}\"",
           "echo \"IMAGE-MARKER $(cat /etc/jacamar-test-image)\""],
  after_script: ["echo \"IMAGE-AFTER-SCRIPT as $(id -un) $(cat /etc/jacamar-test-image)\""],
  job_token: $t, image: {name: ($r + "/ci/debian:bookworm")},
  credentials: [{type: "registry", url: $r, username: "gitlab-ci-token", password: $t}]}')

declare -A ids
for ex in slurm pbs; do
  token=$RUNNER_SLURM; [ "$ex" = pbs ] && token=$RUNNER_PBS
  ids[$ex-ok]=$(fake_job "$token" "$ok_job")
  ids[$ex-exit3]=$(fake_job "$token" "$exit3_job")
done
ids[slurm-image]=$(fake_job "$RUNNER_SLURM" "$image_job")
t_image=$(date +%s%N)
log "queued: $(for k in "${!ids[@]}"; do printf '%s=%s ' "$k" "${ids[$k]}"; done)"

fail=0
nodes_clean() { [ -z "$(podman_leftovers "$C1"; podman_leftovers "$C2"; podman_leftovers "$RUNNER")" ]; }
bad() { echo "smoke: $1: FAILED: $2" >&2; fail=1; }
for key in slurm-ok slurm-exit3 pbs-ok pbs-exit3 slurm-image; do
  id=${ids[$key]}
  if ! fake_wait_final "$id" 300; then
    fake_trace "$id" >"$work/$key.log" 2>/dev/null || true
    bad "$key" "no final update from the runner within 300 s (job $id); log: $work/$key.log"
    continue
  fi
  fake_job_json "$id" >"$work/$key.json"
  jq -r .trace "$work/$key.json" | clean_log >"$work/$key.log"
  L=$work/$key.log
  state=$(jq -r .state <<<"$FINAL") reason=$(jq -r '.failure_reason // ""' <<<"$FINAL") code=$(jq -r '.exit_code // ""' <<<"$FINAL")
  grep -aq 'Running with gitlab-runner 18\.0\.5' "$L" || bad "$key" "the job log does not come from gitlab-runner 18.0.5"
  case "$key" in
    *-ok)
      line=$(grep -a '^JOB-RAN-ON ' "$L" | tail -n1 || true)
      node=$(awk '{print $2}' <<<"$line")
      arts=$(jq '[.artifacts[] | select(.size > 0)] | length' "$work/$key.json")
      if [ "$state" != success ]; then
        bad "$key" "state '$state' (failure_reason '$reason', exit_code '$code'), expected success; log: $L"
      elif [[ $node != c[12] ]] || [[ $line != *" as $CI_USER uid $ci_uid "* ]]; then
        bad "$key" "the script did not run as $CI_USER on a compute node: '${line:-no JOB-RAN-ON line}'; log: $L"
      elif ! grep -aqx "hello from the cluster's fake GitLab" "$L"; then
        bad "$key" "the clone's README.md is not in the job log (get_sources); log: $L"
      elif ! grep -aq "^AFTER-SCRIPT-RAN as $CI_USER" "$L"; then
        bad "$key" "after_script did not run as $CI_USER; log: $L"
      elif [ "$arts" != 1 ]; then
        bad "$key" "$arts artifacts uploaded, expected 1; log: $L"
      else
        echo "smoke: executor=${key%%-*}: CI job $id succeeded through the real runner on compute node $node ($line); sources cloned, artifact uploaded, after_script ran"
      fi ;;
    *-image)
      image_s=$(( ($(date +%s%N) - t_image) / 1000000 ))
      line=$(grep -a '^IMAGE-JOB-RAN ' "$L" | tail -n1 || true)
      node=$(awk '{print $3}' <<<"$line")
      if [ "$state" != success ]; then
        bad "$key" "state '$state' (failure_reason '$reason', exit_code '$code'), expected success; log: $L"
      elif [[ $node != c[12] ]] || [[ $line != *" as $CI_USER uid $ci_uid slurm job "[0-9]* ]]; then
        bad "$key" "the script did not run as $CI_USER in a Slurm job on a compute node: '${line:-no IMAGE-JOB-RAN line}'; log: $L"
      elif ! grep -aq '^IMAGE-MARKER jacamar-rs test image' "$L"; then
        bad "$key" "the image's marker /etc/jacamar-test-image is not in the job log; log: $L"
      elif ! grep -aq "runs in image $REGISTRY_HOSTPORT/ci/debian:bookworm with podman inside the slurm allocation" "$L"; then
        bad "$key" "jacamar did not say it runs the image inside the allocation; log: $L"
      elif ! grep -aq "^IMAGE-AFTER-SCRIPT as $CI_USER jacamar-rs test image" "$L"; then
        bad "$key" "after_script did not run in the image as $CI_USER (on the runner node); log: $L"
      elif grep -aqF "$image_token" "$L"; then
        bad "$key" "the job token is in the job log; log: $L"
      else
        left=""
        if ! wait_until 30 nodes_clean; then
          left="$C1: $(podman_leftovers "$C1" | tr '\n' ' ') $C2: $(podman_leftovers "$C2" | tr '\n' ' ') $RUNNER: $(podman_leftovers "$RUNNER" | tr '\n' ' ')"
        fi
        if [ -n "$left" ]; then
          bad "$key" "podman left behind on the nodes 30 s after the job: $left"
        else
          echo "smoke: executor=slurm with image: CI job $id succeeded in ${image_s} ms from queueing ($line; $(grep -a -m1 '^IMAGE-MARKER' "$L")); after_script ran in the image on the runner node; nothing of podman left on $C1, $C2 or $RUNNER"
        fi
      fi ;;
    *-exit3)
      if [ "$state" != failed ] || [ "$reason" != script_failure ] || [ "$code" != 3 ]; then
        bad "$key" "final update $FINAL, expected failed / script_failure / exit_code 3; log: $L"
      elif ! grep -aq '^BEFORE-EXIT on c[12]' "$L" || grep -aq '^NOT-REACHED' "$L"; then
        bad "$key" "the script's lines around 'exit 3' are wrong; log: $L"
      else
        echo "smoke: executor=${key%%-*}: CI job $id failed as it should: script_failure, exit code 3 ($(grep -a -m1 '^BEFORE-EXIT' "$L"))"
      fi ;;
  esac
done

# --- a pipeline's jobs in one allocation (docs/allocations.md): three jobs of one pipeline,
# one after the other, with JACAMAR_REUSE_ALLOCATION=pipeline; the runner "slurm" has
# allocation_reuse on (idle timeout 20 s). One sbatch for the three, the same SLURM_JOB_ID in
# each, a new step per job, the third's `exit 7` reported as 7, and nothing of the pipeline's
# allocation left in the queue 20 s (+ the holder's period and margin) after the last job.
pipeline=$(( $(date +%s) % 1000000 + 7000000 ))
alloc_job() { # alloc_job N [EXIT]
  jq -n --arg p "$pipeline" --arg n "$1" --arg x "${2:-0}" '{name: ("alloc-" + $n),
    script: ["echo \"ALLOC-JOB \($n) job ${SLURM_JOB_ID:-none} step ${SLURM_STEP_ID:-none} on $(hostname -s) as $(id -un)\"", ("exit " + $x)],
    variables: {JACAMAR_REUSE_ALLOCATION: "pipeline", CI_PIPELINE_ID: $p, SCHEDULER_PARAMETERS: "-N1 -n1 -t 15"}}'
}
alloc_ids=() alloc_jobs=() alloc_steps=()
for n in 1 2 3; do
  x=0; [ "$n" = 3 ] && x=7
  key=alloc-$n
  id=$(fake_job "$RUNNER_SLURM" "$(alloc_job "$n" "$x")")
  if ! fake_wait_final "$id" 300; then
    fake_trace "$id" >"$work/$key.log" 2>/dev/null || true
    bad "$key" "no final update from the runner within 300 s (job $id); log: $work/$key.log"
    break
  fi
  fake_trace "$id" >"$work/$key.log"
  L=$work/$key.log
  state=$(jq -r .state <<<"$FINAL") code=$(jq -r '.exit_code // ""' <<<"$FINAL")
  line=$(grep -a "^ALLOC-JOB $n " "$L" | tail -n1 || true)
  want_state=success; [ "$n" = 3 ] && want_state=failed
  if [ "$state" != "$want_state" ] || { [ "$n" = 3 ] && [ "$code" != 7 ]; }; then
    bad "$key" "final update $FINAL, expected $want_state (exit code $x); log: $L"
  elif [[ $line != *" on c"[12]" as $CI_USER" ]]; then
    bad "$key" "the script did not run as $CI_USER on a compute node: '${line:-no ALLOC-JOB line}'; log: $L"
  fi
  alloc_ids+=("$id"); alloc_jobs+=("$(awk '{print $4}' <<<"$line")"); alloc_steps+=("$(awk '{print $6}' <<<"$line")")
done
submitted=$(cat "$work"/alloc-[123].log | grep -ac 'as pipeline [0-9]*.s allocation' || true)
if [ "${#alloc_jobs[@]}" = 3 ]; then
  if [ "$(printf '%s\n' "${alloc_jobs[@]}" | sort -u | wc -l)" != 1 ] || [[ ${alloc_jobs[0]} != [0-9]* ]]; then
    bad alloc "the pipeline's jobs ran in different Slurm jobs: ${alloc_jobs[*]} (logs: $work/alloc-*.log)"
  elif [ "$(printf '%s\n' "${alloc_steps[@]}" | sort -u | grep -c '^[0-9][0-9]*$')" != 3 ]; then
    bad alloc "the pipeline's jobs did not each run as a step: SLURM_STEP_ID ${alloc_steps[*]}"
  elif [ "$submitted" != 1 ]; then
    bad alloc "$submitted allocations submitted for the pipeline, expected 1 (logs: $work/alloc-*.log)"
  else
    alloc_gone() { [ -z "$(docker exec "$CTL" squeue -h -u "$CI_USER" -n "$(grep -aom1 'jacamar-alloc-[0-9a-f]*' "$work/alloc-1.log")" -o %i)" ]; }
    if ! wait_until 35 alloc_gone; then
      bad alloc "slurm job ${alloc_jobs[0]} (the pipeline's allocation) still in the queue 35 s after the last job: $(docker exec "$CTL" squeue -h -u "$CI_USER" -o '%i %j %T')"
    else
      echo "smoke: pipeline $pipeline: CI jobs ${alloc_ids[*]} ran as steps ${alloc_steps[*]} of one slurm job ${alloc_jobs[0]} (one submission), the third's exit 7 reported as 7, the allocation gone within 35 s of the last job"
    fi
  fi
fi
log "done (logs: $work)"
exit "$fail"
