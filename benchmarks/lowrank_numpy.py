"""The fair numpy baseline: the same exact O(N·B²) Gaussian-layer sampler as symbnmf, in plain numpy.

Forward and backward pass of K ReLU networks with BN (eps = 0), width N, batch B, depth L,
float32, i.i.d. normal input, random linear readout; returns (K, L+1) squared gradient norms
‖∂loss/∂x^l‖².  Layers use the identity of theory.md ("Simulating finite-width networks"):
h = Z₁ (xᵀx/N)^{1/2} and Wᵀg = zm + x S⁺ (hᵀg − xᵀzm)/N with zm = Z₂ (gᵀg/N)^{1/2},
S = xᵀx/N.  Run as a script it is the whole-process baseline of ``bench_cli.py``:

    python benchmarks/lowrank_numpy.py -B 8 -N 512 -L 50 -K 100
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _sqrt_pinv(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, V = np.linalg.eigh(S)
    keep = w > np.sqrt(np.finfo(S.dtype).eps) * w[-1]
    wp = np.where(keep, w, 1)
    return (V * np.where(keep, np.sqrt(wp), 0)) @ V.T, (V * np.where(keep, 1 / wp, 0)) @ V.T


def _sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.where(w > 10 * len(w) * np.finfo(S.dtype).eps * w[-1], w, 0))) @ V.T


def lowrank_networks(N: int, B: int, L: int, K: int, seed: int) -> np.ndarray:
    """(K, L+1) squared gradient norms by the exact low-rank sampler (float32 numpy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((K, L + 1))
    f32 = np.float32
    for k in range(K):
        x = rng.standard_normal((N, B), dtype=f32)
        R = rng.standard_normal((N, B), dtype=f32)
        saved = []
        for _ in range(L):
            sq, pinv = _sqrt_pinv(x.T @ x / f32(N))
            h = rng.standard_normal((N, B), dtype=f32) @ sq
            c = h - h.mean(1, keepdims=True)
            sd = np.sqrt((c * c).mean(1, keepdims=True))
            y = c / sd
            saved.append((x, h, pinv, y, sd))
            x = np.maximum(y, 0)
        g = R
        out[k, L] = float(np.sum(g * g))
        for l in range(L - 1, -1, -1):
            xl, h, pinv, y, sd = saved[l]
            gy = g * (y > 0)
            gh = (gy - gy.mean(1, keepdims=True) - y * (gy * y).mean(1, keepdims=True)) / sd
            zm = rng.standard_normal((N, B), dtype=f32) @ _sqrt(gh.T @ gh / f32(N))
            g = zm + xl @ (pinv @ (h.T @ gh - xl.T @ zm) / f32(N))
            out[k, l] = float(np.sum(g * g))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-N", type=int, default=512)
    p.add_argument("-B", type=int, default=8)
    p.add_argument("-L", type=int, default=50)
    p.add_argument("-K", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    g = lowrank_networks(a.N, a.B, a.L, a.K, a.seed)
    lo, hi = max(1, a.L // 10), a.L - max(1, a.L // 10)
    m = np.log(g.mean(0))[lo : hi + 1]
    t = np.arange(lo, hi + 1) - (lo + hi) / 2
    print(json.dumps({"gradient_rate": float(np.exp(-(m * t).sum() / (t * t).sum()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
