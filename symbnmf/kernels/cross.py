"""Cross-batch BN kernels: two batches, each normalised with its own statistics (issue 11, item 3).

(h₁, h₂) jointly Gaussian over two batches of sizes B₁, B₂ (B_k >= 4), with covariances Σ₁₁, Σ₂₂ and
cross-covariance C = Cov(h₁, h₂) (B₁ × B₂). Each batch is normalised by its own statistics,

    BN(h_k) = √B_k · z_k / n_k,   z_k = G_k h_k,   n_k² = ‖z_k‖² + B_k ε,   G_k = I − 11ᵀ/B_k,

and the kernels are the NNGP cross block K₁₂ = E[φ(BN h₁) φ(BN h₂)ᵀ] and the NTK transport
E[J₁ Θ₁₂ J₂ᵀ], J_k = ∂φ(BN h_k)/∂h_k (B_k × B_k), Θ₁₂ the pre-activation NTK between the batches.

**Laplace method in two variables.** For φ positive-homogeneous of degree α, φ(BN h_k) =
B_k^{α/2} n_k^{−α} φ(z_k). Write n^{−2β} = Γ(β)⁻¹ ∫₀^∞ s^{β−1} e^{−s n²} ds once for each batch
(variable s for batch 1, t for batch 2). The joint vector z = (z₁, z₂) ~ N(0, Σ_J), Σ_J =
[[G₁Σ₁₁G₁, G₁CG₂], [G₂CᵀG₁, G₂Σ₂₂G₂]], and e^{−s‖z₁‖² − t‖z₂‖²} tilts it: with D = diag(s·1_{B₁}, t·1_{B₂}),

    E[n₁^{−2β₁} n₂^{−2β₂} f(z)] = ∫∫ s^{β₁−1} t^{β₂−1} / (Γ(β₁)Γ(β₂)) e^{−(sB₁ + tB₂)ε}
                                   det(I + 2DΣ_J)^{−1/2} E[f(z_st)] ds dt,
    z_st ~ N(0, S),   S = Σ_J (I + 2DΣ_J)⁻¹ = [[S₁₁, S₁₂], [S₁₂ᵀ, S₂₂]].

NNGP: K₁₂ = (B₁B₂)^{α/2}/Γ(α/2)² ∫∫ s^{α/2−1} t^{α/2−1} e^{−(sB₁+tB₂)ε} det^{−1/2} V_φ(S) ds dt, where
V_φ,ij = E[φ(z₁ᵢ) φ(z₂ⱼ)] is the entrywise Gaussian kernel at variances S₁₁,ᵢᵢ, S₂₂,ⱼⱼ, covariance S₁₂,ᵢⱼ.

**NTK (α = 1).** J_k = √B_k [n_k⁻¹ D_k − n_k⁻³ φ(z_k) z_kᵀ] G_k with D_k = diag φ'(z_k), so with Θ̃ = G₁Θ₁₂G₂

    J₁Θ₁₂J₂ᵀ = √(B₁B₂) [ n₁⁻¹n₂⁻¹ D₁Θ̃D₂ − n₁⁻³n₂⁻¹ φ₁ z₁ᵀΘ̃D₂ − n₁⁻¹n₂⁻³ D₁Θ̃z₂ φ₂ᵀ + n₁⁻³n₂⁻³ (z₁ᵀΘ̃z₂) φ₁φ₂ᵀ ].

n⁻¹ and n⁻³ are the β = ½ and β = 3/2 representations; since Γ(3/2) = ½Γ(½), n⁻³ carries the extra
factor 2s (or 2t) against n⁻¹'s weight s^{−½}/Γ(½). The Gaussian moments of z_st follow from Stein's
lemma E[z_a g(z)] = Σ_c S_ac E[∂_c g] (once for the middle terms, twice for the last one), in terms of
the entrywise kernels of S

    V_ij = E[φ(z₁ᵢ)φ(z₂ⱼ)],  W_ij = E[φ'(z₁ᵢ)φ'(z₂ⱼ)],
    Δ_ij = E[φ''(z₁ᵢ)φ(z₂ⱼ)] = (c₊+c₋)²/(2π) √(S₂₂,ⱼⱼ/S₁₁,ᵢᵢ) √(1−ρᵢⱼ²),   Δ̄_ij = E[φ(z₁ᵢ)φ''(z₂ⱼ)] (i ↔ j roles),

(φ'' = (c₊ + c₋)δ, ρ the correlation of z₁ᵢ and z₂ⱼ). Collected:

    E[J₁Θ₁₂J₂ᵀ] = √(B₁B₂)/π ∫∫ (st)^{−½} e^{−(sB₁+tB₂)ε} det^{−1/2} T(s, t) ds dt,
    T = Z ⊙ W + g_i Δ_ij + ḡ_j Δ̄_ij + 4st ⟨Θ̃, S₁₂⟩ V,
    Z = (I − 2sS₁₁) Θ̃ (I − 2tS₂₂) + 4st S₁₂Θ̃ᵀS₁₂,
    g = −2t diag((I − 2sS₁₁) Θ̃ S₁₂ᵀ),   ḡ = −2s diag(S₁₂ᵀ Θ̃ (I − 2tS₂₂)).

With h₂ = h₁ (C = Σ₁₁ = Σ₂₂) it is the one-batch transport of :mod:`symbnmf.kernels.nngp`
(∫∫ (st)^{−½} f(s + t) ds dt = π ∫ f(u) du); the tests check that to ~1e-12.

**Evaluation.** Factor Σ_J = R Rᵀ with R = [R₁; R₂] = [[L₁, 0], [K, L₂]]: Σ_J,11 = Q₁ diag(κ) Q₁ᵀ
(one ``eigh``), L₁ = Q₁ diag(√κ), K = Σ_J,21 Q₁ diag(κ^{−½}), L₂L₂ᵀ = Σ_J,22 − KKᵀ (batch 2 given batch 1,
one ``eigh``). By the push-through identity S = R (I + 2sP₁ + 2tP₂)⁻¹ Rᵀ and det(I + 2DΣ_J) =
det(I + 2sP₁ + 2tP₂), P_k = R_kᵀR_k, and P₁ = diag(κ, 0) exactly, so (I + 2sP₁)^{−½} is the column
scaling a = (1 + 2sκ)^{−½}. With (R₂ diag a)ᵀ(R₂ diag a) = U diag(μ) Uᵀ (one ``eigh`` per s-node),
F = R diag(a) U gives S(s, t) = F diag(1/(1 + 2tμ)) Fᵀ and log det = Σ log(1 + 2sκ) + Σ log(1 + 2tμ) for
every t at once: batched matrix products instead of one Cholesky per node pair, and every term of S
stays below 1/(2s) (batch 1) and 1/(2t) (batch 2) in round-off too, so I − 2sS₁₁ keeps full accuracy
far in the tails. (The NNGP needs only diag S₁₁, diag S₂₂ and S₁₂, a B₁ × B₂ product per node.)
Derivatives in Σ_J bypass the eigenvectors: dS = Aᵀ dΣ_J A, A = I − 2DS (a custom JVP), so grad works.

Each variable takes the double-exponential rule of :mod:`symbnmf.kernels.nngp` fitted to its own
batch's spectrum (product rule; β = α/2 on the left, and for the NTK one extra power s^{½} on the
right, where T stays O(1) while V_φ falls like (st)^{−α/2}). The node count per variable goes up the
ladder 65 (skipped for B₁ + B₂ <= 16, where compiling costs more than evaluating), 129, 257, 513 until
the product half rule (every other node in both variables) agrees with the full rule to
:data:`ACCEPT` relative. The trapezoid rule converges geometrically, so the full rule is then far more
accurate than the half: measured against 1025-node rules on random, low-rank (rank 3), ill-conditioned
(κ = 1e10) and duplicated joint covariances, B = 4 … 32, ε ∈ {0, 1e-3, 1}, the accepted full rule was
within 3e-13 relative (mostly 3e-14). The hard cases are ε = 0 with a low-rank or duplicated Σ_J
(513 nodes); random Σ_J take 65 or 129.

Duplicated samples (both batches the same, as in ``kernel_fn(x, x)``) make tilted correlations
exactly ±1, where W and Δ have infinite slope: K is built as L₁ + (Σ_J,21 − Σ_J,11)Q₁ diag(κ^{−½}) when
B₁ = B₂ (equal to the formula above in exact arithmetic), so copies give bitwise equal rows of R, and
|ρ| within 8 ulps of 1 is taken as 1. Otherwise a round-off 1 − ρ ~ 1e-16 would cost ~1e-9 in the NTK.
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
    Homogeneous,
    KernelError,
    MonteCarloKernel,
    _as_float,
    _asin,
    _check_cov,
    _check_eps,
    _is_concrete,
    _k_alpha,
    _phi_jax,
    _s_rule,
    _spectrum,
    homogeneous,
    in_float64,
)

#: Nodes per variable of the product rule under ``jit`` (traced inputs) and the largest adaptive count.
CROSS_NODES = 129
#: Node counts tried per variable, in order, for concrete inputs.
_NODE_LADDER = (65, 129, 257, 513)
#: Largest relative difference between the full and the half product rule that accepts the full rule
#: (measured against 1025-node rules: the accepted full rule was within 3e-13 relative, see the module docstring).
ACCEPT = 3e-9
#: Joint sizes B₁ + B₂ up to which the ladder starts at 129 nodes.
_SMALL = 16
#: Eigenvalues below this fraction of the largest are round-off of a singular matrix: set to zero.
_ZERO_EIG = 1e-13
#: Elements of the (s-chunk, t-nodes, n, n) intermediates alive at once.
_CHUNK_ELEMENTS = 1 << 21
_INV2PI = 1.0 / (2.0 * math.pi)
#: Tilted correlations with 1 − |ρ| below this are taken as ±1 (8 ulps of 1).
_SNAP = 8.0 * float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# Gaussian kernels between two sets of variables
# ---------------------------------------------------------------------------------------------


def _cross_gaussian(a: Any, b: Any, c: Any, hom: Homogeneous, derivatives: bool = False) -> tuple[Any, ...]:
    """Entrywise kernels between u (variances ``a``, (..., B₁)) and v (``b``, (..., B₂)), Cov(u_i, v_j) = c_ij.

    V = E[φ(u_i) φ(v_j)]; with ``derivatives`` (α = 1) also W = E[φ'(u_i)φ'(v_j)], Δ = E[φ''(u_i)φ(v_j)] and
    Δ̄ = E[φ(u_i)φ''(v_j)]. |ρ| = 1 takes the limits (no infinite slopes under differentiation); zero variances
    give zeros (φ(0) = 0).
    """
    ok = (a[..., :, None] > 0) & (b[..., None, :] > 0)
    sa = jnp.sqrt(jnp.where(a > 0, a, 1.0))[..., :, None]
    sb = jnp.sqrt(jnp.where(b > 0, b, 1.0))[..., None, :]
    scale = sa * sb
    rho = jnp.where(ok, jnp.clip(c / scale, -1.0, 1.0), 0.0)
    # |ρ| within a few ulps of 1 is 1 (a duplicated sample): W and Δ have infinite slope there, and a
    # round-off 1 − |ρ| ~ 1e-16 would cost ~1e-9 in the NTK; snapping changes them by no more than that
    inner = jnp.abs(rho) < 1.0 - _SNAP
    r = jnp.where(inner, rho, 0.0)
    al, cp, cm = hom.alpha, hom.cp, hom.cm
    same, cross = cp * cp + cm * cm, 2.0 * cp * cm
    k_one = 2.0**al * math.gamma(al + 0.5) / (2.0 * math.sqrt(math.pi))  # E[u₊^{2α}]; k_α(−1) = 0
    edge = jnp.where(rho > 0, same, cross) * k_one  # ρ = ±1
    if al == 1.0:
        ang = 0.5 * jnp.pi + _asin(r)  # π − arccos ρ
        root = jnp.sqrt(1.0 - r * r)
        Vn = (same + cross) * (root + ang * r) * _INV2PI - 0.5 * cross * r
        V = scale * jnp.where(inner, Vn, edge)
    else:
        Vn = same * _k_alpha(al, r) + cross * _k_alpha(al, -r)
        V = scale**al * jnp.where(inner, Vn, edge)
    V = jnp.where(ok, V, 0.0)
    if not derivatives:
        return (V,)
    W = jnp.where(inner, (same + cross) * ang * _INV2PI, jnp.where(rho > 0, 0.5 * (same + cross), 0.0)) - 0.5 * cross
    W = jnp.where(ok, W, 0.0)
    jump = (cp + cm) ** 2 * _INV2PI
    root = jnp.where(inner, root, 0.0)
    delta = jnp.where(ok, jump * (sb / sa) * root, 0.0)
    delta_bar = jnp.where(ok, jump * (sa / sb) * root, 0.0)
    return V, W, delta, delta_bar


# ---------------------------------------------------------------------------------------------
# The tilted joint covariance S(s, t)
# ---------------------------------------------------------------------------------------------


def _joint(cov11: Any, cov22: Any, cross: Any) -> Any:
    """Σ_J: the covariance of (G₁h₁, G₂h₂), symmetrised."""
    B1, B2 = cov11.shape[-1], cov22.shape[-1]
    G1 = jnp.eye(B1, dtype=cov11.dtype) - 1.0 / B1
    G2 = jnp.eye(B2, dtype=cov11.dtype) - 1.0 / B2
    J = jnp.block([[G1 @ cov11 @ G1, G1 @ cross @ G2], [G2 @ cross.T @ G1, G2 @ cov22 @ G2]])
    return 0.5 * (J + J.T)


def _factors(SJ: Any, B1: int) -> tuple[Any, Any, Any]:
    """(R₁, R₂, κ) with Σ_J = R Rᵀ, R = [R₁; R₂] = [[L₁, 0], [K, L₂]] (of stop_gradient(Σ_J)), so that
    R₁ᵀR₁ = diag(κ, 0) exactly: L₁ = Q₁ diag(√κ) from Σ_J,11 = Q₁ diag(κ) Q₁ᵀ, K = Σ_J,21 Q₁ diag(κ^{−½}),
    L₂ L₂ᵀ = Σ_J,22 − K Kᵀ (the conditional covariance of batch 2). Round-off eigenvalues (below
    ``_ZERO_EIG`` of the largest) are exact zeros, so every column is damped consistently in s and t."""
    SJ = jax.lax.stop_gradient(SJ)
    A11, A21, A22 = SJ[:B1, :B1], SJ[B1:, :B1], SJ[B1:, B1:]
    kappa, Q1 = jnp.linalg.eigh(A11)
    keep = kappa > _ZERO_EIG * jnp.max(jnp.abs(kappa))
    kappa = jnp.where(keep, kappa, 0.0)
    L1 = Q1 * jnp.sqrt(kappa)
    inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, kappa, 1.0)), 0.0)
    if A21.shape == A11.shape:
        # K = L₁ + (Σ_J,21 − Σ_J,11) Q₁ κ^{−½} (equal in exact arithmetic): two copies of one batch then give
        # bitwise equal rows of R, so the tilted correlations of duplicated samples are exactly 1 (W and Δ have
        # infinite slope at ρ = 1: a round-off 1 − ρ ~ 1e-16 would cost ~1e-9 in the NTK)
        K = L1 + ((A21 - A11) @ Q1) * inv
    else:
        K = (A21 @ Q1) * inv
    cond = A22 - K @ K.T
    lam2, Q2 = jnp.linalg.eigh(0.5 * (cond + cond.T))
    scale = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(A22))), jnp.max(jnp.abs(kappa)))
    lam2 = jnp.where(lam2 > _ZERO_EIG * scale, lam2, 0.0)
    L2 = Q2 * jnp.sqrt(lam2)
    B2 = A22.shape[0]
    R1 = jnp.concatenate([L1, jnp.zeros((B1, B2), SJ.dtype)], axis=1)
    R2 = jnp.concatenate([K, L2], axis=1)
    return R1, R2, jnp.concatenate([kappa, jnp.zeros((B2,), SJ.dtype)])


def _tilt_factor(R1: Any, R2: Any, kappa: Any, s: Any, t: Any) -> tuple[Any, Any, Any, Any]:
    """(F₁, F₂, w, log det) with S(s, t) = F diag(w) Fᵀ, F = [F₁; F₂], w (n_t, n), log det (n_t,), for one
    s and the vector t (module docstring).

    With R₁ᵀR₁ = diag(κ), (I + 2sP₁)^{−½} is the column scaling a = (1 + 2sκ)^{−½}; F = R diag(a) U with
    U the eigenvectors of (R₂ diag(a))ᵀ(R₂ diag(a)), and μ_k = ‖F₂,k‖² (its eigenvalues, taken as the
    column norms: non-negative, and each term F_k F_kᵀ/(1 + 2tμ_k) of S₂₂ stays below 1/(2t) in round-off too).
    """
    a = 1.0 / jnp.sqrt(1.0 + 2.0 * s * kappa)
    RA2 = R2 * a
    _, U = jnp.linalg.eigh(RA2.T @ RA2)
    F1, F2 = (R1 * a) @ U, RA2 @ U
    mu = jnp.sum(F2 * F2, axis=0)
    w = 1.0 / (1.0 + 2.0 * t[:, None] * mu)
    logdet = jnp.sum(jnp.log1p(2.0 * s * kappa)) + jnp.sum(jnp.log1p(2.0 * t[:, None] * mu), axis=-1)
    return F1, F2, w, logdet


def _tilt_primal(R1: Any, R2: Any, kappa: Any, s: Any, t: Any, full: bool) -> tuple[Any, Any, Any, Any]:
    """(S₁₁, S₂₂, S₁₂, log det) with ``full``, else (diag S₁₁, diag S₂₂, S₁₂, log det): S at (s, t) for all t."""
    F1, F2, w, logdet = _tilt_factor(R1, R2, kappa, s, t)
    F1w = F1 * w[:, None, :]
    S12 = F1w @ F2.T
    if full:
        return F1w @ F1.T, (F2 * w[:, None, :]) @ F2.T, S12, logdet
    return w @ (F1 * F1).T, w @ (F2 * F2).T, S12, logdet


@partial(jax.custom_jvp, nondiff_argnums=(6,))
def _tilt(SJ: Any, R1: Any, R2: Any, kappa: Any, s: Any, t: Any, full: bool) -> tuple[Any, Any, Any, Any]:
    """:func:`_tilt_primal` with the exact derivative in Σ_J (the factors are of stop_gradient(Σ_J)):
    dS = Aᵀ dΣ_J A, d log det = 2 tr(A D dΣ_J), A = (I + 2DΣ_J)⁻¹ = I − 2DS (no eigenvalue gaps needed)."""
    return _tilt_primal(R1, R2, kappa, s, t, full)


@_tilt.defjvp
def _tilt_jvp(full: bool, primals: Any, tangents: Any) -> tuple[Any, Any]:
    SJ, R1, R2, kappa, s, t = primals
    dSJ = tangents[0]
    out = _tilt_primal(R1, R2, kappa, s, t, full)
    F1, F2, w, _ = _tilt_factor(R1, R2, kappa, s, t)
    F = jnp.concatenate([F1, F2])
    S = (F * w[:, None, :]) @ F.T
    B1, n = R1.shape[0], SJ.shape[-1]
    d = jnp.concatenate([jnp.broadcast_to(s, (t.shape[0], B1)), jnp.broadcast_to(t[:, None], (t.shape[0], n - B1))], 1)
    A = jnp.eye(n, dtype=S.dtype) - 2.0 * d[:, :, None] * S
    dS = jnp.einsum("kai,ab,kbj->kij", A, dSJ, A)
    dlog = 2.0 * jnp.einsum("kij,kj,ji->k", A, d, dSJ)
    d11, d22, d12 = dS[:, :B1, :B1], dS[:, B1:, B1:], dS[:, :B1, B1:]
    if not full:
        d11, d22 = jnp.diagonal(d11, axis1=-2, axis2=-1), jnp.diagonal(d22, axis1=-2, axis2=-1)
    return out, (d11, d22, d12, dlog)


# ---------------------------------------------------------------------------------------------
# The product rule
# ---------------------------------------------------------------------------------------------


def _cross_one(
    cov11: Any, cov22: Any, cross: Any, theta: Any, eps: Any, hom: Homogeneous, nodes: int, ntk: bool
) -> tuple[Any, ...]:
    """(V, T, V_half, T_half) with the NTK (α = 1), else (V, V_half): full and half product rules."""
    B1, B2 = cov11.shape[-1], cov22.shape[-1]
    SJ = _joint(cov11, cov22, cross)
    R1, R2, kappa = _factors(SJ, B1)
    beta = 0.5 * hom.alpha
    tail = 0.5 if ntk else 0.0
    _, lam1, _ = _spectrum(cov11)
    _, lam2, _ = _spectrum(cov22)
    rule = partial(_s_rule, nodes=nodes, beta_min=beta, tail=tail)
    if B1 == B2:  # one copy of the rule in the compiled program
        (s, t), (ws, wt), (hs, ht) = jax.vmap(rule)(jnp.stack([lam1, lam2]), jnp.stack([B1 * eps, B2 * eps]))
    else:
        (s, ws, hs), (t, wt, ht) = rule(lam1, B1 * eps), rule(lam2, B2 * eps)
    s, ws, hs, t, wt, ht = jax.lax.stop_gradient((s, ws, hs, t, wt, ht))
    if ntk:
        G1 = jnp.eye(B1, dtype=cov11.dtype) - 1.0 / B1
        G2 = jnp.eye(B2, dtype=cov11.dtype) - 1.0 / B2
        Th = G1 @ theta @ G2

    def at(sn: Any) -> tuple[Any, ...]:
        """Σ over t of the integrand at one s (full and half rules in t)."""
        S11, S22, S12, logdet = _tilt(SJ, R1, R2, kappa, sn, t, ntk)
        if ntk:
            a, b = jnp.diagonal(S11, axis1=-2, axis2=-1), jnp.diagonal(S22, axis1=-2, axis2=-1)
        else:
            a, b = S11, S22
        c = jnp.exp(-(sn * B1 + t * B2) * eps - 0.5 * logdet) * (sn * t) ** (beta - 1.0)
        cw, ch = c * wt, c * ht
        if not ntk:
            (Vg,) = _cross_gaussian(a, b, S12, hom)
            return jnp.einsum("k,kij->ij", cw, Vg), jnp.einsum("k,kij->ij", ch, Vg)
        Vg, W, De, Db = _cross_gaussian(a, b, S12, hom, derivatives=True)
        tt = t[:, None, None]
        P = Th - 2.0 * sn * (S11 @ Th)  # (I − 2sS₁₁)Θ̃
        Q = Th - 2.0 * tt * (Th @ S22)  # Θ̃(I − 2tS₂₂)
        Z = P - 2.0 * tt * (P @ S22) + 4.0 * sn * tt * (S12 @ jnp.swapaxes(Th, -1, -2) @ S12)
        g = -2.0 * t[:, None] * jnp.sum(P * S12, axis=-1)
        gb = -2.0 * sn * jnp.sum(S12 * Q, axis=-2)
        tr = jnp.sum(Th * S12, axis=(-2, -1))
        T = Z * W + g[:, :, None] * De + gb[:, None, :] * Db + (4.0 * sn * t * tr)[:, None, None] * Vg
        red = lambda w, x: jnp.einsum("k,kij->ij", w, x)
        return red(cw, Vg), red(cw, T), red(ch, Vg), red(ch, T)

    def chunk(sc: Any, wsc: Any, hsc: Any) -> tuple[Any, ...]:
        vals = jax.vmap(at)(sc)
        k = len(vals) // 2
        return tuple(jnp.einsum("k,kij->ij", w, v) for w, vs in ((wsc, vals[:k]), (hsc, vals[k:])) for v in vs)

    # s in chunks of about _CHUNK_ELEMENTS intermediates, padded with zero-weight nodes to whole chunks
    n, ns = B1 + B2, s.shape[0]
    size = max(1, min(ns, _CHUNK_ELEMENTS // (t.shape[0] * (n * n * 6 if ntk else n * (B1 + B2 + 4)))))
    k = -(-ns // size)
    if k == 1:
        out = chunk(s, ws, hs)
    else:
        pad = k * size - ns
        sp = jnp.concatenate([s, jnp.broadcast_to(s[:1], (pad,))]).reshape(k, size)
        wp, hp = (jnp.concatenate([w, jnp.zeros((pad,), w.dtype)]).reshape(k, size) for w in (ws, hs))

        def body(acc: Any, xs: Any) -> tuple[Any, None]:
            return tuple(a + b for a, b in zip(acc, chunk(*xs))), None

        out, _ = jax.lax.scan(body, chunk(sp[0], wp[0], hp[0]), (sp[1:], wp[1:], hp[1:]))
    c = math.sqrt(B1 * B2) / math.pi if ntk else (B1 * B2) ** beta / math.gamma(beta) ** 2
    return tuple(c * x for x in out)


_cross_jit = jax.jit(_cross_one, static_argnames=("hom", "nodes", "ntk"))


def _rel(a: Any, b: Any) -> float:
    scale = float(np.max(np.abs(a)))
    return float(np.max(np.abs(a - b))) / scale if scale > 0 else 0.0


def _evaluate(args: tuple[Any, ...], hom: Homogeneous, nodes: int | None, ntk: bool) -> tuple[Any, ...]:
    """Full-rule results (V,) or (V, T): at ``nodes``, or the first ladder count whose half rule agrees."""
    if nodes is not None or not all(_is_concrete(x) for x in args):
        out = _cross_jit(*args, hom=hom, nodes=nodes or CROSS_NODES, ntk=ntk)
        return out[:2] if ntk else out[:1]
    k = 2 if ntk else 1
    B1, B2 = args[0].shape[-1], args[1].shape[-1]
    # small batches: compiling a program costs more than evaluating 129² nodes, so skip the 65 rung
    ladder = _NODE_LADDER[1:] if B1 + B2 <= _SMALL else _NODE_LADDER
    for n in ladder:
        out = _cross_jit(*args, hom=hom, nodes=n, ntk=ntk)
        full = [np.asarray(x) for x in out[:k]]
        err = max(_rel(f, np.asarray(h)) for f, h in zip(full, out[k:]))
        if err <= ACCEPT:
            break
    return tuple(out[:k])


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _check_pair(cov11: Any, cov22: Any, cross: Any, eps: Any, nodes: int | None) -> None:
    _check_cov(cov11, "cov11")
    _check_cov(cov22, "cov22")
    _check_eps(eps)
    if cov11.ndim != 2 or cov22.ndim != 2:
        raise KernelError(
            f"cov11 and cov22 must be single (B, B) matrices, got shapes {cov11.shape}, {cov22.shape}; vmap for batches"
        )
    if cross.shape != (cov11.shape[-1], cov22.shape[-1]):
        raise KernelError(f"cross must have shape (B1, B2) = {(cov11.shape[-1], cov22.shape[-1])}, got {cross.shape}")
    if nodes is not None and (not isinstance(nodes, int) or nodes < 9 or nodes % 2 == 0):
        raise KernelError(f"nodes must be an odd integer >= 9 or None, got {nodes!r}")
    if all(_is_concrete(a) for a in (cov11, cov22, cross)):
        c = np.asarray(cross, dtype=np.float64)
        if not np.all(np.isfinite(c)):
            raise KernelError("cross contains NaN or inf; give a finite cross-covariance")
        joint = np.block([[np.asarray(cov11), c], [c.T, np.asarray(cov22)]])
        if np.linalg.eigvalsh(joint)[0] < -1e-10 * np.max(np.abs(joint)):
            raise KernelError("the joint covariance [[cov11, cross], [crossᵀ, cov22]] is not positive semidefinite")


#: Monte Carlo draws per chunk (memory: a few (chunk, n, n) arrays).
_MC_CHUNK_ELEMENTS = 1 << 22


@partial(jax.jit, static_argnames=("B1", "phi", "chunk", "chunks"))
def _joint_mc(
    joint: Any, theta: Any, eps: Any, key: Any, B1: int, phi: Any, chunk: int, chunks: int
) -> tuple[Any, ...]:
    n = joint.shape[-1]
    lam, Q = jnp.linalg.eigh(0.5 * (joint + joint.T))
    root = Q * jnp.sqrt(jnp.clip(lam, 0.0, None))
    blocks = ((0, B1), (B1, n))
    G = jax.scipy.linalg.block_diag(*[jnp.eye(b - a, dtype=joint.dtype) - 1.0 / (b - a) for a, b in blocks])
    Th = G @ theta @ G
    dphi = lambda y: jax.jvp(phi, (y,), (jnp.ones_like(y),))[1]

    def draw(i: Any) -> tuple[Any, Any]:
        h = jax.random.normal(jax.random.fold_in(key, i), (chunk, n), joint.dtype) @ root.T
        fs, cs, us = [], [], []
        for a, b in blocks:
            g = h[:, a:b] - jnp.mean(h[:, a:b], axis=1, keepdims=True)
            norm = jnp.sqrt(jnp.sum(g * g, axis=1, keepdims=True) + (b - a) * eps)
            y = math.sqrt(b - a) * g / norm
            fs.append(phi(y))
            cs.append(math.sqrt(b - a) / norm * dphi(y))  # J = diag(c) (I − ẑẑᵀ) G, ẑ = z/n
            us.append(jnp.zeros((chunk, n), joint.dtype).at[:, a:b].set(g / norm))
        f, c = jnp.concatenate(fs, 1), jnp.concatenate(cs, 1)
        # (I − Σ_k u_k u_kᵀ) Θ̃ (I − Σ_l u_l u_lᵀ), one rank-one term at a time
        P = Th[None] - sum(u[:, :, None] * (u @ Th)[:, None, :] for u in us)
        P = P - sum((P @ u[:, :, None]) * u[:, None, :] for u in us)
        return f[:, :, None] * f[:, None, :], c[:, :, None] * P * c[:, None, :]

    def stats(x: Any) -> tuple[Any, Any]:
        m = jnp.mean(x, axis=0)
        return m, jnp.sum((x - m) ** 2, axis=0)

    def body(carry: Any, i: Any) -> tuple[Any, None]:
        k, out = carry
        new = [stats(x) for x in draw(i)]
        merged = []
        for (m, M2), (mb, M2b) in zip(out, new):  # Chan et al.'s pairwise update of mean and M2
            d = mb - m
            merged.append((m + d * chunk / (k + chunk), M2 + M2b + d * d * k * chunk / (k + chunk)))
        return (k + chunk, merged), None

    first = [stats(x) for x in draw(0)]
    (_, out), _ = jax.lax.scan(body, (chunk, first), jnp.arange(1, chunks))
    total = chunk * chunks
    return tuple(v for m, M2 in out for v in (m, jnp.sqrt(M2 / (total - 1) / total)))


_PHI: dict[str, Any] = {}


def _cached_phi(activation: Any) -> Any:
    """The JAX φ of ``activation``, one function object per bound expression (a static jit argument)."""
    import sympy as sp

    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    key = sp.srepr(act.bound_expr)
    if key not in _PHI:
        _PHI[key] = _phi_jax(act)
    return _PHI[key]


def _joint_monte_carlo(
    joint: Any, theta: Any, B1: int, activation: Any, eps: Any, key: Any, samples: int
) -> tuple[MonteCarloKernel, MonteCarloKernel]:
    """Joint NNGP and NTK transport over two batches stacked as (B₁ + B₂): seeded Monte Carlo.

    (h₁, h₂) ~ N(0, ``joint``); per draw φ(BN h_k) and J_k = √B_k/n_k diag(φ'(y_k)) (I − ẑ_kẑ_kᵀ) G_k
    (y_k = BN(h_k), ẑ_k = G_k h_k/n_k) for each batch with its own statistics; returns the means and
    standard errors of φφᵀ and J Θ Jᵀ (J = diag(J₁, J₂), ``theta`` the joint pre-activation NTK), over at
    least ``samples`` draws (a whole number of chunks).
    """
    if not isinstance(samples, int) or samples < 2:
        raise KernelError(f"samples must be an integer >= 2 for a standard error, got {samples!r}")
    n = joint.shape[-1]
    chunk = max(1, min(samples, _MC_CHUNK_ELEMENTS // (4 * n * n)))
    chunks = -(-samples // chunk)
    chunk = -(-samples // chunks)
    key = jax.random.PRNGKey(0) if key is None else key
    mv, sv, mt, st = _joint_mc(joint, theta, eps, key, B1, _cached_phi(activation), chunk, chunks)
    total = chunk * chunks
    return MonteCarloKernel(mv, sv, total), MonteCarloKernel(mt, st, total)


@in_float64
def batchnorm_cross_nngp(
    cov11: Any, cov22: Any, cross: Any, activation: Any = "relu", *, eps: Any = 0.0, nodes: int | None = None
) -> Any:
    """K₁₂ = E[φ(BN(h₁)) φ(BN(h₂))ᵀ], each batch normalised with its own statistics (biased variance, ε).

    ``cov11`` (B₁, B₁), ``cov22`` (B₂, B₂), ``cross`` (B₁, B₂) = Cov(h₁, h₂); the joint matrix must be
    PSD, B₁, B₂ >= 4. BN(h_k) = √B_k G_k h_k / (‖G_k h_k‖² + B_k ε)^{1/2}. Exact for positive-homogeneous
    φ of degree α (identity, relu, leaky_relu(a), alpha_relu(α)): the 2-D Laplace integral

        K₁₂ = (B₁B₂)^{α/2}/Γ(α/2)² ∫∫ (st)^{α/2−1} e^{−(sB₁+tB₂)ε} det(I + 2DΣ_J)^{−1/2} V_φ(S(s, t)) ds dt

    of the module docstring; other φ raise :class:`ActivationError` (use :func:`batchnorm_cross_ntk`
    with ``exact=False`` for Monte Carlo). ``nodes``: per-variable node count (None: adaptive, to about
    1e-13 relative). Returns a (B₁, B₂) array; jit and grad (in the covariances) work.
    """
    cov11, cov22, cross = _as_float(cov11), _as_float(cov22), _as_float(cross)
    _check_pair(cov11, cov22, cross, eps, nodes)
    hom = homogeneous(activation)
    if hom is None or hom.alpha <= 0:
        raise ActivationError(
            f"no exact cross-batch kernel for {activation!r}: it takes positive-homogeneous φ "
            "(identity, relu, leaky_relu(a), alpha_relu(α)); batchnorm_cross_ntk(..., exact=False) gives Monte Carlo"
        )
    theta = jnp.zeros(cross.shape, cross.dtype)
    (V,) = _evaluate((cov11, cov22, cross, theta, jnp.asarray(eps, cov11.dtype)), hom, nodes, ntk=False)
    return V


@in_float64
def batchnorm_cross_ntk(
    cov11: Any,
    cov22: Any,
    cross: Any,
    theta12: Any,
    activation: Any = "relu",
    *,
    eps: Any = 0.0,
    exact: bool | None = None,
    nodes: int | None = None,
    key: Any = None,
    samples: int = 100_000,
) -> tuple[Any, Any]:
    """(K₁₂, E[J₁ Θ₁₂ J₂ᵀ]): the NNGP and the NTK transport between two batches through BN + φ.

    J_k = ∂φ(BN(h_k))/∂h_k (B_k × B_k), each batch normalised with its own statistics (biased variance,
    ε), (h₁, h₂) jointly Gaussian with ``cov11`` (B₁, B₁), ``cov22`` (B₂, B₂), ``cross`` = Cov(h₁, h₂)
    (B₁, B₂); ``theta12`` (B₁, B₂) is the NTK between the two batches' pre-activations. The first
    output is :func:`batchnorm_cross_nngp`. For φ of degree 1 (identity, relu, leaky_relu(a)) exact:

        E[J₁Θ₁₂J₂ᵀ] = √(B₁B₂)/π ∫∫ (st)^{−½} e^{−(sB₁+tB₂)ε} det(I + 2DΣ_J)^{−1/2}
                      [Z⊙W + g_iΔ_ij + ḡ_jΔ̄_ij + 4st⟨Θ̃, S₁₂⟩V] ds dt

    (Laplace representation of each batch's norm, then Stein's lemma on the tilted Gaussian; the
    symbols are those of the module docstring), to about 1e-13 relative; ``nodes`` as in
    :func:`batchnorm_cross_nngp`; jit and grad work. Returns two (B₁, B₂) arrays. Other φ (or
    ``exact=False``): Monte Carlo over at least ``samples`` joint draws of (h₁, h₂) (``key``, default
    key 0; standard errors fall like 1/√samples), returned as two :class:`MonteCarloKernel`;
    ``exact=True`` raises :class:`ActivationError` when no exact path exists.
    """
    cov11, cov22, cross, theta12 = _as_float(cov11), _as_float(cov22), _as_float(cross), _as_float(theta12)
    _check_pair(cov11, cov22, cross, eps, nodes)
    if theta12.shape != cross.shape:
        raise KernelError(f"theta12 must have shape (B1, B2) = {cross.shape}, got {theta12.shape}")
    if _is_concrete(theta12) and not np.all(np.isfinite(np.asarray(theta12))):
        raise KernelError("theta12 contains NaN or inf; give a finite NTK")
    hom = homogeneous(activation)
    ok = hom is not None and hom.alpha == 1.0
    if exact and not ok:
        raise ActivationError(
            f"no exact cross-batch NTK for {activation!r} after BN: the exact path takes φ of degree 1 "
            "(identity, relu, leaky_relu(a)); pass exact=False for Monte Carlo"
        )
    eps_a = jnp.asarray(eps, cov11.dtype)
    if exact is False or not ok:
        B1 = cov11.shape[-1]
        joint = jnp.block([[cov11, cross], [cross.T, cov22]])
        zeros11, zeros22 = jnp.zeros_like(cov11), jnp.zeros_like(cov22)
        theta = jnp.block([[zeros11, theta12], [theta12.T, zeros22]])
        mv, mt = _joint_monte_carlo(joint, theta, B1, activation, eps_a, key, samples)
        cut = lambda m: MonteCarloKernel(m.mean[:B1, B1:], m.stderr[:B1, B1:], m.samples)
        return cut(mv), cut(mt)
    assert hom is not None
    V, T = _evaluate((cov11, cov22, cross, theta12, eps_a), hom, nodes, ntk=True)
    return V, T
