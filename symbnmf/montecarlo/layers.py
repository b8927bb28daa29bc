"""JAX building blocks of the Monte Carlo networks (private; imported lazily by ``montecarlo``).

Conventions (docs/theory.md): a layer is h = W x + b with W_ij ~ N(0, σ_w²/N), σ_w² = 1, then
x' = φ(γ BN(h) + β) with BN per unit (row of the N×B matrix) across the batch,
BN(h) = (h - mean)/sqrt(var + ε); at ε = 0 this is n(Gh) = √B Gh/‖Gh‖.

Two ways to draw a Gaussian layer, equal in law for the forward-then-backward pass:

* **dense**: draw the N×N matrix W (also orthogonal and Rademacher laws), h = W x + b.
* **exact O(N·B²) sampler** (:func:`gaussian_layer`, docs/theory.md "Simulating finite-width
  networks").  Lemma: conditioned on x and h = W x, a Gaussian W equals h x⁺ + W̃ (I − P_x)
  with W̃ an independent copy (P_x the projection on the columns of x).  Hence, in law,
  h = Z₁ (xᵀx/N)^{1/2} and Wᵀg = x (xᵀx)⁺ hᵀg + (I − P_x) Z₂ (gᵀg/N)^{1/2}, with Z₁, Z₂
  independent N×B standard normal matrices.  The backward rule is a ``jax.custom_vjp``, so
  ``jax.grad`` of any loss of the network performs true backpropagation through the sampled
  W (not the gradient-independence assumption: the first term ties it to the forward pass).
  The bias is omitted there: a per-unit constant is removed exactly by BN's centering.
  Tested against the dense simulator in ``tests/test_montecarlo.py``.

Gradient *probes* (:func:`probe_sq`, :func:`probe_weight_sq`) are the identity in the forward
pass; their VJP passes the cotangent through unchanged and returns its squared norm (or the
squared Frobenius norm of the weight gradient δ xᵀ, = tr(δᵀδ xᵀx)) as the cotangent of a zero
dummy scalar.  So one ``jax.grad`` call yields the per-layer gradient norms without storing
per-layer gradient arrays (tested against direct ``jax.grad`` norms).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _rtol(dtype) -> float:
    return float(jnp.finfo(dtype).eps) ** 0.5


def psd_sqrt_pinv(S: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(S^{1/2}, S⁺) of a symmetric PSD B×B matrix by eigendecomposition.

    Eigenvalues below sqrt(machine eps) × the largest are treated as zero (xᵀx is singular for
    the identity activation, whose outputs sum to zero over the batch).
    """
    w, V = jnp.linalg.eigh(S)
    keep = w > _rtol(S.dtype) * w[-1]
    wp = jnp.where(keep, w, 1.0)
    Vt = V.T
    sq = (V * jnp.where(keep, jnp.sqrt(wp), 0.0)) @ Vt
    pinv = (V * jnp.where(keep, 1.0 / wp, 0.0)) @ Vt
    return sq, pinv


def psd_sqrt(S: jax.Array) -> jax.Array:
    """S^{1/2} of a symmetric PSD matrix.

    Eigenvalues below the rounding level 10·B·eps × the largest are set to 0: they are zero
    eigenvalues blurred by rounding (gᵀg is singular behind BN, whose backward projects out the
    batch mean), and their square roots, of order sqrt(eps), would otherwise inject rounding
    noise of relative size sqrt(eps) into the result.
    """
    w, V = jnp.linalg.eigh(S)
    tol = 10 * S.shape[-1] * float(jnp.finfo(S.dtype).eps) * w[-1]
    return (V * jnp.sqrt(jnp.where(w > tol, w, 0.0))) @ V.T


@jax.custom_vjp
def gaussian_layer(x: jax.Array, key: jax.Array) -> jax.Array:
    """h = W x for a fresh W ~ N(0, 1/N) (N×N), sampled exactly in O(N·B²) (see module doc).

    ``x``: N×B input; ``key``: a PRNG key; the forward uses its first split (Z₁), the backward
    rule its second (Z₂).  Differentiable in ``x`` through the exact conditional law of Wᵀ.
    """
    h, _ = _gaussian_fwd(x, key)
    return h


def _gaussian_fwd(x, key):
    N = x.shape[0]
    sq, pinv = psd_sqrt_pinv(x.T @ x / N)
    k1, k2 = jax.random.split(key)
    h = jax.random.normal(k1, x.shape, x.dtype) @ sq
    return h, (x, h, pinv, k2)


def _gaussian_bwd(res, g):
    x, h, pinv, k2 = res
    N = x.shape[0]
    zm = jax.random.normal(k2, x.shape, x.dtype) @ psd_sqrt(g.T @ g / N)
    c = h.T @ g - x.T @ zm
    return zm + x @ (pinv @ c / N), None


gaussian_layer.defvjp(_gaussian_fwd, _gaussian_bwd)


WEIGHT_LAWS = ("gaussian", "orthogonal", "rademacher")


def dense_weights(key: jax.Array, N: int, law: str, dtype) -> jax.Array:
    """An N×N weight matrix with i.i.d. entries of variance 1/N (or Haar orthogonal)."""
    if law == "gaussian":
        return jax.random.normal(key, (N, N), dtype) / jnp.sqrt(jnp.asarray(N, dtype))
    if law == "rademacher":
        return jax.random.rademacher(key, (N, N), dtype) / jnp.sqrt(jnp.asarray(N, dtype))
    if law == "orthogonal":
        q, r = jnp.linalg.qr(jax.random.normal(key, (N, N), dtype))
        return q * jnp.sign(jnp.diagonal(r))[None, :]
    raise ValueError(law)  # validated upstream


def dense_layer(x: jax.Array, key: jax.Array, law: str, sigma_b: float) -> jax.Array:
    """h = W x + b with a dense W of the given law and b ~ N(0, σ_b²) per unit."""
    N = x.shape[0]
    kw, kb = jax.random.split(key)
    h = dense_weights(kw, N, law, x.dtype) @ x
    if sigma_b:
        h = h + sigma_b * jax.random.normal(kb, (N, 1), x.dtype)
    return h


def batch_norm(h: jax.Array, gamma: float, beta: float, eps: float) -> jax.Array:
    """γ (h - mean)/sqrt(var + ε) + β per row (unit), statistics across the batch (columns)."""
    c = h - h.mean(axis=1, keepdims=True)
    return gamma * c / jnp.sqrt((c * c).mean(axis=1, keepdims=True) + eps) + beta


@jax.custom_vjp
def probe_sq(x: jax.Array, dummy: jax.Array) -> jax.Array:
    """Identity in ``x``; its VJP reports ‖cotangent‖² as the cotangent of the scalar ``dummy``."""
    return x


def _probe_sq_fwd(x, dummy):
    return x, None


def _probe_sq_bwd(_, g):
    return g, jnp.sum(g * g)


probe_sq.defvjp(_probe_sq_fwd, _probe_sq_bwd)


@jax.custom_vjp
def probe_weight_sq(h: jax.Array, x: jax.Array, dummy: jax.Array) -> jax.Array:
    """Identity in ``h = W x + b``; its VJP reports ‖∂loss/∂W‖_F² = tr(δᵀδ xᵀx) (δ = ∂loss/∂h).

    The cotangent it returns for ``x`` is zero: the true x-gradient flows through the layer.
    """
    return h


def _probe_w_fwd(h, x, dummy):
    return h, x


def _probe_w_bwd(x, d):
    return d, jnp.zeros_like(x), jnp.sum((d.T @ d) * (x.T @ x))


probe_weight_sq.defvjp(_probe_w_fwd, _probe_w_bwd)


def initial_batch(key: jax.Array, N: int, B: int, kind: str, dtype) -> jax.Array:
    """N×B input batch.

    * ``"fixed_point"``: xᵀx/N = G exactly, so the first layer's pre-activations have rows
      N(0, G) and BN's output is uniform on the sphere: the network starts at the BSB1 point.
    * ``"iid"``: i.i.d. standard normal entries.
    * ``"structured"``: rows ~ N(0, D C D) with unequal scales D = diag(linspace(0.5, 2)) and
      AR(1) correlations C_ij = 0.8^|i-j|: far from BSB1 on both the L and the M piece
      (used to watch the forward convergence, Fig. 1c).
    """
    z = jax.random.normal(key, (N, B), dtype)
    if kind == "iid":
        return z
    if kind == "fixed_point":
        zc = z - z.mean(axis=1, keepdims=True)
        _, pinv = psd_sqrt_pinv(zc.T @ zc)
        return jnp.sqrt(jnp.asarray(N, dtype)) * zc @ psd_sqrt(pinv)
    if kind == "structured":
        i = jnp.arange(B)
        C = 0.8 ** jnp.abs(i[:, None] - i[None, :]).astype(dtype)
        d = jnp.linspace(0.5, 2.0, B, dtype=dtype)
        return z @ psd_sqrt(d[:, None] * C * d[None, :])
    raise ValueError(kind)


INITS = ("fixed_point", "iid", "structured")

Layer = Callable[[jax.Array, jax.Array], jax.Array]
