"""Fast double-precision JAX evaluation of the eps > 0 theory (issue 12) on grids.

Definitions and formulas: :mod:`symbnmf.symbolic._epsilon` (read its docstring first); the mpmath
reference is :mod:`symbnmf.numeric._epsilon`, which this module mirrors step by step:

1. **tau tables.** Every sphere integral (a, b, Q_X, T_X, K_{X,k}) of phi(beta + gamma t y)
   depends on the radial factor only through tau = t^2. For each (phi, gamma, beta, B) they are
   evaluated by the fixed 2-D Gauss sphere quadrature of :mod:`symbnmf.fast._fastquad` (t, gamma,
   beta are grid parameters of one jitted kernel; its fine/coarse self-check applies) at the
   Chebyshev-Lobatto nodes of each tau-piece (pieces split where a kink line or a corner of two
   leaves the sphere, with square-root maps at those cuts, and graded next to them:
   :func:`symbnmf.numeric._epsilon.graded_pieces`), and represented by Chebyshev interpolants.
   The interpolation error of each piece is estimated from the odd nodes against the half-degree
   interpolant of the even nodes, relative to the size of the combo's tables; the degree is
   doubled (32, 64, 128) until it is below ``rtol``; a piece that still misses is split at its
   first quarter (up to 3 times: the poles of e.g. tanh(gamma sqrt(tau) y) in complex tau approach
   tau = 0 as gamma^2 B grows), else :class:`ConvergenceError`. For
   positive-homogeneous phi of integer degree alpha at beta = 0, gamma > 0 the integrals are
   exactly tau^alpha (K: tau^(alpha-1)) times their t = 1 values (a polynomial in tau).
2. **The chi^2_{B-1} integral** over s = r^2 (tau = mu s/(mu s + B eps)): a composite
   Gauss-Legendre rule in s, geometrically graded towards s = 0 (panels [4 2^-(j+1), 4 2^-j],
   j < 44, where the pole of tau at s = -B eps/mu and the s^((B-3)/2) end point live) and uniform
   (width 6) on [4, s_max], the density folded into the weights; for each grid point and mu it is
   also split at the s of the table pieces, and into D/8 panels inside each (D the tables'
   Chebyshev degree), with a square-root map next to the s of a cut, where the integrands behave
   like sqrt|s - s_c| (:func:`_s_rule`). Every number is computed with 12 and with 8 points per
   panel; they must agree to ``rtol``.
3. **The fixed point** mu = F(mu) = sigma_w^2 E_s[(a - b)(tau)]: g(l) = F(e^l)/e^l - 1 on the
   same 48-point log grid as the mpmath path ([4 sigma_w^2 sup(a - b) 1e-14, 4 sigma_w^2
   sup(a - b)], with the coarse rule); the largest bracket where g changes sign from + to - (a stable
   root) is checked with the fine rule and refined by the Illinois method under jit (vectorised over
   the grid); g = sigma_w^2 E[h(tau) s/(mu s + B eps)] - 1 with h = (a - b)/tau tabulated, so there is
   no cancellation near the collapse boundary (mu* -> 0). No such bracket: phase
   "collapsed" (mu* = 0), where the quantities are the mu -> 0+ limits of the mpmath path (NaN
   where they diverge). The coarse s-rule must satisfy |F_coarse(mu*)/mu* - 1| < ``rtol``.

Conventions as :func:`symbnmf.numeric._epsilon.evaluate_eps`: sigma_w^2 = ``weight_var``,
sigma_b^2 = 0 (it drops out), fixed_point.diag/offdiag are pre-activation covariance entries.
Everything runs in float64 (``jax.enable_x64``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from symbnmf._conventions import QUANTITIES, check_batch_size
from symbnmf._errors import ConvergenceError, SymbnmfError
from symbnmf.fast._fastquad import (
    COARSE,
    FINE,
    ITER_COARSE,
    ITER_FINE,
    FastEvaluator,
    _Plan,
    kink_expressions,
    plan_from_pairs,
)

#: Chebyshev degrees tried for the tau tables (each checked against half its degree), and how
#: often a piece that misses rtol at the largest degree is split.
_DEGREES = (32, 64, 128)
_MAX_SPLITS = 3
#: s-rule: geometric panels below S_SPLIT, uniform panels of width S_WIDTH above it.
S_SPLIT = 4.0
S_GEOMETRIC = 44
S_WIDTH = 6.0
S_FINE, S_COARSE = 12, 8
#: table degree per s-panel (:func:`_s_rule`)
S_DEGREE_PER_PANEL = 8
#: log-mu grid of the root search (as numeric._epsilon.solve_fixed_point).
MU_GRID = 48
ILLINOIS_STEPS = 60
#: grid points per jitted call
_CHUNK = 256

_GSYM = sp.Symbol("_g", real=True)
_BSYM = sp.Symbol("_b", real=True)


@dataclass(frozen=True)
class _Duck:
    """The minimum of an Activation that :func:`kink_expressions` reads."""

    bound_expr: sp.Expr
    bound_derivative: sp.Expr
    label: str


def _eps_plan(phi: sp.Expr, beta_zero: bool) -> tuple[_Plan, tuple[str, ...]]:
    """A :class:`_Plan` whose 'quantities' are the eps integrals (names of eps_integrals)."""
    from symbnmf._activations import x
    from symbnmf.symbolic._epsilon import T, bn_activation, concrete_terms

    beta = sp.S.Zero if beta_zero else _BSYM
    params = (T, _GSYM) if beta_zero else (T, _GSYM, _BSYM)
    terms = concrete_terms(phi, x, _GSYM, beta)
    pairs: list[tuple[sp.Expr, sp.Expr]] = []
    index: dict[tuple[sp.Expr, sp.Expr], int] = {}
    esyms: list[sp.Symbol] = []
    exprs: list[sp.Expr] = []
    names = tuple(terms)
    for name in names:
        total = sp.S.Zero
        for coeff, f1, f2 in terms[name]:
            key = (sp.sympify(f1), sp.sympify(f2))
            if key[0] == 0 or key[1] == 0:
                continue
            if key not in index:
                index[key] = len(pairs)
                pairs.append(key)
                esyms.append(sp.Symbol(f"_e{len(esyms)}"))
            total += sp.sympify(coeff) * esyms[index[key]]
        exprs.append(total)
    f, _ = bn_activation(phi, x, _GSYM, beta)
    kinks = kink_expressions(_Duck(f, sp.diff(f, x), str(phi)))
    plan = plan_from_pairs(tuple(pairs), tuple(params), names, exprs, esyms, kinks)
    return plan, ("t", "g") if beta_zero else ("t", "g", "b")


class _EpsIntegrals(FastEvaluator):
    """The eps integrals at (t, gamma[, beta]) grid points: :class:`FastEvaluator` with the plan of
    :func:`_eps_plan` (same rules, same fine/coarse self-check and escalation)."""

    def __init__(self, phi: sp.Expr, beta_zero: bool, rtol: float) -> None:
        plan, pnames = _eps_plan(phi, beta_zero)
        self.activation = _Duck(phi, sp.S.Zero, f"eps integrals of {phi}")  # type: ignore[assignment]
        self.quantities = plan.names
        self.rtol = float(rtol)
        self._plan = plan
        self.parameters = pnames
        self.scheme = "iterated" if plan.kinks_src else "polar"
        self.rules = (ITER_FINE, ITER_COARSE) if self.scheme == "iterated" else (FINE, COARSE)
        self._jitted = None


@functools.lru_cache(maxsize=32)
def _integrals(phi: sp.Expr, beta_zero: bool, rtol: float) -> _EpsIntegrals:
    return _EpsIntegrals(phi, beta_zero, rtol)


# ---------------------------------------------------------------------------------------------
# tau tables (host side)
# ---------------------------------------------------------------------------------------------
def _lobatto(lo: float, hi: float, n: int, kind: int = 0) -> np.ndarray:
    """tau at the Lobatto nodes x_j = cos(pi j/n) of a piece, through its map (:func:`_tau_of_v`)."""
    v = (np.cos(np.pi * np.arange(n + 1) / n) + 1) / 2
    return _tau_of_v(lo, hi, v, kind)


def _tau_of_v(lo: Any, hi: Any, v: Any, kind: int) -> Any:
    """The piece maps v in [0, 1] -> tau: 0 linear; 1 tau = lo + (hi-lo) v^2 (a kink exit at lo, where
    the integrals behave like (tau - lo)^(k/2)); 2 the same at hi; 3 both, tau = lo + (hi-lo) sin^2(pi v/2)."""
    r = [v, v * v, 1 - (1 - v) ** 2, np.sin(np.pi * v / 2) ** 2][kind]
    return lo + (hi - lo) * r


def _cheb(vals: np.ndarray) -> np.ndarray:
    """Chebyshev coefficients of the interpolant on Lobatto nodes; vals [..., n+1]."""
    n = vals.shape[-1] - 1
    j = np.arange(n + 1)
    w = np.where((j == 0) | (j == n), 0.5, 1.0)
    C = np.cos(np.pi * np.outer(j, j) / n)  # [k, j]
    c = 2.0 / n * np.einsum("...j,kj->...k", vals * w, C)
    c[..., 0] /= 2
    c[..., n] /= 2
    return c


def _clenshaw_np(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """c [..., D], x [M] -> [..., M]."""
    b1 = np.zeros(c.shape[:-1] + x.shape)
    b2 = np.zeros_like(b1)
    for k in range(c.shape[-1] - 1, 0, -1):
        b1, b2 = 2 * x * b1 - b2 + c[..., k, None], b1
    return x * b1 - b2 + c[..., 0, None]


@dataclass
class EpsTables:
    """Chebyshev tables in tau of one phi at one B for several (gamma, beta) combos.

    ``edges`` [C, P+1] (unused pieces have edges +inf), ``coeffs`` [C, names, P, D] in x = 2v - 1,
    ``maps`` [C, P] the piece maps of :func:`_tau_of_v`."""

    B: int
    names: tuple[str, ...]
    edges: np.ndarray
    coeffs: np.ndarray
    maps: np.ndarray
    norm: dict
    trace: dict
    phi_beta: np.ndarray  # [C]
    nodes_used: int
    interpolation_error: float


def _kink_values(act: Any) -> list[float]:
    ks = kink_expressions(act)
    out = []
    for k in ks:
        if k.free_symbols:
            raise SymbnmfError(f"{act.label}: kink {k} depends on a free parameter; bind it first")
        out.append(float(k))
    return out


def build_tables(act: Any, B: int, combos: Sequence[tuple[float, float]], rtol: float = 1e-11) -> EpsTables:
    """tau tables (module docstring, step 1) of ``act`` at batch size B for each (gamma, beta)."""
    from symbnmf._activations import _homogeneity, x
    from symbnmf.numeric._epsilon import graded_pieces
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._epsilon import eps_integrals

    phi = act.bound_expr
    Bv = check_batch_size(B)
    ei = eps_integrals()
    norm = {X: float(sp.sympify(v).subs(Bsym, Bv)) for X, v in ei.norm.items()}
    trace = {X: float(sp.sympify(v).subs(Bsym, Bv)) for X, v in ei.trace.items()}
    kinks = _kink_values(act)
    alpha = _homogeneity(phi)
    alpha_int = alpha is not None and sp.sympify(alpha).is_Integer and int(alpha) >= 1
    fphi = sp.lambdify(x, phi, "math")
    plans: list[Any] = []  # per combo: ("hom", None) or ("cheb", edges)
    for g, b in combos:
        if g == 0 or not (math.isfinite(g) and math.isfinite(b)):
            raise SymbnmfError("gamma must be nonzero and finite, beta finite; pass e.g. --gamma 1")
        if alpha_int and b == 0 and g > 0:
            plans.append(("hom", None))
            continue
        if any(abs(k - b) <= 1e-14 * max(1.0, abs(b)) for k in kinks):
            raise SymbnmfError(
                f"phi = {phi} has a kink at beta = {b:g}: with eps > 0 this is supported only for positive-homogeneous "
                "phi (integer degree) at beta = 0 and gamma > 0 (ReLU, leaky ReLU); shift --beta slightly"
            )
        if alpha is not None and not alpha_int and b == 0:
            raise SymbnmfError(f"phi = {phi} is homogeneous of non-integer degree {alpha}: use method='quadrature'")
        exits = _exit_taus([(k - b) / g for k in kinks], Bv)
        cuts = sorted({c for c in exits if 1e-12 < c < 1 - 1e-12})
        # an exit at tau = 1 (e.g. the corner at B = 4, beta = gamma = 1): singular end of the last piece
        cuts += [1.0] if any(abs(c - 1) <= 1e-12 for c in exits) else []
        plans.append(("cheb", graded_pieces(cuts, 1.0)))
    beta_zero = all(b == 0 for _, b in combos)
    ev = _integrals(phi, beta_zero, 1e-10)
    names = ev.quantities
    C = len(combos)
    results: dict[int, Any] = {}
    used = 0
    worst = 0.0

    def run(ts: list[float], gs: list[float], bs: list[float]) -> dict[str, np.ndarray]:
        kw = {"t": np.sqrt(np.asarray(ts)), "g": np.asarray(gs)}
        if not beta_zero:
            kw["b"] = np.asarray(bs)
        return ev([Bv], **kw)

    # homogeneous combos: t = 1
    hom = [i for i, p in enumerate(plans) if p[0] == "hom"]
    if hom:
        vals = run([1.0] * len(hom), [combos[i][0] for i in hom], [0.0] * len(hom))
        used += len(hom)
        a = int(alpha)  # type: ignore[arg-type]
        for j, i in enumerate(hom):
            coeffs = np.zeros((len(names), 1, a + 1))
            for ni, name in enumerate(names):
                power = a - 1 if name.startswith("K.") else a
                # tau^power on [0, 1] as a Chebyshev series in x = 2 tau - 1
                mono = np.polynomial.polynomial.polypow([0.5, 0.5], power)
                cc = np.polynomial.chebyshev.poly2cheb(mono)
                coeffs[ni, 0, : len(cc)] = cc * float(vals[name][j, 0])
            results[i] = ([0.0, 1.0], [coeffs[:, 0]], [0])
    # Chebyshev pieces: items [combo, lo, hi, map, degree, splits]; each is doubled until its
    # interpolation error, relative to the scale of its combo's tables (all names, all pieces: a
    # table that vanishes on a piece, e.g. relu below its first cut, is judged by its size elsewhere),
    # is below rtol; at the largest degree it is split at its first quarter (as
    # numeric._epsilon.fit_tables), up to _MAX_SPLITS times, then ConvergenceError
    pending = [
        [i, lo, hi, kind, _DEGREES[0], 0]
        for i, p in enumerate(plans)
        if p[0] == "cheb"
        for lo, hi, kind in zip(p[1][0][:-1], p[1][0][1:], p[1][1])
    ]
    done: dict[int, list[tuple[float, float, int, np.ndarray]]] = {i: [] for i, p in enumerate(plans) if p[0] == "cheb"}
    scale = np.full(C, 1e-300)
    while pending:
        ts, gs, bs = [], [], []
        for i, lo, hi, kind, n, _ in pending:
            nodes = _lobatto(lo, hi, n, kind)
            ts += list(nodes)
            gs += [combos[i][0]] * len(nodes)
            bs += [combos[i][1]] * len(nodes)
        vals = run(ts, gs, bs)
        used += len(ts)
        V = np.stack([vals[name][:, 0] for name in names])  # [names, nodes]
        off = 0
        blocks = []
        for item in pending:
            n = item[4]
            blocks.append(V[:, off : off + n + 1])
            off += n + 1
            scale[item[0]] = max(scale[item[0]], float(np.max(np.abs(blocks[-1]))))
        nxt = []
        for item, v in zip(pending, blocks):
            i, lo, hi, kind, n, splits = item
            c_half = _cheb(v[:, ::2])
            xo = np.cos(np.pi * np.arange(1, n, 2) / n)
            err = float(np.max(np.abs(_clenshaw_np(c_half, xo) - v[:, 1::2]))) / scale[i]
            if err <= rtol:
                worst = max(worst, err)
                done[i].append((lo, hi, kind, _cheb(v)))
            elif n < _DEGREES[-1]:
                nxt.append([i, lo, hi, kind, 2 * n, splits])
            elif splits < _MAX_SPLITS:
                mid = lo + (hi - lo) / 4
                nxt += [
                    [i, lo, mid, kind & 1, _DEGREES[0], splits + 1],
                    [i, mid, hi, kind & 2, _DEGREES[0], splits + 1],
                ]
            else:
                raise ConvergenceError(
                    f"eps tau table of {phi} at B={Bv}, gamma={combos[i][0]:g}, beta={combos[i][1]:g}: Chebyshev "
                    f"interpolation error {err:.2e} > {rtol:g} on tau in [{lo:.3g}, {hi:.3g}] at degree {n} after "
                    f"{splits} splits; use method='quadrature'"
                )
        pending = nxt
    for i, ps in done.items():
        ps.sort(key=lambda p: p[0])
        results[i] = ([p[0] for p in ps] + [ps[-1][1]], [p[3] for p in ps], [p[2] for p in ps])
    maxp = max(len(r[1]) for r in results.values())
    D = max(c.shape[-1] for r in results.values() for c in r[1])
    edges = np.full((C, maxp + 1), np.inf)
    coeffs = np.zeros((C, len(names), maxp, D))
    maps = np.zeros((C, maxp), dtype=np.int64)
    for i, (e, cs, kinds) in results.items():
        edges[i, : len(e)] = e
        for p, c in enumerate(cs):
            coeffs[i, :, p, : c.shape[-1]] = c
        maps[i, : len(kinds)] = kinds
    phi_beta = np.array([float(fphi(b)) for _, b in combos])
    return EpsTables(Bv, names, edges, coeffs, maps, norm, trace, phi_beta, used, worst)


def _exit_taus(us: Sequence[float], B: int) -> list[float]:
    """tau where the kink structure of phi(beta + gamma t y) changes on the support of (y1, y2).

    With u = (kink - beta)/gamma the kink sits at y_j = u/t. The pair (y1, y2) fills the ellipse
    y1^2 + y2^2 + 2 y1 y2/(B-1) <= B(B-2)/(B-1) (Lemma ``two_coordinate_law``): a kink line leaves it
    at tau = u^2/(B-1) (tangency), and the corner (u_a/t, u_b/t) of two kink lines at
    tau = (u_a^2 + u_b^2 + 2 u_a u_b/(B-1)) (B-1)/(B(B-2)). The tables are split at each."""
    out = [u * u / (B - 1) for u in us]
    for ua in us:
        for ub in us:
            out.append((ua * ua + ub * ub + 2 * ua * ub / (B - 1)) * (B - 1) / (B * (B - 2)))
    return out


# ---------------------------------------------------------------------------------------------
# the chi^2 rule (host side)
# ---------------------------------------------------------------------------------------------
def _s_max(k: int) -> float:
    return k + 14.0 * math.sqrt(2.0 * k) + 60.0


def _n_panels(k: int) -> int:
    return S_GEOMETRIC + 1 + math.ceil((_s_max(k) - S_SPLIT) / S_WIDTH)


@functools.lru_cache(maxsize=256)
def chi2_panels(k: int, panels: int) -> np.ndarray:
    """Edges [panels + 1] of the composite s-rule (module docstring), padded with empty panels at
    s_max."""
    edges = [0.0] + [S_SPLIT * 2.0 ** (-j) for j in range(S_GEOMETRIC, -1, -1)]
    m = math.ceil((_s_max(k) - S_SPLIT) / S_WIDTH)
    edges += [S_SPLIT + S_WIDTH * (i + 1) for i in range(m)]
    pad = panels + 1 - len(edges)
    if pad < 0:
        raise SymbnmfError("internal: chi-square rule larger than its padding")
    return np.array(edges + [edges[-1]] * pad)


def chi2_rule(k: int, n: int, panels: int) -> tuple[Any, ...]:
    """The s-rule of chi^2_k with n Gauss-Legendre points a panel, as the arguments of the jitted
    :func:`_s_rule`: (panel edges, Legendre nodes, Legendre weights, log of the density's constant,
    k/2)."""
    t, w = np.polynomial.legendre.leggauss(n)
    half = k / 2.0
    return chi2_panels(k, panels), t, w, np.float64(-half * math.log(2.0) - math.lgamma(half)), np.float64(half)


def _s_rule(rule, Bf, eps, mu, tedges, tmaps, sub):
    """Nodes s [P, M] and weights (chi^2_k density folded in) of the composite rule, adapted to each
    grid point's tables (``tedges`` [P, pieces + 1], maps ``tmaps`` [P, pieces]) at its mu: with
    s(tau) = B eps tau/(mu (1 - tau)),

    * the image s(tau) of every table piece is an edge, and each bounded piece is cut into ``sub``
      panels of equal length in the piece's own variable v (:func:`_tau_of_v`): a table of
      Chebyshev degree D in v then has degree ~D/sub on a panel (a uniform panel of width 6 can
      hold most of a piece, whose degree-64 polynomial 8 points do not integrate), and next to a
      cut, where tau - tau_c ~ v^2, the panels shrink quadratically;
    * the *breaks*: s_c = s(tau_c) of the cuts tau_c (where a kink line or a corner of two leaves
      the sphere: an inner edge whose upper piece has the square-root map at its lower end; not the
      grading points of :func:`symbnmf.numeric._epsilon.graded_pieces`). On either side of s_c the
      integrands are analytic functions of sqrt|s - s_c|, so a panel whose nearest break below
      (above) lies within its length uses the map of :func:`symbnmf.fast._fastquad._sqrt_map` with
      that distance, which makes sqrt|s - s_c| analytic in the rule's variable
      (numeric._epsilon._s_breaks splits tanh-sinh at the same points);
    * the other panels are plain Gauss-Legendre.
    """
    import jax.numpy as jnp

    from symbnmf.fast._fastquad import _sqrt_map

    base, t, w, lognorm, half = rule
    P = mu.shape[0]
    smax = base[-1]

    def s_of(tau, ok):
        tau_s = jnp.where(ok, tau, 0.5)
        v = Bf * eps[:, None] * tau_s / (mu[:, None] * (1 - tau_s))
        return jnp.where(ok & (v < smax), jnp.clip(v, 0.0, smax), smax)

    lo, hi = tedges[:, :-1], tedges[:, 1:]
    used = jnp.isfinite(hi)
    lo_s, hi_s = jnp.where(used, lo, 0.0), jnp.where(used, hi, 1.0)
    vs = jnp.arange(1, sub) / sub  # interior points of each piece in its variable v
    kd = tmaps[..., None]
    r = jnp.where(
        kd == 0,
        vs,
        jnp.where(kd == 1, vs * vs, jnp.where(kd == 2, 1 - (1 - vs) ** 2, jnp.sin(jnp.pi * vs / 2) ** 2)),
    )
    tau_sub = lo_s[..., None] + (hi_s - lo_s)[..., None] * r  # [P, pieces, sub - 1]
    inner = tedges[:, 1:-1]
    ok_inner = jnp.isfinite(inner) & (inner > 0) & (inner < 1)
    s_inner = s_of(inner, ok_inner)
    extra = jnp.concatenate([s_inner, s_of(tau_sub.reshape(P, -1), jnp.repeat(used, sub - 1, axis=1))], axis=1)
    allp = jnp.sort(jnp.concatenate([jnp.broadcast_to(base, (P, base.shape[0])), extra], axis=1), axis=1)
    # the breaks: cuts, not grading points (the piece above has the square-root map at its lower end)
    brk = ok_inner & (jnp.mod(tmaps[:, 1:], 2) == 1) & (s_inner < smax)
    sc = jnp.where(brk, s_inner, jnp.inf)  # [P, J]
    a, b = allp[:, :-1, None], allp[:, 1:, None]  # [P, panels, 1]
    L = b - a
    below = a - sc[:, None, :]  # [P, panels, J]
    above = sc[:, None, :] - b
    da = jnp.min(jnp.where(below >= 0, below, jnp.inf), axis=2, initial=jnp.inf)[..., None]
    db = jnp.min(jnp.where(above >= 0, above, jnp.inf), axis=2, initial=jnp.inf)[..., None]
    use = (da < L) | (db < L)
    xs, ws = _sqrt_map(a, b, jnp.minimum(da, L), jnp.minimum(db, L), t, w)
    s = jnp.where(use, xs, (a + b) / 2 + L / 2 * t).reshape(P, -1)
    ws = jnp.where(use, ws, L / 2 * w).reshape(P, -1)
    pos = s > 0
    s = jnp.where(pos, s, 1.0)
    dens = jnp.where(pos, jnp.exp(lognorm + (half - 1) * jnp.log(s) - s / 2), 0.0)
    return s, ws * dens


def _subpanels(D: int) -> int:
    """Panels of the s-rule per table piece (:func:`_s_rule`) for tables of D Chebyshev coefficients."""
    return max(1, -(-(D - 1) // S_DEGREE_PER_PANEL))


# ---------------------------------------------------------------------------------------------
# the jitted solver
# ---------------------------------------------------------------------------------------------
def _clenshaw(c, x):
    """c [..., D] (broadcast against x [..., M] after adding an axis), Clenshaw by lax.scan."""
    import jax
    import jax.numpy as jnp

    cs = jnp.moveaxis(c, -1, 0)[::-1][:-1]  # c_{D-1} .. c_1

    def step(carry, ck):
        b1, b2 = carry
        return (2 * x * b1 - b2 + ck[..., None], b1), None

    z = jnp.zeros(jnp.broadcast_shapes(c.shape[:-1] + (1,), x.shape), dtype=x.dtype)
    (b1, b2), _ = jax.lax.scan(step, (z, z), cs)
    return x * b1 - b2 + c[..., 0, None]


def _table_eval(coeffs, edges, maps, tau):
    """coeffs [P, n, pieces, D], edges [P, pieces+1], maps [P, pieces], tau [P, M] -> [P, n, M]."""
    import jax.numpy as jnp

    lo, hi = edges[:, :-1], edges[:, 1:]  # [P, pieces]
    ok = jnp.isfinite(hi)
    lo_s = jnp.where(ok, lo, 0.0)
    hi_s = jnp.where(ok, hi, 1.0)
    r = jnp.clip((tau[:, None, :] - lo_s[..., None]) / (hi_s - lo_s)[..., None], 0.0, 1.0)  # [P, pieces, M]
    kd = maps[..., None]
    v = jnp.where(
        kd == 0,
        r,
        jnp.where(kd == 1, jnp.sqrt(r), jnp.where(kd == 2, 1 - jnp.sqrt(1 - r), 2 / jnp.pi * jnp.arcsin(jnp.sqrt(r)))),
    )
    xx = 2 * v - 1
    vals = _clenshaw(coeffs, xx[:, None])  # [P, n, pieces, M]
    inner = edges[:, 1:-1]  # [P, pieces-1]
    idx = jnp.sum(tau[:, None, :] > jnp.where(jnp.isfinite(inner), inner, jnp.inf)[..., None], axis=1)  # [P, M]
    onehot = idx[:, None, :] == jnp.arange(coeffs.shape[2])[None, :, None]  # [P, pieces, M]
    return jnp.sum(jnp.where(onehot[:, None], vals, 0.0), axis=2)


def _make_solver(names: tuple[str, ...]):
    import jax
    import jax.numpy as jnp

    ia, ib = names.index("a"), names.index("b")

    def F_over_mu(ch, edges, maps, rule, mu, Bf, eps, sw):
        # mu [P] -> F(mu)/mu [P] = sigma_w^2 E[h(tau) s/(mu s + B eps)], h = (a - b)/tau with
        # coefficients ch [P, 1, pieces, D]: no cancellation as mu -> 0 (the collapse boundary)
        s, w = _s_rule(rule, Bf, eps, mu, edges, maps, _subpanels(ch.shape[-1]))
        den = mu[:, None] * s + Bf * eps[:, None]
        v = _table_eval(ch, edges, maps, mu[:, None] * s / den)[:, 0]
        return sw * jnp.sum(v * s / den * w, axis=-1)

    def solve(coeffs, ch, edges, maps, rule_f, rule_c, Bf, eps, sw, sup):
        del coeffs
        hi = 4 * sw * jnp.maximum(sup, 1e-30)
        llo, lhi = jnp.log(hi * 1e-14), jnp.log(hi)
        grid = llo[:, None] + (lhi - llo)[:, None] * jnp.arange(MU_GRID)[None, :] / (MU_GRID - 1)  # [P, G]

        def g_of(lm):
            mu = jnp.exp(lm)
            return F_over_mu(ch, edges, maps, rule_f, mu, Bf, eps, sw) - 1

        def g_coarse(lm):
            return F_over_mu(ch, edges, maps, rule_c, jnp.exp(lm), Bf, eps, sw) - 1

        # the bracket search uses the coarse rule (signs only; accurate to rtol, checked below)
        gs = jax.lax.map(g_coarse, grid.T).T  # [P, G]
        down = (gs[:, :-1] > 0) & (gs[:, 1:] <= 0)
        j = (MU_GRID - 2) - jnp.argmax(down[:, ::-1], axis=1)  # largest + -> - bracket
        found = jnp.any(down, axis=1)
        x0 = jnp.take_along_axis(grid, j[:, None], 1)[:, 0]
        x1 = jnp.take_along_axis(grid, j[:, None] + 1, 1)[:, 0]
        g0 = jnp.take_along_axis(gs, j[:, None], 1)[:, 0]
        g1 = jnp.take_along_axis(gs, j[:, None] + 1, 1)[:, 0]

        x0, x1 = jnp.minimum(x0, x1), jnp.maximum(x0, x1)
        g0, g1 = g_of(x0), g_of(x1)
        ok = (g0 > 0) & (g1 <= 0)  # the coarse bracket must hold for the fine rule too

        def illinois(st):
            it, a, fa, b, fb, side = st
            c = jnp.where(fb != fa, (a * fb - b * fa) / (fb - fa), (a + b) / 2)
            c = jnp.clip(c, jnp.minimum(a, b), jnp.maximum(a, b))
            fc = g_of(c)
            same = jnp.sign(fc) == jnp.sign(fb)
            # fc same sign as fb: replace b, halve fa if b was kept last time (Illinois)
            na = jnp.where(same, a, b)
            nfa = jnp.where(same, jnp.where(side == 1, fa / 2, fa), fb)
            nside = jnp.where(same, 1, -1)
            done = fc == 0
            return (
                it + 1,
                jnp.where(done, c, na),
                jnp.where(done, 0.0, nfa),
                c,
                fc,
                nside,
            )

        def going(st):
            it, a, fa, b, fb, _ = st
            live = found & (jnp.abs(b - a) > 1e-14) & (jnp.minimum(jnp.abs(fa), jnp.abs(fb)) > 1e-15)
            return (it < ILLINOIS_STEPS) & jnp.any(live)

        st = (0, x0, g0, x1, g1, jnp.zeros_like(j))
        _, a, fa, b, fb, _ = jax.lax.while_loop(going, illinois, st)
        lm = jnp.where(jnp.abs(fb) <= jnp.abs(fa), b, a)
        width = jnp.abs(b - a)
        mu = jnp.where(found, jnp.exp(lm), 0.0)
        resid_c = jnp.where(found, F_over_mu(ch, edges, maps, rule_c, jnp.where(found, mu, 1.0), Bf, eps, sw) - 1, 0.0)
        resid_f = jnp.where(found, jnp.where(ok, jnp.minimum(jnp.abs(fa), jnp.abs(fb)), jnp.inf), 0.0)
        return mu, found, resid_f, resid_c, width

    def quantities(coeffs, edges, maps, rule, mu, Bf, eps, sw, norm, trace):
        """diag, offdiag, forward[3], backward[3] at mu > 0 with one s-rule."""
        s, w = _s_rule(rule, Bf, eps, mu, edges, maps, _subpanels(coeffs.shape[-1]))
        tau = mu[:, None] * s / (mu[:, None] * s + Bf * eps[:, None])
        v = _table_eval(coeffs, edges, maps, tau)  # [P, n, M]
        E = lambda f: jnp.sum(f * w, axis=-1)
        out = [sw * E(v[:, ia]), sw * E(v[:, ib])]
        k = {n: i for i, n in enumerate(names)}
        fw, bw = [], []
        for X_i, X in enumerate("GLM"):
            nrm, tr = norm[X_i], trace[X_i]
            q, t = v[:, k[f"Q.{X}"]], v[:, k[f"T.{X}"]]
            fw.append(sw * E(s / Bf * q - tr * t) / (2 * mu * nrm))
            ks = sum(tau**j * v[:, k[f"K.{X}.{j}"]] for j in range(3))
            bw.append(sw * E(Bf / (mu[:, None] * s + Bf * eps[:, None]) * ks) / nrm)
        return jnp.stack(out + fw + bw)  # [8, P]

    return jax.jit(solve), jax.jit(quantities)


@functools.lru_cache(maxsize=8)
def _solver(names: tuple[str, ...]):
    return _make_solver(names)


def _ratio_table(tab: EpsTables, m0: np.ndarray) -> np.ndarray:
    """Chebyshev coefficients [C, pieces, D] of h(tau) = (a - b)(tau)/tau (h(0) = m0, the slope at 0),
    re-interpolated at the Lobatto nodes of each piece (a - b vanishes at tau = 0: x = phi(beta))."""
    ia, ib = tab.names.index("a"), tab.names.index("b")
    C, _, npieces, D = tab.coeffs.shape
    n = max(D - 1, 2)
    xs = np.cos(np.pi * np.arange(n + 1) / n)
    out = np.zeros((C, npieces, n + 1))
    for c in range(C):
        for p in range(npieces):
            lo, hi = tab.edges[c, p], tab.edges[c, p + 1]
            if not np.isfinite(hi):
                continue
            f = _clenshaw_np(tab.coeffs[c, ia, p] - tab.coeffs[c, ib, p], xs)
            tau = _tau_of_v(lo, hi, (xs + 1) / 2, int(tab.maps[c, p]))
            with np.errstate(divide="ignore", invalid="ignore"):
                h = np.where(tau > 0, f / np.where(tau > 0, tau, 1.0), m0[c])
            out[c, p] = _cheb(h)
    return out


def _endpoint_values(tab: EpsTables, idx: np.ndarray, tau: float) -> dict[str, np.ndarray]:
    """Table values at one tau for the combos idx: name -> [P]."""
    out = {}
    for ni, name in enumerate(tab.names):
        vals = np.empty(idx.size)
        for c in np.unique(idx):
            e = tab.edges[c]
            npieces = int(np.sum(np.isfinite(e))) - 1
            p = int(np.searchsorted(e[1:npieces], tau, side="left")) if npieces > 1 else 0
            p = min(p, npieces - 1)
            lo, hi = e[p], e[p + 1]
            r = min(max((tau - lo) / (hi - lo), 0.0), 1.0)
            kind = tab.maps[c, p]
            v = [r, math.sqrt(r), 1 - math.sqrt(1 - r), 2 / math.pi * math.asin(math.sqrt(r))][kind]
            x = np.array([2 * v - 1])
            vals[idx == c] = _clenshaw_np(tab.coeffs[c, ni, p], x)[0]
        out[name] = vals
    return out


def _slope0(tab: EpsTables, idx: np.ndarray) -> dict[str, np.ndarray]:
    """d/dtau at tau = 0+ of every table (first piece, map 0 or 2): with f'(x = -1) =
    sum (-1)^(k+1) k^2 c_k, d tau/dx = (hi - lo)/2 (map 0) or (hi - lo) (map 2)."""
    out = {}
    for ni, name in enumerate(tab.names):
        vals = np.empty(idx.size)
        for c in np.unique(idx):
            cc = tab.coeffs[c, ni, 0]
            kk = np.arange(cc.size)
            lo, hi = tab.edges[c, 0], tab.edges[c, 1]
            scale = 2 / (hi - lo) if tab.maps[c, 0] == 0 else 1 / (hi - lo)
            vals[idx == c] = scale * np.sum((-1.0) ** (kk + 1) * kk * kk * cc)
        out[name] = vals
    return out


def fast_evaluate_eps(
    activation: Any,
    Bs: Any,
    *,
    eps: Any,
    weight_var: Any = 1.0,
    gamma: Any = 1.0,
    beta: Any = 0.0,
    rtol: float = 1e-10,
) -> dict[str, np.ndarray]:
    """Every quantity of the eps > 0 theory on a grid, by JAX quadrature (float64, checked).

    Convention (issue 12, :func:`symbnmf.numeric._epsilon.evaluate_eps`): h = W x + b with
    W ~ N(0, sigma_w^2/N) (``weight_var``), BN over the batch with the biased variance and ``eps``,
    x = phi(``gamma`` BN(h) + ``beta``), sigma_b^2 = 0. ``eps``, ``weight_var``, ``gamma``, ``beta``
    broadcast to a grid shape P; results have shape P + (len(Bs),) (P without the B axis for a
    scalar B): every name of :data:`symbnmf.QUANTITIES`, ``"mu"`` (mu* = diag - offdiag),
    ``"phase"`` (str array, "bsb1" | "collapsed"), ``"collapse_slope"`` (lim F(mu)/mu as mu -> 0+)
    and ``"collapse_boundary_eps"`` (eps_c(sigma_w^2) = sigma_w^2 m0 (B-1)/B). In the collapsed
    phase diag = offdiag = sigma_w^2 phi(beta)^2 and the eigenvalues are the mu -> 0+ limits (NaN
    where they diverge); ``depth_scale`` is 1/ln backward.G, inf where backward.G <= 1.
    Accuracy about 1e-10 relative; :class:`ConvergenceError` where a self-check fails.
    """
    import jax
    import jax.numpy as jnp

    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    scalar_B = np.ndim(Bs) == 0
    Blist = [check_batch_size(b) for b in np.atleast_1d(np.asarray(Bs, dtype=object)).ravel()]
    try:
        arrs = np.broadcast_arrays(*[np.asarray(v, dtype=np.float64) for v in (eps, weight_var, gamma, beta)])
    except (TypeError, ValueError) as exc:
        raise SymbnmfError(f"eps, weight_var, gamma, beta must be numbers or arrays of one shape: {exc}") from None
    e, sw, g, b = (a.ravel() for a in arrs)
    pshape = arrs[0].shape
    for name, flag, v in (("eps", "--eps", e), ("weight_var", "--weight-var", sw), ("gamma", "--gamma", g)):
        if not np.all(np.isfinite(v)):
            raise SymbnmfError(f"{name} must be finite; pass e.g. {flag} 0.1")
    if not np.all(np.isfinite(b)):
        raise SymbnmfError("beta must be finite; pass e.g. --beta 0")
    if np.any(e < 0):
        raise SymbnmfError("eps must be >= 0 (BN divides by sqrt(var + eps)); pass e.g. --eps 1e-3")
    if np.any(sw <= 0):
        raise SymbnmfError("weight_var (sigma_w^2) must be > 0; pass e.g. --weight-var 1")
    if np.any(g == 0):
        raise SymbnmfError("gamma = 0 makes every layer output constant; pass a nonzero --gamma (default 1)")
    combos_arr, idx = np.unique(np.stack([g, b], axis=1), axis=0, return_inverse=True)
    idx = idx.ravel()
    combos = [(float(c[0]), float(c[1])) for c in combos_arr]
    P = e.size
    keys = [*QUANTITIES, "mu", "collapse_slope", "collapse_boundary_eps"]
    res = {k: np.full((P, len(Blist)), np.nan) for k in keys}
    phase = np.empty((P, len(Blist)), dtype=object)
    with jax.enable_x64(True):
        for bi, Bv in enumerate(Blist):
            tab = build_tables(act, Bv, combos)
            solve, quants = _solver(tab.names)
            k = Bv - 1
            panels = _n_panels(k)
            panels = 16 * math.ceil(panels / 16)
            rule_f = chi2_rule(k, S_FINE, panels)
            rule_c = chi2_rule(k, S_COARSE, panels)
            taus = np.linspace(0.0, 1.0, 17)
            sup_c = np.empty(len(combos))
            for c in range(len(combos)):
                vals = [_endpoint_values(tab, np.array([c]), float(t)) for t in taus]
                sup_c[c] = max(float(v["a"][0] - v["b"][0]) for v in vals)
            norm = np.array([tab.norm[X] for X in "GLM"])
            trace = np.array([tab.trace[X] for X in "GLM"])
            at1 = _endpoint_values(tab, idx, 1.0)
            at0 = _endpoint_values(tab, idx, 0.0)
            sl = _slope0(tab, idx)
            m0 = sl["a"] - sl["b"]
            sl_c = _slope0(tab, np.arange(len(combos)))
            hcoef = _ratio_table(tab, sl_c["a"] - sl_c["b"])
            res["collapse_boundary_eps"][:, bi] = sw * m0 * (Bv - 1) / Bv
            with np.errstate(divide="ignore", invalid="ignore"):
                res["collapse_slope"][:, bi] = np.where(e == 0, np.inf, sw * (Bv - 1) * m0 / (Bv * e))
            zero = e == 0
            # eps = 0: tau = 1 exactly (the eps = 0 theory scaled by sigma_w^2)
            if np.any(zero):
                mu0 = sw * (at1["a"] - at1["b"])
                res["mu"][zero, bi] = mu0[zero]
                res["fixed_point.diag"][zero, bi] = (sw * at1["a"])[zero]
                res["fixed_point.offdiag"][zero, bi] = (sw * at1["b"])[zero]
                for X_i, X in enumerate("GLM"):
                    fw = ((Bv - 1) * at1[f"Q.{X}"] / Bv - trace[X_i] * at1[f"T.{X}"]) / (2 * mu0 * norm[X_i])
                    bw = Bv / ((Bv - 3) * mu0) * sum(at1[f"K.{X}.{j}"] for j in range(3)) / norm[X_i]
                    res[f"forward.{X}"][zero, bi] = (sw * fw)[zero]
                    res[f"backward.{X}"][zero, bi] = (sw * bw)[zero]
                phase[zero, bi] = "bsb1"
                if np.any(~np.isfinite(mu0[zero]) | (mu0[zero] <= 0)):
                    raise SymbnmfError("phi(gamma y + beta) is constant on the BN sphere (mu* = 0)")
            pos = np.flatnonzero(~zero)
            for start in range(0, pos.size, _CHUNK):
                sel = pos[start : start + _CHUNK]
                n_real = sel.size
                padsel = np.concatenate([sel, np.full(_CHUNK - n_real, sel[-1])]) if n_real < _CHUNK else sel
                ci = idx[padsel]
                C = jnp.asarray(tab.coeffs[ci])
                E = jnp.asarray(tab.edges[ci])
                Mp = jnp.asarray(tab.maps[ci])
                Bf = float(Bv)
                args = (
                    C,
                    jnp.asarray(hcoef[ci][:, None]),
                    E,
                    Mp,
                    rule_f,
                    rule_c,
                    Bf,
                    jnp.asarray(e[padsel]),
                    jnp.asarray(sw[padsel]),
                )
                mu, found, rf, rc, _width = (np.asarray(a)[:n_real] for a in solve(*args, jnp.asarray(sup_c[ci])))
                bad = found & ((np.abs(rf) > 1e-12) | (np.abs(rc) > rtol))
                if bad.any():
                    i = sel[np.flatnonzero(bad)[0]]
                    raise ConvergenceError(
                        f"eps fixed point of {act.label} at B={Bv} (eps={e[i]:g}, weight_var={sw[i]:g}, gamma={g[i]:g}, "
                        f"beta={b[i]:g}) failed its check (residual fine {rf[bad][0]:.2e}, coarse {rc[bad][0]:.2e}); "
                        "use method='quadrature'"
                    )
                mu_safe = np.where(found, mu, 1.0)
                mu_pad = np.concatenate([mu_safe, np.ones(_CHUNK - n_real)])
                qa = (C, E, Mp)
                qb = (Bf, jnp.asarray(e[padsel]), jnp.asarray(sw[padsel]), norm, trace)
                vf = np.asarray(quants(*qa, rule_f, jnp.asarray(mu_pad), *qb))[:, :n_real]
                vc = np.asarray(quants(*qa, rule_c, jnp.asarray(mu_pad), *qb))[:, :n_real]
                err = np.abs(vf - vc)
                # relative, with an absolute floor: |diag| for the covariance entries, 1 for the
                # (dimensionless) eigenvalues, e.g. forward.G -> 0 as eps -> 0
                floor = np.concatenate([np.abs(vf[:1]), np.abs(vf[:1]), np.ones_like(vf[2:])])
                badq = (err > rtol * np.maximum(np.abs(vf), floor) + 1e-15) & found[None]
                if badq.any():
                    qi, pi = np.argwhere(badq)[0]
                    i = sel[pi]
                    raise ConvergenceError(
                        f"eps chi-square quadrature of {act.label} at B={Bv} (eps={e[i]:g}, weight_var={sw[i]:g}) "
                        f"is not accurate to rtol={rtol:g} (fine and coarse differ by {err[qi, pi]:.2e}); "
                        "use method='quadrature'"
                    )
                qnames = ["fixed_point.diag", "fixed_point.offdiag"] + [f"forward.{X}" for X in "GLM"]
                qnames += [f"backward.{X}" for X in "GLM"]
                for qi, qn in enumerate(qnames):
                    res[qn][sel, bi] = np.where(found, vf[qi], np.nan)
                res["mu"][sel, bi] = mu
                phase[sel, bi] = np.where(found, "bsb1", "collapsed")
                # collapsed: the mu -> 0+ limits (numeric._epsilon.eigenvalues)
                col = sel[~found]
                if col.size:
                    ee, ss = e[col], sw[col]
                    res["fixed_point.diag"][col, bi] = ss * tab.phi_beta[idx[col]] ** 2
                    res["fixed_point.offdiag"][col, bi] = ss * tab.phi_beta[idx[col]] ** 2
                    for X_i, X in enumerate("GLM"):
                        nrm, tr = norm[X_i], trace[X_i]
                        q, t = sl[f"Q.{X}"][col], sl[f"T.{X}"][col]
                        fw = ((Bv - 1) * (Bv + 1) / Bv * q - tr * (Bv - 1) * t) / (2 * Bv * ee * nrm)
                        res[f"forward.{X}"][col, bi] = ss * fw
                        res[f"backward.{X}"][col, bi] = ss * at0[f"K.{X}.0"][col] / (ee * nrm)
    bg = res["backward.G"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ds = np.where(bg > 1, 1 / np.log(np.where(bg > 1, bg, 2.0)), np.inf)
    res["depth_scale"] = np.where(np.isnan(bg), np.nan, ds)
    out: dict[str, np.ndarray] = {k: v.reshape(pshape + (len(Blist),)) for k, v in res.items()}
    out["phase"] = phase.reshape(pshape + (len(Blist),))
    if scalar_B:
        out = {k: v[..., 0] for k, v in out.items()}
    return out


def evaluate_eps_fast(
    activation: Any, B: int, *, eps: Any, weight_var: Any = 1, gamma: Any = 1, beta: Any = 0
) -> dict[str, Any]:
    """One grid point of :func:`fast_evaluate_eps` in the form of
    :func:`symbnmf.numeric._epsilon.evaluate_eps` (floats, None where undefined, ``_meta``)."""
    r = fast_evaluate_eps(
        activation, int(B), eps=float(eps), weight_var=float(weight_var), gamma=float(gamma), beta=float(beta)
    )
    out: dict[str, Any] = {}
    for q in QUANTITIES:
        v = float(r[q])
        out[q] = None if not math.isfinite(v) else v
    phase = str(r["phase"])
    if out["backward.G"] is None or out["backward.G"] <= 1:
        out["depth_scale"] = None
    note = (
        "BSB1 fixed point with eps: mu* = diag - offdiag solves mu = F(mu)"
        if phase == "bsb1"
        else (
            "collapsed phase: every pre-activation is equal across the batch (mu* = 0), x = phi(beta); "
            "eigenvalues are the mu -> 0+ limits (null where they diverge or depend on the direction)"
        )
    )
    slope = float(r["collapse_slope"])
    bound = float(r["collapse_boundary_eps"])
    out["_meta"] = {
        "phase": phase,
        "eps": float(eps),
        "weight_var": float(weight_var),
        "gamma": float(gamma),
        "beta": float(beta),
        "mu": float(r["mu"]),
        "collapse_slope": slope if math.isfinite(slope) else None,
        "collapse_boundary_eps": bound if math.isfinite(bound) else None,
        "note": note,
        "tolerance": {
            "double_relative": 1e-10,
            "how": (
                "fixed 2-D Gauss sphere quadrature (JAX, float64) tabulated in tau by Chebyshev interpolants, "
                "composite Gauss rule over chi^2_{B-1}, each checked against a coarser rule"
            ),
        },
    }
    return out
