"""Fast double-precision JAX evaluation of every quantity, for any activation (Thm F.5).

The numbers are the shared definitions (:func:`symbnmf._quantities.definitions`): each
quantity is a ``formula`` in B, the activation's parameters and placeholders, each placeholder
a sum of ``coeff(B) * E[f1(y1) f2(y2)]`` with (y1, y2) two coordinates of y uniform on the
radius-sqrt(B) sphere in 1-perp of R^B. This module evaluates every E[f1 f2] by one *fixed*
2-D Gauss rule, jit-compiled and vectorised over B and over grids of activation parameters.

Lemma ``two_coordinate_law`` (Thm F.5; also stated and tested in :mod:`symbnmf._quadrature`).
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

Every evaluation is done with two rules (n_rho, n_psi) and a coarser one; their difference is
the error estimate, and :class:`~symbnmf._errors.ConvergenceError` is raised where it exceeds
``rtol`` (1e-10 relative by default): a wrong digit is never returned silently. Activations
with kinks away from 0 are refused with a message naming ``method="quadrature"`` (mpmath).

Everything runs with 64-bit JAX inside ``jax.enable_x64(True)``; results are numpy float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import mpmath
import numpy as np
import sympy as sp

from ._conventions import QUANTITIES, check_batch_size
from ._errors import ActivationError, ConvergenceError, SymbnmfError
from ._jaxprint import print_assignments

#: Default rule sizes: (radial nodes, angular nodes per sector); the second is the check rule.
FINE = (40, 28)
COARSE = (32, 24)

#: Largest number of (parameter point, B, node) triples evaluated in one jitted call.
_CHUNK_POINTS = 2**22


# ---------------------------------------------------------------------------------------------
# Quadrature rules (host side, cached)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def radial_rule(B: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of the n-point Gauss rule for rho (1-rho^2)^((B-5)/2) on [0,1]."""
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
    cuts = sorted(((math.pi / 2) % (2 * math.pi), (3 * math.pi / 2) % (2 * math.pi),
                   (psi2 + math.pi / 2) % (2 * math.pi), (psi2 + 3 * math.pi / 2) % (2 * math.pi)))
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
    integrand_src: str
    combine_src: str


def _plan(activation: Any, quantities: Sequence[str]) -> _Plan:
    from ._algebra import B as Bsym
    from ._quantities import definitions
    from ._sphere import y1, y2

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
    pnames = [f"_p{i}" for i in range(len(params))]
    # integrand(y1, y2, *params) -> tuple of f1*f2 for every distinct pair (shared subexpressions)
    names = {y1: "y1", y2: "y2", **dict(zip(params, pnames))}
    lines, outs, _ = print_assignments([f1 * f2 for f1, f2 in pairs], names, target="jax", prefix="_u")
    integrand_src = "\n".join(
        [f"def integrand(y1, y2{''.join(', ' + p for p in pnames)}):"]
        + [f"    {ln}" for ln in lines]
        + [f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})"]
    )
    cnames = {Bsym: "B", **dict(zip(params, pnames)), **{e: e.name for e in esyms}}
    lines, outs, _ = print_assignments(exprs, cnames, target="jax", prefix="_v")
    args = ", ".join(["B", *pnames, *[e.name for e in esyms]])
    combine_src = "\n".join(
        [f"def combine({args}):"] + [f"    {ln}" for ln in lines] + [f"    return ({', '.join(outs)},)"]
    )
    return _Plan(tuple(pairs), tuple(params), tuple(need), integrand_src, combine_src)


def _exec(src: str, name: str) -> Callable[..., Any]:
    import jax.numpy as jnp
    import jax.scipy.special as jsp

    ns: dict[str, Any] = {"jnp": jnp, "jsp": jsp}
    exec(compile(src, f"<symbnmf fastquad {name}>", "exec"), ns)  # noqa: S102 - our printed source
    return ns[name]


def _check_activation(act: Any) -> None:
    bad = [k for k in act.kinks if k != 0]
    if bad:
        raise SymbnmfError(
            f"the fast path splits only at kinks at 0, but {act.label} has kinks at {bad}; "
            "use method='quadrature' (mpmath, splits at any kink)"
        )


class FastEvaluator:
    """All mean-field quantities of one activation by fixed 2-D Gauss quadrature in JAX (float64).

    Evaluates the shared definitions (ARCHITECTURE.md; Thm 3.1 fixed point, Thm 3.6/3.7 forward,
    Thm 3.9/3.10 backward eigenvalues, depth scale 1/ln lambda_G-down) with the conventions of
    theory.md. Free activation parameters (e.g. ``g``, ``b`` of ``tanh(g*x + b)``, BN's gamma
    and beta) are arguments of :meth:`__call__`, broadcast to a common grid shape P; batch sizes
    are a 1-D list; results have shape ``P + (len(Bs),)``.

    * ``activation``: name, expression or :class:`~symbnmf.Activation` (kinks only at 0).
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
        from ._activations import get_activation

        self.activation = get_activation(activation)
        _check_activation(self.activation)
        qs = list(QUANTITIES) if quantities is None else list(quantities)
        unknown = [q for q in qs if q not in QUANTITIES]
        if unknown:
            raise SymbnmfError(f"unknown quantities {unknown}; choose from {', '.join(QUANTITIES)}")
        self.quantities = tuple(q for q in QUANTITIES if q in qs)
        self.rtol = float(rtol)
        self.rules = rules
        self._plan = _plan(self.activation, self.quantities)
        self.parameters = tuple(p.name for p in self._plan.params)
        self._jitted: Callable[..., Any] | None = None

    # -- compiled kernel ----------------------------------------------------------------------
    def _kernel(self) -> Callable[..., Any]:
        if self._jitted is None:
            import jax
            import jax.numpy as jnp

            integrand = _exec(self._plan.integrand_src, "integrand")
            combine = _exec(self._plan.combine_src, "combine")
            npairs = len(self._plan.pairs)

            def expectations(y1, y2, w, params):
                # y1, y2, w: [nB, N]; params: tuple of [C] arrays -> [npairs, C, nB]
                ps = [p[:, None, None] for p in params]
                shape = (params[0].shape[0] if params else 1,) + y1.shape
                vals = integrand(y1[None], y2[None], *ps)
                # sum(v * w): XLA fuses the integrand into the reduction (no [C, nB, N] temporaries)
                return jnp.stack([jnp.broadcast_to(jnp.sum(v * w, axis=-1), shape[:2]) for v in vals])

            def kernel(B, fine, coarse, params):
                outs = []
                for (y1, y2, w) in (fine, coarse):
                    E = expectations(y1, y2, w, params)
                    vals = combine(B[None, :], *[p[:, None] for p in params], *[E[k] for k in range(npairs)])
                    outs.append(jnp.stack([jnp.broadcast_to(v, E.shape[1:]) for v in vals]))
                return outs[0], outs[1]

            self._jitted = jax.jit(kernel)
        return self._jitted

    def _escalation(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The rule pair, then two larger pairs tried only where the first disagrees with itself."""
        (nf, mf), (nc, mc) = self.rules
        return [self.rules, ((2 * nf, 2 * mf), (nf, mf)), ((3 * nf, 3 * mf), (2 * nf, 2 * mf))]

    def _compute(self, Blist: list[int], flat: list[np.ndarray], npts: int, rules: Any) -> tuple[np.ndarray, np.ndarray]:
        import jax

        (nf, mf), (nc, mc) = rules
        fine = _rules(Blist, nf, mf)
        coarse = _rules(Blist, nc, mc)
        per = max(1, _CHUNK_POINTS // (len(Blist) * fine[0].shape[1]))
        chunk = min(npts, per)
        kernel = self._kernel()
        res_f, res_c = [], []
        with jax.enable_x64(True):
            Bv = np.asarray(Blist, dtype=np.float64)
            for start in range(0, npts, chunk):
                part = [f[start:start + chunk] for f in flat]
                n_real = part[0].shape[0] if part else 1
                if part and n_real < chunk:  # pad to the compiled shape
                    part = [np.concatenate([p, np.full(chunk - n_real, p[-1])]) for p in part]
                a, b = kernel(Bv, fine, coarse, tuple(part))
                res_f.append(np.asarray(a)[:, :n_real])
                res_c.append(np.asarray(b)[:, :n_real])
        return np.concatenate(res_f, axis=1), np.concatenate(res_c, axis=1)  # [nq, npts, nB]

    def __call__(self, Bs: Any, **params: Any) -> dict[str, np.ndarray]:
        """Quantities at batch sizes ``Bs`` (ints >= 4) and parameter arrays ``params``.

        Returns ``{quantity: float64 array of shape P + (len(Bs),)}`` (P: broadcast shape of the
        parameter arrays; () without parameters). Raises :class:`ConvergenceError` where the
        fine and coarse rules disagree by more than ``rtol``.
        """
        scalar_B = np.ndim(Bs) == 0
        Blist = [check_batch_size(b, what="the fast quadrature") for b in np.atleast_1d(np.asarray(Bs, dtype=object)).ravel()]
        missing = [p for p in self.parameters if p not in params]
        extra = [p for p in params if p not in self.parameters]
        if missing or extra:
            raise ActivationError(
                f"{self.activation.label} needs values for parameters {list(self.parameters)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
                + "; pass them as keyword arrays, e.g. g=np.linspace(0, 2, 100)"
            )
        arrays = np.broadcast_arrays(*[np.asarray(params[p], dtype=np.float64) for p in self.parameters]) if self.parameters else []
        pshape = arrays[0].shape if arrays else ()
        flat = [a.ravel() for a in arrays]
        npts = int(np.prod(pshape)) if pshape else 1
        for rules in self._escalation():
            vf, vc = self._compute(Blist, flat, npts, rules)
            err = np.abs(vf - vc)
            bad = err > self.rtol * np.abs(vf) + 1e-15
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


def fast_evaluate(activation: Any, Bs: Any, quantities: Sequence[str] | None = None, **params: Any) -> dict[str, np.ndarray]:
    """All quantities of ``activation`` on the grid (Bs x parameter arrays) by fast JAX quadrature.

    Same conventions and definitions as :func:`symbnmf.evaluate` (theory.md; Thm 3.1, 3.6/3.7,
    3.9/3.10); float64, accurate to about 1e-10 relative (checked against a coarser rule).
    Example: ``fast_evaluate("tanh(g*x)", range(4, 20), g=np.linspace(0.1, 2, 100))["backward.G"]``
    has shape (100, 16). See :class:`FastEvaluator` to reuse the compiled kernel.
    """
    from ._activations import get_activation

    act = get_activation(activation)
    return _cached_evaluator(act, None if quantities is None else tuple(quantities))(Bs, **params)


def fast_method(activation: Any, B: int, dps: int | None = None) -> dict[str, float]:
    """Back end for ``symbnmf.evaluate(..., method="fast")``: all quantities at one B as floats."""
    from ._activations import get_activation

    if dps is not None and dps > 15:
        raise SymbnmfError(f"the fast path is double precision (about 15 digits), not dps={dps}; use method='quadrature' for more")
    act = get_activation(activation)
    act.require_bound()
    vals = _cached_evaluator(act, None)(int(check_batch_size(B)))
    out = {q: float(v) for q, v in vals.items()}
    if not math.isfinite(out["fixed_point.diag"]) or (out["fixed_point.diag"] - out["fixed_point.offdiag"]) == 0:
        raise SymbnmfError(f"{act.label} is constant on the BN sphere at B={B} (mu* = 0): the quantities are undefined; use a non-constant activation")
    return out
