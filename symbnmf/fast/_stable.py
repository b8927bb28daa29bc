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

__all__ = ["SWITCH_B", "large_B_form", "stable_in_B"]

#: Above this B (by float width in bytes) the generated code evaluates the exact Taylor polynomial
#: in u = 1/B instead of the closed form, whose B-derivative loses ~eps*B relative accuracy when
#: its 1/B term vanishes (e.g. the |x| fixed point). Checked below: truncation < 1e-12 (float32
#: switch) and < 1e-18 (float64 switch) relative at the switch.
SWITCH_B = {4: 1024, 8: 16384}
_SERIES_TERMS = (6, 8, 10)

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


# ---------------------------------------------------------------------------------------------
# Exact Taylor (Laurent) polynomial in u = 1/B, for large B
# ---------------------------------------------------------------------------------------------
class _NoSeries(Exception):
    """The expression has a piece the truncated-series arithmetic does not handle."""


class _Series:
    """Truncated Laurent series ``u**v * sum(c[j] u**j)`` over a field; ``len(c)`` terms are known."""

    def __init__(self, v: int, c: list, K) -> None:
        self.v, self.c, self.K = v, c, K

    def strip(self) -> _Series:
        i = 0
        while i < len(self.c) and self.c[i] == 0:
            i += 1
        if i == len(self.c):
            raise _NoSeries("series vanishes to the order computed")
        return _Series(self.v + i, self.c[i:], self.K)

    def __add__(self, o: _Series) -> _Series:
        v = min(self.v, o.v)
        end = min(self.v + len(self.c), o.v + len(o.c))
        c = [self.K.zero] * (end - v)
        for s in (self, o):
            for j, x in enumerate(s.c):
                if s.v + j < end:
                    c[s.v + j - v] += x
        return _Series(v, c, self.K)

    def __mul__(self, o: _Series) -> _Series:
        n = min(len(self.c), len(o.c))
        c = [sum((self.c[i] * o.c[j - i] for i in range(j + 1)), self.K.zero) for j in range(n)]
        return _Series(self.v + o.v, c, self.K)

    def inverse(self) -> _Series:
        s = self.strip()
        inv0 = 1 / s.c[0]
        c = [inv0]
        for j in range(1, len(s.c)):
            c.append(-inv0 * sum((s.c[i] * c[j - i] for i in range(1, j + 1)), s.K.zero))
        return _Series(-s.v, c, s.K)

    def compose(self, coeffs: list) -> _Series:
        """``sum(coeffs[k] * x**k)`` for this series x, which must vanish at u = 0."""
        x = self.strip()
        if x.v < 1:
            raise _NoSeries("inner series does not vanish at u = 0")
        n = len(x.c) + x.v
        out = _Series(0, [self.K.zero] * n, self.K)
        power = _Series(0, [self.K.one] + [self.K.zero] * (n - 1), self.K)
        for k, ck in enumerate(coeffs):
            if k:
                power = power * x
                power = _Series(power.v, power.c[: max(0, n - power.v)], self.K)
                if power.v >= n:
                    break
            if ck:
                out = out + _Series(power.v, [ck * t for t in power.c], self.K)
        return out


def _taylor(e: sp.Expr, u: sp.Symbol, n: int, K, gens: dict, spares: list, consts: dict) -> _Series:
    """Series of ``e`` to ``n`` known terms; ``gens``: SymPy symbol -> field generator."""
    rec = lambda a: _taylor(a, u, n, K, gens, spares, consts)
    zeros = [K.zero] * (n - 1)
    if e == u:
        return _Series(1, [K.one] + zeros, K)
    if not e.has(u):
        if e.is_Rational:
            return _Series(0, [K(e)] + zeros, K)
        if e in gens:
            return _Series(0, [gens[e]] + zeros, K)
        if isinstance(e, (sp.Add, sp.Mul)) or (isinstance(e, sp.Pow) and e.exp.is_Integer):
            pass  # built from its parts below
        else:
            return _Series(0, [_constant(e, spares, consts)] + zeros, K)
    if isinstance(e, sp.Add):
        out = rec(e.args[0])
        for a in e.args[1:]:
            out = out + rec(a)
        return out
    if isinstance(e, sp.Mul):
        out = rec(e.args[0])
        for a in e.args[1:]:
            out = out * rec(a)
        return out
    if isinstance(e, sp.Pow) and e.exp.is_Rational:
        base = rec(e.base).strip()
        p = e.exp
        if p.is_Integer:
            s = base if p > 0 else base.inverse()
            out = s
            for _ in range(abs(int(p)) - 1):
                out = out * s
            return out
        if (base.v * p).q != 1:
            raise _NoSeries("fractional power of u")
        c0 = base.c[0]
        root = sp.nsimplify(c0.as_expr() ** p) if not c0.as_expr().free_symbols else None
        if root is None or not root.is_Rational:
            root_el = _constant(c0.as_expr() ** p, spares, consts)
        else:
            root_el = K(root)
        x = _Series(0, [t / c0 for t in base.c], K) + _Series(0, [-K.one] + [K.zero] * (len(base.c) - 1), K)
        binom = [K(sp.binomial(p, k)) for k in range(n + 1)]
        s = x.compose(binom)
        return _Series(int(base.v * p) + s.v, [root_el * t for t in s.c], K)
    if isinstance(e, (sp.asin, sp.acos)) or (isinstance(e, sp.log) and len(e.args) == 1):
        z = rec(e.args[0])
        if isinstance(e, sp.log):
            z = z.strip()
            if z.v != 0:
                raise _NoSeries("log of a series with a zero or pole at u = 0")
            c0 = z.c[0]
            x = _Series(0, [t / c0 for t in z.c], K) + _Series(0, [-K.one] + [K.zero] * (len(z.c) - 1), K)
            s = x.compose([K.zero] + [K(sp.Rational((-1) ** (k + 1), k)) for k in range(1, n + 1)])
            if c0 != K.one:
                s = s + _Series(0, [_constant(sp.log(c0.as_expr()), spares, consts)] + zeros, K)
            return s
        asin = [K.zero] * (n + 1)
        for k in range(0, (n + 1) // 2):
            asin[2 * k + 1] = K(sp.factorial(2 * k) / (4**k * sp.factorial(k) ** 2 * (2 * k + 1)))
        s = z.compose(asin)
        if isinstance(e, sp.acos):
            s = _Series(0, [gens[sp.pi] / 2] + zeros, K) + _Series(s.v, [-t for t in s.c], K)
        return s
    raise _NoSeries(f"no series rule for {type(e).__name__}")


def _constant(value: sp.Expr, spares: list, consts: dict):
    """A field generator standing for a constant outside the field (log(pi/(pi - 1)), sqrt(2), ...)."""
    for g, v in consts.items():
        if v == value:
            return g
    if not spares:
        raise _NoSeries("too many transcendental constants")
    g = spares.pop(0)
    consts[g] = value
    return g


def large_B_series(stable: sp.Expr, u: sp.Symbol, n: int) -> sp.Expr:
    """Exact Laurent polynomial in ``u`` of ``stable`` (a :func:`stable_in_B` form) with ``n`` terms:
    ``u**v * (c0 + u*(c1 + u*(...)))`` in Horner form. Raises :class:`_NoSeries` if unsupported."""
    params = sorted(stable.free_symbols - {u}, key=str)
    pi_ = sp.Dummy("pi")
    spare_syms = [sp.Dummy(f"K{i}") for i in range(4)]
    K, *els = sp.field([pi_, *params, *spare_syms], sp.QQ)
    gens = {sp.pi: els[0], **dict(zip(params, els[1 : 1 + len(params)]))}
    spares = list(els[1 + len(params) :])
    consts: dict = {}
    s = _taylor(stable, u, n + 2, K, gens, spares, consts)
    s = _Series(s.v, s.c[:n], K)
    if len(s.c) < n:
        raise _NoSeries("too few terms")
    back = {pi_: sp.pi, **{g.as_expr(): v.xreplace({pi_: sp.pi}) for g, v in consts.items()}}
    coeffs = [c.as_expr().xreplace(back) for c in s.c]
    horner = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        horner = c + u * horner
    return u**s.v * horner


def large_B_form(stable: sp.Expr, u: sp.Symbol) -> sp.Expr | None:
    """The exact Taylor polynomial of a :func:`stable_in_B` form for ``B > SWITCH_B``, or None.

    None when the form has free parameters (the coefficients would be large rational functions of
    them), when a piece has no series rule, or when the truncation error at the float32 / float64
    switches exceeds 1e-12 / 1e-18 (relative, checked to 50 digits with mpmath).
    """
    if stable.free_symbols - {u} or not stable.has(u):
        return None
    for n in _SERIES_TERMS:
        try:
            ser = large_B_series(stable, u, n)
        except (_NoSeries, ZeroDivisionError):
            return None
        ok = True
        for b0, tol in ((SWITCH_B[4], 1e-12), (SWITCH_B[8], 1e-18)):
            x = sp.N(stable.subs(u, sp.Rational(1, b0)), 50)
            y = sp.N(ser.subs(u, sp.Rational(1, b0)), 50)
            if not (x.is_real and y.is_real) or abs(x - y) > tol * abs(x):
                ok = False
        if ok:
            return ser
    return None
