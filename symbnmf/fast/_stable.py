"""Exact rewriting of closed forms in the batch size B into a form that floating point evaluates
well at every B >= 4, float32 included (used by the generated modules, :mod:`._codegen_module`).

The derived closed forms are built from polynomials in B, ``sqrt(B)``, ``sqrt(B - 2)``,
``acos(1/(B - 1))``, pi and the activation's parameters. Printed as derived they overflow
(``B**4`` is inf in float32 from B ~ 1e10), and their B-derivatives are differences of nearly
equal large terms (``jax.grad`` in float32 was off by 10% at B = 1e6). :func:`stable_in_B`
changes variable to ``u = 1/B`` (a positive symbol): every factor ``p(B)`` of degree d becomes
``u**-d * p~(u)`` with ``p~(u) = u**d p(1/u)`` bounded near u = 0 (``B - 2 -> (1 - 2u)/u``,
``sqrt(B) sqrt(B - 2) -> sqrt(1 - 2u)/u``), sums are brought to their common power of u, and
``c*acos(x)`` next to a multiple of pi becomes ``c*(pi/2 - asin(x))`` so that ``2 acos(1/(B - 1)) - pi`` collapses to
``-2 asin(u/(1 - u))`` symbolically instead of cancelling in floating point. The result is
``u**-k * E(u)`` with E bounded at u = 0: no overflow at any finite B (B = inf gives the limit),
and its derivative in u has no large cancelling terms.

All of it is done by SymPy on the derived expression and checked: the rewritten form must agree
with the original at several batch sizes to 40 digits (mpmath), else the original is kept.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["stable_in_B"]

_CHECK_POINTS = (4, 5, 7, 12, 101, 10**6 + 3, 10**40 + 7)


def _order(e: sp.Expr, B: sp.Symbol, u: sp.Symbol) -> tuple[sp.Rational, sp.Expr]:
    """``(k, E)`` with ``e == u**-k * E`` (after B = 1/u) and E bounded near u = 0 (structurally)."""
    if not e.has(B):
        return sp.Integer(0), e
    if e == B:
        return sp.Integer(1), sp.Integer(1)
    if isinstance(e, sp.Add):
        parts = [_order(a, B, u) for a in e.args]
        k = max(p[0] for p in parts)
        return k, sp.Add(*[u ** (k - kk) * ee for kk, ee in parts])
    if isinstance(e, sp.Mul):
        parts = [_order(a, B, u) for a in e.args]
        return sp.Add(*[p[0] for p in parts]), sp.Mul(*[p[1] for p in parts])
    if isinstance(e, sp.Pow) and e.exp.is_Rational and not e.exp.has(B):
        k, E = _order(e.base, B, u)
        # valid for u > 0: the base and u**-k are positive where a fractional power is real
        return k * e.exp, E**e.exp
    if isinstance(e, sp.Function) and len(e.args) == 1:
        k, E = _order(e.args[0], B, u)
        if k <= 0:  # a bounded argument: the function of the bounded form
            return sp.Integer(0), e.func(sp.cancel(u ** (-k) * E) if k else E)
    # anything else (growing arguments, several arguments): the plain substitution
    return sp.Integer(0), e.xreplace({B: 1 / u})


def _is_pi_multiple(term: sp.Expr) -> bool:
    return term.is_number and (term / sp.pi).is_Rational


def _acos_against_pi(n: sp.Basic) -> bool:
    """A sum with a rational multiple of pi and a term ``c*acos(x)`` (c a number): they cancel as x -> 0."""
    if not isinstance(n, sp.Add) or not any(_is_pi_multiple(t) for t in n.args):
        return False
    return any(isinstance(f, sp.acos) for t in n.args for f in sp.Mul.make_args(t) if t.as_coeff_Mul()[0].is_Number)


def _acos_to_asin(n: sp.Add) -> sp.Expr:
    """``acos(x) = pi/2 - asin(x)`` in the terms ``c*acos(x)`` of the sum (pi terms then combine)."""
    terms = []
    for t in n.args:
        c, rest = t.as_coeff_Mul()
        if isinstance(rest, sp.acos):
            t = c * (sp.pi / 2 - sp.asin(rest.args[0]))
        terms.append(t)
    return sp.Add(*terms)


def stable_in_B(expr: sp.Expr, B: sp.Symbol, u: sp.Symbol) -> sp.Expr:
    """``expr`` (in B) rewritten exactly in ``u = 1/B`` (see the module docstring).

    Returns ``expr`` unchanged when it does not depend on B or when the rewritten form does
    not agree numerically with it (a safety net: the generated code must mean the derivation).
    """
    expr = sp.sympify(expr)
    if not expr.has(B):
        return expr
    try:
        e = expr.replace(_acos_against_pi, _acos_to_asin)
        k, E = _order(e, B, u)
        out = E if k == 0 else E * u ** (-k)
    except (TypeError, ValueError, NotImplementedError):  # pragma: no cover - keep the derived form
        return expr
    return out if _agrees(expr, out, B, u) else expr


def _agrees(a: sp.Expr, b: sp.Expr, B: sp.Symbol, u: sp.Symbol) -> bool:
    """``a(B) == b(1/B)`` at several batch sizes (and parameter values) to 40 digits."""
    params = sorted(a.free_symbols - {B}, key=str)
    vals = {p: sp.Rational(3 + i, 10 + 3 * i) for i, p in enumerate(params)}
    for b_ in _CHECK_POINTS:
        x = sp.N(a.subs(vals).subs(B, b_), 50)
        y = sp.N(b.subs(vals).subs(u, sp.Rational(1, b_)), 50)
        if not (x.is_real and y.is_real) or x.is_finite is False or y.is_finite is False:
            if x != y:
                return False
            continue
        if abs(x - y) > sp.Float(10, 50) ** -40 * max(1, abs(x)):
            return False
    return True
