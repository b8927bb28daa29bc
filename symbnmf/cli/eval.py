"""``symbnmf eval ACT --batch-size B [B ...]``: numbers for every quantity."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from symbnmf._activations import get_activation
from symbnmf._conventions import QUANTITIES
from symbnmf._evaluate import evaluate, evaluation_document
from symbnmf.cli.util import (
    LEGEND,
    add_activation_arguments,
    add_json_argument,
    parse_params,
    print_json,
    table,
    wrap,
)

NAME = "eval"
HELP = "evaluate the fixed point, eigenvalues and depth scale at integer batch sizes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_activation_arguments(p)
    p.add_argument("--batch-size", "-B", nargs="+", required=True, metavar="B", help="batch sizes (integers >= 4)")
    p.add_argument("--dps", type=int, default=None, metavar="N", help="also give N-digit values (mpmath) under 'mp'")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "closed-form", "quadrature", "fast"],
        help="auto: closed form when phi has one, else certified mpmath quadrature",
    )
    p.add_argument("--fast", action="store_true", help="shorthand for --method fast (JAX Gauss quadrature)")
    g = p.add_argument_group(
        "BN with eps > 0",
        "Any of these selects the eps theory: closed form for identity/relu/leaky_relu at "
        "eps > 0, beta = 0, gamma > 0, else mpmath; JAX with --fast. Output adds the phase (bsb1 | collapsed) "
        "and mu*; diag/offdiag are the pre-activation covariance (they scale with sigma_w^2), forward.G != 0, "
        "depth_scale is null when backward.G <= 1",
    )
    g.add_argument("--eps", default=None, metavar="E", help="BN epsilon >= 0 (default: the eps = 0 theory)")
    g.add_argument("--weight-var", default=None, metavar="S", help="sigma_w^2 > 0 (default 1)")
    g.add_argument("--gamma", default=None, metavar="g", help="BN scale gamma != 0 (default 1)")
    g.add_argument("--beta", default=None, metavar="b", help="BN shift beta (default 0)")
    add_json_argument(p)


def _batch_sizes(items: list[str]) -> list:
    out: list[Any] = []
    for s in items:
        try:
            f = float(s)
        except ValueError:
            out.append(s)
            continue
        out.append(int(f) if f.is_integer() else f)
    return out


def run(args: argparse.Namespace) -> int:
    act = get_activation(args.activation, **parse_params(args.param))
    method = "fast" if args.fast else args.method
    bn = {k: getattr(args, k, None) for k in ("eps", "weight_var", "gamma", "beta")}
    progress: Any = contextlib.nullcontext()
    if any(v is not None for v in bn.values()) and method in ("auto", "quadrature"):
        from symbnmf.numeric._epsilon import tau_progress

        progress = tau_progress()  # the mpmath eps tables can take minutes
    with progress:
        records = evaluate(act, _batch_sizes(args.batch_size), method=method, dps=args.dps, **bn)
    if args.json:
        print_json(evaluation_document(act, records))
        return 0
    lines = wrap(f"# {act.label}: phi(x) = {act.bound_expr}   (method: {records[0]['method']})")
    rows = []
    for r in records:
        row = [str(r["B"])]
        for name in QUANTITIES:
            head, _, tail = name.partition(".")
            v = r[head][tail] if tail else r[head]
            row.append("null" if v is None else f"{v:.12g}")
        rows.append(row)
    lines += table(["B", *QUANTITIES], rows)
    for r in records:
        if "phase" in r:
            lines += wrap(f"# B = {r['B']}: phase {r['phase']}, mu* = {r['mu']:.12g}; {r['note']}")
    for r in records:
        if "mp" in r:
            lines.append(f"# B = {r['B']}, {args.dps} digits:")
            for name in QUANTITIES:
                head, _, tail = name.partition(".")
                v = r["mp"][head][tail] if tail else r["mp"][head]
                lines += wrap(f"{name} = {v}", indent="    ")
    lines += ["", *LEGEND]
    print("\n".join(lines))
    return 0
