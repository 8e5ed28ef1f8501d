#!/usr/bin/env python3
"""Writes bench/RESULTS.md from bench/out/results.json (+ bench/out/micro.txt).

Run alone to re-render: `bench/out/venv/bin/python bench/report.py`.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def f(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def ratio(a, b):
    return a / b if a and b else None


def table(w, base_names=("HAProxy", "nginx direct")):
    med = w["median"]
    hap = med.get("HAProxy", {})
    direct = med.get("nginx direct", {})
    rows = ["| peer | req/s (median) | runs req/s | p50 ms | p99 ms | server CPU µs/req | upstream CPU µs/req "
            "| req/s vs HAProxy | CPU/req vs HAProxy | req/s vs direct |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in w["peers"]:
        m = med[name]
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            f"**{name}**" if name.startswith("tollgate") else name,
            f(m["rps"]), " / ".join(f(x) for x in m["rps_all"]),
            f(m["p50_ms"], 2), f(m["p99_ms"], 2), f(m["cpu_us_per_req"], 1),
            f(m.get("upstream_cpu_us_per_req"), 1) if not name.startswith("nginx") else "(is the upstream)",
            f(ratio(m["rps"], hap.get("rps")), 2) + "×" if hap and name != "HAProxy" else "–",
            f(ratio(m["cpu_us_per_req"], hap.get("cpu_us_per_req")), 2) + "×" if hap and name != "HAProxy" else "–",
            f(ratio(m["rps"], direct.get("rps")), 2) + "×" if direct and name != "nginx direct" else "–"))
    bad = [f"{n}: {m['non2xx']} non-2xx, {m['socket_errors']} socket errors, wrapped {m['wrapped']}"
           for n, m in med.items() if m["non2xx"] or m["socket_errors"] or m["wrapped"]]
    if bad:
        rows.append("")
        rows.append("Errors during the runs (they make the numbers suspect): " + "; ".join(bad))
    return "\n".join(rows)


def get(res, key, peer, field="rps"):
    try:
        return res["workloads"][key]["median"][peer][field]
    except KeyError:
        return None


def targets(res, T):
    out = []

    def add(name, target, value, ok, evidence=""):
        out.append((name, target, value, "met" if ok else ("not met" if ok is False else "not measured"),
                    evidence))

    def r(key, a, b, field="rps"):
        return ratio(get(res, key, a, field), get(res, key, b, field))

    v = r("plain", "tollgate", "HAProxy")
    add("plain proxy throughput vs HAProxy", f"≥ {T['plain_vs_haproxy']:.2f}×", f(v, 2) + "×" if v else "–",
        None if v is None else v >= T["plain_vs_haproxy"],
        "CPU/req ratio {}×".format(f(r("plain", "tollgate", "HAProxy", "cpu_us_per_req"), 2)))
    v = r("plain", "tollgate", "HAProxy", "cpu_us_per_req")
    add("plain proxy server CPU µs/request vs HAProxy (lower is better)",
        f"≤ {T.get('plain_cpu_vs_haproxy', 1.0):.2f}×", f(v, 2) + "×" if v else "–",
        None if v is None else v <= T.get("plain_cpu_vs_haproxy", 1.0),
        "{} vs {} µs".format(f(get(res, "plain", "tollgate", "cpu_us_per_req"), 1),
                             f(get(res, "plain", "HAProxy", "cpu_us_per_req"), 1)))
    v = r("jwt", "tollgate", "HAProxy")
    add("RS256 + scope (1000 hot tokens) vs HAProxy jwt_verify", f"≥ {T['jwt_vs_haproxy']:.2f}×",
        f(v, 2) + "×" if v else "–", None if v is None else v >= T["jwt_vs_haproxy"])
    a, b = get(res, "jwt", "tollgate"), get(res, "plain", "tollgate")
    v = ratio(a, b)
    add("hot-token auth overhead (tollgate JWT / tollgate plain)", f"≥ {T['jwt_vs_plain']:.2f}×",
        f(v, 2) + "×" if v else "–", None if v is None else v >= T["jwt_vs_plain"],
        "CPU/req {} vs {} µs".format(f(get(res, "jwt", "tollgate", "cpu_us_per_req"), 1),
                                    f(get(res, "plain", "tollgate", "cpu_us_per_req"), 1)))
    v = r("miss", "tollgate", "HAProxy")
    add("every token distinct vs HAProxy", f"≥ {T['miss_vs_haproxy']:.2f}×", f(v, 2) + "×" if v else "–",
        None if v is None else v >= T["miss_vs_haproxy"],
        "CPU/req {} vs {} µs".format(f(get(res, "miss", "tollgate", "cpu_us_per_req"), 1),
                                    f(get(res, "miss", "HAProxy", "cpu_us_per_req"), 1)))
    for key, label in (("plain", "plain proxy"), ("jwt", "RS256 + scope, hot tokens")):
        v = r(key, "tollgate", "HAProxy", "p99_ms")
        add(f"p99 latency, {label}, vs HAProxy (lower is better)", f"≤ {T['p99_vs_haproxy']:.2f}×",
            f(v, 2) + "×" if v else "–", None if v is None else v <= T["p99_vs_haproxy"],
            "p99 {} vs {} ms".format(f(get(res, key, "tollgate", "p99_ms"), 2), f(get(res, key, "HAProxy", "p99_ms"), 2)))
    v = r("upload", "tollgate", "HAProxy")
    add("1 MiB POST vs HAProxy", f"≥ {T['upload_vs_haproxy']:.2f}×", f(v, 2) + "×" if v else "–",
        None if v is None else v >= T["upload_vs_haproxy"])
    v = r("h2", "tollgate", "HAProxy")
    add("HTTP/2 vs HAProxy", f"≥ {T['h2_vs_haproxy']:.2f}×", f(v, 2) + "×" if v else "–",
        None if v is None else v >= T["h2_vs_haproxy"])
    idle = res["workloads"].get("idle", {}).get("result", {}).get("tollgate")
    if idle:
        v = idle["kib_per_conn"]
        add("RSS per idle keep-alive connection", f"≤ {T['idle_kib_per_conn']:.0f} KiB", f"{v:.1f} KiB",
            v <= T["idle_kib_per_conn"] and idle.get("opened") == idle.get("requested"),
            f"{idle.get('opened')} of {idle.get('requested')} opened, {idle.get('still_open_after_hold')} "
            f"still open after {idle.get('hold_seconds')} s")
    else:
        add("RSS per idle keep-alive connection", f"≤ {T['idle_kib_per_conn']:.0f} KiB", "–", None)
    v = r("routes", "tollgate 10k", "tollgate")
    add("10k routes throughput within 5% of 10 routes", f"≥ {1 - T['routes_10k_within']:.2f}×",
        f(v, 3) + "×" if v else "–", None if v is None else v >= 1 - T["routes_10k_within"])
    rl = res["workloads"].get("routes", {}).get("reload_s_10k")
    if rl:
        m = sorted(rl)[len(rl) // 2]
        add("reload of the 10k-route config", f"≤ {T['reload_10k_seconds']:.1f} s", f"{m:.2f} s (median)",
            m <= T["reload_10k_seconds"], "runs: " + ", ".join(f"{x:.2f}" for x in rl) + " s")
    else:
        add("reload of the 10k-route config", f"≤ {T['reload_10k_seconds']:.1f} s", "–", None)
    # Two-core mode (issue 18): tollgate 2 workers vs HAProxy nbthread 2, all on both cores.
    v = r("plain2", "tollgate", "HAProxy")
    add("two cores: plain proxy vs HAProxy (nbthread 2)", f"≥ {T.get('plain2_vs_haproxy', 1.0):.2f}×",
        f(v, 2) + "×" if v else "–", None if v is None else v >= T.get("plain2_vs_haproxy", 1.0),
        "CPU/req ratio {}×".format(f(r("plain2", "tollgate", "HAProxy", "cpu_us_per_req"), 2)))
    v = r("jwt2", "tollgate", "HAProxy")
    add("two cores: RS256 + scope (hot tokens) vs HAProxy (nbthread 2)", f"≥ {T.get('jwt2_vs_haproxy', 2.2):.2f}×",
        f(v, 2) + "×" if v else "–", None if v is None else v >= T.get("jwt2_vs_haproxy", 2.2))
    for key1, key2, label in (("plain", "plain2", "plain"), ("jwt", "jwt2", "JWT")):
        v = ratio(get(res, key2, "tollgate"), get(res, key1, "tollgate"))
        add(f"tollgate's scaling, {label}: two-core req/s ÷ one-core req/s", f"≥ {T.get('scaling_2_over_1', 1.8):.2f}×",
            f(v, 2) + "×" if v else "–", None if v is None else v >= T.get("scaling_2_over_1", 1.8),
            "HAProxy's own: {}× (the load generator shares the two cores in two-core mode)".format(
                f(ratio(get(res, key2, "HAProxy"), get(res, key1, "HAProxy")), 2)))
    rows = ["| target | wanted | measured | status | evidence |", "|---|---|---|---|---|"]
    rows += [f"| {a} | {b} | {c} | **{d}** | {e} |" for a, b, c, d, e in out]
    return "\n".join(rows)


def micro_section(path):
    if not os.path.exists(path):
        return "_Criterion micro-benchmarks were not run (see bench/README.md: `cargo bench --bench hot_path`)._"
    rows = ["| benchmark | time (median estimate) | range |", "|---|---:|---|"]
    text = open(path).read()
    for m in re.finditer(r"^(\S[^\n]*?)\s*\n?\s+time:\s+\[([^\]]+)\]", text, re.M):
        name = m.group(1).strip()
        lo, mid, hi = [x.strip() for x in re.split(r"\s{2,}|(?<=s) (?=\d)", m.group(2).strip()) if x.strip()][:3]
        rows.append(f"| `{name}` | {mid} | {lo} … {hi} |")
    return "\n".join(rows) if len(rows) > 2 else "```\n" + text[-4000:] + "\n```"


def write(res, T, path, micro_path):
    meta = res["meta"]
    W = res["workloads"]
    L = []
    L.append("# tollgate benchmark results\n")
    L.append(f"Produced by `bench/run.sh` on {meta.get('date')}. **Machine**: {meta.get('cpu')}, "
             f"{meta.get('nproc')} cores, Linux {meta.get('kernel')}, load average at start "
             f"{' '.join(meta.get('loadavg_start', []))}, at end {' '.join(meta.get('loadavg_end', []))} "
             "(the machine is shared: absolute numbers are noisy, the ratios were measured side by side).\n")
    L.append(f"**Versions**: tollgate {meta.get('tollgate')} (release build); {meta.get('haproxy')}; "
             f"{meta.get('nginx')}; Envoy: {meta.get('envoy')}; {meta.get('wrk')}; {meta.get('h2load')}.\n")
    L.append(f"**Method**: every server on core 0 (`taskset -c 0`, one worker: `TOKIO_WORKER_THREADS=1`, "
             f"`nbthread 1`, `worker_processes 1`, Envoy `--concurrency 1`), load generator on core 1. "
             f"Per workload: a {meta.get('warmup_s')} s warm-up per peer, then {meta.get('rounds')} rounds of "
             f"{meta.get('duration_s')} s runs interleaved A B C A B C; medians. Server CPU µs/request = "
             "(utime+stime delta from /proc/<pid>/stat, all threads, nginx master+worker) / requests. "
             "The upstream (nginx) shares core 0 with the proxy under test, so proxy throughput is also "
             "bounded by the upstream's CPU; CPU µs/request is the cleaner comparison. The two-core "
             "workloads (`plain2`, `jwt2`) run a second set of servers on both cores (tollgate "
             "`TOKIO_WORKER_THREADS=2`, HAProxy `nbthread 2`, an nginx upstream with 2 workers) with wrk "
             "(2 threads) on the same two cores at the same priority.\n")
    if res.get("notes"):
        L.append("**Notes**: " + " ".join(res["notes"]) + "\n")
    L.append("## Targets\n")
    L.append("The targets (issue 7, raised by issue 18), as `bench/bench.py` (`TARGETS`) checks them. Ratios are tollgate ÷ "
             "peer from the same run. The reload target (100 ms) is for compiling the config; the figure "
             "measured is the whole `POST /admin/reload` (read, validate, compile, swap).\n")
    L.append(targets(res, T) + "\n")
    L.append("## Pre-flight checks (abort if any fails)\n")
    L.append("| peer | case | wanted | got |\n|---|---|---:|---:|")
    for c in res.get("checks", []):
        L.append(f"| {c['peer']} | {c['case']} | {c['want']} | {c['got']}{'' if c['ok'] else ' **FAIL**'} |")
    L.append("")
    for key in ("plain", "jwt", "miss", "upload", "h2", "plain2", "jwt2", "routes"):
        w = W.get(key)
        if not w or not w.get("median"):
            continue
        L.append(f"## {w['title']}\n")
        L.append(table(w) + "\n")
        if w.get("notes"):
            L.append(w["notes"] + "\n")
        if key == "routes":
            if w.get("reload_s_10k"):
                L.append("`POST /admin/reload` wall time, 10k routes: " +
                         ", ".join(f"{x:.3f}" for x in w["reload_s_10k"]) + " s; 10 routes: " +
                         ", ".join(f"{x:.3f}" for x in w.get("reload_s_10", [])) + " s. Start to ready with "
                         f"10k routes: {w.get('startup_to_ready_s_10k', 0):.2f} s. RSS: " +
                         ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in w.get("rss_kib", {}).items()) + ".\n")
    idle = W.get("idle")
    if idle:
        L.append(f"## {idle['title']}\n")
        L.append("A Python asyncio client (core 1) opens the connections, sends one request on each, "
                 "holds them idle for 12 s, then counts how many the server kept open.\n")
        L.append("| peer | RSS before | RSS with idle conns | RSS after close | KiB per conn | opened | "
                 "still open after hold | client errors |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in idle["result"].items():
            L.append(f"| {name} | {r['rss_before_kib'] / 1024:.1f} MiB | "
                     f"{(r['rss_with_idle_kib'] or 0) / 1024:.1f} MiB | {r['rss_after_close_kib'] / 1024:.1f} MiB | "
                     f"{r['kib_per_conn']:.1f} | {r.get('opened')} | {r.get('still_open_after_hold')} | "
                     f"{r.get('errors')} {r.get('first_errors') or ''} |")
        L.append("")
    if res.get("perf"):
        L.append("## Where tollgate's CPU goes (perf record, extra unmeasured runs)\n")
        for k, lines in res["perf"].items():
            if lines:
                L.append(f"`{k}` (self time, symbols ≥ 1.5%):\n\n```\n" + "\n".join(lines) + "\n```\n")
    # The rate-limit section is measured by bench/ratelimit.py on its own: kept as it is.
    begin, end = "<!-- ratelimit:begin -->", "<!-- ratelimit:end -->"
    old = open(path).read() if os.path.exists(path) else ""
    if begin in old and end in old:
        L.append(old[old.index(begin):old.index(end) + len(end)] + "\n")
    L.append("## Criterion micro-benchmarks (`cargo bench --bench hot_path`)\n")
    L.append(micro_section(micro_path) + "\n")
    analysis = os.path.join(HERE, "ANALYSIS.md")
    if os.path.exists(analysis):
        L.append(open(analysis).read())
    open(path, "w").write("\n".join(L))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import bench
    out = os.path.join(HERE, "out")
    write(json.load(open(os.path.join(out, "results.json"))), bench.TARGETS, os.path.join(HERE, "RESULTS.md"),
          os.path.join(out, "micro.txt"))
