"""Learning dynamics after the first steps (issue 13): measured on digits, predicted by scale invariance.

Runs :func:`symbnmf.experiments.dynamics.measure_dynamics` (ReLU + BN, SGD lr 0.05 unless said
otherwise) on

* depths L in {10, 25, 50} x batch sizes B in {8, 32}, width 128, 100 steps, 8 seeds;
* B = 32, L = 25 for 1000 steps (the long-time law of the scale model);
* B = 8, L = 25 with RMSProp (lr 1e-3) and at width 512 (where the prediction should fail / converge);

    python validation/dynamics.py [--force] [--quick]

Writes validation/dynamics.json (every run's summary) and three figures:
dynamics_profiles.png (||grad W^l|| against l at steps 0, 1, 10, 100), dynamics_range.png (dynamic
range against step), dynamics_predicted_vs_measured.png (first step, predicted against measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from symbnmf.experiments import dynamics as dyn  # noqa: E402
from symbnmf.experiments.train import load_digits  # noqa: E402
from symbnmf.experiments.trainability import check_outputs  # noqa: E402


def runs(quick: bool) -> list[tuple[str, dyn.DynamicsConfig]]:
    s, k, n = (4, 30, 64) if quick else (8, 100, 128)
    out = []
    for B in (8, 32):
        for L in (10, 25, 50):
            out.append((f"B{B}_L{L}", dyn.DynamicsConfig(depth=L, batch_size=B, width=n, steps=k, seeds=s)))
    out.append(("B32_L25_long", dyn.DynamicsConfig(depth=25, batch_size=32, width=n, steps=10 * k, seeds=s)))
    out.append(
        (
            "B8_L25_rmsprop",
            dyn.DynamicsConfig(depth=25, batch_size=8, width=n, steps=k, seeds=s, optimizer="rmsprop", lr=1e-3),
        )
    )
    out.append(("B8_L25_N512", dyn.DynamicsConfig(depth=25, batch_size=8, width=4 * n, steps=k, seeds=max(2, s // 2))))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small runs (smoke test of the script)")
    a = ap.parse_args()
    names = ["dynamics.json", "dynamics_profiles.png", "dynamics_range.png", "dynamics_predicted_vs_measured.png"]
    paths = {n: os.path.join(HERE, n) for n in names}
    check_outputs(list(paths.values()), a.force)
    ds = load_digits()
    summaries = {}
    for name, cfg in runs(a.quick):
        t0 = time.perf_counter()
        res = dyn.measure_dynamics(cfg, ds)
        s = res.summary()
        s["first_step"]["eff_step0_measured"] = dyn._round(res.effective_step()[:, 0, : cfg.depth].mean(0))
        summaries[name] = s
        by = {p["step"]: p for p in s["per_step"]}
        rng = "  ".join(f"t={t}: {by[t]['dynamic_range']['mean']:.3g}" for t in (0, 1, 10, 100, 1000) if t in by)
        print(f"{name:>16} ({time.perf_counter() - t0:5.1f} s) range {rng}", flush=True)
    with open(paths["dynamics.json"], "w") as fh:
        json.dump(summaries, fh, indent=1)
    figures(summaries, paths)
    return 0


def figures(summaries: dict, paths: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 1. profiles
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, name in zip(axes, ("B8_L50", "B32_L50")):
        s = summaries[name]
        dyn.plot_profiles(ax, s)
        st = s["settings"]
        ax.set_title(f"B={st['batch_size']}, L={st['depth']}, N={st['width']}, SGD lr={st['lr']:g}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("ReLU + BN on digits: weight-gradient norm per layer during training (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(paths["dynamics_profiles.png"], dpi=110)
    plt.close(fig)

    # 2. dynamic range vs step
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, B in zip(axes, (8, 32)):
        for i, L in enumerate((10, 25, 50)):
            dyn.plot_dynamic_range(ax, summaries[f"B{B}_L{L}"], label=f"L={L}", color=f"C{i}")
        if B == 32:
            dyn.plot_dynamic_range(ax, summaries["B32_L25_long"], label="L=25, 1000 steps", color="C3")
        if B == 8:
            dyn.plot_dynamic_range(ax, summaries["B8_L25_rmsprop"], label="L=25 RMSProp", color="C4")
        ax.set_title(f"B={B}: dynamic range of ||grad W^l|| over layers", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths["dynamics_range.png"], dpi=110)
    plt.close(fig)

    # 3. predicted vs measured, first step
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for s in summaries.values():
        if s["settings"]["optimizer"] != "sgd":
            continue
        fs = s["first_step"]
        axes[0].loglog(fs["w_norm_predicted"], fs["w_norm_measured_rms"], ".", ms=4)
        e = np.array(fs["effective_step0_predicted"])
        sc = axes[1].scatter(
            fs["grad_w_norm_predicted"],
            fs["grad_w_norm_measured_rms"],
            c=np.log10(e),
            s=8,
            cmap="viridis",
            vmin=-2,
            vmax=3,
        )
    for ax in axes:
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
    axes[0].set_xlabel(r"predicted $\sqrt{\|W_0\|^2 + \eta^2\|\nabla_0\|^2}$")
    axes[0].set_ylabel(r"measured $\|W_1\|$ (rms over seeds)")
    axes[0].set_title("weight norm after step 1 (exact identity)", fontsize=10)
    axes[1].set_xlabel(r"predicted $\|\nabla_1\| = \|\nabla_0\|\,\|W_0\|/\|W_1\|$")
    axes[1].set_ylabel(r"measured $\|\nabla_1\|$ (rms over seeds)")
    axes[1].set_title("gradient after step 1 (scale model)", fontsize=10)
    fig.colorbar(sc, ax=axes[1], label=r"$\log_{10}$ effective step 0, $\eta\|\nabla_0\|/\|W_0\|$")
    fig.suptitle("Every BN layer of every SGD run (ReLU, digits): first step predicted against measured", fontsize=10)
    fig.tight_layout()
    fig.savefig(paths["dynamics_predicted_vs_measured.png"], dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
