"""Cold and warm time to derive every identity + ReLU quantity (closed forms in B, limits).

Cold: a fresh Python process with an empty on-disk cache (imports included, measured inside the
process from just before ``import symbnmf``). Warm: a second fresh process reading the cache.
Goal (issue 2): cold <= 10 s on 2 cores. Prints measured seconds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import symbnmf
t1 = time.perf_counter()
out = {}
for act in ("identity", "relu"):
    s = time.perf_counter()
    d = symbnmf.derive(act)
    out[act] = time.perf_counter() - s
out["import"] = t1 - t0
out["total"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def run(cache: str) -> dict:
    env = {"SYMBNMF_CACHE_DIR": cache, "PATH": "/usr/bin:/bin"}
    import os

    env = dict(os.environ, SYMBNMF_CACHE_DIR=cache)
    env.pop("SYMBNMF_NO_CACHE", None)
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = run(cache)
    result = {"cold_s": cold, "warm_s": warm, "cold_over_warm": cold["total"] / warm["total"], "goal_cold_s": 10.0}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"cold: import {cold['import']:.2f} s, identity {cold['identity']:.2f} s, relu {cold['relu']:.2f} s, total {cold['total']:.2f} s (goal <= 10 s)"
    )
    print(
        f"warm: import {warm['import']:.2f} s, identity {warm['identity']:.3f} s, relu {warm['relu']:.3f} s, total {warm['total']:.2f} s"
    )
    print(f"cold / warm = {result['cold_over_warm']:.1f}x")


if __name__ == "__main__":
    main()
