"""Calibration of the automatic Gauss–Jacobi s-rules of ``symbnmf.kernels`` (the NNGP of BN + ReLU at ε = 0).

For each family of covariances and batch size, every matrix's result with its automatic rule (the public
call: per-matrix rules, the padding of a block filled with matrices of smaller rules) is compared with a
96-node Gauss–Jacobi rule with the map p = ½ (its predicted error is below 1e-30 for every matrix here;
the column ``96 vs 96`` is its distance to the 96-node rule with the other map, a check of that reference
where the p = 1 map converges). Printed: mean nodes of the matrices' own rules, largest and 99th-percentile
relative error (max |ΔV| / max |V| per matrix). ``--target`` overrides the predicted-error target of the
rules (``symbnmf.kernels.nngp._GAUSS_TARGET``) for this run, to see what a different target would give.

    python benchmarks/calibrate_rules.py               # the shipped target
    python benchmarks/calibrate_rules.py --target 1e-14
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import jax

jax.config.update("jax_enable_x64", True)

from bench_kernels import digits_covs, random_cov  # noqa: E402


def near_bsb1(B: int, n: int, seed: int) -> np.ndarray:
    return 1.3 * np.eye(B) + 0.3 + 0.01 * random_cov(B, n, seed)


def rank3(B: int, n: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, B, 3))
    return A @ A.swapaxes(1, 2) / 3 + 0.1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=float, default=None, help="predicted-error target of the rules (default: shipped)")
    p.add_argument("--n", type=int, default=300, help="matrices per digits/Wishart family (default 300)")
    args = p.parse_args(argv)
    from symbnmf.kernels import batchnorm_nngp
    from symbnmf.kernels import nngp as K

    if args.target is not None:
        K._GAUSS_TARGET = args.target
    print(f"# target {K._GAUSS_TARGET:g}; sizes {K.GAUSS_SIZES}")
    print(f"{'family':16s} {'nodes':>6s} {'err max':>9s} {'err p99':>9s} {'96 vs 96':>9s}")
    worst = 0.0
    for B in (8, 16, 32):
        fams = {
            "digits": digits_covs(B, args.n, B),
            "Wishart": random_cov(B, args.n, B + 1),
            "near-BSB1": near_bsb1(B, args.n // 3, B + 2),
            "rank 3": rank3(B, args.n // 3, B + 3),
        }
        for name, covs in fams.items():
            V = np.asarray(batchnorm_nngp(covs, "relu"))
            ref = np.asarray(batchnorm_nngp(covs, "relu", rule=K.SRule("gauss", 96, 0.5)))
            other = np.asarray(batchnorm_nngp(covs, "relu", rule=K.SRule("gauss", 96, 1.0)))
            scale = np.max(np.abs(ref), axis=(1, 2))
            err = np.max(np.abs(V - ref), axis=(1, 2)) / scale
            refdiff = np.max(np.abs(other - ref), axis=(1, 2)) / scale
            nodes, _ = K._chosen(K._row_sizes(K._host_spectra(covs)[0], 0.0))
            worst = max(worst, float(err.max()))
            print(
                f"{name + f' B={B}':16s} {nodes.mean():6.1f} {err.max():9.1e} {np.percentile(err, 99):9.1e} {refdiff.max():9.1e}"
            )
    print(f"worst {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
