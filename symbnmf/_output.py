"""Writing output files safely (used by every command and experiment that writes a file).

* :func:`check_output` validates a path before any work: never overwrite without ``force``,
  never replace anything but a regular file (a device such as ``/dev/full``, a directory, a FIFO,
  a symbolic link), never create missing parent directories silently.
* :func:`atomic_output` / :func:`write_text` write to a temporary file in the same directory and
  ``os.replace`` it onto the target when complete: an error or Ctrl-C leaves the target as it was
  and no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from symbnmf._errors import OutputExistsError, OutputPathError


def check_output(path: str | Path, force: bool) -> Path:
    """Validate an output file path before any work is done; return it as a :class:`Path`.

    Refuses (one-line :class:`~symbnmf.SymbnmfError`): an existing file without ``force``
    (nothing the user had is lost); anything that is not a regular file, even with ``force``
    (a directory, a device such as ``/dev/full``, a FIFO, a symbolic link); a parent directory
    that does not exist (it is not created silently) or is not a directory.
    """
    p = Path(path)
    if not str(path).strip():
        raise OutputPathError("empty output file name; give a path such as out.py")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputPathError(f"cannot use output path {shorten(str(p))}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{shorten(str(p))} is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "device or special file"
            raise OutputPathError(
                f"{shorten(str(p))} is a {kind}, not a regular file; symbnmf only replaces regular files, "
                "choose another output path"
            )
        if not force:
            raise OutputExistsError(
                f"{shorten(str(p))} exists; pass --force to overwrite it or choose another file name"
            )
    parent = p.parent
    if not parent.exists():
        raise OutputPathError(
            f"directory {shorten(str(parent))} does not exist; create it first (mkdir -p {shorten(str(parent))})"
        )
    if not parent.is_dir():
        raise OutputPathError(f"{shorten(str(parent))} is not a directory; choose an output path inside a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write in directory {shorten(str(parent))} (permission denied)")
    return p


@contextlib.contextmanager
def atomic_output(path: str | Path, force: bool, *, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` atomically.

    Until the ``with`` block ends without an exception the target is untouched; on an error or
    Ctrl-C the temporary file is removed, so nothing partial is ever left under the final name.
    """
    p = check_output(path, force)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name[:50]}.", suffix=".tmp-symbnmf")
    except OSError as exc:
        raise OutputPathError(f"cannot write {shorten(str(p))}: {exc.strerror}") from None
    _PENDING.add(tmp)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OutputPathError(f"cannot write {shorten(str(p))}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        _PENDING.discard(tmp)


def write_text(path: str | Path, text: str, force: bool) -> Path:
    """Write ``text`` to ``path`` atomically after :func:`check_output` (see :func:`atomic_output`)."""
    with atomic_output(path, force) as fh:
        fh.write(text)
    return Path(path)


#: Temporary files and directories being written right now (removed by :func:`remove_pending`).
_PENDING: set[str] = set()


def track_temporary(path: str | Path) -> None:
    """Register a temporary file or directory for :func:`remove_pending` (e.g. a staging directory)."""
    _PENDING.add(str(path))


def untrack_temporary(path: str | Path) -> None:
    _PENDING.discard(str(path))


def remove_pending() -> None:
    """Remove every registered temporary output (the CLI calls this when it must exit at once)."""
    for path in list(_PENDING):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _unlink_quietly(path)
        _PENDING.discard(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (with the total length) for one-line error messages."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text)} characters)"


__all__ = [
    "atomic_output",
    "check_output",
    "remove_pending",
    "shorten",
    "track_temporary",
    "untrack_temporary",
    "write_text",
]
