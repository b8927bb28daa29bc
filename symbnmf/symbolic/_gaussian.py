"""Stage 2 (closed forms): Gaussian identities that evaluate E[f1(y1) f2(y2)] exactly in B.

For phi = p + H q piecewise polynomial with its kink at 0 (:class:`~symbnmf.HalfPolynomial`),
f1, f2 expand into monomials y^k H(y)^e. Each monomial expectation is reduced by named lemmas
(:data:`LEMMAS`, each with a numeric test in ``tests/test_lemmas.py``):

* ``sphere_to_gaussian`` (radial-angular independence): if f is homogeneous of degree K and
  z ~ N(0, G) then E f(y) = B^{K/2} E f(z) / E|z|^K, with |z|^2 ~ chi^2_{B-1}.
* ``chi_moment``: E|z|^K = 2^{K/2} Gamma((B-1+K)/2) / Gamma((B-1)/2).
* ``gaussian_pair``: two coordinates of z ~ N(0, G) have variance (B-1)/B and correlation
  rho = -1/(B-1).
* ``half_moment``: E[x^k H(x)] = 2^{k/2} Gamma((k+1)/2) / (2 sqrt(pi)), x ~ N(0, 1).
* ``regression``: x2 = rho x1 + s w, s = sqrt(1 - rho^2), w ~ N(0,1) independent of x1.
* ``wedge``: E[x1^p x2^q H(x1) H(x2)] = 2^{K/2} Gamma(K/2+1)/(2 pi) int_{psi-pi/2}^{pi/2}
  cos^p t cos^q (t - psi) dt with psi = arccos rho (polar coordinates of the whitened pair;
  the positive quadrant is a wedge of opening pi - psi). For p = q = 1 this is the arccosine
  kernel J_1 (Cho & Saul), for p = q = 0 the orthant probability (pi - psi)/(2 pi).

With rho = -1/(B-1): pi - psi = arccos(1/(B-1)) =: theta_B and s = sqrt(B(B-2))/(B-1) =: S_B/(B-1).
Closed forms are built with the symbols ``T_sym`` (theta_B) and ``S_sym`` (S_B), reduced with
S_B^2 = B(B-2), and only then written back (:func:`to_explicit`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from symbnmf._activations import HalfPolynomial, x
from symbnmf.symbolic._algebra import B
from symbnmf.symbolic._sphere import DPHI, PHI, U

rho, s_, psi = sp.symbols("rho s psi", real=True)
k_, K_ = sp.symbols("k K", nonnegative=True, integer=True)
theta_B = sp.acos(1 / (B - 1))
#: Working symbols for theta_B = arccos(1/(B-1)) and S_B = sqrt(B (B-2)) (substituted back at the end).
T_sym, S_sym = sp.symbols("theta_B S_B", positive=True)

_t = sp.Symbol("t", real=True)


@dataclass(frozen=True)
class Lemma:
    """A named identity used by a derivation: ``statement`` prints to LaTeX; ``proof`` is a
    one-line justification; every lemma is certified numerically in ``tests/test_lemmas.py``."""

    name: str
    statement: sp.Basic
    proof: str

    def latex(self) -> str:
        return sp.latex(self.statement)


_E = sp.Function(r"\mathbb{E}")
_H = sp.Function("H")
_x1, _x2, _z, _y = sp.symbols("x_1 x_2 z y", real=True)

LEMMAS: dict[str, Lemma] = {
    "orbit": Lemma(
        "orbit",
        sp.Eq(
            sp.Symbol(r"\#\{\text{index tuples with } m \text{ distinct rest indices}\}"),
            sp.ff(B - sp.Symbol("n"), sp.Symbol("m")),
        ),
        "indices outside the n named ones are exchangeable; m distinct values among B - n",
    ),
    "conditional_sphere": Lemma(
        "conditional_sphere",
        sp.Eq(
            sp.Symbol(r"(y_c)_{c>g} \mid y_{1..g}"),
            sp.Symbol(r"-\tfrac{\sum_{a\le g} y_a}{B-g}\mathbf{1} + \rho\,S^{B-g-2}"),
        ),
        "the constraints sum y = 0 and |y|^2 = B leave a uniform sphere in the remaining coordinates",
    ),
    "sphere_moments": Lemma(
        "sphere_moments",
        sp.Eq(
            _E(sp.Symbol(r"v_{c_1}\cdots v_{c_k}")),
            sp.Symbol(r"\rho^k\,\mathbb{E}[g_{c_1}\cdots g_{c_k}]/\mathbb{E}\chi_d^k"),
        ),
        "g ~ N(0, Q) factorises as |g| times an independent uniform direction (Isserlis for E g...)",
    ),
    "sphere_to_gaussian": Lemma(
        "sphere_to_gaussian",
        sp.Eq(_E(sp.Function("f")(_y)), B ** (K_ / 2) * _E(sp.Function("f")(_z)) / _E(sp.Abs(_z) ** K_)),
        "z = |z| y/sqrt(B) with |z| independent of y (z ~ N(0,G)); f homogeneous of degree K",
    ),
    "chi_moment": Lemma(
        "chi_moment",
        sp.Eq(_E(sp.Abs(_z) ** K_), 2 ** (K_ / 2) * sp.gamma((B - 1 + K_) / 2) / sp.gamma((B - 1) / 2)),
        "|z|^2 ~ chi^2_{B-1}",
    ),
    "gaussian_pair": Lemma(
        "gaussian_pair",
        sp.Eq(sp.Symbol(r"\operatorname{Corr}(z_1, z_2)"), -1 / (B - 1)),
        "Cov z = G = I - 11^T/B: variance (B-1)/B, covariance -1/B",
    ),
    "half_moment": Lemma(
        "half_moment",
        sp.Eq(_E(_x1**k_ * _H(_x1)), 2 ** (k_ / 2) * sp.gamma((k_ + 1) / 2) / (2 * sp.sqrt(sp.pi))),
        "integrate x^k e^{-x^2/2}/sqrt(2 pi) over x > 0",
    ),
    "regression": Lemma(
        "regression",
        sp.Eq(_x2, rho * _x1 + sp.sqrt(1 - rho**2) * sp.Symbol("w")),
        "Gaussian regression of x2 on x1; w ~ N(0,1) independent of x1",
    ),
    "wedge": Lemma(
        "wedge",
        sp.Eq(
            _E(_x1 ** sp.Symbol("p") * _x2 ** sp.Symbol("q") * _H(_x1) * _H(_x2)),
            2 ** (K_ / 2)
            * sp.gamma(K_ / 2 + 1)
            / (2 * sp.pi)
            * sp.Integral(
                sp.cos(_t) ** sp.Symbol("p") * sp.cos(_t - psi) ** sp.Symbol("q"), (_t, psi - sp.pi / 2, sp.pi / 2)
            ),
        ),
        "polar coordinates of the whitened pair; x1, x2 > 0 is the wedge psi - pi/2 < t < pi/2, psi = arccos rho",
    ),
}


# ---------------------------------------------------------------------------------------------
# standard-normal building blocks (in rho, s, psi), cached per degree
# ---------------------------------------------------------------------------------------------
@functools.cache
def full_moment(k: int) -> sp.Expr:
    """E x^k for x ~ N(0, 1)."""
    return sp.S.Zero if k % 2 else sp.factorial2(k - 1)


@functools.cache
def half_moment(k: int) -> sp.Expr:
    """E[x^k H(x)] for x ~ N(0, 1) (Lemma ``half_moment``)."""
    return sp.gammasimp(LEMMAS["half_moment"].statement.rhs.subs(k_, k))


@functools.cache
def wedge(p: int, q: int) -> sp.Expr:
    """E[x1^p x2^q H(x1) H(x2)], unit variances, correlation rho = cos psi (Lemma ``wedge``).

    The angular integral is done by SymPy; the result is written with rho, s = sin psi, psi.
    """
    K = p + q
    integrand = sp.expand(sp.cos(_t) ** p * (rho * sp.cos(_t) + s_ * sp.sin(_t)) ** q)
    anti = sp.integrate(integrand, _t)
    val = anti.subs(_t, sp.pi / 2) - anti.subs(_t, psi - sp.pi / 2)
    val = sp.expand(sp.expand_trig(sp.expand(val)))
    val = val.subs({sp.sin(psi): s_, sp.cos(psi): rho})
    radial = 2 ** sp.Rational(K, 2) * sp.gamma(sp.Rational(K, 2) + 1) / (2 * sp.pi)
    return sp.expand(radial * val)


@functools.cache
def standard_pair_moment(p: int, e1: int, q: int, e2: int) -> sp.Expr:
    """E[x1^p H(x1)^e1 x2^q H(x2)^e2] for a standard Gaussian pair with correlation rho."""
    if e1 and e2:
        return wedge(p, q)
    if e2 and not e1:
        return standard_pair_moment(q, e2, p, e1)
    # at most x1 carries H: regress x2 on x1 (Lemma ``regression``)
    out = sp.S.Zero
    for j in range(q + 1):
        one = half_moment(p + q - j) if e1 else full_moment(p + q - j)
        out += sp.binomial(q, j) * rho ** (q - j) * s_**j * full_moment(j) * one
    return sp.expand(out)


def _chi(K: int) -> sp.Expr:
    """E|z|^K, z ~ N(0, G) (Lemma ``chi_moment``); a polynomial in B for even K."""
    if K % 2 == 0:
        return sp.expand(sp.expand_func(2 ** sp.Rational(K, 2) * sp.rf((B - 1) / 2, K // 2)))
    return LEMMAS["chi_moment"].statement.rhs.subs(K_, K)


@functools.cache
def sphere_monomial(p: int, e1: int, q: int, e2: int) -> sp.Expr:
    """E[y1^p H(y1)^e1 y2^q H(y2)^e2] on the BN sphere, exact in B.

    Lemmas ``sphere_to_gaussian`` + ``chi_moment`` + ``gaussian_pair``; then the standard pair
    moment with rho = -1/(B-1), s = sqrt(B(B-2))/(B-1), psi = pi - theta_B.
    """
    K = p + q
    var = (B - 1) / B
    std = standard_pair_moment(p, e1, q, e2)
    std = std.subs({rho: -1 / (B - 1), s_: S_sym / (B - 1), psi: sp.pi - T_sym})
    return sp.expand(B ** sp.Rational(K, 2) * var ** sp.Rational(K, 2) * std / _chi(K))


@functools.cache
def sphere_single(p: int, e: int) -> sp.Expr:
    """E[y1^p H(y1)^e] on the BN sphere (one coordinate)."""
    var = (B - 1) / B
    std = half_moment(p) if e else full_moment(p)
    return sp.expand(B ** sp.Rational(p, 2) * var ** sp.Rational(p, 2) * std / _chi(p))


def _half_poly_of(mono: sp.Expr, hp: HalfPolynomial, dhp: HalfPolynomial) -> HalfPolynomial:
    """The HalfPolynomial of a monomial PHI^a DPHI^b U^c."""
    dom = hp.p.domain
    out = HalfPolynomial(sp.Poly(1, x, domain=dom), sp.Poly(0, x, domain=dom))
    powers = sp.Poly(mono, PHI, DPHI, U).monoms()
    ((a, b, c),) = powers
    coeff = sp.Poly(mono, PHI, DPHI, U).coeffs()[0]
    for _ in range(a):
        out = out * hp
    for _ in range(b):
        out = out * dhp
    xc = HalfPolynomial(sp.Poly(coeff * x**c, x, domain=dom), sp.Poly(0, x, domain=dom))
    return out * xc


def _monomials(h: HalfPolynomial) -> list[tuple[sp.Expr, int, int]]:
    """(coefficient, power, e) with h = sum coefficient x^power H^e."""
    out = []
    for (k,), c in h.p.terms():
        if c != 0:
            out.append((h.p.domain.to_sympy(c) if hasattr(h.p.domain, "to_sympy") else c, k, 0))
    for (k,), c in h.q.terms():
        if c != 0:
            out.append((h.q.domain.to_sympy(c) if hasattr(h.q.domain, "to_sympy") else c, k, 1))
    return out


def closed_form_expectation(f1: sp.Expr, f2: sp.Expr, hp: HalfPolynomial) -> sp.Expr:
    """E[f1(y1) f2(y2)] in closed form for phi = hp (f1, f2 monomials in PHI, DPHI, U)."""
    dhp = hp.derivative()
    h1 = _monomials(_half_poly_of(f1, hp, dhp))
    if f2 == 1:
        return sp.Add(*[c * sphere_single(k, e) for c, k, e in h1])
    h2 = _monomials(_half_poly_of(f2, hp, dhp))
    return sp.Add(*[c1 * c2 * sphere_monomial(k1, e1, k2, e2) for c1, k1, e1 in h1 for c2, k2, e2 in h2])


def to_explicit(expr: sp.Expr) -> sp.Expr:
    """Replace the working symbols theta_B, S_B by arccos(1/(B-1)) and sqrt(B(B-2))."""
    return expr.subs({T_sym: theta_B, S_sym: sp.sqrt(B * (B - 2))})


# ---------------------------------------------------------------------------------------------
# the intermediate results, for the derivation documents
# ---------------------------------------------------------------------------------------------
def monomial_expansion(f1: sp.Expr, f2: sp.Expr, hp: HalfPolynomial) -> list[tuple[sp.Expr, tuple]]:
    """E[f1(y1) f2(y2)] = sum coeff * E[y1^k1 H(y1)^e1 y2^k2 H(y2)^e2] (phi = p + H q expanded).

    Returns ``(coeff, (k1, e1, k2, e2))``, or ``(coeff, (k1, e1))`` when ``f2 == 1``; like terms
    are collected. This is the expansion :func:`closed_form_expectation` sums.
    """
    dhp = hp.derivative()
    h1 = _monomials(_half_poly_of(f1, hp, dhp))
    out: dict[tuple, sp.Expr] = {}
    if f2 == 1:
        for c, k, e in h1:
            out[(k, e)] = out.get((k, e), sp.S.Zero) + c
    else:
        for c1, k1, e1 in _monomials(_half_poly_of(f2, hp, dhp)):
            for c, k, e in h1:
                out[(k, e, k1, e1)] = out.get((k, e, k1, e1), sp.S.Zero) + c * c1
    return [(sp.simplify(c), key) for key, c in out.items() if sp.simplify(c) != 0]


def sphere_monomial_chain(key: tuple) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """For a sphere monomial E[y1^p H^e1 y2^q H^e2] (or E[y1^p H^e1]) with K = p + q:

    ``(factor, standard, value)`` where factor = B^{K/2} ((B-1)/B)^{K/2} / E|z|^K (Lemmas
    sphere_to_gaussian, gaussian_pair, chi_moment), ``standard`` is the moment of a standard
    Gaussian pair with correlation rho = cos psi, s = sin psi (Lemmas half_moment, regression,
    wedge) and ``value = factor * standard`` at rho = -1/(B-1), s = S_B/(B-1), psi = pi - theta_B.
    """
    if len(key) == 2:
        p, e = key
        K = p
        std = half_moment(p) if e else full_moment(p)
        value = sphere_single(p, e)
    else:
        p, e1, q, e2 = key
        K = p + q
        std = standard_pair_moment(p, e1, q, e2)
        value = sphere_monomial(p, e1, q, e2)
    factor = sp.simplify((B - 1) ** sp.Rational(K, 2) / _chi(K))
    return factor, std, value
