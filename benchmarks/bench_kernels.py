"""Benchmark of the exact BN kernels (issue 11) against a GP4A-style baseline implemented here.

Baseline (the first author's GP4A notebooks, re-implemented): numpy, one Σ at a time, eigendecomposition
of Σ_G and a 10-point Gauss–Laguerre rule in s for the Laplace integral of Thm 3.2 (ReLU, ε = 0).
Accuracy reference: ``laplace_V`` (mpmath, 30 digits). All timings are medians of interleaved repeats
(A B A B ...) on this machine; ratios are measured in this script, nothing is quoted from elsewhere.

    python benchmarks/bench_kernels.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from symbnmf.kernels import batchnorm_nngp
from symbnmf.kernels.stax import bn_network
from symbnmf.numeric._laplace import laplace_V


def gp4a_relu(S: np.ndarray, n: int = 10) -> np.ndarray:
    """GP4A-style V(Σ) for ReLU: eigh of Σ_G, Gauss–Laguerre in s (numpy, one Σ)."""
    B = S.shape[0]
    G = np.eye(B) - 1.0 / B
    lam, Q = np.linalg.eigh(G @ S @ G)
    lam = np.clip(lam, 0, None)
    x, w = np.polynomial.laguerre.laggauss(n)
    out = np.zeros((B, B))
    for s, ws in zip(x, w):
        d = 1 + 2 * s * lam
        St = (Q * (lam / d)) @ Q.T
        a = np.sqrt(np.diag(St))
        rho = np.clip(St / np.outer(a, a), -1, 1)
        J1 = (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / np.pi
        out += ws * np.exp(s) * np.prod(d) ** -0.5 * 0.5 * np.outer(a, a) * J1
    return B * out


def random_covs(B: int, n: int, seed: int = 0) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, B, B + 2))
    return A @ A.transpose(0, 2, 1) / (B + 2)


def timed(f, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    reps = 2 if args.quick else 3
    print(f"jax {jax.__version__}, devices {jax.devices()}, float64; medians of {reps} interleaved repeats\n")
    with jax.enable_x64(True):
        # --- accuracy against laplace_V (30 digits) -------------------------------------------
        print("accuracy vs laplace_V (30 digits), ReLU, eps = 0, max relative error over entries:")
        for B in (4, 8, 16):
            S = random_covs(B, 1, seed=B)[0]
            ref = np.array(laplace_V("relu", S, 30).tolist(), dtype=float)
            err = lambda V, ref=ref: float(np.max(np.abs(np.asarray(V) - ref)) / np.max(np.abs(ref)))
            print(
                f"  B = {B:3d}: symbnmf (auto nodes) {err(batchnorm_nngp(S, 'relu')):.1e}   "
                f"(129 nodes) {err(batchnorm_nngp(S, 'relu', nodes=129)):.1e}   GP4A-style {err(gp4a_relu(S)):.1e}"
            )

        # --- throughput at B = 16 ------------------------------------------------------------
        B, n = 16, 1000
        covs = random_covs(B, n, seed=1)
        f = lambda: np.asarray(batchnorm_nngp(covs, "relu", nodes=129))
        f()  # compile
        nb = 200
        base = lambda: [gp4a_relu(c) for c in covs[:nb]]
        tb, tm = [], []
        for _ in range(reps):
            tb.append(timed(base, 1) / nb)
            tm.append(timed(f, 1) / n)
        tb_, tm_ = statistics.median(tb), statistics.median(tm)
        print(
            f"\nthroughput at B = 16: GP4A-style {tb_ * 1e3:.3f} ms/Σ (numpy loop), symbnmf {tm_ * 1e3:.3f} ms/Σ "
            f"(batched jit, 129 nodes, {n} Σ): ratio {tb_ / tm_:.1f}x"
        )

        # --- 1000 Σ at B = 32 after jit --------------------------------------------------------
        covs32 = random_covs(32, 1000, seed=2)
        for nodes in (65, 129):
            g = lambda nodes=nodes: np.asarray(batchnorm_nngp(covs32, "relu", nodes=nodes))
            g()
            print(f"1000 Σ at B = 32, {nodes} nodes, after jit: {timed(g, reps):.2f} s")

        # --- 50-layer BN-ReLU network, NNGP + NTK, one batch of 128 ------------------------------
        x = np.random.default_rng(3).standard_normal((128, 64))
        for nodes in (65, 129, None):
            net = bn_network("relu", 50)
            if nodes is not None:  # fixed node count in every BN layer
                from symbnmf.kernels import stax

                blocks = []
                for _ in range(50):
                    blocks += [stax.Dense(1), stax.BatchNorm(0.0, nodes=nodes), stax.Relu()]
                net = stax.serial(*blocks, stax.Dense(1))
            k = net[2](x)
            np.asarray(k.ntk)
            t = timed(lambda net=net: np.asarray(net[2](x).ntk), reps)
            label = "auto" if nodes is None else str(nodes)
            print(f"50-layer BN-ReLU NNGP + NTK, B = 128, nodes {label}: {t:.2f} s (after compilation)")
            if nodes is None:
                ref = k
            else:
                globals().setdefault("_fixed", {})[nodes] = k
        for nodes, k in globals()["_fixed"].items():
            e1 = np.max(np.abs(np.asarray(k.nngp) - np.asarray(ref.nngp))) / np.max(np.abs(np.asarray(ref.nngp)))
            e2 = np.max(np.abs(np.asarray(k.ntk) - np.asarray(ref.ntk))) / np.max(np.abs(np.asarray(ref.ntk)))
            print(f"  {nodes} nodes vs auto nodes after 50 layers: NNGP {e1:.1e}, NTK {e2:.1e} (relative)")


if __name__ == "__main__":
    main()
