"""The eps > 0 mean field theory of BN (issue 12): definitions as radial x sphere integrals.

Setting. h = W x + b (W_ij ~ N(0, sigma_w^2/N), b ~ N(0, sigma_b^2)), BN per unit over the batch
with the biased variance and eps >= 0, x = phi(gamma BN(h) + beta). The next pre-activation
covariance is Sigma' = sigma_w^2 E[x x^T] + sigma_b^2 11^T; BN sees only G Sigma' G, and
G 11^T G = 0, so **sigma_b^2 drops out** of everything below (it only adds sigma_b^2 to every entry
of Sigma*).

Radial-angular split (Lemma ``eps_radial_split``). At a BSB1 Sigma with mu = Sigma_ii - Sigma_ij,
G Sigma G = mu G, so G h = sqrt(mu) z with z ~ N(0, G); r = |z| (r^2 = s ~ chi^2_{B-1}) is
independent of the direction u = z/r, and y = sqrt(B) u is uniform on the radius-sqrt(B) sphere of
1-perp. With n^2 = |Gh|^2 + B eps,

    BN(h) = sqrt(B) G h / n = t y,    t^2 = tau = mu s / (mu s + B eps) in [0, 1).

Every quantity becomes an r-integral of sphere integrals that depend on tau only (the law of y
is symmetric, so the sphere integrals are even in t). Writing x = phi(beta + gamma t y),
x' = gamma phi'(beta + gamma t y), D = diag x', Delta a test direction of piece X in Sym(1-perp):

* fixed point: mu = F(mu) = sigma_w^2 E_s[a(tau) - b(tau)], a = E_y x_1^2, b = E_y x_1 x_2;
  Sigma*_ii = sigma_w^2 E_s a, Sigma*_ij = sigma_w^2 E_s b (at sigma_b^2 = 0). mu = 0 (x = phi(beta)
  constant) is always a fixed point when eps > 0: the **collapsed** phase.
* forward (Gaussian score at Sigma = mu G, as Thm 3.6 but without scale invariance):
  lambda_up_X = sigma_w^2/(2 mu |Delta|^2) E_s[(s/B) Q_X(tau) - tr(Delta) T_X(tau)],
  Q_X = E_y (x^T Delta x)(y^T Delta y), T_X = E_y x^T Delta x. For X = G this is F'(mu*), no
  longer 0.
* backward (BN Jacobian sqrt(B)/n (G - Gh h^T G/n^2) = sqrt(B)/n (G - tau y y^T/B)):
  lambda_down_X = sigma_w^2/|Delta|^2 E_s[B/(mu s + B eps) sum_k tau^k K_{X,k}(tau)],
  K_{X,k} = E_y tr(Delta P_k D Delta D P_k') with k = number of (-y y^T/B) factors.

At eps = 0, tau = 1 and E_s s = B-1, E_s 1/s = 1/(B-3) give back the eps = 0 definitions of
:mod:`symbnmf.symbolic._quantities` (tested).

Collapse (linear stability of mu = 0). As mu -> 0+, tau ~ mu s/(B eps) and
F(mu)/mu -> sigma_w^2 (B-1)/(B eps) * m0, m0 = E_y[psi(y_1)^2 - psi(y_1) psi(y_2)] with
psi(y) = lim_{t->0+} (phi(beta + gamma t y) - phi(beta))/t. Smooth phi: psi = gamma phi'(beta) y,
m0 = gamma^2 phi'(beta)^2 B/(B-1), boundary sigma_w^2 gamma^2 phi'(beta)^2 = eps. Positive-homogeneous
phi of degree 1 at beta = 0 (ReLU, identity, leaky ReLU): psi = gamma phi, m0 = gamma^2 mu_0 with
mu_0 the eps = 0 value, boundary sigma_w^2 gamma^2 mu_0 (B-1)/(B eps) = 1. When F(mu)/mu is
decreasing in mu (proved for the homogeneous family: E[s/(mu s + B eps)] decreases) the nonzero
fixed point exists iff that number exceeds 1; otherwise numeric.fixed points are searched on a grid.

Chi-square resolvent (Lemma ``chi2_resolvent``), derived by :func:`chi2_resolvent` with SymPy:
E_{s ~ chi^2_k}[1/(s + c)] = (1/2) e^{c/2} E_{k/2}(c/2), E_nu the generalised exponential integral.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from symbnmf.symbolic._algebra import B, SMatrix, piece_direction
from symbnmf.symbolic._sphere import DPHI, PHI, IndexTerm, SphereIntegral, U, sphere_integral

#: t = sqrt(tau), the radial factor of BN(h) = t y (a SymPy symbol in the concrete integrands).
T = sp.Symbol("t", positive=True)

#: Names of the tau-dependent sphere integrals, in a fixed order.
PIECES = ("G", "L", "M")


@dataclass(frozen=True)
class EpsIntegrals:
    """Abstract (phi, phi' placeholders) sphere integrals of the eps > 0 theory.

    ``integrals`` maps a name (``a``, ``b``, ``Q.X``, ``T.X``, ``K.X.k``) to a SphereIntegral;
    ``norm[X]`` = |Delta_X|^2 and ``trace[X]`` = tr Delta_X are expressions in B.
    """

    integrals: dict
    norm: dict
    trace: dict


def _single(tensors: tuple, coords: tuple, n: int) -> SphereIntegral:
    return sphere_integral([IndexTerm(sp.S.One, tensors, coords)], n)


@functools.cache
def eps_integrals() -> EpsIntegrals:
    """The sphere integrals a, b, Q_X, T_X, K_{X,k} (module docstring), exact in B."""
    ints: dict[str, SphereIntegral] = {
        "a": _single(((SMatrix.outer([1], [1]), "i", "j"),), ((PHI, "i"), (PHI, "j")), 1),
        "b": _single(((SMatrix.outer([1, 0], [0, 1]), "i", "j"),), ((PHI, "i"), (PHI, "j")), 2),
    }
    norm, trace = {}, {}
    for X in PIECES:
        D = piece_direction(X)
        n = D.n
        norm[X] = D.inner(D)
        trace[X] = D.trace()
        ints[f"Q.{X}"] = _single(((D, "i", "j"), (D, "k", "l")), ((PHI, "i"), (PHI, "j"), (U, "k"), (U, "l")), n)
        ints[f"T.{X}"] = _single(((D, "i", "j"),), ((PHI, "i"), (PHI, "j")), n)
        G = SMatrix.centering(n)
        by_k: dict[int, list[IndexTerm]] = {0: [], 1: [], 2: []}
        for pjk in ("G", "uu"):
            for pli in ("G", "uu"):
                coeff = sp.S.One
                tensors = [(D, "i", "j"), (D, "k", "l")]
                coords = [(DPHI, "k"), (DPHI, "l")]
                k = 0
                if pjk == "G":
                    tensors.append((G, "j", "k"))
                else:
                    coeff *= -1 / B
                    coords += [(U, "j"), (U, "k")]
                    k += 1
                if pli == "G":
                    tensors.append((G, "l", "i"))
                else:
                    coeff *= -1 / B
                    coords += [(U, "l"), (U, "i")]
                    k += 1
                by_k[k].append(IndexTerm(coeff, tuple(tensors), tuple(coords)))
        for k, terms in by_k.items():
            ints[f"K.{X}.{k}"] = sphere_integral(terms, n)
    return EpsIntegrals(ints, norm, trace)


def bn_activation(phi: sp.Expr, x: sp.Symbol, gamma: sp.Expr, beta: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(phi(beta + gamma t x), d/dx of it) as expressions in x and :data:`T`."""
    g = sp.sympify(gamma)
    b = sp.sympify(beta)
    arg = b + g * T * x
    f = phi.subs(x, arg)
    df = g * sp.diff(phi, x).subs(x, arg)
    return f, df


def concrete_terms(phi: sp.Expr, x: sp.Symbol, gamma: sp.Expr, beta: sp.Expr) -> dict[str, tuple]:
    """Every integral of :func:`eps_integrals` with x = phi(beta + gamma t y) substituted:
    name -> terms ``(coeff(B), f1(y1, t), f2(y2, t))``."""
    f, df = bn_activation(phi, x, gamma, beta)
    return {name: si.concrete(f, df, x) for name, si in eps_integrals().integrals.items()}


def collapse_direction(phi: sp.Expr, x: sp.Symbol, gamma: sp.Expr, beta: sp.Expr) -> sp.Expr:
    """psi(x) = lim_{t -> 0+} (phi(beta + gamma t x) - phi(beta))/t = gamma x phi'(beta +- 0).

    The one-sided derivatives phi'(beta + 0), phi'(beta - 0) are SymPy limits of phi' (so kinks
    at beta, e.g. ReLU at beta = 0, are handled); the side is sign(gamma x). Returns an
    expression in x (Piecewise when the two sides differ). Raises ValueError when a one-sided
    derivative is infinite (e.g. x^alpha, alpha < 1, at 0).
    """
    d = sp.Symbol("delta", positive=True)
    g = sp.sympify(gamma)
    b = sp.sympify(beta)
    dphi = sp.diff(phi, x)
    sides = []
    for sign in (1, -1):
        e = sp.piecewise_fold(dphi.subs(x, b + sign * d))
        lim = sp.limit(e, d, 0, "+")
        if lim.has(sp.Limit) or lim.is_finite is False or lim.has(sp.oo, -sp.oo, sp.zoo, sp.nan):
            raise ValueError(f"phi has no finite one-sided derivative at beta={b}: {lim}")
        sides.append(sp.nsimplify(lim) if lim.is_Float else lim)
    plus, minus = sides if g.is_positive else sides[::-1]
    if sp.simplify(plus - minus) == 0:
        return sp.simplify(g * plus * x)
    return sp.Piecewise((g * plus * x, x > 0), (g * minus * x, True))


@functools.cache
def chi2_resolvent() -> tuple[sp.Expr, tuple[sp.Symbol, sp.Symbol]]:
    """Lemma ``chi2_resolvent``: R(k, c) = E_{s ~ chi^2_k} 1/(s + c), derived by SymPy.

    Derivation: 1/(s+c) = int_0^oo e^{-v (s+c)} dv and E e^{-v s} = (1+2v)^{-k/2} (chi-square
    moment generating function, integrated here from the density), so with w = 1 + 2v
    R = (1/2) e^{c/2} int_1^oo e^{-c w/2} w^{-k/2} dw = (1/2) e^{c/2} E_{k/2}(c/2).
    Returns (R, (k, c)).
    """
    k, c, s, v, w = sp.symbols("k c s v w", positive=True)
    density = s ** (k / 2 - 1) * sp.exp(-s / 2) / (2 ** (k / 2) * sp.gamma(k / 2))
    mgf = sp.simplify(sp.integrate(density * sp.exp(-v * s), (s, 0, sp.oo), conds="none"))
    # R = int_0^oo e^{-v c} mgf(v) dv, then v = (w - 1)/2
    inner = sp.simplify(sp.exp(-c * (w - 1) / 2) * mgf.subs(v, (w - 1) / 2) / 2)
    R = sp.integrate(inner, (w, 1, sp.oo), conds="none")
    R = sp.simplify(R.rewrite(sp.expint))
    return R, (k, c)
