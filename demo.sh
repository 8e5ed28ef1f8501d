#!/usr/bin/env bash
# Starts the demo backend (127.0.0.1:9000) and tollgate with the shipped gateway.yaml
# (127.0.0.1:8080, admin 127.0.0.1:9901). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bin tollgate --example demo_backend
./target/release/examples/demo_backend &
backend=$!
trap 'kill "$backend" 2>/dev/null || true' EXIT
./target/release/tollgate run --config gateway.yaml
