#!/usr/bin/env bash
# Soak test (issues 8 and 19): mixed traffic against the release binary for N minutes,
# on 127.0.0.1 only, then a verdict in bench/SOAK.md. ONE command:
#
#   scripts/soak.sh            # 30 minutes
#   scripts/soak.sh 3          # 3 minutes
#
# By default it runs TWO tollgate replicas sharing one real Redis (redis-server, Debian
# package redis-server; started by the driver on a free loopback port and restarted every
# 5 minutes, or every third of a run shorter than 15 minutes) for the rate limits, with
# over-limit clients whose allowed requests per window are checked across both replicas.
# SOAK_SINGLE=1 scripts/soak.sh runs the one-replica soak without Redis (issue 8's).
# SOAK_NOTE="..." is copied into the report's header (e.g. what else the machine ran).
#
# Extra arguments go to the driver (examples/soak.rs), e.g. `scripts/soak.sh 10 --rate 300`;
# `./target/release/examples/soak --help` lists them. Exit status: 0 every criterion
# met, 1 one failed, 2 the run could not be completed. The console output is also kept
# in bench/out/soak.log.
#
# Bounded: the driver stops at the deadline; `timeout` ends it (by PID) if it overruns.
# The driver records the PIDs of the replicas and of redis-server in a pidfile (one a
# line, rewritten at every Redis restart); on exit this script stops each PID that is
# still a `tollgate run` or a `redis-server` process (never anything by name).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-30}"
[[ $# -gt 0 ]] && shift
if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: scripts/soak.sh [minutes] [driver options]" >&2
    exit 2
fi

echo "== cargo build --release --bin tollgate --example soak" >&2
cargo build --release --locked --bin tollgate --example soak

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (uncommitted changes)"
fi

out="bench/out"
mkdir -p "$out"
pidfile="$out/soak-tollgate.pid"
rm -f "$pidfile"

ours() {
    # Only if that PID is still a process we started: a tollgate replica or our Redis.
    [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -Eq "tollgate run|redis-server"
}

cleanup() {
    if [[ -s "$pidfile" ]]; then
        local pids=() pid
        while read -r pid; do
            [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && pids+=("$pid")
        done < "$pidfile"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        if [[ ${#pids[@]} -gt 0 ]]; then
            sleep 2
            for pid in "${pids[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null || true; done
        fi
        rm -f "$pidfile"
    fi
}
trap cleanup EXIT INT TERM

mode=(--replicas 2 --redis)
if [[ "${SOAK_SINGLE:-0}" == 1 ]]; then
    mode=(--replicas 1)
elif ! command -v redis-server >/dev/null; then
    echo "soak: redis-server not found (Debian: apt-get install redis-server), or run SOAK_SINGLE=1 $0" >&2
    exit 2
fi

ulimit -n 65536 2>/dev/null || true
# Deadline + warm-up checkpoints + shutdown, then a backstop.
limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 180 }')
set +e
timeout --signal=TERM --kill-after=30 "$limit" \
    ./target/release/examples/soak \
    --tollgate ./target/release/tollgate \
    --duration "${minutes}m" \
    --report bench/SOAK.md \
    --pidfile "$pidfile" \
    --commit "$commit" \
    --note "${SOAK_NOTE:-}" \
    "${mode[@]}" \
    "$@" 2>&1 | tee "$out/soak.log"
status=${PIPESTATUS[0]}
set -e
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "soak: the driver overran its deadline and was stopped (timeout)" >&2
    status=2
fi
exit "$status"
