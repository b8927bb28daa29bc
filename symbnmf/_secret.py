"""The per-user key that authenticates symbnmf's on-disk caches (private, base stage).

Shared by the derivation cache (:mod:`symbnmf.symbolic._diskcache`) and the executable and
resolved-simulation caches (:mod:`symbnmf.fast._compile_cache`). Kept apart from both so that
reading a cache entry imports neither SymPy nor the symbolic stage (a repeated ``symbnmf
simulate`` loads SymPy not at all).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: File name of the key inside the cache directory.
SECRET_NAME = "secret.key"


def cache_secret(cdir: Path, create: bool) -> bytes | None:
    """The per-user key that authenticates cache entries (HMAC-SHA256), or None if unusable.

    Created once with mode 0600 in the cache directory; a key file that is not a regular file
    owned by this user and unreadable by others is never trusted (then the cache is not used).
    """
    path = cdir / SECRET_NAME
    if create and not path.exists():
        try:
            cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(32).hex())
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            return None
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            return None
        text = fh.read(200).strip()
    return bytes.fromhex(text) if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


__all__ = ["SECRET_NAME", "cache_secret"]
