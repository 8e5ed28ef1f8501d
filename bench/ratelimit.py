#!/usr/bin/env python3
"""What a rate limit costs per request, side by side in one run (issue 14's measures).

    python3 bench/ratelimit.py        (after `cargo build --release`; needs nginx, wrk,
                                        redis-server, taskset)

One tollgate (release build, 1 worker, core 0) serves five routes to the same nginx
upstream: no limit, a local limit on one hot key (`key: ip`), a local limit over 10,000
keys (`key: header:X-Api-Key`), and the same two with `store: redis` against a real
redis-server (on core 1 beside the load generator, `RL_REDIS_CORE` to move it: in
production Redis is another machine; its CPU is reported apart). wrk (core 1, 64
connections, `RL_CONNS` to change; `RL_TOLLGATE=BINARY` measures another build) sends the same requests to each route, every request carrying an
X-Api-Key out of 10,000, with warm-up and interleaved rounds; medians. Limits are far
above what a run sends, so every request is admitted (a refusal would be a non-2xx and
is reported). Server CPU per request is tollgate's (and redis-server's, shown apart) from
/proc. On a shared machine absolute numbers move between runs: compare the ratios to
the no-limit route of the same run.

Writes bench/out/ratelimit.json and the "Rate limits" section of bench/RESULTS.md
(between its markers; bench/report.py keeps it when it rewrites the file). Every process
started here is recorded in bench/out/pids and stopped by PID.
"""
import json
import os
import random
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402  (helpers: start/stop by PID, wrk, CPU ticks)

PORTS = dict(up=18580, tg=18581, admin=18582, redis=18583)
KEYS = 10_000
TARGET_LOCAL = 0.02   # local limit: < 2% throughput cost
TARGET_REDIS = 0.15   # Redis limit: < 15% throughput cost
TOLLGATE = os.environ.get("RL_TOLLGATE", B.TOLLGATE)  # another build to measure
CONNS = int(os.environ.get("RL_CONNS", "64"))  # wrk connections (the measure: 64)
BEGIN, END = "<!-- ratelimit:begin -->", "<!-- ratelimit:end -->"

LUA_KEYS = r"""
-- Every request carries one of N API keys, in turn (the same requests for every route).
local n, i = tonumber(os.getenv("RL_KEYS") or "10000"), 0
function request()
  i = i + 1
  return wrk.format("GET", nil, {["X-Api-Key"] = "key-" .. (i % n)}, nil)
end
"""

ROUTES = [  # (peer name, path, limit)
    ("no limit", "/plain/x", None),
    ("local, 1 hot key", "/local-ip/x", "local-ip"),
    (f"local, {KEYS:,} keys", "/local-key/x", "local-key"),
    ("redis, 1 hot key", "/redis-ip/x", "redis-ip"),
    (f"redis, {KEYS:,} keys", "/redis-key/x", "redis-key"),
]


def nginx_conf():
    d = os.path.join(B.OUT, "rl-nginx")
    os.makedirs(d, exist_ok=True)
    return B.write("rl-nginx.conf", f"""daemon off; worker_processes 1; error_log {d}/error.log; pid {d}/pid;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d};
  server {{ listen 127.0.0.1:{PORTS['up']} reuseport backlog=4096; keepalive_requests 1000000;
    location / {{ return 200 "ok\\n"; }} }} }}
""")


def tollgate_conf():
    big = 4_000_000_000  # never reached in a run: every request is admitted
    limits = ""
    for name, key, store in [("local-ip", "ip", "local"), ("local-key", "header:X-Api-Key", "local"),
                             ("redis-ip", "ip", "redis"), ("redis-key", "header:X-Api-Key", "redis")]:
        limits += (f"  - {{name: {name}, key: \"{key}\", limit: {big}, per: 1h, store: {store}, "
                   f"on_error: deny}}\n")
    routes = ""
    for _, path, limit in ROUTES:
        prefix = path.rsplit("/", 1)[0]
        routes += (f"  - name: {prefix.strip('/')}\n    path_prefix: {prefix}\n    upstream: up\n"
                   f"    auth: none\n")
        if limit:
            routes += f"    rate_limits: [{limit}]\n"
    return B.write("rl-tollgate.yaml", f"""server:
  listen: "127.0.0.1:{PORTS['tg']}"
  admin_listen: "127.0.0.1:{PORTS['admin']}"
stores:
  redis:
    url: "redis://127.0.0.1:{PORTS['redis']}/0"
    timeout: 1s
upstreams:
  - name: up
    url: "http://127.0.0.1:{PORTS['up']}"
rate_limits:
{limits}routes:
{routes}""")


def measure(tg, redis, path, dur, lua):
    pids = tg.pids()
    b, rb = B.cpu_ticks(pids), B.cpu_ticks([redis.pid])
    r = B.run_wrk(f"http://127.0.0.1:{PORTS['tg']}{path}", CONNS, dur, lua)
    a, ra = B.cpu_ticks(pids), B.cpu_ticks([redis.pid])
    n = max(1, r["requests"])
    r["cpu_us_per_req"] = (a - b) * 1e6 / B.CLK / n
    r["redis_cpu_us_per_req"] = (ra - rb) * 1e6 / B.CLK / n
    return r


def f(v, nd=0):
    return "–" if v is None else f"{v:,.{nd}f}"


def paired_cost(base, runs):
    """The throughput cost round by round (each round measures every route within
    seconds of the others, so the machine's slow drift cancels): its median and a 95 %
    bootstrap interval of that median (2,000 resamples, fixed seed: the same data gives
    the same interval)."""
    costs = [1 - r["rps"] / b["rps"] for b, r in zip(base, runs) if b["rps"] and r["rps"]]
    if not costs:
        return None
    rng = random.Random(14)
    meds = sorted(statistics.median(rng.choices(costs, k=len(costs))) for _ in range(2000))
    return {"median": statistics.median(costs), "lo": meds[49], "hi": meds[1949], "n": len(costs)}


def paired_text(p):
    if p is None:
        return "–"
    return f"{p['median'] * 100:+.1f}% ({p['lo'] * 100:+.1f} … {p['hi'] * 100:+.1f}%)"


def section(res):
    med, meta = res["median"], res["meta"]
    base = med["no limit"]
    rows = ["| route | req/s (median) | runs req/s | p50 ms | p99 ms | tollgate CPU µs/req | redis-server CPU µs/req "
            "| throughput cost vs no limit | paired cost per round, median (95 % interval) "
            "| tollgate CPU/req vs no limit |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, _, _ in ROUTES:
        m = med[name]
        cost = 1 - m["rps"] / base["rps"] if name != "no limit" else None
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, f(m["rps"]), " / ".join(f(x) for x in m["rps_all"]), f(m["p50_ms"], 2), f(m["p99_ms"], 2),
            f(m["cpu_us_per_req"], 2), f(m["redis_cpu_us_per_req"], 2) if name.startswith("redis") else "–",
            f"{cost * 100:+.1f}%" if cost is not None else "–", paired_text(m.get("paired")),
            f"{m['cpu_us_per_req'] / base['cpu_us_per_req']:.3f}×" if name != "no limit" else "–"))
    bad = [f"{n}: {m['non2xx']} non-2xx, {m['socket_errors']} socket errors" for n, m in med.items()
           if m["non2xx"] or m["socket_errors"]]
    # The verdict reads the paired cost (round by round against the no-limit route),
    # which the machine's drift between rounds does not move; the interval says how sure.
    def worse(a, b):
        pa, pb = med[ROUTES[a][0]].get("paired"), med[ROUTES[b][0]].get("paired")
        if pa is None or pb is None:
            return None
        return pa if pa["median"] >= pb["median"] else pb
    local, redis = worse(1, 2), worse(3, 4)

    def verdict_row(what, target, p):
        if p is None:
            return f"| {what} | < {target:.0%} | – | not measured |"
        state = ("met" if p["hi"] < target else
                 "met (median; the interval reaches past the target)" if p["median"] < target else "not met")
        return f"| {what} | < {target:.0%} | {paired_text(p)} (worse of the two, paired) | {state} |"
    verdict = (verdict_row("local limit, throughput cost", TARGET_LOCAL, local) + "\n"
               + verdict_row("Redis limit, throughput cost (1 replica)", TARGET_REDIS, redis))
    return "\n".join([
        BEGIN,
        "## Rate limits: cost per request (issue 14)",
        "",
        f"`bench/ratelimit.py`, {meta['date']}, tollgate {meta['tollgate']}, {meta['redis']}; "
        f"{meta['rounds']} interleaved rounds of {meta['duration_s']} s (after a warm-up; the routes' order "
        "turns by one each round), medians; the paired cost is each round's cost against that round's "
        "no-limit figure, its median with a 95 % bootstrap interval; "
        f"tollgate (1 worker) and the nginx upstream on core 0, wrk ({CONNS} connections) and redis-server on "
        f"core {meta['redis_core']}; load average "
        f"{' '.join(meta['loadavg_start'])} at the start, {' '.join(meta['loadavg_end'])} at the end. "
        f"One tollgate, five routes to the same nginx upstream; every request carries one of {KEYS:,} "
        "`X-Api-Key` values; limits far above what a run sends (all admitted, `on_error: deny`, so a "
        "store error would show as a non-2xx).",
        "",
        "| measure | target | measured | |",
        "|---|---|---|---|",
        verdict,
        "",
        "\n".join(rows),
        "",
        ("Errors during the runs (they make the numbers suspect): " + "; ".join(bad)) if bad else
        "No errors: every request of every run was admitted with 200.",
        "",
        "Instruction counts per request (valgrind, deterministic on a busy machine): `bench/callgrind.sh` "
        "prints them for the plain route with and without a local and a Redis limit.",
        END,
    ])


def write_results_md(text):
    path = os.path.join(HERE, "RESULTS.md")
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    open(path, "w").write(new)


def main():
    for tool in ("nginx", "wrk", "redis-server", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool} (apt-get install nginx-light wrk redis-server util-linux)")
    if not os.access(TOLLGATE, os.X_OK):
        raise SystemExit("build first: cargo build --release --bin tollgate")
    os.makedirs(B.OUT, exist_ok=True)
    load0 = open("/proc/loadavg").read().split()[:3]
    lua = B.write("rl-keys.lua", LUA_KEYS)
    B.start("rl-nginx", ["nginx", "-c", nginx_conf(), "-p", B.OUT])
    # Redis runs beside the load generator, not on the gateway's core: in production it is
    # another machine, and its work is reported apart (redis-server CPU µs/req).
    redis = B.start("rl-redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(PORTS["redis"]),
                                 "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                    core=int(os.environ.get("RL_REDIS_CORE", "1")))
    B.wait_port(PORTS["up"])
    B.wait_port(PORTS["redis"])
    tg = B.start("rl-tollgate", [TOLLGATE, "run", "--config", tollgate_conf()],
                 env={"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
    B.wait_ready(PORTS["admin"])
    peer = B.Peer("tollgate", tg, {})
    for name, path, _ in ROUTES:
        st = B.req(PORTS["tg"], path=path, headers={"X-Api-Key": "check"})[0]
        if st != 200:
            raise SystemExit(f"ABORT: {name} ({path}) answered {st}")
    for name, path, _ in ROUTES:
        B.run_wrk(f"http://127.0.0.1:{PORTS['tg']}{path}", CONNS, B.WARM, lua)
    raw = {name: [] for name, _, _ in ROUTES}
    for rnd in range(B.ROUNDS):
        # The order turns by one route each round, so no route always runs first (or
        # right after another) and drift within a round does not favour one of them.
        turn = rnd % len(ROUTES)
        for name, path, _ in ROUTES[turn:] + ROUTES[:turn]:
            r = measure(peer, redis, path, B.DUR, lua)
            raw[name].append(r)
            B.log(f"  round {rnd + 1} {name:18s} {r['rps']:9.0f} req/s  p99 {r['p99_ms']} ms  "
                  f"cpu {r['cpu_us_per_req']:.2f} us/req  redis {r['redis_cpu_us_per_req']:.2f} us/req  "
                  f"non2xx {r['non2xx']}")
    med = {}
    for name, rs in raw.items():
        med[name] = {k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
                     for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "redis_cpu_us_per_req")}
        med[name]["rps_all"] = [round(r["rps"]) for r in rs]
        med[name]["non2xx"] = sum(r["non2xx"] for r in rs)
        med[name]["socket_errors"] = sum(r["socket_errors"] for r in rs)
    for name, rs in raw.items():
        if name != "no limit":
            med[name]["paired"] = paired_cost(raw["no limit"], rs)
    git = B.subprocess.run(["git", "-C", B.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True).stdout.strip()
    res = {"meta": {"date": B.datetime.datetime.now(B.datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    # Another build (RL_TOLLGATE) is named by its path: HEAD says nothing of it.
                    "tollgate": f"git {git}" if TOLLGATE == B.TOLLGATE else f"{TOLLGATE} (RL_TOLLGATE)",
                    "redis": B.version(["redis-server", "--version"]),
                    "duration_s": B.DUR, "rounds": B.ROUNDS, "loadavg_start": load0,
                    "redis_core": int(os.environ.get("RL_REDIS_CORE", "1")),
                    "loadavg_end": open("/proc/loadavg").read().split()[:3]},
           "median": med, "raw": raw}
    json.dump(res, open(os.path.join(B.OUT, "ratelimit.json"), "w"), indent=1)
    text = section(res)
    write_results_md(text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        B.stop_all()
