"""The authenticated on-disk cache of the symbolic stage (private).

Derivations (:mod:`symbnmf.symbolic._derive`) and the abstract quantity definitions
(:mod:`symbnmf.symbolic._quantities`) are cached as JSON entries under ``SYMBNMF_CACHE_DIR``
(default ``~/.cache/symbnmf``; ``SYMBNMF_NO_CACHE=1`` off). An entry is trusted only if its
HMAC-SHA256 under a per-user key (mode 0600, created once in the cache directory) matches its
body, its kind, its key and the fingerprint of every source file that can reach it
(:func:`fingerprint_sources`) with SymPy's version; any other entry (missing, unreadable,
edited, forged, stale, malformed) is ignored and rebuilt by the caller. Bodies hold SymPy
expressions as ``srepr`` text, read back by :mod:`symbnmf.symbolic._serialize` without
evaluating anything, so even a forged entry cannot run code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import tempfile
from pathlib import Path

import sympy as sp

from symbnmf._secret import cache_secret as cache_secret  # the key lives in a SymPy-free module

#: Version of the entry layout (part of every MAC).
ENTRY_FORMAT = 3
#: Entries larger than this are never read.
MAX_ENTRY_BYTES = 20_000_000


def fingerprint_sources() -> list[Path]:
    """Every source file whose text can reach a cached entry: the base modules and ``symbolic/``.

    The import-direction rule (base -> symbolic -> numeric -> ...; ``tests/test_architecture.py``)
    guarantees that the symbolic stage imports nothing else from symbnmf, so these files are all of
    it (``__init__.py`` carries the version string, ``_conventions.py`` the conventions text).
    """
    here = Path(__file__).resolve().parent
    top = here.parent
    return sorted(top.glob("*.py")) + sorted(here.glob("*.py"))


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of :func:`fingerprint_sources` and SymPy's version: editing either invalidates the cache."""
    h = hashlib.sha256()
    h.update(sp.__version__.encode())
    for path in fingerprint_sources():
        h.update(b"\0" + path.parent.name.encode() + b"/" + path.name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path | None:
    """``SYMBNMF_CACHE_DIR`` (unset or empty: ``~/.cache/symbnmf``), or None with ``SYMBNMF_NO_CACHE``."""
    if os.environ.get("SYMBNMF_NO_CACHE"):
        return None
    env = os.environ.get("SYMBNMF_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "symbnmf"


def entry_mac(secret: bytes, kind: str, key: str, body: str) -> str:
    """HMAC of an entry: its layout version, kind (the JSON field of the body), key, the source
    fingerprint and the body."""
    msg = f"{ENTRY_FORMAT}|{kind}|{key}|{code_fingerprint()}\n{body}"
    return hmac.new(secret, msg.encode(), "sha256").hexdigest()


def read_entry(cfile: Path, key: str, kind: str) -> str | None:
    """The body (text) of the entry ``cfile`` if it is authentic for ``kind`` and ``key``, else None."""
    secret = cache_secret(cfile.parent, create=False)
    if secret is None:
        return None
    try:
        if not cfile.is_file() or cfile.stat().st_size > MAX_ENTRY_BYTES:
            return None
        entry = json.loads(cfile.read_text())
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT or entry.get("key") != key:
            return None
        body, mac = entry.get(kind), entry.get("mac")
        if not isinstance(body, str) or not isinstance(mac, str):
            return None
        if not hmac.compare_digest(mac, entry_mac(secret, kind, key, body)):
            return None
        return body
    except Exception:  # a bad entry is never trusted, only rebuilt
        return None


def write_entry(cfile: Path, key: str, kind: str, body: str) -> None:
    """Write an authenticated entry atomically (a temporary file renamed into place); any
    failure (read-only directory, full disk, unusable key) leaves the cache without it."""
    secret = cache_secret(cfile.parent, create=True)
    if secret is None:
        return
    entry = {"format": ENTRY_FORMAT, "key": key, "mac": entry_mac(secret, kind, key, body), kind: body}
    try:
        fd, tmp = tempfile.mkstemp(dir=cfile.parent, prefix=f".{kind}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(entry, fh)
            os.replace(tmp, cfile)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


__all__ = [
    "ENTRY_FORMAT",
    "cache_dir",
    "cache_secret",
    "code_fingerprint",
    "entry_mac",
    "fingerprint_sources",
    "read_entry",
    "write_entry",
]
