"""``symbnmf codegen``: write a standalone JAX/NumPy module of the closed forms."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from ._errors import OutputExistsError, SymbnmfError

NAME = "codegen"
HELP = (
    "write a standalone Python module (depends only on jax or numpy) evaluating the closed forms "
    "of ACT: one vectorised, jit/vmap/grad-able function per quantity"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("activation", metavar="ACT", help="activation: relu, identity, leaky_relu, leaky_relu(0.1), 'relu(x)**2', ...")
    parser.add_argument(
        "--quantities", default=None,
        help="comma-separated quantities (default: all), e.g. backward.G,depth_scale",
    )
    parser.add_argument("--target", choices=("jax", "numpy"), default="jax", help="array library of the module (default jax)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="output .py file")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the result on stdout")


def write_new_file(path: str, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` atomically; refuse to replace an existing file unless ``force``."""
    if os.path.exists(path) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it or choose another -o FILE")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SymbnmfError(f"directory {directory} does not exist; create it first or choose another -o FILE")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".symbnmf-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import codegen
    from ._codegen_module import function_name, ordered

    if os.path.exists(args.output) and not args.force:  # fail before the (slow) derivation
        raise OutputExistsError(f"{args.output} exists; pass --force to overwrite it or choose another -o FILE")
    quantities = ordered(args.quantities.split(",") if args.quantities else None)
    with tqdm(total=2, desc="codegen", unit="step", file=sys.stderr, disable=args.json) as bar:
        bar.set_postfix_str("deriving closed forms")
        command = "symbnmf codegen " + " ".join(
            [repr(args.activation), f"--target {args.target}"]
            + ([f"--quantities {','.join(quantities)}"] if args.quantities else [])
        )
        source = codegen.jax_module(args.activation, quantities, target=args.target, command=command)
        bar.update(1)
        bar.set_postfix_str("writing")
        write_new_file(args.output, source, args.force)
        bar.update(1)
    info = {
        "output": os.path.abspath(args.output),
        "activation": args.activation,
        "target": args.target,
        "quantities": quantities,
        "functions": [function_name(q) for q in quantities],
        "bytes": len(source.encode()),
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {args.output}: {', '.join(info['functions'])} ({args.target})")
    return 0
