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
    g = parser.add_argument_group(
        "BN with eps > 0 (issue 12; identity, relu, leaky_relu): a module of functions of (B, mu, epsilon, "
        "sigma_w2, gamma) with a root finder for mu* and evaluate()"
    )
    g.add_argument(
        "--eps",
        nargs="?",
        const="",
        default=None,
        metavar="E",
        help="emit the eps > 0 closed forms; E (optional) becomes the default of the functions' epsilon argument",
    )
    g.add_argument("--weight-var", default=None, metavar="S", help="default sigma_w2 argument (default 1; with --eps)")
    g.add_argument("--gamma", default=None, metavar="G", help="default gamma argument (default 1; with --eps)")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from symbnmf._activations import get_activation
    from symbnmf._progress import progress
    from symbnmf.fast import codegen
    from symbnmf.fast._codegen_module import function_name, ordered

    check_output(args.output, args.force)  # fail before the (slow) derivation
    act = get_activation(args.activation, **parse_params(args.param))
    if getattr(args, "eps", None) is not None or getattr(args, "weight_var", None) or getattr(args, "gamma", None):
        return _run_eps(args, act)
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


def _run_eps(args: argparse.Namespace, act) -> int:
    """``codegen --eps``: the eps > 0 closed forms (symbnmf.derive_eps) as a standalone module."""
    from symbnmf._errors import SymbnmfError
    from symbnmf.fast._codegen_eps import eps_module

    if args.quantities:
        raise SymbnmfError("--quantities is not supported with --eps (the module holds every quantity); drop it")
    eps = args.eps or None
    if eps is None and args.eps is None:
        raise SymbnmfError("--weight-var/--gamma need --eps (optionally with a default value, e.g. --eps 0.001)")
    command = "symbnmf codegen " + " ".join(
        [repr(args.activation), f"--target {args.target}", "--eps" + (f" {eps}" if eps else "")]
        + ([f"--weight-var {args.weight_var}"] if args.weight_var else [])
        + ([f"--gamma {args.gamma}"] if args.gamma else [])
        + [f"--param {p}" for p in args.param]
    )
    source = eps_module(
        act,
        eps=eps,
        weight_var=args.weight_var or 1,
        gamma=args.gamma or 1,
        target=args.target,
        command=command,
    )
    write_text(args.output, source, args.force)
    functions = ["fixed_point_mu", "evaluate", "fixed_point_map", "collapse_slope", "collapse_boundary"]
    info = {
        "output": os.path.abspath(args.output),
        "activation": act.label,
        "parameters": [p.name for p in act.free_parameters],
        "target": args.target,
        "eps": eps,
        "functions": functions,
        "bytes": len(source.encode()),
    }
    if args.json:
        print_json(info)
    else:
        print(f"wrote {args.output}: {', '.join(functions)} + one function of mu per quantity ({args.target})")
    return 0
