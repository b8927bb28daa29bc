"""alpha-ReLU and the BSB1 -> BSB2 transition (Yang et al. ICLR 2019, Fig 1c,d).

For phi(x) = x^alpha 1[x > 0] computes, with symbnmf's certified sphere quadrature (no closed
form exists for non-integer alpha), the BSB1 fixed point and the forward eigenvalues
lambda_L, lambda_M (conventions of docs/theory.md) on a grid of alpha, and locates
alpha_c(B) = the alpha where max(lambda_L, lambda_M) = 1 (the BSB1 point stops attracting) by
root finding, for B = 4 ... 32. Writes (default into ``derivations/``):

* ``alpha_relu_table.csv``: B, alpha_c, and the fixed point / eigenvalues at alpha_c;
* ``alpha_relu_grid.csv``: B, alpha, diag, offdiag, lambda_L, lambda_M on the alpha grid;
* ``alpha_relu.png``: (a) lambda_L, lambda_M against alpha for a few B, (b) alpha_c against B.

    python derivations/alpha_relu.py [--quick] [--dps 12] [--out-dir DIR] [--force] [--json]

Existing files are not overwritten without ``--force``. ``--quick``: B in {5, 8, 16}, coarse grid.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mpmath

from symbnmf._errors import OutputExistsError
from symbnmf.numeric._transition import alpha_relu_point, critical_alpha

FILES = ("alpha_relu_table.csv", "alpha_relu_grid.csv", "alpha_relu.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few batch sizes and a coarse grid")
    p.add_argument("--dps", type=int, default=12, help="digits of the quadrature (default 12)")
    p.add_argument("--tol", type=float, default=1e-7, help="tolerance on alpha_c (default 1e-7)")
    p.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    from tqdm import tqdm

    paths = [os.path.join(args.out_dir, f) for f in FILES]
    for path in paths:
        if os.path.exists(path) and not args.force:
            print(
                f"alpha_relu.py: error: {OutputExistsError(f'{path} exists; pass --force to overwrite it')}",
                file=sys.stderr,
            )
            return 2
    os.makedirs(args.out_dir, exist_ok=True)
    Bs = [5, 8, 16] if args.quick else list(range(4, 33))
    grid_Bs = [5, 8, 16] if args.quick else [5, 6, 8, 16, 32]
    alphas = [1 + 0.5 * k for k in range(5)] if args.quick else [1 + 0.25 * k for k in range(17)]
    t0 = time.perf_counter()
    grid = []
    with tqdm(total=len(grid_Bs) * len(alphas) + len(Bs), desc="alpha-relu", file=sys.stderr, disable=args.json) as bar:
        for B in grid_Bs:
            for a in alphas:
                r = alpha_relu_point(a, B, args.dps)
                grid.append({"B": B, "alpha": a, **{k: float(v) for k, v in r.items()}})
                bar.update(1)
        table = []
        for B in Bs:
            ac = critical_alpha(B, args.dps, args.tol)
            row = {"B": B, "alpha_c": None if ac is None else float(ac)}
            if ac is not None:
                row.update({k: float(v) for k, v in alpha_relu_point(ac, B, args.dps).items()})
            table.append(row)
            bar.set_postfix_str(f"B={B} alpha_c={'none' if ac is None else mpmath.nstr(ac, 8)}")
            bar.update(1)
    seconds = time.perf_counter() - t0

    cols = ["B", "alpha_c", "fixed_point.diag", "fixed_point.offdiag", "forward.L", "forward.M"]
    with open(paths[0], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in table:
            w.writerow(["" if row.get(c) is None else row.get(c, "") for c in cols])
    gcols = ["B", "alpha", "fixed_point.diag", "fixed_point.offdiag", "forward.L", "forward.M"]
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(gcols)
        for row in grid:
            w.writerow([row[c] for c in gcols])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, B in enumerate(grid_Bs):
        rows = [r for r in grid if r["B"] == B]
        c = f"C{i}"
        ax1.plot([r["alpha"] for r in rows], [r["forward.L"] for r in rows], "-o", ms=3, color=c, label=f"λ↑_L, B={B}")
        ax1.plot([r["alpha"] for r in rows], [r["forward.M"] for r in rows], "--", color=c, label=f"λ↑_M, B={B}")
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_xlabel("α  (φ(x) = x^α for x > 0)")
    ax1.set_ylabel("forward eigenvalue at the BSB1 point")
    ax1.set_title("(a) BSB1 stability: attracting iff both < 1")
    ax1.legend(fontsize=7, ncol=2)
    found = [r for r in table if r["alpha_c"] is not None]
    ax2.plot([r["B"] for r in found], [r["alpha_c"] for r in found], "-o", ms=3, label="α_c(B): max(λ↑_L, λ↑_M) = 1")
    ax2.axhline(1.0, color="k", lw=0.8, ls=":", label="ReLU (α = 1)")
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel("critical α")
    ax2.set_title("(b) BSB1 → BSB2 transition")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)

    doc = {"files": paths, "seconds": round(seconds, 1), "dps": args.dps, "table": table}
    if args.json:
        print(json.dumps(doc))
    else:
        for row in table:
            ac = row["alpha_c"]
            print(f"B={row['B']:>3}  alpha_c = {'none <= 12' if ac is None else f'{ac:.8f}'}")
        print(f"wrote {', '.join(paths)} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
