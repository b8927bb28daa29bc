"""JAX's persistent compilation cache, under symbnmf's cache directory (private).

Compiled XLA programs are written to ``$SYMBNMF_CACHE_DIR/jax`` (default
``~/.cache/symbnmf/jax``, beside the derivation cache), so a second process that runs the
same computation loads the executable instead of compiling it.  ``SYMBNMF_NO_COMPILE_CACHE=1``
turns it off; a cache directory the user configured in JAX themselves is left alone.

JAX's cache still traces and lowers a program to find its key (0.75 s for the default
``symbnmf simulate``). The Monte Carlo programs are therefore also kept whole, serialized
(:func:`store_executable`, :func:`load_executable`, under ``<cache>/jax-exe``), keyed by a
description of the program (its static configuration, shapes, devices, compiler options) and a
fingerprint of symbnmf's sources, the JAX/jaxlib/Python versions and the CPU: a repeated run
loads the executable without tracing anything. Entries are authenticated like the derivation
cache (HMAC-SHA256 under the per-user key, checked before anything is unpickled), and the least
recently used beyond :data:`MAX_EXECUTABLES` are removed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

_STATE: dict[str, Path | None] = {}


def cache_root() -> Path:
    """symbnmf's cache directory: ``$SYMBNMF_CACHE_DIR``, default ``~/.cache/symbnmf``."""
    return Path(os.environ.get("SYMBNMF_CACHE_DIR", Path.home() / ".cache" / "symbnmf"))


def compilation_cache_dir() -> Path | None:
    """Where compiled programs are cached, or None when ``SYMBNMF_NO_COMPILE_CACHE`` is set."""
    if os.environ.get("SYMBNMF_NO_COMPILE_CACHE"):
        return None
    return cache_root() / "jax"


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache (idempotent); returns its directory or None.

    Every compiled program is cached (minimum compile time 0), so a repeated command compiles
    nothing.  Failures to create the directory leave the cache off (a warning from JAX at most).
    """
    if "dir" in _STATE:
        return _STATE["dir"]
    import jax

    path = compilation_cache_dir()
    configured = getattr(jax.config, "jax_compilation_cache_dir", None)
    if path is not None and configured:
        path = Path(configured)  # configured by the user: keep it
    elif path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            path = None
        if path is not None:
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _STATE["dir"] = path
    return path


# ---------------------------------------------------------------------------------------------
# compiled executables, serialized: a repeated run neither traces, lowers nor compiles
# ---------------------------------------------------------------------------------------------
#: Layout version of an executable entry (part of its MAC).
EXECUTABLE_FORMAT = 1
#: Entries larger than this are never read.
MAX_EXECUTABLE_BYTES = 512 << 20
#: At most this many executables are kept; the least recently used are removed beyond it.
MAX_EXECUTABLES = 256
_MAGIC = b"SYMBNMF-EXECUTABLE"


def executable_cache_dir() -> Path | None:
    """Where serialized executables live (``<cache>/jax-exe``), or None with ``SYMBNMF_NO_COMPILE_CACHE``."""
    if os.environ.get("SYMBNMF_NO_COMPILE_CACHE"):
        return None
    return cache_root() / "jax-exe"


@functools.lru_cache(maxsize=1)
def _package_fingerprint() -> str:
    """Hash of every source file of symbnmf, the JAX/jaxlib/Python versions and this CPU's model
    and feature flags: an executable is reused only by the code, the compiler and the machine
    that made it."""
    import hashlib
    import platform
    import sys

    import jax
    import jaxlib

    h = hashlib.sha256()
    for part in (jax.__version__, getattr(jaxlib, "__version__", "?"), sys.version, platform.machine()):
        h.update(part.encode() + b"\0")
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            h.update(b"".join(sorted({ln for ln in fh if ln.startswith((b"flags", b"model name", b"vendor_id"))})))
    except OSError:
        h.update(platform.processor().encode())
    top = Path(__file__).resolve().parent.parent
    for path in sorted(top.rglob("*.py")):
        h.update(b"\0" + str(path.relative_to(top)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def executable_key(description: dict) -> str:
    """The cache key of a program: a hash of ``description`` (JSON: what was compiled, its
    configuration, shapes, devices and compiler options) and :func:`_package_fingerprint`."""
    import hashlib
    import json

    text = json.dumps(description, sort_keys=True, default=repr)
    return hashlib.sha256(f"{EXECUTABLE_FORMAT}|{_package_fingerprint()}|{text}".encode()).hexdigest()


def _mac(secret: bytes, key: str, payload: bytes) -> str:
    import hmac

    return hmac.new(secret, f"{EXECUTABLE_FORMAT}|{key}|".encode() + payload, "sha256").hexdigest()


def _init_runtime() -> None:
    """Register the CPU custom calls (LAPACK) that a loaded executable may call: lowering does it
    for a freshly compiled program; without it a loaded one would jump to a null pointer."""
    try:
        from jax._src.lib import lapack

        lapack._lapack.initialize()
    except Exception:  # another JAX layout: lower a tiny eigh, which initialises LAPACK
        import jax
        import jax.numpy as jnp
        import numpy as np

        jax.jit(jnp.linalg.eigh).lower(np.eye(2, dtype=np.float32))


def load_executable(key: str, devices: tuple) -> Any | None:
    """The compiled program stored under ``key`` for ``devices``, or None (absent, unreadable,
    not authentic, or not loadable here). Nothing is unpickled unless its HMAC under the per-user
    key of symbnmf's cache (:func:`symbnmf.symbolic._diskcache.cache_secret`) matches."""
    import hmac
    import pickle

    d = executable_cache_dir()
    if d is None:
        return None
    path = d / f"{key}.exe"
    try:
        if not path.is_file() or path.stat().st_size > MAX_EXECUTABLE_BYTES:
            return None
        from symbnmf.symbolic._diskcache import cache_secret

        secret = cache_secret(cache_root(), create=False)
        if secret is None:
            return None
        blob = path.read_bytes()
        head, _, payload = blob.partition(b"\n")
        magic, _, mac = head.partition(b" ")
        if magic != _MAGIC or not hmac.compare_digest(mac.decode("ascii", "replace"), _mac(secret, key, payload)):
            return None
        from jax.experimental.serialize_executable import deserialize_and_load

        serialized, in_tree, out_tree = pickle.loads(payload)
        _init_runtime()
        fn = deserialize_and_load(serialized, in_tree, out_tree, execution_devices=list(devices))
        os.utime(path)  # recently used
        return fn
    except Exception:  # a bad or foreign entry is never trusted, only replaced
        return None


def store_executable(key: str, compiled: Any) -> bool:
    """Serialize ``compiled`` under ``key`` (atomically, mode 0600, with its HMAC); False when the
    cache is off, the program cannot be serialized, or the directory is not writable."""
    import pickle
    import tempfile

    d = executable_cache_dir()
    if d is None:
        return False
    try:
        from jax.experimental.serialize_executable import serialize

        from symbnmf.symbolic._diskcache import cache_secret

        secret = cache_secret(cache_root(), create=True)
        if secret is None:
            return False
        payload = pickle.dumps(serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".exe-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + b" " + _mac(secret, key, payload).encode() + b"\n" + payload)
            os.replace(tmp, d / f"{key}.exe")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _prune(d)
        return True
    except Exception:
        return False


def _prune(d: Path) -> None:
    entries = sorted(d.glob("*.exe"), key=lambda p: p.stat().st_mtime)
    for p in entries[: max(0, len(entries) - MAX_EXECUTABLES)]:
        with contextlib.suppress(OSError):
            p.unlink()
