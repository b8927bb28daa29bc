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

What the SymPy side of a simulation produced (the activation's label and key, φ printed as JAX
source, the theory column) is kept too, as small authenticated JSON records
(:func:`store_resolved`, :func:`load_resolved`, under ``<cache>/simulate``, keyed like the
executables plus the versions of the libraries the theory is computed with): a repeated
``symbnmf simulate`` then imports neither SymPy nor the symbolic stages, even when its program
must be compiled. They are products of the derivations, so ``SYMBNMF_NO_CACHE=1`` (the switch of
the derivation cache) turns them off, not ``SYMBNMF_NO_COMPILE_CACHE``.
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


def _mac(fmt: str | int, secret: bytes, key: str, payload: bytes) -> str:
    """HMAC-SHA256 of an entry of layout ``fmt`` stored under ``key`` (both bound into the MAC)."""
    import hmac

    return hmac.new(secret, f"{fmt}|{key}|".encode() + payload, "sha256").hexdigest()


def init_runtime() -> None:
    """Register the CPU custom calls (LAPACK) that a loaded executable may call: lowering does it
    for a freshly compiled program; without it a loaded one would jump to a null pointer.
    Idempotent. It imports ``scipy.linalg`` (jaxlib takes LAPACK from there), which two threads
    must not import at once (``_DeadlockError``): call it before starting a thread that may."""
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
    key of symbnmf's cache (:func:`symbnmf._secret.cache_secret`) matches."""
    import pickle

    d = executable_cache_dir()
    if d is None:
        return None
    path = d / f"{key}.exe"
    try:
        payload = _read_authentic(path, MAX_EXECUTABLE_BYTES, _MAGIC, EXECUTABLE_FORMAT, key)
        if payload is None:
            return None
        from jax.experimental.serialize_executable import deserialize_and_load

        serialized, in_tree, out_tree = pickle.loads(payload)
        init_runtime()
        fn = deserialize_and_load(serialized, in_tree, out_tree, execution_devices=list(devices))
        os.utime(path)  # recently used
        return fn
    except Exception:  # a bad or foreign entry is never trusted, only replaced
        return None


def _read_authentic(path: Path, max_bytes: int, magic: bytes, fmt: str | int, key: str) -> bytes | None:
    """The payload of an entry written by :func:`_write_authentic`, or None: absent, larger than
    ``max_bytes``, no per-user key yet, another magic, or not its :func:`_mac` (``fmt``, ``key``)."""
    import hmac

    if not path.is_file() or path.stat().st_size > max_bytes:
        return None
    from symbnmf._secret import cache_secret

    secret = cache_secret(cache_root(), create=False)
    if secret is None:
        return None
    head, _, payload = path.read_bytes().partition(b"\n")
    found, _, tag = head.partition(b" ")
    if found != magic or not hmac.compare_digest(tag.decode("ascii", "replace"), _mac(fmt, secret, key, payload)):
        return None
    return payload


def _write_authentic(d: Path, key: str, suffix: str, magic: bytes, fmt: str | int, payload: bytes, keep: int) -> bool:
    """Write ``magic MAC\\npayload`` to ``d/<key><suffix>`` atomically (directory 0700, file 0600),
    the :func:`_mac` of ``fmt`` and ``key`` under the per-user key (created if need be); then keep
    the ``keep`` most recently used entries of that suffix. False when there is no key."""
    import tempfile

    from symbnmf._secret import cache_secret

    secret = cache_secret(cache_root(), create=True)
    if secret is None:
        return False
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".new-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(magic + b" " + _mac(fmt, secret, key, payload).encode() + b"\n" + payload)
        os.replace(tmp, d / f"{key}{suffix}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _prune(d, "*" + suffix, keep)
    return True


def store_executable(key: str, compiled: Any) -> bool:
    """Serialize ``compiled`` under ``key`` (atomically, mode 0600, with its HMAC); False when the
    cache is off, the program cannot be serialized, or the directory is not writable."""
    import pickle

    d = executable_cache_dir()
    if d is None:
        return False
    try:
        from jax.experimental.serialize_executable import serialize

        payload = pickle.dumps(serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        return _write_authentic(d, key, ".exe", _MAGIC, EXECUTABLE_FORMAT, payload, MAX_EXECUTABLES)
    except Exception:
        return False


def drop_executable(key: str) -> None:
    """Remove the program stored under ``key`` (one that was found not to run)."""
    d = executable_cache_dir()
    if d is not None:
        with contextlib.suppress(OSError):
            (d / f"{key}.exe").unlink()


def _prune(d: Path, pattern: str, keep: int) -> None:
    entries = sorted(d.glob(pattern), key=lambda p: p.stat().st_mtime)
    for p in entries[: max(0, len(entries) - keep)]:
        with contextlib.suppress(OSError):
            p.unlink()


# ---------------------------------------------------------------------------------------------
# resolved simulations: what SymPy produced for a simulation, so a repeated run needs no SymPy
# ---------------------------------------------------------------------------------------------
#: Layout version of a resolved-simulation record (part of its key and of its MAC).
RESOLVED_FORMAT = "symbnmf-resolved-simulation-2"
#: Records larger than this are never read.
MAX_RESOLVED_BYTES = 1 << 20
#: At most this many records are kept; the least recently used are removed beyond it.
MAX_RESOLVED = 1024
_RESOLVED_MAGIC = b"SYMBNMF-RESOLVED"
#: Libraries the symbolic and numeric stages compute with (their versions are part of the key).
_THEORY_LIBRARIES = ("sympy", "mpmath", "gmpy2", "numpy", "scipy")


def resolved_cache_dir() -> Path | None:
    """Where resolved-simulation records live (``<cache>/simulate``), or None with
    ``SYMBNMF_NO_CACHE`` (the derivation cache's switch: a record is what the derivations gave)."""
    if os.environ.get("SYMBNMF_NO_CACHE"):
        return None
    return cache_root() / "simulate"


def _library_versions() -> list[str]:
    """Installed versions of :data:`_THEORY_LIBRARIES`, read from their metadata (nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in _THEORY_LIBRARIES:
        try:
            out.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            out.append(f"{name}=-")
    return out


def resolved_key(description: dict) -> str | None:
    """The key of a resolved-simulation record: a hash of :data:`RESOLVED_FORMAT`,
    :func:`_package_fingerprint` (symbnmf's sources, JAX, Python, the CPU), the versions of the
    libraries the theory is computed with and ``description`` (JSON: the input exactly as given
    and every setting the record depends on). None when ``description`` is not plain JSON."""
    import hashlib
    import json

    try:
        text = json.dumps(description, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    parts = [RESOLVED_FORMAT, _package_fingerprint(), *_library_versions(), text]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load_resolved(key: str) -> dict | None:
    """The record stored under ``key``, or None (cache off, absent, too large, unreadable, not
    authentic under the per-user key, another format, not a JSON object). Never trusted otherwise."""
    import json

    d = resolved_cache_dir()
    if d is None:
        return None
    path = d / f"{key}.json"
    try:
        payload = _read_authentic(path, MAX_RESOLVED_BYTES, _RESOLVED_MAGIC, RESOLVED_FORMAT, key)
        if payload is None:
            return None
        record = json.loads(payload)
        if not isinstance(record, dict):
            return None
        os.utime(path)  # recently used
        return record
    except Exception:  # a bad or foreign record is never trusted, only replaced
        return None


def store_resolved(key: str, record: dict) -> bool:
    """Store ``record`` (plain JSON) under ``key``, atomically (directory 0700, file 0600) with its
    HMAC; False when the cache is off, the record is not plain JSON or nothing can be written."""
    import json

    d = resolved_cache_dir()
    if d is None:
        return False
    try:
        payload = json.dumps(record, sort_keys=True, allow_nan=False).encode()
        return _write_authentic(d, key, ".json", _RESOLVED_MAGIC, RESOLVED_FORMAT, payload, MAX_RESOLVED)
    except Exception:
        return False
