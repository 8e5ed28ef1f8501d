#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (config: deny.toml), all four of them: RustSec
# advisories, bans (no OpenSSL, no new duplicate versions), licenses, and sources.
# Any finding fails the script, and so CI; so does any warning (`-D warnings`), which
# keeps deny.toml honest: a duplicate-version skip or an allowed license that no longer
# matches anything must be removed.
#
# The advisory database lives on GitHub. When this machine can reach it, cargo-deny
# fetches it as usual. When it cannot, the offline copy of the database that sits beside
# the repository (../shared/advisory-db/advisory-db.bundle, a git bundle) is cloned into
# the directory cargo-deny would have fetched into, and the check runs with `--offline`
# against it. Without either, the script fails: the advisories check is never skipped.
#
# (In a git worktree, also beside the main checkout.)
# Environment: TOLLGATE_ADVISORY_BUNDLE overrides the bundle's path;
# TOLLGATE_ADVISORY_OFFLINE=1 uses the bundle without trying the network first.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $deny_version"; then
  echo "installing cargo-deny $deny_version..." >&2
  cargo install --locked "cargo-deny@$deny_version" >&2
fi

upstream=https://github.com/rustsec/advisory-db
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
# Where cargo-deny 0.20 keeps the default database: the directory name is its hash of
# the upstream URL.
db="$db_root/advisory-db-3157b0e258782691"
bundle="${TOLLGATE_ADVISORY_BUNDLE:-$repo/../shared/advisory-db/advisory-db.bundle}"
if [ -z "${TOLLGATE_ADVISORY_BUNDLE:-}" ] && [ ! -f "$bundle" ]; then
  # In a git worktree, the main checkout's neighbour.
  common=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  if [ -n "$common" ] && [ -f "$(dirname "$common")/../shared/advisory-db/advisory-db.bundle" ]; then
    bundle="$(cd "$(dirname "$common")/../shared/advisory-db" && pwd)/advisory-db.bundle"
  fi
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Puts the bundle's database where cargo-deny looks, unless the copy already there is
# newer (fetched from upstream earlier). Holds cargo-deny's own lock meanwhile, so a
# concurrent cargo-deny never sees a half-written directory.
install_bundle() {
  if [ ! -f "$bundle" ]; then
    echo "error: the RustSec advisory database is unreachable ($upstream) and there is no" >&2
    echo "offline copy at $bundle;" >&2
    echo "the advisories check cannot run, so supply-chain checks FAIL." >&2
    echo "Provide the bundle (see ../shared/advisory-db/README.md) or set TOLLGATE_ADVISORY_BUNDLE." >&2
    exit 1
  fi
  mkdir -p "$db_root"
  exec 9>"$db_root/db.lock"
  flock -w 600 9
  local fresh="$db_root/.tollgate-bundle.$$"
  rm -rf "$fresh"
  git -c init.defaultBranch=main clone -q "$bundle" "$fresh"
  local new old=0
  new=$(git -C "$fresh" log -1 --format=%ct HEAD)
  if [ -d "$db/.git" ]; then
    old=$(git -C "$db" log -1 --format=%ct HEAD 2>/dev/null || echo 0)
  fi
  if [ "$old" -gt "$new" ]; then
    echo "advisory database: keeping the copy in $db, newer than the bundle" >&2
    rm -rf "$fresh"
  else
    rm -rf "$db"
    mv "$fresh" "$db"
  fi
  flock -u 9
  exec 9>&-
  local head newest
  head=$(git -C "$db" log -1 --format='%h, committed %cs' HEAD)
  # The newest advisory's own date says how current the snapshot's content is.
  newest=$(grep -rhs '^date = ' "$db/crates" | tr -d '"' | awk '{print $3}' | sort | tail -1)
  echo "advisory database: offline copy from $bundle ($head; $(find "$db/crates" -name '*.md' | wc -l) advisories, the newest dated $newest)" >&2
}

offline=${TOLLGATE_ADVISORY_OFFLINE:-0}
if [ "$offline" != 1 ] && ! timeout 30 git ls-remote --exit-code "$upstream" HEAD >/dev/null 2>&1; then
  echo "advisory database: $upstream is unreachable from here; using the offline copy" >&2
  offline=1
fi

if [ "$offline" != 1 ]; then
  # Online: cargo-deny fetches the database itself. Should the fetch itself fail after
  # all, fall back to the offline copy rather than to no check.
  rc=0
  cargo deny check --show-stats -D warnings 2>"$log" || rc=$?
  cat "$log" >&2
  if [ "$rc" = 0 ]; then
    exit 0
  elif ! grep -q "failed to fetch advisory database" "$log"; then
    exit "$rc"
  fi
  echo "advisory database: fetch failed; using the offline copy" >&2
fi

install_bundle
# `--offline` also keeps cargo's own metadata offline, and that reads the manifest of
# every package in Cargo.lock, other platforms' included (anstyle-wincon, ...), which a
# build on this machine never downloaded: fetch them all first (crates.io is reachable
# whenever the build itself was).
cargo fetch --locked >&2
# --offline is a global flag: before `check`.
cargo deny --offline check --show-stats -D warnings
