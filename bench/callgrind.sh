#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: unlike req/s this does not
# depend on what else the machine is doing, so two builds can be compared on a busy,
# shared machine. Counts tollgate's own user-space instructions (not the kernel's).
#
#   bench/callgrind.sh [BINARY]    (default target/release/tollgate; builds it if missing)
#
# Workloads: plain proxy (auth: none), the same with a local and with a Redis rate limit
# (redis-server, when installed), and a cached Bearer token (+ scope check), all
# HTTP/1.1 keep-alive over 8 connections from h2load. CG_KEEP=DIR keeps the callgrind
# files (callgrind_annotate DIR/cg.jwt.2500 shows where the instructions go). Each is run with N1 and N2 requests;
# (Ir(N2) - Ir(N1)) / (N2 - N1) cancels start-up and shutdown. Loopback only, bounded.
# CG_ONLY="plain jwt" runs only the named workloads (plain, local, redis, jwt).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/tollgate}"
N1="${CG_N1:-500}"
N2="${CG_N2:-2500}"
[ -x "$BIN" ] || cargo build --release --locked
for t in valgrind nginx h2load curl; do
  command -v "$t" >/dev/null || { echo "needs $t (apt-get install valgrind nginx-light nghttp2-client curl)"; exit 1; }
done
W="$(mktemp -d)"
PIDS=()
# run() executes in $(...) subshells: their PIDs are recorded in a file as well.
cleanup() {
  for p in "${PIDS[@]}" $(cat "$W/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

# CG_PORT_BASE moves the four ports, so two builds can be counted side by side (same load).
B="${CG_PORT_BASE:-18480}"
UP=$B; TG=$((B + 1)); ADM=$((B + 2)); RDS=$((B + 3))
mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<CONF
daemon off; worker_processes 1; error_log $W/nginx/error.log; pid $W/nginx/pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $W/nginx;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello\n"; } } }
CONF
nginx -c "$W/nginx.conf" -p "$W/nginx" & PIDS+=($!)
# The Redis behind the `store: redis` limit (its work is not counted: only tollgate's).
HAVE_REDIS=0
if command -v redis-server >/dev/null; then
  redis-server --bind 127.0.0.1 --port "$RDS" --save "" --appendonly no --dir "$W" >/dev/null 2>&1 & PIDS+=($!)
  HAVE_REDIS=1
fi

cat > "$W/gateway.yaml" <<CONF
server:
  listen: "127.0.0.1:$TG"
  admin_listen: "127.0.0.1:$ADM"
token_service:
  signing_key: $W/signing.pem
  create_signing_key: true
  issuer: "http://127.0.0.1:$TG"
  audience: "cg"
  clients:
    - id: cg
      secret: cg-secret
      scopes: [analytics.read]
stores:
  redis:
    url: "redis://127.0.0.1:$RDS/0"
    timeout: 5s                     # valgrind slows tollgate, not Redis
upstreams:
  - name: up
    url: "http://127.0.0.1:$UP"
rate_limits:                        # never reached: every request is admitted
  - {name: local-ip, key: ip, limit: 4000000000, per: 1h}
  - {name: redis-ip, key: ip, limit: 4000000000, per: 1h, store: redis, on_error: deny}
routes:
  - name: plain
    path_prefix: /plain
    upstream: up
    auth: none
  - name: local
    path_prefix: /local
    upstream: up
    auth: none
    rate_limits: [local-ip]
  - name: redis
    path_prefix: /redis
    upstream: up
    auth: none
    rate_limits: [redis-ip]
  - name: api
    path_prefix: /api
    upstream: up
    auth:
      issuers: [local]
      scopes: [analytics.read]
    permissions:
      - path: /api/data
        methods: [GET]
CONF

# One run: start tollgate under callgrind, send N requests, stop it, print total Ir.
run() { # name n url [header]
  local out="$W/cg.$1.$2"
  RUST_LOG=info TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" run --config "$W/gateway.yaml" 2>"$W/tg.log" >/dev/null & local vp=$!
  echo "$vp" >>"$W/pids"
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.2; done
  local hdr=()
  if [ -n "${4:-}" ]; then hdr=(-H "$4"); fi
  # a first request so connection set-up and caches are in both runs alike
  curl -sf "${hdr[@]}" "$3" >/dev/null
  timeout 600 h2load --h1 -n "$2" -c 8 -m 1 "${hdr[@]}" "$3" >"$W/h2load.$1.$2" 2>&1
  grep -q "succeeded, 0 failed, 0 errored" "$W/h2load.$1.$2" || { cat "$W/h2load.$1.$2"; exit 1; }
  kill -TERM "$vp"; wait "$vp" || { echo "tollgate under callgrind failed:" >&2; cat "$W/tg.log" >&2; exit 1; }
  if [ -n "${CG_KEEP:-}" ]; then mkdir -p "$CG_KEEP"; cp "$out" "$CG_KEEP/"; fi
  grep -m1 "^summary:\|^totals:" "$out" | awk '{print $2}'
}

per_request() { # name url [header]
  local a b
  a=$(run "$1" "$N1" "$2" "${3:-}")
  b=$(run "$1" "$N2" "$2" "${3:-}")
  echo $(( (b - a) / (N2 - N1) ))
}

# A token from tollgate's own token service (issuer local), fetched from a run outside
# valgrind. This first run also creates the signing key (create_signing_key): done here,
# before any measured run, so that no measured run pays for generating it.
RUST_LOG=warn "$BIN" run --config "$W/gateway.yaml" >/dev/null 2>&1 & TP=$!; PIDS+=($TP)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.1; done
TOKEN=$(curl -sf -u cg:cg-secret -d grant_type=client_credentials "http://127.0.0.1:$TG/oauth2/token" \
  | python3 -c 'import sys,json; print(json.load(sys.stdin)["access_token"])')
kill -TERM "$TP"; wait "$TP" || true
ONLY=" ${CG_ONLY:-plain local redis jwt} "
want() { [[ "$ONLY" == *" $1 "* ]]; }
plain="(not run)"; local_rl="(not run)"; redis_rl="(not run)"; jwt="(not run)"
if want plain; then plain=$(per_request plain "http://127.0.0.1:$TG/plain/x"); fi
if want local; then local_rl=$(per_request local "http://127.0.0.1:$TG/local/x"); fi
if want redis; then
  redis_rl="(redis-server not installed)"
  if [ "$HAVE_REDIS" = 1 ]; then redis_rl=$(per_request redis "http://127.0.0.1:$TG/redis/x"); fi
fi
if want jwt; then jwt=$(per_request jwt "http://127.0.0.1:$TG/api/data" "authorization: Bearer $TOKEN"); fi
echo "binary: $BIN"
echo "instructions per request, plain proxy:        $plain"
echo "instructions per request, cached Bearer JWT:  $jwt"
echo "instructions per request, plain + local rate limit:  $local_rl"
echo "instructions per request, plain + Redis rate limit:  $redis_rl"
