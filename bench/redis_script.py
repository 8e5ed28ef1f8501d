#!/usr/bin/env python3
"""redis-server CPU per rate-limit decision: the shipped script against the previous one,
side by side under the same bounded load (issue 14; bench/ANALYSIS.md "A cheaper script").

    python3 bench/redis_script.py [ROUNDS] [CALLS]     (needs redis-server, redis-benchmark)

Starts its own redis-server on a free loopback port (stopped by PID at the end), loads
the script in src/ratelimit/redis.rs (SCRIPT) and tests/fixtures/ratelimit-script-v1.lua,
and for each workload runs CALLS `EVALSHA`s of each script in turn (redis-benchmark, 8
connections, pipeline 8), ROUNDS interleaved rounds, each script on keys of its own. After
each run it reads `usec_per_call` of `evalsha` from `INFO commandstats` (reset before
each run): the server's time inside the command, not its network I/O. Medians; on a busy
machine only the ratio within one run means anything.

Workloads (ARGV as RedisStore sends them; limits far above what a run sends unless said):
  sparse   one key, sliding, per 1h: 1-2 live buckets (what bench/ratelimit.py measures)
  full     one key, sliding, per 10s: all 21 buckets live (a busy client)
  keys     10,000 keys, sliding, per 1h
  fixed    one key, fixed, per 1h
  refused  one key, sliding, limit 5 per 10s: nearly every call refused
"""
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = "4000000000"
WORKLOADS = {
    "sparse": (1, [BIG, "3600000", "180000", "s", "1"]),
    "full": (1, [BIG, "10000", "500", "s", "1"]),
    "keys": (10000, [BIG, "3600000", "180000", "s", "1"]),
    "fixed": (1, [BIG, "3600000", "180000", "f", "1"]),
    "refused": (1, ["5", "10000", "500", "s", "1"]),
}


def shipped_script():
    src = open(os.path.join(ROOT, "src/ratelimit/redis.rs")).read()
    return re.search(r'pub const SCRIPT: &str = r#"(.*?)"#;', src, re.S).group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 30000
    port = free_port()
    work = tempfile.mkdtemp(prefix="tollgate-redis-script-")
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", work],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def cli(*a):
            return subprocess.run(["redis-cli", "-p", str(port), *a], capture_output=True, text=True,
                                  timeout=60).stdout.strip()
        deadline = time.time() + 30
        while cli("PING") != "PONG":
            if time.time() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.1)
        scripts = {"previous (v1)": open(os.path.join(ROOT, "tests/fixtures/ratelimit-script-v1.lua")).read(),
                   "shipped": shipped_script()}
        shas = {name: cli("SCRIPT", "LOAD", text) for name, text in scripts.items()}
        print(f"redis-server {cli('INFO', 'server').split('redis_version:')[1].split()[0]}; "
              f"{rounds} rounds x {calls} EVALSHA per script and workload; usec_per_call medians")
        for wl, (keys, args) in WORKLOADS.items():
            res = {name: [] for name in scripts}
            for _ in range(rounds):
                for i, (name, sha) in enumerate(shas.items()):
                    cli("CONFIG", "RESETSTAT")
                    subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(calls), "-c", "8", "-P", "8",
                                    "-q", "-r", str(keys), "EVALSHA", sha, "1", f"bench:{wl}:{i}:__rand_int__",
                                    *args], capture_output=True, timeout=600, check=True)
                    st = cli("INFO", "commandstats")
                    m = re.search(r"cmdstat_evalsha:calls=(\d+),usec=\d+,usec_per_call=([\d.]+),"
                                  r"rejected_calls=\d+,failed_calls=(\d+)", st)
                    if not m or m.group(3) != "0" or int(m.group(1)) != calls:
                        raise SystemExit(f"{wl} {name}: unexpected commandstats: {st}")
                    res[name].append(float(m.group(2)))
            a, b = (statistics.median(res[n]) for n in scripts)
            print(f"{wl:8s} " + "  ".join(f"{n} {statistics.median(r):6.2f} µs" for n, r in res.items())
                  + f"  ratio {b / a:.2f}   (runs: "
                  + "; ".join(" ".join(f"{x:.1f}" for x in r) for r in res.values()) + ")")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
