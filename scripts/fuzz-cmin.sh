#!/usr/bin/env bash
# Minimises the fuzz corpora into fuzz/corpus-min/<target>, the small corpus that is
# committed (scripts/fuzz.sh reads it, read only, beside fuzz/corpus and fuzz/seeds).
#
#   scripts/fuzz-cmin.sh                 # every target that has a corpus
#   scripts/fuzz-cmin.sh jwt path_perm   # some targets
#
# Uses the fuzz binaries scripts/fuzz.sh built last (run it first). For each target,
# libFuzzer's `-merge=1` keeps, out of the committed corpus, the run's corpus and the
# seeds, a small set of inputs that reaches the same coverage (features). Nothing here
# needs the network; each merge is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    for d in corpus/*/; do
        [[ -d $d ]] && targets+=("$(basename "$d")")
    done
fi
for t in "${targets[@]}"; do
    if [[ ! -x "$bin_dir/$t" ]]; then
        echo "skip $t: no fuzz binary (run scripts/fuzz.sh $t first)" >&2
        continue
    fi
    sources=()
    for d in "corpus-min/$t" "corpus/$t" "seeds/$t"; do
        [[ -d $d ]] && sources+=("$d")
    done
    new=$(mktemp -d "corpus-min.$t.XXXX")
    timeout 1800 nice -n 10 "$bin_dir/$t" -merge=1 -rss_limit_mb=2048 -timeout=10 \
        "$new" "${sources[@]}" >"logs/cmin-$t.log" 2>&1 \
        || { echo "merge of $t failed: fuzz/logs/cmin-$t.log" >&2; rm -rf "$new"; exit 1; }
    rm -rf "corpus-min/$t"
    mkdir -p corpus-min
    mv "$new" "corpus-min/$t"
    printf '%-17s %6d files %8s\n' "$t" "$(find "corpus-min/$t" -type f | wc -l)" \
        "$(du -sh "corpus-min/$t" | cut -f1)"
done
