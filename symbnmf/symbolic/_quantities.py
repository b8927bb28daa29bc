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
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: Where the last :func:`abstract_definitions` of this process came from: "cache" (the
#: authenticated on-disk entry) or "built" (SymPy); None before the first call.
DEFINITIONS_SOURCE: dict[str, str | None] = {"source": None}


@functools.cache
def abstract_definitions() -> dict[str, QuantityDefinition]:
    """The activation-independent definitions (phi, phi' as placeholders PHI, DPHI).

    Built once per process; across processes they are kept in the authenticated on-disk cache
    of the symbolic stage (:mod:`symbnmf.symbolic._diskcache`, keyed by the package version and
    the fingerprint of every symbolic source), read back structurally equal to what
    :func:`build_abstract_definitions` returns (``tests/symbolic/test_definitions_cache.py``).
    """
    cfile, key = _definitions_entry()
    if cfile is not None:
        cached = _read_definitions(cfile, key)
        if cached is not None:
            DEFINITIONS_SOURCE["source"] = "cache"
            return cached
    out = build_abstract_definitions()
    DEFINITIONS_SOURCE["source"] = "built"
    if cfile is not None:
        from symbnmf.symbolic._diskcache import write_entry

        write_entry(cfile, key, _KIND, json.dumps(_definitions_to_json(out)))
    return out


def build_abstract_definitions() -> dict[str, QuantityDefinition]:
    """:func:`abstract_definitions` computed in SymPy (orbit counting and conditioning, ~0.4 s)."""
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


# ---------------------------------------------------------------------------------------------
# On-disk cache of the abstract definitions
# ---------------------------------------------------------------------------------------------
_KIND = "definitions"
#: Placeholder names that are not identifiers (phi' is ``Phi'``).
_SYMBOL_NAMES = frozenset({DPHI.name})


def _definitions_entry() -> tuple[Path | None, str]:
    """(cache file, key) of the abstract definitions, or (None, key) with the cache off."""
    from symbnmf import __version__
    from symbnmf.symbolic._diskcache import cache_dir, code_fingerprint

    text = f"{_KIND}|{__version__}|{code_fingerprint()}|{sp.__version__}"
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    cdir = cache_dir()
    return (cdir / f"definitions-{key}.json" if cdir is not None else None), key


def _definitions_to_json(defs: dict[str, QuantityDefinition]) -> dict[str, Any]:
    from symbnmf.symbolic._serialize import write_exact

    def matrix(D: SMatrix | None) -> dict[str, Any] | None:
        if D is None:
            return None
        return {
            "n": D.n,
            "N": [[write_exact(D.N[i, j]) for j in range(D.n)] for i in range(D.n)],
            "NR": [write_exact(v) for v in D.NR],
            "RN": [write_exact(v) for v in D.RN],
            "RRd": write_exact(D.RRd),
            "RRo": write_exact(D.RRo),
        }

    return {
        "quantities": [
            {
                "name": qd.name,
                "formula": write_exact(qd.formula),
                "integrals": [
                    [write_exact(ph), [[write_exact(t) for t in term] for term in si.terms]]
                    for ph, si in qd.integrals.items()
                ],
                "definition_latex": qd.definition_latex,
                "theorem": qd.theorem,
                "test_direction": matrix(qd.test_direction),
            }
            for qd in defs.values()
        ]
    }


def _definitions_from_json(doc: Any) -> dict[str, QuantityDefinition]:
    """Rebuild the definitions from :func:`_definitions_to_json`; nothing in ``doc`` is evaluated
    (:func:`~symbnmf.symbolic._serialize.read_srepr`); anything unexpected raises."""
    from symbnmf.symbolic._serialize import read_srepr

    memo: dict[str, Any] = {}

    def expr(text: Any) -> sp.Expr:
        if not isinstance(text, str):
            raise ValueError("expected srepr text")
        if text not in memo:
            e = read_srepr(text, exact=True, symbol_names=_SYMBOL_NAMES)
            if not isinstance(e, sp.Expr):
                raise ValueError("not an expression")
            memo[text] = e
        return memo[text]

    def matrix(m: Any) -> SMatrix | None:
        if m is None:
            return None
        n = m["n"]
        if not isinstance(n, int) or not 0 <= n <= 8 or len(m["N"]) != n or any(len(r) != n for r in m["N"]):
            raise ValueError("bad test direction")
        if len(m["NR"]) != n or len(m["RN"]) != n:
            raise ValueError("bad test direction")
        N = sp.ImmutableMatrix(n, n, [expr(v) for row in m["N"] for v in row])
        return SMatrix(
            n, N, tuple(expr(v) for v in m["NR"]), tuple(expr(v) for v in m["RN"]), expr(m["RRd"]), expr(m["RRo"])
        )

    integrals: dict[str, SphereIntegral] = {}  # equal integrals are one object, as when built
    out: dict[str, QuantityDefinition] = {}
    for q in doc["quantities"]:
        ints: dict[sp.Symbol, SphereIntegral] = {}
        for ph, terms in q["integrals"]:
            sym = expr(ph)
            if not isinstance(sym, sp.Symbol) or any(len(t) != 3 for t in terms):
                raise ValueError("bad sphere integral")
            tkey = json.dumps(terms)
            if tkey not in integrals:
                integrals[tkey] = SphereIntegral(tuple(tuple(expr(v) for v in t) for t in terms))
            ints[sym] = integrals[tkey]
        name, latex, theorem = q["name"], q["definition_latex"], q["theorem"]
        if not all(isinstance(v, str) for v in (name, latex, theorem)):
            raise ValueError("bad quantity text")
        out[name] = QuantityDefinition(name, expr(q["formula"]), ints, latex, theorem, matrix(q["test_direction"]))
    return out


def _read_definitions(cfile: Path, key: str) -> dict[str, QuantityDefinition] | None:
    """The cached definitions if the entry is authentic and well formed, else None."""
    from symbnmf._conventions import QUANTITIES
    from symbnmf.symbolic._diskcache import read_entry

    body = read_entry(cfile, key, _KIND)
    if body is None:
        return None
    try:
        out = _definitions_from_json(json.loads(body))
    except Exception:  # a malformed entry is never trusted, only rebuilt
        return None
    if list(out) != [q for q in QUANTITIES if q != "depth_scale"]:
        return None
    return out
