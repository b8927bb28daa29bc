"""Large-B (Gaussian) limits: exact anchors and the approach of finite-B quadrature values."""

from __future__ import annotations

import mpmath
import pytest
from mpmath import mp

from symbnmf.numeric._limits import approach, gaussian_expectation, gaussian_limits


def test_gaussian_expectations_exact():
    import sympy as sp

    t = sp.Symbol("t", real=True)
    mp.dps = 30
    tol = mpmath.mpf(10) ** -25
    assert abs(gaussian_expectation(t**4, 30) - 3) < tol
    assert abs(gaussian_expectation(sp.Max(t, 0), 30) - 1 / mpmath.sqrt(2 * mp.pi)) < tol
    # kink off zero: E (z - 1/2)_+ = phi(1/2) - (1/2) (1 - Phi(1/2))
    h = mpmath.mpf(1) / 2
    want = mpmath.npdf(h) - h * (1 - mpmath.ncdf(h))
    assert abs(gaussian_expectation(sp.Max(t - sp.Rational(1, 2), 0), 30) - want) < tol


def test_relu_limits_are_the_published_ones():
    mp.dps = 30
    lim = gaussian_limits("relu", 30)
    tol = mpmath.mpf(10) ** -25
    pi = mp.pi
    assert abs(lim["backward.G"] - pi / (pi - 1)) < tol  # Thm 3.10: pi/(pi-1) ~ 1.4669
    assert abs(lim["fixed_point.offdiag"] - 1 / (2 * pi)) < tol
    assert abs(lim["forward.M"] - pi / (2 * (pi - 1))) < tol
    ident = gaussian_limits("identity", 30)
    for k in ("backward.G", "backward.L", "backward.M", "forward.L", "forward.M"):
        assert abs(ident[k] - 1) < tol
    # forward.L -> d/dv Var phi(sqrt(v) z) / Var phi: 1 for ReLU (paper), alpha for alpha-ReLU
    assert abs(lim["forward.L"] - 1) < tol
    assert abs(gaussian_limits("alpha_relu(2)", 30)["forward.L"] - 2) < tol
    # Gaussian Poincare: E phi'^2 >= Var phi for any phi
    assert gaussian_limits("tanh", 20)["backward.G"] > 1


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.3)"])
def test_finite_B_values_approach_the_limit(act):
    # q(B) = q_inf + a/B + b/B^2 + O(1/B^3): the extrapolation from B = 32, 64, 128 lands within
    # O(1/32^3) of the Gaussian limit, and |q(B) - limit| = O(1/B) (not always monotone: the
    # leaky-ReLU backward.L crosses its limit)
    Bs = (32, 64, 128)
    res = approach(act, Bs, 15)
    for name, r in res.items():
        scale = max(1, abs(r["limit"]))
        assert r["gap"] < 5e-4 * scale, (name, r)
        for B, v in zip(Bs, r["values"]):
            if name == "depth_scale":  # 1/ln(backward.G): its 1/B coefficient is amplified
                continue
            assert abs(v - r["limit"]) <= 5 * scale / B, (name, B, v, r["limit"])


@pytest.mark.slow
@pytest.mark.parametrize("act", ["tanh", "gelu", "erf(x)"])
def test_smooth_activations_approach_the_limit(act):
    res = approach(act, (32, 64, 128), 15)
    for name, r in res.items():
        assert r["gap"] < 5e-4 * max(1, abs(r["limit"])), (name, r)
