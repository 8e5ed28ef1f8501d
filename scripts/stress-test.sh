#!/usr/bin/env bash
# Runs the integration suite (tests/it, `cargo test --test it`) N times in a row while
# every core is kept busy, to show that it does not flake on a loaded machine.
#
#   scripts/stress-test.sh [N]          N runs (default 5)
#   scripts/stress-test.sh 5 faults::   extra arguments go to the test binary (a filter,
#                                       --test-threads=1, ...)
#
# Builds once, then starts one busy loop (`yes > /dev/null`) per core (at least two) and
# ends them, by their PIDs, when it exits (however it exits). Each run carries a marker in
# its environment, which every process it starts inherits; any process with the marker
# still alive after the run (a tollgate binary, a node helper, a chromium) is reported as
# a failure of that run, and then ended by its PID. Every failure
# is reported with its test name and run number; logs are kept under
# target/stress/<timestamp>/run-<i>.log. Exits non-zero if any run failed.
#
# Needs what scripts/test.sh installs (Debian's chromium, the npm packages under
# tests/e2e/); run scripts/test.sh once first on a fresh machine.
set -euo pipefail
set +m
cd "$(dirname "$0")/.."

runs=${1:-5}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [N] [test binary arguments...]   (N: runs, a positive integer)" >&2
  exit 2
fi
shift || true

echo "stress-test: building once..." >&2
cargo test --locked --test it --no-run >&2

logdir="target/stress/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$logdir"

busy=()
cleanup() {
  for pid in "${busy[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  busy=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cores=$(nproc)
loops=$((cores < 2 ? 2 : cores))
for _ in $(seq "$loops"); do
  yes >/dev/null &
  busy+=("$!")
done
echo "stress-test: $loops busy loops (PIDs ${busy[*]}) on $cores core(s); $runs run(s); logs in $logdir" >&2

# PIDs of the live processes whose environment holds the entry $1, one a line.
marked_pids() {
  { grep -lzxF -- "$1" /proc/[0-9]*/environ 2>/dev/null || true; } | sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p'
}

# The tests a libtest log names as failed: `test NAME ... FAILED` lines, and the list
# under the last `failures:` heading (four-space indented names).
failed_tests() {
  {
    sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$1"
    awk '/^failures:$/ { list = 1; n++; next } list && /^    [^ ]/ { sub(/^    /, ""); print; next } list && NF == 0 { next } { list = 0 }' "$1" |
      grep -v '^---- ' || true
  } | sort -u
}

failed_runs=0
failures=()
started=$SECONDS
for i in $(seq "$runs"); do
  log="$logdir/run-$i.log"
  t0=$SECONDS
  # Inherited by everything the run starts (chromium included, although playwright
  # gives it a session of its own): what outlives the run is found by it.
  marker="TOLLGATE_STRESS_RUN=$$-$i-$RANDOM"
  rc=0
  env "$marker" cargo test --locked --test it -- "$@" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))

  run_failures=()
  while IFS= read -r name; do
    run_failures+=("$name")
  done < <(failed_tests "$log")

  # A process killed as its test ended may take a moment to go: wait for that (10 s).
  leftovers=$(marked_pids "$marker" || true)
  for _ in $(seq 50); do
    [ -z "$leftovers" ] && break
    sleep 0.2
    leftovers=$(marked_pids "$marker" || true)
  done
  if [ -n "$leftovers" ]; then
    echo "run $i: processes outlived the run:" >&2
    for pid in $leftovers; do
      echo "  $(ps -o pid=,args= -p "$pid" 2>/dev/null | cut -c1-160)" >&2
    done
    run_failures+=("(processes outlived the run: $(echo $leftovers))")
    for pid in $leftovers; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  if [ "$rc" -ne 0 ] && [ "${#run_failures[@]}" -eq 0 ]; then
    run_failures+=("(cargo test exited $rc without naming a failed test; see $log)")
  fi

  summary=$(sed -n 's/^test result: \(.*\)$/\1/p' "$log" | tail -1)
  if [ "${#run_failures[@]}" -eq 0 ]; then
    echo "run $i/$runs: ok in ${took}s (${summary:-no summary})" >&2
  else
    failed_runs=$((failed_runs + 1))
    echo "run $i/$runs: FAILED in ${took}s (${summary:-no summary}); log: $log" >&2
    for name in "${run_failures[@]}"; do
      echo "  FAILED run $i: $name" >&2
      failures+=("run $i: $name")
    done
  fi
done

echo >&2
echo "stress-test summary: $((runs - failed_runs))/$runs runs passed with $loops busy loops on $cores core(s), $((SECONDS - started))s in all" >&2
if [ "${#failures[@]}" -gt 0 ]; then
  for f in "${failures[@]}"; do echo "  $f" >&2; done
  exit 1
fi
