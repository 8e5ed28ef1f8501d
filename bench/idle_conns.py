#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections, sends one request on each, then holds them idle.

usage: idle_conns.py HOST PORT N HOLD_SECONDS DEADLINE_SECONDS PATH

Prints `READY <open>` once every connection has had its response, then, after HOLD
seconds, `RESULT {json}` with how many connections the server still keeps open.
Bounded: everything stops after DEADLINE seconds.
"""
import asyncio
import json
import resource
import sys
import time


async def one(host, port, path, sem, conns, errors):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head[:40].decode(errors="replace"))
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001 - counted, reported
            errors.append(type(e).__name__)


async def still_open(r):
    try:
        data = await asyncio.wait_for(r.read(1), 0.05)
        return data != b""  # b"" = EOF: the server closed it
    except asyncio.TimeoutError:
        return True
    except Exception:  # noqa: BLE001
        return False


async def main():
    host, port, n, hold, deadline, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
    t0 = time.monotonic()
    sem = asyncio.Semaphore(256)
    conns, errors = [], []
    await asyncio.wait_for(
        asyncio.gather(*(one(host, port, path, sem, conns, errors) for _ in range(n))),
        max(1.0, deadline - hold - 5),
    )
    opened = time.monotonic() - t0
    print(f"READY {len(conns)}", flush=True)
    await asyncio.sleep(hold)
    alive = 0
    for i in range(0, len(conns), 1000):
        res = await asyncio.gather(*(still_open(r) for r, _ in conns[i:i + 1000]))
        alive += sum(res)
    print("RESULT " + json.dumps({
        "requested": n, "opened": len(conns), "open_seconds": round(opened, 2),
        "hold_seconds": hold, "still_open_after_hold": alive,
        "errors": len(errors), "first_errors": errors[:5],
    }), flush=True)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), float(sys.argv[5])))
    except asyncio.TimeoutError:
        print('RESULT {"error": "deadline"}', flush=True)
