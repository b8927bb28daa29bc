"""Closed forms of the eps > 0 theory (issue 12, part 3): radial lemmas certified at 50 digits,
the eps -> 0 limit reproduces derive() exactly (symbolically), the collapse boundary, LaTeX steps."""

from __future__ import annotations

import mpmath
import pytest
import sympy as sp

from symbnmf._errors import NoClosedFormError
from symbnmf.symbolic._algebra import B
from symbnmf.symbolic._derivation import compact_latex
from symbnmf.symbolic._derive import derive
from symbnmf.symbolic._epsforms import (
    EPS,
    GAMMA,
    MU,
    WEIGHT_VAR,
    _c,
    _k,
    _s,
    at_eps_zero,
    derive_eps,
    expint_scaled,
    radial_lemmas,
)

DPS = 50


def _mp_chi2(integrand, k: int, c):
    """E_{chi^2_k}[integrand(s)] by mpmath quadrature of the defining integral (density written out)."""
    f = sp.lambdify(_s, integrand.subs({_k: k, _c: c}), "mpmath")
    half = mpmath.mpf(k) / 2

    def g(s):
        return f(s) * s ** (half - 1) * mpmath.exp(-s / 2) / (2**half * mpmath.gamma(half))

    return mpmath.quad(g, [0, k, 4 * k + 40, mpmath.inf])


@pytest.mark.parametrize("name", sorted(radial_lemmas()))
@pytest.mark.parametrize("k,c", [(3, sp.Rational(3, 10)), (7, sp.Rational(5, 2)), (63, 40), (127, sp.Rational(1, 100))])
def test_radial_lemma_certified(name, k, c):
    lem = radial_lemmas()[name]
    with mpmath.workdps(DPS + 10):
        quad = _mp_chi2(lem.integrand, k, c)
        closed = sp.N(lem.closed.subs({_k: k, _c: c}), DPS + 10)
        closed = mpmath.mpf(sp.Float(closed, DPS + 10)._mpf_)
        assert abs(closed - quad) <= mpmath.mpf(10) ** (-DPS + 5) * abs(quad), (name, k, c, closed, quad)
    assert lem.latex()  # states itself in LaTeX


def test_expint_scaled_function():
    nu, z = sp.Rational(7, 2), sp.Rational(3, 4)
    assert expint_scaled(nu, 0) == sp.Rational(2, 5)
    v = sp.N(expint_scaled(nu, z), 40)
    w = sp.N(expint_scaled(nu, z).rewrite(sp.expint), 40)
    assert abs(v - w) < 1e-38
    h = sp.Rational(1, 10**12)
    num = (expint_scaled(nu, z + h) - expint_scaled(nu, z - h)) / (2 * h)
    assert abs(sp.N(num - sp.diff(expint_scaled(nu, sp.Symbol("z")), "z").subs("z", z), 30)) < 1e-15
    assert "mathcal{P}" in sp.latex(expint_scaled(nu, z))


@pytest.mark.parametrize("act", ["relu", "identity", pytest.param("leaky_relu", marks=pytest.mark.slow)])
def test_eps_to_zero_reproduces_derive_symbolically(act):
    d, d0 = derive_eps(act), derive(act)
    mu0 = d.sphere["a"] - d.sphere["b"]
    assert sp.simplify(mu0 - (d0.quantities["fixed_point.diag"] - d0.quantities["fixed_point.offdiag"])) == 0
    for name, expr in d.quantities.items():
        if name == "depth_scale":
            continue
        lim = at_eps_zero(expr).subs({WEIGHT_VAR: 1, GAMMA: 1, MU: mu0})
        assert sp.simplify(lim - d0.quantities[name]) == 0, name
    assert sp.simplify(d.quantities["depth_scale"] - 1 / sp.log(d.quantities["backward.G"])) == 0


@pytest.mark.parametrize("Bv", [4, pytest.param(5, marks=pytest.mark.slow)])
def test_eps_to_zero_is_a_limit_at_concrete_B(Bv):
    """A genuine SymPy limit eps -> 0+ (expint form) at B = 4 and B = 5, not only substitution."""
    d, d0 = derive_eps("relu"), derive("relu")
    if True:
        mu0 = (d.sphere["a"] - d.sphere["b"]).subs(B, Bv)
        for name in ("backward.G", "forward.L"):
            e = d.quantities[name].subs({B: Bv, WEIGHT_VAR: 1, GAMMA: 1, MU: mu0}).rewrite(sp.expint)
            lim = sp.limit(e, EPS, 0, "+")
            if Bv == 4:  # half-integer orders: SymPy simplifies the difference to 0 exactly
                assert sp.simplify(lim - d0.quantities[name].subs(B, Bv)) == 0, (Bv, name)
            else:  # integer orders: SymPy's limit carries log(sqrt(15) + I) terms it cannot cancel
                diff = sp.N(lim - d0.quantities[name].subs(B, Bv), 40)
                assert abs(diff) < 1e-35, (Bv, name, diff)


def test_collapse_boundary_relu():
    d = derive_eps("relu")
    mu0 = d.sphere["a"] - d.sphere["b"]
    assert sp.simplify(d.collapse_slope - WEIGHT_VAR * GAMMA**2 * mu0 * (B - 1) / (B * EPS)) == 0
    assert sp.simplify(d.collapse_boundary - WEIGHT_VAR * GAMMA**2 * mu0 * (B - 1) / B) == 0
    # F(mu)/mu at tiny mu approaches the slope (closed-form map, B = 8)
    vals = {B: 8, EPS: sp.Rational(1, 10), WEIGHT_VAR: 2, GAMMA: 1}
    ratio = sp.N((d.fixed_point_map / MU).subs(vals).subs(MU, sp.Rational(1, 10**8)), 30)
    assert abs(ratio / sp.N(d.collapse_slope.subs(vals), 30) - 1) < 1e-6


def test_forward_G_is_derivative_of_the_map():
    d = derive_eps("relu")
    vals = {
        B: 6,
        EPS: sp.Rational(1, 20),
        WEIGHT_VAR: sp.Rational(3, 2),
        GAMMA: sp.Rational(6, 5),
        MU: sp.Rational(1, 3),
    }
    fG = sp.N(d.quantities["forward.G"].subs(vals), 40)
    dF = sp.N(sp.diff(d.fixed_point_map, MU).subs(vals), 40)
    assert abs(fG - dF) < 1e-35


def test_steps_print_latex_and_family():
    d = derive_eps("relu")
    for name, steps in d.steps.items():
        for st in steps:
            assert isinstance(compact_latex(st.equation), str) and st.justification, (name, st.name)
    assert "fixed_point" in d.steps and "collapse" in d.steps
    with pytest.raises(NoClosedFormError, match="quadrature"):
        derive_eps("tanh")
