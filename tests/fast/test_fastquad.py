"""Fast JAX quadrature: the rules' lemmas, exact sphere anchors, and the mpmath path."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp

pytest.importorskip("jax")

import symbnmf
from symbnmf._errors import ActivationError, ConvergenceError, SymbnmfError
from symbnmf.fast._fastquad import FastEvaluator, _plane_rule, angular_rule, fast_method, radial_rule


def _flt(v) -> float:
    """mpf -> float via its decimal string (robust to mpf internals of other back ends)."""
    return float(mpmath.nstr(v, 20))


@pytest.mark.parametrize("B", [4, 5, 7, 64, 1000])
def test_radial_rule_is_gauss_for_its_weight(B):
    """Lemma: the n-point rule integrates rho^k exactly against rho (1-rho^2)^((B-5)/2), k < 2n."""
    n = 12
    r, w = radial_rule(B, n)
    beta = mpmath.mpf(B - 5) / 2
    with mpmath.workdps(40):
        for k in range(2 * n):
            exact = (
                mpmath.gamma(mpmath.mpf(k) / 2 + 1)
                * mpmath.gamma(beta + 2)
                / mpmath.gamma(mpmath.mpf(k) / 2 + beta + 2)
            )
            got = float(np.sum(w * r**k))
            assert abs(got - float(exact)) <= 5e-14 * float(exact) + 1e-300


@pytest.mark.parametrize("B", [4, 6, 11, 300])
def test_plane_rule_reproduces_exact_sphere_moments(B):
    """Lemma two_coordinate_law: moments of (y1, y2) on the radius-sqrt(B) sphere in 1-perp."""
    y1, y2, w = _plane_rule(B, 16, 12)
    E = lambda f: float(np.sum(w * f))
    c = -1.0 / (B - 1)
    assert abs(E(1.0) - 1) < 1e-14
    assert abs(E(y1**2) - 1) < 1e-13
    assert abs(E(y2**2) - 1) < 1e-13
    assert abs(E(y1 * y2) - c) < 1e-13
    # E y1^4 = 3(B-1)/(B+1): fourth moment of a coordinate of a uniform point on S^{B-2}
    assert abs(E(y1**4) - 3 * (B - 1) / (B + 1)) < 1e-12 * B
    # ReLU fixed point (published anchor): E relu(y1) relu(y2) = J1(-1/(B-1))/2
    J1 = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
    assert abs(E(np.maximum(y1, 0) * np.maximum(y2, 0)) - J1 / 2) < 1e-13
    assert abs(E(np.maximum(y1, 0) ** 2) - 0.5) < 1e-13


def test_angular_rule_sums_to_one_and_splits_at_the_kink_rays():
    psi, w = angular_rule(7, 5)
    assert abs(w.sum() - 1) < 1e-15 and psi.shape == (20,)


@pytest.mark.parametrize("B", [4, 5, 9, 40])
def test_identity_is_exact(B):
    """Identity: Sigma* = G (diag 1, offdiag -1/(B-1)); lambda_G-down = (B-2)/(B-3) (docs/theory.md)."""
    out = FastEvaluator("identity")([B])
    assert abs(out["fixed_point.diag"][0] - 1) < 1e-13
    assert abs(out["fixed_point.offdiag"][0] + 1 / (B - 1)) < 1e-13
    assert abs(out["backward.G"][0] - (B - 2) / (B - 3)) < 1e-12
    assert abs(out["forward.G"][0]) < 1e-13


def test_relu_fixed_point_anchor_and_large_batch_limit():
    Bs = [4, 8, 16, 1000]
    out = FastEvaluator("relu")(Bs)
    for i, B in enumerate(Bs):
        c = -1.0 / (B - 1)
        J1 = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
        assert abs(out["fixed_point.offdiag"][i] - J1 / 2) < 1e-13
    # Thm 3.10: decreasing in B towards pi/(pi-1)
    bg = out["backward.G"]
    assert np.all(np.diff(bg) < 0) and bg[-1] > math.pi / (math.pi - 1) and bg[-1] - math.pi / (math.pi - 1) < 1e-2


@pytest.mark.parametrize(
    "spec,B",
    [
        ("relu", 5),
        pytest.param("tanh(0.7*x + 0.3)", 4, marks=pytest.mark.slow),
        pytest.param("tanh(0.7*x + 0.3)", 9, marks=pytest.mark.slow),
        pytest.param("gelu", 6, marks=pytest.mark.slow),
    ],
)
def test_agrees_with_mpmath_quadrature(spec, B):
    """Independent check: the mpmath path (symbnmf.numeric._quadrature, adaptive, error-controlled)."""
    quad = pytest.importorskip("symbnmf.numeric._quadrature")
    ref = quad.evaluate_quadrature(spec, B, 20)
    got = fast_method(spec, B)
    for q, v in ref.items():
        v = _flt(v)
        assert abs(got[q] - v) <= 1e-10 * abs(v) + 1e-14, (q, got[q], v)


@pytest.mark.parametrize("B", [4, 13])
def test_smooth_fixed_point_agrees_with_mpmath(B):
    """tanh with BN's gamma, beta: the fixed point against the adaptive mpmath quadrature."""
    quad = pytest.importorskip("symbnmf.numeric._quadrature")
    ref = quad.fixed_point_quadrature("tanh(0.7*x + 0.3)", B, 16)
    got = FastEvaluator("tanh(g*x + b)", ["fixed_point.diag", "fixed_point.offdiag"])([B], g=0.7, b=0.3)
    for q, v in ref.items():
        assert abs(got[q][0] - _flt(v)) <= 1e-12 * abs(_flt(v))


def test_parameter_grid_matches_bound_activations():
    ev = FastEvaluator("tanh(g*x + b)")
    g = np.array([0.3, 1.0, 1.7])
    b = np.array([[0.0], [0.5]])
    Bs = [4, 7, 12]
    out = ev(Bs, g=g, b=b)
    assert out["backward.G"].shape == (2, 3, 3)
    for i, bv in enumerate(b[:, 0]):
        for j, gv in enumerate(g):
            single = ev(Bs, g=gv, b=bv)
            for q in ("fixed_point.offdiag", "forward.L", "backward.G", "depth_scale"):
                np.testing.assert_allclose(out[q][i, j], single[q], rtol=1e-13)
    bound = FastEvaluator(symbnmf.get_activation("tanh(g*x + b)", g=1.7, b=0.5))(Bs)
    for q in bound:
        np.testing.assert_allclose(out[q][1, 2], bound[q], rtol=1e-13)


def test_scalar_B_gives_scalar_shape():
    out = FastEvaluator("tanh(g*x)", ["backward.G"])(6, g=np.linspace(0.5, 1.5, 4))
    assert set(out) == {"backward.G"} and out["backward.G"].shape == (4,)


def _relu_shift_fixed_point_B5(b: float) -> tuple[float, float]:
    """Independent reference at B = 5 for phi = relu(x + b): the first two coordinates (u1, u2)
    of the radius-sqrt(5) sphere in R^4 are *uniform on the disk* |u| < sqrt(5) (density
    (1 - |u|^2/B)^{(B-5)/2}), y1 = sqrt(4/5) u1, y2 = -u1/sqrt(20) + sqrt(3/4) u2. Cartesian
    mpmath quadrature split at the kink lines."""
    with mpmath.workdps(25):
        B = 5
        r = mpmath.sqrt(B)
        a1, c1 = mpmath.sqrt(mpmath.mpf(B - 1) / B), -1 / mpmath.sqrt(B * (B - 1))
        c2 = mpmath.sqrt(mpmath.mpf(B - 2) / (B - 1))
        bb = mpmath.mpf(b)
        relu = lambda t: t if t > 0 else mpmath.mpf(0)
        u1k = -bb / a1  # y1 = -b

        def inner(u1, f):
            h = mpmath.sqrt(max(r * r - u1 * u1, 0))
            u2k = (-bb - c1 * u1) / c2  # y2 = -b
            pts = sorted({-h, h, min(max(u2k, -h), h)})
            return mpmath.quad(lambda u2: f(a1 * u1, c1 * u1 + c2 * u2), pts)

        # the outer integrand is not smooth where the line y2 = -b is tangent to the u2-chord:
        # (c1^2 + c2^2) u1^2 + 2 b c1 u1 + b^2 - c2^2 r^2 = 0
        qa, qb, qc = c1 * c1 + c2 * c2, 2 * bb * c1, bb * bb - c2 * c2 * r * r
        disc = qb * qb - 4 * qa * qc
        tang = [(-qb + sg * mpmath.sqrt(disc)) / (2 * qa) for sg in (-1, 1)] if disc > 0 else []

        def outer(f):
            pts = sorted({-r, r, min(max(u1k, -r), r), *[min(max(t, -r), r) for t in tang]})
            return mpmath.quad(lambda u1: inner(u1, f), pts) / (mpmath.pi * r * r)

        diag = outer(lambda y1, y2: relu(y1 + bb) ** 2)
        off = outer(lambda y1, y2: relu(y1 + bb) * relu(y2 + bb))
        return float(diag), float(off)


@pytest.mark.parametrize("b", [0.5, -0.7])
def test_kinks_away_from_zero_fixed_point_independent_reference(b):
    """ReLU with BN's beta (kink at -beta, a grid parameter): iterated scheme vs Cartesian mpmath."""
    ev = FastEvaluator("relu(x + b)", ["fixed_point.diag", "fixed_point.offdiag"])
    assert ev.scheme == "iterated"
    out = ev([5], b=b)
    d, o = _relu_shift_fixed_point_B5(b)
    assert abs(out["fixed_point.diag"][0] - d) <= 1e-11 * abs(d)
    assert abs(out["fixed_point.offdiag"][0] - o) <= 1e-11 * max(abs(o), 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("B", [4, 5, 9])
def test_kinks_away_from_zero_agree_with_mpmath(B):
    """All quantities of relu(x + b) against the mpmath path (symbnmf.numeric._quadrature)."""
    quad = pytest.importorskip("symbnmf.numeric._quadrature")
    ev = FastEvaluator("relu(x + b)")
    out = ev([B], b=[0.0, 0.5])
    for j, bv in enumerate(("0", "0.5")):
        try:
            ref = quad.evaluate_quadrature(f"relu(x + {bv})", B, 16)
        except ConvergenceError as exc:  # the reference, not the code under test, failed
            pytest.skip(f"mpmath reference did not converge: {exc}")
        for q, v in ref.items():
            assert abs(out[q][j, 0] - _flt(v)) <= 1e-10 * abs(_flt(v)) + 1e-14, (q, bv)


def test_iterated_scheme_matches_polar_scheme_at_kink_zero():
    Bs = [4, 6, 7, 12, 40]
    polar = FastEvaluator("leaky_relu(0.2)")(Bs)
    iterated = FastEvaluator("relu(x + b) - 0.2*relu(-x - b)")(Bs, b=0.0)
    for q in polar:
        np.testing.assert_allclose(iterated[q], polar[q], rtol=1e-11, atol=1e-14)


def test_kink_expressions():
    from symbnmf.fast._fastquad import kink_expressions

    b = sp.Symbol("b", real=True)
    assert kink_expressions(symbnmf.get_activation("relu(x + b)")) == (-b,)
    assert kink_expressions(symbnmf.get_activation("tanh(x)")) == ()
    with pytest.raises(SymbnmfError, match="straight line"):
        FastEvaluator("relu(x**2 - 1)")


def test_bad_inputs_name_the_fix():
    ev = FastEvaluator("tanh(g*x)")
    with pytest.raises(ActivationError, match="missing"):
        ev([4])
    with pytest.raises(symbnmf._errors.BatchSizeError):
        ev([3], g=1.0)
    with pytest.raises(SymbnmfError, match="double precision"):
        fast_method("relu", 4, dps=30)
    with pytest.raises(SymbnmfError, match="unknown quantities"):
        FastEvaluator("relu", ["backward.X"])


def test_too_steep_is_refused_not_silently_wrong():
    """The built-in error estimate (fine vs coarse rule, with escalation) catches under-resolution."""
    with pytest.raises(ConvergenceError, match="not accurate"):
        FastEvaluator("tanh(g*x)", ["fixed_point.diag"])([4], g=60.0)
