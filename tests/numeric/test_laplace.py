"""Laplace method (Thm 3.2) against sphere quadrature, seeded Monte Carlo and invariances."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpmath import mp

from symbnmf._errors import ActivationError, BatchSizeError, SymbnmfError
from symbnmf.numeric._laplace import k_alpha, laplace_forward_eigenvalues, laplace_iterate, laplace_V
from symbnmf.numeric._quadrature import evaluate_quadrature, fixed_point_quadrature

PHIS = {
    "relu": lambda v: np.maximum(v, 0.0),
    "identity": lambda v: v,
    "leaky_relu(0.1)": lambda v: np.where(v > 0, v, 0.1 * v),
}


def _tol(dps: int) -> mpmath.mpf:
    return mpmath.mpf(10) ** (-dps + 5)


def monte_carlo_V(phi, Sigma: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of B_phi(h) B_phi(h)^T, h ~ N(0, Sigma) (explicit BN)."""
    B = Sigma.shape[0]
    w, Q = np.linalg.eigh(Sigma)
    root = Q * np.sqrt(np.clip(w, 0, None))
    h = np.random.default_rng(seed).standard_normal((n, B)) @ root.T
    g = h - h.mean(axis=1, keepdims=True)
    y = np.sqrt(B) * g / np.linalg.norm(g, axis=1, keepdims=True)
    f = phi(y)
    prod = f[:, :, None] * f[:, None, :]
    return prod.mean(axis=0), prod.std(axis=0, ddof=1) / np.sqrt(n)


@pytest.mark.parametrize("dps", [15, 30])
@pytest.mark.parametrize("act", ["relu", "identity", "leaky_relu(0.1)"])
@pytest.mark.parametrize("B", [4, 7])
def test_bsb1_input_gives_sphere_fixed_point(act, B, dps):
    # Thm 3.1: any BSB1 input maps to the fixed point; two independent routes must agree.
    mp.dps = dps
    c = mpmath.mpf(3) / 10
    Sigma = 2 * ((1 - c) * mpmath.eye(B) + c * mpmath.ones(B, B))
    V = laplace_V(act, Sigma, dps)
    fp = fixed_point_quadrature(act, B, dps)
    for i in range(B):
        for j in range(B):
            want = fp["fixed_point.diag"] if i == j else fp["fixed_point.offdiag"]
            assert abs(V[i, j] - want) < _tol(dps)


def test_invariances():
    # V depends on Sigma only through G Sigma G, and not on its scale
    mp.dps = 20
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    S = A @ A.T
    v = rng.standard_normal(5)
    S2 = 3.7 * S + np.outer(v, np.ones(5)) + np.outer(np.ones(5), v) + 5 * np.ones((5, 5))
    # keep S2 PSD: adding v1^T + 1v^T can break PSD, so project through G first for the check
    G = np.eye(5) - np.ones((5, 5)) / 5
    V1 = laplace_V("relu", S, 20)
    V2 = laplace_V("relu", 3.7 * S + 2.0 * np.ones((5, 5)), 20)
    V3 = laplace_V("relu", G @ S @ G, 20)
    assert mpmath.mnorm(V1 - V2, 1) < _tol(20)
    assert mpmath.mnorm(V1 - V3, 1) < _tol(20)
    del S2


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(min_value=4, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
    act=st.sampled_from(sorted(PHIS)),
)
def test_laplace_against_monte_carlo(B, seed, act):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((B, B + 1)) * rng.uniform(0.2, 3.0, size=(B, 1))
    Sigma = A @ A.T / (B + 1)
    V = np.array(laplace_V(act, Sigma, 15).tolist(), dtype=float)
    mean, se = monte_carlo_V(PHIS[act], Sigma, 100_000, seed=seed + 1)
    assert np.all(np.abs(V - mean) <= 5 * se + 1e-12)


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.1)"])
@pytest.mark.parametrize("B", [4, 6])
def test_forward_eigenvalues_from_laplace_match_sphere_definitions(act, B):
    # finite differences of an independent V against the shared sphere-integral definitions
    lap = laplace_forward_eigenvalues(act, B, 20)
    quad = evaluate_quadrature(act, B, 20)
    mp.dps = 20
    for name in ("forward.L", "forward.M"):
        assert abs(lap[name] - quad[name]) < mpmath.mpf(10) ** -12


def test_alpha_relu_general_alpha():
    # non-integer alpha goes through the wedge-integral kernel (tanh-sinh); BSB1 input -> fixed point
    mp.dps = 12
    V = laplace_V("alpha_relu(1.5)", mpmath.eye(4), 12)
    fp = fixed_point_quadrature("alpha_relu(1.5)", 4, 12)
    assert abs(V[0, 0] - fp["fixed_point.diag"]) < _tol(12)
    assert abs(V[0, 1] - fp["fixed_point.offdiag"]) < _tol(12)


def test_k_alpha_special_cases():
    mp.dps = 30
    for rho in (mpmath.mpf("-0.7"), mpmath.mpf(0), mpmath.mpf("0.4")):
        # alpha = 1 closed form (arccosine kernel) against the generic wedge integral at alpha = 1 + tiny
        assert abs(k_alpha(1, rho) - k_alpha(mpmath.mpf(1) + mpmath.mpf(10) ** -28, rho)) < _tol(30) * 10
    assert abs(k_alpha(2, 1) - mpmath.mpf(3) / 2) < _tol(30)  # E[u_+^4] = 3/2


def test_iterate_converges_to_fixed_point():
    mp.dps = 15
    S0 = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    Ss = laplace_iterate("relu", S0, 12, 15)
    fp = fixed_point_quadrature("relu", 5, 15)
    last = Ss[-1]
    # forward.L, forward.M < 1 for ReLU at B = 5: geometric convergence to the BSB1 point
    assert abs(last[0, 0] - fp["fixed_point.diag"]) < 1e-3
    assert abs(last[1, 3] - fp["fixed_point.offdiag"]) < 1e-3


def test_bad_inputs():
    with pytest.raises(SymbnmfError, match="positive semidefinite"):
        laplace_V("relu", np.diag([1.0, 1.0, 1.0, -1.0]), 15)
    with pytest.raises(SymbnmfError, match="symmetric"):
        laplace_V("relu", np.triu(np.ones((4, 4))) + np.eye(4), 15)
    with pytest.raises(BatchSizeError):
        laplace_V("relu", np.eye(3), 15)
    with pytest.raises(ActivationError, match="positive-homogeneous"):
        laplace_V("tanh", np.eye(4), 15)
    with pytest.raises(SymbnmfError, match="BN is undefined"):
        laplace_V("relu", np.ones((4, 4)), 15)
