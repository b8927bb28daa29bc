"""Small helpers shared by the ``symbnmf`` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from symbnmf._errors import OutputExistsError, SymbnmfError


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


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SymbnmfError(f"--param expects NAME=VALUE, got {item!r}; e.g. --param g=0.5")
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            float(v)
        except ValueError:
            raise SymbnmfError(f"--param {k}: value must be a number, got {v!r}") from None
        out[k] = v.strip()
    return out


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force`` (nothing the user had is lost)."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} exists; pass --force to overwrite it or choose another file name")
    if p.exists() and p.is_dir():
        raise OutputExistsError(f"{p} is a directory; give a file name")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_text(path: str | Path, text: str, force: bool) -> Path:
    p = check_output(path, force)
    tmp = p.with_name(p.name + ".tmp-symbnmf")
    tmp.write_text(text)
    tmp.replace(p)
    return p


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, allow_nan=True)
    sys.stdout.write("\n")
