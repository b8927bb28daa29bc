"""Process-wide settings for the command line's Monte Carlo commands (private).

Both act on the whole process, so only the ``symbnmf`` program applies them (before JAX is
imported); library callers keep their own process as they set it up.

* :func:`use_every_core`: XLA runs a program on one CPU device mostly on one thread, so on a
  host without an accelerator the networks of a simulation, sharded over all JAX devices
  (:mod:`symbnmf.montecarlo.run`), use one core.  Exposing one XLA CPU device per usable core
  (``--xla_force_host_platform_device_count``) lets the shards run side by side.  An
  accelerator, when present, stays JAX's default backend: the flag only shapes the host platform.
* :func:`preload_lapack`: JAX's CPU programs call LAPACK through the function pointers that
  jaxlib reads from SciPy's ``scipy.linalg.cython_blas``/``cython_lapack`` extension modules;
  importing them the usual way runs ``scipy.linalg``'s ``__init__`` (~0.18 s and 12 MiB: all of
  ``scipy.linalg``, its array-API layer, even ``numpy.f2py``).  Loaded alone they take ~8 ms.
  A module loaded this way is not bound as an attribute of ``scipy.linalg`` if that package is
  imported later (``import``/``from ... import`` still find it), which is why only the program
  does it.
* :func:`return_large_blocks`: glibc's malloc raises its mmap threshold after a large block is
  freed (up to 32 MiB), so the per-call working buffers of XLA's worker threads end up in heap
  arenas that are never given back: the resident size of ``simulate`` grew by ~160 MiB for a
  31 MiB working set.  A fixed threshold of 1 MiB hands every large block back on free.
"""

from __future__ import annotations

import os
import sys

#: Environment variable: XLA CPU devices for the Monte Carlo commands (default: usable cores,
#: at most :data:`MAX_HOST_DEVICES`; ``1`` keeps JAX's single CPU device).
HOST_DEVICES_ENV = "SYMBNMF_HOST_DEVICES"
MAX_HOST_DEVICES = 8
_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_devices() -> int:
    """XLA CPU devices :func:`use_every_core` asks for: ``$SYMBNMF_HOST_DEVICES`` if it is a
    positive integer, else the usable cores, at most :data:`MAX_HOST_DEVICES`."""
    text = os.environ.get(HOST_DEVICES_ENV, "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    return min(usable_cores(), MAX_HOST_DEVICES)


def use_every_core() -> bool:
    """Ask XLA for :func:`host_devices` CPU devices; True if the setting was made.

    Does nothing once JAX is imported (the host platform is then fixed), when ``XLA_FLAGS``
    already sets the device count (the user's choice wins), or when one device is asked for.
    """
    n = host_devices()
    flags = os.environ.get("XLA_FLAGS", "")
    if n <= 1 or "jax" in sys.modules or _FLAG in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()
    return True


def preload_lapack() -> bool:
    """Load ``scipy.linalg.cython_blas`` and ``cython_lapack`` without ``scipy.linalg`` (see the
    module doc); True if both are loaded now (already, or by this call). Any failure leaves the
    usual import to happen later."""
    names = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")
    if all(n in sys.modules for n in names):
        return True
    if "scipy.linalg" in sys.modules:  # the usual import already ran (or runs): nothing to win
        return False
    import importlib.machinery
    import importlib.util

    try:
        spec = importlib.util.find_spec("scipy")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return False
        where = [os.path.join(path, "linalg") for path in spec.submodule_search_locations]
        for name in names:
            if name in sys.modules:
                continue
            sub = importlib.machinery.PathFinder.find_spec(name, where)
            if sub is None or not isinstance(sub.loader, importlib.machinery.ExtensionFileLoader):
                return False
            module = importlib.util.module_from_spec(sub)
            sys.modules[name] = module
            try:
                sub.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return True
    except (ImportError, OSError):
        return False


def return_large_blocks(threshold: int = 1 << 20) -> bool:
    """Fix glibc malloc's mmap threshold at ``threshold`` bytes (see the module doc); True if set.
    A no-op (False) off Linux or with another C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


__all__ = [
    "HOST_DEVICES_ENV",
    "MAX_HOST_DEVICES",
    "host_devices",
    "preload_lapack",
    "return_large_blocks",
    "usable_cores",
    "use_every_core",
]
