"""``symbnmf dynamics``: the command line of :mod:`symbnmf.experiments.dynamics` (issue 13): per-layer
gradient and weight norms of BN networks over the first training steps, against the theory's
step-0 profile lambda_down_G^{(L-l)/2} and the scale-invariance prediction of later steps."""

from __future__ import annotations

import argparse
import json

from symbnmf.cli.util import add_memory_budget_argument, check_output, parse_size, print_json, write_text

NAME = "dynamics"
HELP = "gradient/weight norms per layer over the first training steps vs the scale-invariance prediction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "activation", metavar="ACT", help="activation spec, e.g. relu, tanh, leaky_relu(0.1), 'tanh(0.5*x)'"
    )
    parser.add_argument("--batch-size", "-B", type=int, required=True, help="batch size B (>= 2; theory needs >= 4)")
    parser.add_argument("--depth", "-L", type=int, required=True, help="number of BN layers")
    parser.add_argument("--width", "-N", type=int, default=128, help="units per layer (default 128)")
    parser.add_argument("--steps", "-K", type=int, required=True, help="optimiser steps (records steps 0..K)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--optimizer", choices=["sgd", "rmsprop"], default="sgd")
    parser.add_argument("--seeds", type=int, default=8, help="independent networks (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--gamma", type=float, default=1.0, help="BN gamma at initialisation")
    parser.add_argument("--beta", type=float, default=0.0, help="BN beta at initialisation")
    parser.add_argument("--eps", type=float, default=0.0, help="BN variance offset epsilon")
    parser.add_argument("--theory-method", default="auto", choices=["auto", "closed-form", "quadrature", "fast"])
    add_memory_budget_argument(parser)
    parser.add_argument("--output", metavar="PREFIX", help="write PREFIX.json (summary) and PREFIX.png (figure)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object (the summary) on stdout")


def run(args: argparse.Namespace) -> int:
    from symbnmf.fast._compile_cache import enable_compilation_cache

    enable_compilation_cache()  # a repeated command loads its programs instead of compiling them
    from symbnmf.experiments.dynamics import DynamicsConfig, measure_dynamics, write_figure

    memory_bytes = parse_size(args.memory_budget)
    cfg = DynamicsConfig(
        depth=args.depth,
        batch_size=args.batch_size,
        width=args.width,
        steps=args.steps,
        lr=args.lr,
        optimizer=args.optimizer,
        activation=args.activation,
        seeds=args.seeds,
        gamma=args.gamma,
        beta=args.beta,
        eps=args.eps,
        seed=args.seed,
    ).validate()
    paths = None
    if args.output:
        prefix = args.output
        for suffix in (".png", ".json"):
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        paths = {"json": prefix + ".json", "png": prefix + ".png"}
        for p in paths.values():
            check_output(p, args.force)  # refuse before spending CPU
    res = measure_dynamics(cfg, theory_method=args.theory_method, progress=not args.json, memory_bytes=memory_bytes)
    summary = res.summary()
    if paths is not None:
        write_text(paths["json"], json.dumps(summary, indent=1) + "\n", args.force)
        write_figure(summary, paths["png"], args.force)
        summary["outputs"] = paths
    if args.json:
        print_json(summary)
        return 0
    L = cfg.depth
    th = summary["theory"]
    print(
        f"{cfg.activation} + BN, B={cfg.batch_size}, L={L}, N={cfg.width}, {cfg.optimizer} lr={cfg.lr:g}, "
        f"{cfg.seeds} seeds on {summary['devices']} device(s), {summary['seconds']:.1f} s"
    )
    rate = summary["step0_rate"]
    lam = th["lambda_down_G"]
    if "rate" in rate:
        print(
            f"step 0: per-layer growth of ||grad W||^2 = {rate['rate']:.4f} ± {rate['rate_se']:.4f} "
            f"(layers {rate['fit_layers'][0]}..{rate['fit_layers'][1]}); theory lambda_down_G = "
            + (f"{lam:.4f}" if lam is not None else f"- ({th['reason']})")
        )
    print(
        f"{'step':>6} {'loss':>8} {'range':>10} {'± sd':>9} {'scale model':>12}  {'eff. step W1':>12} {'eff. step WL':>12}"
    )
    for p in summary["per_step"]:
        e = p["effective_step"]["mean"]
        print(
            f"{p['step']:>6} {p['loss']:>8.4f} {p['dynamic_range']['mean']:>10.3g} {p['dynamic_range']['sd']:>9.2g} "
            f"{p['predicted_scale_model']['dynamic_range']:>12.3g}  {e[0]:>12.3g} {e[L - 1]:>12.3g}"
        )
    if paths is not None:
        print(f"wrote {paths['json']} and {paths['png']}")
    return 0
