"""Fast double-precision JAX evaluation of every quantity, for any activation (Thm F.5).

The numbers are the shared definitions (:func:`symbnmf.symbolic._quantities.definitions`): each
quantity is a ``formula`` in B, the activation's parameters and placeholders, each placeholder
a sum of ``coeff(B) * E[f1(y1) f2(y2)]`` with (y1, y2) two coordinates of y uniform on the
radius-sqrt(B) sphere in 1-perp of R^B. This module evaluates every E[f1 f2] by one *fixed*
2-D Gauss rule, jit-compiled and vectorised over B and over grids of activation parameters.

Lemma ``two_coordinate_law`` (Thm F.5; also stated and tested in :mod:`symbnmf.numeric._quadrature`).
In polar coordinates rho in [0, 1], psi in [0, 2 pi) of the first two coordinates of a uniform
point of the radius-sqrt(B) sphere in R^{B-1},

    E f(y1, y2) = (B-3)/(2 pi) int_0^{2 pi} int_0^1 f(y1, y2) rho (1 - rho^2)^{(B-5)/2} drho dpsi,
    y_j = sqrt(B-1) rho cos(psi - psi_j),   psi_1 = 0,   psi_2 = arccos(-1/(B-1))

(rho = sin theta turns the radial weight into cos^{B-4} theta sin theta, Thm F.5).

Rules.

* Radial: the n-point Gauss rule of the weight w(rho) = rho (1 - rho^2)^beta, beta = (B-5)/2, on
  [0, 1] (a Gauss-Jacobi-type rule; its ``rho`` factor makes odd powers of rho exact, so along a
  ray a piecewise-polynomial integrand of degree < 2n is integrated exactly). Its recurrence is
  computed once per (B, n) from the exact moments
  m_k = Gamma(k/2 + 1) Gamma(beta + 2) / Gamma(k/2 + beta + 2) by Chebyshev's algorithm in
  mpmath at 2n + 30 digits (the Hankel system is ill-conditioned), then nodes by a float64
  tridiagonal eigensolver and weights by w_i = 1 / sum_j p_j(rho_i)^2 (orthonormal p_j),
  which keeps the tiny weights of large B relatively accurate.
* Angular: Gauss-Legendre on the four sectors between the rays psi = psi_j +- pi/2, where the
  lines y1 = 0 and y2 = 0 cross the disk: an activation with kinks only at 0 (ReLU, leaky
  ReLU, |x|, ...) is analytic on every sector.

Kinks away from 0 (e.g. ReLU with BN's beta, relu(x + b), with b a grid parameter) use a second
scheme, iterated angles (Lemma ``iterated_two_coordinate_law``, see :func:`_iterated_expectations`):
theta for y1 with weight sin^{B-3}, then phi for y2 given theta with weight sin^{B-4}, both by
Gauss-Legendre on pieces split *inside the jitted kernel* at the kinks (computed from the
parameters), at the theta where a kink line is tangent to the inner circle, and truncated to
the window where the weights exceed 1e-16 of their peak. Next to a tangency the inner integral
has a square-root branch point (even B): the theta pieces there use a map that makes
sqrt|theta - theta_t| analytic, also when theta_t lies just outside the piece (a corner of two
kink lines near the edge of the disk, :func:`_sqrt_map`).

Every evaluation is done with two rules (polar: (n_rho, n_psi per sector) = (40, 28) and a
coarser (32, 24); iterated: points per piece (32, 28) and (28, 24)); their difference is the
error estimate. Where it exceeds ``rtol`` (1e-10 relative by default) the pair is enlarged
twice (x2, x3); if that still fails, :class:`~symbnmf._errors.ConvergenceError` is raised: a
wrong digit is never returned silently (steep activations such as tanh(60 x) are refused).

Everything runs with 64-bit JAX inside ``jax.enable_x64(True)``; results are numpy float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import sympy as sp

from symbnmf._conventions import QUANTITIES, check_batch_size, check_quadrature_batch
from symbnmf._errors import ActivationError, ConvergenceError, SymbnmfError
from symbnmf.fast._jaxprint import jax_code, print_assignments

#: Default rule sizes: (radial nodes, angular nodes per sector); the second is the check rule.
FINE = (40, 28)
COARSE = (32, 24)
#: Iterated scheme (kinks away from 0): Gauss-Legendre points per piece in theta and in phi.
ITER_FINE = (32, 28)
ITER_COARSE = (28, 24)

#: Largest number of (parameter point, B, node) triples evaluated in one jitted call.
_CHUNK_POINTS = 2**22


# ---------------------------------------------------------------------------------------------
# Quadrature rules (host side, cached)
# ---------------------------------------------------------------------------------------------
#: Version of the radial rule's construction (part of its on-disk cache key).
_RADIAL_VERSION = 1


def _rule_file(B: int, n: int):
    """Where the radial rule (B, n) is cached on disk, or None (``SYMBNMF_NO_CACHE``)."""
    import os

    if os.environ.get("SYMBNMF_NO_CACHE"):
        return None
    from symbnmf.fast._compile_cache import cache_root

    return cache_root() / "rules" / f"radial-v{_RADIAL_VERSION}-B{B}-n{n}.npy"


@functools.lru_cache(maxsize=1024)
def radial_rule(B: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of the n-point Gauss rule for rho (1-rho^2)^((B-5)/2) on [0,1].

    Built once per (B, n): kept in memory and on disk under the cache directory (the mpmath
    construction costs ~7 ms a rule; reading it back ~0.1 ms).
    """
    path = _rule_file(B, n)
    if path is not None:
        try:
            arr = np.load(path)
            if arr.shape == (2, n) and np.all(np.isfinite(arr)):
                return arr[0], arr[1]
        except (OSError, ValueError):
            pass
    nodes, w = _radial_rule_mpmath(B, n)
    if path is not None:
        import os

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, np.stack([nodes, w]))
            os.replace(tmp, path)
        except OSError:
            pass
    return nodes, w


def _radial_rule_mpmath(B: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh_tridiagonal

    beta = mpmath.mpf(B - 5) / 2
    with mpmath.workdps(2 * n + 30 + int(math.log10(B + 1)) * 2):
        lg = mpmath.loggamma
        c = lg(beta + 2)
        mom = [mpmath.exp(lg(mpmath.mpf(k) / 2 + 1) + c - lg(mpmath.mpf(k) / 2 + beta + 2)) for k in range(2 * n)]
        # Chebyshev's algorithm (Gautschi, Orthogonal Polynomials, Alg. 2.1)
        a = [mpmath.mpf(0)] * n
        b = [mpmath.mpf(0)] * n
        a[0] = mom[1] / mom[0]
        b[0] = mom[0]
        sig_prev = [mpmath.mpf(0)] * (2 * n)
        sig = list(mom)
        for k in range(1, n):
            new = [mpmath.mpf(0)] * (2 * n)
            for l in range(k, 2 * n - k):
                new[l] = sig[l + 1] - a[k - 1] * sig[l] - b[k - 1] * sig_prev[l]
            a[k] = new[k + 1] / new[k] - sig[k] / sig[k - 1]
            b[k] = new[k] / sig[k - 1]
            sig_prev, sig = sig, new
        af = np.array([float(v) for v in a])
        sb = np.array([float(mpmath.sqrt(v)) for v in b])
    nodes = eigh_tridiagonal(af, sb[1:], eigvals_only=True)
    # weights 1/sum_j p_j(x)^2 with the orthonormal recurrence (p_0 = 1, total mass 1)
    p_prev = np.zeros_like(nodes)
    p = np.ones_like(nodes)
    s = p * p
    for j in range(n - 1):
        p_next = ((nodes - af[j]) * p - (sb[j] if j else 0.0) * p_prev) / sb[j + 1]
        p_prev, p = p, p_next
        s += p * p
    w = 1.0 / s
    if not (np.all(np.isfinite(nodes)) and np.all((nodes > 0) & (nodes < 1)) and abs(w.sum() - 1) < 1e-12):
        raise ConvergenceError(f"radial Gauss rule failed at B={B}, n={n}; use method='quadrature'")
    return nodes, w


@functools.lru_cache(maxsize=1024)
def angular_rule(B: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes/weights (summing to 1) in psi: m Gauss-Legendre points on each of the 4 sectors
    between the rays where y1 = 0 and y2 = 0 (psi = psi_j +- pi/2)."""
    psi2 = math.acos(-1.0 / (B - 1))
    cuts = sorted(
        (
            (math.pi / 2) % (2 * math.pi),
            (3 * math.pi / 2) % (2 * math.pi),
            (psi2 + math.pi / 2) % (2 * math.pi),
            (psi2 + 3 * math.pi / 2) % (2 * math.pi),
        )
    )
    t, w = np.polynomial.legendre.leggauss(m)
    nodes, weights = [], []
    for i in range(4):
        lo, hi = cuts[i], cuts[(i + 1) % 4] + (2 * math.pi if i == 3 else 0.0)
        nodes.append((hi - lo) / 2 * t + (hi + lo) / 2)
        weights.append((hi - lo) / 2 * w / (2 * math.pi))
    return np.concatenate(nodes), np.concatenate(weights)


@functools.lru_cache(maxsize=1024)
def _plane_rule(B: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y1, y2, weight) of the product rule at batch size B (flattened, weights sum to 1)."""
    r, wr = radial_rule(B, n)
    psi, wp = angular_rule(B, m)
    psi2 = math.acos(-1.0 / (B - 1))
    R = math.sqrt(B - 1)
    y1 = R * np.outer(r, np.cos(psi))
    y2 = R * np.outer(r, np.cos(psi - psi2))
    w = np.outer(wr, wp)
    return y1.ravel(), y2.ravel(), w.ravel()


def _rules(Bs: Sequence[int], n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [_plane_rule(b, n, m) for b in Bs]
    return tuple(np.stack([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# The compiled evaluator
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    pairs: tuple[tuple[sp.Expr, sp.Expr], ...]
    params: tuple[sp.Symbol, ...]
    names: tuple[str, ...]  # quantity names, in output order
    integrand_src: str  # def integrand(y1, y2, *params): the two-coordinate pairs (two_idx)
    integrand1_src: str  # def integrand1(y1, *params): the one-coordinate pairs, f2 = 1 (one_idx)
    one_idx: tuple[int, ...]
    two_idx: tuple[int, ...]
    combine_src: str
    kinks_src: str  # def kinks(*params) -> tuple (empty: kinks only at 0, polar scheme)
    kinks1_src: str  # def kinks(*params) -> tuple of all kinks (also 0), for the one-coordinate rule


def _plan(activation: Any, quantities: Sequence[str]) -> _Plan:
    from symbnmf.symbolic._quantities import definitions

    act = activation
    params = act.free_parameters
    defs = definitions(act)
    pairs: list[tuple[sp.Expr, sp.Expr]] = []
    index: dict[tuple[sp.Expr, sp.Expr], int] = {}
    esyms: list[sp.Symbol] = []
    exprs: list[sp.Expr] = []
    need = [q for q in quantities if q != "depth_scale"]
    if "depth_scale" in quantities and "backward.G" not in need:
        need.append("backward.G")
    for q in need:
        qd = defs[q]
        subs = {}
        for ph, integral in qd.integrals.items():
            total = sp.S.Zero
            for coeff, f1, f2 in integral.terms:
                key = (sp.sympify(f1), sp.sympify(f2))
                if key not in index:
                    index[key] = len(pairs)
                    pairs.append(key)
                    esyms.append(sp.Symbol(f"_e{len(esyms)}"))
                total += sp.sympify(coeff) * esyms[index[key]]
            subs[ph] = total
        exprs.append(sp.sympify(qd.formula).xreplace(subs))
    return plan_from_pairs(tuple(pairs), tuple(params), tuple(need), exprs, esyms, kink_expressions(act))


def plan_from_pairs(
    pairs: tuple[tuple[sp.Expr, sp.Expr], ...],
    params: tuple[sp.Symbol, ...],
    names: tuple[str, ...],
    exprs: Sequence[sp.Expr],
    esyms: Sequence[sp.Symbol],
    kinks: Sequence[sp.Expr],
) -> _Plan:
    """The jit sources of a plan: ``exprs`` (one per name) are formulas in the placeholders
    ``esyms``, placeholder k standing for E[f1(y1) f2(y2)] with ``pairs[k] = (f1, f2)``; ``kinks``
    are the kinks of the activation (in its parameters ``params``). Shared by :func:`_plan` and the
    eps > 0 tables (:mod:`symbnmf.fast._epsquad`)."""
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._sphere import y1, y2

    pnames = [f"_p{i}" for i in range(len(params))]
    # integrand(y1, y2, *params) -> f1*f2 for the two-coordinate pairs; integrand1(y1, *params) ->
    # f(y1) for the one-coordinate pairs (f2 = 1: a 1-D rule suffices); shared subexpressions
    iterated = not all(k == 0 for k in kinks)
    # (the polar scheme integrates one-coordinate pairs with its 2-D rule too: its radial Gauss rule
    # resolves near-real poles such as those of tanh(g y) at y = i pi/(2g) that a theta rule misses)
    one_idx = tuple(i for i, (f1, f2) in enumerate(pairs) if iterated and (f1 == 1 or f2 == 1))
    two_idx = tuple(i for i in range(len(pairs)) if i not in one_idx)
    ynames = {y1: "y1", y2: "y2", **dict(zip(params, pnames))}
    psig = "".join(", " + p for p in pnames)

    def _src(fname: str, sig: str, ex: list[sp.Expr], prefix: str) -> str:
        if not ex:
            return f"def {fname}({sig}):\n    return ()"
        lines, outs, _ = print_assignments(ex, ynames, target="jax", prefix=prefix)
        return "\n".join(
            [f"def {fname}({sig}):"]
            + [f"    {ln}" for ln in lines]
            + [f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})"]
        )

    integrand_src = _src("integrand", "y1, y2" + psig, [pairs[i][0] * pairs[i][1] for i in two_idx], "_u")
    ones = [(pairs[i][0] if pairs[i][1] == 1 else pairs[i][1].subs(y2, y1)) for i in one_idx]
    integrand1_src = _src("integrand1", "y1" + psig, ones, "_s")
    cnames = {Bsym: "B", **dict(zip(params, pnames)), **{e: e.name for e in esyms}}
    lines, outs, _ = print_assignments(exprs, cnames, target="jax", prefix="_v")
    args = ", ".join(["B", *pnames, *[e.name for e in esyms]])
    combine_src = "\n".join(
        [f"def combine({args}):"] + [f"    {ln}" for ln in lines] + [f"    return ({', '.join(outs)},)"]
    )
    kinks1_src = (
        f"def kinks({', '.join(pnames)}):\n    return ({', '.join(jax_code(k, names=dict(zip(params, pnames))) for k in kinks)},)"
        if kinks
        else f"def kinks({', '.join(pnames)}):\n    return ()"
    )
    kinks_src = kinks1_src if iterated else ""
    return _Plan(
        pairs,
        params,
        names,
        integrand_src,
        integrand1_src,
        one_idx,
        two_idx,
        combine_src,
        kinks_src,
        kinks1_src,
    )


def _exec(src: str, name: str) -> Callable[..., Any]:
    import jax.numpy as jnp
    import jax.scipy.special as jsp

    ns: dict[str, Any] = {"jnp": jnp, "jsp": jsp}
    exec(compile(src, f"<symbnmf fastquad {name}>", "exec"), ns)
    return ns[name]


def kink_expressions(act: Any) -> tuple[sp.Expr, ...]:
    """Kinks of phi and phi' as expressions in the free parameters (e.g. -b for relu(x + b)).

    Read off the Piecewise conditions, Abs, sign, Heaviside and Max/Min arguments; each must be
    linear in x (a straight kink line y_j = k in the (y1, y2) plane), else :class:`SymbnmfError`.
    """
    from symbnmf._activations import x

    args: list[sp.Expr] = []
    for e in (act.bound_expr, act.bound_derivative):
        for node in sp.preorder_traversal(e):
            if isinstance(node, sp.Piecewise):
                for _, c in node.args:
                    if isinstance(c, sp.Basic):
                        args += [r.lhs - r.rhs for r in c.atoms(sp.core.relational.Relational)]
            elif isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
                args.append(node.args[0])
            elif isinstance(node, (sp.Max, sp.Min)):
                args += [a - b for i, a in enumerate(node.args) for b in node.args[i + 1 :]]
    kinks: list[sp.Expr] = []
    for a in args:
        if not a.has(x):
            continue
        try:
            poly = sp.Poly(sp.expand(a), x)
        except sp.PolynomialError:
            poly = None
        if poly is None or poly.degree() != 1 or poly.coeff_monomial(x).has(x):
            raise SymbnmfError(
                f"{act.label} has a kink where {a} = 0, not a straight line in x; use method='quadrature' (mpmath)"
            )
        k = sp.simplify(-poly.coeff_monomial(1) / poly.coeff_monomial(x))
        if k.has(sp.zoo, sp.nan) or k.has(sp.I):
            raise SymbnmfError(f"{act.label} has a kink at {k}; use method='quadrature' (mpmath)")
        if k not in kinks:
            kinks.append(k)
    return tuple(kinks)


#: Half-width of the kept angular window, in standard deviations of the peaked weights:
#: sin^{B-3}(pi/2 +- L) = exp(-_WINDOW^2/2) ~ 2e-16 at L = _WINDOW/sqrt(B-3).
_WINDOW = 8.5


def _pieces(lo, hi, cuts, t, w, smooth_ends=False, singular=None):
    """Gauss-Legendre nodes/weights on [lo, hi] split at ``cuts`` (clipped): [..., P*n].

    ``smooth_ends`` (a boolean array broadcasting against ``lo``) maps the pieces where it is true
    by :func:`_sqrt_map`, which makes powers (x - c)^(k/2) of the distance to a *singular point* c
    analytic in the rule's variable when c is a piece end or lies just outside one. The singular
    points are ``singular`` ([S, ...] like ``cuts``; unclipped), or, when None, every cut: the
    nearest one at or beyond each end of a piece (within the piece's length) is the one resolved.
    """
    import jax.numpy as jnp

    cuts = jnp.clip(cuts, lo[None], hi[None])
    pts = jnp.sort(jnp.concatenate([lo[None], cuts, hi[None]], axis=0), axis=0)
    a, b = pts[:-1][..., None], pts[1:][..., None]  # [P, ..., 1]
    nodes = (a + b) / 2 + (b - a) / 2 * t
    weights = (b - a) / 2 * w
    if smooth_ends is not False:
        sing = cuts if singular is None else singular
        length = b - a
        # distance from each end of a piece to the nearest singular point at or beyond it (capped
        # at the piece length: a singular point further away needs no help)
        below = a[None] - sing[:, None, ..., None]  # [S, P, ..., 1]
        above = sing[:, None, ..., None] - b[None]
        big = jnp.inf
        da = jnp.minimum(jnp.min(jnp.where(below >= 0, below, big), axis=0, initial=big), length)
        db = jnp.minimum(jnp.min(jnp.where(above >= 0, above, big), axis=0, initial=big), length)
        sn, sw = _sqrt_map(a, b, da, db, t, w)
        flag = jnp.broadcast_to(smooth_ends, a.shape[1:-1])[None, ..., None]
        nodes = jnp.where(flag, sn, nodes)
        weights = jnp.where(flag, sw, weights)
    P = nodes.shape[0]
    nodes = jnp.moveaxis(nodes, 0, -2).reshape(nodes.shape[1:-1] + (P * t.shape[0],))
    weights = jnp.moveaxis(weights, 0, -2).reshape(weights.shape[1:-1] + (P * t.shape[0],))
    return nodes, weights


def _sqrt_map(a, b, da, db, t, w):
    """Gauss-Legendre (t, w) on [-1, 1] mapped to [a, b] so that sqrt(x - (a - da)) and
    sqrt((b + db) - x) are both entire functions of the rule's variable (da, db >= 0: distances
    from the ends to singular points of square-root type just outside; 0 when at the ends).

    With M = b - a + da + db, x = a - da + M sin^2(theta), theta linear in the rule's variable from
    arcsin sqrt(da/M) to arccos sqrt(db/M): then sqrt(x - a + da) = sqrt(M) sin(theta) and
    sqrt(b + db - x) = sqrt(M) cos(theta), and the map is entire, so it adds no singularity of its own.
    A piece end far from any singular point (da or db equal to the piece length) gets a mild map.
    """
    import jax.numpy as jnp

    L = b - a
    M = L + da + db
    Ms = jnp.where(M > 0, M, 1.0)  # M = 0 only on an empty piece (weights 0)
    th_a = jnp.arcsin(jnp.sqrt(da / Ms))
    th_b = jnp.arccos(jnp.sqrt(db / Ms))
    th = th_a + (th_b - th_a) * (t + 1) / 2
    sn, cs = jnp.sin(th), jnp.cos(th)
    # each end from its own side: no cancellation in x - a or b - x next to the ends
    x = jnp.where(th < jnp.pi / 4, (a - da) + M * sn * sn, (b + db) - M * cs * cs)
    x = jnp.clip(x, a, b)
    wx = jnp.where(L > 0, 2 * M * sn * cs * (th_b - th_a) / 2 * w, 0.0)
    return x, wx


def _kink_array(kinks, params, B):
    """[r, C, 1] array of the kinks at every parameter point (r may be 0)."""
    import jax.numpy as jnp

    C = params[0].shape[0] if params else 1
    ks = [jnp.broadcast_to(jnp.asarray(k, dtype=B.dtype), (C,)) for k in kinks(*params)]
    return (jnp.stack(ks) if ks else jnp.zeros((0, C), dtype=B.dtype))[:, :, None]


def _theta_rule(B, th_cut, t, w, C, smooth=False, singular=None):
    """theta nodes/normalised weights (density sin^{B-3} theta) on the window, split at ``th_cut``
    (``smooth``, ``singular``: see :func:`_pieces`)."""
    import jax.numpy as jnp

    Bc = B[None, :]
    half = jnp.pi / 2
    L1 = jnp.minimum(half, _WINDOW / jnp.sqrt(jnp.maximum(Bc - 3, 1e-300)))
    lo1 = jnp.broadcast_to(half - L1, (C, B.shape[0]))
    hi1 = jnp.broadcast_to(half + L1, (C, B.shape[0]))
    theta, wth = _pieces(lo1, hi1, th_cut, t, w, smooth_ends=smooth, singular=singular)  # [C, nB, P1]
    wth = wth * jnp.power(jnp.sin(theta), Bc[..., None] - 3)
    return theta, wth / jnp.sum(wth, axis=-1, keepdims=True)


def _one_coordinate_expectations(integrand1, kinks, B, rule, params):
    """E[f(y1)] for the one-coordinate pairs (Lemma one_coordinate_law: y1 = sqrt(B-1) cos theta,
    density proportional to sin^{B-3} theta), Gauss-Legendre split at the kinks y1 = k."""
    import jax.numpy as jnp

    t, w = rule
    C = params[0].shape[0] if params else 1
    R = jnp.sqrt(B[None, :] - 1)
    ks = _kink_array(kinks, params, B)
    theta, wth = _theta_rule(B, jnp.arccos(jnp.clip(ks / R, -1.0, 1.0)), t, w, C)
    y1 = R[..., None] * jnp.cos(theta)
    vals = integrand1(y1, *[p[:, None, None] for p in params])
    return [jnp.broadcast_to(jnp.sum(v * wth, axis=-1), (C, B.shape[0])) for v in vals]


def _iterated_expectations(integrand, kinks, B, rule, params):
    """E[f1(y1) f2(y2)] for every pair by iterated angular Gauss rules split at any kinks.

    Lemma ``iterated_two_coordinate_law`` (Thm F.5): u1 = sqrt(B) cos(theta) with density
    proportional to sin^{B-3}(theta) on [0, pi]; given theta, u2 = sqrt(B) sin(theta) cos(phi) with
    density proportional to sin^{B-4}(phi) on [0, pi]; then y1 = sqrt(B-1) cos(theta) and
    y2 = (-cos(theta) + sqrt(B(B-2)) sin(theta) cos(phi)) / sqrt(B-1). A kink y1 = k is the point
    theta = arccos(k/sqrt(B-1)); a kink y2 = k is, for each theta, the point
    cos(phi) = (k sqrt(B-1) + cos(theta)) / (sqrt(B(B-2)) sin(theta)). The weights are smooth, so
    Gauss-Legendre on the pieces converges geometrically; they are truncated to the window
    pi/2 +- _WINDOW/sqrt(B-3) (resp. B-4) and each rule is normalised by its own total weight.
    """
    import jax.numpy as jnp

    (t1, w1), (t2, w2) = rule
    C = params[0].shape[0] if params else 1
    Bc = B[None, :]  # [1, nB]
    R = jnp.sqrt(Bc - 1)
    ks = _kink_array(kinks, params, B)  # [r, C, 1]
    half = jnp.pi / 2
    # outer cuts: the kinks y1 = k, and the theta where a kink line y2 = k is tangent to the
    # inner circle (there the inner integral is not smooth in theta): (B-1) cos(theta -+ alpha)
    # = -k sqrt(B-1), i.e. cos(theta -+ alpha) = -k/R, with cos(alpha) = 1/(B-1). With
    # base = arccos(-k/R) in [0, pi] the solutions in [0, pi] are among alpha + base,
    # 2 pi - alpha - base (in (0, pi) exactly when alpha + base > pi: e.g. leaky ReLU at
    # beta = -0.4, B = 4, t in (0.23, 0.69); without it the inner integral's branch point
    # |theta - theta_t|^((B-3)/2) sat inside a piece and the fast rules converged algebraically)
    # and |alpha - base| (alpha - base + 2 pi > pi never counts)
    alpha = jnp.arccos(1 / (Bc - 1))
    base = jnp.arccos(jnp.clip(-ks / R, -1.0, 1.0))
    th_cut = jnp.concatenate(
        [
            jnp.arccos(jnp.clip(ks / R, -1.0, 1.0)),
            alpha + base,
            2 * jnp.pi - alpha - base,
            alpha - base,
            base - alpha,
        ],
        axis=0,
    )  # [5r, C, nB]; values outside [0, pi] clip to empty pieces
    # Next to a tangency the inner integral behaves like |theta - theta_t|^((B-3)/2) on one side:
    # analytic for odd B, algebraic for even B, where small B (<= 8) needs the square-root map of
    # _pieces. The singular points are the tangencies only (not the kinks y1 = k, where only f1 is
    # not smooth): when a kink y1 = k and a tangency nearly coincide (the corner of two kink lines
    # near the edge of the support of (y1, y2)), the branch point of the inner integral lies just
    # outside the piece that ends at the kink, and the map resolves it there too.
    smooth = jnp.broadcast_to((jnp.mod(Bc, 2) == 0) & (Bc <= 8), (C, B.shape[0]))
    nk = ks.shape[0]
    theta, wth = _theta_rule(B, th_cut, t1, w1, C, smooth, singular=th_cut[nk:])  # [C, nB, P1]
    Bn = Bc[..., None]
    ct, st = jnp.cos(theta), jnp.sin(theta)
    y1 = R[..., None] * ct  # [C, nB, P1]
    S = jnp.sqrt(Bn * (Bn - 2))
    L2 = jnp.where(Bn > 4, jnp.minimum(half, _WINDOW / jnp.sqrt(jnp.maximum(Bn - 4, 1e-300))), half)
    lo2 = jnp.broadcast_to(half - L2, y1.shape)
    hi2 = jnp.broadcast_to(half + L2, y1.shape)
    cphi = (ks[..., None] * R[..., None] + ct[None]) / jnp.maximum(S * st, 1e-300)[None]  # [r, C, nB, P1]
    ph_cut = jnp.arccos(jnp.clip(cphi, -1.0, 1.0))
    phi, wph = _pieces(lo2, hi2, ph_cut, t2, w2)  # [C, nB, P1, P2]
    wph = wph * jnp.power(jnp.sin(phi), Bn[..., None] - 4)
    wph = wph / jnp.sum(wph, axis=-1, keepdims=True)
    y2 = (-ct[..., None] + (S * st)[..., None] * jnp.cos(phi)) / R[..., None, None]
    W = wth[..., None] * wph  # [C, nB, P1, P2]
    ps = [p[:, None, None, None] for p in params]
    vals = integrand(y1[..., None], y2, *ps)
    shape = W.shape[:2]
    return [jnp.broadcast_to(jnp.sum(v * W, axis=(-2, -1)), shape) for v in vals]


class FastEvaluator:
    """All mean-field quantities of one activation by fixed 2-D Gauss quadrature in JAX (float64).

    Evaluates the shared definitions (ARCHITECTURE.md; Thm 3.1 fixed point, Thm 3.6/3.7 forward,
    Thm 3.9/3.10 backward eigenvalues, depth scale 1/ln lambda_G-down) with the conventions of
    docs/theory.md. Free activation parameters (e.g. ``g``, ``b`` of ``tanh(g*x + b)``, BN's gamma
    and beta) are arguments of :meth:`__call__`, broadcast to a common grid shape P; batch sizes
    are a 1-D list; results have shape ``P + (len(Bs),)``.

    * ``activation``: name, expression or :class:`~symbnmf.Activation`; kinks (Piecewise, relu,
      Abs, Max) must be straight lines in x, possibly parameter dependent (``relu(x + b)``).
    * ``quantities``: names from :data:`symbnmf.QUANTITIES` (default: all).
    * ``rtol``: relative accuracy demanded of the fine rule, judged against the coarse rule.
    """

    def __init__(
        self,
        activation: Any,
        quantities: Sequence[str] | None = None,
        *,
        rtol: float = 1e-10,
        rules: tuple[tuple[int, int], tuple[int, int]] = (FINE, COARSE),
    ) -> None:
        from symbnmf._activations import get_activation

        self.activation = get_activation(activation)
        qs = list(QUANTITIES) if quantities is None else list(quantities)
        unknown = [q for q in qs if q not in QUANTITIES]
        if unknown:
            raise SymbnmfError(f"unknown quantities {unknown}; choose from {', '.join(QUANTITIES)}")
        self.quantities = tuple(q for q in QUANTITIES if q in qs)
        self.rtol = float(rtol)
        self.rules = rules
        self._plan = _plan(self.activation, self.quantities)
        self.parameters = tuple(p.name for p in self._plan.params)
        #: "polar" (kinks only at 0) or "iterated" (kinks anywhere, possibly parameter dependent)
        self.scheme = "iterated" if self._plan.kinks_src else "polar"
        if self.scheme == "iterated" and rules == (FINE, COARSE):
            self.rules = (ITER_FINE, ITER_COARSE)
        self._jitted: Callable[..., Any] | None = None

    # -- compiled kernel ----------------------------------------------------------------------
    def _kernel(self) -> Callable[..., Any]:
        if self._jitted is None:
            import jax
            import jax.numpy as jnp

            from symbnmf.fast._compile_cache import enable_compilation_cache

            enable_compilation_cache()

            plan = self._plan
            integrand = _exec(plan.integrand_src, "integrand")
            integrand1 = _exec(plan.integrand1_src, "integrand1")
            kinks1 = _exec(plan.kinks1_src, "kinks")
            kinks = _exec(plan.kinks_src, "kinks") if plan.kinks_src else None
            combine = _exec(plan.combine_src, "combine")
            npairs = len(plan.pairs)

            def polar_expectations(rule, params):
                # y1, y2, w: [nB, N]; params: tuple of [C] arrays -> list of [C, nB]
                y1, y2, w = rule
                ps = [p[:, None, None] for p in params]
                shape = (params[0].shape[0] if params else 1, y1.shape[0])
                vals = integrand(y1[None], y2[None], *ps)
                # sum(v * w): XLA fuses the integrand into the reduction (no [C, nB, N] temporaries)
                return [jnp.broadcast_to(jnp.sum(v * w, axis=-1), shape) for v in vals]

            def kernel(B, fine, coarse, fine1, coarse1, params):
                outs = []
                for rule, rule1 in ((fine, fine1), (coarse, coarse1)):
                    if kinks is None:
                        E2 = polar_expectations(rule, params) if plan.two_idx else []
                    else:
                        E2 = _iterated_expectations(integrand, kinks, B, rule, params) if plan.two_idx else []
                    E1 = _one_coordinate_expectations(integrand1, kinks1, B, rule1, params) if plan.one_idx else []
                    E: list[Any] = [None] * npairs
                    for i, v in zip(plan.two_idx, E2):
                        E[i] = v
                    for i, v in zip(plan.one_idx, E1):
                        E[i] = v
                    shape = (params[0].shape[0] if params else 1, B.shape[0])
                    vals = combine(B[None, :], *[p[:, None] for p in params], *E)
                    outs.append(jnp.stack([jnp.broadcast_to(v, shape) for v in vals]))
                return outs[0], outs[1]

            self._jitted = jax.jit(kernel)
        return self._jitted

    def _escalation(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The rule pair, then two larger pairs tried only where the first disagrees with itself."""
        (nf, mf), (_nc, _mc) = self.rules
        return [self.rules, ((2 * nf, 2 * mf), (nf, mf)), ((3 * nf, 3 * mf), (2 * nf, 2 * mf))]

    def _compute(
        self, Blist: list[int], flat: list[np.ndarray], npts: int, rules: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        import jax

        # shape bucketing: pad the batch sizes to a power of two (repeating the last one), so
        # nearby counts of B reuse one compiled kernel (and its persistent-cache entry)
        nB = len(Blist)
        Blist = list(Blist) + [Blist[-1]] * ((1 << (nB - 1).bit_length()) - nB)
        (nf, mf), (nc, mc) = rules
        fine: tuple[np.ndarray, ...]
        coarse: tuple[np.ndarray, ...]
        if self.scheme == "polar":
            fine = _rules(Blist, nf, mf)
            coarse = _rules(Blist, nc, mc)
            nodes = fine[0].shape[1]
        else:
            fine = tuple(np.polynomial.legendre.leggauss(n) for n in (nf, mf))  # type: ignore[misc]
            coarse = tuple(np.polynomial.legendre.leggauss(n) for n in (nc, mc))  # type: ignore[misc]
            nodes = nf * mf * 5 * (len(self._plan.kinks_src.splitlines()) + 1) ** 2
        # one-coordinate pairs: a 1-D Gauss-Legendre rule in theta, 16 points more than the 2-D one
        fine1 = np.polynomial.legendre.leggauss(nf + 16)
        coarse1 = np.polynomial.legendre.leggauss(nc + 16)
        per = max(1, _CHUNK_POINTS // (len(Blist) * nodes))
        chunk = min(npts, per)
        kernel = self._kernel()
        res_f, res_c = [], []
        with jax.enable_x64(True):
            Bv = np.asarray(Blist, dtype=np.float64)
            for start in range(0, npts, chunk):
                part = [f[start : start + chunk] for f in flat]
                n_real = part[0].shape[0] if part else 1
                if part and n_real < chunk:  # pad to the compiled shape
                    part = [np.concatenate([p, np.full(chunk - n_real, p[-1])]) for p in part]
                a, b = kernel(Bv, fine, coarse, fine1, coarse1, tuple(part))
                res_f.append(np.asarray(a)[:, :n_real, :nB])
                res_c.append(np.asarray(b)[:, :n_real, :nB])
        return np.concatenate(res_f, axis=1), np.concatenate(res_c, axis=1)  # [nq, npts, nB]

    def __call__(self, Bs: Any, **params: Any) -> dict[str, np.ndarray]:
        """Quantities at batch sizes ``Bs`` (ints >= 4) and parameter arrays ``params``.

        Returns ``{quantity: float64 array of shape P + (len(Bs),)}`` (P: broadcast shape of the
        parameter arrays; () without parameters). Raises :class:`ConvergenceError` where the
        fine and coarse rules disagree by more than ``rtol``.
        """
        scalar_B = np.ndim(Bs) == 0
        Blist = [
            check_batch_size(b, what="the fast quadrature") for b in np.atleast_1d(np.asarray(Bs, dtype=object)).ravel()
        ]
        missing = [p for p in self.parameters if p not in params]
        extra = [p for p in params if p not in self.parameters]
        if missing or extra:
            raise ActivationError(
                f"{self.activation.label} needs values for parameters {list(self.parameters)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
                + "; pass them as keyword arrays, e.g. g=np.linspace(0, 2, 100)"
            )
        arrays = (
            np.broadcast_arrays(*[np.asarray(params[p], dtype=np.float64) for p in self.parameters])
            if self.parameters
            else []
        )
        pshape = arrays[0].shape if arrays else ()
        flat = [a.ravel() for a in arrays]
        npts = int(np.prod(pshape)) if pshape else 1
        for rules in self._escalation():
            vf, vc = self._compute(Blist, flat, npts, rules)
            err = np.abs(vf - vc)
            # absolute floor relative to the quantity's scale over the parameter grid: a value that
            # vanishes at one grid point (e.g. an eps table at tau = 0) is judged by its neighbours' size
            scale = np.maximum(1.0, np.nanmax(np.abs(np.where(np.isfinite(vf), vf, 0.0)), axis=1, keepdims=True))
            bad = err > self.rtol * np.abs(vf) + 1e-13 * scale
            bad &= np.isfinite(vf) | np.isfinite(vc)
            if not bad.any():
                break
        else:
            qi, pi, bi = np.argwhere(bad)[0]
            where = ", ".join(f"{n}={flat[k][pi]:g}" for k, n in enumerate(self.parameters))
            raise ConvergenceError(
                f"fast quadrature of {self._plan.names[qi]} for {self.activation.label} at B={Blist[bi]}"
                f"{' (' + where + ')' if where else ''} is not accurate to rtol={self.rtol:g} "
                f"(rules {rules[0]} and {rules[1]} differ by {err[qi, pi, bi]:.2e}); "
                "use method='quadrature' (mpmath) or larger rules=..."
            )
        out: dict[str, np.ndarray] = {}
        for i, name in enumerate(self._plan.names):
            out[name] = vf[i].reshape(pshape + (len(Blist),))
        if "depth_scale" in self.quantities:
            bg = out["backward.G"]
            with np.errstate(divide="ignore", invalid="ignore"):
                out["depth_scale"] = np.where(bg > 1, 1 / np.log(np.where(bg > 1, bg, 2.0)), np.inf)
            out["depth_scale"] = np.where(np.isnan(bg), np.nan, out["depth_scale"])
        result = {q: out[q] for q in self.quantities}
        if scalar_B:
            result = {q: v[..., 0] for q, v in result.items()}
        return result


_EVALUATORS: dict[tuple, FastEvaluator] = {}


def _cached_evaluator(activation: Any, quantities: tuple[str, ...] | None) -> FastEvaluator:
    # Activation holds a dict (unhashable): key on its expression and bound values
    key = (sp.srepr(activation.expr), tuple(sorted((k, str(v)) for k, v in activation.values.items())), quantities)
    if key not in _EVALUATORS:
        if len(_EVALUATORS) > 64:
            _EVALUATORS.clear()
        _EVALUATORS[key] = FastEvaluator(activation, quantities)
    return _EVALUATORS[key]


def fast_evaluate(
    activation: Any, Bs: Any, quantities: Sequence[str] | None = None, **params: Any
) -> dict[str, np.ndarray]:
    """All quantities of ``activation`` on the grid (Bs x parameter arrays) by fast JAX quadrature.

    Same conventions and definitions as :func:`symbnmf.evaluate` (docs/theory.md; Thm 3.1, 3.6/3.7,
    3.9/3.10); float64, accurate to about 1e-10 relative (checked against a coarser rule).
    Example: ``fast_evaluate("tanh(g*x)", range(4, 20), g=np.linspace(0.1, 2, 100))["backward.G"]``
    has shape (100, 16). See :class:`FastEvaluator` to reuse the compiled kernel.
    """
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    return _cached_evaluator(act, None if quantities is None else tuple(quantities))(Bs, **params)


_PREFETCHED: dict[tuple, dict[str, float]] = {}


def _memo_key(act: Any, B: int) -> tuple:
    return (sp.srepr(act.bound_expr), act.label, int(B))


def prefetch_fast(activation: Any, Bs: Sequence[int]) -> None:
    """Evaluate all quantities at every B of ``Bs`` in one vectorised kernel call, so that the
    per-B calls of :func:`evaluate_fast` that follow (``symbnmf.evaluate``) only look them up.
    Any failure is left to the per-B calls, which report it for the B concerned."""
    from symbnmf._activations import get_activation

    try:
        act = get_activation(activation)
        act.require_bound()
        Bv = [check_quadrature_batch(b) for b in Bs]
        vals = _cached_evaluator(act, None)(Bv)
    except (SymbnmfError, ValueError, TypeError, ArithmeticError):
        return
    if len(_PREFETCHED) > 4096:
        _PREFETCHED.clear()
    for i, b in enumerate(Bv):
        _PREFETCHED[_memo_key(act, b)] = {q: float(v[i]) for q, v in vals.items()}


def evaluate_fast(activation: Any, B: int, dps: int | None = None) -> dict[str, Any]:
    """Back end ``"fast"`` of :func:`symbnmf.evaluate` (``symbnmf eval --fast``): all quantities
    at one B as floats (double precision, ~1e-10 relative or better, checked; see module doc)."""
    from symbnmf._activations import get_activation

    if dps is not None and dps > 15:
        raise SymbnmfError(
            f"the fast path is double precision (about 15 digits), not dps={dps}; "
            "use method='quadrature' (or drop --fast) for more digits"
        )
    act = get_activation(activation)
    act.require_bound()
    Bv = check_quadrature_batch(B)
    pre = _PREFETCHED.pop(_memo_key(act, Bv), None)
    out: dict[str, Any] = pre if pre is not None else {q: float(v) for q, v in _cached_evaluator(act, None)(Bv).items()}
    if not math.isfinite(out["fixed_point.diag"]) or out["fixed_point.diag"] - out["fixed_point.offdiag"] == 0:
        raise SymbnmfError(
            f"{act.label} is constant on the BN sphere at B={Bv} (mu* = 0): the quantities are undefined; "
            "use a non-constant activation"
        )
    out["_meta"] = {
        "tolerance": {
            "relative": 1e-10,
            "note": "fixed 2-D Gauss quadrature in float64 (JAX), checked against a coarser rule",
        }
    }
    return out


def fast_method(activation: Any, B: int, dps: int | None = None) -> dict[str, float]:
    """:func:`evaluate_fast` without the ``"_meta"`` entry: ``{quantity: float}``."""
    out = evaluate_fast(activation, B, dps)
    out.pop("_meta")
    return out
