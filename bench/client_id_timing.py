#!/usr/bin/env python3
"""Client-id enumeration by timing at the token endpoint (docs/ADVERSARIAL.md, finding 9).

    python3 bench/client_id_timing.py [TOLLGATE_BINARY] [ROUNDS]

Run by hand (the integration tests never time anything). Starts TOLLGATE_BINARY (default
target/release/tollgate, else target/debug/tollgate) on 127.0.0.1 with a token service
whose one client has an argon2id `secret_hash` (the parameters `tollgate hash-secret`
uses) and a failed_auth_limit far above what a run sends, then sends ROUNDS (default
200) pairs of token requests over fresh connections, interleaved: the registered id with
a wrong secret, and an unknown id. Prints the median, p10 and p90 response time of each
and their ratio. Before the fix the unknown id is answered without an argon2 check (far
faster); after it both pay one. The process is started here and stopped by its PID.
"""
import base64
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for b in ("target/release/tollgate", "target/debug/tollgate"):
        p = os.path.join(ROOT, b)
        if os.path.exists(p):
            return p
    sys.exit("build tollgate first (cargo build --release)")


def token_request(port, client_id, secret):
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    body = "grant_type=client_credentials"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    c.request("POST", "/oauth2/token", body, {
        "Authorization": f"Basic {auth}",
        "Content-Type": "application/x-www-form-urlencoded",
    })
    r = c.getresponse()
    r.read()
    elapsed = time.perf_counter() - start
    c.close()
    return r.status, elapsed


def main():
    exe = binary()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    secret_hash = subprocess.run([exe, "hash-secret"], input=b"dash-secret-1",
                                 capture_output=True, check=True).stdout.decode().strip()
    port, admin = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="tollgate-timing-")
    cfg = os.path.join(d, "gateway.yaml")
    with open(cfg, "w") as f:
        f.write(f"""server:
  listen: "127.0.0.1:{port}"
  admin_listen: "127.0.0.1:{admin}"
token_service:
  path: /oauth2/token
  issuer: "https://gw.bench"
  audience: "https://api.bench"
  failed_auth_limit: {{limit: 1000000, per: 1s}}
  clients:
    - id: dash
      secret_hash: "{secret_hash}"
      scopes: [a]
upstreams:
  - name: u
    url: "http://127.0.0.1:9"
routes:
  - name: r
    path_prefix: /
    upstream: u
    auth: none
""")
    log = open(os.path.join(d, "log"), "w")
    proc = subprocess.Popen([exe, "run", "--config", cfg], stdout=log, stderr=log,
                            env={**os.environ, "RUST_LOG": "error"})
    try:
        deadline = time.time() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                sys.exit(f"tollgate did not start; see {d}/log")
            time.sleep(0.1)
        for _ in range(10):  # warm-up
            token_request(port, "dash", "wrong")
            token_request(port, "nobody", "wrong")
        known, unknown = [], []
        for _ in range(rounds):
            s1, t1 = token_request(port, "dash", "wrong")
            s2, t2 = token_request(port, "nobody", "wrong")
            assert s1 == 401 and s2 == 401, (s1, s2)
            known.append(t1)
            unknown.append(t2)

        def q(xs, p):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(p * len(xs)))]

        mk, mu = statistics.median(known), statistics.median(unknown)
        print(f"binary: {exe}; {rounds} pairs, interleaved, one connection each")
        print("| request | median | p10 | p90 |")
        print("|---|---|---|---|")
        print(f"| registered id, wrong secret | {mk*1000:.2f} ms | {q(known, .1)*1000:.2f} ms | {q(known, .9)*1000:.2f} ms |")
        print(f"| unknown id | {mu*1000:.2f} ms | {q(unknown, .1)*1000:.2f} ms | {q(unknown, .9)*1000:.2f} ms |")
        print(f"unknown / registered median: {mu / mk:.2f}")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()
