"""Layer combinators in the conventions of neural-tangents' ``stax``, with batch normalization.

Each layer is a triple ``(init_fn, apply_fn, kernel_fn)``:

* ``init_fn(key, input_shape) -> (output_shape, params)``;
* ``apply_fn(params, x)`` runs the finite-width network on a batch ``x`` of shape (B, features)
  (BN normalises each feature over the batch axis 0 with the biased variance and ε);
* ``kernel_fn(x1, x2=None, get=None)`` the infinite-width NNGP and NTK (NTK parameterisation):
  ``get=None`` gives a :class:`Kernel` ``(nngp, ntk)``, a string one array, a tuple a tuple.

Dense (``Dense(out_dim, W_std, b_std)``): h = W_std/√N · x W + b_std · b, W, b standard normal, so
K' = W_std² K + b_std², Θ' = W_std² Θ + K' (Jacot et al.; neural-tangents' ``parameterization='ntk'``).
The input kernel is K₀ = x₁ x₂ᵀ/d, Θ₀ = 0.

``BatchNorm(eps)`` followed by an activation layer is *fused* by :func:`serial` into one exact
BN + φ kernel (BN's output is not Gaussian, so BN and φ cannot be composed as separate Gaussian maps):
V(Σ) and E[J Θ Jᵀ] of :mod:`symbnmf.kernels.nngp` (exact for identity/relu/leaky_relu, Monte Carlo
with a fixed key for other φ). A BN not followed by an activation is BN + identity. An activation
without a BN before it acts on the Gaussian pre-activations (arccosine kernels, degree-1 φ only).

Two batches (``x2`` given): the kernel is propagated on the joint (B₁+B₂)×(B₁+B₂) matrices; every
BN normalises each batch with its own statistics, so the cross blocks through a BN + φ are the
cross-batch kernels (:func:`symbnmf.kernels.cross.batchnorm_cross_ntk`: NNGP and NTK, exact for
identity/relu/leaky_relu). For other φ every block of that layer comes from one seeded Monte Carlo
sampling of the joint pre-activations (so the joint kernels stay positive semidefinite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from symbnmf._errors import ActivationError
from symbnmf.kernels.nngp import (
    Homogeneous,
    KernelError,
    _check_cov,
    _choose_from_spectra,
    _host_spectra,
    _is_concrete,
    _ntk_exact,
    _phi_jax,
    _resolve_nodes,
    batchnorm_ntk,
    gaussian_kernels,
    homogeneous,
    in_float64,
)


class Kernel(NamedTuple):
    """Infinite-width kernels of a network on a batch: ``nngp`` (K) and ``ntk`` (Θ), each (B₁, B₂)."""

    nngp: Any
    ntk: Any


@dataclass(frozen=True)
class _Spec:
    kind: str  # "dense" | "batchnorm" | "activation" | "identity" | "serial"
    args: dict


class Layer(tuple):
    """``(init_fn, apply_fn, kernel_fn)`` with the layer's description in ``.spec`` (used by :func:`serial`)."""

    spec: _Spec

    def __new__(cls, init_fn: Callable, apply_fn: Callable, kernel_fn: Callable, spec: _Spec) -> Layer:
        obj = super().__new__(cls, (init_fn, apply_fn, kernel_fn))
        obj.spec = spec
        return obj


# ---------------------------------------------------------------------------------------------
# kernel state: joint matrices over the union of the batches
# ---------------------------------------------------------------------------------------------


@dataclass
class _State:
    K: Any  # (n, n) joint NNGP
    T: Any  # (n, n) joint NTK
    split: int | None  # B₁ when two batches are stacked, else None


def _input_state(x1: Any, x2: Any) -> _State:
    x1 = jnp.asarray(x1)
    if x1.ndim != 2:
        raise KernelError(f"inputs must be a batch of rows, shape (B, features); got shape {x1.shape}")
    if not jnp.issubdtype(x1.dtype, jnp.floating):
        x1 = x1.astype(jnp.result_type(float))
    split = None
    x = x1
    if x2 is not None:
        x2 = jnp.asarray(x2, dtype=x1.dtype)
        if x2.ndim != 2 or x2.shape[1] != x1.shape[1]:
            raise KernelError(f"x2 must have shape (B2, {x1.shape[1]}), got {x2.shape}")
        split = x1.shape[0]
        x = jnp.concatenate([x1, x2], axis=0)
    K = x @ x.T / x.shape[1]
    return _State(K, jnp.zeros_like(K), split)


def _blocks(state: _State) -> list[tuple[slice, slice]]:
    n = state.K.shape[0]
    if state.split is None:
        return [(slice(0, n), slice(0, n))]
    a, b = slice(0, state.split), slice(state.split, n)
    return [(a, a), (b, b), (a, b)]


def _dense_kernel(W_std: float, b_std: float) -> Callable[[_State], _State]:
    def f(st: _State) -> _State:
        K = W_std**2 * st.K + b_std**2
        return _State(K, W_std**2 * st.T + K, st.split)

    return f


def _gaussian_activation_kernel(activation: Any) -> Callable[[_State], _State]:
    hom = homogeneous(activation)
    if hom is None or hom.alpha != 1.0:
        raise ActivationError(
            f"the kernel of {getattr(activation, 'label', activation)} on Gaussian pre-activations (no BatchNorm before it) is implemented "
            "for identity, relu, leaky_relu(a) only; put a BatchNorm before it or use one of those"
        )

    def f(st: _State) -> _State:
        V, W, _ = gaussian_kernels(st.K, hom, derivatives=True)
        return _State(V, st.T * W, st.split)

    return f


def _bn_activation_kernel(activation: Any, eps: float, nodes: int | None, samples: int, seed: int) -> Callable:
    found = homogeneous(activation)
    exact = found is not None and found.alpha == 1.0
    hom = found if found is not None else Homogeneous(1.0, 1.0, 0.0)  # read only when exact

    def same_batch(K: Any, T: Any) -> tuple[Any, Any]:
        what = "the pre-activation NNGP of a batch at a BatchNorm layer"
        fast = exact and _is_concrete(K) and _is_concrete(T)
        _check_cov(K, what, built=True, values=not fast)
        if fast:  # one host eigh (values checked on the way): the rule, and none in the kernel
            lam, Q = _host_spectra(K, check=what, built=True)
            n = (
                _choose_from_spectra(lam, eps, 1.0, 1.0)
                if nodes is None
                else _resolve_nodes(nodes, K, eps, 1.0, tail=1.0)
            )
            return _ntk_exact(K, T, jnp.asarray(eps, jnp.float64), hom, n, lam, Q)
        if exact:
            n = _resolve_nodes(nodes, K, eps, 1.0, tail=1.0)
            return _ntk_exact(K, T, jnp.asarray(eps, K.dtype), hom, n)
        mv, mt = batchnorm_ntk(K, T, activation, eps=eps, exact=False, key=jax.random.PRNGKey(seed), samples=samples)
        return mv.mean, mt.mean

    def f(st: _State) -> _State:
        if st.split is None:
            V, Th = same_batch(st.K, st.T)
            return _State(V, Th, None)
        from symbnmf.kernels.cross import _joint_monte_carlo, batchnorm_cross_ntk

        B1 = st.split
        a = slice(0, B1)
        b = slice(B1, st.K.shape[0])
        if not exact:
            _check_cov(st.K[a, a], "the pre-activation NNGP of the first batch at a BatchNorm layer", built=True)
            _check_cov(st.K[b, b], "the pre-activation NNGP of the second batch at a BatchNorm layer", built=True)
            # one joint sampling for every block, so that the joint kernels stay positive semidefinite
            key = jax.random.PRNGKey(seed)
            mv, mt = _joint_monte_carlo(st.K, st.T, B1, activation, jnp.asarray(eps, st.K.dtype), key, samples)
            return _State(mv.mean, mt.mean, st.split)
        V11, T11 = same_batch(st.K[a, a], st.T[a, a])
        V22, T22 = same_batch(st.K[b, b], st.T[b, b])
        V12, T12 = batchnorm_cross_ntk(
            st.K[a, a], st.K[b, b], st.K[a, b], st.T[a, b], activation, eps=eps, exact=True, nodes=nodes
        )
        V = jnp.block([[V11, V12], [V12.T, V22]])
        Th = jnp.block([[T11, T12], [T12.T, T22]])
        return _State(V, Th, st.split)

    return f


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------


def _make_kernel_fn(steps: Sequence[Callable[[_State], _State]]) -> Callable:
    @in_float64
    def kernel_fn(
        x1: Any, x2: Any = None, get: Any = None, *, progress: Callable[[int, int], None] | None = None
    ) -> Any:
        """NNGP and NTK of the infinite-width network on the batch ``x1`` (and ``x2``, each with its own BN
        statistics). ``get``: None (a :class:`Kernel`), "nngp", "ntk" or a tuple of those.
        ``progress(done, total)`` is called after each kernel step (for progress bars)."""
        names = ("nngp", "ntk") if get is None else ((get,) if isinstance(get, str) else tuple(get))
        for n in names:
            if n not in ("nngp", "ntk"):
                raise KernelError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
        st = _input_state(x1, x2)
        for i, step in enumerate(steps):
            st = step(st)
            if progress is not None:
                progress(i + 1, len(steps))
        if st.split is None:
            out = {"nngp": st.K, "ntk": st.T}
        else:
            a, b = slice(0, st.split), slice(st.split, st.K.shape[0])
            out = {"nngp": st.K[a, b], "ntk": st.T[a, b]}
        if get is None:
            return Kernel(out["nngp"], out["ntk"])
        if isinstance(get, str):
            return out[get]
        return tuple(out[n] for n in names)

    return kernel_fn


def Dense(out_dim: int, W_std: float = 1.0, b_std: float = 0.0) -> Layer:
    """Fully connected layer, NTK parameterisation: h = W_std/√N · x W + b_std · b (W, b ~ N(0, 1))."""
    if not isinstance(out_dim, int) or out_dim < 1:
        raise KernelError(f"Dense out_dim must be a positive integer, got {out_dim!r}")
    W_std, b_std = float(W_std), float(b_std)
    if not (math.isfinite(W_std) and math.isfinite(b_std)):
        raise KernelError("W_std and b_std must be finite")

    def init_fn(key: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
        kw, kb = jax.random.split(key)
        W = jax.random.normal(kw, (input_shape[-1], out_dim))
        b = jax.random.normal(kb, (out_dim,))
        return (*input_shape[:-1], out_dim), (W, b)

    def apply_fn(params: Any, x: Any, **_: Any) -> Any:
        W, b = params
        return (W_std / math.sqrt(x.shape[-1])) * (x @ W) + b_std * b

    spec = _Spec("dense", {"W_std": W_std, "b_std": b_std})
    return Layer(init_fn, apply_fn, _make_kernel_fn([_dense_kernel(W_std, b_std)]), spec)


def BatchNorm(eps: float = 0.0, *, nodes: int | None = None, samples: int = 100_000, seed: int = 0) -> Layer:
    """Batch normalization over the batch axis 0 (biased variance, ε; γ = 1, β = 0), no parameters.

    In :func:`serial` it is fused with the activation layer that follows it. ``nodes``: s-quadrature
    nodes of the exact kernel, also per variable of the cross-batch product rule (None: chosen per
    layer for about 1e-13); ``samples``/``seed``: Monte Carlo for activations without an exact kernel.
    """
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise KernelError(f"BatchNorm eps must be a finite number >= 0, got {eps!r}")

    def init_fn(key: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
        return input_shape, ()

    def apply_fn(params: Any, x: Any, **_: Any) -> Any:
        g = x - jnp.mean(x, axis=0, keepdims=True)
        return g / jnp.sqrt(jnp.mean(g * g, axis=0, keepdims=True) + eps)

    args = {"eps": eps, "nodes": nodes, "samples": samples, "seed": seed}
    step = _bn_activation_kernel("identity", eps, nodes, samples, seed)
    return Layer(init_fn, apply_fn, _make_kernel_fn([step]), _Spec("batchnorm", args))


def Activation(activation: Any) -> Layer:
    """Elementwise φ from symbnmf's catalog (``"relu"``, ``"leaky_relu(0.1)"``, ``"tanh"``, an expression)."""
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    phi = _phi_jax(act)

    def init_fn(key: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
        return input_shape, ()

    def apply_fn(params: Any, x: Any, **_: Any) -> Any:
        return phi(x)

    def lazy_kernel(*args: Any, **kwargs: Any) -> Any:
        return _make_kernel_fn([_gaussian_activation_kernel(act)])(*args, **kwargs)

    return Layer(init_fn, apply_fn, lazy_kernel, _Spec("activation", {"activation": act}))


def Relu() -> Layer:
    """φ(x) = max(x, 0)."""
    return Activation("relu")


def LeakyRelu(a: float) -> Layer:
    """φ(x) = x (x > 0), a·x (x < 0)."""
    return Activation(f"leaky_relu({float(a)!r})")


def Identity() -> Layer:
    """φ(x) = x (no parameters, kernel unchanged)."""

    def init_fn(key: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
        return input_shape, ()

    return Layer(init_fn, lambda params, x, **_: x, _make_kernel_fn([]), _Spec("identity", {}))


def _flatten(layers: Sequence[Layer]) -> list[Layer]:
    out: list[Layer] = []
    for layer in layers:
        if not isinstance(layer, Layer):
            raise KernelError(f"serial takes symbnmf.kernels.stax layers, got {type(layer).__name__}")
        if layer.spec.kind == "serial":
            out.extend(layer.spec.args["layers"])
        else:
            out.append(layer)
    return out


def _kernel_steps(layers: Sequence[Layer]) -> list[Callable[[_State], _State]]:
    steps: list[Callable[[_State], _State]] = []
    i = 0
    while i < len(layers):
        spec = layers[i].spec
        if spec.kind == "dense":
            steps.append(_dense_kernel(spec.args["W_std"], spec.args["b_std"]))
        elif spec.kind == "batchnorm":
            nxt = layers[i + 1].spec if i + 1 < len(layers) else None
            act: Any = "identity"
            if nxt is not None and nxt.kind == "activation":
                act = nxt.args["activation"]
                i += 1  # fused
            a = spec.args
            steps.append(_bn_activation_kernel(act, a["eps"], a["nodes"], a["samples"], a["seed"]))
        elif spec.kind == "activation":
            steps.append(_gaussian_activation_kernel(spec.args["activation"]))
        i += 1
    return steps


def serial(*layers: Layer) -> Layer:
    """Layers in sequence; ``BatchNorm`` followed by an activation becomes one exact BN + φ kernel step."""
    flat = _flatten(layers)

    def init_fn(key: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
        params = []
        shape = input_shape
        for layer, k in zip(flat, jax.random.split(key, max(len(flat), 1))):
            shape, p = layer[0](k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply_fn(params: Any, x: Any, **kwargs: Any) -> Any:
        for layer, p in zip(flat, params):
            x = layer[1](p, x, **kwargs)
        return x

    steps = _kernel_steps(flat)
    return Layer(init_fn, apply_fn, _make_kernel_fn(steps), _Spec("serial", {"layers": flat}))


def bn_network(
    activation: Any, depth: int, *, width: int = 1, eps: float = 0.0, W_std: float = 1.0, b_std: float = 0.0
) -> Layer:
    """``depth`` blocks Dense → BatchNorm → φ, then a Dense read-out: the network of the mean field
    theory (theory.md) with a linear read-out. ``width`` only matters for ``apply_fn``."""
    if not isinstance(depth, int) or depth < 0:
        raise KernelError(f"depth must be a non-negative integer, got {depth!r}")
    blocks: list[Layer] = []
    for _ in range(depth):
        blocks += [Dense(width, W_std, b_std), BatchNorm(eps), Activation(activation)]
    return serial(*blocks, Dense(1, W_std, b_std))


__all__ = ["Activation", "BatchNorm", "Dense", "Identity", "Kernel", "LeakyRelu", "Relu", "bn_network", "serial"]
