"""The compilation caches (issue 14): the same simulation run twice in fresh processes compiles
on the first run and only loads the serialized executable on the second (no tracing, no
compilation); a tampered entry is ignored; the caches live under ``SYMBNMF_CACHE_DIR``;
``SYMBNMF_NO_COMPILE_CACHE=1`` turns them off."""

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
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: counts.__setitem__(name, counts.get(name, 0) + 1)
)
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


EXE_HIT, EXE_MISS = "/symbnmf/executable_cache/hit", "/symbnmf/executable_cache/miss"
TRACE, COMPILE = "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration"


def test_second_process_compiles_nothing(tmp_path):
    """The first process compiles and stores the executable; the second loads it and neither
    traces, lowers nor compiles anything (not even a lookup in JAX's own cache)."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path))
    env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
    first = _run(env)
    files = _files(tmp_path / "jax-exe")
    assert first["counts"].get(EXE_MISS, 0) >= 1 and first["counts"].get(COMPILE, 0) >= 1 and files
    second = _run(env)
    c = second["counts"]
    assert c.get(EXE_HIT, 0) >= 1 and c.get(EXE_MISS, 0) == 0, c
    assert c.get(TRACE, 0) == 0 and c.get(COMPILE, 0) == 0 and c.get(MISS, 0) == 0 and c.get(HIT, 0) == 0, c
    assert _files(tmp_path / "jax-exe") == files
    assert second["grad_x"] == first["grad_x"]


def test_tampered_executable_is_not_loaded(tmp_path):
    """An entry whose bytes were changed (or that another user's key signed) is never unpickled:
    the run compiles afresh, gives the same numbers and replaces the entry."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path))
    env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
    first = _run(env)
    (entry,) = (tmp_path / "jax-exe").glob("*.exe")
    blob = bytearray(entry.read_bytes())
    blob[-100] ^= 0xFF
    entry.write_bytes(bytes(blob))
    second = _run(env)
    assert second["counts"].get(EXE_HIT, 0) == 0 and second["counts"].get(EXE_MISS, 0) >= 1, second["counts"]
    assert second["grad_x"] == first["grad_x"]
    third = _run(env)
    assert third["counts"].get(EXE_HIT, 0) >= 1 and third["grad_x"] == first["grad_x"]


def test_opt_out(tmp_path):
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path), SYMBNMF_NO_COMPILE_CACHE="1")
    out = _run(env)
    assert out["counts"].get(HIT, 0) == 0 and out["counts"].get(EXE_HIT, 0) == 0
    assert not (tmp_path / "jax").exists() and not (tmp_path / "jax-exe").exists()


KERNEL_CHILD = """
import json, sys
from jax import monitoring
counts = {}
monitoring.register_event_listener(lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
from symbnmf.cli.main import main
rc = main(["kernel", "relu", "--inputs", sys.argv[1], "--depth", "2", "--json"])
print(json.dumps({"rc": rc, "counts": counts}))
"""


def test_kernel_command_compiles_once(tmp_path):
    """``symbnmf kernel`` (and dynamics, trainability) use JAX's persistent cache too: the second
    process loads every program (hits, no misses)."""
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((8, 5)))
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", KERNEL_CHILD, str(x)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0]["rc"] == runs[1]["rc"] == 0
    assert runs[0]["counts"].get(MISS, 0) >= 1
    assert runs[1]["counts"].get(MISS, 0) == 0 and runs[1]["counts"].get(HIT, 0) >= 1, runs[1]["counts"]


BREAK_CHILD = """
# Store, under the key of the CHILD run's program, an executable that JAX read back from its own
# persistent cache: such an executable serializes without its compiled kernels (XLA then reports
# "NOT_FOUND: Function ... not found" when it runs), the failure _load_or_compile avoids.
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from symbnmf.fast import _compile_cache as cc
from symbnmf.montecarlo import networks, run
cc.enable_compilation_cache()
from symbnmf._activations import get_activation
key, phi = networks._jax_phi(get_activation("relu"))
cfg = networks._net_config(key, 8, 4, 3, 5, "fast", "gaussian", "float32", 1.0, 0.0, 0.0, 0.0, "fixed_point", True, False)
devs = tuple(jax.devices())
plan = run.plan_chunks(cfg, 3, devices=len(devs))
sharding = NamedSharding(Mesh(np.array(devs), ("nets",)), PartitionSpec("nets"))
spec = jax.ShapeDtypeStruct((plan.chunk,), np.int32, sharding=sharding)
fn = run._compile(run._compiled(plan.cfg, phi).lower(spec, np.uint32(0)))  # through JAX's cache
assert cc.store_executable(run._program_key(plan.cfg, plan.chunk, devs), fn)
"""


def test_broken_stored_executable_heals(tmp_path):
    """An authentic entry that cannot run (an executable JAX had read back from its own cache,
    stored by hand here) is dropped and compiled afresh on its first use, with the right numbers;
    the next run loads the healthy replacement."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path))
    env.pop("SYMBNMF_NO_COMPILE_CACHE", None)
    good = _run(dict(env, SYMBNMF_CACHE_DIR=str(tmp_path / "reference")))
    for _ in range(2):  # the first fills JAX's cache, the second stores what JAX read back from it
        proc = subprocess.run([sys.executable, "-c", BREAK_CHILD], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    healed = _run(env)
    c = healed["counts"]
    assert c.get("/symbnmf/executable_cache/broken", 0) == 1 and c.get(EXE_MISS, 0) >= 1, c
    assert healed["grad_x"] == good["grad_x"]
    again = _run(env)
    assert again["counts"].get(EXE_HIT, 0) >= 1 and "/symbnmf/executable_cache/broken" not in again["counts"]
    assert again["grad_x"] == good["grad_x"]
