"""mpmath evaluation of the eps > 0 mean field theory (issue 12); definitions in
:mod:`symbnmf.symbolic._epsilon` (read its docstring first).

Structure of the computation (no closed form anywhere):

1. Every sphere integral (a, b, Q_X, T_X, K_{X,k}) depends on the radial factor only through
   tau = t^2 in [0, 1] and not on (mu, eps, sigma_w^2). For each tau node the integrals come from
   the certified sphere quadrature (:func:`~symbnmf.numeric._quadrature.sphere_expectations`);
   in tau they are represented by Chebyshev interpolants on Lobatto nodes (split where a kink of
   phi(beta + gamma t y) leaves the sphere), refined by doubling (to degree 64, judged on 129
   nodes) until the interpolation error (new nodes against the coarser interpolant) is below
   10^(-dps+3); a piece that misses it is split at its first quarter (up to 3 times), then
   :class:`ConvergenceError`. The sphere integrals at a node are taken at an exact binary
   rational t (sqrt(tau) to twice the working precision), whose kinks -beta/(gamma t) stay exact
   rationals, so the quadrature's break points are exact. For positive-homogeneous phi of
   degree alpha at beta = 0 the integrals separate exactly (a(tau) = gamma^(2 alpha) tau^alpha
   a(1), K(tau) ~ tau^(alpha-1)) and only tau = 1 is computed.
2. The r-integral: s = r^2 ~ chi^2_{B-1}, tau = mu s/(mu s + B eps), by mpmath tanh-sinh
   quadrature with its error estimate checked.
3. The fixed point: nonzero roots of F(mu)/mu = 1 found on a log grid and refined by bracketing
   root finding (relative 1e-12); the collapsed fixed point mu = 0 always exists for eps > 0.

The tables (step 1) are cached per (phi, gamma, beta, B, dps), so sweeps over (eps, sigma_w^2)
cost one r-integral per point. Never imports JAX.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp

from symbnmf._conventions import check_batch_size
from symbnmf._errors import ConvergenceError, SymbnmfError

#: Default digits of the tau tables (doubles need ~15; the interpolation check targets dps - 3).
DEFAULT_DPS = 16


def check_bn_parameters(eps: Any, weight_var: Any, gamma: Any, beta: Any) -> tuple[Any, Any, Any, Any]:
    """Validate (eps, sigma_w^2, gamma, beta): eps >= 0, sigma_w^2 > 0, gamma != 0, all finite.

    Returns them as exact SymPy rationals (parsed from their decimal strings)."""
    out = []
    for name, flag, v in (
        ("eps", "--eps", eps),
        ("weight_var", "--weight-var", weight_var),
        ("gamma", "--gamma", gamma),
        ("beta", "--beta", beta),
    ):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise SymbnmfError(f"{name} must be a number, got {v!r}; pass e.g. {flag} 0.1") from None
        if not math.isfinite(f):
            raise SymbnmfError(f"{name} must be finite, got {v!r}; pass e.g. {flag} 0.1")
        out.append(sp.Rational(str(v)) if isinstance(v, (str, int)) else sp.Rational(repr(f)))
    e, s, g, b = out
    if e < 0:
        raise SymbnmfError(f"eps must be >= 0 (BN divides by sqrt(var + eps)), got {eps!r}; pass e.g. --eps 1e-3")
    if s <= 0:
        raise SymbnmfError(f"weight_var (sigma_w^2) must be > 0, got {weight_var!r}; pass e.g. --weight-var 1")
    if g == 0:
        raise SymbnmfError("gamma = 0 makes every layer output constant; pass a nonzero --gamma (default 1)")
    return e, s, g, b


# ---------------------------------------------------------------------------------------------
# Chebyshev interpolants in tau
# ---------------------------------------------------------------------------------------------
def _lobatto(lo: Any, hi: Any, n: int, kind: int = 0) -> list[Any]:
    """tau at the Lobatto nodes x_j = cos(pi j/n) of a piece, through its map (:func:`_tau_of_v`)."""
    return [_tau_of_v(lo, hi, (mpmath.cos(mp.pi * j / n) + 1) / 2, kind) for j in range(n + 1)]


def _cheb_coeffs(vals: Sequence[Any]) -> list[Any]:
    n = len(vals) - 1
    c = []
    for k in range(n + 1):
        s = mp.zero
        for j, v in enumerate(vals):
            w = mpmath.mpf(1) / 2 if j in (0, n) else 1
            s += w * v * mpmath.cos(mp.pi * j * k / n)
        c.append(2 * s / n)
    c[0] /= 2
    c[n] /= 2
    return c


def _clenshaw(c: Sequence[Any], x: Any) -> Any:
    b1 = b2 = mp.zero
    for ck in reversed(c[1:]):
        b1, b2 = 2 * x * b1 - b2 + ck, b1
    return x * b1 - b2 + c[0]


def _tau_of_v(lo: Any, hi: Any, v: Any, kind: int) -> Any:
    """Piece maps v in [0, 1] -> tau (as in :func:`symbnmf.fast._epsquad._tau_of_v`): 0 linear;
    1 tau = lo + (hi-lo) v^2 (a kink line or corner leaves the support at lo, where the integrals
    behave like powers of sqrt(tau - lo)); 2 the same at hi; 3 both, tau = lo + (hi-lo) sin^2(pi v/2)."""
    r = [v, v * v, 1 - (1 - v) ** 2, mpmath.sin(mp.pi * v / 2) ** 2][kind]
    return lo + (hi - lo) * r


def _v_of_tau(lo: Any, hi: Any, tau: Any, kind: int) -> Any:
    r = min(max((tau - lo) / (hi - lo), mp.zero), mp.one)
    if kind == 0:
        return r
    if kind == 1:
        return mpmath.sqrt(r)
    if kind == 2:
        return 1 - mpmath.sqrt(1 - r)
    return 2 / mp.pi * mpmath.asin(mpmath.sqrt(r))


#: Grading of the tau pieces next to a cut (:func:`graded_pieces`).
GRADE_RATIO = 6
GRADE_FACTOR = 4


def graded_pieces(cuts: Sequence[Any], one: Any = 1) -> tuple[list[Any], list[int]]:
    """Edges [0, ..., 1] of the tau pieces and their maps (:func:`_tau_of_v`) for the ``cuts``
    (sorted, in (0, 1], any number type with + - * and <; ``one`` is 1 in that type; a cut at 1
    gives the last piece the square-root map at tau = 1).

    On either side of a cut c the tables are analytic in sqrt|tau - c| (the square-root maps
    resolve c), but the next cut c' is a branch point too: in the variable v of the piece beyond c
    it sits at v = i sqrt(g/L) (g = |c - c'|, L the piece length), and the Chebyshev series
    converges like (1 + sqrt(g/L))^(-n). With cuts at tau = u^2/(B - 1) and 2 u^2/(B - 2) (ReLU with
    beta != 0) g/L ~ u^2/B, and a single piece needs degree > 128 at B = 32. So where L > 6 g the
    piece is graded away from c at c +- g 4^j (j >= 1; the first piece keeps the map at c, the
    others are plain with c at distance >= 1/3 of their length), leaving no piece shorter than
    half its distance to c."""
    pts = [c for c in cuts if c < one]
    edges: list[Any] = [0 * one, *pts, one]
    singular = [False, *([True] * len(pts)), len(pts) < len(cuts)]
    extra: list[Any] = []
    for i, c in enumerate(pts):
        lo_end = edges[i]  # the edge below c
        hi_end = edges[i + 2]  # the edge above c
        if i > 0:  # grade [c, hi_end] away from c (the other cut pts[i - 1] lies below)
            g = c - pts[i - 1]
            if hi_end - c > GRADE_RATIO * g:
                e = c + GRADE_FACTOR * g
                while e < hi_end and hi_end - e > (e - c) / 2:
                    extra.append(e)
                    e = c + GRADE_FACTOR * (e - c)
        if i + 1 < len(pts):  # grade [lo_end, c] away from c (pts[i + 1] lies above)
            g = pts[i + 1] - c
            if c - lo_end > GRADE_RATIO * g:
                e = c - GRADE_FACTOR * g
                while e > lo_end and e - lo_end > (c - e) / 2:
                    extra.append(e)
                    e = c - GRADE_FACTOR * (c - e)
    allp = sorted([(e, s) for e, s in zip(edges, singular)] + [(e, False) for e in extra], key=lambda p: p[0])
    es = [p[0] for p in allp]
    flags = [p[1] for p in allp]
    maps = [(1 if flags[j] else 0) + (2 if flags[j + 1] else 0) for j in range(len(es) - 1)]
    return es, maps


def _exact(e: Any) -> Any:
    """``e`` as an exact SymPy number: floats are rationalised (nsimplify), exact numbers are kept
    (nsimplify would replace a rational with a long mantissa by a nearby simpler number)."""
    e = sp.sympify(e)
    return sp.nsimplify(e) if e.has(sp.Float) else e


def exit_taus(us: Sequence[Any], B: int, upto_one: bool = False) -> list[Any]:
    """tau in (0, 1) (in (0, 1] with ``upto_one``: an exit at tau = 1 makes the tables singular at
    that end) where the kink structure of phi(beta + gamma t y) changes on the support of (y1, y2).

    With u = (kink - beta)/gamma the kink lines are y_j = u/t. The pair (y1, y2) fills the ellipse
    y1^2 + y2^2 + 2 y1 y2/(B-1) <= B(B-2)/(B-1) (the other B-2 coordinates sum to -(y1 + y2) with
    squares summing to B - y1^2 - y2^2 >= (y1 + y2)^2/(B-2)). A line y1 = c touches it at
    c^2 = B - 1, i.e. tau = u^2/(B-1); the corner (u_a/t, u_b/t) of two lines lies on it at
    tau = (u_a^2 + u_b^2 + 2 u_a u_b/(B-1)) (B-1)/(B(B-2)). Exact SymPy numbers in, out."""
    out = {_exact(u**2 / (B - 1)) for u in us}
    for ua in us:
        for ub in us:
            out.add(_exact((ua**2 + ub**2 + 2 * ua * ub / (B - 1)) * (B - 1) / (B * (B - 2))))
    return sorted(c for c in out if 0 < c < 1 or (upto_one and c == 1))


@dataclass
class _Piece:
    lo: Any
    hi: Any
    coeffs: dict  # name -> Chebyshev coefficients in x = 2 v - 1
    kind: int = 0  # the map v -> tau (:func:`_tau_of_v`)

    def x(self, tau: Any) -> Any:
        return 2 * _v_of_tau(self.lo, self.hi, tau, self.kind) - 1


@dataclass
class TauTables:
    """The tau-dependent sphere integrals of one (phi, gamma, beta, B) (module docstring)."""

    B: int
    dps: int
    norm: dict
    trace: dict
    phi_beta: Any  # phi(beta): the collapsed fixed point is sigma_w^2 phi(beta)^2
    m0: Any  # E[psi(y1)^2 - psi(y1) psi(y2)]: slope of (a - b)(tau) at tau = 0
    homogeneous: Any = None  # (alpha, values at tau = 1) for the separable case
    pieces: list = field(default_factory=list)
    nodes_used: int = 0
    interpolation_error: Any = 0

    def value(self, name: str, tau: Any) -> Any:
        """The integral ``name`` at tau in [0, 1] (inf when it diverges at tau = 0)."""
        if self.homogeneous is not None:
            alpha, vals = self.homogeneous
            power = alpha - 1 if name.startswith("K.") else alpha
            if tau == 0:
                return mp.zero if power > 0 else (vals[name] if power == 0 else mp.inf)
            return tau**power * vals[name]
        for p in self.pieces:
            if tau <= p.hi:
                return _clenshaw(p.coeffs[name], p.x(tau))
        return _clenshaw(self.pieces[-1].coeffs[name], self.pieces[-1].x(tau))

    def slope0(self, name: str) -> Any:
        """d/dtau of a phi-type integral at tau = 0+ (None when infinite)."""
        if self.homogeneous is not None:
            alpha, vals = self.homogeneous
            return vals[name] if alpha == 1 else (mp.zero if alpha > 1 else None)
        p = self.pieces[0]
        c = p.coeffs[name]
        # dx/dtau at tau = lo: 2/(hi - lo) for the linear map, 1/(hi - lo) for kind 2 (dtau/dv = 2(hi - lo))
        dx = 2 / (p.hi - p.lo) if p.kind == 0 else 1 / (p.hi - p.lo)
        return dx * sum((-1) ** (k + 1) * k * k * c[k] for k in range(len(c)))


def _rational(v: Any) -> sp.Rational:
    man, exp = mpmath.mpf(v).man_exp
    return sp.Rational(int(man)) * sp.Rational(2) ** int(exp)


def _rational_or_float(e: Any, dps: int) -> Any:
    if isinstance(e, (mpmath.mpf, int)):
        return mpmath.mpf(e)
    e = sp.sympify(e)
    e = sp.nsimplify(e) if e.is_Float else e
    if e.is_Rational:
        return mpmath.mpf(e.p) / e.q
    return mpmath.mpf(str(sp.N(e, dps + 10)))


#: Largest Chebyshev degree of one tau piece (its error is judged with twice as many nodes),
#: and how often a piece that misses the tolerance there is split (:func:`fit_tables`).
_MAX_DEGREE = 64
_MAX_SPLITS = 3


def _fit_piece(lo: Any, hi: Any, kind: int, at: Callable[[Any], dict], names: list, tol: Any) -> Any:
    """Chebyshev interpolant on the Lobatto nodes of one tau piece, doubled from degree 8 until the
    degree-n interpolant predicts the n new nodes of degree 2n to ``tol`` times the tables' scale
    (then the degree-2n interpolant is kept): (coefficients by name, error), or None when that fails
    at degree :data:`_MAX_DEGREE`. Analytic tables converge geometrically; the rate is set by the
    nearest singularity in complex tau (e.g. tanh at B = 32, gamma = 1.5 needs degree 64: the poles
    of tanh(beta + gamma sqrt(tau) y) reach tau ~ -(pi^2/4 + beta^2)/(gamma^2 (B - 1)))."""
    n = 8
    vals = [at(tau) for tau in _lobatto(lo, hi, n, kind)]
    coeffs = {name: _cheb_coeffs([v[name] for v in vals]) for name in names}
    while True:
        fine = _lobatto(lo, hi, 2 * n, kind)
        new = [fine[j] for j in range(1, 2 * n, 2)]
        newvals = [at(tau) for tau in new]
        piece = _Piece(lo, hi, coeffs, kind)
        scale = max([abs(v[name]) for v in vals for name in names] + [mpmath.mpf(1)])
        err = max(
            abs(_clenshaw(coeffs[name], piece.x(tau)) - v[name]) for tau, v in zip(new, newvals) for name in names
        )
        vals = [at(tau) for tau in fine]
        coeffs = {name: _cheb_coeffs([v[name] for v in vals]) for name in names}
        if err <= tol * scale:
            return coeffs, err
        n *= 2
        if n > _MAX_DEGREE:
            return None


def fit_tables(
    edges: Sequence[Any], kinds: Sequence[int], at: Callable[[Any], dict], names: list, tol: Any, what: str
) -> tuple[list[_Piece], Any]:
    """Chebyshev pieces (:func:`_fit_piece`) of the tables ``at`` (tau -> {name: value}) on the pieces
    between ``edges`` with maps ``kinds``; (pieces, worst interpolation error).

    A piece that misses ``tol`` at degree :data:`_MAX_DEGREE` is split at its first quarter,
    grading towards its lower end (the singularities of an analytic phi(beta + gamma sqrt(tau) y)
    in complex tau approach tau = 0 as gamma^2 B grows), up to :data:`_MAX_SPLITS` times; then
    :class:`ConvergenceError`."""
    pieces: list[_Piece] = []
    worst = mp.zero
    work = [(lo, hi, kind, 0) for lo, hi, kind in zip(edges[:-1], edges[1:], kinds)]
    while work:
        lo, hi, kind, depth = work.pop(0)
        fit = _fit_piece(lo, hi, kind, at, names, tol)
        if fit is None:
            if depth >= _MAX_SPLITS:
                raise ConvergenceError(
                    f"{what}: Chebyshev interpolation in tau on [{mpmath.nstr(lo, 5)}, {mpmath.nstr(hi, 5)}] "
                    f"missed {mpmath.nstr(tol, 3)} (relative) with {2 * _MAX_DEGREE + 1} nodes after "
                    f"{depth} splits; lower --dps"
                )
            mid = lo + (hi - lo) / 4
            # a singular end keeps its square-root map: lo (bit 1) on the left part, hi (bit 2) on the right
            work[:0] = [(lo, mid, kind & 1, depth + 1), (mid, hi, kind & 2, depth + 1)]
            continue
        coeffs, err = fit
        worst = max(worst, err)
        pieces.append(_Piece(lo, hi, coeffs, kind))
    return pieces, worst


#: The progress bars of :func:`tau_progress` (innermost last); each new tau node ticks the last one.
_PROGRESS: list[Any] = []


@contextlib.contextmanager
def tau_progress(desc: str = "eps integrals (mpmath): tau nodes") -> Iterator[Any]:
    """Show the mpmath tabulation's progress on stderr (a bar counting the tau nodes, each a full set
    of sphere integrals: about a second each, a few hundred for a kinked phi with beta != 0; the
    count is open-ended, the fit is adaptive). Used by ``symbnmf eval``; library calls are silent."""
    from symbnmf._progress import progress

    bar = progress(None, desc=desc, unit="nodes", leave=False)
    _PROGRESS.append(bar)
    try:
        yield bar
    finally:
        _PROGRESS.remove(bar)
        bar.close()


def collapse_m0(phi: sp.Expr, gamma: Any, beta: Any, B: int, dps: int) -> Any:
    """m0 = E[psi(y1)^2 - psi(y1) psi(y2)] on the sphere, psi the collapse direction of
    phi(beta + gamma t y) as t -> 0 (docs/theory.md §8: the slope of (a - b)(tau) at tau = 0), as
    an mpf at ``dps`` digits; None where phi has no such direction at beta."""
    from symbnmf._activations import x
    from symbnmf.numeric._quadrature import sphere_expectations
    from symbnmf.symbolic._epsilon import collapse_direction
    from symbnmf.symbolic._sphere import y1, y2

    try:
        psi = collapse_direction(phi, x, gamma, beta)
    except ValueError:
        return None
    m = sphere_expectations([(psi.subs(x, y1) ** 2, 1), (psi.subs(x, y1), psi.subs(x, y2))], B, dps)
    return m[0] - m[1]


@functools.lru_cache(maxsize=64)
def tau_tables(phi: sp.Expr, gamma: sp.Expr, beta: sp.Expr, B: int, dps: int = DEFAULT_DPS) -> TauTables:
    """Build (and cache) the :class:`TauTables` of phi(beta + gamma t y) at batch size B."""
    from symbnmf._activations import _homogeneity, x
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._epsilon import concrete_terms, eps_integrals

    Bv = check_batch_size(B)
    ei = eps_integrals()
    with mp.workdps(dps + 10):
        norm = {X: mpmath.mpf(_rational_or_float(v.subs(Bsym, Bv), dps)) for X, v in ei.norm.items()}
        trace = {X: mpmath.mpf(_rational_or_float(v.subs(Bsym, Bv), dps)) for X, v in ei.trace.items()}
        phi_beta = mpmath.mpf(_rational_or_float(sp.sympify(phi.subs(x, beta)), dps))
        m0 = collapse_m0(phi, gamma, beta, Bv, dps + 2)
        terms = {
            name: tuple((sp.sympify(c).subs(Bsym, Bv), f1, f2) for c, f1, f2 in ts)
            for name, ts in concrete_terms(phi, x, gamma, beta).items()
        }
        what = f"eps integrals of {phi} at B={Bv}"
        alpha = _homogeneity(phi)
        if alpha is not None and beta == 0 and gamma > 0:
            one = _values(terms, Bv, dps + 2, sp.Integer(1), what)
            # phi(gamma t y) = t^alpha phi(gamma y): phi-type integrals scale as tau^alpha, the
            # phi'-type (K) as tau^(alpha - 1); vals are the t = 1 values (gamma included)
            a_mp = mpmath.mpf(_rational_or_float(sp.sympify(alpha), dps))
            return TauTables(Bv, dps, norm, trace, phi_beta, m0, (a_mp, one), [], 1)
        # split tau at the points where a kink k of phi(beta + gamma t y) leaves the sphere
        from symbnmf.numeric._quadrature import _exact_kinks

        cuts = exit_taus([(k - beta) / gamma for k in _exact_kinks(phi, x)], Bv, upto_one=True)
        edges, kinds = graded_pieces(cuts, sp.Integer(1))
        if any(sp.simplify(k - beta) == 0 for k in _exact_kinks(phi, x)):
            raise SymbnmfError(
                f"phi = {phi} has a kink at beta = {beta}: with eps > 0 this is supported only for positive-homogeneous "
                "phi at beta = 0 (ReLU, leaky ReLU); shift --beta slightly"
            )
        cache: dict = {}

        def at(tau: Any) -> dict:
            key = mpmath.nstr(tau, dps + 5)
            if key not in cache:
                # the sphere integrals need an exact t: the binary rational t_node = sqrt(tau)
                # rounded to 2p + 10 bits (p = working precision), so |t_node^2 - tau| < 2^(-2p).
                # The tables are continuous in tau and at worst behave like sqrt(tau - c) next to
                # a cut c (exits of kinks; elsewhere their slope is bounded), so the value moves by
                # < 2^(-p) relative, far below the interpolation target 10^(-dps+3). (Kinks at
                # -beta/(gamma t_node) are exact rationals: _exact_kinks keeps them exact.)
                with mp.workprec(2 * mp.prec + 10):
                    t_node = +mpmath.sqrt(tau)
                cache[key] = _values(terms, Bv, dps + 2, _rational(t_node), what)
                if _PROGRESS:
                    _PROGRESS[-1].update(1)
            return cache[key]

        bounds = [mpmath.mpf(_rational_or_float(e, dps)) for e in edges]
        tol = mpmath.mpf(10) ** (-(dps - 3))
        pieces, worst = fit_tables(bounds, kinds, at, list(terms), tol, what)
        used = len(cache)
        return TauTables(Bv, dps, norm, trace, phi_beta, m0, None, pieces, used, worst)


def _values(terms: dict, B: int, dps: int, t: sp.Expr, what: str) -> dict:
    """All eps integrals (name -> mpf) at the radial factor t (an exact rational)."""
    from symbnmf.numeric._quadrature import sphere_expectations
    from symbnmf.symbolic._epsilon import T

    def sub(f: Any) -> Any:
        return sp.sympify(f).subs(T, t)

    pairs: list[tuple[Any, Any]] = []
    index: dict = {}
    plan: dict = {}
    for name, ts in terms.items():
        plan[name] = []
        for c, f1, f2 in ts:
            key = (sub(f1), sub(f2))
            if key[0] == 0 or key[1] == 0:
                continue  # an identically zero integrand (e.g. phi(beta) = 0 at t = 0)
            # constant factors (phi(beta) at t = 0) come out of the expectation
            if not key[1].free_symbols and key[1] != 1:
                c, key = c * key[1], (key[0], sp.S.One)
            if not key[0].free_symbols and key[0] != 1:
                c, key = c * key[0], (key[1], sp.S.One)
            if key not in index:
                index[key] = len(pairs)
                pairs.append(key)
            plan[name].append((c, index[key]))
    # sphere_expectations appends " at B=...": name the radial factor instead of repeating B
    where = f"{what.removesuffix(f' at B={B}')} at t={float(t):.17g}"
    vals = sphere_expectations(pairs, B, dps, what=where)
    out = {}
    for name, items in plan.items():
        out[name] = sum((mpmath.mpf(_rational_or_float(sp.sympify(c), dps)) * vals[i] for c, i in items), mp.zero)
    return out


# ---------------------------------------------------------------------------------------------
# r-integrals, fixed point, eigenvalues
# ---------------------------------------------------------------------------------------------
def chi2_expectation(
    f: Callable[[Any], Any], k: int, what: str = "chi-square expectation", breaks: Sequence[Any] = ()
) -> Any:
    """E f(s) for s ~ chi^2_k by tanh-sinh quadrature (error estimate checked), split at ``breaks``
    (the s where f is not smooth: the tau cuts of the tables, see :func:`_s_breaks`)."""
    half = mpmath.mpf(k) / 2
    lognorm = -half * mpmath.log(2) - mpmath.loggamma(half)

    def g(s: Any) -> Any:
        if s == 0:
            return mp.zero
        return f(s) * mpmath.exp(lognorm + (half - 1) * mpmath.log(s) - s / 2)

    m = mpmath.mpf(k)
    sd = mpmath.sqrt(2 * m)
    pts = [mp.zero, max(m - 3 * sd, m / 4), m, m + 3 * sd, m + 12 * sd + 20, mp.inf]
    pts = sorted(set(pts) | {mpmath.mpf(b) for b in breaks if 0 < b < mp.inf})
    val, err = mpmath.quad(g, pts, error=True)
    if not err <= mpmath.mpf(10) ** (-mp.dps + 6) * max(abs(val), 1):
        raise ConvergenceError(f"{what} (chi^2_{k}) did not converge: error estimate {mpmath.nstr(err, 3)}")
    return val


@dataclass(frozen=True)
class EpsSetting:
    """BN with eps: eps >= 0, sigma_w^2 = weight_var > 0, x = phi(gamma BN(h) + beta)."""

    eps: Any
    weight_var: Any
    gamma: Any = 1
    beta: Any = 0


def _tau(mu: Any, s: Any, Bv: int, eps: Any) -> Any:
    return mu * s / (mu * s + Bv * eps)


def _s_breaks(tab: TauTables, mu: Any, eps: Any) -> list[Any]:
    """The s = B eps tau/(mu (1 - tau)) of the interior tau cuts of the tables (kinks leaving the
    sphere): the integrands of the r-integral are not smooth there, so tanh-sinh is split at them."""
    if not tab.pieces or eps == 0:
        return []
    return [tab.B * eps * p.lo / (mu * (1 - p.lo)) for p in tab.pieces[1:] if 0 < p.lo < 1 and p.kind & 1]


def fixed_point_map(tab: TauTables, setting: EpsSetting, mu: Any) -> Any:
    """F(mu) = sigma_w^2 E_s[(a - b)(tau)]: mu of the next layer's pre-activations (Lemma eps_radial_split)."""
    eps, sw = (
        mpmath.mpf(_rational_or_float(setting.eps, mp.dps)),
        mpmath.mpf(_rational_or_float(setting.weight_var, mp.dps)),
    )
    if eps == 0 or mu == mp.inf:
        return sw * (tab.value("a", mp.one) - tab.value("b", mp.one))
    return sw * chi2_expectation(
        lambda s: tab.value("a", _tau(mu, s, tab.B, eps)) - tab.value("b", _tau(mu, s, tab.B, eps)),
        tab.B - 1,
        breaks=_s_breaks(tab, mu, eps),
    )


def collapse_slope(tab: TauTables, setting: EpsSetting) -> Any:
    """lim_{mu -> 0+} F(mu)/mu = sigma_w^2 (B-1)/(B eps) m0: the collapsed phase is linearly stable iff < 1."""
    eps, sw = (
        mpmath.mpf(_rational_or_float(setting.eps, mp.dps)),
        mpmath.mpf(_rational_or_float(setting.weight_var, mp.dps)),
    )
    if tab.m0 is None:
        return None
    if eps == 0:
        return mp.inf
    return sw * (tab.B - 1) * tab.m0 / (tab.B * eps)


def collapse_boundary_eps(tab: TauTables, weight_var: Any) -> Any:
    """eps_c(sigma_w^2) = sigma_w^2 m0 (B-1)/B: mu = 0 loses stability for eps < eps_c."""
    sw = mpmath.mpf(_rational_or_float(sp.sympify(weight_var), mp.dps))
    return sw * tab.m0 * (tab.B - 1) / tab.B


def solve_fixed_point(tab: TauTables, setting: EpsSetting, *, grid: int = 48) -> tuple[Any, list, str]:
    """(mu*, all nonzero fixed points, phase). phase is "bsb1" (a stable nonzero mu* exists, the
    largest one is returned) or "collapsed" (mu* = 0)."""
    eps = mpmath.mpf(_rational_or_float(setting.eps, mp.dps))
    sup = max(tab.value("a", tau) - tab.value("b", tau) for tau in [mpmath.mpf(j) / 16 for j in range(17)])
    sw = mpmath.mpf(_rational_or_float(setting.weight_var, mp.dps))
    if eps == 0:
        mu = fixed_point_map(tab, setting, mp.one)
        if not mu > 0:
            raise SymbnmfError(
                "phi(gamma y + beta) is constant on the BN sphere (mu* = 0): use a non-constant activation"
            )
        return mu, [mu], "bsb1"
    hi = 4 * sw * max(sup, mpmath.mpf(10) ** -30)
    lo = hi * mpmath.mpf(10) ** -14

    def g(logmu: Any) -> Any:
        mu = mpmath.exp(logmu)
        return fixed_point_map(tab, setting, mu) / mu - 1

    xs = [mpmath.log(lo) + (mpmath.log(hi) - mpmath.log(lo)) * j / (grid - 1) for j in range(grid)]
    gs = [g(v) for v in xs]
    roots = []
    for (x0, g0), (x1, g1) in zip(zip(xs, gs), zip(xs[1:], gs[1:])):
        if g0 == 0:
            roots.append(mpmath.exp(x0))
        elif g0 * g1 < 0:
            r = mpmath.findroot(g, (x0, x1), solver="anderson", tol=mpmath.mpf(10) ** (-2 * mp.dps // 3))
            roots.append(mpmath.exp(r))
    stable = [r for r in roots if _map_slope(tab, setting, r) < 1]
    if stable:
        return max(stable), roots, "bsb1"
    return mp.zero, roots, "collapsed"


def _map_slope(tab: TauTables, setting: EpsSetting, mu: Any) -> Any:
    h = mu * mpmath.mpf(10) ** (-mp.dps // 3)
    return (fixed_point_map(tab, setting, mu + h) - fixed_point_map(tab, setting, mu - h)) / (2 * h)


def eigenvalues(tab: TauTables, setting: EpsSetting, mu: Any) -> dict[str, Any]:
    """Forward lambda_up_{G,L,M} and backward lambda_down_{G,L,M} at the fixed point mu (> 0), or
    their mu -> 0+ limits at the collapsed fixed point mu = 0 (None where they diverge)."""
    Bv = tab.B
    eps = mpmath.mpf(_rational_or_float(setting.eps, mp.dps))
    sw = mpmath.mpf(_rational_or_float(setting.weight_var, mp.dps))
    out: dict[str, Any] = {}
    if mu > 0:

        def E(f: Callable[..., Any]) -> Any:
            if eps == 0:
                return None
            return chi2_expectation(lambda s: f(s, _tau(mu, s, Bv, eps)), Bv - 1, breaks=_s_breaks(tab, mu, eps))

        for X in "GLM":
            nrm, tr = tab.norm[X], tab.trace[X]
            if eps == 0:
                fw = ((Bv - 1) * tab.value(f"Q.{X}", mp.one) / Bv - tr * tab.value(f"T.{X}", mp.one)) / (2 * mu * nrm)
                bw = Bv / ((Bv - 3) * mu) * sum(tab.value(f"K.{X}.{k}", mp.one) for k in range(3)) / nrm
            else:
                fw = E(lambda s, tau, X=X, tr=tr: s / Bv * tab.value(f"Q.{X}", tau) - tr * tab.value(f"T.{X}", tau)) / (
                    2 * mu * nrm
                )
                bw = (
                    E(
                        lambda s, tau, X=X: (
                            Bv / (mu * s + Bv * eps) * sum(tau**k * tab.value(f"K.{X}.{k}", tau) for k in range(3))
                        )
                    )
                    / nrm
                )
            out[f"forward.{X}"] = sw * fw
            out[f"backward.{X}"] = sw * bw
        return out
    for X in "GLM":
        nrm, tr = tab.norm[X], tab.trace[X]
        q, t = tab.slope0(f"Q.{X}"), tab.slope0(f"T.{X}")
        fw = (
            None
            if q is None or t is None
            else ((Bv - 1) * (Bv + 1) / Bv * q - tr * (Bv - 1) * t) / (2 * Bv * eps * nrm)
        )
        k0 = tab.value(f"K.{X}.0", mp.zero)
        bw = None if k0 == mp.inf else k0 / (eps * nrm)
        out[f"forward.{X}"] = None if fw is None else sw * fw
        out[f"backward.{X}"] = None if bw is None else sw * bw
    return out


def evaluate_eps(
    activation: Any,
    B: int,
    *,
    eps: Any,
    weight_var: Any = 1,
    gamma: Any = 1,
    beta: Any = 0,
    dps: int | None = None,
) -> dict[str, Any]:
    """Every quantity of :data:`symbnmf.QUANTITIES` for BN with eps (issue 12), by mpmath.

    Convention: h = W x + b, W ~ N(0, sigma_w^2/N) (sigma_w^2 = ``weight_var``), BN over the batch
    with biased variance and ``eps``, x = phi(gamma BN(h) + beta); sigma_b^2 drops out (reported
    at sigma_b^2 = 0). ``fixed_point.diag``/``offdiag`` are the pre-activation covariance entries
    at the fixed point; ``forward.X``/``backward.X`` the eigenvalues of the covariance map and of
    the gradient map on piece X (definitions in :mod:`symbnmf.symbolic._epsilon`);
    ``depth_scale`` = 1/ln backward.G. ``_meta`` holds ``phase`` ("bsb1" | "collapsed"), ``mu``,
    the collapse slope lim F(mu)/mu, the boundary eps_c(sigma_w^2), and a note. At eps = 0 the
    values equal the eps = 0 theory times nothing: diag/offdiag scale with sigma_w^2, eigenvalues
    do not depend on it.
    """
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    e, s, g, b = check_bn_parameters(eps, weight_var, gamma, beta)
    Bv = check_batch_size(B)
    work = DEFAULT_DPS if dps is None else max(int(dps), 8)
    setting = EpsSetting(e, s, g, b)
    with mp.workdps(work + 6):
        tab = tau_tables(act.bound_expr, g, b, Bv, work)
        mu, roots, phase = solve_fixed_point(tab, setting)
        out: dict[str, Any] = {}
        sw = mpmath.mpf(_rational_or_float(s, mp.dps))
        epsv = mpmath.mpf(_rational_or_float(e, mp.dps))
        if phase == "bsb1":
            if epsv == 0:
                out["fixed_point.diag"] = sw * tab.value("a", mp.one)
                out["fixed_point.offdiag"] = sw * tab.value("b", mp.one)
            else:
                cuts = _s_breaks(tab, mu, epsv)
                out["fixed_point.diag"] = sw * chi2_expectation(
                    lambda v: tab.value("a", _tau(mu, v, Bv, epsv)), Bv - 1, breaks=cuts
                )
                out["fixed_point.offdiag"] = sw * chi2_expectation(
                    lambda v: tab.value("b", _tau(mu, v, Bv, epsv)), Bv - 1, breaks=cuts
                )
            note = "BSB1 fixed point with eps: mu* = diag - offdiag solves mu = F(mu)"
        else:
            out["fixed_point.diag"] = out["fixed_point.offdiag"] = sw * tab.phi_beta**2
            note = (
                "collapsed phase: every pre-activation is equal across the batch (mu* = 0), x = phi(beta); "
                "eigenvalues are the mu -> 0+ limits (null where they diverge or depend on the direction)"
            )
        out.update(eigenvalues(tab, setting, mu))
        bg = out["backward.G"]
        # no explosion (backward.G <= 1): no depth scale, reported as null
        out["depth_scale"] = None if bg is None or bg <= 1 else 1 / mpmath.log(bg)
        slope = collapse_slope(tab, setting)
        out["_meta"] = {
            "phase": phase,
            "eps": float(e),
            "weight_var": float(s),
            "gamma": float(g),
            "beta": float(b),
            "mu": float(mu),
            "nonzero_fixed_points": [float(r) for r in roots],
            "collapse_slope": None if slope is None else float(slope),
            "collapse_boundary_eps": None if tab.m0 is None else float(collapse_boundary_eps(tab, s)),
            "note": note,
            "tolerance": {
                "double_relative": 1e-10,
                "how": (
                    f"mpmath sphere quadrature at {work + 2} digits, Chebyshev tables in tau (interpolation error "
                    f"{mpmath.nstr(tab.interpolation_error, 2)}), tanh-sinh over chi^2_{{B-1}}"
                ),
            },
        }
    return out
