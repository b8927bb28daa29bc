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
import gc
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from symbnmf._errors import SymbnmfError

#: Subcommand modules, in the order ``symbnmf --help`` lists them.  Registering a command is one
#: line here; its module is imported only when that command runs (or its own ``--help`` is asked
#: for): the listing reads each module's literal ``NAME`` and ``HELP`` from its source.
COMMAND_MODULES: tuple[str, ...] = (
    "symbnmf.cli.run",
    "symbnmf.cli.derive",
    "symbnmf.cli.eval",
    "symbnmf.cli.simulate",
    "symbnmf.cli.codegen",
    "symbnmf.cli.trainability",
    "symbnmf.cli.dynamics",
    "symbnmf.cli.check",
    "symbnmf.cli.kernel",
)


#: Commands that shard Monte Carlo networks over JAX devices: run as the ``symbnmf`` program, they
#: get one XLA CPU device per core, a malloc that returns large blocks and SciPy's LAPACK without
#: all of scipy.linalg (:mod:`symbnmf._process`).
MONTE_CARLO_COMMANDS: frozenset[str] = frozenset({"simulate"})


def command_info(modname: str) -> tuple[str, str]:
    """(NAME, HELP) of a subcommand module without importing it (its literal assignments).

    Falls back to importing the module when its source cannot be read (e.g. a zipped install)
    or NAME/HELP are not literal strings.
    """
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec(modname)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            raise LookupError(modname)
        with open(origin, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), origin)
        found: dict[str, str] = {}
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in ("NAME", "HELP"):
                value = ast.literal_eval(node.value)  # type: ignore[attr-defined]
                if isinstance(value, str):
                    found[target.id] = value
        return found["NAME"], found["HELP"]
    except (LookupError, OSError, SyntaxError, ValueError, ImportError):
        mod = importlib.import_module(modname)
        return mod.NAME, mod.HELP


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first non-option word), or None."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``symbnmf`` parser; only the subcommands named in ``commands`` (default: all) get their
    full arguments, which imports their modules; the others are listed by name and help only."""
    from symbnmf import __version__

    parser = argparse.ArgumentParser(
        prog="symbnmf",
        description="Executable mean field theory of batch-normalized networks (Yang et al., ICLR 2019).",
    )
    parser.add_argument("--version", action="version", version=f"symbnmf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        name, help_text = command_info(modname)
        p = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 2 bad input, 130 interrupted).

    Called as the ``symbnmf`` program (``argv`` None), Ctrl-C ends the process at once with
    status 130 after the interrupted command's cleanup ran (temporary outputs removed), without
    the interpreter shutdown that could crash while JAX/XLA threads are still running.
    """
    if argv is None:
        _install_interrupt_handler()
    try:
        status = _main(argv)
        if argv is None:
            # The process ends now: move every object to the permanent generation so that the
            # interpreter's final collections do not traverse the SymPy/JAX heap (~0.4 s CPU of
            # `eval --fast`, issue 14). Objects are still freed by reference counting and atexit
            # handlers still run; in-process callers (argv given) keep a normal collector.
            gc.freeze()
        return status
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit
        print("symbnmf: interrupted", file=sys.stderr)
        if argv is None:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(130)
        return 130


#: Seconds the interrupted command has to unwind before the process is ended from outside.
INTERRUPT_GRACE_S = 3.0


def _install_interrupt_handler() -> None:
    """Ctrl-C raises KeyboardInterrupt once (so ``finally`` blocks remove temporary outputs) and
    starts a watchdog: a KeyboardInterrupt can be swallowed where Python ignores exceptions (JAX's
    garbage-collection callback, ``__del__``), so if the process is still alive after
    :data:`INTERRUPT_GRACE_S` it removes the pending temporary outputs and exits with 130 itself.
    Where Python reports such a swallowed interrupt (``sys.unraisablehook``), that exit happens at once,
    without the "Exception ignored ... Traceback" Python would print. Further Ctrl-C presses are ignored
    while this happens."""
    state = {"hit": False}
    previous_hook = sys.unraisablehook

    def hard_exit() -> None:
        from symbnmf._output import remove_pending

        remove_pending()
        with contextlib.suppress(Exception):
            print("symbnmf: interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    def handler(signum: int, frame: object) -> None:
        if state["hit"]:
            return
        state["hit"] = True
        timer = threading.Timer(INTERRUPT_GRACE_S, hard_exit)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    def unraisable(info: Any) -> None:
        if state["hit"] and info.exc_type is KeyboardInterrupt:  # our interrupt, lost: finish it here
            hard_exit()
        previous_hook(info)

    with contextlib.suppress(ValueError):  # not in the main thread: leave Python's default
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, handler)
            sys.unraisablehook = unraisable


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_command(words)
    parser = build_parser([chosen] if chosen else [])
    args = parser.parse_args(words)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if argv is None and args.command in MONTE_CARLO_COMMANDS:  # the whole process is ours
        from symbnmf._process import preload_lapack, return_large_blocks, use_every_core

        wants = getattr(importlib.import_module(f"symbnmf.cli.{args.command}"), "wants_every_core", None)
        if wants is None or wants(args):
            use_every_core()
        return_large_blocks()
        preload_lapack()
    try:
        return int(args._run(args) or 0)
    except SymbnmfError as exc:
        return _fail(args, exc)
    except (RecursionError, MemoryError, OverflowError) as exc:
        # resource limits that slipped past the input checks: still bad input, not a crash
        return _fail(
            args, SymbnmfError(f"the request is too large to compute ({type(exc).__name__}); use a smaller input")
        )
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except Exception as exc:
        if os.environ.get("SYMBNMF_DEBUG"):
            raise
        print(
            f"symbnmf: internal error: {type(exc).__name__}: {_shorten(str(exc))} "
            "(a bug: please report it; SYMBNMF_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _shorten(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text)} characters)"


def _fail(args: argparse.Namespace, exc: SymbnmfError) -> int:
    msg = _shorten(str(exc))
    if getattr(args, "json", False):
        print(json.dumps({"error": msg, "type": type(exc).__name__}))
    print(f"symbnmf: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
