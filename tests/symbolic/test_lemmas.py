"""Every lemma the derivations rely on, certified numerically (tolerance follows mp.dps)."""

from __future__ import annotations

import explicit as ex
import numpy as np
import pytest
import sympy as sp
from mpmath import mp

from symbnmf.symbolic._algebra import B
from symbnmf.symbolic._gaussian import (
    LEMMAS,
    S_sym,
    T_sym,
    half_moment,
    psi,
    rho,
    s_,
    sphere_monomial,
    sphere_single,
    standard_pair_moment,
    wedge,
)
from symbnmf.symbolic._sphere import conditional_moment, isserlis, y1, y2


def tol() -> mp.mpf:
    return mp.mpf(10) ** (-mp.dps + 5)


def test_every_lemma_has_a_statement_and_a_proof_line():
    assert set(LEMMAS) >= {
        "orbit",
        "conditional_sphere",
        "sphere_moments",
        "sphere_to_gaussian",
        "chi_moment",
        "gaussian_pair",
        "half_moment",
        "regression",
        "wedge",
    }
    for lem in LEMMAS.values():
        assert lem.proof and lem.latex()


@pytest.mark.parametrize("dps", [20, 35])
@pytest.mark.parametrize("k", range(6))
def test_half_moment(k, dps):
    mp.dps = dps
    num = mp.quad(lambda t: t**k * mp.npdf(t), [0, mp.inf])
    assert abs(mp.mpf(sp.N(half_moment(k), dps + 5)) - num) < tol()


# Gaussian tails beyond |x| = 14 are below 1e-40: truncated boxes keep the 2-D quadratures fast.
_CUT = 14


def _bivariate(f, r, dps):
    mp.dps = dps
    s = mp.sqrt(1 - r**2)
    dens = lambda a, b: mp.exp(-(a * a - 2 * r * a * b + b * b) / (2 * s * s)) / (2 * mp.pi * s)
    return mp.quad(lambda a, b: f(a, b) * dens(a, b), [0, 4, _CUT], [0, 4, _CUT], method="gauss-legendre")


_WEDGE_CASES = [
    (p, q, r)
    for p, q in [(0, 0), (1, 1), (2, 0), (2, 1), (1, 3), (2, 2)]
    for r in ["-0.3333333333333333333333", "-0.05", "0.4"]
]
_WEDGE_FAST = {(1, 1, "-0.3333333333333333333333"), (2, 1, "-0.05"), (2, 2, "0.4")}


@pytest.mark.parametrize(
    "p,q,r", [c if c in _WEDGE_FAST else pytest.param(*c, marks=pytest.mark.slow) for c in _WEDGE_CASES]
)
def test_wedge_lemma(p, q, r):
    dps = 15
    mp.dps = dps
    r = mp.mpf(r)
    num = _bivariate(lambda a, b: a**p * b**q, r, dps)
    expr = wedge(p, q).subs(
        {rho: sp.Float(str(r), 30), s_: sp.sqrt(1 - sp.Float(str(r), 30) ** 2), psi: sp.acos(sp.Float(str(r), 30))}
    )
    assert abs(mp.mpf(sp.N(expr, dps + 5)) - num) < tol()


def test_wedge_reproduces_the_arccosine_kernel_anchor():
    """E[relu(x1) relu(x2)] = J1(rho)/2 with J1(c) = (sqrt(1-c^2) + (pi - arccos c) c)/pi (docs/theory.md)."""
    J1 = (s_ + (sp.pi - psi) * rho) / sp.pi
    assert sp.simplify(wedge(1, 1) - J1 / 2) == 0
    assert sp.simplify(wedge(0, 0) - (sp.pi - psi) / (2 * sp.pi)) == 0


@pytest.mark.parametrize(
    "p,e1,q,e2",
    [
        (1, 1, 1, 0),
        (3, 0, 1, 1),
        pytest.param(1, 1, 0, 0, marks=pytest.mark.slow),
        pytest.param(2, 1, 1, 0, marks=pytest.mark.slow),
    ],
)
def test_regression_lemma(p, e1, q, e2):
    dps = 15
    mp.dps = dps
    r = mp.mpf(-1) / 7
    s = mp.sqrt(1 - r**2)
    dens = lambda a, b: mp.exp(-(a * a - 2 * r * a * b + b * b) / (2 * s * s)) / (2 * mp.pi * s)
    lim1 = [0, 4, _CUT] if e1 else [-_CUT, -4, 0, 4, _CUT]
    lim2 = [0, 4, _CUT] if e2 else [-_CUT, -4, 0, 4, _CUT]
    num = mp.quad(lambda a, b: a**p * b**q * dens(a, b), lim1, lim2, method="gauss-legendre")
    expr = standard_pair_moment(p, e1, q, e2).subs(
        {rho: sp.Rational(-1, 7), s_: sp.sqrt(1 - sp.Rational(1, 49)), psi: sp.acos(sp.Rational(-1, 7))}
    )
    assert abs(mp.mpf(sp.N(expr, dps + 5)) - num) < tol()


@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("Bval", [4, 9])
def test_chi_moment(K, Bval):
    mp.dps = 25
    k = Bval - 1
    dens = lambda r: r ** (k - 1) * mp.exp(-r * r / 2) / (2 ** (mp.mpf(k) / 2 - 1) * mp.gamma(mp.mpf(k) / 2))
    num = mp.quad(lambda r: r**K * dens(r), [0, mp.inf])
    val = LEMMAS["chi_moment"].statement.rhs.subs({sp.Symbol("K", nonnegative=True, integer=True): K, B: Bval})
    assert abs(mp.mpf(sp.N(val, 30)) - num) < tol()


@pytest.mark.parametrize("Bval", [4, 6])
def test_inverse_chi_square_radial_factor(Bval):
    """E[B/|Gh|^2] = B/((B-3) mu*) rests on E[1/chi^2_{B-1}] = 1/(B-3)."""
    mp.dps = 25
    k = Bval - 1
    dens = lambda u: u ** (mp.mpf(k) / 2 - 1) * mp.exp(-u / 2) / (2 ** (mp.mpf(k) / 2) * mp.gamma(mp.mpf(k) / 2))
    # u = v^2 removes the integrable singularity of the chi-square(3) density / u at 0
    num = mp.quad(lambda v: dens(v * v) / (v * v) * 2 * v, [0, 1, mp.inf])
    assert abs(num - mp.mpf(1) / (Bval - 3)) < tol()


@pytest.mark.parametrize("Bval", [4, 5, 9])
@pytest.mark.parametrize("mono", [(2, 1, 0, 0), (1, 1, 1, 1), (2, 1, 2, 1), (3, 1, 1, 0), (2, 0, 2, 0), (1, 1, 3, 1)])
def test_sphere_monomials_against_independent_sphere_quadrature(Bval, mono):
    """Lemmas sphere_to_gaussian + chi_moment + gaussian_pair against the Thm F.5 quadrature."""
    quad = pytest.importorskip("symbnmf.numeric._quadrature")
    dps = 30
    mp.dps = dps
    p, e1, q, e2 = mono
    relu1 = sp.Piecewise((1, y1 > 0), (0, True)) if e1 else 1
    relu2 = sp.Piecewise((1, y2 > 0), (0, True)) if e2 else 1
    f1 = y1**p * relu1
    f2 = y2**q * relu2
    num = quad.sphere_quadrature(f1, f2, Bval, dps)
    val = sphere_monomial(p, e1, q, e2).subs(
        {T_sym: sp.acos(sp.Rational(1, Bval - 1)), S_sym: sp.sqrt(Bval * (Bval - 2)), B: Bval}
    )
    assert abs(mp.mpf(sp.N(val, dps + 5)) - num) < tol()


def test_sphere_single_moments_exact():
    assert sp.simplify(sphere_single(2, 0) - 1) == 0  # E y_i^2 = 1
    assert sp.simplify(sphere_single(2, 1) - sp.Rational(1, 2)) == 0
    assert sp.simplify(sphere_monomial(1, 0, 1, 0) + 1 / (B - 1)) == 0  # E y1 y2 = -1/(B-1)


def test_isserlis():
    d, o = sp.symbols("d o")
    assert isserlis((4,), d, o) == 3 * d**2
    assert sp.expand(isserlis((2, 2), d, o) - (d**2 + 2 * o**2)) == 0
    assert isserlis((1, 2), d, o) == 0


@pytest.mark.parametrize("a,b,powers", [(0, 0, (2, 2)), (1, 1, (1, 1)), (2, 0, (1, 3)), (1, 0, (3,)), (2, 2, (2,))])
def test_conditional_moments_obey_the_tower_property(a, b, powers):
    """E[y1^a y2^b E[prod y_c^p | y1, y2]] (given=2 formula) = E[y1^a y2^b prod y_c^p] (given=0)."""
    lhs_poly = sp.Poly(sp.expand(y1**a * y2**b * conditional_moment(powers, 2)), y1, y2)
    lhs = sum((c * conditional_moment(mon, 0) for mon, c in lhs_poly.terms()), sp.S.Zero)
    rhs = conditional_moment((a, b) + powers, 0)
    assert sp.cancel(sp.together(lhs - rhs)) == 0


@pytest.mark.parametrize("Bval", [4, 7])
def test_unconditional_sphere_moments_against_monte_carlo(Bval):
    rng = np.random.default_rng(Bval)
    y = ex.sphere_samples(Bval, 400_000, rng)
    for powers in [(2, 2), (4,), (1, 1, 2), (2, 1, 1), (1, 1, 1, 1)]:
        vals = np.prod([y[:, i] ** p for i, p in enumerate(powers)], axis=0)
        exact = float(conditional_moment(powers, 0).subs(B, Bval))
        se = vals.std() / np.sqrt(len(vals))
        assert abs(vals.mean() - exact) < 5 * se + 1e-12
