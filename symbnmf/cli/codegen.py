"""``symbnmf codegen``: write a standalone JAX/NumPy module of the closed forms."""

from __future__ import annotations

import argparse
import os

from symbnmf.cli.util import (
    add_activation_arguments,
    add_json_argument,
    check_output,
    parse_params,
    print_json,
    write_text,
)

NAME = "codegen"
HELP = (
    "write a standalone Python module (depends only on jax or numpy) evaluating the closed forms "
    "of ACT: one vectorised, jit/vmap/grad-able function per quantity"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_activation_arguments(parser)
    parser.add_argument(
        "--quantities",
        default=None,
        help="comma-separated quantities (default: all), e.g. backward.G,depth_scale",
    )
    parser.add_argument(
        "--target", choices=("jax", "numpy"), default="jax", help="array library of the module (default jax)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="output .py file")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from symbnmf._activations import get_activation
    from symbnmf._progress import progress
    from symbnmf.fast import codegen
    from symbnmf.fast._codegen_module import function_name, ordered

    check_output(args.output, args.force)  # fail before the (slow) derivation
    act = get_activation(args.activation, **parse_params(args.param))
    quantities = ordered(args.quantities.split(",") if args.quantities else None)
    with progress(2, desc="codegen", unit="step", disable=args.json) as bar:
        bar.set_postfix_str("deriving closed forms")
        command = "symbnmf codegen " + " ".join(
            [repr(args.activation), f"--target {args.target}"]
            + [f"--param {p}" for p in args.param]
            + ([f"--quantities {','.join(quantities)}"] if args.quantities else [])
        )
        source = codegen.jax_module(act, quantities, target=args.target, command=command)
        bar.update(1)
        bar.set_postfix_str("writing")
        write_text(args.output, source, args.force)
        bar.update(1)
    info = {
        "output": os.path.abspath(args.output),
        "activation": act.label,
        "parameters": [p.name for p in act.free_parameters],
        "target": args.target,
        "quantities": quantities,
        "functions": [function_name(q) for q in quantities],
        "bytes": len(source.encode()),
    }
    if args.json:
        print_json(info)
    else:
        print(f"wrote {args.output}: {', '.join(info['functions'])} ({args.target})")
    return 0
