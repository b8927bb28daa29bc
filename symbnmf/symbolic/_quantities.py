"""Stages 3-4 of the pipeline: the mean-field quantities as exact-in-B sphere integrals.

Each quantity of :data:`symbnmf.QUANTITIES` (but ``depth_scale``) is a
:class:`QuantityDefinition`: a SymPy ``formula`` in B and placeholder symbols ``I_S``, ``I_d``,
``I_o``, with ``integrals`` mapping each placeholder to a
:class:`~symbnmf.symbolic._sphere.SphereIntegral`. The definitions are activation independent (phi and
phi' are placeholders); :func:`definitions` substitutes an activation.

* Fixed point (Thm 3.1, App. F): I_d = E phi(y1)^2, I_o = E phi(y1) phi(y2); mu* = I_d - I_o.
* Forward (Thm 3.6/3.7): with h ~ N(0, G + t Delta) and the Gaussian score,
  d/dt V = 1/2 E[phi phi^T (h^T Delta h - tr Delta)]; h = r y / sqrt(B) with r^2 ~ chi^2_{B-1}
  independent of y gives E r^2 = B-1, so
  lambda_X = <Delta, dV[Delta]> / (mu* <Delta, Delta>)
           = [ (B-1)/B E(phi^T Delta phi)(y^T Delta y) - tr(Delta) E phi^T Delta phi ] / (2 mu* |Delta|^2).
* Backward (Thm 3.9/3.10): J = (sqrt(B)/|Gh|) D P, D = diag phi'(y), P = G - y y^T/B,
  |Gh|^2 = mu* chi^2_{B-1} independent of y under h ~ N(0, Sigma*) so E[B/|Gh|^2] = B/((B-3) mu*):
  lambda_X = B/((B-3) mu*) E tr(Delta P D Delta D P) / |Delta|^2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from symbnmf.symbolic._algebra import B, SMatrix, piece_direction
from symbnmf.symbolic._sphere import DPHI, PHI, IndexTerm, SphereIntegral, U, sphere_integral

I_S, I_d, I_o = sp.symbols("I_S I_d I_o")


@dataclass(frozen=True)
class QuantityDefinition:
    """A quantity as ``formula`` (in B and placeholders) plus the sphere integrals it needs."""

    name: str
    formula: sp.Expr
    integrals: dict
    definition_latex: str
    theorem: str
    test_direction: SMatrix | None = None


def _diag() -> SphereIntegral:
    # E phi(y_1)^2: one named coordinate, no summation (the e1 e1^T entry).
    E11 = SMatrix.outer([1], [1])
    return sphere_integral([IndexTerm(sp.S.One, ((E11, "i", "j"),), ((PHI, "i"), (PHI, "j")))], 1)


def _offdiag() -> SphereIntegral:
    # E phi(y_1) phi(y_2): two named coordinates, no summation (the e1 e2^T entry).
    E12 = SMatrix.outer([1, 0], [0, 1])
    return sphere_integral([IndexTerm(sp.S.One, ((E12, "i", "j"),), ((PHI, "i"), (PHI, "j")))], 2)


@functools.cache
def _forward_integral(piece: str) -> tuple[SphereIntegral, sp.Expr]:
    D = piece_direction(piece)
    n = D.n
    quartic = IndexTerm((B - 1) / B, ((D, "i", "j"), (D, "k", "l")), ((PHI, "i"), (PHI, "j"), (U, "k"), (U, "l")))
    trD = D.trace()
    terms = [quartic]
    if trD != 0:
        terms.append(IndexTerm(-trD, ((D, "i", "j"),), ((PHI, "i"), (PHI, "j"))))
    return sphere_integral(terms, n), D.inner(D)


@functools.cache
def _backward_integral(piece: str) -> tuple[SphereIntegral, sp.Expr]:
    D = piece_direction(piece)
    n = D.n
    G = SMatrix.centering(n)
    # tr(D P Phi' D Phi' P) = sum_{ijkl} D_ij P_jk Phi'_k D_kl Phi'_l P_li, P_ab = G_ab - u_a u_b / B
    terms = []
    for pjk in ("G", "uu"):
        for pli in ("G", "uu"):
            coeff = sp.S.One
            tensors = [(D, "i", "j"), (D, "k", "l")]
            coords = [(DPHI, "k"), (DPHI, "l")]
            if pjk == "G":
                tensors.append((G, "j", "k"))
            else:
                coeff *= -1 / B
                coords += [(U, "j"), (U, "k")]
            if pli == "G":
                tensors.append((G, "l", "i"))
            else:
                coeff *= -1 / B
                coords += [(U, "l"), (U, "i")]
            terms.append(IndexTerm(coeff, tuple(tensors), tuple(coords)))
    return sphere_integral(terms, n), D.inner(D)


@functools.cache
def abstract_definitions() -> dict[str, QuantityDefinition]:
    """The activation-independent definitions (phi, phi' as placeholders PHI, DPHI)."""
    diag = _diag()
    off = _offdiag()
    mu = I_d - I_o
    out: dict[str, QuantityDefinition] = {
        "fixed_point.diag": QuantityDefinition(
            "fixed_point.diag", I_d, {I_d: diag}, r"\Sigma^*_{ii} = \mathbb{E}\,\phi(y_1)^2", "Thm 3.1, App. F"
        ),
        "fixed_point.offdiag": QuantityDefinition(
            "fixed_point.offdiag", I_o, {I_o: off}, r"\Sigma^*_{ij} = \mathbb{E}\,\phi(y_1)\phi(y_2)", "Thm 3.1, App. F"
        ),
    }
    for piece in "GLM":
        S, norm = _forward_integral(piece)
        formula = I_S / (2 * mu * norm)
        out[f"forward.{piece}"] = QuantityDefinition(
            f"forward.{piece}",
            formula,
            {I_S: S, I_d: diag, I_o: off},
            r"\lambda^{\uparrow}_{%s} = \frac{\langle \Delta, \mathrm{d}V_{G}[\Delta]\rangle}{\mu^*\,\|\Delta\|^2}"
            % piece,
            "Thm 3.6, 3.7",
            piece_direction(piece),
        )
    for piece in "GLM":
        S, norm = _backward_integral(piece)
        formula = B * I_S / ((B - 3) * mu * norm)
        out[f"backward.{piece}"] = QuantityDefinition(
            f"backward.{piece}",
            formula,
            {I_S: S, I_d: diag, I_o: off},
            r"\lambda^{\downarrow}_{%s} = \frac{\langle \Delta, \mathbb{E}[J^\top \Delta J]\rangle}{\|\Delta\|^2}"
            % piece,
            "Thm 3.9, 3.10",
            piece_direction(piece),
        )
    return out


def definitions(activation) -> dict[str, QuantityDefinition]:
    """Quantity definitions with ``activation``'s phi and phi' substituted.

    Returns for every name in :data:`symbnmf.QUANTITIES` except ``depth_scale`` a
    :class:`QuantityDefinition` whose ``integrals`` are :class:`ConcreteSphereIntegral` objects
    (``terms`` = ``(coeff(B), f1(y1), f2(y2))``). See docs/ARCHITECTURE.md.
    """
    from symbnmf._activations import get_activation, x

    act = get_activation(activation)
    phi, dphi = act.bound_expr, act.bound_derivative
    out = {}
    for name, qd in abstract_definitions().items():
        ints = {k: ConcreteSphereIntegral(v.concrete(phi, dphi, x), v) for k, v in qd.integrals.items()}
        out[name] = QuantityDefinition(qd.name, qd.formula, ints, qd.definition_latex, qd.theorem, qd.test_direction)
    return out


@dataclass(frozen=True)
class ConcreteSphereIntegral:
    """sum_c coeff_c E[f1_c(y1) f2_c(y2)] with the activation substituted (f2 may be 1)."""

    terms: tuple
    abstract: SphereIntegral
