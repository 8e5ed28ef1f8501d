#!/usr/bin/env bash
# Fuzz every target for a bounded time each, one after the other or FUZZ_JOBS at a time (libFuzzer via
# cargo-fuzz), then print a summary: executions, coverage, corpus and crashes per target.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   scripts/fuzz.sh 300                  # every target, 300 s each
#   scripts/fuzz.sh 30 jwt path_perm     # some targets
#   FUZZ_SECONDS=120 scripts/fuzz.sh     # same as an argument
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60; the first argument wins)
#   FUZZ_SANITIZER  address (default) | none — `none` runs about twice as fast
#   FUZZ_NICE       nice level for build and runs (default 19: the machine stays usable)
#   FUZZ_RSS_MB     libFuzzer's memory limit per target (default 2048)
#   FUZZ_JOBS       targets fuzzed at the same time (default 1; 2 on an idle 2-core machine)
#
# cargo-fuzz is installed when missing. The fuzz targets need nightly-only rustc flags
# (sanitizers, coverage passes): with a stable toolchain the script sets
# RUSTC_BOOTSTRAP=1, which unlocks them on stable. New inputs go to fuzz/corpus/<target>
# (kept between runs, gitignored) on top of the hand-picked fuzz/seeds/<target> and the
# committed minimised corpus fuzz/corpus-min/<target> (read only); a crash
# is written to fuzz/artifacts/<target>/ and reproduced with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# Exit status: 0 when no target crashed, 1 otherwise. Each target's full libFuzzer log is
# kept in fuzz/logs/<target>.log (gitignored).
set -euo pipefail

ALL_TARGETS=(jwt path_perm config body_credentials basic cors cookie_jar service_key dpop claims cases trace_context request_id session_cookie ratelimit upstream_session upgrade outbound)

secs="${FUZZ_SECONDS:-60}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
    secs="$1"
    shift
fi
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${ALL_TARGETS[@]}")
sanitizer="${FUZZ_SANITIZER:-address}"
nice_level="${FUZZ_NICE:-19}"
rss_mb="${FUZZ_RSS_MB:-2048}"
jobs="${FUZZ_JOBS:-1}"

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

# Build everything first, then run the binaries directly: the fuzzing time is not
# spent compiling (the tree may change while the campaign runs).
echo "== building ${targets[*]} (sanitizer: $sanitizer)"
for t in "${targets[@]}"; do
    nice -n "$nice_level" cargo fuzz build -s "$sanitizer" "$t"
done
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

logs=logs
mkdir -p "$logs"
# One target: runs it, then prints its summary row (and its findings on stderr).
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    local before after status=0 start took
    before=$(find "artifacts/$t" -type f | wc -l)
    local args=(-max_total_time="$secs" -print_final_stats=1 -rss_limit_mb="$rss_mb" -timeout=10)
    [[ -f "dicts/$t.dict" ]] && args+=(-dict="dicts/$t.dict")
    # The committed, minimised corpus of earlier campaigns (read only: new inputs go to
    # corpus/$t; scripts/fuzz-cmin.sh refreshes it).
    local kept=()
    [[ -d "corpus-min/$t" ]] && kept=("corpus-min/$t")
    echo "== fuzzing $t for ${secs}s" >&2
    start=$(date +%s)
    # The outer timeout only guards against a hang of the tooling itself. `times` (in the
    # subshell, after the fuzzer ended) gives the CPU the fuzzer really got: with nice 19
    # on a busy machine that can be far less than the wall time.
    local cpu
    cpu=$( (timeout --signal=INT --kill-after=30 $((secs + 300)) \
        nice -n "$nice_level" "$bin_dir/$t" -artifact_prefix="artifacts/$t/" "${args[@]}" \
        "corpus/$t" "seeds/$t" "${kept[@]}" >"$logs/$t.log" 2>&1 || echo "exit $?" >"$logs/$t.status"; times) | tail -1)
    [[ -f "$logs/$t.status" ]] && status=$(grep -o '[0-9]*' "$logs/$t.status") && rm -f "$logs/$t.status"
    took=$(( $(date +%s) - start ))
    # "0m12.345s 0m0.678s" (children's user and system time) -> whole seconds
    local cpu_s
    cpu_s=$(awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t }' <<<"$cpu")
    after=$(find "artifacts/$t" -type f | wc -l)
    local execs rate last cov ft corp crashes last_new plateau cov_at cov_plateau
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
    last=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    # Where in the run coverage last grew: the execution count of the last NEW unit as a
    # share of all executions (a plateau shows as a figure well below 100 %).
    last_new=$(grep -E '^#[0-9]+[[:space:]]+NEW' "$logs/$t.log" | tail -1 | grep -oE '^#[0-9]+' | tr -d '#' || true)
    plateau=-
    if [[ -n "$last_new" && -n "$execs" && "$execs" -gt 0 ]]; then
        plateau="$(( last_new * 100 / execs ))%"
    fi
    # The same for edge coverage alone (`cov`): features (`ft`, what NEW counts) keep
    # creeping up long after the edges reached have stopped growing.
    cov_at=$(awk '/^#[0-9]+/ && match($0, /cov: [0-9]+/) {
        c = substr($0, RSTART + 5, RLENGTH - 5) + 0
        if (c > m) { m = c; n = substr($1, 2) + 0 } } END { if (n) print n }' "$logs/$t.log")
    cov_plateau=-
    if [[ -n "$cov_at" && -n "$execs" && "$execs" -gt 0 ]]; then
        cov_plateau="$(( cov_at * 100 / execs ))%"
    fi
    crashes=$((after - before))
    if [[ $status -ne 0 || $crashes -gt 0 ]]; then
        echo "!! $t failed (exit $status); last lines of its log:" >&2
        grep -E 'panicked|SUMMARY|Test unit written|ERROR' "$logs/$t.log" | head -20 >&2 || true
    fi
    printf '%-17s %6s %6s %12s %8s %6s %7s %6s %8s %8s %8s %s\n' "$t" "$took" "$cpu_s" "${execs:--}" "${rate:--}" \
        "${cov:--}" "${ft:--}" "${corp:--}" "$plateau" "$cov_plateau" "$crashes" "$status"
}

rows_dir=$(mktemp -d)
trap 'rm -rf "$rows_dir"' EXIT
running=0
for t in "${targets[@]}"; do
    if (( running >= jobs )); then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$t" >"$rows_dir/$t" &
    running=$((running + 1))
done
wait || true

echo
echo "== summary (seconds per target: $secs, sanitizer: $sanitizer, $jobs at a time)"
printf '%-17s %6s %6s %12s %8s %6s %7s %6s %8s %8s %8s %s\n' target secs cpu_s execs exec/s cov ft corpus last_new cov_last crashes exit
crashed=0
for t in "${targets[@]}"; do
    row=$(cat "$rows_dir/$t")
    echo "$row"
    read -r _ _ _ _ _ _ _ _ _ _ c e <<<"$row"
    if [[ "$c" != 0 || "$e" != 0 ]]; then crashed=1; fi
done
echo "(cpu_s: CPU seconds the fuzzer got; last_new: where in the run, by executions, coverage (features) last grew; cov_last: where the edge count last grew)"
exit "$crashed"
