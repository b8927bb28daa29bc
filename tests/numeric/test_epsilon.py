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
@pytest.mark.parametrize(("beta", "sw"), [(0.5, 1.0), (-0.5, 4.0)])
def test_relu_beta_against_explicit_maps(beta, sw):
    """ReLU with beta != 0 (tables split at the kink-line and corner exits) against the explicit maps;
    at beta = -0.5 the BSB1 point is the upper of two nonzero fixed points (the map is iterated
    from mu = 1), and at sigma_w^2 = 1 the explicit map collapses (no nonzero fixed point)."""
    B, eps = 4, 0.1
    if beta < 0:
        assert ex.eps_fixed_point(relu, B, eps, 1.0, beta=beta, n=20_000) < 1e-12
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


def test_kinks_with_long_mantissas_stay_exact():
    """Regression (ReLU, B = 4, beta = 0.2: ConvergenceError after 710 s): the kink -beta/(gamma t)
    at a tau node is a rational with a long mantissa; nsimplify used to replace it by a nearby
    algebraic number (1e-16 off), the quadrature's break points then missed the jump of the step
    phi' and the error estimate stalled at 1e-8. Exact kinks stay exact, floats are rationalised."""
    from symbnmf.numeric._quadrature import coordinate_function, sphere_expectations
    from symbnmf.symbolic._sphere import y1, y2

    t = sp.Rational(1852236704005605, 9007199254740992)  # the node of the failure (tau = 0.0423)
    k = -sp.Rational(1, 5) / t
    f = coordinate_function(sp.Piecewise((1, y1 > k), (0, True)))
    assert f.kinks == (k,)
    assert coordinate_function(sp.Piecewise((1, y1 > sp.Float("0.3")), (0, True))).kinks == (sp.Rational(3, 10),)
    step1, step2 = (sp.Piecewise((1, y > k), (0, True)) for y in (y1, y2))
    (v,) = sphere_expectations([(step1, step2)], 4, 18)
    # P(y1 > k, y2 > k) = 1 - 2 P(y1 <= k) + P(y1 <= k, y2 <= k); at B = 4, y1 is uniform on
    # [-sqrt 3, sqrt 3] (density (1 - y^2/3)^0); the corner term is checked by Monte Carlo below
    p1 = (k + sp.sqrt(3)) / (2 * sp.sqrt(3))
    rng = np.random.default_rng(12)
    z = rng.standard_normal((400_000, 4))
    z -= z.mean(axis=1, keepdims=True)
    y = 2 * z / np.linalg.norm(z, axis=1, keepdims=True)
    both = ((y[:, 0] <= float(k)) & (y[:, 1] <= float(k))).mean()
    se = np.sqrt(both * (1 - both) / len(y))
    want = 1 - 2 * float(p1) + both
    assert abs(float(v) - want) < 4 * se + 1e-15
    with mpmath.workdps(30):
        (one,) = sphere_expectations([(step1, 1)], 4, 25)
        assert abs(one - (1 - mpmath.mpf(str(p1.evalf(40))))) < mpmath.mpf(10) ** -24


def test_zero_collapse_direction_relu_negative_beta():
    """ReLU at beta < 0: phi'(beta) = 0, so the collapse direction psi is identically 0 (m0 = 0, the
    collapsed phase is always linearly stable); its sphere integrals used to crash the compiled
    2-D rule (a constant had no SymPy form). Constants now compile with the other functions."""
    from symbnmf.numeric._quadrature import sphere_expectations
    from symbnmf.symbolic._sphere import y1, y2

    vals = sphere_expectations([(sp.S.Zero, sp.S.Zero), (sp.Rational(1, 2), y2**2), (y1**2, y2**2)], 4, 20)
    assert vals[0] == 0
    assert abs(vals[1] - mpmath.mpf(1) / 2) < mpmath.mpf(10) ** -20  # E y_j^2 = 1
    # E y1^2 y2^2 against seeded Monte Carlo
    rng = np.random.default_rng(3)
    z = rng.standard_normal((400_000, 4))
    z -= z.mean(axis=1, keepdims=True)
    y = 2 * z / np.linalg.norm(z, axis=1, keepdims=True)
    s = y[:, 0] ** 2 * y[:, 1] ** 2
    assert abs(float(vals[2]) - s.mean()) < 4 * s.std() / np.sqrt(len(s))


def test_sin2_rule_resolves_square_root_ends():
    """The outer rule of the 2-D quadrature with kinks off 0 (SIN2): Gauss-Legendre after
    x = a + (b - a) sin^2(pi v/2) integrates sqrt(x - a) sqrt(b - x) exp(x) to 30 digits at degree 5
    (48 nodes); plain Gauss-Legendre does not."""
    from symbnmf.numeric._quadrature import SIN2, _nodes

    with mpmath.workdps(40):
        a, b = mpmath.mpf("0.3"), mpmath.mpf("1.7")
        f = lambda x: mpmath.sqrt(x - a) * mpmath.sqrt(b - x) * mpmath.exp(x)
        exact = mpmath.quad(f, [a, (a + b) / 2, b])
        got = sum(w * f(x) for x, w in _nodes(SIN2, a, b, 5))
        plain = sum(w * f(x) for x, w in _nodes("gauss-legendre", a, b, 5))
        assert abs(got - exact) < mpmath.mpf(10) ** -30
        assert abs(plain - exact) > mpmath.mpf(10) ** -8


def test_sphere_integrals_with_a_kink_line_tangent_to_the_disk():
    """Regression (leaky ReLU(0.2), B = 4, beta = -0.4, eps = 0.1: ConvergenceError "error estimate
    1e-16 > 1e-20"): at the tau node of the exit tau = u^2/(B-1) the kink line y_j = -beta/(gamma t)
    is tangent to the disk of (y1, y2) to ~1e-28 (t is sqrt(tau) rounded to a binary rational). Its
    exits cut outer psi pieces of width ~1e-14, whose inner theta kinks asin(k/(R cos psi)) are not
    resolved to working precision (1 - k/(R cos psi) ~ 1e-28): inner estimates ~1e-16, which used
    to be charged as if over the whole circle (max * 2 pi) instead of over those pieces (sum of the
    psi weights times the inner estimates). Reference: on the disk y_j <= sqrt(3) ~ k, so phi is
    the linear branch 0.2 (beta + t y) up to a cap of relative size ~1e-56."""
    from symbnmf.numeric._quadrature import sphere_expectations
    from symbnmf.symbolic._sphere import y1, y2

    t = sp.Rational(571780011937624156677023383, 2475880078570760549798248448)  # the failing node
    beta = sp.Rational(-2, 5)
    assert abs(float(-beta / t) - 3**0.5) < 1e-15
    phi = get_activation("leaky_relu(0.2)").bound_expr
    from symbnmf._activations import x

    f1, f2 = (phi.subs(x, beta + t * y) for y in (y1, y2))
    d1, d2 = (sp.diff(phi, x).subs(x, beta + t * y) for y in (y1, y2))
    pairs = [(f1, f2), (d1, d2), (y1**2 * d1, d2), (y1 * d1, y2 * d2), (f1**2, 1)]
    vals = sphere_expectations(pairs, 4, 18)
    with mpmath.workdps(30):
        b, tt = (mpmath.mpf(v.p) / v.q for v in (beta, t))
        # E y_j^2 = 1, E y1 y2 = -1/(B - 1) = -1/3 at B = 4
        want = [
            mpmath.mpf("0.04") * (b**2 - tt**2 / 3),
            mpmath.mpf("0.04"),
            mpmath.mpf("0.04"),
            mpmath.mpf("-0.04") / 3,
            mpmath.mpf("0.04") * (b**2 + tt**2),
        ]
        for v, w in zip(vals, want):
            assert abs(v - w) < mpmath.mpf(10) ** -18, (v, w)
