#!/usr/bin/env python3
"""Where a Redis limit's cost goes: tollgate's user and system CPU and its syscalls per
request, for the no-limit route and the Redis routes of bench/ratelimit.py, side by side.

    python3 bench/ratelimit_syscalls.py [TOLLGATE_BINARY ...]   (needs perf, nginx, wrk,
                                                                 redis-server, taskset)

Same servers and cores as bench/ratelimit.py (tollgate with 1 worker and nginx on core 0,
wrk with 64 connections and redis-server on core 1). For each binary and route: one wrk
run of RL_SECONDS (default 4) while `perf stat` counts tollgate's syscalls by kind
(read-like, write-like, epoll_wait, futex, other) and /proc gives its user and system
CPU and how busy each core was (100 % on a core means that side is the bottleneck).
Counts are per request. Syscalls are counted with tracepoints, which cost a little
themselves: compare rows of one run, not with bench/ratelimit.py's figures. Every
process is stopped by PID.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402
import ratelimit as R  # noqa: E402

EVENTS = {
    "read": ["read", "recvfrom", "recvmsg", "readv"],
    "write": ["write", "sendto", "sendmsg", "writev"],
    "epoll": ["epoll_wait", "epoll_pwait", "epoll_pwait2"],
    "futex": ["futex"],
}


def cores():
    """(busy, total) jiffies per core from /proc/stat."""
    out = []
    for line in open("/proc/stat"):
        if line.startswith("cpu") and line[3].isdigit():
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            out.append((sum(v) - idle, sum(v)))
    return out


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fl = s[s.rindex(")") + 2:].split()
    return int(fl[11]), int(fl[12])


def one(binary, path, lua, secs):
    tg = B.start("rls-tollgate", [binary, "run", "--config", R.tollgate_conf()],
                 env={"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
    try:
        B.wait_ready(R.PORTS["admin"])
        url = f"http://127.0.0.1:{R.PORTS['tg']}{path}"
        B.run_wrk(url, 64, 2, lua)  # warm-up (connections, Redis script loaded)
        evs = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for ns in EVENTS.values() for n in ns]
        perf = subprocess.Popen(["perf", "stat", "-x", ",", "-p", str(tg.pid)] + sum((["-e", e] for e in evs), []),
                                stderr=subprocess.PIPE, text=True)
        u0, s0 = ticks(tg.pid)
        c0 = cores()
        r = B.run_wrk(url, 64, secs, lua)
        c1 = cores()
        u1, s1 = ticks(tg.pid)
        perf.send_signal(2)
        _, err = perf.communicate(timeout=30)
        counts = {}
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                counts[parts[2]] = int(parts[0])
        n = max(1, r["requests"])
        row = {"rps": r["rps"], "user_us": (u1 - u0) * 1e6 / B.CLK / n, "sys_us": (s1 - s0) * 1e6 / B.CLK / n,
               "syscalls": counts.get("raw_syscalls:sys_enter", 0) / n, "non2xx": r["non2xx"],
               "busy": [100.0 * (b1 - b0) / max(1, t1 - t0) for (b0, t0), (b1, t1) in zip(c0, c1)]}
        for k, ns in EVENTS.items():
            row[k] = sum(counts.get(f"syscalls:sys_enter_{x}", 0) for x in ns) / n
        return row
    finally:
        if tg.poll() is None:
            tg.terminate()
            tg.wait(10)


def main():
    bins = sys.argv[1:] or [B.TOLLGATE]
    secs = int(os.environ.get("RL_SECONDS", "4"))
    os.makedirs(B.OUT, exist_ok=True)
    lua = B.write("rl-keys.lua", R.LUA_KEYS)
    B.start("rl-nginx", ["nginx", "-c", R.nginx_conf(), "-p", B.OUT])
    B.start("rl-redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(R.PORTS["redis"]),
                         "--save", "", "--appendonly", "no"], core=1)
    B.wait_port(R.PORTS["up"])
    B.wait_port(R.PORTS["redis"])
    print("| build | route | req/s | user µs/req | sys µs/req | syscalls/req | reads | writes | epoll_wait | futex "
          "| busy % per core |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    routes = [r for r in R.ROUTES if r[2] is None or r[2].startswith("redis")]
    for rnd in range(int(os.environ.get("RL_ROUNDS", "2"))):
        for b in bins:
            for name, path, _ in routes:
                x = one(b, path, lua, secs)
                print(f"| {os.path.basename(b)} | {name} | {x['rps']:,.0f} | {x['user_us']:.2f} | {x['sys_us']:.2f} | "
                      f"{x['syscalls']:.2f} | {x['read']:.2f} | {x['write']:.2f} | {x['epoll']:.2f} | "
                      f"{x['futex']:.2f} | {' / '.join(f'{b:.0f}' for b in x['busy'])} |" + (f" non-2xx {x['non2xx']}" if x["non2xx"] else ""), flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        B.stop_all()
