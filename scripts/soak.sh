#!/usr/bin/env bash
# Soak test (issue 8): mixed traffic against the release binary for N minutes, on
# 127.0.0.1 only, then a verdict in bench/SOAK.md. ONE command:
#
#   scripts/soak.sh            # 30 minutes
#   scripts/soak.sh 3          # 3 minutes
#
# Extra arguments go to the driver (examples/soak.rs), e.g. `scripts/soak.sh 10 --rate 300`;
# `./target/release/examples/soak --help` lists them. Exit status: 0 every criterion
# met, 1 one failed, 2 the run could not be completed. The console output is also kept
# in bench/out/soak.log.
#
# Bounded: the driver stops at the deadline; `timeout` ends it (by PID) if it overruns.
# The driver records tollgate's PID in a pidfile; on exit this script stops that PID if
# it is still a tollgate process (never anything by name).
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

cleanup() {
    if [[ -s "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        # Only if that PID is still the tollgate we started.
        if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "tollgate run"; then
            kill -TERM "$pid" 2>/dev/null || true
            sleep 2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    fi
}
trap cleanup EXIT INT TERM

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
    "$@" 2>&1 | tee "$out/soak.log"
status=${PIPESTATUS[0]}
set -e
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "soak: the driver overran its deadline and was stopped (timeout)" >&2
    status=2
fi
exit "$status"
