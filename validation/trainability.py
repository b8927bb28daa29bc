"""Paper Fig 2 on a real data set: trainability of ReLU + BN networks over depth x batch size.

Trains one fully connected ReLU + BN network (width 128) per (B, depth) cell on scikit-learn's
digits for a fixed budget of SGD steps, and overlays the predicted maximum trainable depth
16 xi(B) = 16/ln lambda_down_G(B) from the theory (symbnmf.evaluate, or the fast JAX quadrature).
It also measures, in the same networks at initialisation, the per-layer growth factor of the mean
squared gradient and puts it beside lambda_down_G(B).

    python validation/trainability.py [--force] [--rmsprop] [--quick]

Writes validation/trainability.{png,json} (and trainability_rmsprop.* with --rmsprop).
Default grid: about 5 min on 2 CPU cores (measured: see the JSON's "seconds").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from symbnmf.experiments import trainability as cmd  # noqa: E402
from symbnmf.experiments.train import gradient_growth  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs")
    ap.add_argument("--rmsprop", action="store_true", help="train with RMSProp (lr 1e-3) instead of SGD")
    ap.add_argument("--quick", action="store_true", help="tiny grid (smoke test)")
    ap.add_argument("--no-growth", action="store_true", help="skip the gradient-growth measurement")
    ap.add_argument("--outdir", default=HERE)
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the existing JSON")
    ap.add_argument(
        "--refresh-theory",
        action="store_true",
        help="recompute the theory and the comparison of the existing JSON (no retraining), redraw",
    )
    ap.add_argument(
        "--lr-check",
        action="store_true",
        help="instead: measured max depth at B=8, 32 for SGD lr 0.01, 0.05, 0.2 (trainability_lr.json)",
    )
    a = ap.parse_args(argv)
    if a.lr_check:
        return lr_check(a)
    name = "trainability_rmsprop" if a.rmsprop else "trainability"
    prefix = os.path.join(a.outdir, name + ("_quick" if a.quick else ""))
    if a.replot or a.refresh_theory:
        cmd.check_outputs([prefix + ".png"] + ([prefix + ".json"] if a.refresh_theory else []), a.force)
        with open(prefix + ".json") as fh:
            report = json.load(fh)
        if a.refresh_theory:
            report = cmd.attach_theory(report)
            for c, g in zip(report["comparison"], report.get("gradient_growth_at_init", {}).get("rows", [])):
                g["theory_backward_G"] = c["backward_G"]
            with open(prefix + ".json", "w") as fh:
                json.dump(report, fh, indent=1)
        cmd.write_figure(report, prefix + ".png")
        return 0
    cmd.check_outputs([prefix + ".png", prefix + ".json"], a.force)
    depths = (2, 10, 30) if a.quick else cmd.DEFAULT_DEPTHS
    batches = (4, 16) if a.quick else cmd.DEFAULT_BATCHES
    kw = dict(optimizer="rmsprop", lr=1e-3) if a.rmsprop else dict(optimizer="sgd", lr=0.05)
    report = cmd.run_grid(depths, batches, width=128, steps=100 if a.quick else 500, **kw)
    if not a.no_growth:
        t0 = time.perf_counter()
        growth = []
        for c in report["comparison"]:
            g = gradient_growth(
                c["B"],
                width=256 if not a.quick else 64,
                depth=32 if not a.quick else 12,
                n_networks=64 if not a.quick else 8,
            )
            growth.append(
                {
                    "B": c["B"],
                    "measured_rate": g.rate,
                    "bootstrap_se": g.rate_se,
                    "theory_backward_G": c["backward_G"],
                    "width": g.width,
                    "depth": g.depth,
                    "networks": g.n_networks,
                    "fit_layers": list(g.fit_layers),
                }
            )
        report["gradient_growth_at_init"] = {
            "rows": growth,
            "seconds": round(time.perf_counter() - t0, 1),
            "note": "ln of the mean over networks of ||dloss/dx^l||^2, slope over fit_layers",
        }
    cmd.write_figure(report, prefix + ".png")
    with open(prefix + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {prefix}.png, {prefix}.json in {report['seconds']:.0f} s of training")
    for c in report["comparison"]:
        print(c)
    for g in report.get("gradient_growth_at_init", {}).get("rows", []):
        print(g)
    return 0


def lr_check(a: argparse.Namespace) -> int:
    """Sensitivity of the measured maximum depth to the SGD learning rate (same budget and width)."""
    path = os.path.join(a.outdir, "trainability_lr.json")
    cmd.check_outputs([path], a.force)
    rows = []
    for lr in (0.01, 0.05, 0.2):
        rep = cmd.run_grid((10, 20, 30, 40, 50, 70), (8, 32), width=128, steps=500, lr=lr, optimizer="sgd")
        for c in rep["comparison"]:
            rows.append(
                {
                    "lr": lr,
                    **{
                        k: c[k]
                        for k in (
                            "B",
                            "predicted_max_depth",
                            "measured_last_trainable",
                            "measured_first_untrainable",
                            "measured_estimate",
                        )
                    },
                    "accuracy": rep["accuracy"][rep["batch_sizes"].index(c["B"])],
                    "depths": rep["depths"],
                    "threshold": rep["threshold"],
                    "seconds": rep["seconds"],
                }
            )
    with open(path, "w") as fh:
        json.dump({"experiment": "learning-rate sensitivity of the trainability boundary", "rows": rows}, fh, indent=1)
    for r in rows:
        print(
            {
                k: r[k]
                for k in ("lr", "B", "predicted_max_depth", "measured_last_trainable", "measured_first_untrainable")
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
