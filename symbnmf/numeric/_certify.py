"""Certification: every closed form in B against independent high-precision quadrature.

For an activation with closed forms (``symbnmf.derive(activation).quantities``, SymPy expressions
in B), :func:`certify` evaluates each closed form at ``dps`` digits and compares it with
:func:`symbnmf.numeric._quadrature.evaluate_quadrature`, which integrates the shared sphere-integral
definitions numerically (Thm F.5 spherical integration) and never touches a closed form. A
quantity is *certified* when

    |closed form - quadrature| <= 10^(-dps+5) * max(1, |closed form|),

and its *digits of agreement* are -log10 of that relative difference (capped at ``dps``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp

from symbnmf._conventions import QUANTITIES, check_quadrature_batch
from symbnmf._errors import NoClosedFormError, SymbnmfError
from symbnmf.numeric._quadrature import GUARD_DIGITS, evaluate_quadrature


@dataclass(frozen=True)
class CertifiedQuantity:
    """One quantity: closed form and quadrature values (mpf), digits of agreement, verdict."""

    name: str
    closed_form: Any
    quadrature: Any
    digits: float
    agrees: bool
    closed_form_seconds: float

    def as_json(self, dps: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "closed_form": mpmath.nstr(self.closed_form, dps, strip_zeros=False)
            if mpmath.isfinite(self.closed_form)
            else str(self.closed_form),
            "quadrature": mpmath.nstr(self.quadrature, dps, strip_zeros=False)
            if mpmath.isfinite(self.quadrature)
            else str(self.quadrature),
            "digits": round(self.digits, 2),
            "agrees": self.agrees,
            "closed_form_seconds": round(self.closed_form_seconds, 4),
        }


@dataclass(frozen=True)
class Certificate:
    """Result of :func:`certify` for one activation at one batch size."""

    activation: str
    B: int
    dps: int
    quantities: tuple[CertifiedQuantity, ...]
    quadrature_seconds: float
    closed_form_seconds: float
    tolerance: str = field(default="")

    @property
    def ok(self) -> bool:
        return all(q.agrees for q in self.quantities)

    @property
    def min_digits(self) -> float:
        return min(q.digits for q in self.quantities)

    def as_json(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "B": self.B,
            "dps": self.dps,
            "ok": self.ok,
            "min_digits": round(self.min_digits, 2),
            "tolerance": self.tolerance,
            "quadrature_seconds": round(self.quadrature_seconds, 3),
            "closed_form_seconds": round(self.closed_form_seconds, 3),
            "quantities": [q.as_json(self.dps) for q in self.quantities],
        }


def require_closed_form(activation: Any) -> Any:
    """The bound :class:`~symbnmf.Activation`, or :class:`NoClosedFormError` if it has no closed form."""
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    if not act.has_closed_form:
        raise NoClosedFormError(
            f"{act.label} has no closed form in symbnmf (only piecewise-polynomial activations with "
            "their kink at 0 do); use `symbnmf eval` with the quadrature method instead"
        )
    return act


def closed_forms(activation: Any) -> dict[str, sp.Expr]:
    """The closed forms of ``symbnmf.derive(activation)`` (SymPy expressions in B)."""
    act = require_closed_form(activation)
    from symbnmf.symbolic._derive import derive

    return dict(derive(act).quantities)


def _digits(a: Any, b: Any, dps: int) -> float:
    if a == b:
        return float(dps)
    if not (mpmath.isfinite(a) and mpmath.isfinite(b)):
        return 0.0
    rel = abs(a - b) / max(mpmath.mpf(1), abs(a))
    if rel == 0:
        return float(dps)
    return float(min(dps, -mpmath.log10(rel)))


def _evaluate_closed_form(expr: sp.Expr, B: int, dps: int) -> Any:
    from symbnmf.symbolic._algebra import B as Bsym

    val = sp.sympify(expr).subs(Bsym, B)
    if val is sp.zoo or val is sp.oo or val is sp.nan:
        return mp.inf
    num = sp.N(val, dps + GUARD_DIGITS)
    if not num.is_real:
        num = sp.re(num)
    return mpmath.mpf(sp.Float(num, dps + GUARD_DIGITS)._mpf_)


def certify(activation: Any, B: int, dps: int = 50, *, forms: dict[str, sp.Expr] | None = None) -> Certificate:
    """Compare every closed-form quantity of ``activation`` at batch size ``B`` with quadrature.

    Conventions: docs/theory.md (quantities of :data:`symbnmf.QUANTITIES`; closed forms from
    Thm 3.1/3.7/3.9/3.10 as derived by :func:`symbnmf.derive`). ``forms`` may pass precomputed
    closed forms (to derive once for many B). Returns a :class:`Certificate`; ``.ok`` is False if
    any quantity disagrees beyond 10^(-dps+5) relative.
    """
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    Bv = check_quadrature_batch(B)
    _check_dps(dps)
    forms = closed_forms(act) if forms is None else forms
    return certificate(act, Bv, dps, forms, certificate_quadrature(act, Bv, dps))


def _check_dps(dps: Any) -> None:
    if not isinstance(dps, int) or dps < 10:
        raise SymbnmfError(f"--dps must be an integer >= 10 to certify, got {dps!r}")


def certificate_quadrature(activation: Any, B: int, dps: int) -> tuple[dict[str, Any], float]:
    """The independent half of :func:`certify`: (quadrature values at ``dps`` digits, wall seconds).

    Needs no closed form, so ``symbnmf check`` runs it in worker processes while the closed
    forms are derived; :func:`certificate` then compares.
    """
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    Bv = check_quadrature_batch(B)
    _check_dps(dps)
    t0 = time.perf_counter()
    quad = evaluate_quadrature(act, Bv, dps)
    return quad, time.perf_counter() - t0


def certificate(
    activation: Any, B: int, dps: int, forms: dict[str, sp.Expr], quadrature: tuple[dict[str, Any], float]
) -> Certificate:
    """The comparison half of :func:`certify`: the closed ``forms`` at ``B`` against
    ``quadrature`` = :func:`certificate_quadrature` ``(activation, B, dps)``."""
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    Bv = check_quadrature_batch(B)
    _check_dps(dps)
    quad, tq = quadrature
    tol = mpmath.mpf(10) ** (-dps + 5)
    rows = []
    tcf_total = 0.0
    with mp.workdps(dps + GUARD_DIGITS):
        for name in QUANTITIES:
            if name not in forms and name == "depth_scale" and "backward.G" in forms:
                expr = 1 / sp.log(forms["backward.G"])
            elif name in forms:
                expr = forms[name]
            else:
                continue
            t1 = time.perf_counter()
            cf = _evaluate_closed_form(expr, Bv, dps)
            dt = time.perf_counter() - t1
            tcf_total += dt
            q = quad[name]
            ok = bool(mpmath.isfinite(cf) and mpmath.isfinite(q) and abs(cf - q) <= tol * max(1, abs(cf))) or cf == q
            rows.append(CertifiedQuantity(name, cf, q, _digits(cf, q, dps), ok, dt))
    return Certificate(
        act.label,
        Bv,
        dps,
        tuple(rows),
        tq,
        tcf_total,
        tolerance=f"|closed - quadrature| <= 1e-{dps - 5} * max(1, |closed|)",
    )


def digits_summary(certificates: list[Certificate]) -> dict[str, Any]:
    """Minimum digits of agreement and pass/fail over many certificates."""
    if not certificates:
        return {"ok": True, "min_digits": None}
    return {
        "ok": all(c.ok for c in certificates),
        "min_digits": round(min(c.min_digits for c in certificates), 2),
        "failures": [
            {"activation": c.activation, "B": c.B, "name": q.name, "digits": round(q.digits, 2)}
            for c in certificates
            for q in c.quantities
            if not q.agrees
        ],
        "quadrature_seconds": round(math.fsum(c.quadrature_seconds for c in certificates), 3),
    }
