"""The Laplace method (Thm 3.2): V_{B_phi}(Sigma) at any PSD Sigma for positive-homogeneous phi.

For phi positive-homogeneous of degree alpha > 0 (identity, ReLU, leaky ReLU, alpha-ReLU),
phi(x) = c_+ x^alpha (x > 0), c_- |x|^alpha (x < 0), and B_phi(h) = phi(sqrt(B) G h/|G h|)
= B^{alpha/2} phi(G h)/|G h|^alpha. With 1/r^{2 alpha} = Gamma(alpha)^{-1} int_0^inf
s^{alpha-1} e^{-s r^2} ds and the Gaussian tilt E[f(z) e^{-s|z|^2}] = det(I + 2 s S)^{-1/2}
E[f(z_s)], z ~ N(0, S), z_s ~ N(0, S (I + 2 s S)^{-1}):

    V_{B_phi}(Sigma) = B^alpha/Gamma(alpha) int_0^inf s^{alpha-1} det(I + 2 s Sigma^G)^{-1/2}
                       V_phi(Sigma^G (I + 2 s Sigma^G)^{-1}) ds,     Sigma^G = G Sigma G.

V_phi is entrywise (Lemma ``homogeneous_kernel``): for a 2x2 covariance with variances a, b
and correlation rho, E phi(u) phi(v) = (ab)^{alpha/2} [(c_+^2 + c_-^2) k_alpha(rho)
+ 2 c_+ c_- k_alpha(-rho)], k_alpha(rho) = E[u_+^alpha v_+^alpha] for unit variances
= 2^alpha Gamma(alpha+1)/(2 pi) int_{psi - pi/2}^{pi/2} cos^alpha t cos^alpha(t - psi) dt,
psi = arccos rho (polar coordinates of the whitened pair). k_1 = J_1/2 (arccosine kernel) and
k_0 = (pi - psi)/(2 pi) are used in closed form; other alpha by tanh-sinh quadrature.
alpha = 0 (step functions) needs no Laplace integral: V_{B_phi}(Sigma) = V_phi(Sigma^G).

The s-integral uses s = sigma t/(1-t) and tanh-sinh on t in [0, 1] with the error estimate
checked (ConvergenceError otherwise). Nothing here uses the closed forms in B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mpmath
import sympy as sp
from mpmath import mp

from symbnmf._conventions import check_batch_size
from symbnmf._errors import ActivationError, ConvergenceError, SymbnmfError
from symbnmf.numeric._quadrature import GUARD_DIGITS, _vquad


def homogeneous_parts(activation: Any) -> tuple[Any, Any, Any]:
    """(alpha, c_+, c_-) with phi(x) = c_+ x^alpha for x > 0 and c_- |x|^alpha for x < 0."""
    from symbnmf._activations import get_activation, x

    act = get_activation(activation)
    act.require_bound()
    alpha = act.homogeneity
    if alpha is None or not alpha.is_real or alpha < 0:
        raise ActivationError(
            f"the Laplace method (Thm 3.2) needs a positive-homogeneous phi (identity, relu, leaky_relu, alpha_relu); "
            f"{act.label} is not: use the sphere quadrature (symbnmf eval) instead"
        )
    phi = act.bound_expr
    cp = sp.nsimplify(phi.subs(x, 1))
    cm = sp.nsimplify(phi.subs(x, -1))
    return alpha, cp, cm


def k_alpha(alpha: Any, rho: Any) -> Any:
    """E[u_+^alpha v_+^alpha] for standard Gaussians u, v with correlation ``rho`` (mpmath)."""
    rho = mpmath.mpf(rho)
    if rho > 1:
        rho = mpmath.mpf(1)
    if rho < -1:
        rho = mpmath.mpf(-1)
    psi = mpmath.acos(rho)
    if alpha == 0:
        return (mp.pi - psi) / (2 * mp.pi)
    if alpha == 1:
        return (mpmath.sqrt(1 - rho**2) + (mp.pi - psi) * rho) / (2 * mp.pi)
    a = mpmath.mpf(alpha)
    if rho == 1:
        return 2**a * mpmath.gamma(a + mpmath.mpf(1) / 2) / (2 * mpmath.sqrt(mp.pi))
    if psi >= mp.pi:
        return mp.zero
    integrand = lambda t: mpmath.cos(t) ** a * mpmath.cos(t - psi) ** a
    val, err = mpmath.quad(integrand, [psi - mp.pi / 2, mp.pi / 2], error=True)
    if err > mpmath.mpf(10) ** (-mp.dps + 3) * max(1, abs(val)):
        raise ConvergenceError(f"wedge integral k_alpha(rho={mpmath.nstr(rho, 5)}) did not converge; lower dps")
    return 2**a * mpmath.gamma(a + 1) / (2 * mp.pi) * val


def V_phi(S: Any, alpha: Any, cp: Any, cm: Any) -> Any:
    """Entrywise Gaussian kernel V_phi(S) = E[phi(z) phi(z)^T], z ~ N(0, S)."""
    n = S.rows
    out = mpmath.matrix(n, n)
    a = mpmath.mpf(alpha)
    same = cp**2 + cm**2
    cross = 2 * cp * cm
    for i in range(n):
        for j in range(i, n):
            sii, sjj = S[i, i], S[j, j]
            if sii <= 0 or sjj <= 0:
                v = mp.zero
            else:
                scale = mpmath.sqrt(sii * sjj)
                rho = S[i, j] / scale
                v = scale**a * (same * k_alpha(alpha, rho) + cross * k_alpha(alpha, -rho))
            out[i, j] = out[j, i] = v
    return out


def _as_matrix(Sigma: Any) -> Any:
    try:
        M = mpmath.matrix(Sigma.tolist() if hasattr(Sigma, "tolist") else Sigma)
    except Exception:
        raise SymbnmfError("Sigma must be a square matrix (nested lists, numpy array or mpmath.matrix)") from None
    if M.rows != M.cols:
        raise SymbnmfError(f"Sigma must be square, got {M.rows}x{M.cols}")
    return M


def laplace_V(activation: Any, Sigma: Any, dps: int = 30) -> Any:
    """V_{B_phi}(Sigma) = E[B_phi(h) B_phi(h)^T], h ~ N(0, Sigma), by the Laplace method (Thm 3.2).

    Conventions: docs/theory.md (BN(h) = n(G h), gamma = 1, beta = 0, eps = 0). ``Sigma`` is any
    symmetric PSD B x B matrix (B >= 4) with G Sigma G != 0; phi must be positive-homogeneous.
    Returns an mpmath matrix accurate to about 10^(-dps). Raises SymbnmfError for a non-PSD,
    non-symmetric or BN-invisible Sigma, ConvergenceError if the s-integral does not converge.
    """
    alpha, cp, cm = homogeneous_parts(activation)
    M = _as_matrix(Sigma)
    B = check_batch_size(M.rows, what="the Laplace method for BN (B x B Sigma)")
    with mp.workdps(dps + GUARD_DIGITS):
        M = mpmath.matrix(M)
        scale = max(abs(M[i, j]) for i in range(B) for j in range(B))
        if scale == 0:
            raise SymbnmfError("Sigma is zero: BN is undefined; give a covariance with G Sigma G != 0")
        for i in range(B):
            for j in range(i + 1, B):
                if abs(M[i, j] - M[j, i]) > mpmath.mpf(10) ** -12 * scale:  # float inputs: round-off
                    raise SymbnmfError(
                        f"Sigma is not symmetric (entries ({i},{j}) and ({j},{i}) differ); symmetrise it"
                    )
        G = mpmath.eye(B) - mpmath.ones(B, B) / B
        SG = G * M * G
        SG = (SG + SG.T) / 2
        lam, Q = mpmath.eigsy(SG)
        M = (M + M.T) / 2
        tiny = mpmath.mpf(10) ** -12 * scale  # PSD up to the round-off of float inputs
        if min(lam) < -tiny or min(mpmath.eigsy(M, eigvals_only=True)) < -tiny:
            raise SymbnmfError(
                f"Sigma is not positive semidefinite (eigenvalue {mpmath.nstr(min(lam), 3)}); a covariance must be PSD"
            )
        lam = [l if l > tiny else mp.zero for l in lam]
        if max(lam) <= 0:
            raise SymbnmfError("G Sigma G = 0 (all inputs of the batch identical up to a shift): BN is undefined")
        cpm, cmm = (
            mpmath.mpf(sp.Rational(cp).p) / sp.Rational(cp).q if cp.is_Rational else mpmath.mpf(sp.N(cp, mp.dps)),
            (mpmath.mpf(sp.Rational(cm).p) / sp.Rational(cm).q if cm.is_Rational else mpmath.mpf(sp.N(cm, mp.dps))),
        )
        a = mpmath.mpf(sp.N(alpha, mp.dps + 5))
        if alpha == 0:
            return V_phi(SG, 0, cpm, cmm)
        pos = [l for l in lam if l > 0]
        sigma = 1 / (2 * (sum(pos) / len(pos)))
        pairs = [(i, j) for i in range(B) for j in range(i, B)]
        const = mpmath.mpf(B) ** a / mpmath.gamma(a)

        def F(lo: Any, hi: Any, degree: int, nodes: Sequence[tuple[Any, Any]]) -> list[Any]:
            acc = [mp.zero] * len(pairs)
            for t, w in nodes:
                if t <= 0 or t >= 1:
                    continue
                s = sigma * t / (1 - t)
                ds = sigma / (1 - t) ** 2
                d = [1 + 2 * s * l for l in lam]
                det = mpmath.fprod(d)
                Ss = Q * mpmath.diag([l / dd for l, dd in zip(lam, d)]) * Q.T
                Vp = V_phi(Ss, alpha, cpm, cmm)
                ww = w * ds * s ** (a - 1) / mpmath.sqrt(det)
                for q, (i, j) in enumerate(pairs):
                    acc[q] += ww * Vp[i, j]
            return acc

        tol = mpmath.mpf(10) ** (-dps - 2) / const
        vals, err = _vquad(F, [(mp.zero, mp.one)], len(pairs), "tanh-sinh", tol)
        if not err <= tol:
            raise ConvergenceError(
                f"Laplace integral (Thm 3.2) did not converge: error estimate {mpmath.nstr(err * const, 3)} > "
                f"1e-{dps}; lower dps or check that Sigma is well conditioned"
            )
        out = mpmath.matrix(B, B)
        for q, (i, j) in enumerate(pairs):
            out[i, j] = out[j, i] = const * vals[q]
        return out


def laplace_iterate(activation: Any, Sigma0: Any, layers: int, dps: int = 30) -> list[Any]:
    """The forward recursion Sigma^l = V_{B_phi}(Sigma^{l-1}) for ``layers`` layers from any PSD
    ``Sigma0`` (Thm 3.2), returned as [Sigma^0, ..., Sigma^layers] (mpmath matrices)."""
    if not isinstance(layers, int) or layers < 0:
        raise SymbnmfError(f"layers must be a non-negative integer, got {layers!r}")
    out = [_as_matrix(Sigma0)]
    for _ in range(layers):
        out.append(laplace_V(activation, out[-1], dps))
    return out


def _test_directions(B: int) -> dict[str, Any]:
    G = mpmath.eye(B) - mpmath.ones(B, B) / B
    D = mpmath.matrix(B, B)
    D[0, 0], D[1, 1] = 1, -1
    L = G * D * G
    M = mpmath.matrix(B, B)
    for (i, j), v in {(0, 1): 1, (2, 3): 1, (0, 2): -1, (1, 3): -1}.items():
        M[i, j] = M[j, i] = v
    return {"L": L, "M": M}


def laplace_forward_eigenvalues(
    activation: Any, B: int, dps: int = 30, eps_digits: int | None = None
) -> dict[str, Any]:
    """forward.L and forward.M (Thm 3.6) from derivatives of the Laplace V at Sigma = G.

    lambda_X = <Delta, G dV[Delta] G> / (mu* <Delta, Delta>), dV[Delta] = d/de V(G + e Delta) at
    e = 0 by a Richardson-extrapolated central difference (error O(e^4)), with Delta = G diag(1,-1,0..) G
    (piece L) and the 4-cycle Delta_12 = Delta_34 = 1, Delta_13 = Delta_24 = -1 (piece M). An
    independent check of the sphere-integral definitions; accurate to about dps/2 digits.
    """
    Bv = check_batch_size(B)
    work = dps + dps // 2 + 5
    with mp.workdps(work):
        G = mpmath.eye(Bv) - mpmath.ones(Bv, Bv) / Bv
        V0 = laplace_V(activation, G, work)
        mu = V0[0, 0] - V0[0, 1]
        e = mpmath.mpf(10) ** (-(eps_digits if eps_digits is not None else max(3, dps // 4)))
        out: dict[str, Any] = {"fixed_point.diag": V0[0, 0], "fixed_point.offdiag": V0[0, 1]}
        for name, D in _test_directions(Bv).items():

            def d(h: Any, D: Any = D) -> Any:
                Vp = laplace_V(activation, G + h * D, work)
                Vm = laplace_V(activation, G - h * D, work)
                return (Vp - Vm) / (2 * h)

            dV = (4 * d(e / 2) - d(e)) / 3
            GdG = G * dV * G
            num = sum(D[i, j] * GdG[i, j] for i in range(Bv) for j in range(Bv))
            den = sum(D[i, j] ** 2 for i in range(Bv) for j in range(Bv))
            out[f"forward.{name}"] = num / (mu * den)
    return out
