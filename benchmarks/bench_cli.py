"""Whole-process benchmarks of the command line (issue 14), interleaved, with CPU time and peak RSS.

Every case is a fresh process, timed from outside (wall clock; user+system CPU time and peak
resident memory of the child from ``os.wait4``).  Cases run in rounds A B C A B C ... so that
machine-load drifts hit all of them alike; reported are the median and min wall time, the median
CPU time and the largest peak RSS.  Goals are judged on ratios to a baseline measured in the
same rounds, plus the memory limits:

* ``simulate warm``: ``symbnmf simulate relu -B 8 --width 512 --depth 50 --networks 100 --json``
  with the JAX compilation cache filled, against ``numpy low-rank`` (``lowrank_numpy.py``, the
  same exact sampler in numpy): goal ratio < 1;
* ``simulate cold``: the same with ``SYMBNMF_NO_COMPILE_CACHE=1`` (compiles from scratch): goal
  ratio < 2; peak RSS of the simulate example: goal <= 300 MiB;
* ``help``: ``symbnmf --help``; ``eval --fast``: ``symbnmf eval gelu -B 4..64 --fast`` (61 B;
  goal 1.5 s on a quiet machine: an absolute goal, so also reported as a ratio to ``help``);
* ``--memory``: ``simulate relu -B 128 -N 256 -L 200 -K 100`` once: peak RSS, goal <= 1.5 GB;
* ``--check`` / ``--run``: ``symbnmf check`` (goal 8 s) and ``symbnmf run`` (goal 60 s cold) once.

The derivation cache is warmed first (one untimed run of each case); all cases share a
temporary ``SYMBNMF_CACHE_DIR``.

    python benchmarks/bench_cli.py [--repeat 3] [--memory] [--check] [--run] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
SIM = ["-m", "symbnmf", "simulate", "relu", "-B", "8", "--width", "512", "--depth", "50", "--networks", "100", "--json"]


def measure(argv: list[str], env: dict) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # check/run exit 1 when a verdict fails: still timed
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err[-1500:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--memory", action="store_true", help="also the N=256 B=128 L=200 K=100 memory case")
    p.add_argument("--check", action="store_true", help="also `symbnmf check` (once)")
    p.add_argument("--run", action="store_true", help="also `symbnmf run` cold (once; minutes)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SYMBNMF_CACHE_DIR=os.path.join(tmp, "cache"))
        env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
        cold = dict(env, SYMBNMF_NO_COMPILE_CACHE="1")
        bs = [str(b) for b in range(4, 65)]
        cases = {
            "numpy low-rank": ([PY, os.path.join(HERE, "lowrank_numpy.py"), "-B", "8", "-N", "512", "-L", "50"], env),
            "simulate warm": ([PY, *SIM], env),
            "simulate cold": ([PY, *SIM], cold),
            "help": ([PY, "-m", "symbnmf", "--help"], env),
            "eval --fast": ([PY, "-m", "symbnmf", "eval", "gelu", "-B", *bs, "--fast", "--json"], env),
        }
        for args, e in cases.values():  # warm the derivation, rule and compilation caches
            measure(args, e)
        rows: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(a.repeat):
            for name, (args, e) in cases.items():
                rows[name].append(measure(args, e))
        once = {}
        if a.memory:
            big = [PY, "-m", "symbnmf", "simulate", "relu", "-B", "128", "-N", "256", "-L", "200", "-K", "100"]
            once["simulate N=256 B=128 L=200 K=100"] = measure([*big, "--json"], env)
        if a.check:
            once["check"] = measure([PY, "-m", "symbnmf", "check", "--json"], env)
        if a.run:
            out = os.path.join(tmp, "run-out")
            fresh = dict(env, SYMBNMF_CACHE_DIR=os.path.join(tmp, "cold-cache"))
            once["run (cold caches)"] = measure([PY, "-m", "symbnmf", "run", "--out", out, "--json"], fresh)
    summary: dict = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "repeat": a.repeat, "cases": {}}
    for name, rs in rows.items():
        summary["cases"][name] = {
            "median_wall_s": statistics.median(r["wall"] for r in rs),
            "min_wall_s": min(r["wall"] for r in rs),
            "median_cpu_s": statistics.median(r["cpu"] for r in rs),
            "peak_rss_mib": max(r["rss"] for r in rs) / 2**20,
        }
    for name, r in once.items():
        summary["cases"][name] = {
            "median_wall_s": r["wall"],
            "min_wall_s": r["wall"],
            "median_cpu_s": r["cpu"],
            "peak_rss_mib": r["rss"] / 2**20,
        }
    c = summary["cases"]
    base = c["numpy low-rank"]
    summary["ratios"] = {
        "simulate warm / numpy low-rank (goal < 1)": c["simulate warm"]["median_wall_s"] / base["median_wall_s"],
        "simulate cold / numpy low-rank (goal < 2)": c["simulate cold"]["median_wall_s"] / base["median_wall_s"],
        "simulate warm / numpy low-rank, CPU": c["simulate warm"]["median_cpu_s"] / base["median_cpu_s"],
        "simulate cold / numpy low-rank, CPU": c["simulate cold"]["median_cpu_s"] / base["median_cpu_s"],
        "eval --fast / help": c["eval --fast"]["median_wall_s"] / c["help"]["median_wall_s"],
    }
    if a.json:
        print(json.dumps(summary))
        return 0
    print(
        f"whole process, {summary['cpu_count']} CPUs, load average {summary['load_average'][0]:.1f} at the end, "
        f"{a.repeat} interleaved rounds"
    )
    print(f"{'case':34s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s} {'peak MiB':>9s}")
    for name, r in c.items():
        print(
            f"{name:34s} {r['median_wall_s']:9.2f} {r['min_wall_s']:7.2f} {r['median_cpu_s']:7.2f} "
            f"{r['peak_rss_mib']:9.0f}"
        )
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
