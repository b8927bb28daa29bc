"""Closed forms (derived by SymPy) against published anchors, limits and independent Monte Carlo
of the explicit B x B maps (tests/explicit.py), at B = 4, 8 and 64."""

from __future__ import annotations

import math

import explicit as ex
import numpy as np
import pytest
import sympy as sp
from mpmath import mp

import symbnmf
from symbnmf import QUANTITIES, B, derive

a = sp.Symbol("a", real=True)


def num(expr, Bval, dps=50, **subs):
    e = expr.subs(B, Bval).subs({sp.Symbol(k, real=True): v for k, v in subs.items()})
    return mp.mpf(sp.Float(sp.N(e, dps + 10), dps + 10)._mpf_)


@pytest.fixture(scope="module")
def relu():
    return derive("relu")


@pytest.fixture(scope="module")
def identity():
    return derive("identity")


def test_identity_anchors_symbolically(identity):
    q = identity.quantities
    assert sp.simplify(q["fixed_point.diag"] - 1) == 0
    assert sp.simplify(q["fixed_point.offdiag"] + 1 / (B - 1)) == 0
    assert sp.simplify(q["backward.G"] - (B - 2) / (B - 3)) == 0  # published (Thm 3.9 equality case)
    assert q["forward.G"] == 0


def test_relu_anchors(relu):
    q = relu.quantities
    assert sp.simplify(q["fixed_point.diag"] - sp.Rational(1, 2)) == 0
    c = -1 / (B - 1)
    J1 = (sp.sqrt(1 - c**2) + (sp.pi - sp.acos(c)) * c) / sp.pi
    mp.dps = 50
    for Bval in (4, 5, 8, 16, 64, 1000):
        assert abs(num(q["fixed_point.offdiag"], Bval) - num(J1 / 2, Bval)) < mp.mpf(10) ** (-45)
    assert q["forward.G"] == 0
    # Thm 3.10: lambda_G decreases to pi/(pi-1)
    assert sp.simplify(relu.limits["backward.G"][0] - sp.pi / (sp.pi - 1)) == 0
    vals = [float(num(q["backward.G"], Bval)) for Bval in (4, 8, 16, 64, 256, 4096)]
    assert all(x > y for x, y in zip(vals, vals[1:]))
    assert vals[-1] > math.pi / (math.pi - 1)
    assert vals[0] == pytest.approx(3.08, abs=0.01)  # docs/theory.md: about 3.08 at B = 4


def test_gradient_explosion_lower_bound(relu, identity):
    """Thm 3.9: lambda_G >= (B-2)/(B-3), equality for linear phi."""
    for Bval in (4, 5, 8, 32, 100):
        assert num(relu.quantities["backward.G"], Bval) > num(identity.quantities["backward.G"], Bval)


def test_leaky_relu_contains_relu_and_identity(relu, identity):
    leaky = derive("leaky_relu")
    assert a in leaky.quantities["backward.G"].free_symbols
    mp.dps = 40
    for name in QUANTITIES:
        for Bval in (4, 7, 33):
            for aval, ref in ((0, relu), (1, identity)):
                got = num(leaky.quantities[name].subs(a, aval), Bval, 40)
                want = num(ref.quantities[name], Bval, 40)
                assert abs(got - want) <= mp.mpf(10) ** (-35) * max(1, abs(want)), (name, Bval, aval)


@pytest.mark.parametrize("name", ["identity", "relu"])
def test_limits_and_first_order_corrections_converge_at_order_two(name):
    """q(B) - q_inf - c1/B = O(1/B^2): the fitted log-log slope is -2 (diffrax-style order test)."""
    d = derive(name)
    mp.dps = 40
    Bs = [10**3, 10**4, 10**5]
    for q, (q0, c1) in d.limits.items():
        errs = [abs(num(d.quantities[q], b, 40) - num(q0, b, 40) - num(c1, b, 40) / b) for b in Bs]
        if max(errs) < mp.mpf(10) ** -30:
            continue  # exact (e.g. identity's constant diag)
        slope = float(mp.log(errs[-1] / errs[0]) / mp.log(mp.mpf(Bs[-1]) / Bs[0]))
        assert slope == pytest.approx(-2, abs=0.15), (q, slope)


def test_depth_scale_is_derived_from_backward_G(relu):
    assert sp.simplify(relu.quantities["depth_scale"] - 1 / sp.log(relu.quantities["backward.G"])) == 0
    assert float(num(relu.quantities["depth_scale"], 64)) == pytest.approx(
        1 / math.log(float(num(relu.quantities["backward.G"], 64)))
    )


# ---- three-way agreement: explicit Monte Carlo -------------------------------------------------
_ACTS = {
    "identity": (lambda y: y, lambda y: np.ones_like(y)),
    "relu": (lambda y: np.maximum(y, 0.0), lambda y: (y > 0).astype(float)),
    "leaky_relu(0.2)": (lambda y: np.where(y > 0, y, 0.2 * y), lambda y: np.where(y > 0, 1.0, 0.2)),
}


@pytest.mark.parametrize("act", list(_ACTS))
@pytest.mark.parametrize("Bval", [4, 8, 64])
def test_closed_forms_against_explicit_monte_carlo(act, Bval):
    phi, dphi = _ACTS[act]
    rec = symbnmf.evaluate(act, [Bval])[0]
    n = 100_000 if Bval < 64 else 20_000
    seed = 1000 + Bval
    fp = ex.fixed_point(phi, Bval, n=n, seed=seed)
    for k in ("diag", "offdiag"):
        # (identity: the sample values are exact up to rounding, so a rounding slack is added)
        assert abs(fp[k].value - rec["fixed_point"][k]) < 5 * fp[k].stderr + 1e-12, (k, fp[k], rec["fixed_point"][k])
    dirs = ex.test_directions(Bval)
    for piece in ("L", "M"):
        e = ex.forward_rayleigh(phi, Bval, dirs[piece], n=n, seed=seed)
        assert abs(e.value - rec["forward"][piece]) < 5 * e.stderr + 1e-6, (piece, e, rec["forward"][piece])
    for piece in ("G", "L", "M"):
        e = ex.backward_rayleigh(phi, dphi, Bval, dirs[piece], n=n, seed=seed)
        assert abs(e.value - rec["backward"][piece]) < 5 * e.stderr + 1e-9, (piece, e, rec["backward"][piece])


def test_forward_G_vanishes_by_scale_invariance():
    """forward.G = 0 is derived (the index sum cancels identically), and the explicit map agrees."""
    from symbnmf.symbolic._quantities import I_S, abstract_definitions

    assert abstract_definitions()["forward.G"].integrals[I_S].terms == ()
    phi, _ = _ACTS["relu"]
    e = ex.forward_rayleigh(phi, 6, ex.test_directions(6)["G"], n=50_000)
    assert abs(e.value) < 5 * e.stderr + 1e-8


def test_alpha_relu_integer_closed_form_matches_monte_carlo():
    """alpha_relu(2) is piecewise polynomial: the same engine derives it (degree-4 wedge moments)."""
    rec = symbnmf.evaluate("alpha_relu(2)", [6])[0]
    phi = lambda y: np.where(y > 0, y * y, 0.0)
    dphi = lambda y: np.where(y > 0, 2 * y, 0.0)
    e = ex.backward_rayleigh(phi, dphi, 6, ex.test_directions(6)["G"], n=100_000, seed=3)
    assert abs(e.value - rec["backward"]["G"]) < 5 * e.stderr
    fp = ex.fixed_point(phi, 6, n=100_000, seed=3)
    assert abs(fp["offdiag"].z(rec["fixed_point"]["offdiag"])) < 5


def test_warm_cache_is_instant_and_identical(tmp_path, monkeypatch):
    import time

    from symbnmf.symbolic import _derive

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_derive, "_MEMO", {})
    cold = derive("identity")
    assert list(tmp_path.glob("derive-*.json"))
    monkeypatch.setattr(_derive, "_MEMO", {})
    t0 = time.perf_counter()
    warm = derive("identity")
    assert time.perf_counter() - t0 < 1.0
    for name in QUANTITIES:
        assert sp.simplify(warm.quantities[name] - cold.quantities[name]) == 0


def test_no_closed_form_is_a_clear_error():
    with pytest.raises(symbnmf.NoClosedFormError, match="quadrature"):
        derive("tanh")
