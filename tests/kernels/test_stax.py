"""stax-like API (issue 11): infinite-width NNGP / NTK against the empirical kernels of its own apply_fn.

Finite networks of width 1024 built from the same layer description, many seeds; the empirical NNGP
is the read-out covariance given the last hidden layer, the empirical NTK comes from parameter
Jacobians (``jax.jacrev``). Agreement within a few standard errors over networks (the O(1/N)
finite-width bias is far below them at this width).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symbnmf._errors import ActivationError
from symbnmf.kernels import KernelError, batchnorm_nngp, batchnorm_ntk, stax


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def inputs(B: int, d: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, d))


def empirical(net, x, width, nets, seed=0):
    init_fn, apply_fn, _ = net
    f = lambda p, x: apply_fn(p, x)[:, 0]
    nngp, ntk = [], []
    for k in jax.random.split(jax.random.PRNGKey(seed), nets):
        _, params = init_fn(k, x.shape)
        hidden = stax.serial(*net.spec.args["layers"][:-1])[1](params[:-1], x)
        W_std = net.spec.args["layers"][-1].spec.args["W_std"]
        b_std = net.spec.args["layers"][-1].spec.args["b_std"]
        nngp.append(W_std**2 * hidden @ hidden.T / hidden.shape[1] + b_std**2)
        J = jax.jacrev(f)(params, x)
        leaves = [j.reshape(x.shape[0], -1) for j in jax.tree_util.tree_leaves(J)]
        ntk.append(sum(l @ l.T for l in leaves))
    out = {}
    for name, vals in (("nngp", nngp), ("ntk", ntk)):
        v = np.stack([np.asarray(a) for a in vals])
        out[name] = (v.mean(0), v.std(0, ddof=1) / np.sqrt(nets))
    return out


@pytest.mark.parametrize(
    ("act", "eps", "B"),
    [
        ("relu", 0.0, 6),
        # B = 4 needs ε > 0 here: the BN Jacobian's B/‖Gh‖² has infinite variance for B <= 5 (theory.md),
        # so at ε = 0 the standard error over networks is not trustworthy
        pytest.param("leaky_relu(0.2)", 0.5, 4, marks=pytest.mark.slow),
        pytest.param("identity", 0.0, 7, marks=pytest.mark.slow),
    ],
)
def test_kernel_matches_finite_networks(act, eps, B):
    width = 1024
    net = stax.serial(
        stax.Dense(width, 1.0, 0.1),
        stax.BatchNorm(eps),
        stax.Activation(act),
        stax.Dense(width, 1.2, 0.2),
        stax.BatchNorm(eps),
        stax.Activation(act),
        stax.Dense(1, 1.0, 0.3),
    )
    x = inputs(B)
    k = net[2](x)
    emp = empirical(net, jnp.asarray(x), width, nets=20)
    for name in ("nngp", "ntk"):
        mean, se = emp[name]
        z = (np.asarray(getattr(k, name)) - mean) / se
        assert np.max(np.abs(z)) < 4.5, (name, z)


def test_kernel_fn_conventions_and_fusion():
    B = 6
    x = inputs(B, seed=1)
    net = stax.serial(stax.Dense(8, 1.5, 0.2), stax.BatchNorm(0.01), stax.Relu(), stax.Dense(3, 1.0, 0.0))
    K = net[2](x)
    assert isinstance(K, stax.Kernel)
    assert np.allclose(net[2](x, get="nngp"), K.nngp)
    nngp, ntk = net[2](x, None, ("nngp", "ntk"))
    # by hand: input kernel, Dense, fused BN + relu, Dense
    K0 = 1.5**2 * x @ x.T / x.shape[1] + 0.2**2
    T0 = K0
    V, T = batchnorm_ntk(K0, T0, "relu", eps=0.01)
    assert np.allclose(nngp, V, rtol=1e-13, atol=0)
    assert np.allclose(ntk, np.asarray(T) + np.asarray(V), rtol=1e-13, atol=0)
    # BatchNorm not followed by an activation is BN + identity
    bn = stax.serial(stax.Dense(4), stax.BatchNorm())
    assert np.allclose(bn[2](x, get="nngp"), batchnorm_nngp(x @ x.T / x.shape[1], "identity"), rtol=1e-13)
    # apply_fn shapes
    out_shape, params = net[0](jax.random.PRNGKey(0), x.shape)
    assert out_shape == (B, 3) and net[1](params, x).shape == (B, 3)


def test_bad_layers_and_inputs():
    with pytest.raises(KernelError, match="eps"):
        stax.BatchNorm(-1.0)
    with pytest.raises(KernelError, match="out_dim"):
        stax.Dense(0)
    with pytest.raises(ActivationError, match="BatchNorm"):  # tanh on Gaussian inputs: refused when built
        stax.serial(stax.Dense(4), stax.Activation("tanh"))
    net = stax.serial(stax.Dense(4), stax.BatchNorm(), stax.Relu())
    with pytest.raises(KernelError, match="get"):
        net[2](inputs(5), get="foo")
    with pytest.raises(KernelError, match="shape"):
        net[2](np.ones(5))


def test_float32_default_jax_gives_float64_kernels_not_nan():
    """With JAX's default float32, the public kernels still compute in float64 (no silent NaN), and
    a float32 trace gets a clear error (subprocess: x64 is process-wide state)."""
    import subprocess
    import sys

    code = """
import json, numpy as np, jax
assert not jax.config.jax_enable_x64
import symbnmf
from symbnmf.kernels import stax
_, _, kernel_fn = stax.serial(stax.Dense(64), stax.BatchNorm(eps=1e-3), stax.Relu(), stax.Dense(3))
x = np.random.default_rng(0).normal(size=(6, 5))
k = kernel_fn(x, get=("nngp", "ntk"))
try:
    jax.jit(lambda c: symbnmf.batchnorm_nngp(c, "relu"))(np.eye(6))
    err = None
except symbnmf.SymbnmfError as e:
    err = str(e)
print(json.dumps({"dtype": str(k[0].dtype), "nngp": k[0].tolist(), "ntk": k[1].tolist(), "err": err}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["dtype"] == "float64"
    assert "jax_enable_x64" in res["err"]
    _, _, kernel_fn = stax.serial(stax.Dense(64), stax.BatchNorm(eps=1e-3), stax.Relu(), stax.Dense(3))
    x = np.random.default_rng(0).normal(size=(6, 5))
    k = kernel_fn(x, get=("nngp", "ntk"))
    np.testing.assert_allclose(res["nngp"], np.asarray(k[0]), rtol=1e-12)
    np.testing.assert_allclose(res["ntk"], np.asarray(k[1]), rtol=1e-12)
