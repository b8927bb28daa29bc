"""mpmath evaluation and certification of the eps > 0 closed forms (issue 12, part 3).

The closed forms are :func:`symbnmf.symbolic._epsforms.derive_eps` (identity, ReLU, leaky ReLU at
beta = 0, gamma > 0): every quantity is an expression in (B, eps, sigma_w^2, gamma, mu) evaluated at
the fixed point mu*, the root of mu = F(mu) with F closed form. The root is transcendental and is
found here by bracketing root finding in log mu at the working precision (F(mu)/mu decreases in
mu: a unique nonzero root iff the collapse slope lim_{mu->0} F(mu)/mu exceeds 1).

:func:`certify_eps` compares everything with the independent mpmath path of
:mod:`symbnmf.numeric._epsilon` (certified sphere quadrature + tanh-sinh over chi^2_{B-1}) at the
same mu, to 10^(-dps+5) relative. Never imports JAX.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp

from symbnmf._conventions import QUANTITIES, check_batch_size
from symbnmf._errors import ConvergenceError, NoClosedFormError, SymbnmfError
from symbnmf.numeric._certify import Certificate, CertifiedQuantity, _digits

_FUNCS: dict[tuple, Callable[..., Any]] = {}


def _P(nu: Any, z: Any) -> Any:
    """P_nu(z) = e^z E_nu(z) in mpmath (z >= 0, nu > 1 at z = 0)."""
    if z == 0:
        return 1 / (mpmath.mpf(nu) - 1)
    # mpmath's expint loses digits for large orders (about 10 at nu = 130, z = 100): work at twice
    # the precision plus a margin
    with mpmath.workprec(2 * mp.prec + 64):
        v = mpmath.exp(z) * mpmath.expint(nu, z)
    return +v


def _compile(act: Any, B: int) -> dict[str, Callable[..., Any]]:
    """mpmath callables (eps, sigma_w2, gamma, mu) -> value for every closed form at batch size B."""
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._derive import _activation_key
    from symbnmf.symbolic._epsforms import EPS, GAMMA, MU, WEIGHT_VAR, derive_eps

    key = (_activation_key(act), B)
    if key in _FUNCS:
        return _FUNCS[key]  # type: ignore[return-value]
    d = derive_eps(act)
    subs = {Bsym: sp.Integer(B), **act.bindings}
    args = (EPS, WEIGHT_VAR, GAMMA, MU)
    mods = [{"expint_scaled": _P}, "mpmath"]
    exprs = {name: d.quantities[name] for name in QUANTITIES if name != "depth_scale"}
    exprs["map"] = d.fixed_point_map
    exprs["slope"] = d.collapse_slope
    exprs["boundary"] = d.collapse_boundary
    exprs["mu0"] = d.sphere["a"] - d.sphere["b"]
    exprs.update({f"collapsed.{n}": e for n, e in d.collapsed.items()})
    out = {name: sp.lambdify(args, sp.sympify(e).subs(subs), modules=mods) for name, e in exprs.items()}
    _FUNCS[key] = out  # type: ignore[assignment]
    return out


def solve_fixed_point_closed(
    act: Any, B: int, eps: Any, weight_var: Any, gamma: Any = 1, *, dps: int = 30
) -> tuple[Any, str]:
    """(mu*, phase) from the closed-form map F (root of log F(mu) - log mu, a decreasing function
    of log mu), at ``dps`` digits; phase "collapsed" (mu* = 0) iff the collapse slope is <= 1."""
    f = _compile(act, check_batch_size(B))
    with mp.workdps(dps + 10):
        e, s, g = (mpmath.mpf(sp.Float(sp.sympify(v), dps + 10)._mpf_) for v in (eps, weight_var, gamma))
        if not e > 0:
            raise SymbnmfError("the closed-form eps path needs eps > 0 (eps = 0: use symbnmf.derive / evaluate)")
        if f["slope"](e, s, g, 1) <= 1:
            return mp.zero, "collapsed"
        top = s * g * g * f["mu0"](e, s, g, 1)

        def h(x: Any) -> Any:
            return mpmath.log(f["map"](e, s, g, mpmath.exp(x))) - x

        hi = mpmath.log(top)
        lo = hi - 1
        for _ in range(400):
            if h(lo) > 0:
                break
            hi, lo = lo, lo - 2
        else:  # pragma: no cover - the slope test guarantees a sign change
            raise ConvergenceError(f"no bracket for the eps fixed point at B={B}, eps={eps}")
        x = mpmath.findroot(h, (lo, hi), solver="anderson")
        for _ in range(3):  # Newton polish: d/dx h = mu F'(mu)/F - 1
            mu = mpmath.exp(x)
            dh = mpmath.diff(h, x)
            x = x - h(x) / dh
        mu = mpmath.exp(x)
        if not abs(h(x)) <= mpmath.mpf(10) ** (-dps):
            raise ConvergenceError(f"eps fixed point did not converge at B={B}, eps={eps}: residual {h(x)}")
        return +mu, "bsb1"


def closed_form_eps(
    activation: Any, B: int, *, eps: Any, weight_var: Any = 1, gamma: Any = 1, beta: Any = 0, dps: int | None = None
) -> dict[str, Any]:
    """Every quantity of :data:`symbnmf.QUANTITIES` for BN with eps > 0 from the closed forms of
    :func:`symbnmf.derive_eps` (identity, ReLU, leaky ReLU; beta = 0, gamma > 0).

    Same record as :func:`symbnmf.evaluate_eps` (``_meta``: phase, mu, collapse slope, boundary
    eps_c); mu* is the numeric root of the closed-form fixed-point map. Values are mpmath numbers
    (None where undefined: depth_scale when backward.G <= 1).
    """
    from symbnmf._activations import get_activation
    from symbnmf.numeric._epsilon import check_bn_parameters
    from symbnmf.symbolic._epsforms import in_family

    act = get_activation(activation)
    act.require_bound()
    e, s, g, b = check_bn_parameters(eps, weight_var, gamma, beta)
    if not in_family(act) or b != 0 or not g > 0 or not e > 0:
        raise NoClosedFormError(
            f"no eps > 0 closed form for {act.label!r} at eps={eps}, gamma={gamma}, beta={beta} (only identity, relu, "
            "leaky_relu with eps > 0, gamma > 0, beta = 0); use method='quadrature'"
        )
    Bv = check_batch_size(B)
    work = max(dps or 0, 30)
    f = _compile(act, Bv)
    t0 = time.perf_counter()
    mu, phase = solve_fixed_point_closed(act, Bv, e, s, g, dps=work)
    out: dict[str, Any] = {}
    with mp.workdps(work + 10):
        ev, sv, gv = (mpmath.mpf(sp.Float(v, work + 10)._mpf_) for v in (e, s, g))
        if phase == "bsb1":
            for name in QUANTITIES:
                if name != "depth_scale":
                    out[name] = f[name](ev, sv, gv, mu)
            note = "BSB1 fixed point with eps: mu* = diag - offdiag solves mu = F(mu) (closed-form map, numeric root)"
        else:
            out["fixed_point.diag"] = out["fixed_point.offdiag"] = mp.zero  # sigma_w^2 phi(0)^2 = 0
            for X in "GLM":
                for w in ("forward", "backward"):
                    out[f"{w}.{X}"] = f[f"collapsed.{w}.{X}"](ev, sv, gv, 1)
            note = (
                "collapsed phase: every pre-activation is equal across the batch (mu* = 0), x = phi(0) = 0; "
                "eigenvalues are the mu -> 0+ limits (closed form)"
            )
        bg = out["backward.G"]
        out["depth_scale"] = None if not bg > 1 else 1 / mpmath.log(bg)
        slope = f["slope"](ev, sv, gv, 1)
        boundary = f["boundary"](ev, sv, gv, 1)
    out["_meta"] = {
        "phase": phase,
        "eps": float(e),
        "weight_var": float(s),
        "gamma": float(g),
        "beta": float(b),
        "mu": float(mu),
        "collapse_slope": float(slope),
        "collapse_boundary_eps": float(boundary),
        "note": note,
        "tolerance": {
            "relative": 0.0,
            "note": f"closed forms (derive_eps) at {work + 10} digits; mu* by root finding to 1e-{work}",
            "seconds": round(time.perf_counter() - t0, 4),
        },
    }
    return out


def certify_eps(
    activation: Any, B: int, dps: int = 50, *, eps: Any, weight_var: Any = 1, gamma: Any = 1
) -> Certificate:
    """Compare the eps > 0 closed forms (:func:`symbnmf.derive_eps`) with the independent mpmath path
    (:mod:`symbnmf.numeric._epsilon`) at mu = mu*, to 10^(-dps+5) relative.

    Rows: every quantity except depth_scale (a function of backward.G), plus ``fixed_point.map`` (the
    closed-form map F against the mpmath F at mu*, i.e. mu* is a fixed point of the mpmath map) and
    ``collapse_slope``. In the collapsed phase the eigenvalues are the mu -> 0+ limits of both paths.
    """
    from symbnmf._activations import get_activation
    from symbnmf.numeric._epsilon import (
        EpsSetting,
        _tau,
        check_bn_parameters,
        chi2_expectation,
        collapse_slope,
        eigenvalues,
        fixed_point_map,
        tau_tables,
    )

    act = get_activation(activation)
    act.require_bound()
    e, s, g, _ = check_bn_parameters(eps, weight_var, gamma, 0)
    Bv = check_batch_size(B)
    if not isinstance(dps, int) or dps < 10:
        raise SymbnmfError(f"--dps must be an integer >= 10 to certify, got {dps!r}")
    t0 = time.perf_counter()
    cf = closed_form_eps(act, Bv, eps=e, weight_var=s, gamma=g, dps=dps + 5)
    tcf = time.perf_counter() - t0
    meta = cf.pop("_meta")
    f = _compile(act, Bv)
    setting = EpsSetting(e, s, g, sp.Integer(0))
    tol = mpmath.mpf(10) ** (-dps + 5)
    rows = []
    t1 = time.perf_counter()
    with mp.workdps(dps + 8):
        tab = tau_tables(act.bound_expr, g, sp.Integer(0), Bv, dps + 2)
        ev, sv, gv = (mpmath.mpf(sp.Float(v, dps + 8)._mpf_) for v in (e, s, g))
        if meta["phase"] == "bsb1":
            mu, _ = solve_fixed_point_closed(act, Bv, e, s, g, dps=dps + 5)
            ref = eigenvalues(tab, setting, mu)
            ref["fixed_point.diag"] = sv * chi2_expectation(lambda v: tab.value("a", _tau(mu, v, Bv, ev)), Bv - 1)
            ref["fixed_point.offdiag"] = sv * chi2_expectation(lambda v: tab.value("b", _tau(mu, v, Bv, ev)), Bv - 1)
            ref["fixed_point.map"] = fixed_point_map(tab, setting, mu)
            cf["fixed_point.map"] = mu
        else:
            ref = eigenvalues(tab, setting, mp.zero)
            ref["fixed_point.diag"] = ref["fixed_point.offdiag"] = sv * tab.phi_beta**2
        ref["collapse_slope"] = collapse_slope(tab, setting)
        cf["collapse_slope"] = f["slope"](ev, sv, gv, 1)
        tq = time.perf_counter() - t1
        for name, q in ref.items():
            c = cf.get(name)
            if c is None or q is None:
                continue
            ok = bool(abs(c - q) <= tol * max(1, abs(c)))
            rows.append(CertifiedQuantity(name, mpmath.mpf(c), mpmath.mpf(q), _digits(c, q, dps), ok, 0.0))
    return Certificate(
        f"{act.label} (eps={e}, sigma_w^2={s}, gamma={g}, {meta['phase']})",
        Bv,
        dps,
        tuple(rows),
        tq,
        tcf,
        tolerance=f"|closed - mpmath| <= 1e-{dps - 5} * max(1, |closed|) at mu = mu*",
    )
