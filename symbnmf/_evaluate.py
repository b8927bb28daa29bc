"""The evaluation front door: numbers for every quantity at integer batch sizes.

``evaluate(activation, Bs, method=...)`` returns one record per B in the ``eval --json`` schema:

    {"B": int, "method": str,
     "fixed_point": {"diag": float, "offdiag": float},
     "forward": {"G": float, "L": float, "M": float},
     "backward": {"G": float, "L": float, "M": float},
     "depth_scale": float,
     "mp": {... the same with N-digit strings ...}   # only when dps is given
     ...}                                             # plus back-end metadata (e.g. "tolerance")

Back ends (:data:`METHODS`) are functions ``(activation, B, dps) -> dict`` mapping each name of
:data:`symbnmf.QUANTITIES` to an mpmath number (or float), optionally with a ``"_meta"`` dict
merged into the record.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mpmath as mp
import sympy as sp

from symbnmf._activations import Activation, get_activation
from symbnmf._conventions import CONVENTIONS, EPS_CONVENTIONS, QUANTITIES, check_batch_size
from symbnmf._errors import NoClosedFormError, SymbnmfError
from symbnmf.symbolic._algebra import B as Bsym

#: Digits used internally when only doubles are asked for (then rounded to float64).
DOUBLE_DPS = 30


def closed_form_backend(act: Activation, B: int, dps: int | None) -> dict[str, Any]:
    """Evaluate the derived closed forms (:func:`symbnmf.derive`) at B with ``dps`` digits."""
    from symbnmf.symbolic._derive import derive

    act.require_bound()
    d = derive(act)
    digits = max(dps or 0, DOUBLE_DPS)
    subs = {Bsym: sp.Integer(B)}
    subs.update(act.bindings)
    out: dict[str, Any] = {}
    with mp.workdps(digits + 5):
        for name in QUANTITIES:
            val = sp.N(d.quantities[name].subs(subs), digits + 5)
            if not val.is_real:
                raise SymbnmfError(f"{name} is not real at B={B} ({val}); the closed form is outside its domain")
            out[name] = mp.mpf(sp.Float(val, digits + 5)._mpf_)
    out["_meta"] = {
        "tolerance": {"relative": 0.0, "note": f"exact closed form evaluated with {digits + 5} significant digits"}
    }
    return out


def _lazy(module: str, attr: str) -> Callable[..., dict]:
    def call(act: Activation, B: int, dps: int | None) -> dict:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # pragma: no cover - a back end missing from the install
            raise SymbnmfError(f"evaluation method back end {module}.{attr} is unavailable: {exc}") from None
        return fn(act, B, dps)

    return call


#: method name -> back end
METHODS: dict[str, Callable[[Activation, int, int | None], dict]] = {
    "closed-form": closed_form_backend,
    "quadrature": _lazy("symbnmf.numeric._quadrature", "quadrature_backend"),
    "fast": _lazy("symbnmf.fast._fastquad", "evaluate_fast"),
}


def _group(values: dict[str, Any], conv: Callable[[Any], Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for name in QUANTITIES:
        v = conv(values[name])
        if "." in name:
            head, tail = name.split(".")
            rec.setdefault(head, {})[tail] = v
        else:
            rec[name] = v
    return rec


def _to_float(v: Any) -> float:
    if isinstance(v, mp.mpc) or (hasattr(v, "imag") and not isinstance(v, float) and v.imag != 0):
        raise SymbnmfError(
            f"a quantity evaluated to a complex number ({str(v)[:60]}): phi is not real on all of R "
            "(e.g. sqrt(x) or log(x) for x < 0); use an activation defined on the whole real line"
        )
    f = float(v)
    if not math.isfinite(f):
        raise SymbnmfError(
            f"a quantity evaluated to {f}: phi is not real or not finite on all of R (e.g. sqrt(x) or log(x) "
            "for x <= 0), or the map is degenerate; use an activation defined on the whole real line"
        )
    return f


def _to_str(dps: int) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if isinstance(v, float):
            return repr(v)
        with mp.workdps(dps + 10):
            return mp.nstr(v if isinstance(v, mp.mpf) else mp.mpf(v), dps, strip_zeros=False)

    return conv


def _derivable(act: Activation) -> bool:
    """Whether :func:`symbnmf.derive` succeeds (piecewise polynomials whose closed form needs
    coefficients outside its field, e.g. ``relu(x) + 1``, go to quadrature)."""
    from symbnmf.symbolic._derive import derive

    try:
        derive(act)
    except NoClosedFormError:
        return False
    return True


def resolve_method(act: Activation, method: str) -> str:
    """``auto`` -> closed-form when phi has one, else quadrature."""
    if method == "auto":
        return "closed-form" if act.has_closed_form and _derivable(act) else "quadrature"
    if method not in METHODS:
        raise SymbnmfError(f"unknown method {method!r}; use one of auto, {', '.join(METHODS)}")
    if method == "closed-form" and not act.has_closed_form:
        raise NoClosedFormError(
            f"activation {act.label!r} has no closed form; use method='quadrature' (`symbnmf eval` picks it "
            "automatically) or method='fast'"
        )
    return method


def evaluate(
    activation: str | Activation,
    Bs: int | Iterable[int],
    *,
    method: str = "auto",
    dps: int | None = None,
    eps: float | None = None,
    weight_var: float | None = None,
    gamma: float | None = None,
    beta: float | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Every mean-field quantity of ``activation`` at each batch size in ``Bs``.

    BN with ``eps`` > 0, weight variance ``weight_var`` = sigma_w^2 and x = phi(``gamma`` BN(h) +
    ``beta``) (issue 12; any of them given selects the eps theory: the closed forms of
    :func:`symbnmf.derive_eps` for identity/ReLU/leaky ReLU with eps > 0, beta = 0, gamma > 0 when
    ``method`` is auto or closed-form, else :func:`symbnmf.evaluate_eps`, mpmath): records gain ``"phase"`` ("bsb1" | "collapsed"), ``"mu"`` and the collapse
    boundary; ``fixed_point`` holds the pre-activation covariance entries (sigma_b^2 = 0).

    Conventions of ``docs/theory.md``; see the module docstring for the record schema.
    ``method``: ``auto`` (closed form when one exists, else quadrature), ``closed-form``,
    ``quadrature`` (mpmath, certified), ``fast`` (JAX fixed Gauss quadrature). ``dps`` adds an
    ``"mp"`` block with ``dps``-digit strings. ``params`` bind activation parameters.
    """
    act = get_activation(activation, **params)
    act.require_bound()
    act.require_nondegenerate()
    Blist: Sequence[int] = [Bs] if isinstance(Bs, (int,)) else list(Bs)
    if not Blist:
        raise SymbnmfError("no batch size given; pass e.g. --batch-size 4 8 16")
    Blist = [check_batch_size(b) for b in Blist]
    if dps is not None and (not isinstance(dps, int) or dps < 5 or dps > 10000):
        raise SymbnmfError(f"--dps must be an integer between 5 and 10000, got {dps!r}")
    if not (eps is None and weight_var is None and gamma is None and beta is None):
        return _evaluate_eps(act, Blist, method, dps, eps, weight_var, gamma, beta)
    m = resolve_method(act, method)
    backend = METHODS[m]
    if m == "fast" and len(Blist) > 1:  # one vectorised JAX call for every B (issue 14)
        from symbnmf.fast._fastquad import prefetch_fast

        prefetch_fast(act, Blist)
    out = []
    for b in Blist:
        vals = backend(act, b, dps)
        meta = dict(vals.pop("_meta", {}) or {})
        rec: dict[str, Any] = {"B": b, "method": m}
        rec.update(_group(vals, _to_float))
        if dps is not None:
            rec["mp"] = _group(vals, _to_str(dps))
            rec["mp"]["dps"] = dps
        rec.update(meta)
        out.append(rec)
    return out


def _eps_fast_backend(act: Activation, B: int, *, dps: int | None = None, **bn: Any) -> dict[str, Any]:
    """``method="fast"`` with eps: :func:`symbnmf.fast._epsquad.evaluate_eps_fast` (float64, JAX)."""
    from symbnmf.fast._epsquad import evaluate_eps_fast
    from symbnmf.numeric._epsilon import check_bn_parameters

    if dps is not None and dps > 15:
        raise SymbnmfError(
            f"the fast path is double precision (about 15 digits), not dps={dps}; use method='quadrature' for more digits"
        )
    check_bn_parameters(bn["eps"], bn["weight_var"], bn["gamma"], bn["beta"])
    return evaluate_eps_fast(act, B, **bn)


def _evaluate_eps(act: Activation, Blist: Sequence[int], method: str, dps: int | None, eps, weight_var, gamma, beta):
    """Records of the eps > 0 theory (issue 12); ``None`` (JSON null) where a limit is undefined."""
    from symbnmf.numeric._epsilon import evaluate_eps

    if method not in ("auto", "quadrature", "closed-form", "fast"):
        raise SymbnmfError(
            f"method {method!r} is not available with --eps/--weight-var/--gamma/--beta yet; use --method quadrature"
        )
    from symbnmf.numeric._epsilon import check_bn_parameters

    e, s, g, b = check_bn_parameters(
        0 if eps is None else eps,
        1 if weight_var is None else weight_var,
        1 if gamma is None else gamma,
        0 if beta is None else beta,
    )
    if e == 0:
        return _evaluate_eps_zero(act, Blist, method, dps, s, g, b)
    backend: Callable[..., dict[str, Any]] = evaluate_eps
    used = "quadrature"
    if method == "fast":
        backend, used = _eps_fast_backend, "fast"
    if method in ("auto", "closed-form"):
        # eps > 0, identity/relu/leaky_relu at beta = 0, gamma > 0: closed forms (symbnmf.derive_eps)
        from symbnmf.numeric._epsforms import closed_form_eps
        from symbnmf.symbolic._epsforms import in_family

        def _num(v: Any, default: float) -> float:
            try:
                return float(default if v is None else v)
            except (TypeError, ValueError):
                return math.nan  # check_bn_parameters names the bad value

        fits = in_family(act) and _num(eps, 0) > 0 and _num(beta, 0) == 0 and _num(gamma, 1) > 0
        if fits:
            backend, used = closed_form_eps, "closed-form"
        elif method == "closed-form":
            raise NoClosedFormError(
                f"no eps > 0 closed form for {act.label!r} here (only identity, relu, leaky_relu with eps > 0, "
                "beta = 0, gamma > 0); use --method quadrature"
            )
    out = []
    for b in Blist:
        vals = backend(
            act,
            b,
            eps=0 if eps is None else eps,
            weight_var=1 if weight_var is None else weight_var,
            gamma=1 if gamma is None else gamma,
            beta=0 if beta is None else beta,
            dps=dps,
        )
        meta = dict(vals.pop("_meta", {}) or {})
        rec: dict[str, Any] = {"B": b, "method": used}
        rec.update(_group(vals, lambda v: None if v is None else _to_float(v)))
        if dps is not None:
            conv = _to_str(dps)
            rec["mp"] = _group(vals, lambda v, conv=conv: None if v is None else conv(v))  # type: ignore[misc]
            rec["mp"]["dps"] = dps
        rec.update(meta)
        out.append(rec)
    return out


def _evaluate_eps_zero(act: Activation, Blist: Sequence[int], method: str, dps: int | None, s, g, b):
    """Records of the eps theory at eps = 0 (sigma_w^2 = ``s``, gamma = ``g``, beta = ``b`` given).

    BN without eps is scale invariant, so this is the eps = 0 theory of the composite
    phi(gamma x + beta) (closed form when one is derived, else its sphere quadrature: seconds, where
    the eps machinery would tabulate every sphere integral over tau in [0, 1] for nothing), with the
    pre-activation entries ``fixed_point`` scaled by sigma_w^2 and the eps record's fields added:
    phase "bsb1", mu* = sigma_w^2 (diag - offdiag) of the composite, no collapse slope (it is
    infinite at eps = 0), the collapse boundary eps_c = sigma_w^2 m0 (B-1)/B (docs/theory.md §8).
    Equal to :func:`symbnmf.evaluate_eps` at eps = 0 (tested)."""
    from symbnmf._activations import x as _x
    from symbnmf.numeric._epsilon import collapse_m0

    comp = Activation(f"{act.label} with BN gamma={g}, beta={b}", act.bound_expr.subs(_x, g * _x + b))
    comp.require_nondegenerate()
    recs = evaluate(comp, Blist, method=method, dps=dps)
    sw = float(s)
    for rec in recs:
        fp = rec["fixed_point"]
        fp["diag"], fp["offdiag"] = sw * fp["diag"], sw * fp["offdiag"]
        if "mp" in rec:
            with mp.workdps(dps or 15):
                mfp = rec["mp"]["fixed_point"]
                for k in ("diag", "offdiag"):
                    mfp[k] = mp.nstr(mp.mpf(str(sp.Rational(s))) * mp.mpf(mfp[k]), dps)
        m0 = collapse_m0(act.bound_expr, g, b, rec["B"], 20)
        mu = fp["diag"] - fp["offdiag"]
        rec.update(
            phase="bsb1",
            eps=0.0,
            weight_var=sw,
            gamma=float(g),
            beta=float(b),
            mu=mu,
            nonzero_fixed_points=[mu],
            collapse_slope=None,
            collapse_boundary_eps=None if m0 is None else sw * float(m0) * (rec["B"] - 1) / rec["B"],
            note=(
                "eps = 0: BN is scale invariant, so this is the eps = 0 theory of phi(gamma x + beta) "
                "(method above), with diag/offdiag the pre-activation entries (times sigma_w^2)"
            ),
        )
    return recs


def evaluate_fast_or_quadrature(
    activation: str | Activation, Bs: int | Iterable[int], **kwargs: Any
) -> tuple[list[dict[str, Any]], str]:
    """``(records, method)``: :func:`evaluate` with the JAX fast path, falling back to the certified
    mpmath quadrature where the fast path refuses (e.g. its self-check raises ConvergenceError).
    Used where a theory column is wanted for any activation (simulation, trainability)."""
    try:
        return evaluate(activation, Bs, method="fast", **kwargs), "fast"
    except SymbnmfError:
        return evaluate(activation, Bs, method="quadrature", **kwargs), "quadrature"


def evaluation_document(activation: str | Activation, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The one JSON object printed by ``symbnmf eval --json``."""
    act = get_activation(activation)
    eps = any("eps" in r for r in records)  # records of the eps theory (issue 12)
    conv = EPS_CONVENTIONS if eps else CONVENTIONS
    return {"activation": act.label, "phi": str(act.bound_expr), "conventions": conv, "results": records}
