"""Running many Monte Carlo networks: one network's pass, vmapped, chunked, sharded (private).

Memory is bounded by design.  Every compiled call vmaps a fixed number of networks (about
:data:`VMAP_WIDTH` over all devices, :func:`plan_chunks`) and the calls run one after another, so
the working memory is that of one call whatever the number of networks or devices, within a memory budget
(:func:`default_memory_budget`: a quarter of the available RAM, at most 1 GiB, unless given).
Each call returns only per-network, per-layer reductions (``grad_x``, ``grad_w`` and the five
covariance statistics of :func:`cov_stats`, in the simulation dtype), so nothing of size
(networks, depth, B, B) exists unless the covariances are asked for (``keep_cov``).  Where depth
makes the backward pass's stored activations exceed the budget, every layer of the backward pass
is rematerialised (``jax.checkpoint``): only the layer inputs are stored.

Randomness: network k uses ``fold_in(key(seed), k)`` (threefry: on CPU it is faster than
``rbg``/``unsafe_rbg``, measured in ``benchmarks/bench_montecarlo.py --prng``) and draws every
random number from a stream of that key numbered by purpose and layer
(:func:`symbnmf.montecarlo.layers.stream`: counter-based, no key splitting), so its numbers
do not depend on how the networks are chunked, padded or sharded over devices.  The networks
axis of every chunk is sharded over all JAX devices (``jax.sharding.NamedSharding`` on a 1-D
mesh ``("nets",)``); XLA partitions the vmapped computation, on CPU devices or a GPU alike.

Compilation: the call width does not depend on the number of networks (small counts are rounded
up to :data:`CHUNK_BUCKETS`; padding networks are computed and dropped), so any number of
networks reuses one compiled program, and symbnmf's executable cache
(:mod:`symbnmf.fast._compile_cache`: the compiled program serialized whole, authenticated, keyed
by ``NetConfig``, shapes, devices and a fingerprint of the code) keeps it across processes, so a
repeated run neither traces nor compiles (the first one compiles without JAX's persistent cache,
whose entries do not serialize again).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from symbnmf._chunking import CHUNK_BUCKETS as CHUNK_BUCKETS
from symbnmf._chunking import VMAP_WIDTH as VMAP_WIDTH
from symbnmf._chunking import bucket_down, bucket_up
from symbnmf.fast._compile_cache import enable_compilation_cache
from symbnmf.montecarlo.layers import (
    MAX_LAYERS,
    READOUT,
    batch_norm,
    dense_layer,
    gaussian_layer,
    initial_batch,
    normal,
    probe_sq,
    probe_weight_sq,
    stream,
)

#: Names of the per-layer covariance statistics returned in ``stats[..., i]`` (see :func:`cov_stats`).
STAT_NAMES: tuple[str, ...] = ("diag", "offdiag", "mu", "L", "M")

#: XLA options for the Monte Carlo programs: LLVM optimisation level 1 instead of the default 2
#: compiles ~27% faster (CPU time) with the same run time (measured at N=512, B=8 and N=2048, B=32),
#: and XLA:CPU's classic loop emitters instead of the MLIR fusion emitters another ~40% faster again
#: with the same run time (measured on the 16 programs of ``symbnmf run``; ``benchmarks/README.md``).
#: Options this XLA does not know are dropped (:func:`_compile`).
COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


def _compile(lowered: Any) -> Any:
    """``lowered.compile`` with :data:`COMPILER_OPTIONS`, less any option this XLA lacks."""
    opts = dict(COMPILER_OPTIONS)
    while True:
        try:
            return lowered.compile(compiler_options=opts)
        except Exception as exc:  # jax.errors.JaxRuntimeError: INVALID_ARGUMENT: No such compile option: 'x'
            unknown = [k for k in opts if f"No such compile option: '{k}'" in str(exc)]
            if not unknown:
                raise
            opts.pop(unknown[0])


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
    activation: str  # srepr of the bound SymPy expression: names phi (keys the compiled program)
    keep_cov: bool = False  # also return the per-layer covariances (depth+1, B, B)
    remat: bool = False  # jax.checkpoint every layer of the backward pass
    prng: str = "threefry2x32"  # JAX PRNG implementation (benchmarks compare "rbg", "unsafe_rbg")


def _layer_fn(cfg: NetConfig) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    if cfg.method == "fast":
        return gaussian_layer
    # Dense W is regenerated from its key in the backward pass (jax.checkpoint) instead of
    # being stored: memory stays O(depth * N * B) per network, never O(depth * N^2).
    return jax.checkpoint(functools.partial(dense_layer, law=cfg.weights, sigma_b=cfg.sigma_b))


def cov_stats(S: jax.Array) -> jax.Array:
    """The five statistics :data:`STAT_NAMES` of one batch covariance Σ (B×B), in its dtype.

    ``diag`` = tr Σ/B and ``offdiag`` = mean off-diagonal entry (fixed point, docs/theory.md); with
    μ = tr(GΣG)/(B−1) and Δ = GΣG/μ − G, ``L`` and ``M`` are the Frobenius norms of the
    orthogonal components of Δ on the pieces L and M of Sym(1⊥) (Thm 3.6) — the projection of
    :func:`symbnmf.montecarlo.stats.glm_pieces` (same lemma), done in O(B²): GΣG by row and
    column means, and G diag(d) G entrywise as d_i δ_ij − (d_i + d_j)/B + Σd/B².
    """
    B = S.shape[-1]
    dt = S.dtype
    tr = jnp.trace(S)
    diag = tr / B
    off = (jnp.sum(S) - tr) / (B * (B - 1)) if B > 1 else jnp.zeros((), dt)
    r = S.mean(axis=1)
    c = S.mean(axis=0)
    sg = S - r[:, None] - c[None, :] + S.mean()
    mu = jnp.trace(sg) / max(B - 1, 1)
    if B < 3:
        z = jnp.zeros((), dt)
        return jnp.stack([diag, off, mu, z, z])
    G = jnp.asarray(np.eye(B) - 1.0 / B, dt)
    gg_inv = jnp.asarray(np.linalg.inv((np.eye(B) - 1.0 / B) ** 2), dt)
    delta = sg / mu - G
    d = gg_inv @ jnp.diagonal(delta)
    gdg = jnp.diag(d) - (d[:, None] + d[None, :]) / B + jnp.sum(d) / B**2
    l_part = gdg - (jnp.trace(delta) / (B - 1)) * G
    m_part = delta - gdg
    return jnp.stack([diag, off, mu, jnp.sqrt(jnp.sum(l_part**2)), jnp.sqrt(jnp.sum(m_part**2))])


def network_pass(idx: jax.Array, seed: jax.Array, phi: Callable, cfg: NetConfig) -> dict[str, jax.Array]:
    """Forward (and backward) pass of network number ``idx``.

    Returns ``stats`` (depth+1, 5): :func:`cov_stats` of the batch covariances x^lᵀ x^l / N of
    the measured layers l = 0..depth (l = 0 is the input after burn-in); with ``cfg.keep_cov``
    also ``cov`` (depth+1, B, B) itself; with ``cfg.backward`` also ``grad_x`` (depth+1,):
    ‖∂loss/∂x^l‖² and ``grad_w`` (depth,): ‖∂loss/∂W^l‖² (l = 1..depth) for the random linear
    readout loss = Σ R ⊙ x^depth, by ``jax.grad``.
    """
    N, B, L = cfg.width, cfg.batch_size, cfg.depth
    dtype = jnp.dtype(cfg.dtype)
    # Every draw of network idx is a stream of its key (layers.stream: input, readout, layer l's
    # forward and backward draws), so its numbers depend only on (seed, idx, prng).
    key = jax.random.fold_in(jax.random.key(seed, impl=cfg.prng), idx)
    layer = _layer_fn(cfg)
    if cfg.burn_in + L >= MAX_LAYERS:
        raise ValueError(f"burn_in + depth must be below {MAX_LAYERS}")

    def measure(x):
        cov = x.T @ x / N
        return (cov_stats(cov), cov) if cfg.keep_cov else (cov_stats(cov),)

    def step(x, layer_no):
        return phi(batch_norm(layer(x, key, layer_no), cfg.gamma, cfg.beta, cfg.eps))

    x0 = initial_batch(key, N, B, cfg.init, dtype)
    if cfg.burn_in:
        x0, _ = jax.lax.scan(lambda x, i: (step(x, i), None), x0, jnp.arange(cfg.burn_in, dtype=jnp.uint32))
    x0 = jax.lax.stop_gradient(x0)
    m0 = measure(x0)
    keys = jnp.arange(cfg.burn_in, cfg.burn_in + L, dtype=jnp.uint32)  # the measured layers' numbers

    def pack(ms) -> dict[str, jax.Array]:
        out = {"stats": jnp.concatenate([m0[0][None], ms[0]])}
        if cfg.keep_cov:
            out["cov"] = jnp.concatenate([m0[1][None], ms[1]])
        return out

    if not cfg.backward:

        def fbody(x, k):
            xn = step(x, k)
            return xn, measure(xn)

        _, ms = jax.lax.scan(fbody, x0, keys)
        return pack(ms)

    R = normal(key, stream(READOUT), (N, B), dtype)

    def body(x, inp):
        layer_no, pg, pw = inp
        x = probe_sq(x, pg)
        h = probe_weight_sq(layer(x, key, layer_no), x, pw)
        xn = phi(batch_norm(h, cfg.gamma, cfg.beta, cfg.eps))
        return xn, measure(jax.lax.stop_gradient(xn))

    if cfg.remat:  # store only each layer's input; recompute the layer in the backward pass
        body = jax.checkpoint(body)

    def loss(p_gx, p_gw):
        xl, ms = jax.lax.scan(body, x0, (keys, p_gx[:L], p_gw))
        xl = probe_sq(xl, p_gx[L])
        return jnp.sum(R * xl), ms

    (gx, gw), ms = jax.grad(loss, argnums=(0, 1), has_aux=True)(jnp.zeros(L + 1, dtype), jnp.zeros(L, dtype))
    return {**pack(ms), "grad_x": gx, "grad_w": gw}


@functools.lru_cache(maxsize=32)
def _compiled(cfg: NetConfig, phi: Callable) -> Any:
    return jax.jit(jax.vmap(functools.partial(network_pass, phi=phi, cfg=cfg), in_axes=(0, None)))


@dataclass(frozen=True, eq=False)
class DeferredPhi:
    """φ to be built only if a program that uses it must be traced: ``build()`` returns the JAX
    callable that ``NetConfig.activation`` names. A run whose program is already in this process
    or in symbnmf's executable cache never calls it (a repeated ``symbnmf simulate`` imports no
    SymPy). :func:`run_networks` and :func:`precompile` accept it in place of φ."""

    build: Callable[[], Callable]


def _phi_factory(phi: Callable | DeferredPhi) -> Callable[[], Callable]:
    return phi.build if isinstance(phi, DeferredPhi) else lambda: phi


_EXECUTABLES: dict[tuple, Future] = {}
_EXECUTABLES_LOCK = threading.Lock()


def _process_key(cfg: NetConfig, size: int, devices: tuple) -> tuple:
    """Key of the call's program among this process's executables (:data:`_EXECUTABLES`)."""
    return (cfg, size, devices, jax.config.jax_enable_x64)  # type: ignore[attr-defined]


def _executable(cfg: NetConfig, make_phi: Callable[[], Callable], size: int, devices: tuple) -> Callable:
    """The compiled call for ``size`` networks over ``devices``, compiled once per process (and
    loaded from symbnmf's executable cache when another process compiled it, :func:`_load_or_compile`).
    Keyed by ``cfg`` (whose ``activation`` names φ), not by φ itself: ``make_phi()`` builds φ only
    when the program must be compiled. Thread-safe: a call that another thread is compiling
    (:func:`precompile`) waits for it instead of compiling twice."""

    key = _process_key(cfg, size, devices)
    with _EXECUTABLES_LOCK:
        existing = _EXECUTABLES.get(key)
        mine = existing is None
        fut: Future = Future() if existing is None else existing
        if mine:
            _EXECUTABLES[key] = fut
            if len(_EXECUTABLES) > 64:  # forget the oldest finished ones
                for k in [k for k, f in _EXECUTABLES.items() if f.done() and k != key][:16]:
                    del _EXECUTABLES[k]
    if mine:
        try:
            fut.set_result(_load_or_compile(cfg, make_phi, size, devices))
        except BaseException as exc:
            fut.set_exception(exc)
            with _EXECUTABLES_LOCK:
                _EXECUTABLES.pop(key, None)
            raise
    return fut.result()


def _load_or_compile(cfg: NetConfig, make_phi: Callable[[], Callable], size: int, devices: tuple) -> Any:
    """The serialized executable of this call from symbnmf's cache (no tracing, φ not built), else
    compiled afresh with φ = ``make_phi()`` (JAX's persistent cache off for that compilation,
    :func:`_fresh_compilation`) and stored; where this JAX lacks that switch, compiled through
    JAX's cache and not stored. ``cfg.activation`` names φ, so ``cfg`` with the shapes, devices,
    x64 and compiler options describes the program completely."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from symbnmf.fast import _compile_cache as _cc

    key = _program_key(cfg, size, devices)
    fresh = _fresh_compilation(devices)
    fn = _cc.load_executable(key, devices) if fresh is not None else None
    if fn is not None:
        jax.monitoring.record_event("/symbnmf/executable_cache/hit")
        return fn
    sharding = NamedSharding(Mesh(np.array(devices), ("nets",)), PartitionSpec("nets"))
    spec = jax.ShapeDtypeStruct((size,), np.int32, sharding=sharding)
    lowered = _compiled(cfg, make_phi()).lower(spec, np.uint32(0))
    if fresh is None:
        return _compile(lowered)
    # Compiled afresh, not read back from JAX's cache: an executable that JAX deserialized
    # from its own cache serializes without its fused kernels ("Function ... not found").
    jax.monitoring.record_event("/symbnmf/executable_cache/miss")
    with fresh:
        fn = _compile(lowered)
    _cc.store_executable(key, fn)
    return fn


def _program_key(cfg: NetConfig, size: int, devices: tuple) -> str:
    """Key of the call's program in symbnmf's executable cache (:func:`_load_or_compile`)."""
    from symbnmf.fast import _compile_cache as _cc

    return _cc.executable_key(
        {
            "program": "symbnmf.montecarlo.run.network_pass",
            "cfg": asdict(cfg),
            "size": size,
            "devices": [(d.platform, d.device_kind, d.id) for d in devices],
            "x64": bool(jax.config.jax_enable_x64),  # type: ignore[attr-defined]
            "options": COMPILER_OPTIONS,
        }
    )


def _missing_kernel(exc: BaseException) -> bool:
    """True for XLA's error when a loaded executable lacks one of its compiled kernels
    ("NOT_FOUND: Function add_concatenate_fusion not found"): the program was serialized from an
    executable that JAX itself had read back from its own cache."""
    text = str(exc)
    return "NOT_FOUND" in text and "Function" in text and "not found" in text


def _replace_broken(cfg: NetConfig, make_phi: Callable[[], Callable], size: int, devices: tuple) -> Callable:
    """Forget a stored program that cannot run (:func:`_missing_kernel`), here and on disk, and
    compile it afresh: an authentic but broken entry heals on its first use instead of failing
    every later run."""
    from symbnmf.fast import _compile_cache as _cc

    with _EXECUTABLES_LOCK:
        _EXECUTABLES.pop(_process_key(cfg, size, devices), None)
    _cc.drop_executable(_program_key(cfg, size, devices))
    jax.monitoring.record_event("/symbnmf/executable_cache/broken")
    return _executable(cfg, make_phi, size, devices)


def _fresh_compilation(devices: tuple) -> Any:
    """A context (this thread only) in which JAX compiles without its persistent cache, or None
    where this JAX lacks the switch (then symbnmf's executable cache is not used). JAX decides
    once per process whether its cache is in use, at the first compilation: that decision is
    taken here first, outside the context, so other programs keep JAX's cache."""
    try:
        from jax._src import compilation_cache as jax_cc
        from jax._src import config as jax_config

        jax_cc.is_cache_used(devices[0].client)
        return jax_config.enable_compilation_cache(False)
    except Exception:
        return None


def precompile(
    cfg: NetConfig,
    phi: Callable | DeferredPhi,
    networks: int,
    *,
    memory_bytes: int | None = None,
    devices: Any = None,
) -> None:
    """Compile (or load from the persistent cache) the call :func:`run_networks` will make with
    these arguments, e.g. in a background thread while other simulations run."""
    enable_compilation_cache()
    devs = tuple(devices) if devices is not None else tuple(jax.devices())
    plan = plan_chunks(cfg, networks, memory_bytes=memory_bytes, devices=len(devs))
    with jax.enable_x64(cfg.dtype == "float64"):
        _executable(plan.cfg, _phi_factory(phi), plan.chunk, devs)


def _item(cfg: NetConfig) -> int:
    return 8 if cfg.dtype == "float64" else 4


def output_bytes_per_network(cfg: NetConfig) -> int:
    """Bytes kept per network after its chunk: the reductions (and the covariances if kept)."""
    n = (cfg.depth + 1) * (len(STAT_NAMES) + 2)
    if cfg.keep_cov:
        n += (cfg.depth + 1) * cfg.batch_size**2
    return _item(cfg) * n


def bytes_per_network(cfg: NetConfig) -> int:
    """Upper estimate of the working memory of one network's pass inside a chunk (bytes).

    The backward pass stores per layer about 5 N×B arrays and 3 B×B ones (checked against
    XLA's ``memory_analysis`` in the tests); with ``cfg.remat`` only the layer input (N×B) is
    stored and one layer's working set is live.  Dense layers add 3 N×N transients.  Plus what
    the chunk returns (:func:`output_bytes_per_network`).
    """
    N, B = cfg.width, cfg.batch_size
    layers = cfg.depth + 1
    per_layer = 5 * N * B + 3 * B * B
    if not cfg.backward:
        n = 8 * N * B + 3 * B * B
    elif cfg.remat:
        n = layers * (N * B + 2) + 2 * per_layer
    else:
        n = layers * per_layer
    if cfg.method == "dense":
        n += 3 * N * N
    return _item(cfg) * n + output_bytes_per_network(cfg)


def available_memory() -> int:
    """Bytes of RAM available to this process now (``MemAvailable``; 4 GiB if unknown)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    return int(avail)


def default_memory_budget() -> int:
    """A quarter of the available RAM (``MemAvailable``), at most 1 GiB, at least 64 MiB."""
    return int(min(1 << 30, max(64 << 20, available_memory() // 4)))


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`run_networks` splits ``networks`` networks: ``nchunks`` calls of ``chunk`` networks."""

    cfg: NetConfig  # with ``remat`` decided
    networks: int
    chunk: int  # networks per compiled call (vmap width per device times the device count)
    nchunks: int
    devices: int
    memory_budget: int  # bytes
    bytes_per_network: int
    peak_bytes: int  # estimated: one call's working set + all kept outputs
    fits: bool  # False: even one network per device exceeds the budget (it still runs)

    @property
    def padded(self) -> int:
        return self.chunk * self.nchunks - self.networks


def plan_chunks(cfg: NetConfig, networks: int, *, memory_bytes: int | None = None, devices: int = 1) -> ChunkPlan:
    """Plan the calls of :func:`run_networks`: networks per call, number of calls, remat.

    Each call holds about :data:`VMAP_WIDTH` networks over all its devices: it vmaps ``w``
    networks per device, ``w`` = ⌈VMAP_WIDTH/devices⌉ bucketed (or the bucketed per-device
    network count when smaller), and the calls run one after the other, so the working memory
    is that of one call whatever the number of networks, and does not grow with the number of
    devices (on a CPU host ``symbnmf simulate`` makes one device per core).  ``memory_bytes`` (default
    :func:`default_memory_budget`) bounds it: when ``w`` networks per device do not fit, the
    backward pass is rematerialised (``cfg.remat``), and if they still do not fit ``w``
    shrinks.  Any configuration runs: if one network per device exceeds the budget, ``fits``
    is False.  The last call is padded with networks whose results are dropped.
    """
    budget = int(memory_bytes) if memory_bytes is not None else default_memory_budget()
    nd = max(1, int(devices))
    w = min(bucket_up(-(-networks // nd)), bucket_up(-(-VMAP_WIDTH // nd)))
    if cfg.backward and not cfg.remat and bytes_per_network(cfg) * w * nd > budget:
        cfg = replace(cfg, remat=True)
    bpn = bytes_per_network(cfg)
    if bpn * w * nd > budget:
        w = bucket_down(budget // (bpn * nd))
    chunk = w * nd
    return ChunkPlan(
        cfg=cfg,
        networks=networks,
        chunk=chunk,
        nchunks=-(-networks // chunk),
        devices=nd,
        memory_budget=budget,
        bytes_per_network=bpn,
        peak_bytes=bpn * chunk + output_bytes_per_network(cfg) * networks,
        fits=bpn * nd <= budget,
    )


def run_networks(
    cfg: NetConfig,
    phi: Callable | DeferredPhi,
    seed: int,
    networks: int,
    *,
    memory_bytes: int | None = None,
    chunk: int | None = None,
    progress: bool = False,
    devices: Any = None,
) -> dict[str, np.ndarray]:
    """Run ``networks`` networks in calls planned by :func:`plan_chunks`, sharded over ``devices`` (default: all).

    ``phi`` is the activation (a JAX callable) or a :class:`DeferredPhi` that builds it only if
    the program must be compiled; either way ``cfg.activation`` must name it (it keys the program).

    ``chunk`` forces the networks per call (rounded up to a multiple of the device count; the
    remat decision still follows the budget; a width other than the planned one may change the
    results by floating-point rounding).  Returns numpy arrays in the simulation dtype with
    a leading networks axis (see :func:`network_pass`): ``stats``, ``grad_x``, ``grad_w``, and
    ``cov`` with ``cfg.keep_cov``.  Bit-identical for any number of networks >= the call width
    and any memory budget that holds one call without remat (tested).
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    enable_compilation_cache()
    devs = tuple(devices) if devices is not None else tuple(jax.devices())
    nd = len(devs)
    plan = plan_chunks(cfg, networks, memory_bytes=memory_bytes, devices=nd)
    cfg, size, nchunks = plan.cfg, plan.chunk, plan.nchunks
    if chunk is not None:
        size = -(-max(1, int(chunk)) // nd) * nd
        nchunks = -(-networks // size)
    sharding = NamedSharding(Mesh(np.array(devs), ("nets",)), PartitionSpec("nets"))
    make_phi = _phi_factory(phi)
    fn = _executable(cfg, make_phi, size, devs)
    seed_arr = np.uint32(seed % 2**32)
    out: dict[str, np.ndarray] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=networks, desc="networks", unit="net", leave=False)

    def collect(lo: int, res: dict[str, jax.Array]) -> None:
        n = min(size, networks - lo)
        for k, v in res.items():
            if k not in out:  # preallocated: no list of chunks, no concatenate copy
                out[k] = np.empty((networks, *v.shape[1:]), dtype=v.dtype)
            out[k][lo : lo + n] = np.asarray(v)[:n]
        if bar is not None:
            bar.update(n)

    try:
        pending = None  # dispatch call c+1 before copying call c's (small) results to the host
        for c in range(nchunks):
            lo = c * size
            idx = jax.device_put(np.arange(lo, lo + size, dtype=np.int32), sharding)
            try:
                res = fn(idx, seed_arr)
                if c == 0:  # a kernel missing from a loaded program shows when it runs
                    jax.block_until_ready(res)
            except Exception as exc:  # jax.errors.JaxRuntimeError
                if c or not _missing_kernel(exc):
                    raise
                fn = _replace_broken(cfg, make_phi, size, devs)
                res = fn(idx, seed_arr)
            if pending is not None:
                collect(*pending)
            pending = (lo, res)
        if pending is not None:
            collect(*pending)
    finally:
        if bar is not None:
            bar.close()
    return out


def memory_estimate(cfg: NetConfig, networks: int, *, memory_bytes: int | None = None, devices: int = 1) -> int:
    """Estimated peak bytes of :func:`run_networks` beyond the JAX runtime (see :class:`ChunkPlan`)."""
    return plan_chunks(cfg, networks, memory_bytes=memory_bytes, devices=devices).peak_bytes


__all__ = [
    "CHUNK_BUCKETS",
    "STAT_NAMES",
    "VMAP_WIDTH",
    "ChunkPlan",
    "DeferredPhi",
    "NetConfig",
    "bytes_per_network",
    "cov_stats",
    "default_memory_budget",
    "memory_estimate",
    "network_pass",
    "output_bytes_per_network",
    "plan_chunks",
    "precompile",
    "run_networks",
]
