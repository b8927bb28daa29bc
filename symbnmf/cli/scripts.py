"""Shared driver of the ``derivations/*.py`` scripts: derive, then write ``NAME.tex`` and
``NAME.json`` next to the script (never overwriting without ``--force``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from symbnmf._errors import SymbnmfError
from symbnmf.cli.util import check_output, write_text
from symbnmf.symbolic._derive import derive


def write_derivation(activation: str, outdir: str | Path, stem: str, *, force: bool = False, eps: bool = False) -> dict:
    """Derive ``activation`` and write ``outdir/stem.tex`` (standalone LaTeX) and ``stem.json``;
    ``eps=True``: the BN-with-eps > 0 closed forms (:func:`symbnmf.symbolic._epsforms.derive_eps`)."""
    outdir = Path(outdir)
    tex, js = outdir / f"{stem}.tex", outdir / f"{stem}.json"
    for p in (tex, js):  # check both before writing either: nothing is half-overwritten
        check_output(p, force)
    d: Any
    if eps:
        from symbnmf.symbolic._epsforms import derive_eps

        d = derive_eps(activation)
    else:
        d = derive(activation)
    write_text(tex, d.latex(), force)
    write_text(js, d.dumps() + "\n", force)
    return {
        "activation": d.activation,
        "tex": str(tex),
        "json": str(js),
        "quantities": {k: str(v) for k, v in d.quantities.items()},
    }


def derivation_script(activation: str, script: str, argv: Sequence[str] | None = None, *, eps: bool = False) -> int:
    here = Path(script).resolve().parent
    stem = Path(script).stem
    what = "in closed form in B, eps, sigma_w^2 (BN with eps > 0)" if eps else "in closed form in B"
    p = argparse.ArgumentParser(
        description=f"Derive every mean-field quantity of {activation} {what} "
        f"and write {stem}.tex / {stem}.json next to this script."
    )
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--outdir", default=str(here), help="where to write (default: next to the script)")
    p.add_argument("--json", action="store_true", help="print one JSON object describing what was written")
    args = p.parse_args(argv)
    try:
        info = write_derivation(activation, args.outdir, stem, force=args.force, eps=eps)
    except SymbnmfError as exc:
        print(f"{stem}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {info['tex']} and {info['json']}")
        for k, v in info["quantities"].items():
            print(f"  {k} = {v}")
    return 0
