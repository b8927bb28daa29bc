"""Host-side work of the exact kernels on concrete batches (private): threads, devices, compile options.

A concrete batch of covariances costs one LAPACK ``eigh`` per matrix on the host (its spectrum chooses the
s-rule and feeds the jitted kernel) and then the kernel programs. Three things use every core for that:

* :func:`submit_chunks` runs a numpy function over chunks of the batch on a shared thread pool of
  :func:`host_threads` threads (LAPACK releases the GIL: two threads took a 1000 × 16 × 16 ``eigh`` from
  15.5 to 8.2 ms on 2 cores), and the caller consumes the chunks as they finish.
* :func:`kernel_devices`: the kernel calls go to every local device of JAX's default backend, each to the
  least loaded one (an accelerator, or several XLA CPU devices when the user asked JAX for them:
  ``jax.config.update("jax_num_cpu_devices", N)`` before JAX starts). One CPU device runs the calls one
  after another, XLA splitting each large loop over the cores.
* :func:`compiler_options` asks XLA's CPU code generator for 512-bit vectors where the CPU has them
  (AVX-512): the kernel programs then take ~15% less CPU time (measured at B = 16).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")

#: Most threads of the host pool.
MAX_THREADS = 8
#: Chunks a batch is cut into for the host pool (when they hold at least the caller's smallest size).
CHUNKS = 8

_PREFIX = "symbnmf-kernels"
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def host_threads() -> int:
    """Threads for host work: one more than the cores this process may run on (its affinity mask), at most
    :data:`MAX_THREADS`.

    The decompositions are the critical path of a concrete batch, and XLA's own threads run the kernels on the
    same cores meanwhile; with one thread more than cores the host work keeps its share of them. B = 16,
    1000 Σ, 2 cores, in-process A/B runs (21 rounds): 3 threads took 3% less wall time than 2 (Wishart Σ:
    19.8 against 20.4 ms; digits batches: 18.6 against 19.2 ms), at the same CPU time; 4 were no better."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n + 1, MAX_THREADS))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=host_threads(), thread_name_prefix=_PREFIX)
        return _POOL


def _forget_pool() -> None:
    """In a forked child the pool's threads are gone but the executor would still count them: start afresh."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def chunk_bounds(k: int, smallest: int) -> list[tuple[int, int]]:
    """(start, stop) of :data:`CHUNKS` chunks of ``k`` items, fewer when they would be smaller than ``smallest``."""
    pieces = max(1, min(CHUNKS, k // max(1, smallest)))
    edges = np.linspace(0, k, pieces + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def submit_chunks(fn: Callable[[int, int], T], bounds: Sequence[tuple[int, int]]) -> list[Future[T]]:
    """``fn(start, stop)`` for each chunk of ``bounds`` on the host pool (in the calling thread, already done,
    when called from a pool thread: no pool thread waits for another)."""
    if threading.current_thread().name.startswith(_PREFIX):
        return run_inline(fn, bounds)
    return [_pool().submit(fn, a, b) for a, b in bounds]


def run_inline(fn: Callable[[int, int], T], bounds: Sequence[tuple[int, int]]) -> list[Future[T]]:
    """``fn(start, stop)`` for each chunk in the calling thread, as completed futures (results or exceptions)."""
    out: list[Future[T]] = []
    for a, b in bounds:
        f: Future[T] = Future()
        try:
            f.set_result(fn(a, b))
        except BaseException as e:  # handed to the caller through the future
            f.set_exception(e)
        out.append(f)
    return out


def raise_first(futures: Sequence[Future[Any]]) -> None:
    """Wait for every future; then raise the first exception in their order, if any (no work is left
    running behind an error)."""
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


def kernel_devices() -> list[Any]:
    """The local devices of JAX's default backend (where the kernel programs run)."""
    return list(jax.local_devices())


@lru_cache(maxsize=4)
def _avx512() -> bool:
    import importlib

    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
        try:
            feats = importlib.import_module(name).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return bool(feats.get("AVX512F", False))
    return False


def compiler_options() -> dict[str, Any]:
    """XLA compile options for the kernel programs: 512-bit vectors on a CPU backend whose host has AVX-512."""
    return dict(_options(jax.default_backend()))


@lru_cache(maxsize=8)
def _options(backend: str) -> tuple[tuple[str, Any], ...]:
    return (("xla_cpu_prefer_vector_width", 512),) if backend == "cpu" and _avx512() else ()


F = TypeVar("F", bound=Callable[..., Any])


def kernel_jit(static_argnames: tuple[str, ...]) -> Callable[[F], F]:
    """``jax.jit(fn, static_argnames=...)`` with :func:`compiler_options`, read at the first call (JAX's default
    backend is known then, not at import). Called with tracers (inside the caller's ``jit``, ``grad``, ``vmap``)
    it is the plain ``jit``: it becomes part of the caller's program, compiled with the caller's options."""

    def deco(fn: F) -> F:
        jitted: dict[tuple[tuple[str, Any], ...], Any] = {}

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            # the kernels take arrays and hashable statics, no containers: the arguments themselves are the leaves
            traced = any(isinstance(v, jax.core.Tracer) for v in (*args, *kwargs.values()))
            key = () if traced else _options(jax.default_backend())  # compile options: top-level jits only
            j = jitted.get(key)
            if j is None:
                j = jitted[key] = jax.jit(fn, static_argnames=static_argnames, compiler_options=dict(key) or None)
            return j(*args, **kwargs)

        return call  # type: ignore[return-value]

    return deco
