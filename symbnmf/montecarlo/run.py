"""Running many Monte Carlo networks: one network's pass, vmapped, chunked, sharded (private).

Randomness: network k uses ``fold_in(key(seed), k)``, so its numbers do not depend on how the
networks are chunked or sharded over devices.  The networks axis of every chunk is sharded
over all JAX devices (``jax.sharding.NamedSharding`` on a 1-D mesh ``("nets",)``); XLA
partitions the vmapped computation, on CPU devices or a GPU alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from symbnmf.montecarlo.layers import (
    batch_norm,
    dense_layer,
    gaussian_layer,
    initial_batch,
    probe_sq,
    probe_weight_sq,
)


@dataclass(frozen=True)
class NetConfig:
    """Static description of one simulated network (hashable: it keys the compile cache)."""

    width: int
    batch_size: int
    depth: int
    burn_in: int
    method: str  # "fast" (exact O(N B^2) Gaussian sampler) or "dense"
    weights: str  # "gaussian" | "orthogonal" | "rademacher"
    dtype: str  # "float32" | "float64"
    gamma: float
    beta: float
    eps: float
    sigma_b: float
    init: str
    backward: bool
    activation: str  # srepr of the bound SymPy expression (cache key only)


def _layer_fn(cfg: NetConfig) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if cfg.method == "fast":
        return gaussian_layer
    # Dense W is regenerated from its key in the backward pass (jax.checkpoint) instead of
    # being stored: memory stays O(depth * N * B) per network, never O(depth * N^2).
    return jax.checkpoint(functools.partial(dense_layer, law=cfg.weights, sigma_b=cfg.sigma_b))


def network_pass(idx: jax.Array, seed: jax.Array, phi: Callable, cfg: NetConfig) -> dict[str, jax.Array]:
    """Forward (and backward) pass of network number ``idx``.

    Returns ``cov`` (depth+1, B, B): batch covariances x^lᵀ x^l / N of the measured layers
    l = 0..depth (l = 0 is the input after burn-in); with ``cfg.backward`` also ``grad_x``
    (depth+1,): ‖∂loss/∂x^l‖² and ``grad_w`` (depth,): ‖∂loss/∂W^l‖² (l = 1..depth) for the
    random linear readout loss = Σ R ⊙ x^depth, by ``jax.grad``.
    """
    N, B, L = cfg.width, cfg.batch_size, cfg.depth
    dtype = jnp.dtype(cfg.dtype)
    key = jax.random.fold_in(jax.random.key(seed), idx)
    k_init, k_read, k_burn, k_meas = jax.random.split(key, 4)
    layer = _layer_fn(cfg)

    def step(x, k):
        return phi(batch_norm(layer(x, k), cfg.gamma, cfg.beta, cfg.eps))

    x0 = initial_batch(k_init, N, B, cfg.init, dtype)
    if cfg.burn_in:
        x0, _ = jax.lax.scan(lambda x, k: (step(x, k), None), x0, jax.random.split(k_burn, cfg.burn_in))
    x0 = jax.lax.stop_gradient(x0)
    cov0 = x0.T @ x0 / N
    keys = jax.random.split(k_meas, L)

    if not cfg.backward:

        def fbody(x, k):
            xn = step(x, k)
            return xn, xn.T @ xn / N

        _, covs = jax.lax.scan(fbody, x0, keys)
        return {"cov": jnp.concatenate([cov0[None], covs])}

    R = jax.random.normal(k_read, (N, B), dtype)

    def loss(p_gx, p_gw):
        def body(x, inp):
            k, pg, pw = inp
            x = probe_sq(x, pg)
            h = probe_weight_sq(layer(x, k), x, pw)
            xn = phi(batch_norm(h, cfg.gamma, cfg.beta, cfg.eps))
            return xn, xn.T @ xn / N

        xl, covs = jax.lax.scan(body, x0, (keys, p_gx[:L], p_gw))
        xl = probe_sq(xl, p_gx[L])
        return jnp.sum(R * xl), covs

    (gx, gw), covs = jax.grad(loss, argnums=(0, 1), has_aux=True)(jnp.zeros(L + 1, dtype), jnp.zeros(L, dtype))
    return {"cov": jnp.concatenate([cov0[None], covs]), "grad_x": gx, "grad_w": gw}


@functools.lru_cache(maxsize=32)
def _compiled(cfg: NetConfig, phi: Callable) -> Callable:
    return jax.jit(jax.vmap(functools.partial(network_pass, phi=phi, cfg=cfg), in_axes=(0, None)))


def bytes_per_network(cfg: NetConfig) -> int:
    """Rough peak memory of one network's pass (residuals of the scan, dense W transients)."""
    item = 8 if cfg.dtype == "float64" else 4
    n = 8 * (cfg.depth + cfg.burn_in + 1) * cfg.width * cfg.batch_size
    if cfg.method == "dense":
        n += 3 * cfg.width**2
    return item * n


def run_networks(
    cfg: NetConfig,
    phi: Callable,
    seed: int,
    networks: int,
    *,
    memory_bytes: int = 1 << 30,
    chunk: int | None = None,
    progress: bool = False,
    devices: Any = None,
) -> dict[str, np.ndarray]:
    """Run ``networks`` networks in equal chunks sharded over ``devices`` (default: all).

    Returns numpy arrays with a leading networks axis (see :func:`network_pass`).
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devs = list(devices) if devices is not None else jax.devices()
    nd = len(devs)
    if chunk is None:
        chunk = max(1, memory_bytes // max(1, bytes_per_network(cfg)))
    if progress:  # about ten updates of the bar on long runs
        chunk = min(chunk, max(nd, -(-networks // 10)))
    chunk = min(chunk, networks)
    nchunks = -(-networks // chunk)
    chunk = -(-networks // nchunks)
    chunk = -(-chunk // nd) * nd  # a multiple of the device count
    sharding = NamedSharding(Mesh(np.array(devs), ("nets",)), PartitionSpec("nets"))
    fn = _compiled(cfg, phi)
    seed_arr = np.uint32(seed % 2**32)
    out: dict[str, list[np.ndarray]] = {}
    bar = None
    if progress:
        from symbnmf._progress import progress as _progress

        bar = _progress(networks, desc="networks", unit="net", leave=False)
    try:
        for c in range(nchunks):
            idx = jax.device_put(np.arange(c * chunk, (c + 1) * chunk, dtype=np.int32), sharding)
            res = fn(idx, seed_arr)
            for k, v in res.items():
                out.setdefault(k, []).append(np.asarray(v))
            if bar is not None:
                bar.update(min(chunk, networks - c * chunk))
    finally:
        if bar is not None:
            bar.close()
    return {k: np.concatenate(v)[:networks] for k, v in out.items()}
