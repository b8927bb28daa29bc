"""Exact kernels of one batch-norm + φ layer in JAX: E[φ(BN h) φ(BN h)ᵀ] and the NTK transport E[J Θ Jᵀ].

Conventions: ``docs/theory.md`` with BN's ε allowed. For one unit, h ~ N(0, Σ) over a batch of B,
BN uses the biased batch variance,

    BN(h) = √B · G h / n,   n² = ‖G h‖² + B ε,   G = I − 11ᵀ/B.

**Laplace method (Thm 3.2 with the ε term).** For φ positive-homogeneous of degree α,
φ(x) = c₊ x^α (x > 0), c₋ |x|^α (x < 0), φ(BN h) = B^{α/2} n^{−α} φ(z), z = G h ~ N(0, Σ_G), and
n^{−2β} = Γ(β)⁻¹ ∫₀^∞ s^{β−1} e^{−s n²} ds, so for any f,

    E[n^{−2β} f(z)] = Γ(β)⁻¹ ∫₀^∞ s^{β−1} e^{−sBε} det(I + 2sΣ_G)^{−1/2} E[f(z_s)] ds,
    z_s ~ N(0, S(s)),  S(s) = Σ_G (I + 2sΣ_G)⁻¹.

With Σ_G = Q diag(λ) Qᵀ (one ``eigh``), det and S(s) = Q diag(λ/(1 + 2sλ)) Qᵀ are cheap in s.
The NNGP is V = B^α L_α[V_φ(S)], V_φ entrywise (arccosine kernels; degree-α wedge integral
for α ≠ 1). The NTK transport through J = ∂φ(BN h)/∂h = B^{α/2} n^{−α}[D G − α n^{−2} φ(z) zᵀ]
(D = diag φ'(z)) is, for α = 1 and Θ̃ = G Θ G, by Stein's lemma on the Gaussian z_s:

    E[J Θ Jᵀ] = B ( L₁[Θ̃ ⊙ W] − L₂[X + Xᵀ] + L₃[Y] ),
    X_ij = (Θ̃S)_ii Δ_ij + (Θ̃S)_ij W_ij,
    Y_ij = tr(Θ̃S) V_φ,ij + (SΘ̃S)_ii Δ_ij + (SΘ̃S)_jj Δ_ji + 2 (SΘ̃S)_ij W_ij,

W = E[φ'(z_i) φ'(z_j)], Δ_ij = E[φ''(z_i) φ(z_j)] = (c₊ + c₋)² √(S_jj/S_ii) √(1 − ρ²)/(2π).

**Quadrature in s.** u = log s, u = u_m + w sinh(t), trapezoid in t on [−T, T] (a double-exponential
rule): the integrand is analytic in a strip around real u and decays like e^{βu} (u → −∞) and like
det^{−1/2} (u → ∞). u_m, w follow the spectrum (the scales 1/(2λ_max + Bε) … 1/(2λ_min + Bε)), so one
static node count serves every Σ; the trapezoid on every other node gives an error estimate for free.

**Gauss–Jacobi rule at ε = 0** (chosen automatically when it needs fewer nodes). With r the rank of Σ_G
and x = s/(s + c), c = 1/(2√(λ_max λ_min)) (λ_min the smallest non-zero eigenvalue), the integrand
is (1 − x)^a x^b h(x) with a = r/2 − 1 − tail, b = β − 1 and h analytic on [0, 1]: det(I + 2sΣ_G)^{−1/2}
= (1 − x)^{r/2} Π_k (1 + (2cλ_k − 1)x)^{−1/2}, and S(s) = (1 − x) Q diag(λ/(1 + (2cλ − 1)x)) Qᵀ enters
homogeneously. The nearest singularities of h are the branch points x_k = 1/(1 − 2cλ_k) of the
determinant, so an n-point Gauss–Jacobi rule converges like ρ^{−2n} with ρ = (κ^{1/4} + 1)/(κ^{1/4} − 1),
κ = λ_max/λ_min: at Σ = BSB1 (κ = 1) one node is exact, near it a handful suffice. For large κ the map
s = c (x/(1 − x))² is better (weight (1 − x)^{r−1−2·tail} x^{2β−1}; its branch points lie at distance
~κ^{−1/4} from the ends, so ln ρ ~ √2 κ^{−1/8}); in general s = c (x/(1 − x))^{1/p}, p ∈ {1, ½}.
:func:`choose_rule` predicts ρ for both maps from the spectrum and takes the smallest size in
:data:`GAUSS_SIZES` whose predicted error ρ^{−2n} is below :data:`_GAUSS_TARGET` (1e-15: measured errors
are C ρ^{−2n} with C ≤ 10^2.4 for both maps on digits, Wishart, wide, near-BSB1 and rank-3 Σ at B = 8, 16,
32, so at most ~2.5e-13; the automatic rules were within 8.6e-15 (B = 8) and 4e-15 (B = 16, 32) of a 96-node
rule on digits, Wishart, near-BSB1 and rank-3 Σ: ``benchmarks/calibrate_rules.py``; ``bench_kernels.py``
checks against mpmath), and the double-exponential rule above when none is (κ ≳ 10⁶), when ε > 0 (e^{−sBε}
is not analytic at x = 1), or when a ≤ −1.

**Concrete inputs** take λ and Q from one numpy ``eigh`` per matrix (:func:`_start_spectra`, on the host
threads), which chooses each matrix's rule and is passed into the jitted kernels, so they do no ``eigh`` of
their own. The decomposed matrix is UᵀΣU, Σ_G in an orthonormal basis U of 1^⊥ ((B − 1)², :func:`_reduced`;
the kernels rebuild Q = [1/√B, U Y], :func:`_full_basis`), and the value checks run in the same host tasks.
As the spectra arrive chunk by chunk, the waiting matrices are dispatched in full blocks of neighbouring rule
sizes (each block with the largest rule among its matrices), so the kernels run while the host decomposes
the rest (:func:`_concrete`, :func:`_next_block`); blocks have a few fixed sizes (few compiled programs).
On one device each call's block is scattered into donated batch buffers, which are returned as soon as the
host work is done: like a jitted call, the result is computed asynchronously, and consecutive calls
overlap. Traced inputs (the caller's jit, grad, vmap) do the ``eigh`` in the kernel; both paths agree to
rounding (tested to 1e-13).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from symbnmf._errors import ActivationError, BatchSizeError, SymbnmfError
from symbnmf.kernels._host import (
    chunk_bounds,
    kernel_devices,
    kernel_jit,
    raise_first,
    run_inline,
    submit_chunks,
)

#: Default number of s-nodes (odd, so that the half rule uses every other node including both ends).
DEFAULT_NODES = 129
#: t-range of the double-exponential rule: sinh(T) = 40.
_T = math.asinh(40.0)
#: The features of the integrand fill |t| ≤ _CORE of the map (1.5: fewer nodes for 1e-13 than 1.0, measured).
_CORE = 1.5
#: Largest step in u = log s over the features of the integrand (measured against a 2049-node rule on
#: random, low-rank, ill-conditioned (κ = 1e10), near-duplicate and BSB1 Σ, B = 4 … 256, ε ∈ {0, 1e-3, 1},
#: with _CORE = 1.5: ≤ 1e-13 relative at 0.4, the same as at 0.3).
_SPACING = 0.4
#: Eigenvalues of Σ_G below this fraction of the largest are round-off of a singular Σ_G: set to zero.
_ZERO_EIG = 1e-13
#: Nodes of the tanh-sinh rule for the degree-α wedge integral (α ∉ {1}).
_WEDGE_NODES = 81
#: Sizes of the Gauss–Jacobi rule (static shapes: few compiled programs; every 2 nodes up to 32, where most Σ
#: land, so that a matrix evaluates ~1 node more than it needs on average).
GAUSS_SIZES = (8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 56, 64, 80, 96)
#: Predicted error ρ^{−2n} the Gauss–Jacobi size must reach (see the module docstring; 1e-17 before, with
#: sizes every 4–16 nodes: 27 nodes on average for 1000 digits batches at B = 16, now 23).
_GAUSS_TARGET = 1e-15


@dataclass(frozen=True)
class SRule:
    """The quadrature rule in s (a static, hashable jit argument): ``kind`` "gauss" (Gauss–Jacobi in
    x = s/(s + c), ε = 0 only) or "de" (double exponential in log s), with ``nodes`` nodes."""

    kind: str
    nodes: int
    power: float = 1.0


_BLAS_CONTROLLER: Any = None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit the BLAS/LAPACK libraries (numpy's and the one XLA's CPU ``eigh`` calls) to one thread.

    The kernels' linear algebra is many small ``eigh``s (B ≤ a few hundred): OpenBLAS's threads
    synchronise by spinning, and on a 2-core machine with any other load a 128 × 128 ``eigh`` took
    114 ms of CPU instead of 1.1 ms (measured; ``OPENBLAS_NUM_THREADS=1`` gives the same 1.1 ms). The
    limit is process-global while it holds (threadpoolctl), so results are awaited inside it.
    """
    global _BLAS_CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _BLAS_CONTROLLER is None:
        jnp.linalg.eigh(jnp.eye(2))  # load XLA's LAPACK so that the controller sees it
        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield


def in_float64(fn: Callable[..., Any] | None = None, *, wait: bool = True) -> Any:
    """Run a public kernel function in float64 whatever JAX's default precision, with one BLAS thread.

    The Laplace integrals span many decades of s and cancel in float32 (NaN or garbage), so the
    exact kernels are float64 computations. With ``jax_enable_x64`` on, ``fn`` runs as it is
    (jit/vmap/grad compose as usual). With it off, concrete inputs are computed inside
    ``jax.enable_x64(True)`` and returned as float64 numpy arrays; traced inputs (the caller's
    own ``jit`` in float32 mode) get a clear error instead of a silent NaN. Concrete calls run under
    :func:`one_blas_thread` and wait for their result there (under the caller's own ``jit`` the limit
    cannot apply: wrap the call of the jitted function in ``one_blas_thread()``). ``wait=False`` (as
    ``@in_float64(wait=False)``): the function waits itself for whatever uses LAPACK, and its other results
    are returned as JAX computes them (asynchronously, as a jitted call's).
    """
    if fn is None:
        return partial(in_float64, wait=wait)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        traced = any(isinstance(v, jax.core.Tracer) for v in leaves)
        if jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            if traced:
                return fn(*args, **kwargs)
            with one_blas_thread():
                out = fn(*args, **kwargs)
                return jax.block_until_ready(out) if wait else out
        if traced:
            raise KernelError(
                f"{fn.__name__} computes in float64: enable it with jax.config.update('jax_enable_x64', True) "
                "before tracing (jit/grad/vmap) the kernels"
            )
        with jax.enable_x64(True), one_blas_thread():
            out = fn(*args, **kwargs)
            return jax.tree_util.tree_map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, out)

    return wrapper


class KernelError(SymbnmfError):
    """Bad input to a kernel function (non-PSD or non-symmetric covariance, NaN, ε < 0, ...)."""


class MonteCarloKernel(NamedTuple):
    """A Monte Carlo kernel estimate: ``mean`` (unbiased) and its entrywise ``stderr``."""

    mean: Any
    stderr: Any
    samples: int


@dataclass(frozen=True)
class Homogeneous:
    """φ(x) = cp·x^alpha for x > 0 and cm·|x|^alpha for x < 0 (positive-homogeneous of degree alpha)."""

    alpha: float
    cp: float
    cm: float


_HOMOGENEOUS: dict[str, Homogeneous | None] = {}
#: :func:`homogeneous` by the string the caller gave (parsing and ``srepr`` cost ~0.8 ms a call).
_BY_NAME: dict[str, Homogeneous | None] = {}


def homogeneous(activation: Any) -> Homogeneous | None:
    """The homogeneous parts of ``activation`` (catalog name, expression or Activation), or None.

    (alpha, c₊, c₋) come from :func:`symbnmf.numeric._laplace.homogeneous_parts` (SymPy), cached
    by the bound expression.
    """
    if isinstance(activation, str) and activation in _BY_NAME:
        return _BY_NAME[activation]
    import sympy as sp

    from symbnmf._activations import get_activation
    from symbnmf.numeric._laplace import homogeneous_parts

    act = get_activation(activation)
    act.require_bound()
    key = sp.srepr(act.bound_expr)
    if key not in _HOMOGENEOUS:
        try:
            alpha, cp, cm = homogeneous_parts(act)
            _HOMOGENEOUS[key] = Homogeneous(float(sp.N(alpha, 20)), float(sp.N(cp, 20)), float(sp.N(cm, 20)))
        except ActivationError:
            _HOMOGENEOUS[key] = None
    if isinstance(activation, str):  # a name or expression string always parses to the same φ
        _BY_NAME[activation] = _HOMOGENEOUS[key]
    return _HOMOGENEOUS[key]


# ---------------------------------------------------------------------------------------------
# Gaussian kernels of the homogeneous family (unit-variance building blocks)
# ---------------------------------------------------------------------------------------------

_INV2PI = 1.0 / (2.0 * math.pi)


# fdlibm's rational approximation of asin on [0, 1/2]: asin(t) = t + t·z·P(z)/Q(z), z = t²
_PS: tuple[float, ...] = (
    1.66666666666666657415e-01,
    -3.25565818622400915405e-01,
    2.01212532134862925881e-01,
    -4.00555345006794114027e-02,
    7.91534994289814532176e-04,
    3.47933107596021167570e-05,
)
_QS = (-2.40339491173441421878e00, 2.02094576023350569471e00, -6.88283971605453293030e-01, 7.70381505559019352791e-02)


def _asin(x: Any) -> Any:
    """asin(x) on [−1, 1] to about 1 ulp, as fdlibm (|x| > ½ through asin(|x|) = π/2 − 2 asin(√((1 − |x|)/2))).

    Plain arithmetic (one sqrt, one division) that XLA vectorizes: its own f64 ``arccos`` on CPU
    costs ~15x more and dominated the kernels.
    """
    a = jnp.abs(x)
    small = a < 0.5
    z = jnp.where(small, a * a, 0.5 * (1.0 - a))
    t = jnp.where(small, a, jnp.sqrt(z))
    p = z * (_PS[0] + z * (_PS[1] + z * (_PS[2] + z * (_PS[3] + z * (_PS[4] + z * _PS[5])))))
    q = 1.0 + z * (_QS[0] + z * (_QS[1] + z * (_QS[2] + z * _QS[3])))
    r = t + t * (p / q)
    return jnp.sign(x) * jnp.where(small, r, 0.5 * jnp.pi - 2.0 * r)


#: Degree of the polynomial Ψ of :func:`_k1` (its Chebyshev interpolant on [0, ½] is within 5e-17 relative at
#: degree 16 and 1e-18 at 18: :func:`_k1_poly`).
_K1_DEGREE = 16


def _psi(u: Any) -> Any:
    """Ψ(u) = (2√(1 − u) − 2(1 − 2u) asin(√u)/√u)/u (mpmath), the analytic factor of :func:`_k1` (Ψ(0) = 8/3)."""
    import mpmath as mp

    u = mp.mpf(u)
    t = mp.sqrt(u)
    return (2 * mp.sqrt(1 - u) - 2 * (1 - 2 * u) * mp.asin(t) / t) / u


@lru_cache(maxsize=1)
def _k1_poly() -> tuple[float, ...]:
    """Coefficients (constant first) in v = u − ¼ of the degree-:data:`_K1_DEGREE` Chebyshev interpolant of
    :func:`_psi` on [0, ½] (``mpmath.chebyfit`` at 40 digits, once; its nearest singularity is the branch point
    u = 1, so the error falls geometrically with the degree)."""
    import mpmath as mp

    with mp.workdps(40):
        quarter = mp.mpf(1) / 4
        coeffs = mp.chebyfit(lambda v: _psi(v + quarter), [-quarter, quarter], _K1_DEGREE + 1)
        return tuple(float(c) for c in reversed(coeffs))  # chebyfit lists the highest degree first


@jax.custom_jvp
def _pow32(u: Any) -> Any:
    """u^{3/2} for u ≥ 0 as u·√u, with the derivative (3/2)√u (finite at u = 0, where √u's is not)."""
    return u * jnp.sqrt(u)


@_pow32.defjvp
def _pow32_jvp(primals: Any, tangents: Any) -> tuple[Any, Any]:
    (u,), (du,) = primals, tangents
    r = jnp.sqrt(u)
    return u * r, 1.5 * r * du


def _k1(rho: Any) -> Any:
    """E[u₊ v₊] for unit Gaussians with correlation ρ: (√(1 − ρ²) + (π − arccos ρ) ρ)/(2π), evaluated as
    (π ρ₊ + u^{3/2} Ψ(u))/(2π), u = (1 − |ρ|)/2 (with ρ = ±(1 − 2u), √(1 − ρ²) = 2√u √(1 − u) and
    arccos|ρ| = 2 asin √u).

    One square root and a polynomial (:func:`_k1_poly`), no division: in the kernels' loops this is cheaper
    than the arcsine form, and it has no cancellation as ρ → −1, where k₁ → 0 as (1 + ρ)^{3/2}."""
    c = _k1_poly()
    u = 0.5 * (1.0 - jnp.abs(rho))
    v = u - 0.25
    p = c[-1] * v + c[-2]
    for a in reversed(c[:-2]):
        p = p * v + a
    # ρ₊ as (ρ + |ρ|)/2: its derivative at ρ = 0 is ½ (jnp.maximum's is 0 there), and the |ρ| kinks cancel
    return (0.5 * jnp.pi * (rho + jnp.abs(rho)) + _pow32(u) * p) * _INV2PI


def _k0(rho: Any) -> Any:
    """P(u > 0, v > 0) = (π − arccos ρ)/(2π)."""
    return (0.5 * jnp.pi + _asin(rho)) * _INV2PI


@lru_cache(maxsize=8)
def _tanh_sinh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tanh-sinh nodes x ∈ (0, 1) and weights for ∫₀¹ (step chosen for ~1e-15 on endpoint-singular integrands)."""
    tmax = 3.2
    t = np.linspace(-tmax, tmax, n)
    h = t[1] - t[0]
    u = 0.5 * np.pi * np.sinh(t)
    x = 0.5 * (1.0 + np.tanh(u))
    # 1 - x computed stably: e^{-u}/(e^{u} + e^{-u}) ... = 1/(1 + e^{2u})
    w = 0.5 * h * 0.5 * np.pi * np.cosh(t) / np.cosh(u) ** 2
    return x, w


def _k_alpha(alpha: float, rho: Any) -> Any:
    """E[u₊^α v₊^α] = 2^α Γ(α+1)/(2π) ∫₀^{π−ψ} sin^α(y/2) sin^α(ψ + y/2) dy, ψ = arccos ρ (α > 0).

    The wedge integral of ``symbnmf.numeric._laplace.k_alpha`` after v = 2t − ψ and y = π − ψ − v
    (cos A cos B = ½(cos(A−B) + cos(A+B))); tanh-sinh in y copes with the y^α endpoint and with
    the branch point at y = −2ψ that approaches it as ρ → 1.
    """
    if alpha == 1.0:
        return _k1(rho)
    x, w = _tanh_sinh(_WEDGE_NODES)
    rho = jnp.clip(rho, -1.0, 1.0)
    psi = jnp.arccos(rho)[..., None]
    length = jnp.pi - psi
    y = length * x
    f = (jnp.sin(0.5 * y) * jnp.sin(psi + 0.5 * y)) ** alpha
    const = 2.0**alpha * math.gamma(alpha + 1.0) * _INV2PI
    return const * length[..., 0] * jnp.sum(w * f, axis=-1)


def gaussian_kernels(S: Any, hom: Homogeneous, *, derivatives: bool = False) -> tuple[Any, ...]:
    """Entrywise Gaussian kernels of φ at covariance S (z ~ N(0, S)).

    Returns V = E[φ(z) φ(z)ᵀ]; with ``derivatives`` (α = 1 only) also W = E[φ'(z) φ'(z)ᵀ] and
    Δ_ij = E[φ''(z_i) φ(z_j)] (φ'' = (c₊ + c₋) δ). Rows with S_ii = 0 give zeros (z_i ≡ 0, φ(0) = 0).
    """
    a = jnp.diagonal(S, axis1=-2, axis2=-1)
    ok = a > 0
    a_safe = jnp.where(ok, a, 1.0)
    sq = jnp.sqrt(a_safe)
    inv = 1.0 / sq
    scale = sq[..., :, None] * sq[..., None, :]
    both = ok[..., :, None] & ok[..., None, :]
    eye = jnp.eye(S.shape[-1], dtype=bool)
    off = both & ~eye
    # the diagonal (ρ = 1) takes its limits below: arccos and √(1 − ρ²) have infinite slope there,
    # and 0·∞ would put NaN into forward-mode derivatives
    rho = jnp.where(off, jnp.clip(S * (inv[..., :, None] * inv[..., None, :]), -1.0, 1.0), 0.0)
    al, cp, cm = hom.alpha, hom.cp, hom.cm
    same, cross = cp * cp + cm * cm, 2.0 * cp * cm
    if al == 1.0:
        ang = 0.5 * jnp.pi + _asin(rho)  # π − arccos ρ
        root = jnp.sqrt(jnp.clip(1.0 - rho * rho, 0.0, None))
        k = (root + ang * rho) * _INV2PI
        Vn = (same + cross) * k - (0.5 * cross) * rho  # k₁(−ρ) = k₁(ρ) − ρ/2: one arcsine per entry
    else:
        Vn = same * _k_alpha(al, rho) + cross * _k_alpha(al, -rho)
    k_one = 2.0**al * math.gamma(al + 0.5) / (2.0 * math.sqrt(math.pi))  # E[u₊^{2α}], k_α(−1) = 0
    Vn = jnp.where(eye, same * k_one, Vn)
    V = jnp.where(both, (scale if al == 1.0 else scale**al) * Vn, 0.0)
    if not derivatives:
        return (V,)
    k0 = ang * _INV2PI
    W = jnp.where(both, jnp.where(eye, 0.5 * same, (same + cross) * k0 - 0.5 * cross), 0.0)  # k₀(−ρ) = ½ − k₀(ρ)
    ratio = sq[..., None, :] * inv[..., :, None]  # √(S_jj / S_ii)
    delta = jnp.where(off, ((cp + cm) ** 2 * _INV2PI) * ratio * root, 0.0)
    return V, W, delta


def _pair_kernels(a: Any, Sp: Any, hom: Homogeneous) -> tuple[Any, Any]:
    """V = E[φ(z) φ(z)ᵀ] of :func:`gaussian_kernels` from the diagonal ``a`` (..., B) and the entries ``Sp``
    (..., P) of S above the diagonal (``np.triu_indices(B, 1)`` order): (diagonal, upper entries).

    ρ_ij = S_ij/√(a_i a_j) and the scale √(a_i a_j) = 1/(1/√a_i · 1/√a_j): one factor per pair, formed row
    by row of the upper triangle from slices (1/√a_i times 1/√a_j for j > i: no gather, which XLA's CPU
    loops did not vectorize), the other factor as its reciprocal, so the arithmetic runs as one loop over
    arrays of one shape. Measured at B = 16, 1024 Σ, one core: 7.3 ms at 24 nodes and 9.3 ms at 32, against
    7.7 and 9.7 ms spreading the factors by products with one-hot matrices (and, earlier, 11.6 ms with
    gathers at 26 nodes). Rows with a_i = 0 give zeros (their factor is 0)."""
    B = a.shape[-1]
    ok = a > 0
    inv = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, a, 1.0)), 0.0)
    ii = jnp.concatenate([inv[..., i : i + 1] * inv[..., i + 1 :] for i in range(B - 1)], axis=-1)
    pos = ii > 0
    prod = jnp.where(pos, 1.0 / jnp.where(pos, ii, 1.0), 0.0)  # √(a_i a_j); no 0·∞ in forward-mode derivatives
    rho = jnp.clip(Sp * ii, -1.0, 1.0)
    al, cp, cm = hom.alpha, hom.cp, hom.cm
    same, cross = cp * cp + cm * cm, 2.0 * cp * cm
    if al == 1.0:
        Vn = (same + cross) * _k1(rho) - (0.5 * cross) * rho
        scale = prod
    else:
        Vn = same * _k_alpha(al, rho) + cross * _k_alpha(al, -rho)
        scale = jnp.where(pos, jnp.where(pos, prod, 1.0) ** al, 0.0)
    k_one = 2.0**al * math.gamma(al + 0.5) / (2.0 * math.sqrt(math.pi))
    Vd = jnp.where(ok, same * k_one * (a if al == 1.0 else jnp.where(ok, a, 1.0) ** al), 0.0)
    return Vd, scale * Vn


# ---------------------------------------------------------------------------------------------
# The s-rule
# ---------------------------------------------------------------------------------------------


def _log_decay(u: Any, lam: Any, beps: Any) -> Any:
    """log of det(I + 2sΣ_G)^{−1/2} e^{−sBε} at s = e^u: the factor that ends the integrand on the right."""
    s = jnp.exp(u)
    return -0.5 * jnp.sum(jnp.log1p(2.0 * s * lam)) - s * beps


def _rule_geometry(lam: Any, beps: Any, beta_min: float, tail: float = 0.0) -> tuple[Any, Any]:
    """(u_m, w) of the map u = u_m + w sinh(t), t ∈ [−T, T].

    The integrand in u = log s rises like e^{βu} up to u_a = −log(2 tr Σ_G + Bε), then falls at the
    scales −log(2λ_k + Bε) and where e^{−sBε} cuts off; it is below 1e-16 of its size beyond u_b
    (det^{−1/2} e^{−sBε} < e^{−37}, found by bisection) and left of u_a − 37/β. The central part
    |t| ≤ _CORE of the map covers [u_a − 1, u_hi + 1]; the sinh tails reach both cut-offs. ``tail``: extra
    power of s in the integrand at large s (the NTK's is O(1) there, not O(1/s) as V: tail = 1).
    """
    lmax = jnp.max(lam)
    lmin = jnp.min(jnp.where(lam > 0, lam, lmax))
    u_a = -jnp.log(2.0 * jnp.sum(lam) + beps)  # det^{−1/2} e^{−sBε} ≈ e^{−s(tr Σ_G + Bε)} starts to fall here
    lo, hi = u_a, u_a + 120.0

    def bisect(_: int, bounds: Any) -> Any:
        a, b = bounds
        mid = 0.5 * (a + b)
        small = _log_decay(mid, lam, beps) + tail * mid < -37.0
        return jnp.where(small, a, mid), jnp.where(small, mid, b)

    _, u_b = jax.lax.fori_loop(0, 40, bisect, (lo, hi))
    u_eps = jnp.where(beps > 0, 3.7 - jnp.log(jnp.where(beps > 0, beps, 1.0)), -jnp.inf)  # e^{−sBε} = e^{−40}
    u_hi = jnp.minimum(u_b, jnp.maximum(-jnp.log(2.0 * lmin + beps), u_eps)) + 1.0
    u_lo = u_a - 1.0
    u_m = 0.5 * (u_lo + u_hi)
    half = 0.5 * (u_hi - u_lo)
    sinh_t = math.sinh(_T)
    w = jnp.maximum(half / math.sinh(_CORE), jnp.maximum(half + 37.0 / beta_min, u_b - u_m) / sinh_t)
    return u_m, w


def nodes_needed(cov: Any, eps: Any = 0.0, beta_min: float = 1.0, spacing: float = _SPACING, tail: float = 0.0) -> int:
    """Odd node count whose step in u = log s is at most ``spacing`` over the features, for every
    matrix of a concrete ``cov`` (..., B, B); rounded up to q·2^k + 1 (q ∈ {4, 5, 6, 7}, at least 33)
    so that few shapes get compiled and at most 25% more nodes than needed are evaluated."""
    return _nodes_from_spectra(_range_spectra(cov), eps, beta_min, tail, spacing)


@lru_cache(maxsize=16)
def _geometry_fn(beta_min: float, tail: float) -> Any:
    """jit(vmap(_rule_geometry)) over a stack of spectra (built once per (β, tail): un-jitted, its
    40-step bisection ran op by op and cost ~1 ms per matrix)."""
    return jax.jit(jax.vmap(partial(_rule_geometry, beta_min=beta_min, tail=tail), in_axes=(0, None)))


def _nodes_from_spectra(lam: np.ndarray, eps: Any, beta_min: float, tail: float, spacing: float = _SPACING) -> int:
    B = lam.shape[-1]
    _, w = _geometry_fn(float(beta_min), float(tail))(jnp.asarray(lam), jnp.asarray(B * float(eps)))
    w = float(np.max(np.asarray(w)))
    n = 2 * _T * w * math.cosh(_CORE) / spacing
    n = max(n, 32.0)
    q = 2 ** (math.floor(math.log2(n)) - 2)
    return q * math.ceil(n / q) + 1


def _s_rule(lam: Any, beps: Any, nodes: int, beta_min: float, tail: float = 0.0) -> tuple[Any, Any, Any]:
    """Nodes s, weights ω (including ds) and half-rule weights for ∫₀^∞ F(s) ds (see module docstring)."""
    u_m, w = _rule_geometry(lam, beps, beta_min, tail)
    t = np.linspace(-_T, _T, nodes)
    h = t[1] - t[0]
    u = u_m + w * np.sinh(t)
    s = jnp.exp(u)
    omega = h * w * np.cosh(t) * s
    half = jnp.where(np.arange(nodes) % 2 == 0, 2.0 * omega, 0.0)
    return s, omega, half


def _jacobi_rule(n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """n-point Gauss–Jacobi rule on [−1, 1] for the weight (1 − t)^a (1 + t)^b (a, b > −1).

    Golub–Welsch nodes (eigenvalues of the Jacobi matrix), refined by Newton steps on the orthonormal
    polynomial p_n; weights 1/Σ_{k<n} p_k(t)² (Christoffel numbers, accurate to a few ulps relative even
    for tiny weights, unlike formulas through p_n'), the total mass 2^{a+b+1} B(a+1, b+1) in mpmath
    (lgamma of large a loses digits). Measured: moments ∫(1 − t)^a ((1 + t)/2)^k to ≤ 3e-15 relative
    for a up to 255, where scipy's roots_jacobi is off by up to 2e-12.
    """
    import mpmath
    from scipy.linalg import eigh_tridiagonal

    k = np.arange(n, dtype=float)
    ab = a + b
    den = (2.0 * k + ab) * (2.0 * k + ab + 2.0)
    safe = np.where(den == 0.0, 1.0, den)
    alpha = np.where(den == 0.0, (b - a) / (ab + 2.0), (b * b - a * a) / safe)
    kk = np.arange(1, n + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        num = 4.0 * kk * (kk + a) * (kk + b) * (kk + ab)
        beta2 = num / ((2.0 * kk + ab) ** 2 * (2.0 * kk + ab + 1.0) * (2.0 * kk + ab - 1.0))
    beta2[0] = 4.0 * (1.0 + a) * (1.0 + b) / ((2.0 + ab) ** 2 * (3.0 + ab))  # k = 1 with (1 + a + b) cancelled
    beta = np.sqrt(beta2)
    x = eigh_tridiagonal(alpha, beta[:-1], eigvals_only=True)
    mu0 = float(mpmath.power(2, ab + 1) * mpmath.beta(a + 1, b + 1))

    def orthonormal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p0, p1 = np.zeros_like(x), np.full_like(x, 1.0 / math.sqrt(mu0))
        d0, d1 = np.zeros_like(x), np.zeros_like(x)
        christoffel = p1 * p1
        for j in range(n):
            bj = beta[j - 1] if j > 0 else 0.0
            p2 = ((x - alpha[j]) * p1 - bj * p0) / beta[j]
            d2 = (p1 + (x - alpha[j]) * d1 - bj * d0) / beta[j]
            if j < n - 1:
                christoffel = christoffel + p2 * p2
            p0, p1, d0, d1 = p1, p2, d1, d2
        return p1, d1, christoffel

    for _ in range(3):
        p, d, _ = orthonormal(x)
        x = x - p / d
    return x, 1.0 / orthonormal(x)[2]


@lru_cache(maxsize=64)
def _gauss_table(n: int, B: int, tail: float, beta: float, power: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss–Jacobi nodes x ∈ (0, 1), weights for ∫₀¹ (1 − x)^a x^b f(x) dx and the exponent a, one row per
    rank r = 0 … B of Σ_G: a = (r/2 − tail)/p − 1, b = β/p − 1 for the map s = c (x/(1 − x))^{1/p}
    (rows with a ≤ −1, where the integral diverges, are NaN: :func:`choose_rule` never selects them)."""
    xs = np.full((B + 1, n), np.nan)
    ws = np.full((B + 1, n), np.nan)
    avec = np.full(B + 1, np.nan)
    b = beta / power - 1.0
    for r in range(B + 1):
        a = (0.5 * r - tail) / power - 1.0
        if a <= -1.0:
            continue
        t, w = _jacobi_rule(n, a, b)
        xs[r] = 0.5 * (1.0 + t)
        ws[r] = w / 2.0 ** (a + b + 1.0)
        avec[r] = a
    return xs, ws, avec


@lru_cache(maxsize=64)
def _gauss_s_table(n: int, B: int, tail: float, beta: float, power: float) -> tuple[np.ndarray, np.ndarray]:
    """The rule of :func:`_gauss_table` in s for c = 1, one row per rank r: nodes (x/(1 − x))^{1/p} and weights
    w (ds/dx) (1 − x)^{−a} x^{−b} (s = c (x/(1 − x))^{1/p}, so a matrix's rule is c times both rows). Formed
    once in numpy: the kernels then take two rows and scale them (the powers in the kernels had cost 2–12% of
    their time at B = 16, one core)."""
    xs, ws, avec = _gauss_table(n, B, tail, beta, power)
    b = beta / power - 1.0
    with np.errstate(invalid="ignore"):  # the NaN rows of the ranks without a rule stay NaN
        q = xs / (1.0 - xs)
        ds = q ** (1.0 / power - 1.0) / (power * (1.0 - xs) ** 2)
        return q ** (1.0 / power), ws * ds * (1.0 - xs) ** (-avec[:, None]) * xs ** (-b)


def _gauss_s_rule(lam: Any, rule: SRule, beta: float, tail: float = 0.0) -> tuple[Any, Any]:
    """Nodes s and weights ω (including ds/dx and the reciprocal of the Jacobi weight) of the Gauss–Jacobi
    rule for ∫₀^∞ F(s) ds at ε = 0 (module docstring): s = c (x/(1 − x))^{1/p},
    ω = w (ds/dx) (1 − x)^{−a} x^{−b}, c = 1/(2√(λ_max λ_min)) (:func:`_gauss_s_table`)."""
    B = lam.shape[-1]
    s1, omega1 = _gauss_s_table(rule.nodes, B, float(tail), float(beta), float(rule.power))
    r = jnp.sum(lam > 0)
    lmax = jnp.max(lam)
    lmin = jnp.min(jnp.where(lam > 0, lam, lmax))
    c = 0.5 / jnp.sqrt(lmax * lmin)
    return c * jnp.asarray(s1)[r], c * jnp.asarray(omega1)[r]


def _bernstein(x: np.ndarray) -> np.ndarray:
    """Bernstein-ellipse parameter ρ ≥ 1 of points x (complex) for the interval [0, 1]."""
    t = 2.0 * np.asarray(x, dtype=complex) - 1.0
    z = np.abs(t + np.sqrt(t * t - 1.0))
    return np.maximum(z, 1.0 / z)


def _need(kappa: np.ndarray, power: float, target: float) -> np.ndarray:
    """Nodes n with predicted error ρ^{−2n} = ``target`` for condition numbers ``kappa`` = λ_max/λ_min of Σ_G
    (λ_min the smallest non-zero eigenvalue) and the map p = ``power``; 0 where ρ = ∞ (κ = 1).

    ρ is the Bernstein parameter, for [0, 1], of the branch point of det(I + 2sΣ_G)^{−1/2} nearest to it. In
    the x of the map, x/(1 − x) = (−1/(2cλ))^p at s = −1/(2λ) with c = 1/(2√(λ_max λ_min)); it moves
    monotonically towards an end of [0, 1] as λ moves towards an end of the spectrum, so the nearest comes
    from λ_max or λ_min (2cλ = √κ^{±1}), and ρ depends on κ alone."""
    root = np.sqrt(np.asarray(kappa, dtype=float))[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (-1.0 / np.concatenate([root, 1.0 / root], axis=-1)).astype(complex) ** power
        far = np.abs(1.0 + u) < 1e-12  # the branch point at x = ∞
        rho = np.min(np.where(far, np.inf, _bernstein(np.where(far, 0.5, u / (1.0 + u)))), axis=-1)
        return np.where(np.isfinite(rho), math.log(1.0 / target) / (2.0 * np.log(rho)), 0.0)


@lru_cache(maxsize=16)
def _kappa_limits(power: float, target: float, sizes: tuple[int, ...]) -> np.ndarray:
    """The largest κ each size in ``sizes`` serves (:func:`_need` ≤ size; it grows with κ), by bisection in
    log κ, so that a spectrum's size is one ``searchsorted`` (the host takes the sizes of every chunk of a
    streamed batch, and the formula cost ~0.1 ms a chunk in numpy calls)."""
    lo = np.zeros(len(sizes))
    hi = np.full(len(sizes), 60.0)  # log κ: κ up to e^60
    n = np.asarray(sizes, dtype=float)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        ok = _need(np.exp(mid), power, target) <= n
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return np.where(_need(np.ones(len(sizes)), power, target) <= n, np.exp(lo), 0.0)  # 0: not even κ = 1


def _gauss_sizes(lam: np.ndarray, power: float) -> np.ndarray:
    """Per row of the spectra ``lam`` (k, B) (zeros: off the range): the smallest size in :data:`GAUSS_SIZES`
    whose predicted error ρ^{−2n} is at most :data:`_GAUSS_TARGET` (:func:`_need`), or 0 when none is or
    Σ_G = 0."""
    return _sizes_of_kappa(_kappa(lam), power)


def _kappa(lam: np.ndarray) -> np.ndarray:
    """λ_max/λ_min (smallest non-zero) per row of the spectra ``lam`` (k, B); ∞ where Σ_G = 0."""
    lmax = np.max(lam, axis=-1)
    lmin = np.min(np.where(lam > 0, lam, np.inf), axis=-1)
    ok = lmax > 0
    return np.where(ok, lmax / np.where(ok, lmin, 1.0), np.inf)


def _sizes_of_kappa(kappa: np.ndarray, power: float) -> np.ndarray:
    sizes = np.asarray(GAUSS_SIZES)
    idx = np.searchsorted(_kappa_limits(float(power), float(_GAUSS_TARGET), tuple(GAUSS_SIZES)), kappa)
    return np.where(idx < len(sizes), sizes[np.minimum(idx, len(sizes) - 1)], 0)  # κ = ∞: past every limit


@lru_cache(maxsize=32)
def _range_basis(B: int) -> np.ndarray:
    """U (B, B − 1): orthonormal columns spanning 1^⊥, the range of G (the Householder reflection that maps 1 to
    −√B e₁, without its first column). GU = U, so UᵀΣU is Σ_G = GΣG in that basis: its eigenpairs (λ, y) are
    Σ_G's as (λ, Uy), and the one left is (0, 1/√B)."""
    v = np.ones(B)
    v[0] += math.sqrt(B)
    H = np.eye(B) - 2.0 * np.outer(v, v) / (v @ v)
    return np.ascontiguousarray(H[:, 1:])


def _reduced(c: np.ndarray) -> np.ndarray:
    """UᵀΣU (k, B − 1, B − 1) of a flat concrete stack (k, B, B) of symmetric matrices (:func:`_range_basis`):
    two matrix products for the whole stack. Its ``eigh`` is Σ_G's without the known pair (0, 1/√B), and
    costs less (B = 16, 1000 matrices, one core: 13.2 ms against 15.1 ms for the B × B Σ_G). A Σ symmetric
    only within round-off keeps that round-off; ``eigh`` reads one triangle."""
    k, B = c.shape[0], c.shape[-1]
    U = _range_basis(B)
    Y = (c.reshape(k * B, B) @ U).reshape(k, B, B - 1)  # ΣU
    return (np.ascontiguousarray(Y.transpose(0, 2, 1)).reshape(k * (B - 1), B) @ U).reshape(k, B - 1, B - 1)


def _full_basis(Y: Any) -> Any:
    """Σ_G's eigenvectors (B, B) from those of UᵀΣU (B − 1, B − 1), in a kernel: the column 1/√B (eigenvalue 0,
    first, as the host spectra put it) and U Y."""
    B = Y.shape[-1] + 1
    one = jnp.full((B, 1), 1.0 / math.sqrt(B), dtype=Y.dtype)
    return jnp.concatenate([one, jnp.asarray(_range_basis(B), dtype=Y.dtype) @ Y], axis=-1)


def _clip_spectra(lam: np.ndarray) -> np.ndarray:
    return np.where(lam > _ZERO_EIG * np.max(np.abs(lam), axis=-1, keepdims=True), lam, 0.0)


def _range_spectra(cov: Any) -> np.ndarray:
    """Eigenvalues of Σ_G = GΣG for a concrete ``cov`` (..., B, B), as (k, B), round-off zeros set to 0 (the
    first is the structural 0 of 1/√B)."""
    c = np.asarray(cov, dtype=np.float64)
    B = c.shape[-1]
    flat = c.reshape(-1, B, B)
    lam = np.zeros((flat.shape[0], B))
    lam[:, 1:] = np.linalg.eigvalsh(_reduced(flat))
    return _clip_spectra(lam)


#: Fewest matrices per host task of :func:`_host_spectra` (smaller batches run in the calling thread).
_HOST_CHUNK = 64


def _host_spectra(cov: Any, check: str | None = None, *, built: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(λ (k, B), Y (k, B − 1, B − 1)) for a concrete ``cov`` (..., B, B): λ the eigenvalues of Σ_G = GΣG with
    round-off zeros set to 0 (the first the structural 0), Y the eigenvectors of UᵀΣU (:func:`_reduced`; the
    kernels rebuild Σ_G's with :func:`_full_basis`). One numpy ``eigh`` per matrix serves both the choice of
    the s-rule and the kernels (which then do no ``eigh``).

    The decompositions run on the host threads (:func:`_start_spectra`). ``check``: also run the value checks
    of :func:`_check_cov` (``check`` names the argument in the error; ``built`` as there)."""
    c = np.asarray(cov, dtype=np.float64)
    B = c.shape[-1]
    lam, Y, _, futures = _start_spectra(c.reshape(-1, B, B), check, built)
    raise_first(futures)
    return lam, Y


def _start_spectra(
    flat: np.ndarray, check: str | None, built: bool, sizes: np.ndarray | None = None, tail: float = 0.0
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[Any]]:
    """Start the spectra of a flat concrete stack (k, B, B) on the host threads, in chunks
    (:func:`symbnmf.kernels._host.chunk_bounds`): (λ, Y as :func:`_host_spectra`, chunk bounds, futures). Each
    chunk's task forms UᵀΣU (:func:`_reduced`), runs the value checks (``check``, ``built``: as
    :func:`_check_cov`; a failed check is its error, before LAPACK sees such input), takes the ``eigh``, clears
    round-off zeros of λ and, given ``sizes`` (k, 2), writes the rows' :func:`_row_sizes` (``tail``); a chunk's
    rows are ready when its future is done. LAPACK releases the GIL, so the decompositions run side by side
    (two threads took 1000 decompositions at B = 16 from 15.5 to 8.2 ms on 2 cores), and the calling thread
    is free for the kernel calls."""
    k, B = flat.shape[0], flat.shape[-1]
    lam = np.zeros((k, B))
    Y = np.empty((k, B - 1, B - 1))

    def task(a: int, b: int) -> None:
        R = _reduced(flat[a:b])
        if check is not None:
            _check_values(flat[a:b], check, built, R)
        lam[a:b, 1:], Y[a:b] = np.linalg.eigh(R)
        lam[a:b] = _clip_spectra(lam[a:b])
        if sizes is not None:
            sizes[a:b] = _row_sizes(lam[a:b], tail)

    bounds = chunk_bounds(k, _HOST_CHUNK)
    if len(bounds) == 1:  # one chunk: no thread to hand it to (a deep kernel's layers are one matrix each)
        return lam, Y, bounds, run_inline(task, bounds)
    return lam, Y, bounds, submit_chunks(task, bounds)


def _row_rules(lam: np.ndarray, eps: Any, tail: float) -> list[SRule | None]:
    """The Gauss rule of each row of the spectra ``lam`` (k, B), or None where the DE rule is needed."""
    if float(np.max(np.asarray(eps))) != 0.0:
        return [None] * lam.shape[0]
    ok = 0.5 * np.sum(lam > 0, axis=-1) - 1.0 - tail > -1.0
    n1, n2 = _gauss_sizes(lam, 1.0), _gauss_sizes(lam, 0.5)
    out: list[SRule | None] = []
    for good, a, b in zip(ok, n1, n2):
        cands = [SRule("gauss", int(n), p) for n, p in ((a, 1.0), (b, 0.5)) if n > 0]
        out.append(min(cands, key=lambda r: r.nodes) if good and cands else None)
    return out


def choose_rule(cov: Any, eps: Any = 0.0, beta: float = 1.0, tail: float = 0.0) -> SRule:
    """The s-rule for every matrix of a concrete ``cov`` (..., B, B): Gauss–Jacobi at ε = 0 when a size in
    :data:`GAUSS_SIZES` is predicted to reach the target for all of them (the larger of the per-matrix
    sizes; the map p = 1 or ½ that needs fewer nodes), otherwise the double-exponential rule with
    :func:`nodes_needed` nodes. ``beta``: exponent of the Laplace integral (α for the NNGP of a degree-α φ,
    1 for the NTK); ``tail``: 1 for the NTK transport. Pass the result as ``rule=`` to jit a pipeline on
    inputs like ``cov``."""
    return _choose_from_spectra(_range_spectra(cov), eps, beta, tail)


def _choose_from_spectra(lam: np.ndarray, eps: Any, beta: float, tail: float) -> SRule:
    """:func:`choose_rule` from the spectra ``lam`` (k, B) of :func:`_range_spectra` or :func:`_host_spectra`."""
    rows = _row_rules(lam, eps, tail)
    if all(r is not None for r in rows):
        best: SRule | None = None
        for power in (1.0, 0.5):
            sizes = _gauss_sizes(lam, power)
            if np.all(sizes > 0):
                cand = SRule("gauss", int(np.max(sizes)), power)
                if best is None or cand.nodes < best.nodes:
                    best = cand
        if best is not None:
            return best
    return SRule("de", _nodes_from_spectra(lam, eps, beta, tail))


def _row_sizes(lam: np.ndarray, tail: float) -> np.ndarray:
    """Gauss sizes (k, 2) of each row of the spectra ``lam`` (k, B) for the maps p = 1 and p = ½ (columns), 0
    where that map has no size in :data:`GAUSS_SIZES` or the integral needs the DE rule (a ≤ −1)."""
    ok = 0.5 * np.sum(lam > 0, axis=-1) - 1.0 - tail > -1.0
    kappa = np.where(ok, _kappa(lam), np.inf)
    return np.stack([_sizes_of_kappa(kappa, 1.0), _sizes_of_kappa(kappa, 0.5)], axis=-1)


def _rule_groups(
    cov: Any, eps: Any, beta: float, tail: float, lam: np.ndarray | None = None, sizes: np.ndarray | None = None
) -> dict[SRule, np.ndarray]:
    """Matrices of a concrete batch ``cov`` (..., B, B) grouped by their own s-rule (flat indices): each
    group is evaluated with the rule it needs instead of the batch's worst (fewer nodes for most), and the
    padding of a group's last block is filled with matrices of smaller rules (:func:`_fill`). ``lam``: the
    spectra (k, B) of :func:`_host_spectra` when already computed; ``sizes``: their :func:`_row_sizes`."""
    if lam is None:
        lam = _range_spectra(cov)
    k = lam.shape[0]
    if float(np.max(np.asarray(eps))) != 0.0:
        return {SRule("de", _nodes_from_spectra(lam, eps, beta, tail)): np.arange(k)}
    if sizes is None:
        sizes = _row_sizes(lam, tail)
    nodes, half = _chosen(sizes)  # _row_rules, vectorised; DE where neither map fits
    groups = _fill(_by_rule(nodes, half), sizes)
    de = np.flatnonzero(nodes == 0)
    if de.size:
        groups[SRule("de", _nodes_from_spectra(lam[de], eps, beta, tail))] = de
    return groups


def _fill(groups: dict[SRule, np.ndarray], sizes: np.ndarray) -> dict[SRule, np.ndarray]:
    """Gauss groups with the padding of each group's last block (:func:`_blocks`) filled by matrices of smaller
    rules that this rule also serves (size of its map ≤ its nodes; more nodes only lower the error): padding
    is evaluated anyway, so every matrix moved is work taken off a smaller group. Largest rules first,
    each taking from the largest smaller groups first. On 1000-Σ batches at B = 16 padding had added 15%
    (digits) and 4% (Wishart) to the node evaluations."""
    out = dict(groups)
    rules = sorted(out, key=lambda r: (-r.nodes, r.power))
    for i, r in enumerate(rules):
        if r not in out:
            continue
        free = sum(_blocks(len(out[r]))) - len(out[r])
        col = 0 if r.power == 1.0 else 1
        for r2 in rules[i + 1 :]:
            if free == 0:
                break
            if r2 not in out or r2.nodes >= r.nodes:
                continue
            idx = out[r2]
            need = sizes[idx, col]
            ok = np.flatnonzero((need > 0) & (need <= r.nodes))
            take = ok[len(ok) - min(free, len(ok)) :]  # from the end: the last (partial) block of r2 first
            if take.size == 0:
                continue
            out[r] = np.sort(np.concatenate([out[r], idx[take]]))
            rest = np.delete(idx, take)
            if rest.size:
                out[r2] = rest
            else:
                del out[r2]
            free -= take.size
    return out


def _spectrum(cov: Any, spec: tuple[Any, Any] | None = None) -> tuple[Any, Any, Any]:
    """(Σ_G, λ, Q): the eigendecomposition is of stop_gradient(Σ_G); derivatives flow through :func:`_tilt`.
    ``spec``: (λ, Y) from :func:`_host_spectra` (concrete inputs: no ``eigh`` here, Q = :func:`_full_basis`
    (Y); Σ_G then only carries tangents, and without any XLA drops it). ``cov`` None (with ``spec``): no
    tangents, Σ_G a constant."""
    if cov is None:
        assert spec is not None
        B = spec[0].shape[-1]
        return jnp.zeros((B, B), dtype=spec[0].dtype), spec[0], _full_basis(spec[1])
    B = cov.shape[-1]
    G = jnp.eye(B, dtype=cov.dtype) - 1.0 / B
    SG = G @ cov @ G
    SG = 0.5 * (SG + SG.T)
    if spec is not None:
        return SG, spec[0], _full_basis(spec[1])
    lam, Q = jnp.linalg.eigh(jax.lax.stop_gradient(SG))
    lam = jnp.where(lam > _ZERO_EIG * jnp.max(jnp.abs(lam)), lam, 0.0)
    return SG, lam, Q


@jax.custom_jvp
def _tilt(SG: Any, lam: Any, Q: Any, s: Any) -> tuple[Any, Any]:
    """S(s) = Σ_G (I + 2sΣ_G)⁻¹ and log det(I + 2sΣ_G) at all nodes s (n,) at once, from Σ_G = Q diag(λ) Qᵀ:
    shapes (n, B, B) and (n,); S is one (n·B × B) @ (B × B) product.

    Its JVP is the exact derivative in Σ_G, dS = A dΣ_G A, d log det = 2s tr(A dΣ_G),
    A = (I + 2sΣ_G)⁻¹ (the divided differences of λ ↦ λ/(1 + 2sλ) need no eigenvalue gaps), so
    grad works at degenerate spectra such as BSB1 inputs, where differentiating ``eigh`` fails.
    """
    d = 1.0 + 2.0 * s[:, None] * lam
    return (Q * (lam / d)[:, None, :]) @ Q.T, jnp.sum(jnp.log(d), axis=-1)


@_tilt.defjvp
def _tilt_jvp(primals: Any, tangents: Any) -> tuple[Any, Any]:
    SG, lam, Q, s = primals
    dSG = tangents[0]
    out = _tilt(SG, lam, Q, s)
    d = 1.0 + 2.0 * s[:, None] * lam
    M = Q.T @ dSG @ Q
    dS = Q @ (M / (d[:, :, None] * d[:, None, :])) @ Q.T
    dlog = 2.0 * s * jnp.sum(jnp.diagonal(M) / d, axis=-1)
    return out, (dS, dlog)


@jax.custom_jvp
def _tilt_pairs(SG: Any, lam: Any, Q: Any, s: Any) -> tuple[Any, Any, Any]:
    """:func:`_tilt` reduced to what the NNGP needs, by symmetry: diag S (n, B), the entries of S above the
    diagonal in ``np.triu_indices(B, 1)`` order (n, P) and log det (n,); one (n × B) @ (B × (B + P)) product."""
    B = Q.shape[-1]
    iu, ju = np.triu_indices(B, 1)
    d = 1.0 + 2.0 * s[:, None] * lam
    both = (lam / d) @ jnp.concatenate([Q * Q, Q[iu] * Q[ju]]).T
    return both[:, :B], both[:, B:], jnp.sum(jnp.log(d), axis=-1)


@_tilt_pairs.defjvp
def _tilt_pairs_jvp(primals: Any, tangents: Any) -> tuple[Any, Any]:
    SG, lam, Q, s = primals
    out = _tilt_pairs(SG, lam, Q, s)
    (dS, dlog) = _tilt_jvp(primals, tangents)[1]
    iu, ju = np.triu_indices(Q.shape[-1], 1)
    return out, (jnp.diagonal(dS, axis1=-2, axis2=-1), dS[:, iu, ju], dlog)


#: Elements of one node chunk's (chunk, B, B) arrays: small enough to stay in cache at large B.
_NODE_CHUNK_ELEMENTS = 1 << 14


def _sum_over_nodes(fn: Any, s: Any, omega: Any, half: Any, per_node: int) -> Any:
    """Σ over the nodes of ``fn(s, omega, half)`` (which sums over its chunk of nodes): chunks of about
    ``_NODE_CHUNK_ELEMENTS / per_node`` nodes (``per_node``: entries per node of the arrays ``fn`` forms),
    a ``scan`` over the chunks (padded with zero-weight nodes)."""
    n = s.shape[0]
    size = max(1, min(n, _NODE_CHUNK_ELEMENTS // per_node))
    if size >= n:
        return fn(s, omega, half)
    k = -(-n // size)
    pad = k * size - n
    s = jnp.concatenate([s, jnp.broadcast_to(s[:1], (pad,))]).reshape(k, size)
    omega = jnp.concatenate([omega, jnp.zeros((pad,), omega.dtype)]).reshape(k, size)
    half = jnp.concatenate([half, jnp.zeros((pad,), half.dtype)]).reshape(k, size)

    def body(acc: Any, xs: Any) -> tuple[Any, None]:
        return jax.tree_util.tree_map(jnp.add, acc, fn(*xs)), None

    first = fn(s[0], omega[0], half[0])
    out, _ = jax.lax.scan(body, first, (s[1:], omega[1:], half[1:]))
    return out


def _rule_nodes(lam: Any, beps: Any, rule: SRule, beta: float, tail: float = 0.0) -> tuple[Any, Any, Any]:
    """(s, ω, second-estimate weights or None) of ``rule``; the DE rule's half rule shares its nodes."""
    if rule.kind == "gauss":
        s, omega = _gauss_s_rule(lam, rule, beta, tail)
        return jax.lax.stop_gradient(s), jax.lax.stop_gradient(omega), None
    s, omega, half = jax.lax.stop_gradient(_s_rule(lam, beps, rule.nodes, beta, tail))
    return s, omega, half


def _smaller(rule: SRule) -> SRule:
    """The Gauss rule one size down (its difference from ``rule`` bounds the error of the smaller one)."""
    i = GAUSS_SIZES.index(rule.nodes) if rule.nodes in GAUSS_SIZES else 0
    return SRule("gauss", GAUSS_SIZES[i - 1] if i > 0 else max(2, rule.nodes // 2), rule.power)


def _nngp_one(
    cov: Any, eps: Any, hom: Homogeneous, rule: SRule, with_error: bool = True, spec: tuple[Any, Any] | None = None
) -> tuple[Any, Any]:
    """(V, second estimate of V): the half rule (DE) or, with ``with_error``, the next smaller Gauss rule.
    ``spec``: the host spectra (λ, Y) (see :func:`_spectrum`; ``cov`` may then be None)."""
    SG, lam, Q = _spectrum(cov, spec)
    B = lam.shape[-1]
    beps = B * eps
    al = hom.alpha
    iu, ju = np.triu_indices(B, 1)
    const = B**al / math.gamma(al)

    unpack = np.zeros((B, B), dtype=np.int32)  # (B, B) from [diagonal, upper entries]: a gather, not a scatter
    unpack[np.arange(B), np.arange(B)] = np.arange(B)
    unpack[iu, ju] = unpack[ju, iu] = B + np.arange(len(iu))

    def assemble(d: Any, p: Any) -> Any:
        return const * jnp.concatenate([d, p])[unpack]

    def integrate(s: Any, omega: Any, half: Any) -> tuple[Any, Any]:
        def chunk(s: Any, omega: Any, half: Any) -> tuple[Any, Any]:
            Sd, Sp, logdet = _tilt_pairs(SG, lam, Q, s)
            Vd, Vp = _pair_kernels(Sd, Sp, hom)
            c = jnp.exp(-s * beps - 0.5 * logdet)
            if al != 1.0:
                c = c * s ** (al - 1.0)
            wc, hc = omega * c, half * c
            return (wc @ Vd, wc @ Vp), (hc @ Vd, hc @ Vp)

        acc, acc_half = _sum_over_nodes(chunk, s, omega, half, (B * B) // 2 + B)
        return assemble(*acc), assemble(*acc_half)

    s, omega, half = _rule_nodes(lam, beps, rule, al)
    if half is not None:
        return integrate(s, omega, half)
    V, _ = integrate(s, omega, omega)
    if not with_error:
        return V, V
    s2, omega2, _ = _rule_nodes(lam, beps, _smaller(rule), al)
    V2, _ = integrate(s2, omega2, omega2)
    return V, V2


def _ntk_one(
    cov: Any, theta: Any, eps: Any, hom: Homogeneous, rule: SRule, spec: tuple[Any, Any] | None = None
) -> tuple[Any, Any]:
    """(V, E[J Θ Jᵀ]) for α = 1 (``spec``, ``cov``: as in :func:`_nngp_one`).

    The integrand Θ̃⊙W − s(X + Xᵀ) + ½s²Y of the module docstring is regrouped with
    Z = (I − sS) Θ̃ (I − sS) = Θ̃ − s(R + Rᵀ) + s²U (R = Θ̃S, U = SΘ̃S):
    Z⊙W + g_i Δ_ij + g_j Δ_ji + ½s² tr(Θ̃S) V with g = ½(diag Z − diag Θ̃) = −s R_ii + ½s² U_ii.
    """
    SG, lam, Q = _spectrum(cov, spec)
    B = lam.shape[-1]
    beps = B * eps
    s, omega, _ = _rule_nodes(lam, beps, rule, 1.0, tail=1.0)
    G = jnp.eye(B, dtype=lam.dtype) - 1.0 / B
    Th = G @ theta @ G
    Th = 0.5 * (Th + Th.T)

    def chunk(s: Any, omega: Any, _: Any) -> tuple[Any, Any]:
        S, logdet = _tilt(SG, lam, Q, s)
        V, W, De = gaussian_kernels(S, hom, derivatives=True)
        M = jnp.eye(B, dtype=lam.dtype) - s[:, None, None] * S  # I − sS = Q diag((1 + sλ)/(1 + 2sλ)) Qᵀ
        Z = (M @ Th) @ M
        g = 0.5 * (jnp.diagonal(Z, axis1=-2, axis2=-1) - jnp.diagonal(Th))
        trR = jnp.einsum("ij,nij->n", Th, S)
        gD = g[:, :, None] * De
        T = Z * W + gD + jnp.swapaxes(gD, -1, -2) + (0.5 * s * s * trR)[:, None, None] * V
        wc = omega * jnp.exp(-s * beps - 0.5 * logdet)
        return jnp.einsum("n,nij->ij", wc, V), jnp.einsum("n,nij->ij", wc, T)

    accV, accT = _sum_over_nodes(chunk, s, omega, omega, B * B)
    return B * accV, B * accT


# ---------------------------------------------------------------------------------------------
# Validation (on concrete inputs only: under jit, bad input gives NaN instead of an error)
# ---------------------------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _waited(out: Any) -> Any:
    """``out`` once computed, when concrete (its ``eigh`` then runs under :func:`one_blas_thread`, which
    :func:`in_float64` holds only while the call lasts); traced, as it is."""
    if all(_is_concrete(v) for v in jax.tree_util.tree_leaves(out)):
        return jax.block_until_ready(out)
    return out


def _check_cov(cov: Any, what: str = "cov", *, built: bool = False, values: bool = True) -> None:
    """Shape, B >= 4, finiteness, symmetry, PSD (within 1e-10 of the scale) and G Σ G != 0 of a concrete ``cov``.

    ``built``: ``cov`` was built by the kernel recursion from data (x xᵀ/d, affine maps, BN kernels), so
    it is symmetric PSD by construction and only finiteness and G Σ G != 0 are checked (per layer of a
    deep kernel the full check cost more than the layer). ``values=False``: shape and B only (the exact
    kernels check the values in :func:`_host_spectra`, on the host threads, as they take the spectra)."""
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise KernelError(f"{what} must have shape (..., B, B), got {tuple(cov.shape)}")
    B = cov.shape[-1]
    if B < 4:
        raise BatchSizeError(
            f"the BN kernel needs a batch of B >= 4 (B = {B}: docs/theory.md, App. J); simulate smaller batches instead"
        )
    if values and _is_concrete(cov):
        c = np.asarray(cov, dtype=np.float64)
        _check_values(c, what, built, _reduced(c.reshape(-1, B, B)))


def _check_values(c: np.ndarray, what: str, built: bool, R: np.ndarray) -> None:
    """The value checks of :func:`_check_cov` on a numpy stack ``c`` (..., B, B) with UᵀΣU = ``R`` (k, B − 1, B − 1)
    (:func:`_reduced`: Σ_G in an orthonormal basis of its range, so R = 0 exactly when G Σ G = 0)."""
    B = c.shape[-1]
    if not np.isfinite(np.sum(c)) and not np.all(np.isfinite(c)):
        raise KernelError(f"{what} contains NaN or inf; give a finite covariance")
    flat = c.reshape(-1, B * B)
    scale = np.max(np.abs(flat), axis=-1).reshape(*c.shape[:-2], 1, 1)
    if np.any(scale == 0):
        raise KernelError(f"{what} is zero: BN is undefined; give a covariance with G Σ G != 0")
    if not built:
        if np.any(np.abs(c - np.swapaxes(c, -1, -2)) > 1e-10 * scale):
            raise KernelError(f"{what} is not symmetric; symmetrise it ((Σ + Σᵀ)/2)")
        # PSD within 1e-10 of the scale: Cholesky of Σ + 1e-10·scale·I (cheap; it reads the lower triangle,
        # which is Σ within 1e-10 of the scale); eigenvalues only to report
        try:
            np.linalg.cholesky(c + 1e-10 * scale * np.eye(B))
        except np.linalg.LinAlgError:
            ev = np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, -1, -2)))
            if np.any(ev[..., 0] < -1e-10 * scale[..., 0, 0]):
                raise KernelError(
                    f"{what} is not positive semidefinite (eigenvalue {ev[..., 0].min():.3g}); a covariance must be PSD"
                ) from None
    if np.any(np.max(np.abs(R.reshape(R.shape[0], -1)), axis=-1) <= 1e-12 * scale.reshape(-1)):
        raise KernelError("G Σ G = 0 (every input of the batch identical up to a shift): BN is undefined")


def _check_eps(eps: Any) -> None:
    if _is_concrete(eps):
        e = np.asarray(eps, dtype=np.float64)
        if not np.all(np.isfinite(e)) or np.any(e < 0):
            raise KernelError(f"eps must be a finite number >= 0, got {eps!r}")


def _as_float(x: Any) -> Any:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _as_float_host(x: Any) -> Any:
    """:func:`_as_float`, but concrete non-JAX input (numpy, lists) stays a numpy array: the concrete path works
    in numpy, and a round trip through a device array cost ~2 µs per 16 × 16 matrix."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return _as_float(x)
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


#: Elements of the per-node (n, B, B) arrays held at once across a batch of matrices: small enough to stay in
#: cache (B = 16, 1024 Σ, 26 nodes, one core: 1 << 19 took 9.4 ms, 1 << 20 9.0 ms, 1 << 21 9.7 ms, 1 << 22 24 ms).
_CHUNK_ELEMENTS = 1 << 20


def _map_batched(fn: Any, xs: Any, per_node: int) -> Any:
    """``vmap(fn)`` over the leading axis of ``xs`` in chunks, so that about ``_CHUNK_ELEMENTS`` of the
    (nodes, B, B) intermediates are alive at once (``per_node``: nodes times the number of such arrays)."""
    first = jax.tree_util.tree_leaves(xs)[0]
    k, B = first.shape[0], first.shape[-1]
    size = max(1, min(k, _CHUNK_ELEMENTS // (per_node * B * B)))
    if size >= k:
        return jax.vmap(fn)(xs)
    steps = -(-k // size)
    return jax.lax.map(fn, xs, batch_size=-(-k // steps))  # equal steps (128 at 24 nodes: 2 × 64, not 85 + 43)


def _flat_spec(lam: Any, Y: Any) -> tuple[Any, Any] | None:
    """(λ (k, B), Y (k, B − 1, B − 1)) of :func:`_host_spectra` flattened over the batch, or None (the kernels
    then do their own ``eigh``)."""
    if lam is None or Y is None:
        return None
    return jnp.reshape(lam, (-1, lam.shape[-1])), jnp.reshape(Y, (-1, *Y.shape[-2:]))


def _out_shape(cov: Any, lam: Any) -> tuple[int, ...]:
    """Shape (..., B, B) of the results: ``cov``'s, or from the spectra (..., B) when ``cov`` is None."""
    return tuple(cov.shape) if cov is not None else (*lam.shape, lam.shape[-1])


@partial(jax.jit, donate_argnums=0)
def _scatter_into(out: Any, idx: Any, block: Any) -> Any:
    """The batch buffers ``out`` (donated: updated in place) with a call's ``block`` of results at rows ``idx``
    (rows out of range, the block's padding, are dropped). A program of its own, so that the kernel programs
    stay independent of the batch size (one compile per rule and block size)."""
    return jax.tree_util.tree_map(lambda o, v: o.at[idx].set(v, mode="drop"), out, block)


@partial(jax.jit, static_argnums=0)
def _zeros(shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    """Zero buffers (float64 under the kernels' x64) of the given shapes, for :func:`_scatter_into`: one compiled
    program per call of the public functions. Op by op, ``jnp.zeros`` had cost 0.1–0.6 ms of the calling
    thread per buffer (1000 Σ at B = 16, measured while the kernels of the previous call ran); this takes
    10–50 µs."""
    return tuple(jnp.zeros(s) for s in shapes)


@kernel_jit(("hom", "rule", "with_error"))
def _nngp_exact(
    cov: Any, eps: Any, hom: Homogeneous, rule: SRule, with_error: bool, lam: Any = None, Q: Any = None
) -> Any:
    """V (and the error estimate) for a stack ``cov`` (..., B, B). ``lam``, ``Q``: the host spectra λ and Y
    (:func:`_host_spectra`); without them an ``eigh`` per matrix here. With them ``cov`` may be None (concrete
    batches: no tangents, and one array less to pass per call)."""
    per = 3 * rule.nodes if rule.kind == "de" else 2 * rule.nodes
    spec = _flat_spec(lam, Q)
    if spec is None:
        flat = cov.reshape((-1, *cov.shape[-2:]))
        V, Vh = _map_batched(lambda c: _nngp_one(c, eps, hom, rule, with_error), flat, per)
    elif cov is None:
        V, Vh = _map_batched(lambda a: _nngp_one(None, eps, hom, rule, with_error, a), spec, per)
    else:
        flat = cov.reshape((-1, *cov.shape[-2:]))
        V, Vh = _map_batched(lambda a: _nngp_one(a[0], eps, hom, rule, with_error, (a[1], a[2])), (flat, *spec), per)
    shape = _out_shape(cov, lam)
    V, Vh = V.reshape(shape), Vh.reshape(shape)
    if with_error:
        return V, jnp.max(jnp.abs(V - Vh), axis=(-2, -1)) / jnp.max(jnp.abs(V), axis=(-2, -1))
    return V


def _exact_parts(activation: Any, exact: bool | None, need_ntk: bool) -> Homogeneous | None:
    hom = homogeneous(activation)
    ok = hom is not None and hom.alpha > 0 and (hom.alpha == 1.0 or not need_ntk)
    if exact and not ok:
        what = "NNGP and NTK" if need_ntk else "NNGP"
        raise ActivationError(
            f"no exact {what} for {activation!r} after BN: the exact path takes positive-homogeneous φ "
            f"(identity, relu, leaky_relu(a){'' if need_ntk else ', alpha_relu(α)'}); pass exact=False for Monte Carlo"
        )
    if exact is False:
        return None
    return hom if ok else None


def _resolve_nodes(
    nodes: int | None, cov: Any, eps: Any, beta_min: float, tail: float = 0.0, rule: SRule | None = None
) -> SRule:
    """The s-rule: ``rule`` if given, else the DE rule with ``nodes`` if given, else :func:`choose_rule`
    on concrete inputs (under jit: the DE rule with :data:`DEFAULT_NODES`)."""
    if rule is not None:
        if not isinstance(rule, SRule) or rule.kind not in ("gauss", "de") or rule.nodes < 2:
            raise KernelError(f"rule must be an SRule from choose_rule(), got {rule!r}")
        if rule.kind == "gauss" and _is_concrete(eps) and float(np.max(np.asarray(eps))) != 0.0:
            raise KernelError("the Gauss-Jacobi rule is for eps = 0; use choose_rule(cov, eps) for eps > 0")
        return rule
    if nodes is None:
        if _is_concrete(cov) and _is_concrete(eps):
            return choose_rule(cov, eps, beta_min, tail=tail)
        return SRule("de", DEFAULT_NODES)
    if not isinstance(nodes, int) or nodes < 9 or nodes % 2 == 0:
        raise KernelError(f"nodes must be an odd integer >= 9, got {nodes!r}")
    return SRule("de", nodes)


#: Matrices per call of a jitted kernel on a concrete batch (the last call of a group padded to a power of two).
_BLOCK = 128
#: While spectra arrive, the waiting matrices are dispatched in blocks of this many (:func:`_next_block`; B = 16,
#: 1000 Σ, in A/B runs: with blocks of one rule 128 took 2–3% less time than 64; with mixed blocks 64 was
#: slower and 256 no faster).
_STREAM_BLOCK = 128


def _blocks(n: int) -> list[int]:
    """Call sizes covering ``n`` matrices of one rule group: blocks of :data:`_BLOCK`, then the rest padded
    to a power of two, so that jit compiles at most two programs per rule and call, from a fixed set
    (a 1000-Σ digits batch at B = 16: 8 programs for its 7 rules; cut into powers of two it took 16)."""
    full, rest = divmod(n, _BLOCK)
    return [_BLOCK] * full + ([1 << (rest - 1).bit_length()] if rest else [])


class _Calls:
    """Kernel calls on a concrete batch, dispatched as they are made and gathered at the end.

    ``fn(*[f[sel] for f in flats], rule)`` per call; the inputs are numpy (op-by-op JAX indexing cost more
    than the kernels) and JAX runs the call asynchronously, so host work continues while it runs. With
    several local devices each call goes to the least loaded one (by matrices × nodes) and the calls run
    side by side (:mod:`symbnmf.kernels._host`)."""

    def __init__(self, fn: Callable[..., Any], flats: tuple[np.ndarray, ...], make_out: Any = None) -> None:
        self.fn, self.flats = fn, flats
        self.devices = kernel_devices()
        self.load = [0.0] * len(self.devices)
        self.parts: list[tuple[np.ndarray, Any]] = []
        self.k = flats[0].shape[0]
        # one device and a batch of a block or more: each call scatters its block into donated batch buffers (no
        # host gather, and the result is returned before the kernels finish); else results gathered on the host
        # (for a few matrices that costs less than the buffers' dispatches, and compiles no scatter per size)
        buffers = make_out is not None and len(self.devices) == 1 and self.k >= _STREAM_BLOCK
        self.out = make_out(self.k) if buffers else None

    def call(self, rule: SRule, idx: np.ndarray) -> None:
        """One group's matrices ``idx`` in calls of :func:`_blocks` sizes (the last padded with copies of the
        group's first matrix)."""
        sizes = _blocks(len(idx))
        padded = np.concatenate([idx, np.full(sum(sizes) - len(idx), idx[0])])
        start = 0
        for size in sizes:
            sel = padded[start : start + size]
            args = [f[sel] for f in self.flats]
            real = idx[start : start + size]
            if self.out is not None:
                dst = np.concatenate([real, np.full(size - len(real), self.k)])  # padding: out of range, dropped
                self.out = _scatter_into(self.out, dst, self.fn(*args, rule))
                start += size
                continue
            if len(self.devices) > 1:
                d = min(range(len(self.load)), key=self.load.__getitem__)
                self.load[d] += size * rule.nodes
                args = jax.device_put(args, self.devices[d])
            self.parts.append((real, self.fn(*args, rule)))
            start += size

    def gather(self, batch_shape: tuple[int, ...]) -> Any:
        """The results scattered back into the batch order, with the batch shape ``batch_shape``."""
        if self.out is not None:
            if len(batch_shape) == 1:
                return self.out
            return jax.tree_util.tree_map(lambda o: o.reshape((*batch_shape, *o.shape[1:])), self.out)
        parts = self.parts
        treedef = jax.tree_util.tree_structure(parts[0][1])
        outs: list[Any] = []
        for leaf, first in enumerate(jax.tree_util.tree_leaves(parts[0][1])):
            first = np.asarray(first)
            o = np.zeros((self.flats[0].shape[0], *first.shape[1:]), first.dtype)
            for real, res in parts:
                o[real] = np.asarray(jax.tree_util.tree_leaves(res)[leaf])[: len(real)]
            outs.append(jnp.asarray(o.reshape((*batch_shape, *o.shape[1:]))))
        return jax.tree_util.tree_unflatten(treedef, outs)


def _grouped(
    fn: Callable[..., Any],
    batch_shape: tuple[int, ...],
    flats: tuple[np.ndarray, ...],
    groups: dict[SRule, np.ndarray],
    make_out: Any = None,
) -> Any:
    """``fn(*[f[idx] for f in flats], rule)`` per group of flat matrix indices (:class:`_Calls`, ``make_out`` as
    there), scattered back into the batch order and shape ``batch_shape``."""
    calls = _Calls(fn, flats, make_out)
    for rule, idx in groups.items():
        calls.call(rule, idx)
    return calls.gather(batch_shape)


def _concrete(
    fn: Callable[..., Any],
    cov: Any,
    extra: tuple[np.ndarray, ...],
    *,
    eps: Any,
    beta: float,
    tail: float,
    nodes: int | None,
    rule: SRule | None,
    check: str,
    built: bool = False,
    make_out: Any = None,
) -> Any:
    """The exact kernel ``fn(*extra, lam, Y, rule)`` of a concrete batch ``cov`` (..., B, B) (λ, Y: the host
    spectra of :func:`_host_spectra`), per matrix rule, with the host work and the kernels overlapped.
    ``make_out(k)``: zero buffers for the k matrices' results, which each call's block is scattered into
    (:class:`_Calls`); the result is then returned as soon as the host work is done.

    The Σ_G are decomposed on the host threads in chunks (:func:`_start_spectra`, which also checks the
    values: ``check``, ``built`` as :func:`_check_cov`, and finds each matrix's Gauss sizes); as each chunk
    arrives, its matrices join the waiting pool and every full block of :data:`_STREAM_BLOCK` is dispatched
    at once (:func:`_next_block`), so the kernels run while the host decomposes the next chunks. A failed
    check raises (the kernels' results are dropped). The leftovers go in few calls at the end
    (:func:`_merged`). ``nodes``/``rule`` fix one rule for all and ε > 0 needs every spectrum for its DE
    rule: then the spectra come first and the groups of :func:`_rule_groups` (padding filled with matrices
    of smaller rules) follow. ``extra``: further per-matrix numpy inputs
    (k, ...) in flat batch order."""
    c = np.asarray(cov, dtype=np.float64)
    B = c.shape[-1]
    flat = c.reshape(-1, B, B)
    k = flat.shape[0]
    streaming = nodes is None and rule is None and float(np.max(np.asarray(eps))) == 0.0
    streaming = streaming and len(chunk_bounds(k, _HOST_CHUNK)) > 1
    if not streaming:
        lam, Q = _host_spectra(c, check, built=built)
        if nodes is None and rule is None:
            groups = _rule_groups(c, eps, beta, tail, lam)
        else:
            groups = {_resolve_nodes(nodes, c, eps, beta, tail, rule): np.arange(k)}
        return _grouped(fn, c.shape[:-2], (*extra, lam, Q), groups, make_out)

    sizes = np.empty((k, 2), dtype=np.int64)
    lam, Q, bounds, futures = _start_spectra(flat, check, built, sizes, tail)
    calls = _Calls(fn, (*extra, lam, Q), make_out)
    pool = np.zeros(0, dtype=np.int64)
    for (a, b), future in zip(bounds, futures):
        if future.exception() is not None:
            break
        pool = np.concatenate([pool, a + np.flatnonzero(np.max(sizes[a:b], axis=-1) > 0)])  # DE rows wait
        while (nxt := _next_block(pool, sizes)) is not None:
            calls.call(nxt[0], pool[nxt[1]])
            pool = np.delete(pool, nxt[1])
    raise_first(futures)
    de = np.flatnonzero(_chosen(sizes)[0] == 0)
    for r, idx in _merged(pool, sizes).items():  # the last partial blocks
        calls.call(r, idx)
    if de.size:
        calls.call(SRule("de", _nodes_from_spectra(lam[de], eps, beta, tail)), de)
    return calls.gather(c.shape[:-2])


def _next_block(pool: np.ndarray, sizes: np.ndarray) -> tuple[SRule, np.ndarray] | None:
    """The next full stream block out of the matrices ``pool`` waiting for a kernel call (rows of
    :func:`_row_sizes`'s ``sizes``, each with a Gauss size for at least one map), or None while fewer than
    :data:`_STREAM_BLOCK` wait: the :data:`_STREAM_BLOCK` smallest sizes for one map, with the largest of
    them as the block's rule (more nodes only lower a matrix's error), for the map whose block needs fewer
    nodes. Returns (rule, positions in ``pool``).

    The blocks mix neighbouring rule sizes, so that the kernels start once a block of matrices has arrived
    and only the last partial block waits for the end of the host work. Blocks of one exact rule had left
    a third to a half of a batch spread over the partial blocks of 7–9 rules until the end of the host work:
    at B = 16, 1000 Σ, the public call took 3–8% (Wishart Σ) and 0–7% (digits batches) more wall time in
    three in-process A/B runs, although it evaluated 7–8% fewer nodes (Wishart: 32.8 per matrix against
    35.3 now; digits: 25.0 against 26.9). Choosing the window of sizes that wastes the fewest nodes instead
    of the smallest sizes evaluated 33.1 and 25.4, with no gain in wall time."""
    if len(pool) < _STREAM_BLOCK:
        return None
    best: tuple[int, float, np.ndarray] | None = None
    for col, power in ((0, 1.0), (1, 0.5)):
        need = sizes[pool, col]
        usable = int(np.count_nonzero(need))
        if usable < _STREAM_BLOCK:
            continue
        order = np.argsort(np.where(need > 0, need, np.iinfo(need.dtype).max), kind="stable")[:_STREAM_BLOCK]
        size = int(need[order[-1]])
        if best is None or size < best[0]:
            best = (size, power, order)
    return None if best is None else (SRule("gauss", best[0], best[1]), best[2])


def _by_rule(nodes: np.ndarray, half: np.ndarray) -> dict[SRule, np.ndarray]:
    """Row indices per Gauss rule from :func:`_chosen`'s sizes and maps (rows of size 0 left out), smaller
    rules first."""
    rows = np.flatnonzero(nodes > 0)
    key = 2 * nodes[rows] + half[rows]  # size, then the map: smaller rules first
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    return {
        SRule("gauss", int(kk) // 2, 0.5 if kk % 2 else 1.0): rows[part]
        for kk, part in zip(keys.tolist(), np.split(order, starts[1:]))
    }


def _chosen(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of :func:`_row_sizes`: the Gauss size of the cheaper map and whether it is p = ½ (p = 1 on
    ties); size 0 where neither fits (the DE rule)."""
    n1, n2 = sizes[:, 0], sizes[:, 1]
    half = (n2 > 0) & ((n1 == 0) | (n2 < n1))
    return np.where(half, n2, n1), half


#: What one more kernel call costs, in node evaluations of one matrix (B = 16: a call's dispatch and start,
#: ~50–80 µs, against ~0.3 µs per node per matrix), for :func:`_merged`'s choice of blocks.
_CALL_NODES = 256


def _run_cost(n: int, size: int) -> int:
    """Node evaluations of ``n`` matrices evaluated with ``size`` nodes in calls of :func:`_blocks` (padding
    included), plus :data:`_CALL_NODES` per call."""
    blocks = _blocks(n)
    return sum(blocks) * size + _CALL_NODES * len(blocks)


def _merged(idx: np.ndarray, sizes: np.ndarray) -> dict[SRule, np.ndarray]:
    """Few calls for the matrices ``idx`` left over when the spectra stream in (less than a stream block for
    either map, :func:`_next_block`): per map, the sizes are taken in order and runs of consecutive sizes
    share one rule, the largest in the run (more nodes only lower the error). The runs minimise the node
    evaluations, padding of the calls (:func:`_blocks`) included, plus :data:`_CALL_NODES` per call
    (dynamic programming over the distinct sizes). On 1000 Wishart Σ at B = 16 cutting the sorted leftovers into blocks of 128 had
    evaluated 98 matrices with 48 nodes for the sake of a few; one call per size had cost ~13 calls of
    0.2–0.4 ms at the end of a batch."""
    nodes_, half = _chosen(sizes[idx])
    out: dict[SRule, np.ndarray] = {}
    for h in (False, True):
        sel = (nodes_ > 0) & (half == h)
        if not np.any(sel):
            continue
        rows, need = idx[sel], nodes_[sel]
        values, counts = np.unique(need, return_counts=True)
        ends = np.concatenate([[0], np.cumsum(counts)])  # the first j sizes hold ends[j] matrices
        best = [0] * (len(values) + 1)
        cut = [0] * (len(values) + 1)
        for j in range(1, len(values) + 1):  # best[j]: the first j sizes; the last run is values[i:j]
            best[j], cut[j] = min(
                (best[i] + _run_cost(int(ends[j] - ends[i]), int(values[j - 1])), i) for i in range(j)
            )
        j = len(values)
        while j > 0:
            i = cut[j]
            run = np.isin(need, values[i:j])
            out[SRule("gauss", int(values[j - 1]), 0.5 if h else 1.0)] = rows[run]
            j = i
    return out


@in_float64(wait=False)
def batchnorm_nngp(
    cov: Any,
    activation: Any = "relu",
    *,
    eps: Any = 0.0,
    exact: bool | None = None,
    nodes: int | None = None,
    rule: SRule | None = None,
    key: Any = None,
    samples: int = 200_000,
    return_error: bool = False,
) -> Any:
    """V(Σ) = E_{h ~ N(0, Σ)}[φ(BN(h)) φ(BN(h))ᵀ], BN with the biased batch variance and ε.

    Thm 3.2 (Laplace method) with the ε term, see the module docstring. ``cov``: shape (..., B, B),
    symmetric PSD, B >= 4, batched over the leading axes. ``activation``: catalog name, expression
    or :class:`symbnmf.Activation`.

    * Positive-homogeneous φ (identity, relu, leaky_relu(a), alpha_relu(α)): exact in float64
      to about 1e-12 relative (measured against ``laplace_V`` at 30 digits); jit, vmap and grad
      (in Σ and ε) work. Returns an array (and, with ``return_error``, an error estimate per
      matrix: the DE rule's half rule, or the next smaller Gauss rule, both conservative); on
      concrete input, as soon as the input is checked and decomposed, the array computed
      asynchronously as a jitted call's (consecutive calls overlap). Enable
      float64 (``jax.enable_x64``) for that accuracy. The s-rule is chosen from the concrete input
      (:func:`choose_rule`); under your own ``jit`` pass ``rule=choose_rule(representative_cov)``
      (else the double-exponential rule with :data:`DEFAULT_NODES` nodes) or ``nodes=`` (DE).
    * Any other φ (or ``exact=False``): an unbiased Monte Carlo estimate over ``samples`` draws of h
      (``key``: a ``jax.random`` key, default key 0), returned as :class:`MonteCarloKernel`
      ``(mean, stderr, samples)``. The standard error scales as 1/√samples: for an absolute
      tolerance τ on entries of size O(1) take samples ≈ (3·Var/τ²), e.g. ~10⁶ for τ = 3e-3.
    * ``exact=True`` raises :class:`ActivationError` when no exact path exists.

    Bad input (non-symmetric or non-PSD Σ, NaN, B < 4, ε < 0) raises :class:`KernelError` /
    :class:`BatchSizeError` when the arguments are concrete; under ``jit`` it is not checked.
    """
    cov = _as_float_host(cov)
    _check_cov(cov, values=False)
    _check_eps(eps)
    hom = _exact_parts(activation, exact, need_ntk=False)
    fast = hom is not None and _is_concrete(cov) and _is_concrete(eps)
    if not fast:
        _check_cov(cov)
    if hom is None:
        return _waited(_nngp_monte_carlo(cov, activation, eps, key, samples))
    if fast:  # one host eigh per matrix (values checked on the way): its rule, and no eigh in the kernel
        eps64 = np.asarray(eps, dtype=np.float64)  # numpy: jnp.asarray is an op dispatch (~0.3 ms)
        fn = lambda w, q, r: _nngp_exact(None, eps64, hom, r, return_error, w, q)
        B = cov.shape[-1]

        def make_out(k: int) -> Any:
            return _zeros(((k, B, B), (k,))) if return_error else _zeros(((k, B, B),))[0]

        return _concrete(
            fn, cov, (), eps=eps, beta=hom.alpha, tail=0.0, nodes=nodes, rule=rule, check="cov", make_out=make_out
        )
    srule = _resolve_nodes(nodes, cov, eps, hom.alpha, rule=rule)
    return _nngp_exact(cov, jnp.asarray(eps, dtype=cov.dtype), hom, srule, return_error)


@kernel_jit(("hom", "rule"))
def _ntk_exact(
    cov: Any, theta: Any, eps: Any, hom: Homogeneous, rule: SRule, lam: Any = None, Q: Any = None
) -> tuple[Any, Any]:
    """(V, E[J Θ Jᵀ]) for a stack ``cov``; ``lam``, ``Q`` (and ``cov`` None) as in :func:`_nngp_exact`."""
    shape = _out_shape(cov, lam)
    tflat = jnp.broadcast_to(theta, shape).reshape((-1, *shape[-2:]))
    spec = _flat_spec(lam, Q)
    if spec is None:
        flat = cov.reshape((-1, *cov.shape[-2:]))
        V, T = _map_batched(lambda ct: _ntk_one(ct[0], ct[1], eps, hom, rule), (flat, tflat), 8 * rule.nodes)
    elif cov is None:
        V, T = _map_batched(
            lambda a: _ntk_one(None, a[0], eps, hom, rule, (a[1], a[2])), (tflat, *spec), 8 * rule.nodes
        )
    else:
        flat = cov.reshape((-1, *cov.shape[-2:]))
        V, T = _map_batched(
            lambda a: _ntk_one(a[0], a[1], eps, hom, rule, (a[2], a[3])), (flat, tflat, *spec), 8 * rule.nodes
        )
    return V.reshape(shape), T.reshape(shape)


@in_float64(wait=False)
def batchnorm_ntk(
    cov: Any,
    theta: Any,
    activation: Any = "relu",
    *,
    eps: Any = 0.0,
    exact: bool | None = None,
    nodes: int | None = None,
    rule: SRule | None = None,
    key: Any = None,
    samples: int = 100_000,
) -> tuple[Any, Any]:
    """(V, E[J Θ Jᵀ]) for one BN + φ layer, J = ∂φ(BN(h))/∂h, h ~ N(0, Σ) (the NTK transport).

    A wide network's NTK at the output of BN + φ is E[J Θ Jᵀ] with Θ the NTK of the pre-activations
    h (gradient independence, Jacot et al.); V is :func:`batchnorm_nngp`. Exact for φ of degree 1
    (identity, relu, leaky_relu(a)) by the Laplace/Stein reduction in the module docstring; other φ:
    Monte Carlo (returns two :class:`MonteCarloKernel`). ``theta`` broadcasts against ``cov``.
    """
    cov = _as_float_host(cov)
    _check_cov(cov, values=False)
    theta = _as_float_host(theta)
    if _is_concrete(theta) and not np.all(np.isfinite(np.asarray(theta))):
        raise KernelError("theta contains NaN or inf")
    if theta.shape[-2:] != cov.shape[-2:]:
        raise KernelError(f"theta must have the shape of cov's last two axes {cov.shape[-2:]}, got {theta.shape}")
    _check_eps(eps)
    hom = _exact_parts(activation, exact, need_ntk=True)
    fast = hom is not None and _is_concrete(cov) and _is_concrete(eps) and _is_concrete(theta)
    if not fast:
        _check_cov(cov)
    if hom is None:
        return _waited(_ntk_monte_carlo(cov, theta, activation, eps, key, samples))
    if fast:
        tflat = np.broadcast_to(np.asarray(theta, dtype=np.float64), cov.shape).reshape(-1, *cov.shape[-2:])
        eps64 = np.asarray(eps, dtype=np.float64)
        fn = lambda t, w, q, r: _ntk_exact(None, t, eps64, hom, r, w, q)
        B = cov.shape[-1]
        return _concrete(
            fn,
            cov,
            (tflat,),
            eps=eps,
            beta=1.0,
            tail=1.0,
            nodes=nodes,
            rule=rule,
            check="cov",
            make_out=lambda k: _zeros(((k, B, B), (k, B, B))),
        )
    srule = _resolve_nodes(nodes, cov, eps, 1.0, tail=1.0, rule=rule)
    return _ntk_exact(cov, theta, jnp.asarray(eps, dtype=cov.dtype), hom, srule)


# ---------------------------------------------------------------------------------------------
# Monte Carlo (any φ)
# ---------------------------------------------------------------------------------------------


def _phi_jax(activation: Any) -> Any:
    from symbnmf._activations import get_activation

    return get_activation(activation).numeric("jax")


def _sample_bn(cov: Any, eps: Any, key: Any, samples: int) -> Any:
    B = cov.shape[-1]
    lam, Q = jnp.linalg.eigh(0.5 * (cov + jnp.swapaxes(cov, -1, -2)))
    root = Q * jnp.sqrt(jnp.clip(lam, 0.0, None))[..., None, :]
    z = jax.random.normal(key, (samples, *cov.shape[:-2], B), dtype=cov.dtype)
    return jnp.einsum("...ij,n...j->n...i", root, z)


def _bn_phi(phi: Any, h: Any, eps: Any) -> Any:
    B = h.shape[-1]
    g = h - jnp.mean(h, axis=-1, keepdims=True)
    n = jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True) + B * eps)
    return phi(jnp.sqrt(B) * g / n)


def _mean_se(x: Any, samples: int) -> tuple[Any, Any]:
    m = jnp.mean(x, axis=0)
    se = jnp.std(x, axis=0, ddof=1) / math.sqrt(samples)
    return m, se


def _nngp_monte_carlo(cov: Any, activation: Any, eps: Any, key: Any, samples: int) -> MonteCarloKernel:
    if samples < 2:
        raise KernelError("samples must be >= 2 for a standard error")
    key = jax.random.PRNGKey(0) if key is None else key
    phi = _phi_jax(activation)
    h = _sample_bn(cov, jnp.asarray(eps, cov.dtype), key, samples)
    f = _bn_phi(phi, h, eps)
    m, se = _mean_se(f[..., :, None] * f[..., None, :], samples)
    return MonteCarloKernel(m, se, samples)


def _ntk_monte_carlo(
    cov: Any, theta: Any, activation: Any, eps: Any, key: Any, samples: int
) -> tuple[MonteCarloKernel, MonteCarloKernel]:
    if samples < 2:
        raise KernelError("samples must be >= 2 for a standard error")
    key = jax.random.PRNGKey(0) if key is None else key
    phi = _phi_jax(activation)
    h = _sample_bn(cov, jnp.asarray(eps, cov.dtype), key, samples)
    f = partial(_bn_phi, phi, eps=eps)
    jac = jax.vmap(jax.jacfwd(f))  # per sample (and batch) B x B Jacobians
    flat = h.reshape((-1, h.shape[-1]))
    J = jac(flat).reshape((*h.shape, h.shape[-1]))
    fx = f(h)
    tb = jnp.broadcast_to(theta, cov.shape)
    JTJ = jnp.einsum("n...ia,...ab,n...jb->n...ij", J, tb, J)
    mv, sv = _mean_se(fx[..., :, None] * fx[..., None, :], samples)
    mt, st = _mean_se(JTJ, samples)
    return MonteCarloKernel(mv, sv, samples), MonteCarloKernel(mt, st, samples)
