"""Certified mpmath quadrature over the BN sphere (Thm F.5: spherical integration).

Law of two coordinates (Lemma ``two_coordinate_law``). Let y be uniform on the sphere of radius
sqrt(B) in 1-perp of R^B (a sphere S^{B-2} in a (B-1)-dimensional space). Write
y_j = <y, e_j> = <y, G e_j>, |G e_j|^2 = (B-1)/B and <G e_1, G e_2> = -1/B. In an orthonormal
frame u of 1-perp, the first two coordinates (u1, u2) of a uniform point of the radius-sqrt(B)
sphere in R^{B-1} have density proportional to (1 - |u|^2/B)^{(B-5)/2} on the disk |u| < sqrt(B).
With u = sqrt(B) sin(theta) (cos psi, sin psi), theta in [0, pi/2], psi in [0, 2 pi):

    E f(y1, y2) = (B-3)/(2 pi) int_0^{2pi} int_0^{pi/2} f(y1, y2) cos^{B-4}(theta) sin(theta) dtheta dpsi,
    y_j = sqrt(B-1) sin(theta) cos(psi - psi_j),   psi_1 = 0,  psi_2 = arccos(-1/(B-1)),

whose weight is smooth for every B >= 4 (the (1-rho^2)^{-1/2} edge singularity at B = 4 is
absorbed by rho = sin theta). One coordinate (Lemma ``one_coordinate_law``): y1 =
sqrt(B-1) cos(theta), theta in [0, pi], with density sin^{B-3}(theta)/Z,
Z = sqrt(pi) Gamma((B-2)/2)/Gamma((B-1)/2) (equivalently y1 has density proportional to
(1 - y1^2/(B-1))^{(B-4)/2}). Both lemmas are tested against exact sphere moments and seeded
Monte Carlo in ``tests/test_quadrature.py``.

Kinks. A kink k of f_j (a point where f_j or a derivative jumps) is the line y_j = k of the
plane: for k = 0 the two rays psi = psi_j +- pi/2 (outer break points), for k != 0 the inner
break point sin(theta) = k / (sqrt(B-1) cos(psi - psi_j)) plus the outer break points
psi = psi_j +- arccos(k/sqrt(B-1)) where the line leaves the disk. On each resulting piece the
integrand of a piecewise-analytic f is analytic up to the end points, so Gauss-Legendre converges
geometrically. With kinks off 0 the inner (theta) integrals still end exactly at the kinks
(Gauss-Legendre), and the outer (psi) integrand is analytic in sqrt(psi - psi_e) next to an outer
break point psi_e where a line leaves the disk: Gauss-Legendre after psi = a + (b - a) v^2 (or
sin^2(pi v/2) with both ends such points: :data:`SQRT_LO`, :data:`SQRT_HI`, :data:`SIN2`)
resolves that; when a break point sits just outside a piece (a crossing of two
lines next to the edge) the outer rule falls back to tanh-sinh. Otherwise (non-integer powers)
tanh-sinh is used, which tolerates algebraic end-point singularities. Kinks are exact SymPy
numbers (a rational stays that rational: see :func:`_exact_kinks`), so the break points are exact
to the working precision. Every integral is computed at increasing degree until the
error estimate (mpmath's extrapolation from the last three degrees) is below the target;
otherwise :class:`~symbnmf._errors.ConvergenceError` is raised: a wrong digit is never returned.

gmpy2: mpmath uses it automatically as its integer back end (``mpmath.libmp.BACKEND == "gmpy"``);
in addition the inner loops run on gmpy2 ``mpfr`` numbers (C-level MPFR arithmetic, at mpmath's
working precision) with all coordinate functions compiled into one SymPy ``lambdify(cse=True)``
call per ray, so that e.g. tanh is evaluated once per node for phi, phi^2, phi', y phi, ... The
plain-mpmath loop remains as the fallback for functions gmpy2 lacks. For B >= 32 the theta pieces
are graded geometrically around sin(theta) ~ 1/sqrt(B), where the weight concentrates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp
from mpmath.calculus.quadrature import GaussLegendre, TanhSinh

from symbnmf._conventions import check_batch_size
from symbnmf._errors import ActivationError, ConvergenceError, SymbnmfError

try:  # gmpy2's C-level mpfr arithmetic runs the quadrature loops ~5x faster than mpmath mpf
    import gmpy2
except ImportError:  # pragma: no cover - gmpy2 is a declared dependency
    gmpy2 = None

#: Guard digits used internally on top of the requested ``dps``.
GUARD_DIGITS = 12

_ANALYTIC_FUNCS = (sp.exp, sp.sin, sp.cos, sp.tanh, sp.sinh, sp.cosh, sp.erf, sp.erfc, sp.atan)

_RULES: dict[str, Any] = {}


def _rule(name: str) -> Any:
    if name not in _RULES:
        _RULES[name] = GaussLegendre(mp) if name == "gauss-legendre" else TanhSinh(mp)
    return _RULES[name]


@functools.lru_cache(maxsize=256)
def _standard_nodes(rule: str, degree: int, prec: int) -> tuple[tuple[Any, Any], ...]:
    """Nodes/weights on [-1, 1] (tanh-sinh: only the nodes new at this degree)."""
    r = _rule(rule)
    orig = mp.prec
    try:
        mp.prec = prec + 20
        nodes = r.calc_nodes(degree, prec)
    finally:
        mp.prec = orig
    return tuple(nodes)


@functools.lru_cache(maxsize=64)
def _gmpy_standard_nodes(degree: int, prec: int) -> tuple[tuple[Any, Any], ...]:
    """Gauss-Legendre nodes/weights on [-1, 1] as exact gmpy2 copies of mpmath's."""
    return tuple((_to_gmpy(t), _to_gmpy(w)) for t, w in _standard_nodes("gauss-legendre", degree, prec))


def _nodes(rule: str, a: Any, b: Any, degree: int) -> tuple[tuple[Any, Any], ...]:
    """Nodes/weights on [a, b]: rescaled once per (interval, degree, precision), then cached (the
    inner integrals of the sphere quadrature revisit the same theta pieces at every psi node)."""
    return _scaled_nodes(rule, a, b, degree, mp.prec)


#: Gauss-Legendre in v after the map x = a + (b - a) sin^2(pi v/2), v in [0, 1]: a function
#: analytic in sqrt(x - a) and sqrt(b - x) (the outer integrand of the 2-D rule where kink lines
#: leave the disk at both ends) becomes analytic in v, so the rule converges geometrically.
#: SQRT_LO / SQRT_HI: the same for one singular end, x = a + (b - a) v^2 (x = b - (b - a)(1 - v)^2).
SIN2 = "gauss-legendre-sin2"
SQRT_LO = "gauss-legendre-sqrt-lo"
SQRT_HI = "gauss-legendre-sqrt-hi"
_GL_VARIANTS = ("gauss-legendre", SIN2, SQRT_LO, SQRT_HI)


@functools.lru_cache(maxsize=2048)
def _scaled_nodes(rule: str, a: Any, b: Any, degree: int, prec: int) -> tuple[tuple[Any, Any], ...]:
    if rule in (SIN2, SQRT_LO, SQRT_HI):
        L = b - a
        out = []
        for t, w in _standard_nodes("gauss-legendre", degree, prec):
            v = (t + 1) / 2  # dv = dt/2
            if rule == SIN2:  # dx = L (pi/2) sin(pi v) dv
                out.append((a + L * (1 - mpmath.cos(mp.pi * v)) / 2, w * L * mp.pi * mpmath.sin(mp.pi * v) / 4))
            elif rule == SQRT_LO:  # dx = 2 L v dv
                out.append((a + L * v * v, w * L * v))
            else:  # dx = 2 L (1 - v) dv
                out.append((b - L * (1 - v) ** 2, w * L * (1 - v)))
        return tuple(out)
    C = (b - a) / 2
    D = (b + a) / 2
    return tuple((D + C * t, C * w) for t, w in _standard_nodes(rule, degree, prec))


def _max_degree(rule: str) -> int:
    # Gauss-Legendre degree m has 3*2^(m-1) nodes; tanh-sinh doubles its digits per degree.
    digits = mp.dps
    if rule in _GL_VARIANTS:
        return 8 if digits <= 120 else 9
    return 7 if digits <= 40 else 8 if digits <= 80 else 9


def _log10(v: Any) -> float:
    """log10 of a positive mpf from its binary exponent (to within 0.31: enough for estimates)."""
    _, _man, exp, bc = v._mpf_
    return (exp + bc) * 0.30102999566398120


def _estimate(history: list[Any]) -> Any:
    """Error of the last entry of ``history`` (mpmath's QuadratureRule.estimate_error)."""
    if len(history) < 3:
        return mp.inf
    a, b, c = history[-3:]
    if a == b == c:
        return mp.zero
    d1 = abs(c - b)
    d2 = abs(c - a)
    if d1 == 0:
        return mpmath.ldexp(abs(c) + 1, -mp.prec)
    D1 = _log10(d1)
    D2 = _log10(d2) if d2 > 0 else D1
    if D1 < 0 and D2 < 0:
        # digits roughly double per degree (Gauss-Legendre and tanh-sinh alike)
        D4 = min(0, max(D1**2 / D2, 2 * D1, -mp.dps))
    else:  # no convergence visible yet: the last difference itself
        D4 = min(0, D1)
    return max(mpmath.mpf(10) ** (int(D4) + 1), mpmath.ldexp(abs(c), -mp.prec + 4))


def _vquad(
    F: Callable[[Any, Any, int, Sequence[tuple[Any, Any]]], list[Any]],
    pieces: Sequence[tuple[Any, Any]],
    n: int,
    rule: str,
    tol: Any,
    nodes: bool = True,
    rules: Sequence[str] | None = None,
) -> tuple[list[Any], Any]:
    """Integrate a vector-valued integrand over the union of ``pieces`` to absolute error ``tol``.

    ``F(a, b, degree, nodes)`` returns the weighted sums sum_k w_k f(x_k) (a list of length n)
    over the quadrature ``nodes`` [(x_k, w_k)] of the piece [a, b] (the caller can then cache
    per-node work; with ``nodes=False`` it gets () and makes the nodes itself). ``rules`` (one
    per piece, Gauss-Legendre variants of the same degrees as ``rule``) overrides ``rule`` piece by
    piece. Degrees increase until the error estimate (largest over the n components) is below
    ``tol``. Returns (values, error estimate); the caller decides what to do if the error is
    above ``tol``.
    """
    per_piece = list(rules) if rules is not None else [rule] * len(pieces)
    kept = [(a, b, r) for (a, b), r in zip(pieces, per_piece) if b > a]
    pieces = [(a, b) for a, b, _ in kept]
    per_piece = [r for _, _, r in kept]
    hist: list[list[Any]] = [[] for _ in range(n)]
    prev_piece: list[list[Any]] = [[mp.zero] * n for _ in pieces]
    err = mp.inf
    for degree in range(1, _max_degree(rule) + 1):
        total = [mp.zero] * n
        for ip, (a, b) in enumerate(pieces):
            acc = F(a, b, degree, _nodes(per_piece[ip], a, b, degree) if nodes else ())
            if rule == "tanh-sinh":
                h = mpmath.ldexp(1, -degree)
                acc = [prev_piece[ip][i] / 2 + h * acc[i] for i in range(n)]
            prev_piece[ip] = acc
            for i in range(n):
                total[i] += acc[i]
        for i in range(n):
            hist[i].append(total[i])
        if degree >= 3:
            err = max((_estimate(hh) for hh in hist), default=mp.zero)
            if err <= tol:
                break
    return [hh[-1] for hh in hist], err


# ---------------------------------------------------------------------------------------------
# Coordinate functions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoordinateFunction:
    """A function of one coordinate: mpmath callable, its exact kinks and whether it is
    analytic on the pieces between kinks (so that Gauss-Legendre converges geometrically).

    ``pos``/``neg`` (when the only kink is 0) are the branches t -> f(t), t -> f(-t) for t > 0,
    compiled without comparisons; ``None`` for an identically zero branch, ``False`` if unknown.
    """

    func: Callable[[Any], Any]
    kinks: tuple[sp.Expr, ...]
    analytic: bool
    is_one: bool = False
    pos: Any = False
    neg: Any = False
    gfunc: Any = None  # gmpy2 versions (None: not available)
    gpos: Any = False
    gneg: Any = False
    expr: Any = None  # SymPy forms (in _U) used to compile several functions together (CSE)
    pos_expr: Any = None
    neg_expr: Any = None


_GMPY_FUNCS = {
    sp.exp: "exp",
    sp.log: "log",
    sp.sin: "sin",
    sp.cos: "cos",
    sp.tan: "tan",
    sp.tanh: "tanh",
    sp.sinh: "sinh",
    sp.cosh: "cosh",
    sp.atan: "atan",
    sp.erf: "erf",
    sp.erfc: "erfc",
}


def _gmpy_namespace() -> dict[str, Any]:
    with gmpy2.context(gmpy2.get_context(), precision=8192):
        ns: dict[str, Any] = {name: getattr(gmpy2, name) for name in set(_GMPY_FUNCS.values())}
        ns.update(
            {
                "mpf": gmpy2.mpfr,
                "sqrt": gmpy2.sqrt,
                "fabs": abs,
                "pi": gmpy2.const_pi(),
                "e": gmpy2.exp(1),
                "sign": lambda v: (v > 0) - (v < 0),
            }
        )
    return ns


def _gmpy_compile(expr: sp.Expr, var: sp.Symbol) -> Callable[[Any], Any] | None:
    """``expr`` as a function of a gmpy2 mpfr (None if it uses a function gmpy2 lacks)."""
    if gmpy2 is None:
        return None
    for node in sp.preorder_traversal(expr):
        if (
            isinstance(node, sp.Function)
            and not isinstance(node, (sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min))
            and type(node) not in _GMPY_FUNCS
        ):
            return None
        if isinstance(node, (sp.Heaviside, sp.DiracDelta)):
            return None
    return sp.lambdify(var, expr, modules=[_gmpy_namespace(), "mpmath"])


def _to_gmpy(v: Any) -> Any:
    """Exact conversion of an mpmath mpf to an mpfr (whatever the active gmpy2 precision)."""
    sign, m, e, _ = mpmath.mpf(v)._mpf_
    m = -int(m) if sign else int(m)
    bits = max(abs(m).bit_length(), 2)
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        return gmpy2.mul_2exp(gmpy2.mpfr(m), int(e))


def _from_gmpy(v: Any) -> Any:
    if not gmpy2.is_finite(v):
        return mp.nan if gmpy2.is_nan(v) else (mp.inf if v > 0 else mp.ninf)
    m, e = v.as_mantissa_exp()
    return mpmath.mpf((int(m), int(e)))


def _exact_kinks(expr: sp.Expr, var: sp.Symbol) -> tuple[sp.Expr, ...]:
    pts: set[sp.Expr] = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Piecewise):
            args = [c.lhs - c.rhs for _, c in node.args if isinstance(c, sp.core.relational.Relational)]
            for _, c in node.args:
                if isinstance(c, (sp.And, sp.Or)):
                    args += [r.lhs - r.rhs for r in c.atoms(sp.core.relational.Relational)]
        elif isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
            args = [node.args[0]]
        elif isinstance(node, (sp.Max, sp.Min)):
            args = [a - b for a in node.args for b in node.args if a != b]
        else:
            continue
        for a in args:
            if not a.has(var):
                continue
            try:
                sols = sp.solve(sp.Eq(a, 0), var)
            except Exception:  # pragma: no cover - SymPy could not solve: be safe
                raise ActivationError(
                    f"cannot locate the kinks of {expr}; rewrite it with relu/Piecewise of linear arguments"
                ) from None
            for s in sols:
                if s.is_real and not s.free_symbols:
                    # exact kinks stay exact: nsimplify would replace a rational with a long
                    # mantissa (e.g. -beta/(gamma t) at a tau node) by a nearby "simpler"
                    # algebraic number, 1e-16 off, and the break points of the quadrature would
                    # miss the jump (eps tables of ReLU with beta != 0 then never converged)
                    pts.add(sp.nsimplify(s) if s.has(sp.Float) else s)
    return tuple(sorted(pts, key=lambda s: float(s)))


def _is_piecewise_analytic(expr: sp.Expr, var: sp.Symbol) -> bool:
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Pow) and node.has(var):
            e = node.exp
            if e.has(var) or not (e.is_Integer and e >= 0):
                return False
        elif (
            isinstance(node, sp.Function)
            and node.has(var)
            and not isinstance(node, (*_ANALYTIC_FUNCS, sp.Piecewise, sp.Abs, sp.sign, sp.Heaviside, sp.Max, sp.Min))
        ):
            return False
    return True


@functools.lru_cache(maxsize=4096)
def coordinate_function(expr: sp.Expr) -> CoordinateFunction:
    """Compile a SymPy expression of a single coordinate into a :class:`CoordinateFunction`."""
    expr = sp.sympify(expr)
    free = expr.free_symbols
    if not free:
        c = expr
        if not c.is_real:
            raise SymbnmfError(f"constant {expr} is not real")
        if c.is_Rational:
            rc = sp.Rational(c)
            return CoordinateFunction(
                lambda _y: mpmath.mpf(rc.p) / rc.q,
                (),
                True,
                is_one=(c == 1),
                gfunc=(lambda _y: gmpy2.mpfr(rc.p) / rc.q) if gmpy2 is not None else None,
                expr=rc,  # compiled with the other functions of a ray (_combined_gmpy)
            )
        return CoordinateFunction(lambda _y: mpmath.mpf(sp.N(c, mp.dps + 10)), (), True)
    if len(free) > 1:
        names = ", ".join(sorted(s.name for s in free))
        raise ActivationError(
            f"a sphere integrand must depend on one coordinate only, got symbols {names}; "
            "bind parameters first (e.g. get_activation('tanh(g*x)', g=0.5))"
        )
    (var,) = free
    func = sp.lambdify(var, expr, modules="mpmath")
    kinks = _exact_kinks(expr, var)
    branches: list[Any] = [False, False]
    gbranches: list[Any] = [False, False]
    bexprs: list[Any] = [None, None]
    gfunc = _gmpy_compile(expr, var)
    if all(k == 0 for k in kinks):
        t = sp.Symbol("t", positive=True)
        for i, sign in enumerate((1, -1)):
            b = sp.piecewise_fold(expr.subs(var, sign * t))
            if b.has(sp.Piecewise, sp.Abs, sp.sign, sp.Heaviside, sp.Max, sp.Min):
                continue
            branches[i] = None if b == 0 else sp.lambdify(t, b, modules="mpmath")
            gbranches[i] = None if b == 0 else (_gmpy_compile(b, t) if gfunc is not None else False)
            bexprs[i] = b.subs(t, _U)
    return CoordinateFunction(
        func,
        kinks,
        _is_piecewise_analytic(expr, var),
        pos=branches[0],
        neg=branches[1],
        gfunc=gfunc,
        gpos=gbranches[0],
        gneg=gbranches[1],
        expr=expr.subs(var, _U),
        pos_expr=bexprs[0],
        neg_expr=bexprs[1],
    )


_U = sp.Symbol("u", real=True)


@functools.lru_cache(maxsize=1024)
def _combined_gmpy(exprs: tuple[sp.Expr, ...], prec: int) -> Callable[[Any], list[Any]]:
    """One gmpy2 function of u returning every expression (common subexpressions computed once),
    to be called at gmpy2 precision ``prec``.

    Rational constants p/q are computed once, as ``mpfr(p) / mpfr(q)`` at that precision, instead
    of at every call: the printed code ``mpf(p)/mpf(q)`` computes exactly that value, and a
    negated constant ``-(p/q)`` equals ``(-p)/q`` under round-to-nearest, so every value is the
    same to the last bit (the inner loop of the 2-D quadrature calls this once per node).
    """
    from sympy.printing.pycode import MpmathPrinter

    consts: dict[str, Any] = {}
    names: dict[tuple[int, int], str] = {}

    class _Printer(MpmathPrinter):
        def _print_Rational(self, e: sp.Rational) -> str:
            key = (int(e.p), int(e.q))
            if key not in names:
                names[key] = f"_symbnmf_q{len(names)}"
                with gmpy2.context(gmpy2.get_context(), precision=prec):
                    consts[names[key]] = gmpy2.mpfr(key[0]) / gmpy2.mpfr(key[1])
            return names[key]

    ns = _gmpy_namespace()
    # the settings lambdify gives its own printer for these modules
    printer = _Printer(
        {
            "fully_qualified_modules": False,
            "inline": True,
            "allow_unknown_functions": True,
            "user_functions": {k: k for k in ns},
        }
    )
    fn = sp.lambdify(_U, list(exprs), modules=[ns, "mpmath"], cse=True, printer=printer)
    fn.__globals__.update(consts)
    return fn


def _as_coordinate_function(f: Any) -> CoordinateFunction:
    if isinstance(f, CoordinateFunction):
        return f
    if callable(f) and not isinstance(f, sp.Basic):
        return CoordinateFunction(f, (), False)
    return coordinate_function(sp.sympify(f))


# ---------------------------------------------------------------------------------------------
# Sphere expectations
# ---------------------------------------------------------------------------------------------
def _choose_rule(funcs: Iterable[CoordinateFunction]) -> str:
    """Gauss-Legendre when every piece is analytic up to its end points, else tanh-sinh.

    In the 2-D polar rule the inner (theta) pieces end exactly at the kinks, so analytic
    functions get Gauss-Legendre inside even with kinks off 0 ("mixed"); the outer (psi)
    integrand then has square-root singularities at its break points (:data:`SIN2`; the
    fallback "mixed-ts" uses tanh-sinh there).
    """
    funcs = list(funcs)
    if not all(f.analytic for f in funcs):
        return "tanh-sinh"
    if all(k == 0 for f in funcs for k in f.kinks):
        return "gauss-legendre"
    return "mixed"


def _one_coordinate(fs: list[CoordinateFunction], Bv: int, tol: Any, rule: str) -> tuple[list[Any], Any]:
    R = mpmath.sqrt(Bv - 1)
    Z = mpmath.sqrt(mp.pi) * mpmath.gamma(mpmath.mpf(Bv - 2) / 2) / mpmath.gamma(mpmath.mpf(Bv - 1) / 2)
    breaks = {mp.zero, +mp.pi}
    for f in fs:
        for k in f.kinks:
            kk = mpmath.mpf(sp.N(k, mp.dps + 10)) / R
            if -1 < kk < 1:
                breaks.add(mpmath.acos(kk))
    if Bv >= 32:  # grade geometrically around the equator cos(theta) ~ 1/sqrt(B) (see _two_coordinates)
        r0 = 1 / mpmath.sqrt(Bv)
        while r0 < mpmath.mpf("0.75"):
            breaks.add(mp.pi / 2 - mpmath.asin(r0))
            breaks.add(mp.pi / 2 + mpmath.asin(r0))
            r0 *= 2
    br = sorted(breaks)
    pieces = list(zip(br[:-1], br[1:]))
    p = Bv - 3
    n = len(fs)

    fast = gmpy2 is not None and all(f.gfunc is not None for f in fs)

    def F(a: Any, b: Any, degree: int, nodes: Sequence[tuple[Any, Any]]) -> list[Any]:
        if fast:
            with gmpy2.context(gmpy2.get_context(), precision=mp.prec):
                gR = _to_gmpy(R)
                gacc = [gmpy2.mpfr(0)] * n
                gf = [f.gfunc for f in fs]
                for t, wk in nodes:
                    gt = _to_gmpy(t)
                    y = gR * gmpy2.cos(gt)
                    w = _to_gmpy(wk) * gmpy2.sin(gt) ** p
                    for i in range(n):
                        gacc[i] += w * gf[i](y)
                return [_from_gmpy(v) for v in gacc]
        acc = [mp.zero] * n
        for t, wk in nodes:
            y = R * mpmath.cos(t)
            w = wk * mpmath.sin(t) ** p
            for i, f in enumerate(fs):
                acc[i] += w * f.func(y)
        return acc

    vals, err = _vquad(F, pieces, n, "tanh-sinh" if rule == "tanh-sinh" else "gauss-legendre", tol * Z)
    return [v / Z for v in vals], err / Z


def _branch(f: CoordinateFunction, A: Any, fast: bool) -> tuple[Any, Any]:
    """(callable of t = |y| along a ray with y = A sin(theta), scale) or (None, 0) if f = 0 there."""
    if fast:
        br = f.gpos if A > 0 else f.gneg
        if br is False:
            return f.gfunc, A
    else:
        br = f.pos if A > 0 else f.neg
        if br is False:
            return f.func, A
    if br is None:
        return None, mp.zero
    return br, abs(A)


def _two_coordinates(
    pairs: list[tuple[int, int]],
    f1s: list[CoordinateFunction],
    f2s: list[CoordinateFunction],
    Bv: int,
    tol: Any,
    rule: str,
) -> tuple[list[Any], Any]:
    R = mpmath.sqrt(Bv - 1)
    psi2 = mpmath.acos(mpmath.mpf(-1) / (Bv - 1))
    twopi = 2 * mp.pi
    halfpi = mp.pi / 2
    norm = mpmath.mpf(Bv - 3) / twopi
    p = Bv - 4
    npairs = len(pairs)
    # outer break points in psi
    outer = {mp.zero, halfpi, mp.pi, 3 * halfpi, twopi}
    kinks1 = sorted({mpmath.mpf(sp.N(k, mp.dps + 10)) for f in f1s for k in f.kinks})
    kinks2 = sorted({mpmath.mpf(sp.N(k, mp.dps + 10)) for f in f2s for k in f.kinks})
    exits: set[Any] = set()  # where a line y_j = k != 0 leaves the disk (square-root points in psi)
    for ks, psij in ((kinks1, mp.zero), (kinks2, psi2)):
        for k in ks:
            if k == 0:
                angles = (psij + halfpi, psij - halfpi)
            elif abs(k) < R:
                a = mpmath.acos(k / R)
                angles = (psij + a, psij - a)
                exits.update(ang % twopi for ang in angles)
            else:
                angles = ()  # type: ignore[assignment]  # the line misses the circle
            for ang in angles:
                outer.add(ang % twopi)
    # the ray through a crossing of the lines y1 = k1 and y2 = k2 (inner break points swap there)
    for k1 in kinks1:
        for k2 in kinks2:
            vx = k1
            vy = (k2 - k1 * mpmath.cos(psi2)) / mpmath.sin(psi2)
            if 0 < vx**2 + vy**2 < R**2:
                outer.add(mpmath.atan2(vy, vx) % twopi)
    ob = sorted(outer)
    opieces = list(zip(ob[:-1], ob[1:]))
    inner_tol = tol / (4 * mp.pi * norm)
    inner_rule = "tanh-sinh" if rule == "tanh-sinh" else "gauss-legendre"
    # "mixed": kinks off 0, whose lines leave the disk at outer break points where the outer
    # integrand is analytic in sqrt(psi - psi_e) (SIN2 resolves that); "mixed-ts" is its fallback
    outer_rule = {"gauss-legendre": "gauss-legendre", "mixed": SIN2}.get(rule, "tanh-sinh")
    outer_rules = None
    if outer_rule == SIN2:  # the square-root map only at the exits (plain Gauss-Legendre elsewhere)
        kind = {0: "gauss-legendre", 1: SQRT_LO, 2: SQRT_HI, 3: SIN2}
        outer_rules = [kind[(a in exits) + 2 * (b in exits)] for a, b in opieces]
    # error of the outer sums from the inner integrals: sum_k |w_k| err_k over the psi nodes of an
    # outer piece (largest over its degrees; tanh-sinh sums accumulate as in _vquad), added over the
    # pieces. Weighting by |w_k| matters where an outer piece is tiny: a kink line nearly tangent to
    # the circle (k ~ R, the tau node at a kink's exit) leaves inner pieces of width ~1e-15 whose
    # kink, asin(k/(R cos psi)) with 1 - k/(R cos psi) ~ 10^-dps, is not resolved to working
    # precision; their inner estimates (~1e-16) are then weighted by the piece's width (~1e-14).
    piece_inner_err: dict[tuple[Any, Any], Any] = {}
    piece_inner_prev: dict[tuple[Any, Any], Any] = {}
    # large B: the weight cos^{B-4} concentrates at sin(theta) ~ 1/sqrt(B); grade the theta pieces
    # geometrically there (poles of e.g. tanh(A sin theta) sit at distance ~ 1/sqrt(B) from 0)
    grading: set[Any] = set()
    if Bv >= 32:
        r0 = 1 / mpmath.sqrt(Bv)
        while r0 < mpmath.mpf("0.75"):
            grading.add(mpmath.asin(r0))
            r0 *= 2
    # per theta-node data (sin theta, w_k cos^{B-4} theta sin theta), shared by all psi nodes
    theta_cache: dict[tuple[Any, Any, int], list[tuple[Any, Any]]] = {}
    use_branches = all(f.pos is not False and f.neg is not False for f in f1s + f2s)
    fast = gmpy2 is not None and all(f.gfunc is not None for f in f1s + f2s)

    # fast Gauss-Legendre: the theta nodes of a piece are made by MPFR from the standard nodes
    # (the pieces ending at a kink move with psi, so they are new at almost every psi node)
    lazy = fast and inner_rule == "gauss-legendre"

    def theta_nodes(a: Any, b: Any, degree: int, nodes: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        key = (a, b, degree)
        if key not in theta_cache:
            if lazy:
                with gmpy2.context(gmpy2.get_context(), precision=mp.prec):
                    ga, gb = _to_gmpy(a), _to_gmpy(b)
                    C, D = (gb - ga) / 2, (gb + ga) / 2
                    tn = []
                    for t, wk in _gmpy_standard_nodes(degree, mp.prec):
                        st, ct = gmpy2.sin_cos(D + C * t)
                        tn.append((st, C * wk * ct**p * st))
                theta_cache[key] = tn
            else:
                tn = [(mpmath.sin(t), wk * mpmath.cos(t) ** p * mpmath.sin(t)) for t, wk in nodes]
                theta_cache[key] = [(_to_gmpy(st), _to_gmpy(w)) for st, w in tn] if fast else tn
        return theta_cache[key]

    def inner(a_psi: Any, b_psi: Any, degree_psi: int, psi_nodes: Sequence[tuple[Any, Any]]) -> list[Any]:
        acc_out = [mp.zero] * npairs
        ierr = mp.zero
        for psi, wpsi in psi_nodes:
            A1 = R * mpmath.cos(psi)
            A2 = R * mpmath.cos(psi - psi2)
            tb = {mp.zero, halfpi} | grading
            for ks, A in ((kinks1, A1), (kinks2, A2)):
                for k in ks:
                    if k != 0 and A != 0:
                        s = k / A
                        if 0 < s < 1:
                            tb.add(mpmath.asin(s))
            tbs = sorted(tb)
            tpieces = list(zip(tbs[:-1], tbs[1:]))
            if use_branches:
                g1 = [_branch(f, A1, fast) for f in f1s]
                g2 = [_branch(f, A2, fast) for f in f2s]
            elif fast:
                g1 = [(f.gfunc, A1) for f in f1s]
                g2 = [(f.gfunc, A2) for f in f2s]
            else:
                g1 = [(f.func, A1) for f in f1s]
                g2 = [(f.func, A2) for f in f2s]
            if fast:
                g1 = [(fn, _to_gmpy(sc) if fn is not None else sc) for fn, sc in g1]
                g2 = [(fn, _to_gmpy(sc) if fn is not None else sc) for fn, sc in g2]
            live = [m for m, (i, j) in enumerate(pairs) if g1[i][0] is not None and g2[j][0] is not None]
            if not live:
                continue
            need1 = sorted({pairs[m][0] for m in live})
            need2 = sorted({pairs[m][1] for m in live})
            nl = len(live)

            live_pairs = [pairs[m] for m in live]
            if fast:
                pos1, pos2 = [need1.index(i) for i, _ in live_pairs], [need2.index(j) for _, j in live_pairs]
                if use_branches:
                    e1 = tuple((f1s[i].pos_expr if A1 > 0 else f1s[i].neg_expr) for i in need1)
                    e2 = tuple((f2s[j].pos_expr if A2 > 0 else f2s[j].neg_expr) for j in need2)
                    s1, s2 = _to_gmpy(abs(A1)), _to_gmpy(abs(A2))
                else:
                    e1 = tuple(f1s[i].expr for i in need1)
                    e2 = tuple(f2s[j].expr for j in need2)
                    s1, s2 = _to_gmpy(A1), _to_gmpy(A2)
                c1, c2 = _combined_gmpy(e1, mp.prec), _combined_gmpy(e2, mp.prec)
                idx = list(zip(pos1, pos2))

                def G(a: Any, b: Any, degree: int, nodes: Sequence[tuple[Any, Any]]) -> list[Any]:
                    with gmpy2.context(gmpy2.get_context(), precision=mp.prec):
                        acc = [gmpy2.mpfr(0)] * nl
                        for st, w in theta_nodes(a, b, degree, nodes):
                            v1 = [w * v for v in c1(s1 * st)]
                            v2 = c2(s2 * st)
                            # the same roundings as acc[q] += v1[i] * v2[j], without the index loop
                            acc = [x + v1[i] * v2[j] for x, (i, j) in zip(acc, idx)]
                        return [_from_gmpy(gmpy2.mpfr(v)) for v in acc]

                vals, err = _vquad(G, tpieces, nl, inner_rule, inner_tol, nodes=not lazy)
                ierr += abs(wpsi) * err
                for q, m in enumerate(live):
                    acc_out[m] += wpsi * vals[q]
                continue

            def G(a: Any, b: Any, degree: int, nodes: Sequence[tuple[Any, Any]]) -> list[Any]:
                ctx = gmpy2.context(gmpy2.get_context(), precision=mp.prec) if fast else _nullcontext()
                with ctx:
                    acc = [gmpy2.mpfr(0) if fast else mp.zero] * nl
                    v1: dict[int, Any] = {}
                    v2: dict[int, Any] = {}
                    for st, w in theta_nodes(a, b, degree, nodes):
                        for i in need1:
                            fn, sc = g1[i]
                            v1[i] = w * fn(sc * st)
                        for j in need2:
                            fn, sc = g2[j]
                            v2[j] = fn(sc * st)
                        for q, (i, j) in enumerate(live_pairs):
                            acc[q] += v1[i] * v2[j]
                    return [_from_gmpy(v) for v in acc] if fast else acc

            vals, err = _vquad(G, tpieces, nl, inner_rule, inner_tol)
            ierr += abs(wpsi) * err
            for q, m in enumerate(live):
                acc_out[m] += wpsi * vals[q]
        key = (a_psi, b_psi)
        if outer_rule == "tanh-sinh":  # the outer sum is prev/2 + h * (sum over the new nodes)
            ierr = piece_inner_prev.get(key, mp.zero) / 2 + mpmath.ldexp(1, -degree_psi) * ierr
            piece_inner_prev[key] = ierr
        piece_inner_err[key] = max(piece_inner_err.get(key, mp.zero), ierr)
        return acc_out

    vals, err = _vquad(inner, opieces, npairs, outer_rule, tol / (2 * norm), rules=outer_rules)
    err = err + sum(piece_inner_err.values(), mp.zero)
    return [v * norm for v in vals], err * norm


def sphere_expectations(
    pairs: Sequence[tuple[Any, Any]],
    B: int,
    dps: int = 50,
    *,
    what: str = "sphere integral",
) -> list[mpmath.mpf]:
    """E[f1(y1) f2(y2)] for every ``(f1, f2)`` in ``pairs``, y uniform on the BN sphere.

    Convention (docs/theory.md, Thm F.5): y is uniform on the sphere of radius sqrt(B) in 1-perp of
    R^B, y1, y2 two distinct coordinates. ``f1``/``f2`` are SymPy expressions of a single
    coordinate symbol (``symbnmf.symbolic._sphere.y1``/``y2`` or any one symbol), the number 1, or
    :class:`CoordinateFunction`. Integrals with ``f2 = 1`` (or ``f1 = 1``) use the one-coordinate
    law; the others share one vectorised 2-D polar quadrature (every distinct function is
    evaluated once per node). Each value is accurate to 10^(-dps) absolutely (error estimate
    checked; :class:`ConvergenceError` otherwise). Never uses a closed form.
    """
    Bv = check_batch_size(B, what="sphere quadrature (Thm F.5 weights)")
    if not isinstance(dps, int) or dps < 5:
        raise SymbnmfError(f"dps must be an integer >= 5, got {dps!r}")
    out: list[Any] = [None] * len(pairs)
    with mp.workdps(dps + GUARD_DIGITS):
        tol = mpmath.mpf(10) ** (-dps - 2)
        one_idx: list[int] = []
        one_fs: list[CoordinateFunction] = []
        two: list[tuple[int, CoordinateFunction, CoordinateFunction]] = []
        for n, (f1, f2) in enumerate(pairs):
            c1, c2 = _as_coordinate_function(f1), _as_coordinate_function(f2)
            if c2.is_one or c1.is_one:
                one_idx.append(n)
                one_fs.append(c1 if c2.is_one else c2)
            else:
                two.append((n, c1, c2))
        if one_fs:
            vals = _run(lambda rule: _one_coordinate(one_fs, Bv, tol, rule), one_fs, tol, Bv, what)
            for n, v in zip(one_idx, vals):
                out[n] = v
        if two:
            f1s: list[CoordinateFunction] = []
            f2s: list[CoordinateFunction] = []
            idx: list[tuple[int, int]] = []
            for _, c1, c2 in two:
                if c1 not in f1s:
                    f1s.append(c1)
                if c2 not in f2s:
                    f2s.append(c2)
                idx.append((f1s.index(c1), f2s.index(c2)))
            vals = _run(
                lambda rule: _two_coordinates(idx, f1s, f2s, Bv, tol, rule), f1s + f2s, tol, Bv, what, two_d=True
            )
            for (n, _, _), v in zip(two, vals):
                out[n] = v
    return out


def _run(
    compute: Callable[[str], tuple[list[Any], Any]],
    fs: list[CoordinateFunction],
    tol: Any,
    Bv: int,
    what: str,
    two_d: bool = False,
) -> list[Any]:
    """Run ``compute`` with the rule suited to ``fs``; on failure retry with rules that tolerate
    end-point singularities (in 2-D only the outer one: nested tanh-sinh is too slow)."""
    rule = _choose_rule(fs)
    vals, err = compute(rule)
    if two_d:
        # "mixed" (outer SIN2) fails when a break point sits just outside an outer piece (a kink
        # line leaving the disk next to a crossing): "mixed-ts" (outer tanh-sinh) copes with that
        fallbacks = {"gauss-legendre": ["mixed", "mixed-ts"], "mixed": ["mixed-ts"]}.get(rule, [])
    else:
        fallbacks = ["tanh-sinh"] if rule != "tanh-sinh" else []
    for fallback in fallbacks:
        if err <= tol:
            break
        vals, err = compute(fallback)
    if not (err <= tol) or any(not mpmath.isfinite(v) for v in vals):
        raise ConvergenceError(
            f"{what} at B={Bv} did not converge: error estimate {mpmath.nstr(err, 3)} > target "
            f"{mpmath.nstr(tol, 3)}; lower --dps, or split the integrand at its kinks "
            "(write them with relu/Piecewise), or check that it is integrable on the sphere"
        )
    return vals


def sphere_quadrature(f1: Any, f2: Any = 1, B: int = 4, dps: int = 50) -> mpmath.mpf:
    """E[f1(y1) f2(y2)] over the BN sphere by 2-D angular quadrature (Thm F.5).

    y is uniform on the radius-sqrt(B) sphere in 1-perp of R^B (docs/theory.md); f1, f2 are SymPy
    expressions of one coordinate each (or 1). Accurate to 10^(-dps); raises
    :class:`ConvergenceError` when the error estimate misses that target. See
    :func:`sphere_expectations` for the vectorised form and the module docstring for the law.
    """
    return sphere_expectations([(f1, f2)], B, dps)[0]


# ---------------------------------------------------------------------------------------------
# Quantities
# ---------------------------------------------------------------------------------------------
def _activation(activation: Any) -> Any:
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    return act


def fixed_point_quadrature(activation: Any, B: int, dps: int = 50) -> dict[str, mpmath.mpf]:
    """BSB1 fixed point (Thm 3.1, App. F) by quadrature: diag = E phi(y1)^2, offdiag = E phi(y1)phi(y2)."""
    from symbnmf.symbolic._sphere import y1, y2

    act = _activation(activation)
    phi = act.bound_expr
    from symbnmf._activations import x

    d, o = sphere_expectations(
        [(phi.subs(x, y1) ** 2, 1), (phi.subs(x, y1), phi.subs(x, y2))], B, dps, what=f"fixed point of {act.label}"
    )
    return {"fixed_point.diag": d, "fixed_point.offdiag": o}


@functools.lru_cache(maxsize=64)
def _compiled(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]) -> Callable[..., Any]:
    return sp.lambdify(symbols, expr, modules="mpmath")


def evaluate_quadrature(
    activation: Any, B: int, dps: int | None = 50, *, quantities: Sequence[str] | None = None
) -> dict[str, mpmath.mpf]:
    """Every quantity of :data:`symbnmf.QUANTITIES` for ``activation`` at batch size ``B`` by
    independent quadrature of the shared definitions (``symbnmf.symbolic._quantities.definitions``).

    Each sphere integral E[f1(y1) f2(y2)] is computed by :func:`sphere_expectations` (never a
    closed form), substituted into the definition's ``formula``; depth_scale = 1/ln(backward.G).
    Values are mpf accurate to about 10^(-dps) relative (``dps=None`` means 20 digits, enough for
    doubles to 1e-15). Works for any bound activation (tanh, erf, gelu, expressions in x).
    ``quantities`` restricts the computation to some names (default: all).
    """
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._quantities import definitions

    act = _activation(activation)
    Bv = check_batch_size(B)
    dps = 20 if dps is None else int(dps)
    defs = definitions(act)
    if quantities is not None:
        unknown = set(quantities) - set(defs) - {"depth_scale"}
        if unknown:
            raise SymbnmfError(f"unknown quantities {sorted(unknown)}; choose from {', '.join(defs)}, depth_scale")
        wanted = set(quantities) | ({"backward.G"} if "depth_scale" in quantities else set())
        defs = {k: v for k, v in defs.items() if k in wanted}
    with mp.workdps(dps + GUARD_DIGITS):
        pairs: list[tuple[Any, Any]] = []
        index: dict[tuple[Any, Any], int] = {}
        for qd in defs.values():
            for integral in qd.integrals.values():
                for _, f1, f2 in integral.terms:
                    key = (sp.sympify(f1), sp.sympify(f2))
                    if key not in index:
                        index[key] = len(pairs)
                        pairs.append(key)
        # the formulas multiply integrals by coefficients up to O(B): ask for 2 extra digits
        vals = sphere_expectations(pairs, Bv, dps + 2, what=f"quadrature of {act.label}")
        out: dict[str, Any] = {}
        for name, qd in defs.items():
            subs: dict[sp.Symbol, Any] = {}
            for ph, integral in qd.integrals.items():
                total = mp.zero
                for coeff, f1, f2 in integral.terms:
                    c = _compiled(sp.sympify(coeff), (Bsym,))(mpmath.mpf(Bv))
                    total += c * vals[index[(sp.sympify(f1), sp.sympify(f2))]]
                subs[ph] = total
            syms = (Bsym,) + tuple(subs)
            try:
                val = _compiled(qd.formula, syms)(mpmath.mpf(Bv), *subs.values())
            except ZeroDivisionError:
                raise SymbnmfError(
                    f"{act.label} is constant on the BN sphere at B={Bv} (mu* = 0): the quantities are undefined; use a non-constant activation"
                ) from None
            out[name] = mpmath.mpf(val)
        if "backward.G" in out:
            bg = out["backward.G"]
            out["depth_scale"] = 1 / mpmath.log(bg) if bg > 1 else mp.inf
    return out


def quadrature_backend(activation: Any, B: int, dps: int | None) -> dict[str, Any]:
    """``symbnmf.evaluate`` back end ``"quadrature"``: :func:`evaluate_quadrature` plus a
    ``_meta`` block stating the accuracy (doubles from 20-digit quadrature when ``dps`` is None)."""
    from symbnmf._conventions import check_quadrature_batch

    B = check_quadrature_batch(B)
    work = 20 if dps is None else max(int(dps), 20)
    vals: dict[str, Any] = dict(evaluate_quadrature(activation, B, work))
    vals["_meta"] = {
        "tolerance": {
            "double_relative": 1e-12,
            "mp_relative": f"1e-{work - 5}",
            "how": f"mpmath spherical quadrature (Thm F.5) at {work} digits, error estimates below 1e-{work + 4}",
        }
    }
    return vals
