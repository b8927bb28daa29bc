"""Generated modules at any B >= 4 (issue 10, item 8): finite, accurate values in float32 and float64
up to huge B, and accurate B-derivatives (the closed forms are evaluated in the exact u = 1/B form
of :mod:`symbnmf.fast._stable`, with the exact Taylor polynomial in 1/B above a dtype switch)."""

from __future__ import annotations

import mpmath
import pytest
import sympy as sp

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from symbnmf import codegen  # noqa: E402
from symbnmf.symbolic._algebra import B  # noqa: E402

F32_BS = [4, 8, 10**3, 10**6, 10**9, 10**15, 10**30]
F64_BS = F32_BS + [10**100, 10**300]
TOL = {"float32": 1e-5, "float64": 1e-14}
GRAD_TOL = {"float32": 1e-4, "float64": 1e-12}


def _exact(e, b, subs=None):
    """mpmath at 700 digits: enough for the cancellations of the B-form itself up to B = 1e300."""
    syms = sorted(e.free_symbols, key=str)
    f = sp.lambdify(syms, e, modules="mpmath")
    vals = {B: b, **(subs or {})}
    with mpmath.workdps(700):
        return float(f(*[mpmath.mpf(vals[s]) if s == B else mpmath.mpf(vals[s].p) / vals[s].q for s in syms]))


def _rel(got, want):
    return abs(got - want) / abs(want) if want else abs(got)


@pytest.fixture(scope="module", params=["relu", "abs(x)"])
def generated(request):
    forms, _, _ = codegen.closed_forms(request.param)
    return forms, codegen.load_module(codegen.jax_module(request.param))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_values_finite_and_accurate_up_to_huge_B(generated, dtype):
    forms, mod = generated
    with jax.enable_x64(True):
        for q, e in forms.items():
            fn = mod.FUNCTIONS[q]
            for b in F32_BS if dtype == "float32" else F64_BS:
                got = float(fn(jnp.asarray(float(b), dtype)))
                assert _rel(got, _exact(e, b)) <= TOL[dtype], (q, b, got)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grad_in_B_matches_the_exact_derivative(generated, dtype):
    forms, mod = generated
    with jax.enable_x64(True):
        for q, e in forms.items():
            d = sp.diff(e, B)
            for b in (8, 10**3, 10**6) if dtype == "float32" else (8, 10**3, 10**6, 10**9):
                got = float(jax.grad(mod.FUNCTIONS[q])(jnp.asarray(float(b), dtype)))
                # just below the float32 switch (B = 1024) a vanishing 1/B term costs ~eps*B: 5e-4
                tol = 5e-4 if (dtype == "float32" and b == 10**3) else GRAD_TOL[dtype]
                assert _rel(got, _exact(d, b)) <= tol, (q, b, got)
            g = jax.jit(jax.grad(mod.FUNCTIONS[q]))(jnp.asarray(1e6, dtype))  # jit-friendly switch
            assert bool(jnp.isfinite(g))


def test_leaky_slope_large_B_float32():
    """A parametrised form (no series): finite and accurate values; grad in the slope at B = 1e6."""
    forms, params, _ = codegen.closed_forms("leaky_relu")
    (a,) = params
    mod = codegen.load_module(codegen.jax_module("leaky_relu"))
    with jax.enable_x64(False):
        _check_leaky(forms, a, mod)


def _check_leaky(forms, a, mod):
    for q, e in forms.items():
        fn = mod.FUNCTIONS[q]
        for b in (4, 10**6, 10**15, 10**30):
            want = _exact(e, b, {a: sp.Rational(3, 10)})
            assert _rel(float(fn(jnp.float32(b), jnp.float32(0.3))), want) <= 1e-5, (q, b)
        da = sp.diff(e, a)
        want = _exact(da, 10**6, {a: sp.Rational(3, 10)})
        got = float(jax.grad(fn, argnums=1)(jnp.float32(1e6), jnp.float32(0.3)))
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), q
