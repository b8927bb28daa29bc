"""Reproduce Figure 1 of Yang et al. (ICLR 2019) with symbnmf: theory against Monte Carlo.

Writes three PNG files (default into ``validation/``):

* ``figure1a_gradient_rate_vs_batch.png``: λ↓_G against B for ReLU and identity, the theory
  curve (``symbnmf.evaluate``) against Monte Carlo rates with ±2 standard-error bars;
* ``figure1b_gradient_vs_depth.png``: log10 of the squared gradient norm against depth for
  ReLU, the theory line (slope log10 λ↓_G, anchored at the readout) against the simulated
  log-mean and the mean ± sd band of log10 over networks;
* ``figure1c_forward_convergence.png``: distance of the batch covariance to the BSB1 fixed
  point on the L and M pieces against depth, from a structured (non-BSB1) input, against the
  theory slopes λ↑_L^l, λ↑_M^l.

    python validation/figure1.py [--quick] [--out-dir DIR] [--force] [--json]

Existing files are not overwritten without ``--force``.  ``--quick`` uses tiny networks (for
tests; the curves are then noisy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import symbnmf
from symbnmf._errors import OutputExistsError
from symbnmf.montecarlo.networks import simulate, theory_values
from symbnmf.montecarlo.stats import glm_pieces

FILES = {
    "a": "figure1a_gradient_rate_vs_batch.png",
    "b": "figure1b_gradient_vs_depth.png",
    "c": "figure1c_forward_convergence.png",
}

FULL = dict(
    a=dict(Bs=(4, 5, 6, 8, 12, 16, 24, 32), width=1024, depth=24, networks=200),
    b=dict(B=8, width=1024, depth=50, networks=200),
    c=dict(B=8, width=4096, depth=30, networks=200),
)
QUICK = dict(
    a=dict(Bs=(4, 8), width=64, depth=8, networks=20),
    b=dict(B=8, width=64, depth=10, networks=20),
    c=dict(B=8, width=128, depth=8, networks=10),
)


def _theory(act: str, B: int) -> dict | None:
    rec, _ = theory_values(symbnmf.get_activation(act), B)
    return rec


def panel_a(cfg: dict, seed: int, bar) -> dict:
    out = {}
    for act in ("relu", "identity"):
        pts = []
        for B in cfg["Bs"]:
            s = simulate(act, B, cfg["width"], cfg["depth"], cfg["networks"], seed=seed + B, theory=False).summary
            g = s["gradient_rate"]
            pts.append({"B": B, "measured": g["measured"], "stderr": g["stderr"]})
            bar.update(1)
        curve_B = list(range(4, max(cfg["Bs"]) + 1))
        curve = []
        for B in curve_B:
            rec = _theory(act, B)
            curve.append(None if rec is None else float(rec["backward"]["G"]))
        out[act] = {"points": pts, "theory_B": curve_B, "theory": curve}
    return out


def panel_b(cfg: dict, seed: int, bar) -> dict:
    res = simulate("relu", cfg["B"], cfg["width"], cfg["depth"], cfg["networks"], seed=seed, theory=False)
    bar.update(1)
    gx = res.grad_x.astype(np.float64)
    logs = np.log10(gx)
    rec = _theory("relu", cfg["B"])
    return {
        "layers": list(range(cfg["depth"] + 1)),
        "log10_mean": np.log10(gx.mean(0)).tolist(),
        "mean_log10": logs.mean(0).tolist(),
        "sd_log10": logs.std(0).tolist(),
        "theory_rate": None if rec is None else float(rec["backward"]["G"]),
        "measured_rate": res.summary["gradient_rate"]["measured"],
        "stderr": res.summary["gradient_rate"]["stderr"],
    }


def panel_c(cfg: dict, seed: int, bar) -> dict:
    res = simulate(
        "relu",
        cfg["B"],
        cfg["width"],
        cfg["depth"],
        cfg["networks"],
        seed=seed,
        init="structured",
        backward=False,
        theory=False,
        keep_cov=True,
    )
    bar.update(1)
    d = res.summary["forward"]["distance"]
    ens = glm_pieces(res.cov.astype(np.float64).mean(0))  # distance of the ensemble-mean covariance
    rec = _theory("relu", cfg["B"])
    return {
        "layers": list(range(cfg["depth"] + 1)),
        "L": d["L"],
        "M": d["M"],
        "L_ensemble": ens["L"].tolist(),
        "M_ensemble": ens["M"].tolist(),
        "noise_floor": math.sqrt(cfg["B"] ** 2 / cfg["width"]),
        "theory": None if rec is None else {"L": float(rec["forward"]["L"]), "M": float(rec["forward"]["M"])},
    }


def plot(data: dict, cfgs: dict, paths: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "a" in data:
        _plot_a(plt, data, cfgs, paths)
    if "b" in data:
        _plot_b(plt, data, cfgs, paths)
    if "c" in data:
        _plot_c(plt, data, cfgs, paths)


def _plot_a(plt, data, cfgs, paths):
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for act, color in (("relu", "C0"), ("identity", "C1")):
        d = data["a"][act]
        Bc = [b for b, v in zip(d["theory_B"], d["theory"]) if v is not None]
        vc = [v for v in d["theory"] if v is not None]
        if vc:
            ax.plot(Bc, vc, "-", color=color, label=f"{act}: theory λ↓_G")
        pts = d["points"]
        ax.errorbar(
            [p["B"] for p in pts],
            [p["measured"] for p in pts],
            yerr=[2 * p["stderr"] for p in pts],
            fmt="o",
            color=color,
            capsize=3,
            label=f"{act}: Monte Carlo (±2 se)",
        )
    ax.axhline(math.pi / (math.pi - 1), color="C0", ls=":", lw=1, label="ReLU B→∞: π/(π−1)")
    ca = cfgs["a"]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("per-layer growth of E‖∂loss/∂x‖²")
    ax.set_title(
        f"Fig. 1a: gradient explosion rate vs batch size\nN={ca['width']}, {ca['networks']} networks, "
        f"fit over {ca['depth']} layers"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["a"], dpi=120)
    plt.close(fig)


def _plot_b(plt, data, cfgs, paths):
    d, cb = data["b"], cfgs["b"]
    layers = np.array(d["layers"])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    m, sd = np.array(d["mean_log10"]), np.array(d["sd_log10"])
    ax.fill_between(layers, m - sd, m + sd, color="C0", alpha=0.25, label="simulated mean ± sd of log10 (networks)")
    ax.plot(layers, d["log10_mean"], "o", ms=3, color="C0", label="simulated log10 of the mean")
    if d["theory_rate"] is not None:
        L = layers[-1]
        ax.plot(
            layers,
            d["log10_mean"][-1] + (L - layers) * math.log10(d["theory_rate"]),
            "k-",
            label=f"theory: λ↓_G = {d['theory_rate']:.4f} per layer",
        )
    ax.set_xlabel("layer l (readout at l = L)")
    ax.set_ylabel("log10 ‖∂loss/∂x^l‖²")
    ax.set_title(
        f"Fig. 1b: gradient norm vs depth, ReLU, B={cb['B']}, N={cb['width']}\n"
        f"measured rate {d['measured_rate']:.4f} ± {d['stderr']:.4f}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["b"], dpi=120)
    plt.close(fig)


def _plot_c(plt, data, cfgs, paths):
    d, cc = data["c"], cfgs["c"]
    layers = np.array(d["layers"])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for piece, color in (("L", "C2"), ("M", "C3")):
        v = np.array([np.nan if t is None else t for t in d[piece]], dtype=float)
        e = np.array(d[f"{piece}_ensemble"], dtype=float)
        ax.semilogy(layers, e, "o", ms=5, color=color, label=f"‖Δ_{piece}‖ of the network-averaged covariance")
        ax.semilogy(layers, v, "x", ms=4, color=color, alpha=0.5, label=f"‖Δ_{piece}‖ averaged over networks")
        if d["theory"] is not None:
            lam = d["theory"][piece]
            ax.semilogy(
                layers, e[1] * lam ** (layers - 1.0), "-", color=color, label=f"theory ∝ (λ↑_{piece} = {lam:.4f})^l"
            )
    ax.axhline(d["noise_floor"], color="gray", ls=":", label="one network's fluctuation scale B/√N")
    ax.set_ylim(1e-4, None)
    ax.set_xlabel("layer l")
    ax.set_ylabel("distance of GΣG/μ to the BSB1 point G (Frobenius)")
    ax.set_title(
        f"Fig. 1c: forward convergence to BSB1, ReLU, B={cc['B']}, N={cc['width']}\n"
        f"structured input, mean of {cc['networks']} networks"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(paths["c"], dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reproduce Fig. 1 of Yang et al. 2019 (theory vs Monte Carlo)")
    p.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--quick", action="store_true", help="tiny networks (for tests)")
    p.add_argument("--force", action="store_true", help="overwrite existing PNG files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    p.add_argument("--panels", default="abc", help="which panels to (re)draw, e.g. 'c' (default abc)")
    a = p.parse_args(argv)
    panels = [k for k in "abc" if k in a.panels]
    paths = {k: os.path.join(a.out_dir, v) for k, v in FILES.items() if k in panels}
    try:
        for path in paths.values():
            if os.path.exists(path) and not a.force:
                raise OutputExistsError(f"{path} exists; pass --force to overwrite it or choose another --out-dir")
    except OutputExistsError as exc:
        if a.json:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        print(f"figure1: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(a.out_dir, exist_ok=True)
    cfgs = QUICK if a.quick else FULL
    from tqdm import tqdm

    t0 = time.perf_counter()
    funcs = {"a": panel_a, "b": panel_b, "c": panel_c}
    total = (2 * len(cfgs["a"]["Bs"]) if "a" in panels else 0) + ("b" in panels) + ("c" in panels)
    with tqdm(total=total, desc="figure 1 runs", disable=a.json, file=sys.stderr) as bar:
        data = {k: funcs[k](cfgs[k], a.seed, bar) for k in panels}
    plot(data, cfgs, paths)
    summary = {"files": paths, "configs": cfgs, "data": data, "time_s": time.perf_counter() - t0}
    if a.json:
        print(json.dumps(summary))
    else:
        for path in paths.values():
            print(f"wrote {path}")
        print(f"{summary['time_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
