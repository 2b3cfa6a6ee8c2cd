#!/bin/bash
# Prototype of issue 20 (pipeline-scoped allocations on Slurm): the whole lifecycle for one
# user, in bash, so the Rust design (docs/allocations-design.md) has a working reference.
# Facts it relies on: docs/allocations-facts.md. Not used by jacamar; nothing calls it.
#
#   alloc-proto.sh demo                        the lifecycle below, as the calling user
#   ALLOC_PROTO_USER=name alloc-proto.sh demo  the same, run as root: drops to that user first
#   alloc-proto.sh job KEYTEXT CI_JOB SCRIPT   one CI job: create-or-reuse, one step, release
#   alloc-proto.sh holder DIR KEY IDLE POLL    (the allocation's batch script; sbatch runs it)
#
# Layout, in the user's own dir $ALLOC_PROTO_DIR (default ~/.jacamar-alloc-proto, 0700):
#   lock                 flock(1): creation, reuse and the holder's exit are serialized on it
#   KEY.rec              "v1 slurm <job id> <submitted, epoch s>", written whole (tmp + mv)
#   KEY.leases/CIJOB     one lease per CI job using the allocation; its mtime is refreshed
#                        every LEASE_BEAT s while the step runs; older than LEASE_TTL = dead
#   KEY.holder.out       the holder's output
#   CIJOB.out/.err       the step's output (srun -o) and srun's own messages (srun -v)
# KEY: the first 16 hex digits of sha256(user, project, pipeline, scheduler arguments).
set -u

IDLE=${ALLOC_PROTO_IDLE:-20}             # allocation_idle_timeout, seconds
POLL=${ALLOC_PROTO_POLL:-2}              # the holder's period (no slurmctld RPC per period)
LEASE_BEAT=${ALLOC_PROTO_LEASE_BEAT:-30} # a running job refreshes its lease this often
LEASE_TTL=${ALLOC_PROTO_LEASE_TTL:-120}  # a lease not refreshed for this long is dead
read -ra ARGS <<<"${ALLOC_PROTO_ARGS:--n1 -t 30}" # default_args + SCHEDULER_PARAMETERS

say() { printf '%s [%s] %s\n' "$(date +%T.%3N)" "${ROLE:-driver}" "$*"; }
now() { date +%s; }

# --- the holder: the allocation's batch script ------------------------------------------
# Ends the allocation (by exiting: the job is COMPLETED) once no lease was fresh and no
# step other than its own ran on this node for IDLE seconds. It asks slurmctld nothing:
# leases are files, `scontrol listpids` asks the local slurmstepds only.
fresh_leases() { # $1 = leases dir; prints how many leases are fresh
    local n=0 f cut=$(($(now) - LEASE_TTL))
    for f in "$1"/*; do
        [ -f "$f" ] || continue
        [ "$(stat -c %Y "$f" 2>/dev/null || echo 0)" -ge "$cut" ] && n=$((n + 1))
    done
    echo "$n"
}
local_steps() { # steps of this job on this node, other than the batch step
    scontrol listpids "$SLURM_JOB_ID" 2>/dev/null |
        awk 'NR > 1 && $3 != "batch" && $3 != "extern" { print $3 }' | sort -u | wc -l
}
holder() {
    local dir=$1 key=$2 last busy leases steps stamp
    IDLE=$3 POLL=$4 ROLE=holder
    trap 'say "TERM (scancel or time limit): exiting"; exit 143' TERM
    say "allocation $SLURM_JOB_ID up on $(hostname), idle timeout ${IDLE}s, period ${POLL}s"
    last=$(now) busy=
    while sleep "$POLL"; do
        leases=$(fresh_leases "$dir/$key.leases") steps=$(local_steps)
        if [ "$leases" -gt 0 ] || [ "$steps" -gt 0 ]; then
            [ -z "$busy" ] && say "busy: $leases lease(s), $steps step(s)"
            busy=1 last=$(now)
            continue
        fi
        stamp=$(stat -c %Y "$dir/$key.leases/.last" 2>/dev/null || echo 0)
        [ "$stamp" -gt "$last" ] && last=$stamp
        [ -n "$busy" ] && say "idle since $(date -d "@$last" +%T)"
        busy=
        # Whole seconds on both sides: -le, so never early.
        [ $(($(now) - last)) -le "$IDLE" ] && continue
        # Under the lock: a driver that reuses us has made its lease before releasing it.
        exec 9>"$dir/lock"
        flock 9
        stamp=$(stat -c %Y "$dir/$key.leases/.last" 2>/dev/null || echo 0)
        if [ "$(fresh_leases "$dir/$key.leases")" -gt 0 ] || [ $(($(now) - stamp)) -le "$IDLE" ]; then
            flock -u 9
            last=$(now)
            continue
        fi
        read -r _ _ id _ 2>/dev/null <"$dir/$key.rec"
        [ "${id:-}" = "$SLURM_JOB_ID" ] && rm -f "$dir/$key.rec"
        flock -u 9
        say "idle for ${IDLE}s: record removed, ending the allocation"
        exit 0
    done
}

# --- the driver side: one CI job ----------------------------------------------------------
valid_id() { [[ $1 =~ ^[0-9]{1,20}$ ]]; }

# The allocation of KEY, reused if its record names a live job of ours with our name,
# else submitted (exactly one sbatch). Under the lock; leaves our lease before unlocking.
acquire() {
    local key=$1 cijob=$2 name="jacamar-alloc-$1" rec="$DIR/$1.rec" v s id st
    exec 8>"$DIR/lock"
    flock 8
    ALLOC=
    if read -r v s id _ 2>/dev/null <"$rec"; then
        if [ "$v $s" != "v1 slurm" ] || ! valid_id "$id"; then
            say "record $rec refused (not 'v1 slurm <digits> ...'): ignored"
        else
            # One keyed lookup: our own job (--me), its state and name.
            st=$(squeue --me -h -j "$id" -o '%T|%j' 2>/dev/null)
            case $st in
            "RUNNING|$name" | "PENDING|$name") ALLOC=$id ;;
            *) say "recorded allocation $id is not usable (${st:-gone}): a new one" ;;
            esac
        fi
    fi
    if [ -z "$ALLOC" ]; then
        ALLOC=$(sbatch --parsable -J "$name" -o "$DIR/$key.holder.out" --chdir="$DIR" \
            "${ARGS[@]}" "$SELF" holder "$DIR" "$key" "$IDLE" "$POLL") || {
            flock -u 8
            return 1
        }
        ALLOC=${ALLOC%%;*}
        printf 'v1 slurm %s %s\n' "$ALLOC" "$(now)" >"$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"
        echo "$ALLOC" >>"$DIR/submitted.log"
        say "submitted allocation $ALLOC (sbatch ${ARGS[*]})"
        CREATED=1
    else
        say "reusing allocation $ALLOC"
        CREATED=
    fi
    mkdir -p "$DIR/$key.leases"
    : >"$DIR/$key.leases/$cijob"
    flock -u 8
}

# The lease goes; `.last` keeps when the allocation was last used (the holder may not have
# seen a step shorter than its period). cleanup would stamp it too.
release() {
    touch "$DIR/$1.leases/.last"
    rm -f "$DIR/$1.leases/$2"
}

# Wait for the allocation to run; say how long the job waited.
wait_running() {
    local id=$1 t0 st
    t0=$(date +%s.%N)
    while :; do
        st=$(squeue --me -h -j "$id" -o '%T' 2>/dev/null)
        case $st in
        RUNNING) break ;;
        PENDING | CONFIGURING) sleep 1 ;;
        *)
            say "allocation $id is ${st:-gone}"
            return 1
            ;;
        esac
    done
    [ -n "$CREATED" ] && say "allocation $id running: waited $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s in the queue"
    return 0
}

# One CI job: KEYTEXT (user/project/pipeline/args), CI job id, the script to run as a step.
job() {
    local keytext=$1 cijob=$2 script=$3 key rc pid stepid beat
    key=$(printf '%s' "$keytext" | sha256sum | cut -c1-16)
    acquire "$key" "$cijob" || return 111
    wait_running "$ALLOC" || {
        release "$key" "$cijob"
        return 112
    }
    rm -f "$DIR/$cijob.out" "$DIR/$cijob.err"
    # The step: its own session, so a TERM to our group never reaches srun (srun would kill
    # the step at once, without the job's TERM trap). -v: srun names the step it launched.
    setsid srun -v --jobid="$ALLOC" --overlap -N1 -n1 -J "ci-$cijob" \
        -o "$DIR/$cijob.out" bash "$script" </dev/null 2>"$DIR/$cijob.err" &
    pid=$!
    beat=$(now)
    stepid=
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.2
        if [ -z "$stepid" ]; then
            stepid=$(sed -n 's/^srun: launching StepId=\([0-9]*\.[0-9]*\) .*/\1/p' "$DIR/$cijob.err")
            [ -n "$stepid" ] && { say "job $cijob: step $stepid"; echo "$stepid" >"$DIR/$cijob.step"; }
        fi
        if [ $(($(now) - beat)) -ge "$LEASE_BEAT" ]; then
            touch "$DIR/$key.leases/$cijob"
            beat=$(now)
        fi
    done
    wait "$pid"
    rc=$?
    release "$key" "$cijob"
    sed 's/^/    | /' "$DIR/$cijob.out"
    say "job $cijob: step $stepid ended, srun exit $rc"
    return "$rc"
}

# --- the demo -----------------------------------------------------------------------------
demo() {
    local p q r t0 id_p ids rc last left
    say "user $(id -un), dir $DIR, idle ${IDLE}s, holder period ${POLL}s, args: ${ARGS[*]}"
    cat >"$DIR/ok.sh" <<'EOF'
echo "job=$SLURM_JOB_ID step=$SLURM_STEP_ID on $(hostname) as $(id -un)"
EOF
    cat >"$DIR/seven.sh" <<'EOF'
echo "job=$SLURM_JOB_ID step=$SLURM_STEP_ID: exit 7"
exit 7
EOF
    cat >"$DIR/trap.sh" <<EOF
trap 'echo "trapped TERM in step \$SLURM_JOB_ID.\$SLURM_STEP_ID"; echo trapped >"$DIR/trapped"; exit 143' TERM
echo "job=\$SLURM_JOB_ID step=\$SLURM_STEP_ID: sleeping"
sleep 100 & wait
EOF
    rm -f "$DIR/trapped" "$DIR/submitted.log"
    p="$(id -un)/project-1/pipeline-P/${ARGS[*]}"
    q="$(id -un)/project-1/pipeline-Q/${ARGS[*]}"
    r="$(id -un)/project-1/pipeline-R/${ARGS[*]}"

    say "== pipeline P: three sequential jobs"
    job "$p" 101 "$DIR/ok.sh"
    job "$p" 102 "$DIR/ok.sh"
    job "$p" 103 "$DIR/seven.sh"
    rc=$?
    say "job 103 returned $rc (want 7)"
    say "P's allocation right after: $(squeue --me -h -o '%i %j %T')"

    say "== pipeline Q gets its own allocation"
    job "$q" 201 "$DIR/ok.sh"

    say "== P: a cancelled job (scancel --signal=TERM <job>.<step>)"
    rm -f "$DIR/104.step"
    job "$p" 104 "$DIR/trap.sh" &
    t0=$!
    until [ -s "$DIR/104.step" ]; do sleep 0.2; done
    sleep 1
    say "cancel: scancel --signal=TERM --full $(cat "$DIR/104.step")"
    scancel --signal=TERM --full "$(cat "$DIR/104.step")"
    wait "$t0"
    say "job 104 returned $? ; trap ran: $([ -f "$DIR/trapped" ] && echo yes || echo no)"
    say "allocations now: $(squeue --me -h -o '%i %j %T' | tr '\n' ';')"

    say "== pipeline R: two jobs at the same moment, no allocation yet: one is created"
    job "$r" 301 "$DIR/ok.sh" &
    job "$r" 302 "$DIR/ok.sh" &
    wait
    say "== P: a fifth job still reuses P's allocation"
    job "$p" 105 "$DIR/ok.sh"
    read -r _ _ id_p _ <"$DIR/$(printf '%s' "$p" | sha256sum | cut -c1-16).rec"
    ids=$(wc -l <"$DIR/submitted.log")
    last=$(now)
    say "P's allocation: $id_p; sbatch calls in this demo: $ids (want 3: P, Q, R)"

    say "== waiting for the allocations to end by themselves (idle ${IDLE}s)"
    # Only a successful, empty answer counts (a controller restart is an error, not "none").
    until left=$(squeue --me -h -o %i) && [ -z "$left" ]; do sleep 1; done
    say "nothing of $(id -un) left in squeue $(($(now) - last))s after the last job's end"
    say "final states: $(while read -r i; do squeue -h -t all -j "$i" -o '%i %j %T %r'; done <"$DIR/submitted.log" | tr '\n' ';')"
    say "the holders said (P, Q, R):"
    sed 's/^/    | /' "$DIR"/*.holder.out
}

# --- entry ----------------------------------------------------------------------------------
SELF=$(readlink -f "$0")
if [ "$(id -u)" = 0 ] && [ "${1:-}" != holder ]; then
    u=${ALLOC_PROTO_USER:?run as the job user, or set ALLOC_PROTO_USER}
    exec setpriv --reuid="$u" --regid="$u" --init-groups env -i HOME="$(getent passwd "$u" | cut -d: -f6)" \
        USER="$u" PATH=/usr/local/bin:/usr/bin:/bin ALLOC_PROTO_IDLE="$IDLE" ALLOC_PROTO_POLL="$POLL" \
        ALLOC_PROTO_ARGS="${ARGS[*]}" ${ALLOC_PROTO_DIR:+ALLOC_PROTO_DIR="$ALLOC_PROTO_DIR"} \
        bash "$SELF" "$@" </dev/null
fi
DIR=${ALLOC_PROTO_DIR:-$HOME/.jacamar-alloc-proto}
case ${1:-} in
holder)
    shift
    holder "$@"
    ;;
job)
    shift
    mkdir -m 0700 "$DIR" 2>/dev/null
    cd "$DIR" || exit 1
    job "$@"
    ;;
demo)
    mkdir -m 0700 "$DIR" 2>/dev/null
    cd "$DIR" || exit 1
    demo
    ;;
*)
    echo "usage: $0 demo | job KEYTEXT CI_JOB SCRIPT" >&2
    exit 2
    ;;
esac
