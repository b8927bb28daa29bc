"""JAX's persistent compilation cache (issue 14): the same simulation run twice in fresh
processes compiles on the first run and only loads from the cache on the second; the cache lives
under ``SYMBNMF_CACHE_DIR``; ``SYMBNMF_NO_COMPILE_CACHE=1`` turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json
from jax import monitoring
counts = {}
monitoring.register_event_listener(lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
from symbnmf.montecarlo.networks import simulate
r = simulate("relu", 4, 8, 3, 3, theory=False)
print(json.dumps({"counts": counts, "grad_x": r.grad_x.tolist()}))
"""

MISS, HIT = "/jax/compilation_cache/cache_misses", "/jax/compilation_cache/cache_hits"


def _run(env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _files(path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs}


def test_second_process_compiles_nothing(tmp_path):
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path))
    env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
    first = _run(env)
    files = _files(tmp_path / "jax")
    assert first["counts"].get(MISS, 0) >= 1 and files
    second = _run(env)
    assert second["counts"].get(MISS, 0) == 0 and second["counts"].get(HIT, 0) >= 1, second["counts"]
    assert _files(tmp_path / "jax") == files
    assert second["grad_x"] == first["grad_x"]


def test_opt_out(tmp_path):
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path), SYMBNMF_NO_COMPILE_CACHE="1")
    out = _run(env)
    assert out["counts"].get(HIT, 0) == 0 and not (tmp_path / "jax").exists()
