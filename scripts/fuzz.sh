#!/usr/bin/env bash
# Fuzz every target for a bounded time each, one after the other (libFuzzer via
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
#
# cargo-fuzz is installed when missing. The fuzz targets need nightly-only rustc flags
# (sanitizers, coverage passes): with a stable toolchain the script sets
# RUSTC_BOOTSTRAP=1, which unlocks them on stable. New inputs go to fuzz/corpus/<target>
# (kept between runs, gitignored) on top of the hand-picked fuzz/seeds/<target>; a crash
# is written to fuzz/artifacts/<target>/ and reproduced with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# Exit status: 0 when no target crashed, 1 otherwise. Each target's full libFuzzer log is
# kept in fuzz/logs/<target>.log (gitignored).
set -euo pipefail

ALL_TARGETS=(jwt path_perm config body_credentials basic cors cookie_jar service_key dpop claims cases trace_context request_id session_cookie ratelimit upstream_session upgrade)

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
crashed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    args=(-max_total_time="$secs" -print_final_stats=1 -rss_limit_mb="$rss_mb" -timeout=10)
    [[ -f "dicts/$t.dict" ]] && args+=(-dict="dicts/$t.dict")
    echo "== fuzzing $t for ${secs}s"
    start=$(date +%s)
    status=0
    # The outer timeout only guards against a hang of the tooling itself.
    timeout --signal=INT --kill-after=30 $((secs + 300)) \
        nice -n "$nice_level" "$bin_dir/$t" -artifact_prefix="artifacts/$t/" "${args[@]}" \
        "corpus/$t" "seeds/$t" >"$logs/$t.log" 2>&1 || status=$?
    took=$(( $(date +%s) - start ))
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
    last=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    crashes=$((after - before))
    if [[ $status -ne 0 || $crashes -gt 0 ]]; then
        crashed=1
        echo "!! $t failed (exit $status); last lines of its log:"
        grep -E 'panicked|SUMMARY|Test unit written|ERROR' "$logs/$t.log" | head -20 || true
    fi
    rows+=("$(printf '%-17s %6s %12s %8s %6s %7s %6s %8s %s' "$t" "$took" "${execs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "${corp:--}" "$crashes" "$status")")
done

echo
echo "== summary (seconds per target: $secs, sanitizer: $sanitizer)"
printf '%-17s %6s %12s %8s %6s %7s %6s %8s %s\n' target secs execs exec/s cov ft corpus crashes exit
for r in "${rows[@]}"; do
    echo "$r"
done
exit "$crashed"
