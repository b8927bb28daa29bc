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

Randomness is counter-based: every draw of a network is a *stream* of the network's key,
numbered by its purpose and layer (:func:`stream`: the input batch, the readout, the forward and
backward draws of layer l, its bias).  With JAX's default threefry PRNG, word j of stream s is
Threefry-2x32 of (key; s, j) and both 32-bit outputs of each block are used
(:func:`random_bits`), where ``jax.random.normal`` hashes one block per float32 and XORs its two
words, and no per-layer key splitting is needed: ~25% less work per normal and a smaller program
to compile.  The normals are made from the bits exactly as ``jax.random.normal`` makes them
(:func:`normal`: a uniform on (−1, 1) with the mantissa's bits, then √2 erf⁻¹).  Other PRNG
implementations draw stream s from ``fold_in(key, s)`` with ``jax.random``.

Gradient *probes* (:func:`probe_sq`, :func:`probe_weight_sq`) are the identity in the forward
pass; their VJP passes the cotangent through unchanged and returns its squared norm (or the
squared Frobenius norm of the weight gradient δ xᵀ, = tr(δᵀδ xᵀx)) as the cotangent of a zero
dummy scalar.  So one ``jax.grad`` call yields the per-layer gradient norms without storing
per-layer gradient arrays (tested against direct ``jax.grad`` norms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.extend.random import threefry2x32_p

#: Purposes of a network's random streams (bits 24-31 of a stream number; bits 0-23: the layer).
INIT, READOUT, FORWARD, BACKWARD, BIAS = 1, 2, 3, 4, 5
#: Layers per network that streams can number (2**24).
MAX_LAYERS = 1 << 24


def stream(purpose: int, layer: Any = 0) -> jax.Array:
    """The number (uint32) of the stream for ``purpose`` (:data:`INIT`, ..., :data:`BIAS`) at ``layer``."""
    return jnp.uint32(purpose << 24) | jnp.asarray(layer, jnp.uint32)


def _is_threefry(key: jax.Array) -> bool:
    return str(jax.random.key_impl(key)) == "threefry2x32"


def random_bits(key: jax.Array, stream_id: jax.Array, n: int, width: int) -> jax.Array:
    """``n`` random words of ``width`` (32 or 64) bits from stream ``stream_id`` of a threefry ``key``.

    With m = ⌈n/2⌉ blocks, 32-bit word j is the first output word of the Threefry-2x32 block
    (key; stream_id, j) for j < m and the second word of block (key; stream_id, j − m) after; a
    64-bit word j joins the two words of block (key; stream_id, j), as ``jax.random.bits`` does.
    """
    kd = jax.random.key_data(key)
    blocks = (n + 1) // 2 if width == 32 else n
    ctr = jax.lax.iota(jnp.uint32, blocks)
    hi = jnp.full((blocks,), stream_id, jnp.uint32)
    b1, b2 = threefry2x32_p.bind(kd[0], kd[1], hi, ctr)
    if width == 32:
        return jnp.concatenate([b1, b2])[:n]
    return (b1.astype(jnp.uint64) << np.uint64(32)) | b2.astype(jnp.uint64)


def normal(key: jax.Array, stream_id: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Standard normals of ``shape`` from stream ``stream_id`` of ``key`` (see the module doc).

    From bits u: a uniform U on (−1, 1) from the mantissa's bits of u (``jax.random.uniform``'s
    construction, lower end nextafter(−1, 0)), then √2 erf⁻¹(U) (``jax.random.normal``'s).
    """
    dtype = jnp.dtype(dtype)
    if not _is_threefry(key):
        return jax.random.normal(jax.random.fold_in(key, stream_id), shape, dtype)
    info = jnp.finfo(dtype)
    width = info.bits
    n = int(np.prod(shape))
    bits = random_bits(key, stream_id, n, width)
    uint = jnp.uint32 if width == 32 else jnp.uint64
    one = np.array(1.0, dtype).view(np.uint32 if width == 32 else np.uint64)
    mant = (bits >> uint(width - info.nmant)) | uint(one)
    u01 = jax.lax.bitcast_convert_type(mant, dtype) - jnp.asarray(1.0, dtype)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    u = jnp.maximum(lo, u01 * (np.array(1.0, dtype) - lo) + lo)
    return jnp.reshape(jax.lax.erf_inv(u) * np.array(np.sqrt(2.0), dtype), shape)


def rademacher(key: jax.Array, stream_id: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """±1 with probability 1/2 each, of ``shape``, from stream ``stream_id`` of ``key`` (the top bit
    of each 32-bit word; ``jax.random.rademacher`` of ``fold_in(key, stream_id)`` for other PRNGs)."""
    if not _is_threefry(key):
        return jax.random.rademacher(jax.random.fold_in(key, stream_id), shape, dtype)
    bits = random_bits(key, stream_id, int(np.prod(shape)), 32)
    return jnp.where((bits >> 31) == 1, 1.0, -1.0).astype(dtype).reshape(shape)


#: Matrices of at least this size are decomposed one per LAPACK call under vmap (:func:`eigh_each`).
LOOP_MIN_SIZE = 24


def _one_matrix_per_call(decompose: Callable[[jax.Array], tuple[jax.Array, jax.Array]], min_size: int = 0) -> Any:
    """``decompose`` (a LAPACK factorisation of one matrix) whose vmap is a loop of single calls
    for matrices of size >= ``min_size``.

    jaxlib's batched LAPACK kernels split a large enough batch over XLA's intra-op thread pool and
    block their own pool thread until the pieces are done; with one XLA CPU device per core (as
    ``symbnmf simulate`` runs), every pool thread can be such a waiting device and nothing runs
    the pieces: the process hangs (seen with two devices on two cores for a batch of B >= 64
    eigendecompositions and of N×N QRs). One matrix per call never splits. Smaller matrices (a
    batch far too cheap to be split: no eigh hung up to B = 32) keep the batched call, whose loop
    is cheaper than XLA's."""
    one = custom_vmap(decompose)

    @one.def_vmap
    def _vmap(axis_size: int, in_batched: list[bool], A: jax.Array) -> tuple[Any, tuple[bool, bool]]:
        (batched,) = in_batched
        if not batched:
            return one(A), (False, False)
        if A.shape[-1] < min_size:
            return decompose(A), (True, True)
        return jax.lax.map(one, A), (True, True)

    return one


def _eigh(S: jax.Array) -> tuple[jax.Array, jax.Array]:
    w, V = jnp.linalg.eigh(S)
    return w, V


def _qr(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    q, r = jnp.linalg.qr(A)
    return q, r


#: ``jnp.linalg.eigh`` of one symmetric matrix, looped under vmap from :data:`LOOP_MIN_SIZE` on.
eigh_each = _one_matrix_per_call(_eigh, LOOP_MIN_SIZE)
#: ``jnp.linalg.qr`` of one matrix, always looped under vmap (dense layers: N×N).
qr_each = _one_matrix_per_call(_qr)


def _rtol(dtype) -> float:
    return float(jnp.finfo(dtype).eps) ** 0.5


def psd_sqrt_pinv(S: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(S^{1/2}, S⁺) of a symmetric PSD B×B matrix by eigendecomposition.

    Eigenvalues below sqrt(machine eps) × the largest are treated as zero (xᵀx is singular for
    the identity activation, whose outputs sum to zero over the batch).
    """
    w, V = eigh_each(S)
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
    w, V = eigh_each(S)
    tol = 10 * S.shape[-1] * float(jnp.finfo(S.dtype).eps) * w[-1]
    return (V * jnp.sqrt(jnp.where(w > tol, w, 0.0))) @ V.T


@jax.custom_vjp
def gaussian_layer(x: jax.Array, key: jax.Array, layer: jax.Array) -> jax.Array:
    """h = W x for a fresh W ~ N(0, 1/N) (N×N), sampled exactly in O(N·B²) (see module doc).

    ``x``: N×B input; ``key``: the network's PRNG key; ``layer``: the layer number.  The forward
    uses stream (:data:`FORWARD`, layer) (Z₁), the backward rule stream (:data:`BACKWARD`, layer)
    (Z₂).  Differentiable in ``x`` through the exact conditional law of Wᵀ.
    """
    h, _ = _gaussian_fwd(x, key, layer)
    return h


def _gaussian_fwd(x, key, layer):
    N = x.shape[0]
    sq, pinv = psd_sqrt_pinv(x.T @ x / N)
    h = normal(key, stream(FORWARD, layer), x.shape, x.dtype) @ sq
    return h, (x, h, pinv, key, layer)


def _gaussian_bwd(res, g):
    x, h, pinv, key, layer = res
    N = x.shape[0]
    zm = normal(key, stream(BACKWARD, layer), x.shape, x.dtype) @ psd_sqrt(g.T @ g / N)
    c = h.T @ g - x.T @ zm
    return zm + x @ (pinv @ c / N), None, None


gaussian_layer.defvjp(_gaussian_fwd, _gaussian_bwd)


WEIGHT_LAWS = ("gaussian", "orthogonal", "rademacher")


def dense_weights(key: jax.Array, stream_id: jax.Array, N: int, law: str, dtype) -> jax.Array:
    """An N×N weight matrix with i.i.d. entries of variance 1/N (or Haar orthogonal), from stream
    ``stream_id`` of ``key``."""
    if law == "gaussian":
        return normal(key, stream_id, (N, N), dtype) / jnp.sqrt(jnp.asarray(N, dtype))
    if law == "rademacher":
        return rademacher(key, stream_id, (N, N), dtype) / jnp.sqrt(jnp.asarray(N, dtype))
    if law == "orthogonal":
        q, r = qr_each(normal(key, stream_id, (N, N), dtype))
        return q * jnp.sign(jnp.diagonal(r))[None, :]
    raise ValueError(law)  # validated upstream


def dense_layer(x: jax.Array, key: jax.Array, layer: jax.Array, law: str, sigma_b: float) -> jax.Array:
    """h = W x + b with a dense W of the given law (stream (:data:`FORWARD`, layer)) and
    b ~ N(0, σ_b²) per unit (stream (:data:`BIAS`, layer))."""
    N = x.shape[0]
    h = dense_weights(key, stream(FORWARD, layer), N, law, x.dtype) @ x
    if sigma_b:
        h = h + sigma_b * normal(key, stream(BIAS, layer), (N, 1), x.dtype)
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
    """N×B input batch, from stream :data:`INIT` of the network's ``key``.

    * ``"fixed_point"``: xᵀx/N = G exactly, so the first layer's pre-activations have rows
      N(0, G) and BN's output is uniform on the sphere: the network starts at the BSB1 point.
    * ``"iid"``: i.i.d. standard normal entries.
    * ``"structured"``: rows ~ N(0, D C D) with unequal scales D = diag(linspace(0.5, 2)) and
      AR(1) correlations C_ij = 0.8^|i-j|: far from BSB1 on both the L and the M piece
      (used to watch the forward convergence, Fig. 1c).
    """
    z = normal(key, stream(INIT), (N, B), dtype)
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

Layer = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
