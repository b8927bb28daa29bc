"""``symbnmf trainability``: the command line of :mod:`symbnmf.experiments.trainability`
(paper Fig 2: test accuracy over depth x batch size with 16 xi(B) overlaid)."""

from __future__ import annotations

import argparse
import json

from symbnmf.cli.util import add_memory_budget_argument, parse_size, write_text
from symbnmf.experiments.trainability import DEFAULT_BATCHES, DEFAULT_DEPTHS, check_outputs, run_grid, write_figure

NAME = "trainability"
HELP = "train BN networks on digits over depth x batch size; heatmap with 16*xi(B) overlaid (paper Fig 2)"


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,5,10, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activation", default="relu", help="activation spec (default relu)")
    parser.add_argument(
        "--depths", type=_int_list, default=list(DEFAULT_DEPTHS), help="comma-separated depths (number of BN layers)"
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=list(DEFAULT_BATCHES), help="comma-separated batch sizes"
    )
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps per run (fixed budget)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--optimizer", choices=["sgd", "rmsprop"], default="sgd")
    parser.add_argument("--gamma", type=float, default=1.0, help="BN gamma at initialisation")
    parser.add_argument("--beta", type=float, default=0.0, help="BN beta at initialisation")
    parser.add_argument("--eps", type=float, default=0.0, help="BN variance offset epsilon")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="networks per cell (default 1); >1 trains them batched and sharded over all JAX devices",
    )
    parser.add_argument("--theory-method", default="auto", choices=["auto", "closed-form", "quadrature", "fast"])
    add_memory_budget_argument(parser)
    parser.add_argument("--output", default="trainability", help="output prefix: writes PREFIX.png and PREFIX.json")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (the report without per-run details)"
    )


def run(args: argparse.Namespace) -> int:
    from symbnmf.fast._compile_cache import enable_compilation_cache

    enable_compilation_cache()  # a repeated command loads its programs instead of compiling them
    prefix = args.output
    for suffix in (".png", ".json"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    png, js = prefix + ".png", prefix + ".json"

    memory_bytes = parse_size(args.memory_budget)
    check_outputs([png, js], args.force)
    report = run_grid(
        args.depths,
        args.batch_sizes,
        activation=args.activation,
        width=args.width,
        steps=args.steps,
        lr=args.lr,
        optimizer=args.optimizer,
        gamma=args.gamma,
        beta=args.beta,
        eps=args.eps,
        seed=args.seed,
        seeds=args.seeds,
        theory_method=args.theory_method,
        progress=not args.json,
        memory_bytes=memory_bytes,
    )
    write_figure(report, png)
    write_text(js, json.dumps(report, indent=1), args.force)
    summary = {k: v for k, v in report.items() if k != "runs"}
    summary["outputs"] = {"png": png, "json": js}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {png} and {js} ({report['seconds']:.0f} s); chance {report['chance']:.3f}, "
            f"trainable threshold {report['threshold']:.3f}"
        )
        if report["theory"]["reason"]:
            print(f"theory: {report['theory']['reason']}")
        print(f"{'B':>5} {'16xi':>7} {'last ok':>8} {'first bad':>9} {'est':>6} {'ratio':>6}")
        for c in report["comparison"]:
            f = lambda v, fmt: "-" if v is None else format(v, fmt)
            print(
                f"{c['B']:>5} {f(c['predicted_max_depth'], '7.1f')} {f(c['measured_last_trainable'], '>8')} "
                f"{f(c['measured_first_untrainable'], '>9')} {f(c['measured_estimate'], '6.1f')} "
                f"{f(c['ratio_measured_over_predicted'], '6.2f')}"
            )
    return 0
