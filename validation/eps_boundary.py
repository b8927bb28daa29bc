"""Next to the collapse boundary: how wide must a network be for the eps > 0 theory to hold?

The eps sweep of ``validation/mitigation.py`` (ReLU, B = 32, N = 1000) found the simulated gradient
rate 37 standard errors below the theory at eps = 0.3, just under the collapse boundary
eps_c = 0.338. This script tells a slow transient from a finite-width effect: it simulates that
point (``symbnmf.simulate``, which carries the eps theory column) with 5 and with 80 burn-in layers
(forward.G = 0.89 per layer there, so 80 layers leave 1e-4 of any initial transient), and with 80
burn-in layers at widths N = 500 ... 32000. Per point: the gradient rate, the fixed point
(diagonal and off-diagonal of the layer covariance) and their z-scores against the theory.

    python validation/eps_boundary.py [--force] [--quick]

Writes validation/eps_boundary.json and validation/eps_boundary.png (about 5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from symbnmf.experiments import trainability as cmd  # noqa: E402

B, EPS, DEPTH, SEED = 32, 0.3, 40, 4
#: (width, networks, burn-in layers)
RUNS = [(1000, 100, 5), (500, 100, 80), (1000, 100, 80), (2000, 50, 80), (8000, 50, 80), (32000, 24, 80)]
QUICK = [(64, 8, 5), (64, 8, 20), (256, 8, 20)]


def simulate_point(width: int, networks: int, burn_in: int) -> dict[str, Any]:
    import symbnmf

    t0 = time.perf_counter()
    res = symbnmf.simulate("relu", B, width, DEPTH, networks, eps=EPS, burn_in=burn_in, seed=SEED)
    s = res.summary
    row: dict[str, Any] = {"width": width, "networks": networks, "burn_in": burn_in}
    for name, rec in (
        ("rate", s["gradient_rate"]),
        ("diag", s["fixed_point"]["diag"]),
        ("offdiag", s["fixed_point"]["offdiag"]),
    ):
        row[name] = {k: rec.get(k) for k in ("measured", "stderr", "theory", "z")}
    row["seconds"] = time.perf_counter() - t0
    print(
        f"N={width:6d} K={networks:3d} burn-in {burn_in:2d}: rate {row['rate']['measured']:.4f} ± {row['rate']['stderr']:.4f}"
        f" (theory {row['rate']['theory']:.4f}, z {row['rate']['z']:+.1f}), diag {row['diag']['measured']:.4f}"
        f" (theory {row['diag']['theory']:.4f}), offdiag {row['offdiag']['measured']:.4f} (theory {row['offdiag']['theory']:.4f})",
        file=sys.stderr,
    )
    return row


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trend = [r for r in rows if r["burn_in"] == max(x["burn_in"] for x in rows)]
    short = [r for r in rows if r not in trend]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "rate", r"gradient rate ($\lambda_{\downarrow G}$)"),
        (axes[1], "mu", r"$\mu$ = diag $-$ offdiag"),
    ):

        def val(r: dict[str, Any], key: str = key) -> tuple[float, float]:
            if key == "rate":
                return r["rate"]["measured"], r["rate"]["stderr"]
            m = r["diag"]["measured"] - r["offdiag"]["measured"]
            return m, float((r["diag"]["stderr"] ** 2 + r["offdiag"]["stderr"] ** 2) ** 0.5)

        for pts, style, lab in ((trend, "o-", f"burn-in {trend[0]['burn_in']}"), (short, "s", "burn-in 5")):
            if pts:
                v = [val(r) for r in pts]
                ax.errorbar(
                    [r["width"] for r in pts],
                    [a for a, _ in v],
                    yerr=[2 * b for _, b in v],
                    fmt=style,
                    capsize=3,
                    label=lab,
                )
        th = trend[0]["rate"]["theory"] if key == "rate" else trend[0]["diag"]["theory"] - trend[0]["offdiag"]["theory"]
        ax.axhline(th, color="k", ls="--", label="theory (N = ∞)")
        ax.set_xscale("log")
        ax.set_xlabel("width N")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(rf"ReLU, B = {B}, $\epsilon$ = {EPS} (collapse boundary $\epsilon_c$ = 0.338): error bars 2 s.e.")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    ap.add_argument("--outdir", default=HERE)
    a = ap.parse_args(argv)
    base = "eps_boundary_quick" if a.quick else "eps_boundary"
    paths = [os.path.join(a.outdir, base + ext) for ext in (".json", ".png")]
    cmd.check_outputs(paths, a.force)
    rows = [simulate_point(*run) for run in (QUICK if a.quick else RUNS)]
    plot(rows, paths[1])
    out = {
        "experiment": "eps theory next to the collapse boundary: burn-in and width",
        "activation": "relu",
        "batch_size": B,
        "eps": EPS,
        "depth": DEPTH,
        "seed": SEED,
        "rows": rows,
    }
    with open(paths[0], "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
