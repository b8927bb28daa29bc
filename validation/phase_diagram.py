"""Phase diagram of BN with eps > 0 (issue 12): lambda_down_G and xi over (sigma_w^2, eps).

For relu and tanh at B in {8, 32}, on a log grid sigma_w^2 in [0.1, 10], eps in [1e-4, 10], by the
fast JAX path :func:`symbnmf.fast._epsquad.fast_evaluate_eps` (checked there against mpmath at
1e-9). Drawn: the gradient growth rate lambda_down_G (colour), the depth scale xi = 1/ln
lambda_down_G (colour), and the collapse boundary eps_c(sigma_w^2) = sigma_w^2 m0 (B-1)/B (white
line; above it mu* = 0, the "collapsed" phase where every pre-activation is equal across the
batch). BN with eps depends on sigma_w^2 only through eps/sigma_w^2 (h scales with sigma_w), so
every panel is a function of eps/sigma_w^2: the diagonal stripes are exact, not an artefact.

    python validation/phase_diagram.py [--force] [--n 33]

Writes validation/phase_diagram_<act>.png and validation/phase_diagram.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--n", type=int, default=33, help="grid points per axis")
    ap.add_argument("--outdir", default=HERE)
    a = ap.parse_args(argv)
    from symbnmf._output import check_output
    from symbnmf.fast._epsquad import fast_evaluate_eps

    acts, Bs = ("relu", "tanh"), (8, 32)
    outs = [os.path.join(a.outdir, f"phase_diagram_{act}.png") for act in acts]
    js = os.path.join(a.outdir, "phase_diagram.json")
    for path in outs + [js]:
        check_output(path, a.force)
    sw = np.logspace(-1, 1, a.n)
    eps = np.logspace(-4, 1, a.n)
    S, E = np.meshgrid(sw, eps, indexing="ij")
    report: dict = {
        "experiment": "eps > 0 phase diagram (issue 12)",
        "method": "symbnmf.fast._epsquad.fast_evaluate_eps (float64 JAX, self-checked at 1e-10)",
        "weight_var": sw.tolist(),
        "eps": eps.tolist(),
        "results": {},
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    for act, out in zip(acts, outs):
        t0 = time.perf_counter()
        r = fast_evaluate_eps(act, list(Bs), eps=E, weight_var=S)
        secs = time.perf_counter() - t0
        fig, axs = plt.subplots(2, len(Bs), figsize=(6 * len(Bs), 9.5))
        for j, B in enumerate(Bs):
            lam = r["backward.G"][..., j]
            xi = r["depth_scale"][..., j]
            phase = r["phase"][..., j]
            bound = r["collapse_boundary_eps"][:, 0, j]
            rec = {
                "backward_G": [[None if not np.isfinite(v) else float(v) for v in row] for row in lam],
                "depth_scale": [[None if not np.isfinite(v) else float(v) for v in row] for row in xi],
                "phase": phase.tolist(),
                "mu": r["mu"][..., j].tolist(),
                "collapse_boundary_eps": bound.tolist(),
                "seconds_for_both_B": round(secs, 1),
            }
            eps0 = fast_evaluate_eps(act, B, eps=0.0)
            rec["eps_zero"] = {"backward_G": float(eps0["backward.G"]), "depth_scale": float(eps0["depth_scale"])}
            report["results"][f"{act}_B{B}"] = rec
            for i, (Z, lab, norm) in enumerate(
                (
                    (lam, r"$\lambda_G^{\downarrow}$ (gradient growth per layer)", None),
                    (xi, r"depth scale $\xi = 1/\ln\lambda_G^{\downarrow}$ (layers)", LogNorm()),
                )
            ):
                ax = axs[i, j]
                Zp = np.where(np.isfinite(Z), Z, np.nan).T
                m = ax.pcolormesh(sw, eps, Zp, shading="nearest", cmap="viridis", norm=norm)
                fig.colorbar(m, ax=ax, label=lab)
                ax.plot(sw, bound, "w-", lw=2.5, label=r"collapse boundary $\epsilon_c(\sigma_w^2)$")
                ax.plot(sw, bound, "k--", lw=1)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_ylim(eps[0], eps[-1])
                ax.set_xlabel(r"$\sigma_w^2$")
                ax.set_ylabel(r"BN $\epsilon$")
                ax.set_title(
                    f"{act}, B={B}: "
                    + ("gradient explosion rate" if i == 0 else "depth scale")
                    + f"\n(ε=0: λ={rec['eps_zero']['backward_G']:.4f}, ξ={rec['eps_zero']['depth_scale']:.2f})",
                    fontsize=10,
                )
                ax.text(0.12, 3.0, "collapsed\n(μ* = 0)", color="w", fontsize=9)
                ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        print(f"{act}: wrote {out} ({secs:.1f} s for the {E.size * len(Bs)} grid points)", file=sys.stderr)
    with open(js, "w") as fh:
        json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
