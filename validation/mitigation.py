"""Paper Fig 4 on a real data set: mitigating BN's gradient explosion with gamma, beta and eps.

Three sweeps at a fixed batch size B (default 32):

* ``gamma_tanh``: tanh(gamma * BN(h) + 0), gamma in [0.1, 2] (gamma -> 0 is the linear regime);
* ``beta_relu``:  relu(1 * BN(h) + beta), beta in [0, 2] (large beta is the linear regime);
* ``eps_relu``:   relu with BN(h) = (h - mean)/sqrt(var + eps), eps in [0, 10].

For each sweep:

1. theory curves lambda_down_G and xi = 1/ln lambda_down_G versus the parameter for the
   activation phi(gamma x + beta) (docs/theory.md: BN's gamma, beta absorbed into phi), from the fast
   JAX quadrature :class:`symbnmf.FastEvaluator` (vectorised over the parameter). eps > 0: the
   eps theory of issue 12 (sigma_w^2 = 1, :func:`symbnmf.fast._epsquad.fast_evaluate_eps`), with
   the collapse boundary eps_c; z = (simulated rate - theory)/s.e. per point (``"z"`` in the JSON).
2. simulated points: per-layer growth of the mean squared gradient in random networks,
   :func:`symbnmf.simulate` (the project's Monte Carlo; width 1000 by default);
3. trainability: test accuracy on digits of networks trained with that gamma/beta/eps over a
   depth grid, with 16 xi overlaid and the measured maximum depth per parameter value.

    python validation/mitigation.py [--force] [--quick] [--sweeps gamma_tanh,beta_relu,eps_relu]

Writes validation/mitigation_<sweep>.png and validation/mitigation.json.
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
sys.path.insert(0, os.path.dirname(HERE))

from symbnmf.experiments import trainability as cmd  # noqa: E402
from symbnmf.experiments.train import TrainConfig, load_digits, max_trainable_depth, train_network  # noqa: E402

SWEEPS: dict[str, dict[str, Any]] = {
    "gamma_tanh": dict(
        activation="tanh",
        param="gamma",
        label=r"BN $\gamma$ (tanh, $\beta=0$)",
        values=[0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0],
        theory="tanh(g*x)",
        symbol="g",
        fine=np.linspace(0.05, 2.0, 40),
        log=False,
    ),
    "beta_relu": dict(
        activation="relu",
        param="beta",
        label=r"BN $\beta$ (ReLU, $\gamma=1$)",
        values=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
        theory="relu(x + b)",
        symbol="b",
        fine=np.linspace(0.0, 2.0, 41),
        log=False,
    ),
    "eps_relu": dict(
        activation="relu",
        param="eps",
        label=r"BN $\epsilon$ (ReLU)",
        values=[0.0, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0],
        theory=None,
        theory_eps=True,  # the eps > 0 theory (issue 12), fast JAX path, sigma_w^2 = 1
        fine=np.r_[0.0, np.logspace(-4, 1, 81)],
        log=True,
    ),
}
#: Quadrature settings for the theory curves: plot accuracy is enough, so the tolerance is loose
#: (an activation with a kink off 0, relu(x + b), converged only algebraically in earlier versions
#: of the fast rules). ``--check-mpmath`` compares the value at B=32, b=1/2 with the certified
#: mpmath quadrature and stores the relative difference in mitigation.json.
THEORY_RTOL = 1e-2
THEORY_RULES = ((240, 168), (160, 112))


def theory_curve(expr: str, symbol: str, values: np.ndarray, B: int) -> dict[str, Any]:
    """lambda_down_G and xi of phi = ``expr`` over the parameter ``symbol`` = ``values`` at batch size B."""
    import symbnmf
    from symbnmf.fast._fastquad import FastEvaluator

    ev = FastEvaluator(
        symbnmf.get_activation(expr), ("backward.G", "depth_scale"), rtol=THEORY_RTOL, rules=THEORY_RULES
    )
    lam, xi, failed = [], [], []
    try:
        r = ev([B], **{symbol: np.asarray(values, float)})
        lam, xi = list(r["backward.G"][:, 0]), list(r["depth_scale"][:, 0])
    except Exception:
        for v in values:
            try:
                r = ev([B], **{symbol: np.array([v])})
                lam.append(float(r["backward.G"][0, 0]))
                xi.append(float(r["depth_scale"][0, 0]))
            except Exception as exc:
                lam.append(None)
                xi.append(None)
                failed.append({"value": float(v), "error": f"{type(exc).__name__}: {exc}"})
    clean = lambda a: [None if v is None or not math.isfinite(float(v)) else float(v) for v in a]
    return {
        "values": [float(v) for v in values],
        "backward_G": clean(lam),
        "depth_scale": clean(xi),
        "failed": failed,
        "source": f"FastEvaluator({expr!r}, rtol={THEORY_RTOL}, rules={THEORY_RULES})",
    }


def eps_theory_curve(values: np.ndarray, B: int, activation: str = "relu") -> dict[str, Any]:
    """lambda_down_G, xi and the phase of BN with eps = ``values`` (sigma_w^2 = 1, the simulator's
    convention) by :func:`symbnmf.fast._epsquad.fast_evaluate_eps` (checked against mpmath at 1e-9)."""
    from symbnmf.fast._epsquad import fast_evaluate_eps

    r = fast_evaluate_eps(activation, B, eps=np.asarray(values, float), weight_var=1.0)
    clean = lambda a: [None if not math.isfinite(float(v)) else float(v) for v in a]
    return {
        "values": [float(v) for v in values],
        "backward_G": clean(r["backward.G"]),
        "depth_scale": clean(r["depth_scale"]),
        "phase": [str(p) for p in r["phase"]],
        "collapse_boundary_eps": float(r["collapse_boundary_eps"][0]),
        "failed": [],
        "source": f"symbnmf.fast._epsquad.fast_evaluate_eps({activation!r}, B={B}, weight_var=1)",
    }


def zscores(res: dict[str, Any]) -> list[float | None]:
    """(simulated rate - theory lambda_down_G)/stderr at each simulated value (finite width N: the
    O(1/N) bias of the simulation enters z; see mitigation_width.json for the 1/N trend)."""
    th = res.get("theory_at_values") or {}
    out: list[float | None] = []
    for r, t in zip(res["simulation"], th.get("backward_G") or [None] * len(res["simulation"])):
        ok = t is not None and r["rate"] and r["stderr"]
        out.append(float((r["rate"] - t) / r["stderr"]) if ok else None)
    return out


def simulated_rates(sweep: dict[str, Any], B: int, width: int, depth: int, networks: int, seed: int) -> list[dict]:
    """Monte Carlo gradient growth rate per parameter value (symbnmf.simulate, theory=False)."""
    import symbnmf

    rows = []
    for i, v in enumerate(sweep["values"]):
        kw = {sweep["param"]: float(v)}
        res = symbnmf.simulate(sweep["activation"], B, width, depth, networks, seed=seed + i, theory=False, **kw)
        gr = res.summary["gradient_rate"]
        rows.append(
            {
                "value": float(v),
                "rate": gr["measured"],
                "stderr": gr["stderr"],
                "method": res.summary["method"],
                "fit_window": res.summary["fit_window"],
            }
        )
    return rows


def trainability(
    sweep: dict[str, Any], B: int, depths: list[int], width: int, steps: int, lr: float, seed: int, progress: bool
) -> dict[str, Any]:
    from tqdm import tqdm

    ds = load_digits()
    vals = sweep["values"]
    acc = np.zeros((len(vals), len(depths)))
    cells = [(i, j) for i in range(len(vals)) for j in range(len(depths))]
    for i, j in tqdm(cells, desc=sweep["param"], disable=not progress, file=sys.stderr):
        cfg = TrainConfig(
            depth=depths[j],
            batch_size=B,
            width=width,
            steps=steps,
            lr=lr,
            activation=sweep["activation"],
            seed=seed + 1000 * i + j,
            **{sweep["param"]: float(vals[i])},
        )
        acc[i, j] = train_network(ds, cfg).test_accuracy
    chance = ds.chance
    thr = chance + 0.5 * (float(acc.max()) - chance)
    meas = [max_trainable_depth(depths, acc[i], thr) for i in range(len(vals))]
    return {"depths": depths, "accuracy": acc.round(4).tolist(), "chance": chance, "threshold": thr, "measured": meas}


def plot(name: str, sweep: dict[str, Any], res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = res["B"]
    fig, axs = plt.subplots(1, 3, figsize=(15, 5.0))
    th, sim, tr = res.get("theory"), res["simulation"], res["trainability"]
    xv = list(sweep["values"])  # log sweeps use a symlog axis, so 0 stays 0
    # (a) lambda_down_G
    ax = axs[0]
    if th:
        ok = [(v, l) for v, l in zip(th["values"], th["backward_G"]) if l is not None]
        if ok:
            ax.plot(*zip(*ok), "k-", label=r"theory $\lambda_G^{\downarrow}$ (fast quadrature)")
        if th.get("collapse_boundary_eps"):
            ax.axvline(th["collapse_boundary_eps"], color="C0", ls="--", label=r"collapse boundary $\epsilon_c$")
    ax.axhline((B - 2) / (B - 3), color="gray", ls=":", label=r"linear limit $(B-2)/(B-3)$")
    pos = [(x, r) for x, r in zip(xv, sim) if r["rate"]]
    ax.errorbar(
        [x for x, _ in pos],
        [r["rate"] for _, r in pos],
        yerr=[2 * (r["stderr"] or 0) for _, r in pos],
        fmt="o",
        color="C3",
        capsize=3,
        label=f"Monte Carlo (N={res['sim_width']}, {res['sim_networks']} nets, ±2 s.e.)",
    )
    zero = [x for x, r in zip(xv, sim) if not r["rate"]]
    if zero:
        ax.plot(zero, [0] * len(zero), "x", color="C3", ms=8, label="Monte Carlo: gradients underflow to 0 (float32)")
    if sweep["log"]:
        for a_ in axs[:2]:
            a_.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel(sweep["label"])
    ax.set_ylabel(r"gradient growth per layer $\lambda_G^{\downarrow}$")
    ax.set_title(f"(a) gradient explosion rate, B={B}")
    ax.legend(fontsize=8)
    # (b) xi
    ax = axs[1]
    if th:
        ok = [(v, x) for v, x in zip(th["values"], th["depth_scale"]) if x is not None]
        if ok:
            ax.plot(*zip(*ok), "k-", label=r"theory $\xi = 1/\ln\lambda_G^{\downarrow}$")
    xs_sim = [(x, 1 / math.log(r["rate"])) for x, r in zip(xv, sim) if r["rate"] and r["rate"] > 1]
    if xs_sim:
        ax.plot(*zip(*xs_sim), "o", color="C3", label=r"Monte Carlo $1/\ln(\mathrm{rate})$")
    ax.set_yscale("log")
    ax.set_xlabel(sweep["label"])
    ax.set_ylabel(r"depth scale $\xi$ (layers)")
    ax.set_title("(b) depth scale")
    ax.legend(fontsize=8)
    # (c) trainability
    ax = axs[2]
    acc = np.asarray(tr["accuracy"])
    if sweep["log"]:
        # categorical axis for eps (0 cannot sit on a log axis)
        mesh = ax.pcolormesh(
            np.arange(len(xv) + 1) - 0.5,
            cmd._edges(tr["depths"], False),
            acc.T,
            cmap="viridis",
            vmin=0,
            vmax=1,
            shading="flat",
        )
        ax.set_xticks(range(len(xv)))
        ax.set_xticklabels([f"{v:g}" for v in sweep["values"]], rotation=45)
        xpos = list(range(len(xv)))
    else:
        mesh = ax.pcolormesh(
            cmd._edges(xv, False),
            cmd._edges(tr["depths"], False),
            acc.T,
            cmap="viridis",
            vmin=0,
            vmax=1,
            shading="flat",
        )
        xpos = xv
    ax.set_ylabel("depth (BN layers)")
    ax.set_xlabel(sweep["label"])
    fig.colorbar(mesh, ax=ax, label=f"test accuracy (chance {tr['chance']:.2f})")
    tv = res.get("theory_at_values")
    if th and sweep["log"] and tv:
        # categorical eps axis: 16 xi at the simulated values
        ok = [(p, 16 * x) for p, x in zip(xpos, tv["depth_scale"]) if x is not None]
        if ok:
            import matplotlib.patheffects as pe

            ax.plot(
                *zip(*ok),
                "w-o",
                lw=2,
                label=r"theory $16\,\xi(\epsilon)$",
                path_effects=[pe.withStroke(linewidth=3.5, foreground="k")],
            )
    if th and not sweep["log"]:
        ok = [(v, 16 * x) for v, x in zip(th["values"], th["depth_scale"]) if x is not None]
        if ok:
            import matplotlib.patheffects as pe

            ax.plot(
                *zip(*ok),
                "w-",
                lw=2,
                label=r"theory $16\,\xi$",
                path_effects=[pe.withStroke(linewidth=3.5, foreground="k")],
            )
    est = [(p, m["estimate"]) for p, m in zip(xpos, tr["measured"]) if m["estimate"] is not None]
    if est:
        ax.plot(*zip(*est), "r--", lw=1.2)
        closed = [
            (p, m["estimate"])
            for p, m in zip(xpos, tr["measured"])
            if m["estimate"] is not None and m["first_untrainable"] is not None
        ]
        open_ = [
            (p, m["estimate"])
            for p, m in zip(xpos, tr["measured"])
            if m["estimate"] is not None and m["first_untrainable"] is None
        ]
        if closed:
            ax.plot(*zip(*closed), "rs", label="measured max depth")
        if open_:
            ax.plot(*zip(*open_), "r^", label="whole depth grid trains (max depth ≥)")
    ax.set_ylim(0, max(tr["depths"]) * 1.05)
    ax.set_title(f"(c) trainability on digits, B={B}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def width_trend(a: argparse.Namespace) -> int:
    """Finite-width bias of the simulated rates: fit rate(N) = r_inf + c/N (weighted least squares)."""
    import symbnmf

    path = os.path.join(a.outdir, "mitigation_width.json")
    cmd.check_outputs([path], a.force)
    B, widths, out = a.batch_size, [250, 500, 1000, 2000], []
    for name, act, param, value, expr, sym in (
        ("gamma_tanh", "tanh", "gamma", 1.0, "tanh(g*x)", "g"),
        ("beta_relu", "relu", "beta", 0.5, "relu(x + b)", "b"),
    ):
        rows = []
        for i, N in enumerate(widths):
            res = symbnmf.simulate(act, B, N, 40, 100, seed=101 + i, theory=False, **{param: value})
            gr = res.summary["gradient_rate"]
            rows.append({"width": N, "rate": gr["measured"], "stderr": gr["stderr"]})
        X = np.array([[1.0, 1.0 / r["width"]] for r in rows])
        w = np.array([1 / r["stderr"] ** 2 for r in rows])
        y = np.array([r["rate"] for r in rows])
        cov = np.linalg.inv(X.T @ (w[:, None] * X))
        coef = cov @ X.T @ (w * y)
        theory = theory_curve(expr, sym, np.array([value]), B)["backward_G"][0]
        out.append(
            {
                "sweep": name,
                "param": param,
                "value": value,
                "B": B,
                "rows": rows,
                "extrapolated_rate": float(coef[0]),
                "extrapolated_se": float(math.sqrt(cov[0, 0])),
                "slope_c": float(coef[1]),
                "theory_backward_G": theory,
                "z_extrapolated": float((coef[0] - theory) / math.sqrt(cov[0, 0])),
            }
        )
        print(out[-1], file=sys.stderr)
    with open(path, "w") as fh:
        json.dump({"experiment": "finite-width trend of the Monte Carlo gradient rate", "rows": out}, fh, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    ap.add_argument("--sweeps", default=",".join(SWEEPS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--check-mpmath",
        action="store_true",
        help="also certify lambda_down_G of relu(x + 1/2) by mpmath quadrature (about 1 min)",
    )
    ap.add_argument("--outdir", default=HERE)
    ap.add_argument("--replot", action="store_true", help="only redraw the PNGs from an existing mitigation JSON")
    ap.add_argument(
        "--refresh-theory",
        action="store_true",
        help="recompute the theory curves of the existing JSON (no simulation or training), redraw",
    )
    ap.add_argument(
        "--width-trend",
        action="store_true",
        help="instead: Monte Carlo rate of tanh(x) (gamma=1) and relu(x + 1/2) at B=32 for widths "
        "250..2000, extrapolated linearly in 1/N (mitigation_width.json)",
    )
    a = ap.parse_args(argv)
    if a.width_trend:
        return width_trend(a)
    names = [s for s in a.sweeps.split(",") if s]
    unknown = [s for s in names if s not in SWEEPS]
    if unknown:
        ap.error(f"unknown sweeps {unknown}; choose from {', '.join(SWEEPS)}")
    suffix = "_quick" if a.quick else ""
    outs = [os.path.join(a.outdir, f"mitigation_{n}{suffix}.png") for n in names]
    js = os.path.join(a.outdir, f"mitigation{suffix}.json")
    if a.replot or a.refresh_theory:
        with open(js) as fh:
            old = json.load(fh)
        if a.refresh_theory:
            cmd.check_outputs([js], a.force)
            for n, res in old["sweeps"].items():
                sw = SWEEPS[n]
                if not sw["theory"] and not sw.get("theory_eps"):
                    continue
                vals = np.asarray([r["value"] for r in res["simulation"]])
                if sw.get("theory_eps"):
                    res["theory"] = eps_theory_curve(sw["fine"], res["B"], sw["activation"])
                    res["theory_at_values"] = eps_theory_curve(vals, res["B"], sw["activation"])
                    res.pop("theory_reason", None)
                else:
                    res["theory"] = theory_curve(sw["theory"], sw["symbol"], sw["fine"], res["B"])
                    res["theory_at_values"] = theory_curve(sw["theory"], sw["symbol"], vals, res["B"])
                res["z"] = zscores(res)
                res["trainability"]["predicted_max_depth"] = [
                    None if x is None else 16 * x for x in res["theory_at_values"]["depth_scale"]
                ]
            if "check_mpmath" in old:
                c = old["check_mpmath"]
                c["fast_backward_G"] = theory_curve("relu(x + b)", "b", np.array([0.5]), c["B"])["backward_G"][0]
                c["relative_difference"] = abs(c["fast_backward_G"] / float(c["mpmath_backward_G"]) - 1)
            with open(js, "w") as fh:
                json.dump(old, fh, indent=1)
        for n, out in zip(names, outs):
            if n in old["sweeps"]:
                cmd.check_outputs([out], a.force)
                sw = dict(SWEEPS[n])
                sw["values"] = [r["value"] for r in old["sweeps"][n]["simulation"]]
                plot(n, sw, old["sweeps"][n], out)
        return 0
    cmd.check_outputs(outs + [js], a.force)
    B = a.batch_size
    width, depth, nets = (64, 12, 8) if a.quick else (1000, 40, 100)
    depths = [2, 10, 30] if a.quick else [5, 10, 20, 40, 70, 100]
    steps = 60 if a.quick else 300
    report: dict[str, Any] = {"experiment": "mitigation (paper Fig 4)", "B": B, "sweeps": {}}
    t_all = time.perf_counter()
    for n, out in zip(names, outs):
        sw = dict(SWEEPS[n])
        if a.quick:
            sw["values"] = sw["values"][::3]
            if "fine" in sw:
                sw["fine"] = sw["fine"][::8]
        t0 = time.perf_counter()
        res: dict[str, Any] = {
            "B": B,
            "param": sw["param"],
            "activation": sw["activation"],
            "sim_width": width,
            "sim_depth": depth,
            "sim_networks": nets,
        }
        if sw.get("theory_eps"):
            res["theory"] = eps_theory_curve(sw["fine"], B, sw["activation"])
            res["theory_at_values"] = eps_theory_curve(np.asarray(sw["values"]), B, sw["activation"])
        elif sw["theory"]:
            res["theory"] = theory_curve(sw["theory"], sw["symbol"], sw["fine"], B)
            res["theory_at_values"] = theory_curve(sw["theory"], sw["symbol"], np.asarray(sw["values"]), B)
        else:
            res["theory"] = None
        t1 = time.perf_counter()
        res["simulation"] = simulated_rates(sw, B, width, depth, nets, seed=11)
        t2 = time.perf_counter()
        res["z"] = zscores(res)
        res["trainability"] = trainability(sw, B, depths, width=128, steps=steps, lr=0.05, seed=5, progress=True)
        t3 = time.perf_counter()
        if res["theory"]:
            res["trainability"]["predicted_max_depth"] = [
                None if x is None else 16 * x for x in res["theory_at_values"]["depth_scale"]
            ]
        res["seconds"] = {"theory": round(t1 - t0, 1), "simulation": round(t2 - t1, 1), "training": round(t3 - t2, 1)}
        plot(n, sw, res, out)
        report["sweeps"][n] = res
        print(f"{n}: wrote {out} ({res['seconds']})", file=sys.stderr)
    if a.check_mpmath:
        import symbnmf
        from symbnmf.numeric._quadrature import evaluate_quadrature

        t0 = time.perf_counter()
        cert = evaluate_quadrature(symbnmf.get_activation("relu(x + b)", b=0.5), B, dps=15)["backward.G"]
        fast = theory_curve("relu(x + b)", "b", np.array([0.5]), B)["backward_G"][0]
        report["check_mpmath"] = {
            "activation": "relu(x + 1/2)",
            "B": B,
            "mpmath_backward_G": str(cert),
            "fast_backward_G": fast,
            "relative_difference": abs(fast / float(cert) - 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    with open(js, "w") as fh:
        json.dump(report, fh, indent=1)
    print(
        json.dumps(
            {
                n: {
                    "sim": [(r["value"], r["rate"]) for r in s["simulation"]],
                    "measured": [m["estimate"] for m in s["trainability"]["measured"]],
                    "predicted": s["trainability"].get("predicted_max_depth"),
                }
                for n, s in report["sweeps"].items()
            },
            indent=None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
