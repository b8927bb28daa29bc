"""JAX's persistent compilation cache, under symbnmf's cache directory (private).

Compiled XLA programs are written to ``$SYMBNMF_CACHE_DIR/jax`` (default
``~/.cache/symbnmf/jax``, beside the derivation cache), so a second process that runs the
same computation loads the executable instead of compiling it.  ``SYMBNMF_NO_COMPILE_CACHE=1``
turns it off; a cache directory the user configured in JAX themselves is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

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
