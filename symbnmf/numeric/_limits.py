"""Large-batch (Gaussian) limits of every quantity, for any activation.

As B -> infinity two coordinates of y (uniform on the radius-sqrt(B) sphere in 1-perp) become
independent standard Gaussians (their correlation is -1/(B-1), and the sphere's radial
fluctuations vanish), and B/|G h|^2 -> 1/mu*. Writing z ~ N(0, 1) and Var phi = E phi(z)^2 -
(E phi(z))^2, the limits are

* fixed_point.diag -> E phi(z)^2, fixed_point.offdiag -> (E phi(z))^2 (Thm 3.1 with rho -> 0);
* backward.G -> E phi'(z)^2 / Var phi (paper, Sec. 3 after Thm 3.10; >= 1 by the Gaussian
  Poincare inequality, = 1 iff phi is affine);
* forward.G = 0 for every B; forward.L -> (d/dv Var phi(sqrt(v) z) at v = 1)/Var phi
  = (E[z phi phi'] - E phi E[z phi'])/Var phi: a per-sample variance change d_i survives BN at
  large B and moves V_ii - V_ij by the derivative of Var phi (=1 for ReLU, the paper's
  lambda_L -> 1; = alpha for alpha-ReLU, hence alpha_c(B) -> 1 as B grows);
* forward.M -> (E phi'(z))^2 / Var phi (slope at c = 0 of the centred correlation map
  c -> (E phi(u) phi(v) - (E phi)^2)/Var phi of a network without BN);
* backward.L -> E phi'(z)^2 / Var phi and backward.M -> (E phi'(z))^2 / Var phi (the gradient map
  acts on per-sample norms by E phi'^2 and on cross-sample correlations by (E phi')^2, divided by
  the BN scale mu* -> Var phi);
* depth_scale -> 1/ln(limit of backward.G).

The forward.L, forward.M, backward.L and backward.M limits are derived heuristically here (leading order of
the definitions with y -> iid Gaussian); :func:`approach` and ``tests/test_limits.py`` check them,
and the others, numerically: the finite-B quadrature values extrapolated in 1/B must reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp

from symbnmf._errors import ConvergenceError
from symbnmf.numeric._quadrature import GUARD_DIGITS, coordinate_function, evaluate_quadrature


def gaussian_expectation(expr: sp.Expr, dps: int = 30) -> Any:
    """E f(z), z ~ N(0, 1), for a SymPy expression f of one variable (split at its kinks)."""
    cf = coordinate_function(sp.sympify(expr))
    with mp.workdps(dps + GUARD_DIGITS):
        pts = [mp.ninf] + [mpmath.mpf(sp.N(k, mp.dps)) for k in cf.kinks] + [mp.inf]
        f = lambda t: cf.func(t) * mpmath.exp(-t * t / 2)
        val, err = mpmath.quad(f, pts, error=True)
        val /= mpmath.sqrt(2 * mp.pi)
        if err > mpmath.mpf(10) ** (-dps):
            raise ConvergenceError(
                f"Gaussian expectation of {expr} did not converge (error {mpmath.nstr(err, 3)}); lower dps"
            )
    return val


def gaussian_limits(activation: Any, dps: int = 30) -> dict[str, Any]:
    """The B -> infinity limit of every quantity of :data:`symbnmf.QUANTITIES` (module docstring)."""
    from symbnmf._activations import get_activation, x

    act = get_activation(activation)
    act.require_bound()
    phi = act.bound_expr
    dphi = act.bound_derivative
    m1 = gaussian_expectation(phi, dps)
    m2 = gaussian_expectation(phi**2, dps)
    d1 = gaussian_expectation(dphi, dps)
    d2 = gaussian_expectation(dphi**2, dps)
    zpp = gaussian_expectation(x * phi * dphi, dps)
    zp = gaussian_expectation(x * dphi, dps)
    with mp.workdps(dps + GUARD_DIGITS):
        var = m2 - m1**2
        if var <= 0:
            from symbnmf._errors import SymbnmfError

            raise SymbnmfError(
                f"{act.label} is constant under N(0,1): no Gaussian limit; use a non-constant activation"
            )
        bg = d2 / var
        out = {
            "fixed_point.diag": m2,
            "fixed_point.offdiag": m1**2,
            "forward.G": mp.zero,
            "forward.L": (zpp - m1 * zp) / var,
            "forward.M": d1**2 / var,
            "backward.G": bg,
            "backward.L": d2 / var,
            "backward.M": d1**2 / var,
            "depth_scale": 1 / mpmath.log(bg) if bg > 1 else mp.inf,
        }
    return out


def approach(activation: Any, Bs: Sequence[int] = (32, 64, 128), dps: int = 20) -> dict[str, dict[str, Any]]:
    """Finite-B quadrature values, their Richardson extrapolation in 1/B and the Gaussian limit.

    For each quantity q, fits q(B) = q_inf + a/B + b/B^2 (three largest B of ``Bs``) and returns
    ``{"values": [...], "extrapolated": q_inf, "limit": Gaussian limit, "gap": |q_inf - limit|}``.
    """
    Bs = sorted(int(b) for b in Bs)
    if len(Bs) < 3:
        from symbnmf._errors import SymbnmfError

        raise SymbnmfError("give at least three batch sizes to extrapolate in 1/B")
    lim = gaussian_limits(activation, dps)
    vals = [evaluate_quadrature(activation, b, dps) for b in Bs]
    out: dict[str, dict[str, Any]] = {}
    with mp.workdps(dps + GUARD_DIGITS):
        b3 = Bs[-3:]
        A = mpmath.matrix([[1, mpmath.mpf(1) / b, mpmath.mpf(1) / b**2] for b in b3])
        for name in lim:
            ys = [v[name] for v in vals]
            if not all(mpmath.isfinite(y) for y in ys[-3:]):
                continue
            coef = mpmath.lu_solve(A, mpmath.matrix(ys[-3:]))
            out[name] = {"values": ys, "extrapolated": coef[0], "limit": lim[name], "gap": abs(coef[0] - lim[name])}
    return out
