#!/usr/bin/env bash
# The OTLP/HTTP receiver the tracing tests start (tests/otlp/receiver.py) decodes spans
# with the official protobuf definitions: PyPI's opentelemetry-proto, pinned, in a
# git-ignored venv under target/ (like deploy/validate.sh's tools). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=1.45.2
VENV=target/otlp-venv
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('opentelemetry-proto') != '$VERSION')" 2>/dev/null; then
  exit 0
fi
echo "installing opentelemetry-proto==$VERSION into $VENV (tracing tests' OTLP receiver)..." >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-proto==$VERSION"
