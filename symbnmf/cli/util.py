"""Small helpers shared by the ``symbnmf`` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from symbnmf._errors import SymbnmfError
from symbnmf._output import atomic_output as atomic_output
from symbnmf._output import check_output as check_output
from symbnmf._output import shorten as shorten
from symbnmf._output import write_text as write_text


def add_activation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "activation",
        metavar="ACT",
        help="catalog name (identity, relu, leaky_relu(0.1), alpha_relu(1.5), tanh, erf, gelu, swish) "
        "or an expression in x such as 'tanh(0.5*x + 0.2)'",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind an activation parameter, e.g. --param g=0.5 (repeatable)",
    )


def add_json_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def add_memory_budget_argument(p: argparse.ArgumentParser) -> None:
    """``--memory-budget SIZE`` of the commands that run many networks (simulate, dynamics, trainability)."""
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        default=None,
        help="working memory, e.g. 512M or 2G (default: a quarter of the available RAM, at most 1G); networks "
        "run in chunks that fit it (every layer rematerialised when one network does not), recorded in the JSON",
    )


def parse_size(text: str | None) -> int | None:
    """Bytes from '512M', '2G', '1.5GiB', '300000' (binary units), or None."""
    if text is None:
        return None
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        value = float("nan")
    if not value > 0 or value * scale > 1 << 50:
        raise SymbnmfError(f"--memory-budget: cannot read {text!r} as a size; e.g. --memory-budget 512M or 2G")
    return max(1, int(value * scale))


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SymbnmfError(f"--param expects NAME=VALUE, got {item!r}; e.g. --param g=0.5")
        k, v = item.split("=", 1)
        k = k.strip()
        if k in out:
            raise SymbnmfError(f"--param {shorten(k)} given twice; give each parameter once")
        try:
            float(v)
        except ValueError:
            raise SymbnmfError(f"--param {shorten(k)}: value must be a number, got {shorten(v)!r}") from None
        out[k] = v.strip()
    return out


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, allow_nan=True)
    sys.stdout.write("\n")


#: Width of every line of the text (non ``--json``) output.
COLUMNS = 100

#: What the reported quantities mean (printed under ``eval`` and ``derive`` text output).
LEGEND = (
    "legend (definitions: docs/theory.md):",
    "  fixed_point  the BSB1 fixed point Sigma*: diag = E phi(y1)^2, offdiag = E phi(y1)phi(y2), with",
    "               y uniform on the BN sphere (radius sqrt(B) in the hyperplane sum y = 0)",
    "  forward.X    eigenvalue of the layer-to-layer covariance map linearised at Sigma* (<1: attracting)",
    "  backward.X   eigenvalue of the gradient-covariance map; backward.G = per-layer growth factor of",
    "               the squared gradient norm",
    "  X = G, L, M  the invariant pieces: G overall scale of the batch, L spread of the per-sample norms",
    "               (diagonal), M correlations between samples (off-diagonal)",
    "  depth_scale  xi = 1/ln backward.G: the squared gradient grows like exp(depth/xi); networks deeper",
    "               than about 16 xi do not train (Sec. 3.3)",
)


def wrap(text: str, *, indent: str = "", width: int = COLUMNS) -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` columns, continuation lines
    indented four spaces more than ``indent``; a word longer than a line is cut."""
    import textwrap

    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_long_words=True,
        break_on_hyphens=False,
    ) or [indent]


def table(header: list[str], rows: list[list[str]], *, width: int = COLUMNS) -> list[str]:
    """Right-aligned columns; when they do not fit in ``width``, the table is split into blocks
    of columns, each repeating the first (key) column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    blocks: list[list[int]] = []
    cur: list[int] = []
    used = widths[0]
    for i in range(1, len(header)):
        if cur and used + 2 + widths[i] > width:
            blocks.append(cur)
            cur, used = [], widths[0]
        cur.append(i)
        used += 2 + widths[i]
    blocks.append(cur)
    out: list[str] = []
    for k, cols in enumerate(blocks):
        if k:
            out.append("")
        for cells in [header, *rows]:
            out.append("  ".join(cells[i].rjust(widths[i]) for i in [0, *cols]))
    return out


def wrap_formula(text: str, *, indent: str = "", width: int = COLUMNS) -> list[str]:
    """A formula broken into lines of at most ``width`` columns at spaces, choosing on each line
    the break point least deep inside brackets (the rightmost among those), so that lines end at
    top-level ``+``/``-`` where possible; continuation lines are indented four more spaces."""
    lines: list[str] = []
    prefix, rest, depth0 = indent, text, 0
    while len(prefix) + len(rest) > width:
        room = width - len(prefix)
        best, best_depth, depth = -1, None, depth0
        for i, ch in enumerate(rest[: room + 1]):
            if ch == " " and i > 0 and (best_depth is None or depth <= best_depth):
                best, best_depth = i, depth
            depth += ch in "([{"
            depth -= ch in ")]}"
        if best <= 0:  # no space to break at: cut
            best = room
        head, rest = rest[:best].rstrip(), rest[best:].lstrip()
        depth0 += sum(ch in "([{" for ch in head) - sum(ch in ")]}" for ch in head)
        lines.append(prefix + head)
        prefix = indent + "    "
    lines.append(prefix + rest)
    return lines
