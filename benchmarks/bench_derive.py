"""Cold and warm time to derive every identity + ReLU quantity (closed forms in B, limits).

Cold: a fresh Python process with an empty on-disk cache (imports included, measured inside the
process from just before ``import symbnmf``). Warm: a second fresh process reading the cache.
Cold and warm runs alternate (cold, warm, cold, warm, ...; ``--repeat`` pairs), each cold one
with its own empty cache; reported are medians and minima of wall time and of CPU time (the
child's user + system time), with the load average.  Goal (issue 2): cold <= 10 s on 2 cores,
judged on the median *CPU* time, which machine load does not inflate the way it inflates wall
time (wall 3.9 s on a quiet machine read 13.9 s on a loaded one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    env = dict(os.environ, SYMBNMF_CACHE_DIR=cache)
    env.pop("SYMBNMF_NO_CACHE", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    out = json.loads(proc.stdout.read().strip().splitlines()[-1])
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("derivation child failed")
    out["cpu"] = ru.ru_utime + ru.ru_stime
    return out


def _stats(rows: list[dict]) -> dict:
    return {
        "median_wall_s": statistics.median(r["total"] for r in rows),
        "min_wall_s": min(r["total"] for r in rows),
        "median_cpu_s": statistics.median(r["cpu"] for r in rows),
        "min_cpu_s": min(r["cpu"] for r in rows),
        "runs": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=3, help="cold/warm pairs (default 3)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cold, warm = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache))
            warm.append(run(cache))
    c, w = _stats(cold), _stats(warm)
    result = {
        "cold": c,
        "warm": w,
        "cold_over_warm_cpu": c["median_cpu_s"] / w["median_cpu_s"],
        "goal_cold_cpu_s": 10.0,
        "goal_met": c["median_cpu_s"] <= 10.0,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.repeat} cold/warm pairs, {os.cpu_count()} CPUs, load average {result['load_average'][0]:.1f}")
    for name, s in (("cold", c), ("warm", w)):
        print(
            f"{name}: wall median {s['median_wall_s']:.2f} s (min {s['min_wall_s']:.2f}), "
            f"CPU median {s['median_cpu_s']:.2f} s (min {s['min_cpu_s']:.2f})"
        )
    print(
        f"cold / warm (CPU) = {result['cold_over_warm_cpu']:.1f}x; goal cold CPU <= 10 s: "
        f"{'met' if result['goal_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
