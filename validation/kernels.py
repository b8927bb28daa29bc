"""Showcase of the exact BN kernels (issue 11, item 5) on scikit-learn's digits.

(a) Depth-wise convergence of the BN-ReLU kernel of real batches to the BSB1 fixed point. Batches of
    B ∈ {8, 32} training images (standardised as in the trainability experiment), Σ¹ = XXᵀ/d (the
    input Dense layer, σ_w = 1, σ_b = 0), then Σ^{l+1} = V(Σ^l) with ``batchnorm_nngp`` (Dense with
    σ_w = 1, σ_b = 0 after each BN-ReLU; at ε = 0 σ_w, σ_b drop out). The normalised distance
    Δ = GΣG/μ − G is split into its L and M components (``symbnmf.montecarlo.stats.glm_pieces``);
    their per-layer decay rates are fitted and compared with λ↑_L, λ↑_M from ``symbnmf.evaluate``.
(b) NNGP / NTK prediction with the infinite-width network Dense → (BN-ReLU → Dense) × depth (NTK
    parametrisation, σ_w = 1, σ_b = 0; Θ recursion as in ``benchmarks/bench_kernels.py``). BN needs
    batches; without a cross-batch kernel (not in ``symbnmf.kernels`` when this was written) we use
    a *batch-expert* scheme: the training subsample is split into fixed batches of B − 1 images; a
    test image t is appended to each training batch P_j, giving the B-image batch [P_j, t] whose
    kernel (B × B) is computed exactly; expert j predicts k_tjᵀ (K_jj + r·I)⁻¹ Y_j (one-hot labels
    minus 1/10, r = 1e-6 · mean diag K_jj), and the experts' predictions are averaged. Depth 0 (the
    input kernel XXᵀ/d in the same scheme) is the reference for the scheme itself. The finite
    networks of ``validation/trainability.json`` (trained on the full 1348-image split) are shown
    beside it; they are not like-for-like (training set size, finite width, SGD).

Sizes are small to keep this to a few CPU minutes; see the printout and ``validation/KERNELS.md``.

    python validation/kernels.py [--quick] [--force]     # writes kernels.json and kernels_*.png here
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

OUT_JSON = os.path.join(HERE, "kernels.json")
PNG_A = os.path.join(HERE, "kernels_convergence.png")
PNG_B = os.path.join(HERE, "kernels_accuracy.png")


def theory(B: int) -> dict[str, float]:
    import symbnmf

    r = symbnmf.evaluate("relu", [B])[0]
    return {"L": float(r["forward"]["L"]), "M": float(r["forward"]["M"])}


def fit_rate(y: np.ndarray, lo: int, hi: int) -> float:
    """exp of the least-squares slope of log y over layers lo..hi (inclusive, 1-based layer index)."""
    layers = np.arange(lo, hi + 1)
    return float(np.exp(np.polyfit(layers, np.log(y[lo - 1 : hi]), 1)[0]))


def fit_window(y: np.ndarray, top: float = 1e-2, floor: float = 1e-10, skip: int = 3) -> tuple[int, int]:
    """Layers (1-based) where the geometric-mean distance lies in [floor, top], from layer ``skip`` on."""
    idx = [i + 1 for i, v in enumerate(y) if floor <= v <= top and i + 1 >= skip]
    if len(idx) < 3:
        idx = list(range(max(skip, 1), len(y) + 1))
    return idx[0], idx[-1]


def part_a(ds: Any, Bs: list[int], n_batches: int, depth: int, seed: int) -> dict[str, Any]:
    from symbnmf.kernels import batchnorm_nngp
    from symbnmf.montecarlo.stats import glm_pieces

    rng = np.random.default_rng(seed)
    x = np.asarray(ds.x_train, dtype=np.float64)
    res: dict[str, Any] = {}
    for B in Bs:
        t0 = time.perf_counter()
        idx = np.stack([rng.choice(len(x), B, replace=False) for _ in range(n_batches)])
        X = x[idx]  # (n, B, d)
        cov = X @ np.swapaxes(X, -1, -2) / X.shape[-1]
        dist = {"L": [], "M": []}
        for _ in range(depth):
            cov = np.asarray(batchnorm_nngp(cov, "relu"))
            p = glm_pieces(cov)
            dist["L"].append(p["L"])
            dist["M"].append(p["M"])
        th = theory(B)
        entry: dict[str, Any] = {"B": B, "n_batches": n_batches, "depth": depth, "theory": th}
        for k in ("L", "M"):
            d = np.array(dist[k]).T  # (n, depth)
            gm = np.exp(np.mean(np.log(d), axis=0))
            lo, hi = fit_window(gm)
            per = [fit_rate(row, lo, hi) for row in d]
            entry[k] = {
                "geomean": gm.tolist(),
                "min": d.min(axis=0).tolist(),
                "max": d.max(axis=0).tolist(),
                "fit_layers": [lo, hi],
                "rate_fit": fit_rate(gm, lo, hi),
                "rate_per_batch_median": float(np.median(per)),
                "rate_per_batch_range": [float(min(per)), float(max(per))],
            }
        entry["seconds"] = time.perf_counter() - t0
        res[str(B)] = entry
        print(
            f"(a) B={B}: fitted L rate {entry['L']['rate_fit']:.4f} (layers {entry['L']['fit_layers']}) vs λ↑_L {th['L']:.4f};"
            f" M rate {entry['M']['rate_fit']:.4f} (layers {entry['M']['fit_layers']}) vs λ↑_M {th['M']:.4f}"
            f"  [{entry['seconds']:.0f} s]",
            flush=True,
        )
    return res


def deep_kernels(cov: Any, depths: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(NNGP, NTK) of the readout after each depth in ``depths`` (depth 0 = the input kernel)."""
    from symbnmf.kernels import batchnorm_ntk

    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    K = jnp.asarray(cov)
    T = K
    if 0 in depths:
        out[0] = (np.asarray(K), np.asarray(T))
    for l in range(1, max(depths) + 1):
        V, JT = batchnorm_ntk(K, T, "relu")
        K = V
        T = V + JT
        if l in depths:
            out[l] = (np.asarray(K), np.asarray(T))
    return out


def expert_predict(Kb: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Kb: (n_test, m, B, B) kernels of the batches [P_j, t]; Y: (m, B-1, C). Mean expert prediction (n_test, C)."""
    Ktr = Kb[..., :-1, :-1]
    kt = Kb[..., -1, :-1]
    r = 1e-6 * np.mean(np.diagonal(Ktr, axis1=-2, axis2=-1), axis=-1)[..., None, None]
    A = Ktr + r * np.eye(Ktr.shape[-1])
    alpha = np.linalg.solve(A, np.broadcast_to(Y, (*Ktr.shape[:2], *Y.shape[1:])))
    pred = np.einsum("tmi,tmic->tmc", kt, alpha)
    return pred.mean(axis=1)


def part_b(ds: Any, Bs: list[int], depths: list[int], n_train: int, n_test: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x_tr = np.asarray(ds.x_train, dtype=np.float64)
    x_te = np.asarray(ds.x_test, dtype=np.float64)[:n_test]
    y_te = np.asarray(ds.y_test)[:n_test]
    C = ds.n_classes
    res: dict[str, Any] = {}
    for B in Bs:
        t0 = time.perf_counter()
        m = n_train // (B - 1)
        tr = rng.permutation(len(x_tr))[: m * (B - 1)].reshape(m, B - 1)
        Y = np.eye(C)[np.asarray(ds.y_train)[tr]] - 1.0 / C  # (m, B-1, C)
        Xb = np.concatenate(
            [np.broadcast_to(x_tr[tr], (n_test, m, B - 1, x_tr.shape[1])), x_te[:, None, None, :].repeat(m, axis=1)],
            axis=2,
        )  # (n_test, m, B, d)
        cov = Xb @ np.swapaxes(Xb, -1, -2) / Xb.shape[-1]
        ker = deep_kernels(cov, depths)
        entry: dict[str, Any] = {"B": B, "n_train": int(m * (B - 1)), "experts": m, "n_test": n_test, "accuracy": {}}
        for l in depths:
            K, T = ker[l]
            acc_k = float(np.mean(np.argmax(expert_predict(K, Y), axis=1) == y_te))
            acc_t = float(np.mean(np.argmax(expert_predict(T, Y), axis=1) == y_te))
            entry["accuracy"][str(l)] = {"nngp": acc_k, "ntk": acc_t}
        entry["seconds"] = time.perf_counter() - t0
        res[str(B)] = entry
        row = "  ".join(
            f"L={l}: {v['nngp']:.3f}/{v['ntk']:.3f}" for l, v in ((int(k), v) for k, v in entry["accuracy"].items())
        )
        print(
            f"(b) B={B} ({entry['n_train']} train in {m} batches, {n_test} test) NNGP/NTK acc: {row}  [{entry['seconds']:.0f} s]",
            flush=True,
        )
    return res


def finite_networks() -> dict[str, Any]:
    with open(os.path.join(HERE, "trainability.json")) as f:
        d = json.load(f)
    return {
        "depths": d["depths"],
        "batch_sizes": d["batch_sizes"],
        "accuracy": d["accuracy"],
        "n_train": d["n_train"],
        "n_test": d["n_test"],
        "settings": d["settings"],
    }


def plot_a(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(5.5 * len(res), 4.2), squeeze=False)
    for ax, (Bs, e) in zip(axes[0], res.items()):
        layers = np.arange(1, e["depth"] + 1)
        for k, col in (("L", "C0"), ("M", "C3")):
            gm = np.array(e[k]["geomean"])
            ax.fill_between(layers, e[k]["min"], e[k]["max"], color=col, alpha=0.15, lw=0)
            ax.semilogy(layers, gm, "o", ms=3, color=col, label=f"{k}: digits batches (geo. mean, range)")
            lo = e[k]["fit_layers"][0]
            lam = e["theory"][k]
            ref = gm[lo - 1] * lam ** (layers - lo)
            ax.semilogy(
                layers, ref, "-", color=col, lw=1, label=f"theory slope λ↑_{k} = {lam:.3f} (fit {e[k]['rate_fit']:.3f})"
            )
            if k == "M":  # second order: the square of the L component feeds M at the rate λ↑_L²
                lam2 = e["theory"]["L"] ** 2
                hi = e[k]["fit_layers"][1]
                ax.semilogy(
                    layers,
                    gm[hi - 1] * lam2 ** (layers - hi),
                    ":",
                    color="k",
                    lw=1,
                    label=f"slope (λ↑_L)² = {lam2:.3f}",
                )
        ax.set_title(f"B = {Bs}: distance of the BN-ReLU kernel to BSB1")
        ax.set_xlabel("layer l")
        ax.set_ylabel("‖component of GΣG/μ − G‖_F")
        ax.set_ylim(bottom=max(1e-16, 0.1 * min(min(e["L"]["min"]), min(e["M"]["min"]))), top=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_b(res: dict[str, Any], fin: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (Bs, e) in enumerate(res.items()):
        ds = sorted(int(k) for k in e["accuracy"])
        xs = [max(d, 0.7) for d in ds]
        col = f"C{i}"
        ax.semilogx(
            xs, [e["accuracy"][str(d)]["nngp"] for d in ds], "o-", color=col, label=f"NNGP, B={Bs} (batch experts)"
        )
        ax.semilogx(xs, [e["accuracy"][str(d)]["ntk"] for d in ds], "s--", color=col, label=f"NTK, B={Bs}")
        B = int(Bs)
        if B in fin["batch_sizes"]:
            j = fin["batch_sizes"].index(B)
            ax.semilogx(
                fin["depths"], fin["accuracy"][j], "x:", color=col, label=f"finite net, B={B} (trainability.json)"
            )
    ax.set_xlabel("depth (number of BN-ReLU layers; depth 0 plotted at 0.7 = input kernel)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits: infinite-width BN-ReLU kernels vs trained finite networks")
    ax.axhline(0.1158, color="gray", lw=0.8, ls="-.")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot() -> None:
    """Redraw the PNGs from kernels.json (no kernel computation)."""
    with open(OUT_JSON) as f:
        d = json.load(f)
    plot_a(d["a_convergence"], PNG_A)
    plot_b(d["b_prediction"], d["finite_networks"], PNG_B)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); writes nothing")
    p.add_argument("--force", action="store_true", help="overwrite kernels.json and the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", action="store_true", help="only redraw the PNGs from kernels.json")
    args = p.parse_args(argv)
    if args.replot:
        replot()
        return 0
    outputs = [OUT_JSON, PNG_A, PNG_B]
    if not args.quick and any(os.path.exists(f) for f in outputs) and not args.force:
        print("outputs exist (kernels.json / kernels_*.png); pass --force to overwrite", file=sys.stderr)
        return 2
    from symbnmf.experiments import load_digits

    ds = load_digits()
    t0 = time.perf_counter()
    Bs = [8, 32]
    if args.quick:
        a = part_a(ds, Bs, n_batches=2, depth=8, seed=args.seed)
        b = part_b(ds, [8], [0, 1, 2], n_train=14, n_test=10, seed=args.seed)
    else:
        a = part_a(ds, Bs, n_batches=12, depth=40, seed=args.seed)
        b = part_b(ds, Bs, [0, 1, 2, 5, 10, 20, 50], n_train=91, n_test=60, seed=args.seed)
    fin = finite_networks()
    out = {
        "dataset": "digits (symbnmf.experiments.load_digits: the trainability split, standardised)",
        "activation": "relu",
        "eps": 0.0,
        "a_convergence": a,
        "b_prediction": b,
        "finite_networks": fin,
        "seconds": time.perf_counter() - t0,
    }
    if args.quick:
        print(f"quick run done in {out['seconds']:.0f} s (nothing written)")
        return 0
    with open(OUT_JSON, "w") as f:
        json.dump(out, f, indent=1)
    plot_a(a, PNG_A)
    plot_b(b, fin, PNG_B)
    print(f"wrote {OUT_JSON}, {PNG_A}, {PNG_B} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
