"""Stage 2 of the pipeline: expectations over the BN sphere, exact in B.

Notation: y is uniform on the sphere of radius sqrt(B) in 1-perp of R^B (the law of BN(h) for a
BSB1 input, Thm 3.1 / App. F). Every mean-field quantity is an *index sum*

    sum_{i,j,k,l} (batch-symmetric tensors)_{ijkl} * E[ f_i(y_i) f_j(y_j) ... ]

whose coordinate functions are monomials in the placeholders ``PHI`` (phi(u)), ``DPHI``
(phi'(u)) and ``U`` (u). This module reduces such sums, exactly in B, to a *two-coordinate
form* sum_c coeff_c(B) E[f1_c(y1) f2_c(y2)] (a :class:`SphereIntegral`) by

1. **orbit counting** (:func:`reduce_index_sum`): indices are assigned to the named coordinates
   of the test direction or to the exchangeable rest; a pattern with m distinct rest indices
   occurs (B-n)(B-n-1)...(B-n-m+1) times (Lemma ``orbit``);
2. **conditioning on two coordinates** (:func:`two_coordinate_form`): given (y1, y2), the other
   B-2 coordinates are ``-(y1+y2)/(B-2) + v`` with v uniform on a sphere of radius rho in a
   (B-3)-dimensional subspace, rho^2 = B - y1^2 - y2^2 - (y1+y2)^2/(B-2) (Lemma
   ``conditional_sphere``), whose moments follow from Isserlis' theorem divided by chi moments
   (Lemma ``sphere_moments``).

The two-coordinate form is the *shared integral definition*: the closed-form path
(:mod:`symbnmf.symbolic._gaussian`) and the numeric quadrature paths evaluate the same E[f1 f2].
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from symbnmf.symbolic._algebra import B, Label

#: Placeholders of the coordinate functions: phi(u), phi'(u), u.
PHI, DPHI, U = sp.symbols("Phi Phi' u")
#: Two distinct coordinates of y (symbols used in the two-coordinate form).
y1, y2 = sp.symbols("y_1 y_2", real=True)


# ---------------------------------------------------------------------------------------------
# Index sums
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexTerm:
    """coeff * prod_f tensor_f[idx_f] * prod_c g_c(y_{idx_c}), summed over all indices in [B]."""

    coeff: sp.Expr
    tensors: tuple  # of (SMatrix, index_a, index_b)
    coords: tuple  # of (monomial in PHI, DPHI, U, index)

    @property
    def indices(self) -> tuple[str, ...]:
        seen: list[str] = []
        for _, a, b in self.tensors:
            for i in (a, b):
                if i not in seen:
                    seen.append(i)
        for _, i in self.coords:
            if i not in seen:
                seen.append(i)
        return tuple(seen)


def _set_partitions(items: Sequence[str]) -> Iterable[list[list[str]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1 :]
        yield [[first]] + part


def _falling(x: sp.Expr, m: int) -> sp.Expr:
    out = sp.S.One
    for r in range(m):
        out *= x - r
    return out


Key = tuple  # canonical sorted tuple of per-coordinate monomials


def _canonical(monomials: Iterable[sp.Expr]) -> Key:
    ms = [sp.expand(m) for m in monomials if m != 1]
    return tuple(sorted(ms, key=sp.default_sort_key))


def reduce_index_sum(terms: Sequence[IndexTerm], n: int) -> dict[Key, sp.Expr]:
    """Sum over all index assignments, exactly in B (Lemma ``orbit``).

    Each index is either one of the ``n`` named coordinates or lies in the exchangeable rest;
    indices in the rest are grouped by equality (set partitions); a pattern with m distinct rest
    blocks has multiplicity (B-n)_m (falling factorial). Since y is exchangeable, the
    expectation only depends on the multiset of per-coordinate monomials, the returned key.
    """
    acc: dict[Key, sp.Expr] = defaultdict(lambda: sp.S.Zero)
    for term in terms:
        idx = term.indices
        for named_choice in itertools.product(list(range(n)) + [None], repeat=len(idx)):
            rest = [i for i, c in zip(idx, named_choice) if c is None]
            base: dict[Any, Label] = {i: c for i, c in zip(idx, named_choice) if c is not None}
            for part in _set_partitions(rest):
                labels: dict[Any, Label] = dict(base)
                for b, block in enumerate(part):
                    for i in block:
                        labels[i] = ("r", b)
                value = term.coeff
                for T, a, b in term.tensors:
                    e = T.entry(labels[a], labels[b])
                    if e == 0:
                        value = sp.S.Zero
                        break
                    value = value * e
                if value == 0:
                    continue
                per_coord: dict = defaultdict(lambda: sp.S.One)
                for mono, i in term.coords:
                    per_coord[labels[i]] *= mono
                key = _canonical(per_coord.values())
                acc[key] += value * _falling(B - n, len(part))
    out = {}
    for k, v in acc.items():
        v = sp.factor(sp.cancel(sp.together(v)))
        if v != 0:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Conditional moments on the sphere
# ---------------------------------------------------------------------------------------------
@functools.cache
def isserlis(counts: tuple[int, ...], diag: sp.Expr, off: sp.Expr) -> sp.Expr:
    """E[prod_c g_c^{counts_c}] for a centred Gaussian with Var g_c = diag, Cov(g_c, g_d) = off
    (Isserlis/Wick: sum over perfect matchings)."""
    counts = tuple(c for c in counts if c)
    total = sum(counts)
    if total == 0:
        return sp.S.One
    if total % 2:
        return sp.S.Zero
    # pair the first copy of the first variable with every other copy
    first = 0
    rest = list(counts)
    rest[first] -= 1
    out = sp.S.Zero
    for c, k in enumerate(rest):
        if k == 0:
            continue
        mult = k
        cov = diag if c == first else off
        nxt = list(rest)
        nxt[c] -= 1
        out += mult * cov * isserlis(tuple(nxt), diag, off)
    return sp.expand(out)


def _chi_moment(d: sp.Expr, k: int) -> sp.Expr:
    """E[chi_d^k] for even k: d (d+2) ... (d+k-2)."""
    out = sp.S.One
    for j in range(0, k, 2):
        out *= d + j
    return out


@functools.cache
def conditional_moment(powers: tuple[int, ...], given: int = 2) -> sp.Expr:
    """E[prod_c y_c^{p_c} | y_1, ..., y_given] for other coordinates c (Lemma ``conditional_sphere``).

    Given ``given`` = g coordinates (g in {0, 1, 2}; symbols y1, y2) with sum s and sum of
    squares q, the other B-g coordinates are m + v_c with m = -s/(B-g) and v uniform on the
    sphere of radius rho, rho^2 = B - q - s^2/(B-g), in the (B-g-1)-dimensional subspace 1-perp
    of R^{B-g}. Moments of v: Isserlis with the projection Q = I - 11^T/(B-g), times
    rho^k / E[chi_{B-g-1}^k] (Lemma ``sphere_moments``).
    """
    ys = (y1, y2)[:given]
    s = sum(ys, sp.S.Zero)
    q = sum((y**2 for y in ys), sp.S.Zero)
    n_rest = B - given
    m = -s / n_rest
    rho2 = B - q - s**2 / n_rest
    d = n_rest - 1
    qd, qo = 1 - 1 / n_rest, -1 / n_rest
    out = sp.S.Zero
    for ks in itertools.product(*[range(p + 1) for p in powers]):
        k = sum(ks)
        if k % 2:
            continue
        coef = sp.S.One
        for p, kk in zip(powers, ks):
            coef *= sp.binomial(p, kk) * m ** (p - kk)
        vm = isserlis(tuple(ks), qd, qo) * rho2 ** (k // 2) / _chi_moment(d, k)
        out += coef * vm
    return sp.expand(out)


@dataclass(frozen=True)
class SphereIntegral:
    """sum_c coeff_c * E[f1_c(y1) f2_c(y2)], y1, y2 distinct coordinates of y (uniform on the
    radius-sqrt(B) sphere in 1-perp).

    ``terms`` hold ``(coeff, f1, f2)``: ``coeff`` an expression in B, ``f1``/``f2`` monomials in
    the placeholders PHI, DPHI, U (use :meth:`concrete` to substitute an activation).
    """

    terms: tuple

    def concrete(self, phi: sp.Expr, dphi: sp.Expr, x: sp.Symbol) -> tuple:
        """Terms ``(coeff, f1(y1), f2(y2))`` with phi, phi' substituted (x is phi's variable)."""
        out = []
        for c, f1, f2 in self.terms:
            out.append((c, _substitute(f1, phi, dphi, x, y1), _substitute(f2, phi, dphi, x, y2)))
        return tuple(out)

    def as_expr(self) -> sp.Expr:
        """Printable sum with E[.] as an unevaluated function."""
        E = sp.Function("E")
        return (
            sp.Add(
                *[
                    c * E(f1.subs(U, y1) * f2.subs(U, y2)) if f2 != 1 else c * E(f1.subs(U, y1))
                    for c, f1, f2 in self.terms
                ],
                evaluate=False,
            )
            if self.terms
            else sp.S.Zero
        )


def _substitute(mono: sp.Expr, phi: sp.Expr, dphi: sp.Expr, x: sp.Symbol, y: sp.Symbol) -> sp.Expr:
    return mono.subs({PHI: phi.subs(x, y), DPHI: dphi.subs(x, y), U: y}, simultaneous=True)


def _is_nonpolynomial(mono: sp.Expr) -> bool:
    return mono.has(PHI) or mono.has(DPHI)


def _u_degree(mono: sp.Expr) -> int:
    return sp.degree(mono, U) if mono.has(U) else 0


@functools.cache
def two_coordinate_form(key: Key) -> tuple:
    """E[prod_c g_c(y_c)] for the distinct coordinates of ``key`` as terms (coeff, f1, f2).

    At most two coordinates may carry phi or phi'; they become y1 (and y2) and the polynomial
    coordinates are integrated out with :func:`conditional_moment` (a polynomial-only key
    reduces to a constant, one non-polynomial coordinate to a one-coordinate term f2 = 1).
    """
    monos = list(key)
    nonpoly = [m for m in monos if _is_nonpolynomial(m)]
    poly = sorted((m for m in monos if not _is_nonpolynomial(m)), key=_u_degree, reverse=True)
    if len(nonpoly) > 2:
        raise NotImplementedError("more than two coordinates carry phi: outside the two-coordinate reduction")
    cond = nonpoly
    powers = tuple(_u_degree(m) for m in poly)
    cm = conditional_moment(powers, len(cond)) if poly else sp.S.One
    if len(cond) == 0:
        return ((sp.cancel(cm), sp.S.One, sp.S.One),)
    if len(cond) == 1:
        poly_y = sp.Poly(cm, y1)
        return tuple((sp.cancel(c), sp.expand(cond[0] * U**i), sp.S.One) for (i,), c in poly_y.terms())
    poly_y = sp.Poly(cm, y1, y2)
    return tuple((sp.cancel(c), sp.expand(cond[0] * U**i), sp.expand(cond[1] * U**j)) for (i, j), c in poly_y.terms())


def sphere_integral(index_terms: Sequence[IndexTerm], n: int) -> SphereIntegral:
    """Reduce an index sum to its two-coordinate form (orbit counting + conditioning)."""
    reduced = reduce_index_sum(index_terms, n)
    acc: dict = defaultdict(lambda: sp.S.Zero)
    for key, coeff in reduced.items():
        for c, f1, f2 in two_coordinate_form(key):
            # E[f1(y1) f2(y2)] = E[f2(y1) f1(y2)] by exchangeability: store one order
            if f2 != 1 and sp.default_sort_key(f2) < sp.default_sort_key(f1):
                f1, f2 = f2, f1
            if f1 == 1 and f2 != 1:
                f1, f2 = f2, f1
            acc[(f1, f2)] += coeff * c
    terms = []
    for (f1, f2), c in acc.items():
        c = sp.factor(sp.cancel(c))
        if c != 0:
            terms.append((c, f1, f2))
    terms.sort(key=lambda t: (sp.default_sort_key(t[1]), sp.default_sort_key(t[2])))
    return SphereIntegral(tuple(terms))
