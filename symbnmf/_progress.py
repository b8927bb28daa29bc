"""Progress bars on stderr that stay readable when stderr is a file or a pipe.

On a terminal :func:`progress` is an ordinary tqdm bar (redrawn in place with ``\\r``). When
stderr is not a terminal (``symbnmf run 2> log``, CI logs, pytest's capture), redrawing in place
would pile every refresh onto one ever-growing line; there the bar is a line-per-update log
instead: one short line (at most 100 columns) per stage change (``set_postfix_str``) and at most
one every :data:`LOG_INTERVAL_S` seconds otherwise, without carriage returns or escape codes.
"""

from __future__ import annotations

import sys
from typing import IO, Any

#: Minimum seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL_S = 15.0
#: Width of a progress line when stderr is not a terminal.
LOG_COLUMNS = 100


class _LineWriter:
    """File-like object turning tqdm's in-place redraws into whole, de-duplicated lines."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last = ""

    def write(self, s: str) -> int:
        for part in s.replace("\x1b[A", "\n").replace("\r", "\n").split("\n"):
            line = part.rstrip()
            if line and line != self._last:
                self._stream.write(line[:LOG_COLUMNS] + "\n")
                self._last = line
        return len(s)

    def flush(self) -> None:
        self._stream.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    total: int | None = None,
    *,
    desc: str,
    iterable: Any = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    stream: IO[str] | None = None,
) -> Any:
    """A tqdm progress bar on ``stream`` (default: stderr); a line log when it is not a terminal."""
    from tqdm import tqdm

    out = sys.stderr if stream is None else stream
    if _is_tty(out):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=out)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        leave=leave,
        file=_LineWriter(out),
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S * 4,
        ncols=LOG_COLUMNS,
        ascii=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, {remaining} left{postfix}]",
    )
