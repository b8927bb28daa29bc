"""Cross-batch BN kernel: E[φ(BN(h₁)) φ(BN(h₂))ᵀ] for two batches normalised with their own statistics.

(h₁, h₂) jointly Gaussian with covariances Σ₁₁ (B₁×B₁), Σ₂₂ (B₂×B₂) and cross-covariance C. For φ
positive-homogeneous of degree α, φ(BN(h_k)) = B_k^{α/2} n_k^{−α} φ(G h_k) with n_k² = ‖G h_k‖² + B_k ε,
and n^{−α} = Γ(α/2)⁻¹ ∫₀^∞ s^{α/2−1} e^{−s n²} ds for each batch, so (Thm 3.2 in two variables)

    K₁₂ = (B₁B₂)^{α/2}/Γ(α/2)² ∫∫ s^{α/2−1} t^{α/2−1} e^{−(sB₁ + tB₂)ε} det(M)^{−1/2} V_φ(S₁₂) ds dt,

with Σ_J the joint covariance of (G h₁, G h₂), D = diag(s·1_{B₁}, t·1_{B₂}), M = I + 2 D^{1/2} Σ_J D^{1/2},
and S = Σ_J − 2 Σ_J D^{1/2} M⁻¹ D^{1/2} Σ_J = Σ_J (I + 2DΣ_J)⁻¹ the tilted covariance, whose cross block
and diagonals enter the entrywise Gaussian kernel V_φ. Each variable uses the double-exponential rule
of :mod:`symbnmf.kernels.nngp` fitted to its own batch's spectrum (product rule).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from symbnmf._errors import ActivationError
from symbnmf.kernels.nngp import (
    KernelError,
    _as_float,
    _check_cov,
    _check_eps,
    _is_concrete,
    _k1,
    _k_alpha,
    _s_rule,
    _spectrum,
    homogeneous,
    in_float64,
)

#: Nodes per variable of the product rule (measured: ≤ 1.4e-14 relative at C = Σ, B = 4, 8; see tests).
CROSS_NODES = 129


def _cross_gaussian(a: Any, b: Any, c: Any, hom: Any) -> Any:
    """E[φ(u_i) φ(v_j)] for Var u_i = a_i, Var v_j = b_j, Cov(u_i, v_j) = c_ij."""
    ok = (a[:, None] > 0) & (b[None, :] > 0)
    scale = jnp.sqrt(jnp.where(a > 0, a, 1.0))[:, None] * jnp.sqrt(jnp.where(b > 0, b, 1.0))[None, :]
    rho = jnp.where(ok, jnp.clip(c / scale, -1.0, 1.0), 0.0)
    same, cross = hom.cp**2 + hom.cm**2, 2.0 * hom.cp * hom.cm
    k = _k1 if hom.alpha == 1.0 else partial(_k_alpha, hom.alpha)
    return jnp.where(ok, scale**hom.alpha * (same * k(rho) + cross * k(-rho)), 0.0)


def _cross_one(S11: Any, S22: Any, C: Any, eps: Any, hom: Any, nodes: int) -> Any:
    B1, B2 = S11.shape[-1], S22.shape[-1]
    G1 = jnp.eye(B1, dtype=S11.dtype) - 1.0 / B1
    G2 = jnp.eye(B2, dtype=S11.dtype) - 1.0 / B2
    J = jnp.block([[G1 @ S11 @ G1, G1 @ C @ G2], [G2 @ C.T @ G1, G2 @ S22 @ G2]])
    J = 0.5 * (J + J.T)
    beta = 0.5 * hom.alpha
    _, lam1, _ = _spectrum(S11)
    _, lam2, _ = _spectrum(S22)
    s, ws, _ = jax.lax.stop_gradient(_s_rule(lam1, B1 * eps, nodes, beta))
    t, wt, _ = jax.lax.stop_gradient(_s_rule(lam2, B2 * eps, nodes, beta))
    n = B1 + B2

    def at(sn: Any, tn: Any) -> Any:
        r = jnp.sqrt(jnp.concatenate([jnp.full((B1,), sn), jnp.full((B2,), tn)]))
        M = jnp.eye(n, dtype=J.dtype) + 2.0 * r[:, None] * J * r[None, :]
        L = jnp.linalg.cholesky(M)
        X = jax.scipy.linalg.solve_triangular(L, r[:, None] * J, lower=True)  # L⁻¹ D^{1/2} Σ_J
        S = J - 2.0 * X.T @ X
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        d = jnp.diagonal(S)
        V = _cross_gaussian(d[:B1], d[B1:], S[:B1, B1:], hom)
        w = sn ** (beta - 1.0) * tn ** (beta - 1.0) * jnp.exp(-(sn * B1 + tn * B2) * eps - 0.5 * logdet)
        # far in the tails (s or t ~ 1e30) M is too ill-conditioned for float64 Cholesky; there det^{-1/2}
        # is far below 1e-16 of the integrand's size, so such nodes are dropped rather than poisoning the sum
        out = w * V
        return jnp.where(jnp.all(jnp.isfinite(out)), out, 0.0)

    def body(acc: Any, xs: Any) -> tuple[Any, None]:
        sn, wsn = xs
        vals = jax.vmap(lambda tn: at(sn, tn))(t)
        return acc + wsn * jnp.tensordot(wt, vals, axes=1), None

    acc, _ = jax.lax.scan(body, jnp.zeros((B1, B2), J.dtype), (s, ws))
    return (B1 * B2) ** beta / math.gamma(beta) ** 2 * acc


_cross_jit = jax.jit(_cross_one, static_argnames=("hom", "nodes"))


@in_float64
def batchnorm_cross_nngp(
    cov11: Any, cov22: Any, cross: Any, activation: Any = "relu", *, eps: Any = 0.0, nodes: int = CROSS_NODES
) -> Any:
    """K₁₂ = E[φ(BN(h₁)) φ(BN(h₂))ᵀ], each batch normalised with its own statistics (biased variance, ε).

    ``cov11`` (B₁, B₁), ``cov22`` (B₂, B₂), ``cross`` (B₁, B₂) = Cov(h₁, h₂); the joint matrix must be
    PSD, B₁, B₂ >= 4. Exact (2-D Laplace integral, see the module docstring) for positive-homogeneous
    φ; other φ raise :class:`ActivationError`. Returns a (B₁, B₂) array.
    """
    cov11, cov22, cross = _as_float(cov11), _as_float(cov22), _as_float(cross)
    _check_cov(cov11, "cov11")
    _check_cov(cov22, "cov22")
    _check_eps(eps)
    if cross.shape != (cov11.shape[-1], cov22.shape[-1]):
        raise KernelError(f"cross must have shape (B1, B2) = {(cov11.shape[-1], cov22.shape[-1])}, got {cross.shape}")
    if all(_is_concrete(a) for a in (cov11, cov22, cross)):
        joint = np.block([[np.asarray(cov11), np.asarray(cross)], [np.asarray(cross).T, np.asarray(cov22)]])
        if np.linalg.eigvalsh(joint)[0] < -1e-10 * np.max(np.abs(joint)):
            raise KernelError("the joint covariance [[cov11, cross], [crossᵀ, cov22]] is not positive semidefinite")
    hom = homogeneous(activation)
    if hom is None or hom.alpha <= 0:
        raise ActivationError(
            f"no exact cross-batch kernel for {activation!r}: it takes positive-homogeneous φ "
            "(identity, relu, leaky_relu(a), alpha_relu(α))"
        )
    return _cross_jit(cov11, cov22, cross, jnp.asarray(eps, cov11.dtype), hom, nodes)
