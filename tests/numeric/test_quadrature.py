"""Sphere quadrature (Thm F.5): exact sphere moments, published anchors, seeded Monte Carlo."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp
from mpmath import mp

from symbnmf._errors import ActivationError, BatchSizeError, ConvergenceError
from symbnmf.numeric._quadrature import (
    fixed_point_quadrature,
    sphere_expectations,
    sphere_quadrature,
)
from symbnmf.symbolic._sphere import y1, y2


def _tol(dps: int) -> mpmath.mpf:
    return mpmath.mpf(10) ** (-dps + 5)


def _J1(c):
    return (mpmath.sqrt(1 - c**2) + (mp.pi - mpmath.acos(c)) * c) / mp.pi


def sample_sphere(B: int, n: int, seed: int) -> np.ndarray:
    """n points uniform on the radius-sqrt(B) sphere in 1-perp of R^B (BN of Gaussian inputs)."""
    z = np.random.default_rng(seed).standard_normal((n, B))
    z -= z.mean(axis=1, keepdims=True)
    return np.sqrt(B) * z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.mark.parametrize("dps", [20, 50])
@pytest.mark.parametrize("B", [4, 5, 8, 16, 64])
def test_sphere_moments_exact(B, dps):
    # Lemma two_coordinate_law against exact moments of the uniform sphere:
    # E y1^2 = 1, E y1 y2 = -1/(B-1), E y1^4 = 3(B-1)/(B+1) (u1^4 moment 3R^4/(n(n+2)) rescaled),
    # E y1^2 y2^2 = (B^2-3B+3)... computed from sum rules: sum_j y_j = 0 and |y|^2 = B.
    mp.dps = dps
    Bm = mpmath.mpf(B)
    got = sphere_expectations(
        [(y1**2, 1), (y1, y2), (y1**4, 1), (y1**2, y2**2), (y1**3, y2), (sp.Integer(1), y2**2)], B, dps
    )
    m4 = 3 * (Bm - 1) / (Bm + 1)
    # sum_j y1^3 y_j = 0 -> E y1^3 y2 = -E y1^4/(B-1)
    m31 = -m4 / (Bm - 1)
    # sum_j y1^2 y_j^2 = B y1^2 -> E y1^4 + (B-1) E y1^2 y2^2 = B
    m22 = (Bm - m4) / (Bm - 1)
    want = [1, -1 / (Bm - 1), m4, m22, m31, 1]
    for g, w in zip(got, want):
        assert abs(g - w) < _tol(dps)


@pytest.mark.parametrize("dps", [15, 30, 50])
@pytest.mark.parametrize("B", [4, 5, 8, 16, 64])
def test_fixed_point_anchors(B, dps):
    mp.dps = dps
    c = mpmath.mpf(-1) / (B - 1)
    ident = fixed_point_quadrature("identity", B, dps)
    assert abs(ident["fixed_point.diag"] - 1) < _tol(dps)
    assert abs(ident["fixed_point.offdiag"] - c) < _tol(dps)
    relu = fixed_point_quadrature("relu", B, dps)
    assert abs(relu["fixed_point.diag"] - mpmath.mpf(1) / 2) < _tol(dps)
    assert abs(relu["fixed_point.offdiag"] - _J1(c) / 2) < _tol(dps)


def test_precision_is_restored_by_functions():
    mp.dps = 17
    sphere_quadrature(y1**2, 1, 5, 40)
    assert mp.dps == 17


@pytest.mark.parametrize("B", [4, 8])
@pytest.mark.parametrize(
    "f1,f2,np1,np2",
    [
        (sp.tanh(y1) ** 2, 1, lambda v: np.tanh(v) ** 2, None),
        (sp.tanh(y1), sp.tanh(y2), np.tanh, np.tanh),
        (
            sp.Max(y1 - sp.Rational(1, 2), 0),
            sp.Abs(y2 + sp.Rational(1, 3)),
            lambda v: np.maximum(v - 0.5, 0),
            lambda v: np.abs(v + 1 / 3),
        ),
        (
            sp.Piecewise((y1 ** sp.Rational(3, 2), y1 > 0), (0, True)),
            sp.Piecewise((y2 ** sp.Rational(3, 2), y2 > 0), (0, True)),
            lambda v: np.where(v > 0, np.abs(v) ** 1.5, 0.0),
            lambda v: np.where(v > 0, np.abs(v) ** 1.5, 0.0),
        ),
        (
            sp.erf(2 * y1 + 1) * y1,
            sp.sin(3 * y2),
            lambda v: __import__("scipy.special").special.erf(2 * v + 1) * v,
            lambda v: np.sin(3 * v),
        ),
    ],
)
def test_against_monte_carlo(B, f1, f2, np1, np2):
    # seeded Monte Carlo of uniform sphere points; 5 standard errors (deterministic seed)
    y = sample_sphere(B, 400_000, seed=1234 + B)
    v = np1(y[:, 0]) * (np2(y[:, 1]) if np2 is not None else 1.0)
    mean, se = v.mean(), v.std(ddof=1) / np.sqrt(len(v))
    q = sphere_quadrature(f1, f2, B, 20)
    assert abs(float(q) - mean) < 5 * se + 1e-12


def test_kink_off_zero_high_precision():
    # relu(y1 - 1/2) * relu(y2 - 1/2) at two precisions must agree to the lower one
    f1 = sp.Piecewise((y1 - sp.Rational(1, 2), y1 > sp.Rational(1, 2)), (0, True))
    f2 = sp.Piecewise((y2 - sp.Rational(1, 2), y2 > sp.Rational(1, 2)), (0, True))
    a = sphere_quadrature(f1, f2, 5, 15)
    b = sphere_quadrature(f1, f2, 5, 25)
    mp.dps = 15
    assert abs(a - b) < _tol(15)


def test_bad_inputs():
    with pytest.raises(BatchSizeError):
        sphere_quadrature(y1, y2, 3)
    with pytest.raises(ActivationError):
        sphere_quadrature(y1 * sp.Symbol("g"), 1, 5)
    with pytest.raises(ConvergenceError, match="did not converge"):
        # not integrable: 1/y1^2 near the equator of the sphere
        sphere_quadrature(1 / y1**2, 1, 5, 20)
