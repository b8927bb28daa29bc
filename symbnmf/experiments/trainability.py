"""``symbnmf trainability``: train BN networks over depth x batch size, overlay 16 xi(B) (paper Fig 2).

For each batch size B and depth L of the grid a fully connected BN network (:mod:`symbnmf.experiments.train`)
is trained on scikit-learn's digits for a fixed budget of steps; its test accuracy fills a
heatmap. The predicted maximum trainable depth is 16 xi(B) = 16 / ln backward.G(B) (paper Sec. 4
/ Fig 2, with xi the depth scale of Thm 3.9/3.10), taken from the theory front door
(:func:`symbnmf.evaluate`, or the fast JAX quadrature :class:`symbnmf.FastEvaluator` when the
front door is not available). Agreement is quantified per B by the bracket of grid depths where
the accuracy falls below the midpoint between chance and the best accuracy of the grid.

Writes ``PREFIX.png`` (heatmap + theory line) and ``PREFIX.json`` (every run, the theory, the
comparison table); refuses to overwrite them without ``--force``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from symbnmf._errors import SymbnmfError
from symbnmf._output import atomic_output, check_output

DEFAULT_DEPTHS = (2, 5, 10, 15, 20, 30, 40, 50, 70, 100)
DEFAULT_BATCHES = (4, 8, 16, 32, 64, 128)
#: Paper's rule of thumb: networks deeper than about 16 xi are untrainable (Sec. 4, Fig 2).
DEPTH_MULTIPLE = 16


# ---------------------------------------------------------------------------------------------
# theory
# ---------------------------------------------------------------------------------------------
def _small_batch_reason(Bs: Sequence[int]) -> str | None:
    """Why batch sizes below 4 get no prediction (None when there are none)."""
    small = [int(b) for b in Bs if int(b) < 4]
    if small:
        return f"B={', '.join(map(str, small))} is outside the theory (needs B >= 4, App. J): no prediction there"
    return None


def theory_records(
    activation: Any, Bs: Sequence[int], method: str = "auto"
) -> tuple[list[dict | None], str, str | None]:
    """``(records, source, reason)``: per-B theory records ``{"B", "backward": {"G"}, "depth_scale"}``.

    Uses ``symbnmf.evaluate(activation, Bs, method)`` when the package provides it; otherwise,
    for ``method`` in ("auto", "fast"), the fast JAX quadrature (same definitions, float64).
    B < 4 (outside the theory, App. J) gives ``None`` entries. ``reason`` explains a failure.
    """
    import symbnmf
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    good = [int(b) for b in Bs if int(b) >= 4]
    out: dict[int, dict] = {}
    reason = None
    source = "none"
    if good:
        evaluate = getattr(symbnmf, "evaluate", None)
        try:
            if evaluate is not None:
                recs = evaluate(act, good, method=method)
                source = f"symbnmf.evaluate(method={method!r})"
                for r in recs:
                    out[int(r["B"])] = r
            elif method in ("auto", "fast"):
                from symbnmf.fast._fastquad import FastEvaluator

                vals = FastEvaluator(act, ("backward.G", "depth_scale"))(good)
                source = "symbnmf.FastEvaluator (fast JAX quadrature; symbnmf.evaluate not available)"
                for i, b in enumerate(good):
                    out[b] = {
                        "B": b,
                        "method": "fast",
                        "backward": {"G": float(vals["backward.G"][i])},
                        "depth_scale": float(vals["depth_scale"][i]),
                    }
            else:
                reason = (
                    f"symbnmf.evaluate is not available, so method={method!r} cannot be used; use --theory-method fast"
                )
        except SymbnmfError as exc:
            reason = f"theory unavailable: {exc}"
        except Exception as exc:
            reason = f"theory unavailable ({type(exc).__name__}: {exc})"
    return [out.get(int(b)) for b in Bs], source, reason or _small_batch_reason(Bs)


def theory_records_eps(
    activation: Any, Bs: Sequence[int], eps: float, gamma: float = 1.0, beta: float = 0.0
) -> tuple[list[dict | None], str, str | None]:
    """As :func:`theory_records` for BN with ``eps`` > 0 (issue 12): ``symbnmf.evaluate(..., eps=eps,
    weight_var=1, gamma=gamma, beta=beta)`` at the trainer's initialisation (sigma_w^2 = 1, biased
    BN variance, eps inside the square root), fast JAX path, else mpmath. In the collapsed phase
    (mu* = 0) or without explosion (backward.G <= 1) the record's ``depth_scale`` is None."""
    from symbnmf._activations import get_activation
    from symbnmf._evaluate import evaluate_fast_or_quadrature

    act = get_activation(activation)
    good = [int(b) for b in Bs if int(b) >= 4]
    kw: dict[str, Any] = {"eps": float(eps), "weight_var": 1.0, "gamma": float(gamma), "beta": float(beta)}
    out: dict[int, dict] = {}
    reason = None
    source = "none"
    try:
        recs, used = evaluate_fast_or_quadrature(act, good, **kw) if good else ([], "fast")
        source = f"symbnmf.evaluate(method='{used}', eps=...)"
        for r in recs:
            out[int(r["B"])] = r
        collapsed = [int(r["B"]) for r in recs if r.get("phase") == "collapsed"]
        if collapsed:
            reason = f"eps = {eps:g}: collapsed phase (mu* = 0) at B = {collapsed}: no depth scale"
    except SymbnmfError as exc:
        reason = f"theory unavailable: {exc}"
    except Exception as exc:
        reason = f"theory unavailable ({type(exc).__name__}: {exc})"
    return [out.get(int(b)) for b in Bs], source, reason or _small_batch_reason(Bs)


def predicted_max_depth(activation: Any, Bs: Sequence[int], method: str = "auto") -> list[float | None]:
    """Predicted maximum trainable depth 16 xi(B) = 16 / ln backward.G(B) per batch size.

    xi = ``depth_scale`` of :func:`symbnmf.evaluate` (docs/theory.md: 1/ln lambda_down_G; Thm 3.9,
    3.10); the factor 16 is the paper's empirical rule (Sec. 4, Fig 2). ``None`` for B < 4 or
    when the theory is unavailable (see :func:`theory_records`).
    """
    recs, _, _ = theory_records(activation, Bs, method)
    return [
        None if r is None or r.get("depth_scale") is None else DEPTH_MULTIPLE * float(r["depth_scale"]) for r in recs
    ]


# ---------------------------------------------------------------------------------------------
# the experiment
# ---------------------------------------------------------------------------------------------
def run_grid(
    depths: Sequence[int] = DEFAULT_DEPTHS,
    batch_sizes: Sequence[int] = DEFAULT_BATCHES,
    *,
    activation: str = "relu",
    width: int = 128,
    steps: int = 500,
    lr: float = 0.05,
    optimizer: str = "sgd",
    gamma: float = 1.0,
    beta: float = 0.0,
    eps: float = 0.0,
    seed: int = 0,
    seeds: int = 1,
    theory_method: str = "auto",
    progress: bool = True,
    memory_bytes: int | None = None,
) -> dict[str, Any]:
    """Train ``seeds`` networks per (batch size, depth) cell; return the JSON-ready report.

    With ``seeds > 1`` the networks of a cell are trained together, vmapped and sharded over all
    JAX devices (:func:`symbnmf.experiments.train.train_networks`), and the cell's accuracy is
    their mean (``accuracy_sd`` their standard deviation). Cell ``(i, j)``'s k-th network has
    seed ``seed + 1000 i + j + 100000 k``; with ``seeds == 1`` the grid is exactly the
    one-network-per-cell grid of earlier versions.

    Memory is bounded by ``memory_bytes`` (default: a quarter of the available RAM, at most 1 GiB):
    each cell's networks run in calls that fit it, with every layer rematerialised
    (``jax.checkpoint``) where one network does not fit (:func:`symbnmf.experiments.train.plan_training`);
    ``report["memory"]`` summarises the cells' plans (the largest estimated peak, the narrowest
    call, the most calls, how many cells used remat).

    Keys: settings, ``accuracy[i][j]`` (batch ``i``, depth ``j``), ``runs`` (every network),
    ``threshold`` (midpoint between chance and the grid's best accuracy), ``theory`` (16 xi per
    B and its source), ``comparison`` (per B: predicted vs measured bracket and their ratio).
    """
    from symbnmf._progress import progress as _progress
    from symbnmf.experiments._memory import resolve_budget, summarize_plans
    from symbnmf.experiments.train import TrainConfig, load_digits, plan_training, train_network, train_networks

    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise SymbnmfError(f"seeds must be a positive integer (networks per cell), got {seeds!r}")
    memory_bytes = resolve_budget(memory_bytes)  # once, for every cell

    depths = sorted({int(d) for d in depths})
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not depths or not batch_sizes:
        raise SymbnmfError("the grid is empty; give at least one depth and one batch size")
    # validate every cell before spending CPU
    for b in batch_sizes:
        for d in depths:
            TrainConfig(
                depth=d,
                batch_size=b,
                width=width,
                steps=steps,
                lr=lr,
                optimizer=optimizer,
                activation=activation,
                gamma=gamma,
                beta=beta,
                eps=eps,
                seed=seed,
            ).validate()
    from symbnmf._activations import get_activation

    get_activation(activation).require_bound()
    t0 = time.perf_counter()
    ds = load_digits()
    acc = np.zeros((len(batch_sizes), len(depths)))
    acc_sd = np.zeros_like(acc)
    runs: list[dict[str, Any]] = []
    plans = []
    cells = [(i, j) for i in range(len(batch_sizes)) for j in range(len(depths))]
    for i, j in _progress(iterable=cells, desc="trainability", unit="cell", disable=not progress):
        cfg = TrainConfig(
            depth=depths[j],
            batch_size=batch_sizes[i],
            width=width,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            activation=activation,
            gamma=gamma,
            beta=beta,
            eps=eps,
            seed=seed + 1000 * i + j,
        )
        if seeds == 1:
            plans.append(plan_training(ds, cfg, 1, memory_bytes=memory_bytes))
            results = [train_network(ds, cfg, memory_bytes=memory_bytes)]
        else:
            import jax

            plans.append(plan_training(ds, cfg, seeds, memory_bytes=memory_bytes, devices=jax.device_count()))
            results = train_networks(ds, cfg, [cfg.seed + 100000 * k for k in range(seeds)], memory_bytes=memory_bytes)
        accs = np.array([r.test_accuracy for r in results])
        acc[i, j], acc_sd[i, j] = accs.mean(), accs.std(ddof=1) if seeds > 1 else 0.0
        runs.extend(r.to_json() for r in results)
    chance = ds.chance
    best = float(acc.max())
    threshold = chance + 0.5 * (best - chance)
    report = {
        "experiment": "trainability (paper Fig 2)",
        "dataset": ds.name,
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "chance": chance,
        "settings": {
            "activation": activation,
            "width": width,
            "steps": steps,
            "lr": lr,
            "optimizer": optimizer,
            "gamma": gamma,
            "beta": beta,
            "eps": eps,
            "seed": seed,
            "test_bn": "population statistics of the training set",
            **({"seeds": seeds} if seeds > 1 else {}),
        },
        "depths": depths,
        "batch_sizes": batch_sizes,
        "accuracy": acc.round(4).tolist(),
        **({"accuracy_sd": acc_sd.round(4).tolist()} if seeds > 1 else {}),
        "threshold": threshold,
        "runs": runs,
        "memory": summarize_plans(plans),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return attach_theory(report, theory_method)


def attach_theory(report: dict[str, Any], theory_method: str = "auto") -> dict[str, Any]:
    """(Re)compute ``report["theory"]`` and the per-B ``comparison`` (16 xi vs measured bracket).

    Uses the unrounded accuracies of ``report["runs"]`` and ``report["threshold"]``; lets a
    finished grid pick up a better theory path (e.g. closed forms) without retraining.
    """
    from symbnmf.experiments.train import max_trainable_depth

    s = report["settings"]
    depths, batch_sizes = report["depths"], report["batch_sizes"]
    acc = {(r["batch_size"], r["depth"]): r["test_accuracy"] for r in report["runs"]}
    theory_act = _theory_activation(s["activation"], s["gamma"], s["beta"])
    if s["eps"] != 0:
        recs, source, reason = theory_records_eps(s["activation"], batch_sizes, s["eps"], s["gamma"], s["beta"])
    else:
        recs, source, reason = theory_records(theory_act, batch_sizes, theory_method)
    comparison = []
    for i, b in enumerate(batch_sizes):
        m = max_trainable_depth(depths, [acc[(b, d)] for d in depths], report["threshold"])
        rec = recs[i]
        pred = None if rec is None or rec.get("depth_scale") is None else DEPTH_MULTIPLE * float(rec["depth_scale"])
        comparison.append(
            {
                "B": b,
                "backward_G": None if rec is None else float(rec["backward"]["G"]),
                "theory_method": None if rec is None else rec.get("method"),
                "predicted_max_depth": pred,
                **{f"measured_{k}": v for k, v in m.items()},
                "ratio_measured_over_predicted": (
                    None if pred is None or m["estimate"] is None else m["estimate"] / pred
                ),
            }
        )
    report["theory"] = {
        "activation": str(theory_act),
        "source": source,
        "reason": reason,
        "rule": f"{DEPTH_MULTIPLE} * depth_scale = {DEPTH_MULTIPLE}/ln backward.G",
    }
    report["comparison"] = comparison
    return report


def _theory_activation(activation: str, gamma: float, beta: float) -> Any:
    """phi(gamma x + beta): BN's gamma, beta absorbed into the activation (docs/theory.md)."""
    import sympy as sp

    from symbnmf._activations import Activation, get_activation, x

    act = get_activation(activation)
    if gamma == 1 and beta == 0:
        return act
    expr = act.bound_expr.subs(x, sp.nsimplify(gamma, rational=True) * x + sp.nsimplify(beta, rational=True))
    return Activation(f"{act.label} with BN gamma={gamma:g}, beta={beta:g}", expr)


# ---------------------------------------------------------------------------------------------
# plotting
# ---------------------------------------------------------------------------------------------
def _edges(values: Sequence[float], log: bool) -> np.ndarray:
    v = np.log(np.asarray(values, float)) if log else np.asarray(values, float)
    if len(v) == 1:
        e = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        mid = (v[1:] + v[:-1]) / 2
        e = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(e) if log else e


def plot_heatmap(
    ax: Any, xs: Sequence[float], depths: Sequence[int], acc: np.ndarray, *, xlog: bool, xlabel: str, chance: float
) -> Any:
    """Accuracy heatmap (rows of ``acc`` follow ``xs``, columns ``depths``) on ``ax``; returns the mesh."""
    mesh = ax.pcolormesh(
        _edges(xs, xlog), _edges(depths, False), np.asarray(acc).T, cmap="viridis", vmin=0.0, vmax=1.0, shading="flat"
    )
    if xlog:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(v) for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("depth (BN layers)")
    return mesh


def write_figure(report: dict[str, Any], path: str) -> None:
    """Heatmap of test accuracy over (B, depth) with 16 xi(B) and the measured bracket, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Bs, depths = report["batch_sizes"], report["depths"]
    acc = np.asarray(report["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 5))
    mesh = plot_heatmap(ax, Bs, depths, acc, xlog=True, xlabel="batch size B", chance=report["chance"])
    fig.colorbar(mesh, ax=ax, label=f"test accuracy (chance {report['chance']:.2f})")
    comp = report["comparison"]
    pts = [(c["B"], c["predicted_max_depth"]) for c in comp if c["predicted_max_depth"] is not None]
    if pts:
        ax.plot(*zip(*pts), "w-o", lw=2, label=r"theory $16\,\xi(B) = 16/\ln\lambda_G^{\downarrow}(B)$")
    meas = [(c["B"], c["measured_estimate"]) for c in comp if c["measured_estimate"] is not None]
    if meas:
        ax.plot(*zip(*meas), "r--", lw=1.5)
        closed = [
            (c["B"], c["measured_estimate"])
            for c in comp
            if c["measured_estimate"] is not None and c["measured_first_untrainable"] is not None
        ]
        open_ = [
            (c["B"], c["measured_estimate"])
            for c in comp
            if c["measured_estimate"] is not None and c["measured_first_untrainable"] is None
        ]
        if closed:
            ax.plot(*zip(*closed), "rs", label="measured max depth (accuracy midpoint, geometric bracket centre)")
        if open_:
            ax.plot(*zip(*open_), "r^", label="whole depth grid trains (max depth ≥)")
    ax.set_ylim(0, max(depths) * 1.05)
    s = report["settings"]
    ax.set_title(
        f"{s['activation']} + BN on digits: width {s['width']}, {s['steps']} {s['optimizer'].upper()} steps, lr {s['lr']:g}",
        fontsize=10,
    )
    if pts or meas:
        ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    try:
        with atomic_output(path, force=True, binary=True) as fh:  # no partial PNG on error or Ctrl-C
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)


def check_outputs(paths: Sequence[str], force: bool) -> None:
    """Raise :class:`OutputExistsError` if any path exists and ``force`` is false."""
    for p in paths:
        check_output(p, force)
