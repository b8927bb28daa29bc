"""Process-wide settings of the Monte Carlo commands (issue 14, ``symbnmf._process``): one XLA CPU
device per core for ``symbnmf simulate`` (the user's XLA_FLAGS and SYMBNMF_HOST_DEVICES win), the
same numbers whatever the device count, and malloc's fixed mmap threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from symbnmf import _process


def test_host_devices_from_environment(monkeypatch):
    monkeypatch.setenv(_process.HOST_DEVICES_ENV, "3")
    assert _process.host_devices() == 3
    for bad in ("", "zero", "0", "-2"):
        monkeypatch.setenv(_process.HOST_DEVICES_ENV, bad)
        assert _process.host_devices() == min(_process.usable_cores(), _process.MAX_HOST_DEVICES)


def test_use_every_core_respects_jax_and_user_flags(monkeypatch):
    monkeypatch.setenv(_process.HOST_DEVICES_ENV, "3")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", object()))
    assert not _process.use_every_core()  # JAX imported: the host platform is fixed
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=5 --xla_foo=1")
    assert not _process.use_every_core()  # the user's count wins
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=5 --xla_foo=1"
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    assert _process.use_every_core()
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=3"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(_process.HOST_DEVICES_ENV, "1")
    assert not _process.use_every_core()  # one device: nothing to ask for
    assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_return_large_blocks_sets_the_threshold():
    assert _process.return_large_blocks()


def _simulate(tmp_path, *argv: str, **env_extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _process.HOST_DEVICES_ENV)}
    env.update(SYMBNMF_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", **env_extra)
    sizes = list(argv) or ["-B", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "symbnmf", "simulate", "relu", *sizes, "-N", "64", "-L", "6", "-K", "8", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_simulate_uses_one_device_per_core_with_the_same_numbers(tmp_path):
    two = _simulate(tmp_path, SYMBNMF_HOST_DEVICES="2")
    one = _simulate(tmp_path, SYMBNMF_HOST_DEVICES="1")
    user = _simulate(tmp_path, SYMBNMF_HOST_DEVICES="2", XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert (two["devices"], one["devices"], user["devices"]) == (2, 1, 3)
    for key in ("gradient_rate", "weight_gradient_rate"):
        for other in (one, user):
            assert two[key]["measured"] == pytest.approx(other[key]["measured"], rel=1e-6)
            assert two[key]["stderr"] == pytest.approx(other[key]["stderr"], rel=1e-4)
    assert two["fixed_point"]["offdiag"]["measured"] == pytest.approx(
        one["fixed_point"]["offdiag"]["measured"], rel=1e-6
    )


PRELOAD_CHILD = """
import json, sys
from symbnmf._process import preload_lapack
ok = preload_lapack()
import jax, jax.numpy as jnp, numpy as np
from symbnmf.fast._compile_cache import init_runtime
init_runtime()
w = jax.jit(jnp.linalg.eigh)(np.diag([3.0, 1.0, 2.0]))[0]
before = "scipy.linalg" in sys.modules
from scipy.linalg import cython_lapack
import scipy.linalg
print(json.dumps({"ok": ok, "before": before, "w": [float(v) for v in w],
                  "same": cython_lapack is sys.modules["scipy.linalg.cython_lapack"],
                  "eigh": scipy.linalg.eigh(np.diag([2.0, 1.0]))[0].tolist()}))
"""


def test_preload_lapack_serves_jax_without_scipy_linalg():
    """SciPy's LAPACK capsules loaded alone are what jaxlib needs: JAX's eigh runs and
    scipy.linalg was never imported; importing it afterwards still works and finds the same module."""
    proc = subprocess.run([sys.executable, "-c", PRELOAD_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"ok": True, "before": False, "w": [1.0, 2.0, 3.0], "same": True, "eigh": [1.0, 2.0]}


def test_large_batches_and_dense_layers_keep_one_device(tmp_path):
    """From B = EVERY_CORE_MAX_BATCH on (and for dense layers) one device already uses every core;
    simulate does not ask for more."""
    from symbnmf.cli.simulate import EVERY_CORE_MAX_BATCH

    big = _simulate(tmp_path, "-B", str(EVERY_CORE_MAX_BATCH), SYMBNMF_HOST_DEVICES="2")
    dense = _simulate(tmp_path, "-B", "4", "--method", "dense", SYMBNMF_HOST_DEVICES="2")
    assert big["devices"] == 1 and dense["devices"] == 1
