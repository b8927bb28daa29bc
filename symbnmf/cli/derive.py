"""``symbnmf derive ACT``: closed forms in B (SymPy string and LaTeX)."""

from __future__ import annotations

import argparse

import sympy as sp

from symbnmf._activations import get_activation
from symbnmf.cli.util import add_activation_arguments, add_json_argument, parse_params, print_json, write_text
from symbnmf.symbolic._derivation import QUANTITY_SYMBOLS
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
    print(f"# {d.activation}: phi(x) = {d.phi}")
    print(f"# theta_B = acos(1/(B-1)); conventions: {d.conventions}")
    for name, expr in d.quantities.items():
        print(f"{name} = {sp.sstr(expr)}")
        print(f"    LaTeX: {QUANTITY_SYMBOLS[name]} = {sp.latex(expr)}")
        if name in d.limits:
            q0, c1 = d.limits[name]
            print(f"    B -> oo: {sp.sstr(q0)} + ({sp.sstr(c1)})/B + O(1/B^2)")
    if written:
        print(
            f"# standalone LaTeX document with {sum(len(s) for s in d.steps.values())} derivation steps written to {written}"
        )
    return 0
