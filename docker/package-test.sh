#!/usr/bin/env bash
# The packages where they live: each .deb of target/packages/ (scripts/package.sh) in a fresh
# container from local/debian:bookworm (docker/up.sh makes it) with nothing but that .deb
# installed by apt (its dependencies from Debian's mirror, on docker's default bridge
# network), then the RPMs' headers with `rpm -qp`. Each check prints PASS/FAIL; the last
# line is "N passed, M failed"; exit 1 on any failure.
#   deb_plain_files      /opt/jacamar/bin/{jacamar-auth,jacamar} root:root 0755, examples
#   deb_plain_job        a CI job as a non-root user (downscope = "none", shell executor)
#                        through config/prepare/run/cleanup: output, exit 0; a failing one: exit 3
#   deb_caps_files       jacamar-auth root:gitlab-runner 0750, cap_setuid,cap_setgid=ep, the
#                        gitlab-runner account and group created, other users cannot run it
#   deb_caps_setuid_job  as gitlab-runner (no root), a job downscoped with setuid to another
#                        user: its id_token minted here, checked against a JWKS served over
#                        HTTPS (openssl s_server on the host's docker bridge address)
#   deb_caps_without_the_capability  the control: after setcap -r the same job fails (no
#                        crash), and validate as gitlab-runner names the capability
#   rpm_plain, rpm_caps  owner, group, mode and file capabilities in the RPM headers, the
#                        caps flavour's %pre/%post script and requirements
# The test tool jacamar-sim (target/release; the runner stand-in, not in the packages) is
# copied into the containers for the jobs only. Containers: jrs-pkgtest-*, removed at exit.
# The job logs stay in /tmp/jacamar-rs-package-test/ ($JACAMAR_PKGTEST_LOGS).
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "no $BASE_IMAGE: run docker/up.sh first"
# On this machine: jq, openssl (the test PKI and the token), rpm (the RPMs' headers), from
# Debian when missing; basenc is coreutils'.
need=()
for tool in jq:jq openssl:openssl rpm:rpm basenc:coreutils ss:iproute2; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null; }
fi

version=$(cd "$REPO_DIR" && cargo pkgid); version=${version##*[#@]}
PKGS=$REPO_DIR/target/packages
DEB_PLAIN=$PKGS/jacamar-rs_${version}_amd64.deb
DEB_CAPS=$PKGS/jacamar-rs-caps_${version}_amd64.deb
RPM_PLAIN=$PKGS/jacamar-rs-${version}-1.x86_64.rpm
RPM_CAPS=$PKGS/jacamar-rs-caps-${version}-1.x86_64.rpm
SIM=$REPO_DIR/target/release/jacamar-sim
for f in "$DEB_PLAIN" "$DEB_CAPS" "$RPM_PLAIN" "$RPM_CAPS" "$SIM"; do
  [ -s "$f" ] || die "missing $f (scripts/package.sh; cargo build --release --bins)"
done

work=$(mktemp -d /tmp/jacamar-rs-package-test.XXXXXX)
# Each job's log stays in $logs for reading after the run (emptied at the start).
logs=${JACAMAR_PKGTEST_LOGS:-/tmp/jacamar-rs-package-test}
rm -rf "$logs"; mkdir -p "$logs"
containers=()
SERVER_PID=""
finish() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap finish EXIT

passed=0 failed=0
pass() { echo "PASS $1: $2"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
oneline() { tr '\n' '|' <<<"$1" | cut -c1-1500; }

# fresh NAME DEB: a new container NAME with only DEB installed by apt (plus jacamar-sim in
# /tmp, a test tool). False, with the reason in $work/NAME.apt, when the install fails.
fresh() {
  local c=$1 deb=$2
  docker rm -f "$c" >/dev/null 2>&1 || true
  containers+=("$c")
  docker run -d --name "$c" --hostname "$c" "$BASE_IMAGE" sleep infinity >/dev/null
  docker cp "$deb" "$c:/tmp/${deb##*/}"
  docker cp "$SIM" "$c:/tmp/jacamar-sim"
  docker exec "$c" chmod 0755 /tmp/jacamar-sim
  docker exec -e DEBIAN_FRONTEND=noninteractive "$c" bash -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends /tmp/${deb##*/}" \
    >"$work/$c.apt" 2>&1
}
in_c() { local c=$1; shift; docker exec "$c" "$@"; }

# sim NAME CONTAINER USER CONFIG ARGS...: one CI job by jacamar-sim as USER; sets $out (job
# log and runner log, also in $logs/NAME.log), $rc, and $summary (the --summary JSON).
sim() {
  local name=$1 c=$2 user=$3 conf=$4; shift 4
  rc=0
  out=$(docker exec -u "$user" -w "$(in_c "$c" getent passwd "$user" | cut -d: -f6)" "$c" \
          /tmp/jacamar-sim --driver /opt/jacamar/bin/jacamar-auth --configuration "$conf" \
          --summary /tmp/summary.json "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" >"$logs/$name.log"
  summary=$(in_c "$c" cat /tmp/summary.json 2>/dev/null || echo '{}')
  in_c "$c" rm -f /tmp/summary.json
}
# The driver calls of the last job, in order: "config prepare run:STAGE... cleanup".
calls() { jq -r '[.calls[] | if .kind == "run" then "run:" + (.stage // "?") else .kind end] | join(" ")' <<<"$summary"; }
# True when the calls were config, prepare, at least one run (build_script among them), cleanup.
full_sequence() { [[ "$(calls)" =~ ^config\ prepare\ (run:[a-z_]+\ )*run:build_script\ (run:[a-z_]+\ )*cleanup$ ]]; }

# ---- the plain flavour --------------------------------------------------------------------
c=jrs-pkgtest-plain
if ! fresh "$c" "$DEB_PLAIN"; then
  fail deb_plain_files "apt-get install ./${DEB_PLAIN##*/} failed: $(oneline "$(tail -8 "$work/$c.apt")")"
  fail deb_plain_job "not run: the package did not install"
else
  files=$(in_c "$c" stat -c '%U:%G %a %n' /opt/jacamar/bin/jacamar-auth /opt/jacamar/bin/jacamar 2>&1 || true)
  examples=$(in_c "$c" ls /usr/share/doc/jacamar-rs/examples 2>&1 | tr '\n' ' ')
  caps=$(in_c "$c" sh -c 'command -v getcap >/dev/null && getcap /opt/jacamar/bin/jacamar-auth' 2>&1 || true)
  if [ "$files" = "root:root 755 /opt/jacamar/bin/jacamar-auth
root:root 755 /opt/jacamar/bin/jacamar" ] && [[ $examples == *gitlab-runner-config.toml* ]] && [ -z "$caps" ]; then
    pass deb_plain_files "$(oneline "$files"), no file capabilities; examples: $examples"
  else
    fail deb_plain_files "files: '$(oneline "$files")', capabilities: '$caps', examples: '$examples'"
  fi

  # A non-root runner deployment, as the cluster's: the runner and the job are one account.
  in_c "$c" useradd -m -s /bin/bash ciuser
  in_c "$c" install -d /etc/gitlab-runner
  printf '[general]\nexecutor = "shell"\ndata_dir = "$HOME"\n\n[auth]\ndownscope = "none"\n' \
    | docker exec -i "$c" tee /etc/gitlab-runner/jacamar.toml >/dev/null
  sim plain-ok "$c" ciuser /etc/gitlab-runner/jacamar.toml --job-id 501 \
    --script 'echo "PKG-JOB-RAN as $(id -un) on $(hostname)"'
  line=$(grep -a '^PKG-JOB-RAN ' <<<"$out" | head -n1 || true)
  rc_ok=$rc calls_ok=$(calls) ok1=0
  [ "$rc" = 0 ] && [ "$line" = "PKG-JOB-RAN as ciuser on $c" ] && [ "$(jq -r .result <<<"$summary")" = success ] \
    && full_sequence && ok1=1
  log1=$out
  sim plain-exit3 "$c" ciuser /etc/gitlab-runner/jacamar.toml --job-id 502 --script 'echo before' --script 'exit 3' --script 'echo NOT-REACHED'
  code=$(jq -r '.build_exit_code_file // "" | tostring | gsub("\\s"; "")' <<<"$summary")
  if [ "$ok1" = 1 ] && [ "$rc" = 1 ] && [ "$code" = 3 ] && [ "$(jq -r .result <<<"$summary")" = failed ] \
     && grep -qx before <<<"$out" && ! grep -q NOT-REACHED <<<"$out" && full_sequence; then
    pass deb_plain_job "'$line' (jacamar-sim exit 0; calls: $calls_ok); a job with 'exit 3': failed, build exit code $code, calls: $(calls)"
  elif [ "$ok1" = 0 ]; then
    fail deb_plain_job "job 1: exit $rc_ok, line '$line', calls '$calls_ok'; log: $(oneline "$(tail -12 <<<"$log1")")"
  else
    fail deb_plain_job "job 2 ('exit 3'): jacamar-sim exit $rc, build exit code '$code', result '$(jq -r .result <<<"$summary")', calls '$(calls)'; log: $(oneline "$(tail -12 <<<"$out")")"
  fi
fi

# ---- the caps flavour ---------------------------------------------------------------------
c=jrs-pkgtest-caps
if ! fresh "$c" "$DEB_CAPS"; then
  fail deb_caps_files "apt-get install ./${DEB_CAPS##*/} failed: $(oneline "$(tail -8 "$work/$c.apt")")"
  fail deb_caps_setuid_job "not run: the package did not install"
else
  st=$(in_c "$c" stat -c '%U:%G %a' /opt/jacamar/bin/jacamar-auth 2>&1 || true)
  caps=$(in_c "$c" getcap /opt/jacamar/bin/jacamar-auth 2>&1 || true)
  acct=$(in_c "$c" getent passwd gitlab-runner || true)
  grp=$(in_c "$c" getent group gitlab-runner || true)
  in_c "$c" useradd -m -s /bin/bash jobuser
  # Through a shell: a binary given to `docker exec -u` directly is exec'd by runc while it
  # still holds its capabilities, so the mode would not be checked (measured: it ran).
  other=$(docker exec -u jobuser "$c" sh -c '/opt/jacamar/bin/jacamar-auth --version' 2>&1 || true)
  if [ "$st" = "root:gitlab-runner 750" ] && [[ $caps == *" cap_setgid,cap_setuid=ep" ]] \
     && [[ $acct == gitlab-runner:* ]] && [[ $grp == gitlab-runner:* ]] \
     && [ "$(cut -d: -f4 <<<"$acct")" = "$(cut -d: -f3 <<<"$grp")" ] && [[ $other == *"ermission denied"* ]]; then
    pass deb_caps_files "jacamar-auth $st, getcap: '$caps'; account '$acct', group '$grp'; another user: '$other'"
  else
    fail deb_caps_files "owner/mode '$st' (want root:gitlab-runner 750), getcap '$caps', account '$acct', group '$grp', another user running it: '$other'"
  fi

  # A GitLab server's keys: a CA and a server certificate for the bridge's address, an RSA
  # signing key published as a JWKS by openssl s_server -WWW (files under its directory).
  # The host's address on docker's default bridge: IPAM's Gateway when the daemon records one
  # (a freshly installed daemon may not), else the bridge interface's (docker0) address.
  gw=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
  if [ -z "$gw" ]; then
    br=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
    gw=$(ip -4 -o addr show dev "${br:-docker0}" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
  fi
  [ -n "$gw" ] || die "no address of the host on docker's default bridge (docker network inspect bridge, ip addr show docker0)"
  pki=$work/pki; mkdir -p "$pki/www/-" "$pki/www/oauth/discovery"
  o() { (cd "$pki" && openssl "$@") >/dev/null 2>&1 || die "openssl $* failed"; }
  o req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=jacamar-rs package-test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  o req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=$gw"
  printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$gw" >"$pki/srv.ext"
  o x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 -extfile srv.ext
  o genrsa -out sign.pem 2048
  b64url() { basenc --base64url -w0 | tr -d '='; }
  n=$(openssl rsa -in "$pki/sign.pem" -noout -modulus | cut -d= -f2 | basenc --base16 -d | b64url)
  jq -cn --arg n "$n" '{keys: [{kty: "RSA", kid: "pkg-key", use: "sig", alg: "RS256", n: $n, e: "AQAB"}]}' \
    | tee "$pki/www/-/jwks" >"$pki/www/oauth/discovery/keys"
  port=""
  for _ in 1 2 3 4 5; do
    p=$((20000 + RANDOM % 20000))
    ss -ltnH "sport = :$p" | grep -q . && continue
    (cd "$pki/www" && exec openssl s_server -quiet -WWW -accept "$gw:$p" -cert ../srv.pem -key ../srv.key) \
      >"$work/s_server.log" 2>&1 </dev/null &
    SERVER_PID=$!
    if wait_until 10 ss -ltnH "sport = :$p"; then port=$p; break; fi
    kill "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  done
  [ -n "$port" ] || die "openssl s_server did not listen on $gw: $(cat "$work/s_server.log")"
  url="https://$gw:$port"

  # jacamar-auth's configuration, as a site would write it (root's, readable by the runner).
  docker cp "$pki/ca.pem" "$c:/etc/gitlab-runner-ca.pem"
  in_c "$c" install -d /etc/gitlab-runner
  printf '[general]\nexecutor = "shell"\ndata_dir = "$HOME"\ngitlab_server = "%s"\ntls-ca-file = "/etc/gitlab-runner-ca.pem"\njwt_env_variable = "SITE_ID_TOKEN"\n\n[auth]\ndownscope = "setuid"\n' "$url" \
    | docker exec -i "$c" tee /etc/gitlab-runner/jacamar.toml >/dev/null
  valid=$(docker exec -u gitlab-runner "$c" /opt/jacamar/bin/jacamar-auth validate --configuration /etc/gitlab-runner/jacamar.toml 2>&1) || valid="FAILED: $valid"

  # mint JOB: an id_token (RS256) for jobuser and CI job JOB, in $token.
  mint() {
  local job=$1 t claims signed
  t=$(date +%s)
  claims=$(jq -cn --arg s "$url" --argjson t "$t" --arg id "$job" '{iss: $s, aud: $s,
    sub: "project_path:group/project:ref_type:branch:ref:main", iat: ($t - 5), nbf: ($t - 5),
    exp: ($t + 3600), job_id: $id, user_login: "jobuser", user_id: "4242",
    user_email: "jobuser@example.com", project_path: "group/project", project_id: "17",
    pipeline_source: "push", namespace_path: "group"}')
  signed="$(printf '%s' '{"alg":"RS256","typ":"JWT","kid":"pkg-key"}' | b64url).$(printf '%s' "$claims" | b64url)"
  token="$signed.$(printf '%s' "$signed" | openssl dgst -sha256 -sign "$pki/sign.pem" -binary | b64url)"
  }
  # setuid_job JOB: one CI job as gitlab-runner for jobuser, sets $out, $rc, $summary.
  setuid_job() {
    mint "$1"
    sim "setuid-$1" "$c" gitlab-runner /etc/gitlab-runner/jacamar.toml --job-id "$1" --user jobuser \
      --var CI_PROJECT_PATH=group/project --var "SITE_ID_TOKEN=$token" \
      --script 'echo "PKG-SETUID-JOB as $(id -un) uid $(id -u) gid $(id -g) caps $(grep ^CapEff /proc/self/status | cut -f2)"'
  }
  setuid_job 601
  line=$(grep -a '^PKG-SETUID-JOB ' <<<"$out" | head -n1 || true)
  want="PKG-SETUID-JOB as jobuser uid $(in_c "$c" id -u jobuser) gid $(in_c "$c" id -g jobuser) caps 0000000000000000"
  if [ "$rc" = 0 ] && [ "$line" = "$want" ] && full_sequence && [[ $valid != FAILED* ]]; then
    pass deb_caps_setuid_job "jacamar-sim as gitlab-runner (no root): '$line'; calls: $(calls); jacamar-auth validate as gitlab-runner: $(oneline "$valid")"
  else
    fail deb_caps_setuid_job "jacamar-sim exit $rc, line '$line' (want '$want'), calls '$(calls)'; validate: $(oneline "$valid"); log: $(oneline "$(tail -12 <<<"$out")"); JWKS server: $(oneline "$(tail -3 "$work/s_server.log")")"
  fi
  # The control: the same job without the package's capability must not run (so the job
  # above ran on the capability the package set, not on something of the container's).
  in_c "$c" setcap -r /opt/jacamar/bin/jacamar-auth
  setuid_job 602
  # And the failure is a clear one: no crash of the pre-exec hook, and validate as the
  # service account says what is missing before any job.
  valid2=$(docker exec -u gitlab-runner "$c" /opt/jacamar/bin/jacamar-auth validate --configuration /etc/gitlab-runner/jacamar.toml 2>&1) && valid2="PASSED: $valid2"
  if grep -qa -e 'fatal runtime error' -e SIGABRT <<<"$out"; then
    fail deb_caps_without_the_capability "the job failed by a crash, not a clear error: $(oneline "$(tail -6 <<<"$out")")"
  elif [[ $valid2 == PASSED* ]] || [[ $valid2 != *cap_setuid,cap_setgid=ep* ]]; then
    fail deb_caps_without_the_capability "validate as gitlab-runner does not name the missing capability: $(oneline "$valid2")"
  elif [ "$rc" != 0 ] && ! grep -q '^PKG-SETUID-JOB ' <<<"$out"; then
    pass deb_caps_without_the_capability "after setcap -r the same job fails (jacamar-sim exit $rc, $(jq -r .result <<<"$summary")): $(oneline "$(grep -a -v '^[[:space:]]*$' <<<"$out" | tail -3)")"
  else
    fail deb_caps_without_the_capability "after setcap -r the job still ran (exit $rc): $(oneline "$(tail -6 <<<"$out")")"
  fi
fi

# ---- the RPMs (headers only: Debian's rpm cannot install them here) -----------------------
# One line per file: path, mode, owner:group, file capabilities ("(none)" when none).
rpm_files() { rpm -qp --queryformat '[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILECAPS}\n]' "$1" 2>/dev/null | sed 's/ $/ (none)/'; }
f=$(rpm_files "$RPM_PLAIN")
auth=$(grep '^/opt/jacamar/bin/jacamar-auth ' <<<"$f" || true); jac=$(grep '^/opt/jacamar/bin/jacamar ' <<<"$f" || true)
if [ "$auth" = "/opt/jacamar/bin/jacamar-auth -rwxr-xr-x root:root (none)" ] && [ "$jac" = "/opt/jacamar/bin/jacamar -rwxr-xr-x root:root (none)" ] \
   && grep -q '^/usr/share/doc/jacamar-rs/examples/gitlab-runner-config.toml ' <<<"$f"; then
  pass rpm_plain "'$auth' '$jac' (no file capabilities), examples included"
else
  fail rpm_plain "files: $(oneline "$f")"
fi
f=$(rpm_files "$RPM_CAPS")
auth=$(grep '^/opt/jacamar/bin/jacamar-auth ' <<<"$f" || true)
scripts=$(rpm -qp --scripts "$RPM_CAPS" 2>/dev/null)
reqs=$(rpm -qp --requires "$RPM_CAPS" 2>/dev/null | tr '\n' ' ')
if [[ $auth == "/opt/jacamar/bin/jacamar-auth -rwxr-x--- root:gitlab-runner cap_setgid,cap_setuid=ep" ]] \
   && grep -q '^preinstall scriptlet' <<<"$scripts" && grep -q '^postinstall scriptlet' <<<"$scripts" \
   && grep -q 'setcap cap_setuid,cap_setgid=ep' <<<"$scripts" && [[ $reqs == */usr/sbin/setcap* ]]; then
  pass rpm_caps "'$auth'; %pre and %post create gitlab-runner and set the capability; requires: $reqs"
else
  fail rpm_caps "jacamar-auth: '$auth'; scriptlets: $(grep scriptlet <<<"$scripts" | tr '\n' ' '); requires: $reqs"
fi

echo "(job logs: $logs)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
