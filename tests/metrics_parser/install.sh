#!/usr/bin/env bash
# The metrics tests check /metrics with an independent parser: PyPI's prometheus-client
# (the Prometheus project's Python client), whose Prometheus text 0.0.4 and OpenMetrics
# 1.0 parsers are strict. Pinned, in a git-ignored venv under target/. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.26.0
VENV=target/metrics-venv
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$VERSION')" 2>/dev/null; then
  exit 0
fi
echo "installing prometheus-client==$VERSION into $VENV (metrics tests' parser)..." >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "prometheus-client==$VERSION"
