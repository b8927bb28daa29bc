"""The ``symbnmf`` command line.

Each subcommand lives in its own module ``symbnmf/cli/<name>.py`` exposing

* ``NAME: str`` and ``HELP: str``,
* ``add_arguments(parser: argparse.ArgumentParser) -> None``,
* ``run(args: argparse.Namespace) -> int`` (exit status; print one JSON object with ``--json``).

A :class:`~symbnmf.SymbnmfError` raised anywhere becomes a one-line ``symbnmf: error: ...``
message on stderr and exit status 2 (``{"error": ...}`` on stdout with ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Sequence

from symbnmf._errors import SymbnmfError

#: Subcommand modules, in the order ``symbnmf --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "symbnmf.cli.run",
    "symbnmf.cli.derive",
    "symbnmf.cli.eval",
    "symbnmf.cli.simulate",
    "symbnmf.cli.codegen",
    "symbnmf.cli.trainability",
    "symbnmf.cli.check",
)


def build_parser() -> argparse.ArgumentParser:
    from symbnmf import __version__

    parser = argparse.ArgumentParser(
        prog="symbnmf",
        description="Executable mean field theory of batch-normalized networks (Yang et al., ICLR 2019).",
    )
    parser.add_argument("--version", action="version", version=f"symbnmf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        mod = importlib.import_module(modname)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SymbnmfError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        print(f"symbnmf: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        print("symbnmf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
