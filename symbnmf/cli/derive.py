"""``symbnmf derive ACT``: closed forms in B (SymPy string and LaTeX)."""

from __future__ import annotations

import argparse

import sympy as sp

from symbnmf._activations import get_activation
from symbnmf.cli.util import (
    LEGEND,
    add_activation_arguments,
    add_json_argument,
    parse_params,
    print_json,
    wrap,
    wrap_formula,
    write_text,
)
from symbnmf.symbolic._derivation import QUANTITY_SYMBOLS, abbreviate, compact_latex
from symbnmf.symbolic._derive import derive

NAME = "derive"
HELP = "derive the BSB1 fixed point and the forward/backward G/L/M eigenvalues in closed form in B"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_activation_arguments(p)
    p.add_argument("--latex", metavar="FILE", help="write a standalone LaTeX document with every step")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--no-cache", action="store_true", help="derive from scratch (ignore the on-disk cache)")
    add_json_argument(p)


def run(args: argparse.Namespace) -> int:
    act = get_activation(args.activation, **parse_params(args.param))
    d = derive(act, use_cache=not args.no_cache)
    written = None
    if args.latex:
        written = str(write_text(args.latex, d.latex(), args.force))
    if args.json:
        doc = d.to_json()
        if written:
            doc["latex_file"] = written
        print_json(doc)
        return 0
    lines = wrap(f"# {d.activation}: phi(x) = {d.phi}")
    lines += wrap(f"# conventions: {d.conventions}")
    lines.append("# closed forms with theta_B = acos(1/(B - 1)) and S_B = sqrt(B)*sqrt(B - 2)")
    for name, expr in d.quantities.items():
        lines += wrap_formula(f"{name} = {sp.sstr(abbreviate(expr))}")
        lines += wrap_formula(f"LaTeX: {QUANTITY_SYMBOLS[name]} = {compact_latex(expr)}", indent="    ")
        if name in d.limits:
            q0, c1 = d.limits[name]
            lines += wrap_formula(f"B -> oo: {sp.sstr(q0)} + ({sp.sstr(c1)})/B + O(1/B^2)", indent="    ")
    if written:
        n_steps = sum(len(s) for s in d.steps.values())
        lines += wrap(f"# standalone LaTeX document with {n_steps} derivation steps written to {written}")
    lines += ["", *LEGEND]
    print("\n".join(lines))
    return 0
