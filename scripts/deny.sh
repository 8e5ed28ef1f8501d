#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (config: deny.toml): licenses, banned crates
# (no OpenSSL) and duplicate versions, crate sources, and RustSec advisories.
# Installs cargo-deny if missing. The advisory database lives on GitHub; if this
# machine cannot reach it (and no copy was fetched before), the advisories check is
# reported as SKIPPED — never as passed — and everything else still has to pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null; then
  echo "installing cargo-deny..." >&2
  cargo install --locked cargo-deny@0.20.2 >&2
fi

cargo deny --log-level error check bans licenses sources

db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 120 cargo deny --log-level error check advisories 2>/tmp/tollgate-deny-adv.log; then
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" /tmp/tollgate-deny-adv.log; then
  if [ -d "$db_dir" ] && ls "$db_dir"/*/crates >/dev/null 2>&1; then
    echo "advisory database unreachable; checking against the copy fetched before" >&2
    cargo deny --log-level error check --disable-fetch advisories
  else
    echo "WARNING: advisories SKIPPED: the RustSec database (github.com) is unreachable from here" >&2
  fi
else
  cat /tmp/tollgate-deny-adv.log >&2
  exit 1
fi
