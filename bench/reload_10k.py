#!/usr/bin/env python3
"""Reload time of the benchmark's 10k-route config, for one or more tollgate binaries.

    bench/reload_10k.py [--reloads N] [--series S] BINARY [BINARY...]

Writes the same 10,000-route file as bench.py (routes with permissions), starts each
binary on it (pinned to core 0 when taskset exists), and runs S series of N
`POST /admin/reload` per binary, alternating binaries between series so that load from
other users of the machine falls on all of them alike. Prints, per binary, the median
of the phases tollgate reports itself (`GET /admin/status` -> last_reload.timings) and
of the wall time of the reload request. Also times `tollgate validate` on the file.
With `--edit`, every reload first rewrites the file with one more route changed (a scope
added to one of its permissions), as an admin editing the file would; without it the file is reloaded as
it is.

Loopback only; every process started here is stopped by PID in a finally block.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the benchmark config and the HTTP helpers)

ADMIN_BASE = 18591
PUBLIC_BASE = 18581


def config_text(port, admin, n_routes=10_000):
    # bench.py's 10k-route file; the JWKS and upstream ports are closed (nothing is proxied).
    return B.tollgate_conf_text(port, admin, n_routes - 3, jwks_port=9, up_port=9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--series", type=int, default=3)
    ap.add_argument("--edit", action="store_true", help="change one route before each reload")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tollgate-reload-")
    procs = []
    results = {b: {"wall": [], "read_ms": [], "parse_ms": [], "compile_ms": [], "total_ms": []}
               for b in a.binaries}
    validate = {}
    try:
        ports = {}
        cfgs = {}
        edits = {}
        for i, b in enumerate(a.binaries):
            port, admin = PUBLIC_BASE + i, ADMIN_BASE + i
            cfg = os.path.join(work, f"gateway-{i}.yaml")
            with open(cfg, "w") as f:
                f.write(config_text(port, admin))
            cfgs[b], edits[b] = cfg, 0
            t = time.perf_counter()
            subprocess.run([b, "validate", "--config", cfg], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            validate[b] = time.perf_counter() - t
            cmd = [b, "run", "--config", cfg]
            if shutil.which("taskset"):
                cmd = ["taskset", "-c", "0"] + cmd
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            ports[b] = admin
        for b in a.binaries:
            B.wait_ready(ports[b], timeout=300)
        for _ in range(a.series):
            for b in a.binaries:
                for _ in range(a.reloads):
                    if a.edit:
                        k = edits[b]
                        edits[b] += 1
                        with open(cfgs[b]) as f:
                            text = f.read()
                        old = f"scopes: [svc{k}.write]\n"
                        assert old in text, old
                        with open(cfgs[b], "w") as f:
                            f.write(text.replace(old, f"scopes: [svc{k}.write, svc{k}.edited]\n", 1))
                    t = time.perf_counter()
                    status, body = B.req(ports[b], "POST", "/admin/reload", timeout=120)
                    wall = time.perf_counter() - t
                    if status != 200:
                        raise RuntimeError(f"{b}: reload failed: {status} {body[:300]!r}")
                    st = json.loads(B.req(ports[b], "GET", "/admin/status")[1])
                    tm = st["last_reload"]["timings"]
                    results[b]["wall"].append(wall * 1000)
                    for k in ("read_ms", "parse_ms", "compile_ms", "total_ms"):
                        results[b][k].append(tm[k])
                    time.sleep(0.3)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    for b in a.binaries:
        r = results[b]
        med = {k: statistics.median(v) for k, v in r.items()}
        print(f"{b}: {len(r['wall'])} reloads{' (one route edited before each)' if a.edit else ''}; median wall {med['wall']:.1f} ms "
              f"(min {min(r['wall']):.1f}); phases: read {med['read_ms']:.1f}, "
              f"parse {med['parse_ms']:.1f}, compile {med['compile_ms']:.1f}, "
              f"total {med['total_ms']:.1f} ms; validate {validate[b] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
