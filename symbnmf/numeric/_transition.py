"""alpha-ReLU and the BSB1 -> BSB2 transition (paper Fig 1c,d; Thm 3.6, 3.7).

For phi_alpha(x) = x^alpha 1[x > 0] the BSB1 fixed point is attracting iff both forward
eigenvalues lambda_L, lambda_M (convention of docs/theory.md: Sigma -> G V(Sigma) G / mu* at Sigma = G)
are below 1. At alpha = 1 (ReLU) both are < 1 for every B; as alpha grows the per-sample-norm
piece L crosses 1 first: the BSB1 point loses stability to a symmetry-broken ("winner-take-all",
BSB2) point. The critical alpha_c(B) solves max(lambda_L, lambda_M)(alpha) = 1; it is found by
bracketing and the Illinois root finder on the certified sphere quadrature
(:func:`symbnmf.numeric._quadrature.evaluate_quadrature`, tanh-sinh for non-integer alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mpmath
from mpmath import mp

from symbnmf._conventions import check_batch_size
from symbnmf._errors import ConvergenceError, SymbnmfError
from symbnmf.numeric._quadrature import evaluate_quadrature

FORWARD = ("fixed_point.diag", "fixed_point.offdiag", "forward.L", "forward.M")


def _alpha(alpha: Any) -> Any:
    a = mpmath.mpf(alpha)
    if not a > 0:
        raise SymbnmfError(f"alpha must be positive, got {alpha}")
    return a


def alpha_relu_point(alpha: Any, B: int, dps: int = 15) -> dict[str, Any]:
    """BSB1 fixed point and forward eigenvalues (forward.L, forward.M) of x^alpha 1[x>0] at B."""
    from symbnmf._activations import get_activation

    a = _alpha(alpha)
    Bv = check_batch_size(B)
    act = get_activation("alpha_relu").bind(alpha=mpmath.nstr(a, dps + 5) if a != int(a) else int(a))
    return evaluate_quadrature(act, Bv, dps, quantities=list(FORWARD))


def instability(alpha: Any, B: int, dps: int = 15) -> Any:
    """max(forward.L, forward.M) - 1: negative while the BSB1 point attracts."""
    r = alpha_relu_point(alpha, B, dps)
    return max(r["forward.L"], r["forward.M"]) - 1


def critical_alpha(B: int, dps: int = 12, tol: float = 1e-8, alpha_max: float = 12.0) -> Any | None:
    """alpha_c(B): the alpha >= 1 where the BSB1 fixed point of alpha-ReLU stops attracting.

    Brackets the sign change of :func:`instability` starting from alpha = 1 (ReLU, attracting)
    in steps of 0.5, then refines with the Illinois method to |Delta alpha| < ``tol``. Returns
    None when the BSB1 point attracts for every alpha <= ``alpha_max`` (B = 4: forward.L stays
    below 1, approaching it slowly as alpha grows).
    """
    Bv = check_batch_size(B)
    with mp.workdps(dps):
        lo, hi = mpmath.mpf(1), mpmath.mpf("1.5")
        glo = instability(lo, Bv, dps)
        if glo >= 0:
            raise ConvergenceError(f"ReLU (alpha = 1) is already unstable at B={Bv}; no transition above alpha = 1")
        ghi = instability(hi, Bv, dps)
        while ghi < 0:
            lo, glo = hi, ghi
            hi = hi + mpmath.mpf("0.5")
            if hi > alpha_max:
                return None
            ghi = instability(hi, Bv, dps)
        # Illinois (regula falsi with halving) on [lo, hi]
        side = 0
        for _ in range(60):
            c = hi - ghi * (hi - lo) / (ghi - glo)
            gc = instability(c, Bv, dps)
            if gc == 0:
                return c
            if (gc > 0) == (ghi > 0):
                hi, ghi = c, gc
                if side == 1:
                    glo /= 2
                side = 1
            else:
                lo, glo = c, gc
                if side == -1:
                    ghi /= 2
                side = -1
            if hi - lo < tol:
                break
        else:  # pragma: no cover
            raise ConvergenceError(f"root finding for alpha_c(B={Bv}) did not converge")
        return (lo + hi) / 2 if hi - lo < tol else c


def transition_table(
    Bs: Sequence[int] = tuple(range(4, 33)), dps: int = 12, tol: float = 1e-8, progress: Any = None
) -> list[dict[str, Any]]:
    """alpha_c(B) for each B, with the eigenvalues at alpha_c (a row per B)."""
    rows = []
    for B in Bs:
        ac = critical_alpha(B, dps, tol)
        pt = alpha_relu_point(ac, B, dps) if ac is not None else {}
        rows.append({"B": int(B), "alpha_c": ac, **pt})
        if progress is not None:
            progress(B)
    return rows
