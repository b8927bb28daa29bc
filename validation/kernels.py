"""Showcase of the exact BN kernels (issue 11, item 5) on scikit-learn's digits.

(a) Depth-wise convergence of the BN-ReLU kernel of real batches to the BSB1 fixed point. Batches of
    B ∈ {8, 32} training images (standardised as in the trainability experiment), Σ¹ = XXᵀ/d (the
    input Dense layer, σ_w = 1, σ_b = 0), then Σ^{l+1} = V(Σ^l) with ``batchnorm_nngp`` (Dense with
    σ_w = 1, σ_b = 0 after each BN-ReLU; at ε = 0 σ_w, σ_b drop out). The normalised distance
    Δ = GΣG/μ − G is split into its L and M components (``symbnmf.montecarlo.stats.glm_pieces``);
    their per-layer decay rates are fitted and compared with λ↑_L, λ↑_M from ``symbnmf.evaluate``.
(b) NNGP / NTK prediction with the infinite-width network Dense → (BN-ReLU → Dense) × depth (NTK
    parametrisation, σ_w = 1, σ_b = 0, ε = 0), as ONE kernel regression over batches: the training set is
    m fixed batches of B images, the test set test batches of B images, each batch normalised with its
    own statistics. The joint kernel over all batches is propagated layer by layer: at each BN-ReLU
    layer the same-batch block of batch i comes from ``batchnorm_ntk`` (all batches in one call), the
    block of each needed pair (i, j) (train–train and test–train; test–test is never used) from
    ``batchnorm_cross_ntk`` applied to that pair's (K_ii, K_jj, K_ij, Θ_ij) of the layer below; the
    Dense layer between gives K' = V, Θ' = E[JΘJᵀ] + V. Depth 0 is the input kernel XXᵀ/d. One
    test–train block is checked against ``stax.bn_network(...)[2](x1, x2)``. Prediction: NNGP posterior
    mean K_te,tr (K_tr + r I)⁻¹ Y, NTK (gradient flow to convergence) Θ_te,tr (Θ_tr + r I)⁻¹ Y, with
    r = 1e-6 · mean diag of the train block, Y one-hot minus 1/10, argmax; accuracy with its binomial
    standard error. The finite networks of ``validation/trainability.json`` (trained on the full
    1348-image split) are shown beside it; they are not like-for-like (training set size, finite
    width, SGD, test-time BN with population statistics).

Sizes are chosen to keep (b) to about 20 minutes on a loaded 2-core machine; see the printout and
``validation/KERNELS.md``.

    python validation/kernels.py [--quick] [--force] [--part a|b]   # writes kernels.json and kernels_*.png here
    python validation/kernels.py --replot                            # redraws the PNGs from kernels.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

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
        dist: dict[str, list[np.ndarray]] = {"L": [], "M": []}
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


def joint_kernels(
    X: np.ndarray, pairs: list[tuple[int, int]], depths: list[int], label: str
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Joint (NNGP, NTK) over the batches ``X`` (n_batches, B, d) after each depth in ``depths``.

    The network is Dense → (BN-ReLU → Dense) × depth (NTK parametrisation, σ_w = 1, σ_b = 0), each batch
    normalised with its own statistics. Returns, per depth, two (n·B, n·B) matrices in which the
    same-batch blocks and the blocks of ``pairs`` (and their transposes) are filled, the rest NaN.
    Per layer: every same-batch block from one batched ``batchnorm_ntk`` call; each pair (i, j) from
    ``batchnorm_cross_ntk`` applied to (K_ii, K_jj, K_ij, Θ_ij) of the layer below; then the Dense layer
    K' = V, Θ' = E[JΘJᵀ] + V.
    """
    from symbnmf.kernels import batchnorm_cross_ntk, batchnorm_ntk

    n, B, d = X.shape
    flat = X.reshape(n * B, d)
    full = flat @ flat.T / d  # input Dense layer: K = XXᵀ/d, Θ = K (every block, all exact)
    K = full.copy()
    T = full.copy()
    mask = np.zeros((n, n), bool)
    for i in range(n):
        mask[i, i] = True
    for i, j in pairs:
        mask[i, j] = mask[j, i] = True
    blk = lambda i: slice(i * B, (i + 1) * B)
    blanked = np.kron(~mask, np.ones((B, B), bool))

    def record(K: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(blanked, np.nan, K), np.where(blanked, np.nan, T)

    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if 0 in depths:
        out[0] = record(K, T)
    L = max(depths)
    t0 = time.perf_counter()
    for l in range(1, L + 1):
        Kn = np.full_like(K, np.nan)
        Tn = np.full_like(T, np.nan)
        Kd = np.stack([K[blk(i), blk(i)] for i in range(n)])
        Td = np.stack([T[blk(i), blk(i)] for i in range(n)])
        V, JT = batchnorm_ntk(Kd, Td, "relu")
        V, JT = np.asarray(V), np.asarray(JT)
        for i in range(n):
            Kn[blk(i), blk(i)] = V[i]
            Tn[blk(i), blk(i)] = V[i] + JT[i]
        for i, j in pairs:
            a, b = blk(i), blk(j)
            V12, JT12 = batchnorm_cross_ntk(K[a, a], K[b, b], K[a, b], T[a, b], "relu")
            V12, JT12 = np.asarray(V12), np.asarray(JT12)
            Kn[a, b], Kn[b, a] = V12, V12.T
            Tn[a, b], Tn[b, a] = V12 + JT12, (V12 + JT12).T
        K, T = Kn, Tn
        if l in depths:
            out[l] = record(K, T)
        el = time.perf_counter() - t0
        print(
            f"(b) {label}: layer {l}/{L} done ({n} same-batch blocks, {len(pairs)} cross pairs)"
            f"  {el:.0f} s, ~{el / l * (L - l):.0f} s to go",
            flush=True,
        )
    return out


def kernel_predict(K: np.ndarray, n_train: int, Y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """K_test,train (K_train + r I)⁻¹ Y with r = ridge · mean diag K_train; also λ_min(K_train)/mean diag."""
    Ktr = K[:n_train, :n_train]
    Kte = K[n_train:, :n_train]
    scale = float(np.mean(np.diag(Ktr)))
    alpha = np.linalg.solve(Ktr + ridge * scale * np.eye(n_train), Y)
    return Kte @ alpha, float(np.linalg.eigvalsh(Ktr)[0] / scale)


def check_vs_stax(Xi: np.ndarray, Xj: np.ndarray, Kb: np.ndarray, Tb: np.ndarray, depth: int) -> float:
    """Largest relative difference between our cross block (i, j) and ``stax.bn_network`` at ``depth``."""
    from symbnmf.kernels.stax import bn_network

    k, t = bn_network("relu", depth)[2](Xi, Xj, get=("nngp", "ntk"))
    rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))
    return max(rel(k, Kb), rel(t, Tb))


RIDGE = 1e-6
#: A larger ridge, reported beside the main one (not plotted) to show how much the choice matters.
ALT_RIDGE = 1e-2


def part_b(
    ds: Any, Bs: list[int], depths: list[int], n_train: int, n_test: int, seed: int, check_depth: int = 2
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x_tr = np.asarray(ds.x_train, dtype=np.float64)
    y_tr = np.asarray(ds.y_train)
    x_te = np.asarray(ds.x_test, dtype=np.float64)[:n_test]
    y_te = np.asarray(ds.y_test)[:n_test]
    C = ds.n_classes
    tr = rng.permutation(len(x_tr))[:n_train]  # the same training images for every B
    Y = np.eye(C)[y_tr[tr]] - 1.0 / C
    res: dict[str, Any] = {}
    for B in Bs:
        if n_train % B or n_test % B:
            raise ValueError(f"n_train = {n_train} and n_test = {n_test} must be multiples of B = {B}")
        t0, c0 = time.perf_counter(), time.process_time()
        m, q = n_train // B, n_test // B
        X = np.concatenate([x_tr[tr], x_te]).reshape(m + q, B, -1)  # batches 0..m-1 train, m.. test
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)] + [
            (t, j) for t in range(m, m + q) for j in range(m)
        ]
        ker = joint_kernels(X, pairs, depths, f"B={B}")
        entry: dict[str, Any] = {
            "B": B,
            "n_train": n_train,
            "train_batches": m,
            "n_test": n_test,
            "test_batches": q,
            "cross_pairs": len(pairs),
            "depths": depths,
            "majority_share": float(np.max(np.bincount(y_te, minlength=C)) / n_test),
            "accuracy": {},
            "train_min_eig_rel": {},
            "predictions": {},
            "accuracy_alt_ridge": {},
        }
        for l in depths:
            acc, eig, pred, alt = {}, {}, {}, {}
            for name, M in zip(("nngp", "ntk"), ker[l]):
                out, eig[name] = kernel_predict(M, n_train, Y, RIDGE)
                alt[name] = float(np.mean(np.argmax(kernel_predict(M, n_train, Y, ALT_RIDGE)[0], axis=1) == y_te))
                p = np.argmax(out, axis=1)
                hit = float(np.mean(p == y_te))
                acc[name] = hit
                acc[name + "_se"] = math.sqrt(hit * (1 - hit) / n_test)
                pred[name] = p.tolist()
            entry["accuracy"][str(l)] = acc
            entry["train_min_eig_rel"][str(l)] = eig
            entry["predictions"][str(l)] = pred
            entry["accuracy_alt_ridge"][str(l)] = alt
        cd = min(check_depth, max(depths))
        if cd in ker:  # one test-train cross block against stax.bn_network's kernel_fn(x1, x2)
            i, j = m, 0
            a, b = slice(i * B, (i + 1) * B), slice(j * B, (j + 1) * B)
            entry["check_vs_stax"] = {
                "depth": cd,
                "pair": [i, j],
                "max_rel_diff": check_vs_stax(X[i], X[j], ker[cd][0][a, b], ker[cd][1][a, b], cd),
            }
        entry["seconds"] = time.perf_counter() - t0
        entry["cpu_seconds"] = time.process_time() - c0
        res[str(B)] = entry
        row = "  ".join(f"L={k}: {v['nngp']:.3f}/{v['ntk']:.3f}" for k, v in entry["accuracy"].items())
        chk = entry.get("check_vs_stax", {}).get("max_rel_diff", float("nan"))
        print(
            f"(b) B={B} ({n_train} train in {m} batches, {n_test} test in {q}, {len(pairs)} cross pairs)"
            f" NNGP/NTK acc (±{math.sqrt(0.25 / n_test):.2f} at most): {row};"
            f" vs stax {chk:.1e}  [{entry['seconds']:.0f} s, {entry['cpu_seconds']:.0f} CPU s]",
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

    fig, axes = plt.subplots(1, len(res), figsize=(5.8 * len(res), 4.6), squeeze=False, sharey=True)
    for ax, (Bs, e) in zip(axes[0], res.items()):
        ds = sorted(int(k) for k in e["accuracy"])
        xs = np.array([max(d, 0.7) for d in ds], dtype=float)
        for name, mk, col, dx, lab in (
            ("nngp", "o-", "C0", 0.97, "NNGP posterior mean"),
            ("ntk", "s--", "C3", 1.03, "NTK, gradient flow to convergence"),
        ):
            ax.errorbar(
                xs * dx,
                [e["accuracy"][str(d)][name] for d in ds],
                yerr=[e["accuracy"][str(d)][name + "_se"] for d in ds],
                fmt=mk,
                color=col,
                ms=5,
                capsize=3,
                label=f"infinite width, {lab} (±1 s.e.)",
            )
        B = int(Bs)
        if B in fin["batch_sizes"]:
            j = fin["batch_sizes"].index(B)
            ax.plot(
                fin["depths"],
                fin["accuracy"][j],
                "x:",
                color="k",
                label=f"finite net, width {fin['settings']['width']}, SGD, {fin['n_train']} train (trainability.json)",
            )
        ax.axhline(
            e["majority_share"],
            color="gray",
            lw=0.8,
            ls="-.",
            label="share of the most frequent class among the test images",
        )
        ax.set_xscale("log")
        ticks = [0.7, 1, 2, 5, 10, 20, 50, 100]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0\n(input)", "1", "2", "5", "10", "20", "50", "100"])
        ax.minorticks_off()
        ax.set_xlim(0.6, 120)
        ax.set_ylim(0, 1)
        ax.set_xlabel("depth (number of BN-ReLU layers)")
        ax.set_title(
            f"B = {B}: {e['n_train']} train images in {e['train_batches']} batches,\n"
            f"{e['n_test']} test images in {e['test_batches']} batches (kernels)",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy on digits")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(
        "Digits: exact infinite-width BN-ReLU kernel regression (one GP over batches) vs trained finite networks",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot() -> None:
    """Redraw the PNGs from kernels.json (no kernel computation)."""
    with open(OUT_JSON) as f:
        d = json.load(f)
    plot_a(d["a_convergence"], PNG_A)
    plot_b(d["b_prediction"], d["finite_networks"], PNG_B)


B_SETTINGS = {
    "network": "Dense -> (BN-ReLU -> Dense) x depth, NTK parametrisation, sigma_w = 1, sigma_b = 0, eps = 0",
    "kernel": "one joint kernel over all train and test batches, each batch normalised with its own statistics: "
    "same-batch blocks from batchnorm_ntk, cross-batch blocks from batchnorm_cross_ntk, layer by layer",
    "prediction": "NNGP: K_test,train (K_train + r I)^-1 Y; NTK: Theta_test,train (Theta_train + r I)^-1 Y; "
    "r = ridge * mean diag of the train block; Y = one-hot - 1/10; argmax",
    "ridge": RIDGE,
    "alt_ridge": ALT_RIDGE,
    "standard_error": "binomial, sqrt(acc (1 - acc) / n_test)",
    "train_images": "n_train images of a seeded permutation of the training split (the same for every B), batched in order",
    "test_images": "the first n_test images of the test split, batched in order",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); writes nothing")
    p.add_argument("--force", action="store_true", help="overwrite kernels.json and the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", action="store_true", help="only redraw the PNGs from kernels.json")
    p.add_argument(
        "--part",
        choices=("a", "b", "all"),
        default="all",
        help="run only part (a) or (b) and merge it into the existing kernels.json (default: both)",
    )
    args = p.parse_args(argv)
    if args.replot:
        replot()
        return 0
    outputs = {"a": [OUT_JSON, PNG_A], "b": [OUT_JSON, PNG_B], "all": [OUT_JSON, PNG_A, PNG_B]}[args.part]
    if not args.quick and any(os.path.exists(f) for f in outputs) and not args.force:
        print("outputs exist (kernels.json / kernels_*.png); pass --force to overwrite", file=sys.stderr)
        return 2
    old: dict[str, Any] = {}
    if args.part != "all" and not args.quick:
        if not os.path.exists(OUT_JSON):
            print(f"--part {args.part} merges into {OUT_JSON}, which does not exist; run both parts", file=sys.stderr)
            return 2
        with open(OUT_JSON) as f:
            old = json.load(f)
    from symbnmf.experiments import load_digits

    ds = load_digits()
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    Bs = [8, 32]
    a = b = None
    secs: dict[str, float] = dict(old.get("seconds_by_part", {}))
    if "a" not in secs and "a_convergence" in old:  # runs before --part stored only per-B times
        secs["a"] = sum(e["seconds"] for e in old["a_convergence"].values())
    if args.part in ("a", "all"):
        ta = time.perf_counter()
        if args.quick:
            a = part_a(ds, Bs, n_batches=2, depth=8, seed=args.seed)
        else:
            a = part_a(ds, Bs, n_batches=12, depth=40, seed=args.seed)
        secs["a"] = time.perf_counter() - ta
    if args.part in ("b", "all"):
        tb = time.perf_counter()
        if args.quick:
            b = part_b(ds, [8], [0, 1, 2], n_train=16, n_test=8, seed=args.seed)
        else:
            b = part_b(ds, Bs, [0, 1, 2, 5, 10, 20], n_train=128, n_test=64, seed=args.seed)
        secs["b"] = time.perf_counter() - tb
    fin = finite_networks()
    b_settings = dict(old.get("b_settings", {}))
    if b is not None:
        b_settings = {
            **B_SETTINGS,
            "machine": f"{os.cpu_count()} CPUs, shared",
            "load_average_1min_start_end": [load0[0], os.getloadavg()[0]],
        }
    out = {
        "dataset": "digits (symbnmf.experiments.load_digits: the trainability split, standardised)",
        "activation": "relu",
        "eps": 0.0,
        "a_convergence": a if a is not None else old.get("a_convergence"),
        "b_prediction": b if b is not None else old.get("b_prediction"),
        "b_settings": b_settings,
        "finite_networks": fin,
        "seconds_by_part": secs,
        "seconds": sum(secs.values()),
    }
    if args.quick:
        print(f"quick run done in {time.perf_counter() - t0:.0f} s (nothing written)")
        return 0
    with open(OUT_JSON, "w") as f:
        json.dump(out, f, indent=1)
    written = [OUT_JSON]
    if a is not None:
        plot_a(a, PNG_A)
        written.append(PNG_A)
    if b is not None:
        plot_b(b, fin, PNG_B)
        written.append(PNG_B)
    print(f"wrote {', '.join(written)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
