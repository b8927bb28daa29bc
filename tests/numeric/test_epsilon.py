"""The eps > 0 theory (issue 12): mpmath path against the eps = 0 theory, the explicit B x B maps
with eps (tests/explicit.py, seeded Monte Carlo) and the collapse boundary."""

from __future__ import annotations

import explicit as ex
import mpmath
import numpy as np
import pytest
import sympy as sp

from symbnmf import evaluate
from symbnmf._activations import get_activation
from symbnmf._errors import ConvergenceError, SymbnmfError
from symbnmf.numeric._epsilon import (
    EpsSetting,
    _clenshaw,
    collapse_boundary_eps,
    collapse_slope,
    evaluate_eps,
    exit_taus,
    fit_tables,
    graded_pieces,
    tau_tables,
)
from symbnmf.symbolic._epsilon import chi2_resolvent

NAMES = ("fixed_point.diag", "fixed_point.offdiag", "forward.L", "forward.M", "backward.G", "backward.L", "backward.M")


def relu(v):
    return np.maximum(v, 0.0)


def drelu(v):
    return (v > 0) * 1.0


@pytest.mark.parametrize("B", [4, 8])
def test_eps_zero_is_the_eps_zero_theory(B):
    ref = evaluate("relu", B, method="quadrature")[0]
    got = evaluate_eps("relu", B, eps=0)
    for name in NAMES:
        head, tail = name.split(".")
        assert float(got[name]) == pytest.approx(ref[head][tail], rel=1e-12, abs=1e-14)
    assert abs(float(got["forward.G"])) < 1e-14
    assert got["_meta"]["phase"] == "bsb1"


def test_small_eps_is_continuous_and_weight_var_scales_at_eps_zero():
    a = evaluate_eps("relu", 8, eps=0)
    b = evaluate_eps("relu", 8, eps=1e-9)
    for name in NAMES:
        assert float(b[name]) == pytest.approx(float(a[name]), rel=1e-6)
    c = evaluate_eps("relu", 8, eps=0, weight_var=3)
    assert float(c["fixed_point.diag"]) == pytest.approx(3 * float(a["fixed_point.diag"]), rel=1e-14)
    assert float(c["backward.G"]) == pytest.approx(float(a["backward.G"]), rel=1e-14)


@pytest.mark.parametrize(("B", "eps", "sw", "gamma"), [(4, 0.1, 2.0, 1.0), (8, 0.3, 1.0, 1.5)])
def test_relu_against_explicit_maps(B, eps, sw, gamma):
    r = evaluate_eps("relu", B, eps=eps, weight_var=sw, gamma=gamma)
    mu = r["_meta"]["mu"]
    assert r["_meta"]["phase"] == "bsb1"
    assert ex.eps_fixed_point(relu, B, eps, sw, gamma=gamma, n=60_000) == pytest.approx(mu, rel=5e-3)
    fp = ex.eps_fixed_point_entries(relu, B, eps, sw, mu, gamma=gamma, n=100_000)
    assert abs(fp["diag"].z(float(r["fixed_point.diag"]))) < 4.5
    assert abs(fp["offdiag"].z(float(r["fixed_point.offdiag"]))) < 4.5
    D = ex.test_directions(B)
    for X in "GLM":
        f = ex.eps_forward_rayleigh(relu, B, D[X], eps, sw, mu, gamma=gamma, n=60_000)
        b = ex.eps_backward_rayleigh(relu, drelu, B, D[X], eps, sw, mu, gamma=gamma, n=20_000)
        assert abs(f.z(float(r[f"forward.{X}"]))) < 4.5, X
        assert abs(b.z(float(r[f"backward.{X}"]))) < 4.5, X


@pytest.mark.slow
@pytest.mark.parametrize(("B", "eps", "sw", "gamma", "beta"), [(16, 0.05, 0.5, 1.0, 0.0)])
def test_relu_against_explicit_maps_large_batch(B, eps, sw, gamma, beta):
    del beta
    test_relu_against_explicit_maps(B, eps, sw, gamma)


@pytest.mark.slow
def test_relu_beta_against_explicit_maps():
    """ReLU with beta != 0 (tables split at the kink-line and corner exits) against the explicit maps."""
    B, eps, sw, beta = 4, 0.1, 1.0, 0.5
    r = evaluate_eps("relu", B, eps=eps, weight_var=sw, beta=beta)
    mu = r["_meta"]["mu"]
    assert r["_meta"]["phase"] == "bsb1"
    assert ex.eps_fixed_point(relu, B, eps, sw, beta=beta, n=60_000) == pytest.approx(mu, rel=5e-3)
    fp = ex.eps_fixed_point_entries(relu, B, eps, sw, mu, beta=beta, n=100_000)
    assert abs(fp["diag"].z(float(r["fixed_point.diag"]))) < 4.5
    assert abs(fp["offdiag"].z(float(r["fixed_point.offdiag"]))) < 4.5
    D = ex.test_directions(B)
    for X in "GLM":
        f = ex.eps_forward_rayleigh(relu, B, D[X], eps, sw, mu, beta=beta, n=60_000)
        b = ex.eps_backward_rayleigh(relu, drelu, B, D[X], eps, sw, mu, beta=beta, n=20_000)
        assert abs(f.z(float(r[f"forward.{X}"]))) < 4.5, X
        assert abs(b.z(float(r[f"backward.{X}"]))) < 4.5, X


@pytest.mark.slow
def test_tanh_against_explicit_maps():
    B, eps, sw, beta = 4, 0.2, 1.5, 0.3
    r = evaluate_eps("tanh", B, eps=eps, weight_var=sw, beta=beta, dps=10)
    mu = r["_meta"]["mu"]
    assert ex.eps_fixed_point(np.tanh, B, eps, sw, beta=beta, n=60_000) == pytest.approx(mu, rel=5e-3)
    D = ex.test_directions(B)
    for X in "GLM":
        f = ex.eps_forward_rayleigh(np.tanh, B, D[X], eps, sw, mu, beta=beta, n=60_000)
        b = ex.eps_backward_rayleigh(np.tanh, lambda v: 1 - np.tanh(v) ** 2, B, D[X], eps, sw, mu, beta=beta, n=20_000)
        assert abs(f.z(float(r[f"forward.{X}"]))) < 4.5, X
        assert abs(b.z(float(r[f"backward.{X}"]))) < 4.5, X


def test_collapse_boundary_relu():
    """eps_c = sigma_w^2 mu_0 (B-1)/B (mu_0 the eps = 0 value): located by root finding, phases on
    both sides from the theory and from iterating the explicit map."""
    B, sw = 8, 1.0
    mu0 = evaluate("relu", B, method="quadrature")[0]
    mu0 = mu0["fixed_point"]["diag"] - mu0["fixed_point"]["offdiag"]
    with mpmath.workdps(30):
        tab = tau_tables(get_activation("relu").bound_expr, 1, 0, B, 16)
        ec = collapse_boundary_eps(tab, sw)
        root = mpmath.findroot(lambda e: collapse_slope(tab, EpsSetting(e, sw)) - 1, 0.3)
    assert float(ec) == pytest.approx(sw * mu0 * (B - 1) / B, rel=1e-12)
    assert abs(root - ec) < 1e-8
    below = evaluate_eps("relu", B, eps=float(ec) * 0.999, weight_var=sw)
    above = evaluate_eps("relu", B, eps=float(ec) * 1.001, weight_var=sw)
    assert below["_meta"]["phase"] == "bsb1" and 0 < below["_meta"]["mu"] < 0.05
    assert above["_meta"]["phase"] == "collapsed" and above["_meta"]["mu"] == 0
    assert float(above["fixed_point.diag"]) == float(above["fixed_point.offdiag"]) == 0
    # mu -> 0+ limits at the collapsed point: backward = sigma_w^2/eps E tr(Delta D Delta D)/|Delta|^2
    assert float(above["backward.G"]) > 0
    for factor, collapsed in ((0.8, False), (1.25, True)):
        mu = ex.eps_fixed_point(relu, B, float(ec) * factor, sw, n=20_000, iterations=400)
        assert (mu < 1e-4) == collapsed, (factor, mu)


def test_collapse_smooth_phi_limits():
    """Smooth phi at the collapsed point: every eigenvalue is sigma_w^2 gamma^2 phi'(beta)^2/eps."""
    r = evaluate_eps("identity", 4, eps=2.0, weight_var=1.0, gamma=1.0)
    assert r["_meta"]["phase"] == "collapsed"
    for X in "GLM":
        assert float(r[f"forward.{X}"]) == pytest.approx(0.5, rel=1e-10)
        assert float(r[f"backward.{X}"]) == pytest.approx(0.5, rel=1e-10)


def test_chi2_resolvent_lemma():
    R, (k, c) = chi2_resolvent()
    for kv, cv in ((3, "0.7"), (6, "2.5"), (31, "0.01")):
        exact = R.subs({k: kv, c: sp.Rational(cv)}).evalf(40)
        with mpmath.workdps(40):
            half, cm = mpmath.mpf(kv) / 2, mpmath.mpf(cv)
            norm = 2**half * mpmath.gamma(half)
            ref = mpmath.quad(
                lambda s, h=half, cm=cm, norm=norm: s ** (h - 1) * mpmath.exp(-s / 2) / (s + cm) / norm,
                [0, kv, mpmath.inf],
            )
            assert abs(mpmath.mpf(str(exact)) - ref) < mpmath.mpf(10) ** -30


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": float("nan")}, "finite"),
        ({"eps": 0.1, "weight_var": 0}, "weight_var"),
        ({"eps": 0.1, "weight_var": -1}, "weight_var"),
        ({"eps": "x"}, "must be a number"),
        ({"eps": 0.1, "gamma": 0}, "gamma"),
    ],
)
def test_bad_input(kw, msg):
    with pytest.raises(SymbnmfError, match=msg):
        evaluate_eps("relu", 4, **kw)


@pytest.mark.parametrize("B", [4, 5, 8, 16, 32, 64, 256])
@pytest.mark.parametrize("us", [(-0.5,), (0.2,), (-2,), (-1, 1), (-0.3, 0.5)])
def test_graded_pieces(B, us):
    """The tau pieces: every kink-line/corner exit is an edge carrying the square-root map on both
    sides, and every other exit is at least 1/6 of a piece's length away from it (graded), so the
    Chebyshev series of each piece converge geometrically at a B-independent rate."""
    cuts = exit_taus([sp.Rational(str(u)) for u in us], B, upto_one=True)
    edges, maps = graded_pieces(cuts, sp.Integer(1))
    inner = [c for c in cuts if c < 1]
    assert edges[0] == 0 and edges[-1] == 1 and edges == sorted(set(edges))
    assert set(inner) <= set(edges)
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        assert bool(maps[j] & 1) == (lo in inner)
        assert bool(maps[j] & 2) == (hi in inner or (hi == 1 and 1 in cuts))
        for c in inner:
            if c not in (lo, hi):
                assert min(abs(c - lo), abs(c - hi)) >= (hi - lo) / 6, (lo, hi, c)
    if B == 32 and us == (-0.5,):
        assert len(edges) > 4  # graded: the two cuts are 0.0081 and 0.0167


def test_graded_pieces_exit_at_one():
    """ReLU at B = 4, beta = gamma = 1: the corner of the kink lines leaves the sphere at tau = 1."""
    cuts = exit_taus([sp.Integer(-1)], 4, upto_one=True)
    assert cuts == [sp.Rational(1, 3), 1]
    assert exit_taus([sp.Integer(-1)], 4) == [sp.Rational(1, 3)]
    assert graded_pieces(cuts, sp.Integer(1)) == ([0, sp.Rational(1, 3), 1], [2, 3])


def test_fit_tables_splits_a_piece_that_does_not_converge():
    """A table with poles at tau = -c +- i c (c small, as tanh(gamma sqrt(tau) y) at large gamma^2 B)
    needs more than degree 64 on [0, 1]: the piece is split towards 0 and then converges; with
    the poles closer still it raises instead of returning a poor interpolant."""
    with mpmath.workdps(20):
        tol = mpmath.mpf(10) ** -13

        def make(c):
            calls = []

            def at(tau):
                calls.append(tau)
                return {"f": 1 / ((tau + c) ** 2 + c * c), "g": mpmath.exp(tau)}

            return at, calls

        at, calls = make(mpmath.mpf("0.02"))
        pieces, worst = fit_tables([mpmath.mpf(0), mpmath.mpf(1)], [0], at, ["f", "g"], tol, "test")
        assert len(pieces) > 1 and pieces[0].lo == 0 and pieces[-1].hi == 1 and worst < tol * 3000
        assert all(a.hi == b.lo for a, b in zip(pieces[:-1], pieces[1:]))
        for tau in [mpmath.mpf(j) / 97 for j in range(98)]:
            p = next(p for p in pieces if tau <= p.hi)
            assert abs(_clenshaw(p.coeffs["f"], p.x(tau)) - 1 / ((tau + 0.02) ** 2 + 0.0004)) < 1e-9
        at, _ = make(mpmath.mpf("1e-7"))
        with pytest.raises(ConvergenceError, match="splits"):
            fit_tables([mpmath.mpf(0), mpmath.mpf(1)], [0], at, ["f"], tol, "test")

        # a piece with square-root ends (map 3): the split parts keep the map at their singular end
        def at3(tau):
            return {"f": mpmath.sqrt(tau * (1 - tau)) / ((tau + 0.02) ** 2 + 0.0004)}

        pieces, _ = fit_tables([mpmath.mpf(0), mpmath.mpf(1)], [3], at3, ["f"], tol, "test")
        assert len(pieces) > 1
        assert pieces[0].kind == 1 and pieces[-1].kind == 2 and all(p.kind == 0 for p in pieces[1:-1])
        for tau in [mpmath.mpf(j) / 97 for j in range(98)]:
            p = next(p for p in pieces if tau <= p.hi)
            assert abs(_clenshaw(p.coeffs["f"], p.x(tau)) - at3(tau)["f"]) < 1e-9
