"""The networks axis is sharded over all JAX devices: four host devices give the same numbers.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, so the
four-device run happens in a subprocess; the one-device run happens here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from symbnmf.montecarlo.networks import simulate

CONFIG = dict(activation="relu", batch_size=6, width=48, depth=8, networks=10, seed=3, theory=False)

SCRIPT = """
import json, sys, jax
from symbnmf.montecarlo.networks import simulate
cfg = json.loads(sys.argv[1])
assert jax.device_count() == 4, jax.devices()
out = {}
for dtype in ("float32", "float64"):
    r = simulate(**cfg, dtype=dtype)
    out[dtype] = {"grad_x": r.grad_x.tolist(), "stats": r.stats.tolist(), "devices": r.summary["devices"]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CONFIG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_four_devices_match_one_device(four_devices, dtype):
    import jax

    one = simulate(**CONFIG, dtype=dtype, devices=jax.devices()[:1])
    four = four_devices[dtype]
    assert four["devices"] == 4 and one.summary["devices"] == 1
    # 10 networks are padded to 12 for 4 devices; network k's numbers depend only on (seed, k)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.array(four["grad_x"]), one.grad_x, rtol=rtol)
    np.testing.assert_allclose(np.array(four["stats"]), one.stats, rtol=rtol, atol=rtol)


HANG_SCRIPT = """
import json
from symbnmf.montecarlo.networks import simulate
a = simulate("relu", 128, 64, 3, 4, theory=False)
b = simulate("relu", 8, 256, 3, 4, theory=False, method="dense", weights="orthogonal")
print(json.dumps([a.summary["devices"], b.summary["devices"]]))
"""


def test_two_devices_with_large_lapack_calls_do_not_hang():
    """jaxlib's batched eigh/QR kernels split a large batch over XLA's intra-op pool and wait on
    it; with one device per core every pool thread was such a waiting device and the process hung
    (B = 128 eigh, N = 256 QR, two devices). layers.eigh_each/qr_each call LAPACK one matrix at a
    time under vmap; this run must finish (it hung for good before)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", HANG_SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [2, 2]


def test_eigh_each_and_qr_each_match_the_batched_calls():
    import jax
    import jax.numpy as jnp

    from symbnmf.montecarlo.layers import eigh_each, qr_each

    A = jax.random.normal(jax.random.key(0), (3, 6, 6))
    S = A @ jnp.swapaxes(A, -1, -2)
    w, V = jax.vmap(eigh_each)(S)
    w0, V0 = jnp.linalg.eigh(S)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w0), rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(V)), np.abs(np.asarray(V0)), atol=1e-4)
    q, r = jax.vmap(qr_each)(A)
    np.testing.assert_allclose(np.asarray(q @ r), np.asarray(A), atol=1e-5)
    w1, _ = eigh_each(S[0])
    np.testing.assert_allclose(np.asarray(w1), np.asarray(w0[0]), rtol=1e-5)
