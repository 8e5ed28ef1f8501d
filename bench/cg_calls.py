#!/usr/bin/env python3
"""Calls per request into functions whose name matches a pattern, from two callgrind
files of bench/callgrind.sh (CG_KEEP=DIR): (calls(N2) - calls(N1)) / (N2 - N1).

    bench/cg_calls.py DIR/cg.plain.500 DIR/cg.plain.2500 [REGEX ...]

Without a REGEX it counts heap allocations (mimalloc's entry points): the "no
per-request allocation" measure of issue 18, counted without a global-allocator hook
(tollgate forbids unsafe code, which a counting GlobalAlloc would need)."""
import re
import sys
from collections import Counter

# The entry points the `mimalloc` crate calls (one call per allocation). mimalloc 2
# calls its own `mi_heap_malloc*` functions inside those, so they are not counted.
ALLOC = [r"^mi_(malloc|zalloc|calloc|realloc)(_aligned)?$"]


def calls(path, pats):
    names = {}
    per = Counter()
    cfn = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    if line.startswith("cfn="):
                        cfn = names.get(m.group(1))
                else:
                    cfn = line.rstrip("\n").split("=", 1)[1] if line.startswith("cfn=") else cfn
            elif line.startswith("calls=") and cfn is not None:
                n = int(line.split("=", 1)[1].split()[0])
                for p in pats:
                    if re.search(p, cfn):
                        per[cfn] += n
                        break
    return per


def main():
    a, b = sys.argv[1], sys.argv[2]
    pats = sys.argv[3:] or ALLOC
    na = int(re.search(r"\.(\d+)$", a).group(1))
    nb = int(re.search(r"\.(\d+)$", b).group(1))
    ca, cb = calls(a, pats), calls(b, pats)
    total = 0.0
    for name in sorted(set(ca) | set(cb)):
        d = (cb[name] - ca[name]) / (nb - na)
        total += d
        if abs(d) >= 0.05:
            print(f"{d:8.2f}  {name}")
    print(f"{total:8.2f}  total per request")


main()
