#!/bin/bash
# Plays the runner's part by hand, one custom-executor call at a time, like
# tests/integration/harness.rs: for tests that must stop between calls (kill the runner
# node mid-job, then run cleanup in the restarted container). jacamar-sim does a whole job.
#
#   mini-runner init DIR USER JOB_ID [NAME=VALUE...]   (job variables -> CUSTOM_ENV_NAME)
#   mini-runner config|prepare|cleanup DIR
#   mini-runner run DIR STAGE < script                  (e.g. build_script)
#
# DIR (0700) keeps the runner's environment for every call (DIR/env), the job response file,
# the scripts and build_exit_code; it survives a container restart (it is on the container's
# own filesystem). The configuration: $MINI_RUNNER_CONF (default /etc/gitlab-runner/jacamar.toml,
# setuid: run it as root and give the job's id_token as a job variable, SITE_ID_TOKEN=...).
# GitLab's URL (CI_SERVER_URL, the clone URL): $MINI_RUNNER_SERVER_URL.
set -euo pipefail
AUTH=${MINI_RUNNER_AUTH:-/opt/jacamar/bin/jacamar-auth}
CONF=${MINI_RUNNER_CONF:-/etc/gitlab-runner/jacamar.toml}
SERVER=${MINI_RUNNER_SERVER_URL:-https://gitlab.example.com}
cmd=${1:?usage: mini-runner init|config|prepare|run|cleanup DIR ...}
dir=${2:?missing DIR}

setv() { printf 'export %s=%q\n' "$1" "$2" >> "$dir/env"; }

call() { # call ARGS...: jacamar-auth with exactly the runner's environment, its own group
  (cd "$dir" && exec env -i bash -c 'source ./env; exec setsid "$@"' mini-runner "$AUTH" "$@" </dev/null)
}

case "$cmd" in
  init)
    user=${3:?missing USER}; id=${4:?missing JOB_ID}; shift 4
    install -d -m 0700 "$dir"; : > "$dir/env"
    setv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    setv HOME "$(getent passwd "$(id -un)" | cut -d: -f6)"
    setv TMPDIR "$dir"
    setv BUILD_FAILURE_EXIT_CODE 1
    setv SYSTEM_FAILURE_EXIT_CODE 2
    setv BUILD_EXIT_CODE_FILE "$dir/build_exit_code"
    setv JOB_RESPONSE_FILE "$dir/response.json"
    token="glcbt-mini-$id"
    for kv in CI_JOB_ID="$id" CI_JOB_TOKEN="$token" CI_RUNNER_SHORT_TOKEN=dockrnnr \
              CI_CONCURRENT_ID=0 CI_CONCURRENT_PROJECT_ID=0 CI_PROJECT_ID=1 \
              CI_PROJECT_PATH=group/project CI_JOB_TIMEOUT=3600 CI_PIPELINE_SOURCE=push \
              CI_SERVER_URL="$SERVER" GITLAB_USER_LOGIN="$user" "$@"; do
      setv "CUSTOM_ENV_${kv%%=*}" "${kv#*=}"
    done
    jq -n --argjson id "$id" --arg tok "$token" --arg host "${SERVER#*://}" '{id: $id, token: $tok,
      git_info: {repo_url: ("https://gitlab-ci-token:" + $tok + "@" + $host + "/group/project.git")},
      runner_info: {timeout: 3600}, variables: []}' > "$dir/response.json"
    chmod 0600 "$dir/response.json" ;;
  config)
    out=$(call config --configuration "$CONF") || { rc=$?; echo "$out"; exit $rc; }
    echo "$out"
    # job_env values may span lines (JACAMAR_CI_CONFIG_STR): NUL-separated, quoted by setv.
    while IFS= read -r -d '' k && IFS= read -r -d '' v; do setv "$k" "$v"; done \
      < <(jq -j '.job_env // {} | to_entries[] | .key, "\u0000", .value, "\u0000"' <<<"$out") ;;
  prepare) call prepare ;;
  run)
    stage=${3:?missing STAGE}
    cat > "$dir/script-$stage"; chmod 0700 "$dir/script-$stage"
    call run "$dir/script-$stage" "$stage" ;;
  cleanup) call cleanup --configuration "$CONF" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
