"""Cross-batch BN kernels (issue 11, item 3): two batches, each normalised with its own statistics.

NNGP K₁₂ = E[φ(BN h₁) φ(BN h₂)ᵀ] and NTK transport E[J₁ Θ₁₂ J₂ᵀ]: against the one-batch kernels when
the two batches are copies of each other, against explicit joint Monte Carlo (Jacobians by
``jax.jacfwd``, independent of the Laplace/Stein reduction), and, through ``stax``, against the
empirical cross NTK of finite networks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_stax import inputs

from symbnmf._errors import ActivationError
from symbnmf.kernels import KernelError, batchnorm_cross_ntk, batchnorm_nngp, batchnorm_ntk, stax
from symbnmf.kernels.cross import batchnorm_cross_nngp


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def joint_cov(B1: int, B2: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((B1 + B2, B1 + B2 + 2))
    return A @ A.T / (B1 + B2 + 2)


def bn_phi(activation: str, eps: float):
    """φ(BN h) for one batch in plain jnp (biased variance, ε), for jax.jacfwd."""
    a = 0.2 if activation == "leaky_relu(0.2)" else 0.0

    def f(h):
        g = h - jnp.mean(h)
        y = g / jnp.sqrt(jnp.mean(g * g) + eps)
        return jnp.where(y > 0, y, a * y)

    return f


@pytest.mark.parametrize("B", [4, pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_same_batch_twice_is_the_nngp(B, eps):
    """h₂ = h₁ (C = Σ₁₁ = Σ₂₂): the 2-D integral must reproduce the 1-D kernel (the degenerate worst case)."""
    A = np.random.default_rng(B).standard_normal((B, B + 2))
    S = A @ A.T / (B + 2)
    assert rel(batchnorm_cross_nngp(S, S, S, "relu", eps=eps), batchnorm_nngp(S, "relu", eps=eps)) < 1e-12


@pytest.mark.parametrize(
    ("act", "eps", "B"),
    [
        ("relu", 0.1, 4),
        ("leaky_relu(0.2)", 1e-3, 6),
        # ε = 0 with a duplicated batch is the hardest case for the product rule (513 nodes per variable)
        pytest.param("relu", 0.0, 4, marks=pytest.mark.slow),
    ],
)
def test_cross_ntk_of_a_batch_with_itself_is_the_one_batch_ntk(act, eps, B):
    """h₂ = h₁, Θ₁₂ = Θ: E[J₁ΘJ₂ᵀ] = E[JΘJᵀ] of :func:`batchnorm_ntk`, and K₁₂ = V (identity check)."""
    A = np.random.default_rng(B).standard_normal((B, B + 2))
    S = A @ A.T / (B + 2)
    Th = np.random.default_rng(B + 1).standard_normal((B, B))
    Th = Th @ Th.T / B
    V, T = batchnorm_cross_ntk(S, S, S, Th, act, eps=eps)
    V1, T1 = batchnorm_ntk(S, Th, act, eps=eps)
    assert rel(V, V1) < 1e-12
    assert rel(T, T1) < 1e-11


@pytest.mark.parametrize(("B1", "B2"), [(4, 4), (4, 8)])
@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_ntk_against_joint_monte_carlo(B1, B2, act, eps):
    """Random joint covariance and Θ₁₂: 2·10⁵ seeded joint draws of (h₁, h₂), J_k by jax.jacfwd of the
    explicit BN + φ of each batch, the mean of J₁Θ₁₂J₂ᵀ (and of φφᵀ) within 4.5 standard errors."""
    J = joint_cov(B1, B2, seed=10 * B1 + B2)
    Th = np.random.default_rng(B1 * B2).standard_normal((B1, B2))
    V, T = batchnorm_cross_ntk(J[:B1, :B1], J[B1:, B1:], J[:B1, B1:], Th, act, eps=eps)
    n = 200_000
    h = jax.random.normal(jax.random.PRNGKey(B1 + B2), (n, B1 + B2)) @ jnp.asarray(np.linalg.cholesky(J).T)
    f = bn_phi(act, eps)
    h1, h2 = h[:, :B1], h[:, B1:]
    J1, J2 = jax.vmap(jax.jacfwd(f))(h1), jax.vmap(jax.jacfwd(f))(h2)
    for exact, draws in (
        (V, jax.vmap(f)(h1)[:, :, None] * jax.vmap(f)(h2)[:, None, :]),
        (T, J1 @ Th @ J2.transpose(0, 2, 1)),
    ):
        d = np.asarray(draws)
        z = (np.asarray(exact) - d.mean(0)) / (d.std(0, ddof=1) / np.sqrt(n))
        assert np.max(np.abs(z)) < 4.5, z


def test_monte_carlo_path_agrees_with_the_exact_kernel():
    """exact=False (the library's own joint Monte Carlo, explicit Jacobian formula) vs the exact kernel."""
    B1, B2, eps = 4, 5, 0.1
    J = joint_cov(B1, B2, seed=3)
    Th = np.random.default_rng(4).standard_normal((B1, B2))
    args = (J[:B1, :B1], J[B1:, B1:], J[:B1, B1:], Th, "leaky_relu(0.2)")
    V, T = batchnorm_cross_ntk(*args, eps=eps)
    mv, mt = batchnorm_cross_ntk(*args, eps=eps, exact=False, samples=200_000, key=jax.random.PRNGKey(5))
    assert mv.samples >= 200_000 and mt.mean.shape == (B1, B2)
    for exact, mc in ((V, mv), (T, mt)):
        assert np.max(np.abs((np.asarray(exact) - np.asarray(mc.mean)) / np.asarray(mc.stderr))) < 4.5


def test_against_monte_carlo():
    """Random joint covariance, B₁ = 4, B₂ = 6: explicit numpy BN of each batch, 4·10⁵ seeded draws."""
    B1, B2, eps = 4, 6, 0.05
    rng = np.random.default_rng(0)
    A = rng.standard_normal((B1 + B2, B1 + B2 + 2))
    J = A @ A.T / (B1 + B2 + 2)
    K = np.asarray(batchnorm_cross_nngp(J[:B1, :B1], J[B1:, B1:], J[:B1, B1:], "leaky_relu(0.2)", eps=eps))
    n = 400_000
    h = rng.standard_normal((n, B1 + B2)) @ np.linalg.cholesky(J).T

    def bn_phi_np(g):
        g = g - g.mean(axis=1, keepdims=True)
        y = g / np.sqrt((g * g).mean(axis=1, keepdims=True) + eps)
        return np.where(y > 0, y, 0.2 * y)

    f1, f2 = bn_phi_np(h[:, :B1]), bn_phi_np(h[:, B1:])
    prod = f1[:, :, None] * f2[:, None, :]
    z = (K - prod.mean(0)) / (prod.std(0, ddof=1) / np.sqrt(n))
    assert np.max(np.abs(z)) < 4.5


@pytest.mark.parametrize("mode", ["jvp", pytest.param("grad", marks=pytest.mark.slow)])
def test_gradient_matches_finite_differences(mode):
    """grad through the custom JVP of the tilted covariance (exact dS = Aᵀ dΣ_J A) vs central differences.
    (The nodes follow the spectrum outside the derivative, so the rule must be converged: 129 nodes.)"""
    B1, B2 = 4, 5
    J = joint_cov(B1, B2, seed=0)
    Th = np.random.default_rng(1).standard_normal((B1, B2))
    D = np.random.default_rng(2).standard_normal((B1 + B2, B1 + B2))
    D = D + D.T

    def fn(x):
        Jx = jnp.asarray(J) + x * D
        V, T = batchnorm_cross_ntk(Jx[:B1, :B1], Jx[B1:, B1:], Jx[:B1, B1:], Th, "relu", eps=0.1, nodes=129)
        return jnp.sum(T * Th) + jnp.sum(V)

    # forward mode is the custom JVP itself; reverse mode transposes it
    g = float(jax.jvp(fn, (0.0,), (1.0,))[1] if mode == "jvp" else jax.grad(fn)(0.0))
    h = 1e-4
    fd = float((8 * (fn(h) - fn(-h)) - (fn(2 * h) - fn(-2 * h))) / (12 * h))
    assert abs(g - fd) < 1e-8 * abs(fd)


def test_stax_cross_kernel():
    x = np.random.default_rng(1).standard_normal((5, 3))
    net = stax.serial(stax.Dense(8, 1.0, 0.1), stax.BatchNorm(0.01), stax.Relu(), stax.Dense(1))
    same = net[2](x)
    cross = net[2](x, x)
    assert rel(cross.nngp, same.nngp) < 1e-12
    assert rel(cross.ntk, same.ntk) < 1e-11
    # no BatchNorm: the cross block is the ordinary Gaussian kernel, and the NTK is defined too
    plain = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    k = plain[2](x[:2], x[2:])
    assert k.nngp.shape == (2, 3) and np.all(np.isfinite(k.ntk))


def test_stax_cross_kernel_other_activations_use_joint_monte_carlo():
    """tanh has no exact kernel: every block of the two-batch kernel comes from one seeded joint sampling."""
    x1, x2 = inputs(5, d=3, seed=1), inputs(6, d=3, seed=2)
    net = stax.serial(stax.Dense(8, 1.0, 0.1), stax.BatchNorm(0.01), stax.Activation("tanh"), stax.Dense(1))
    k = net[2](x1, x2)
    assert k.ntk.shape == (5, 6) and np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    assert np.array_equal(np.asarray(net[2](x1, x2).ntk), np.asarray(k.ntk))  # seeded


def empirical_cross(net, x1, x2, nets: int, seed: int = 0):
    """Cross blocks of the empirical NNGP (read-out covariance given the last hidden layer) and NTK
    (parameter Jacobians), each batch run through apply_fn on its own (its own BN statistics)."""
    init_fn, apply_fn, _ = net
    layers = net.spec.args["layers"]
    hidden_fn = stax.serial(*layers[:-1])[1]
    W_std, b_std = layers[-1].spec.args["W_std"], layers[-1].spec.args["b_std"]
    f = lambda p, x: apply_fn(p, x)[:, 0]
    nngp, ntk = [], []
    for k in jax.random.split(jax.random.PRNGKey(seed), nets):
        _, params = init_fn(k, x1.shape)
        h1, h2 = hidden_fn(params[:-1], x1), hidden_fn(params[:-1], x2)
        nngp.append(W_std**2 * h1 @ h2.T / h1.shape[1] + b_std**2)
        J1, J2 = (jax.tree_util.tree_leaves(jax.jacrev(f)(params, x)) for x in (x1, x2))
        ntk.append(sum(a.reshape(x1.shape[0], -1) @ b.reshape(x2.shape[0], -1).T for a, b in zip(J1, J2)))
    out = {}
    for name, vals in (("nngp", nngp), ("ntk", ntk)):
        v = np.stack([np.asarray(a) for a in vals])
        out[name] = (v.mean(0), v.std(0, ddof=1) / np.sqrt(nets))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("act", "eps"), [("relu", 0.0), ("leaky_relu(0.2)", 0.1)])
def test_stax_cross_kernel_matches_finite_networks(act, eps):
    """Dense → BN → φ → Dense → BN → φ → Dense, width 1024, 20 seeded networks: the cross blocks of
    kernel_fn(x1, x2) within 4.5 standard errors of the empirical ones."""
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
    x1, x2 = inputs(6, seed=0), inputs(7, seed=1)
    k = net[2](x1, x2)
    emp = empirical_cross(net, jnp.asarray(x1), jnp.asarray(x2), nets=20)
    for name in ("nngp", "ntk"):
        mean, se = emp[name]
        z = (np.asarray(getattr(k, name)) - mean) / se
        assert np.max(np.abs(z)) < 4.5, (name, z)


def test_bad_input():
    with pytest.raises(KernelError, match="shape"):
        batchnorm_cross_nngp(np.eye(4), np.eye(5), np.zeros((5, 4)))
    with pytest.raises(KernelError, match="positive semidefinite"):
        batchnorm_cross_nngp(np.eye(4), np.eye(4), 2 * np.eye(4))
    with pytest.raises(ActivationError):
        batchnorm_cross_nngp(np.eye(4), np.eye(4), np.zeros((4, 4)), "tanh")
    S, C = np.eye(4), np.zeros((4, 5))
    with pytest.raises(KernelError, match="theta12 must have shape"):
        batchnorm_cross_ntk(S, np.eye(5), C, np.zeros((5, 4)))
    bad = np.zeros((4, 5))
    bad[1, 2] = np.nan
    with pytest.raises(KernelError, match="NaN"):
        batchnorm_cross_ntk(S, np.eye(5), C, bad)
    with pytest.raises(KernelError, match="NaN"):
        batchnorm_cross_ntk(S, np.eye(5), bad, np.zeros((4, 5)))
    with pytest.raises(KernelError, match="NaN"):
        batchnorm_cross_ntk(np.full((4, 4), np.nan), np.eye(5), C, np.zeros((4, 5)))
    with pytest.raises(KernelError, match="eps"):
        batchnorm_cross_ntk(S, np.eye(5), C, np.zeros((4, 5)), eps=-1.0)
    with pytest.raises(KernelError, match="nodes"):
        batchnorm_cross_ntk(S, np.eye(5), C, np.zeros((4, 5)), nodes=10)
    with pytest.raises(ActivationError, match="exact=False"):
        batchnorm_cross_ntk(S, np.eye(5), C, np.zeros((4, 5)), "tanh", exact=True)
    with pytest.raises(ActivationError, match="exact=False"):
        batchnorm_cross_ntk(S, np.eye(5), C, np.zeros((4, 5)), "alpha_relu(1.5)", exact=True)
