"""Cross-batch BN kernel (issue 11, item 3): two batches, each normalised with its own statistics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from symbnmf._errors import ActivationError
from symbnmf.kernels import KernelError, batchnorm_nngp, stax
from symbnmf.kernels.cross import batchnorm_cross_nngp


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("B", [4, pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_same_batch_twice_is_the_nngp(B, eps):
    """h₂ = h₁ (C = Σ₁₁ = Σ₂₂): the 2-D integral must reproduce the 1-D kernel (the degenerate worst case)."""
    A = np.random.default_rng(B).standard_normal((B, B + 2))
    S = A @ A.T / (B + 2)
    assert rel(batchnorm_cross_nngp(S, S, S, "relu", eps=eps), batchnorm_nngp(S, "relu", eps=eps)) < 1e-12


def test_against_monte_carlo():
    """Random joint covariance, B₁ = 4, B₂ = 6: explicit numpy BN of each batch, 4·10⁵ seeded draws."""
    B1, B2, eps = 4, 6, 0.05
    rng = np.random.default_rng(0)
    A = rng.standard_normal((B1 + B2, B1 + B2 + 2))
    J = A @ A.T / (B1 + B2 + 2)
    K = np.asarray(batchnorm_cross_nngp(J[:B1, :B1], J[B1:, B1:], J[:B1, B1:], "leaky_relu(0.2)", eps=eps))
    n = 400_000
    h = rng.standard_normal((n, B1 + B2)) @ np.linalg.cholesky(J).T

    def bn_phi(g):
        g = g - g.mean(axis=1, keepdims=True)
        y = g / np.sqrt((g * g).mean(axis=1, keepdims=True) + eps)
        return np.where(y > 0, y, 0.2 * y)

    f1, f2 = bn_phi(h[:, :B1]), bn_phi(h[:, B1:])
    prod = f1[:, :, None] * f2[:, None, :]
    z = (K - prod.mean(0)) / (prod.std(0, ddof=1) / np.sqrt(n))
    assert np.max(np.abs(z)) < 4.5


def test_stax_cross_kernel():
    x = np.random.default_rng(1).standard_normal((5, 3))
    net = stax.serial(stax.Dense(8, 1.0, 0.1), stax.BatchNorm(0.01), stax.Relu(), stax.Dense(1))
    same = net[2](x, get="nngp")
    cross = net[2](x, x, get="nngp")
    assert rel(cross, same) < 1e-12
    # no BatchNorm: the cross block is the ordinary Gaussian kernel, and the NTK is defined too
    plain = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    k = plain[2](x[:2], x[2:])
    assert k.nngp.shape == (2, 3) and np.all(np.isfinite(k.ntk))


def test_bad_input():
    with pytest.raises(KernelError, match="shape"):
        batchnorm_cross_nngp(np.eye(4), np.eye(5), np.zeros((5, 4)))
    with pytest.raises(KernelError, match="positive semidefinite"):
        batchnorm_cross_nngp(np.eye(4), np.eye(4), 2 * np.eye(4))
    with pytest.raises(ActivationError):
        batchnorm_cross_nngp(np.eye(4), np.eye(4), np.zeros((4, 4)), "tanh")
